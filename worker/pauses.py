"""The pause and resume requests of one job, as spans of leg positions.

A pause (an extension of the spec's API: `WholeCallRecorder.pause`) takes effect at the
leg position of the moment it was asked for. The worker applies it where audio becomes
file data, at a flush: every staged sample knows its leg position (`Pipeline.opos`), so
the paused span is replaced by digital silence ("silence") or cut out ("skip") sample
for sample, whatever the frame boundaries, and the DTMF look-ahead and the staging
delay make no difference. Few jobs are ever paused, so this is plain Python per job.
"""

from __future__ import annotations

import numpy as np

MODES = ("silence", "skip")


class PauseSchedule:
    """Paused spans of one job: [start, end) in leg positions, end None while paused."""

    def __init__(self) -> None:
        self.spans: list[list] = []  # [start, end | None, mode]

    @property
    def paused(self) -> bool:
        return bool(self.spans) and self.spans[-1][1] is None

    def request(self, pos: int, mode: str) -> None:
        """Pause from `pos` (`mode` one of MODES) or resume there (`mode` ""). A pause
        while paused or a resume while not paused changes nothing (the controller sends
        neither; a takeover may hand the same request over twice)."""
        if mode:
            if mode not in MODES:
                raise ValueError(f"pause mode must be one of {', '.join(MODES)}, not {mode!r}")
            if not self.paused:
                self.spans.append([pos, None, mode])
        elif self.paused:
            self.spans[-1][1] = max(self.spans[-1][0], pos)

    def pending(self, pos: int) -> bool:
        """Whether a span still reaches audio at or after leg position `pos` (spans that
        end before it are done with and dropped)."""
        self.spans = [s for s in self.spans if s[1] is None or s[1] > pos]
        return bool(self.spans)

    def touches(self, lo: int, hi: int) -> bool:
        """Whether any paused span overlaps [lo, hi)."""
        return any(s[0] < hi and (s[1] is None or s[1] > lo) for s in self.spans)

    def mode_at(self, lo: int, hi: int) -> str | None:
        """The mode of the first span overlapping [lo, hi), or None."""
        for s in self.spans:
            if s[0] < hi and (s[1] is None or s[1] > lo):
                return s[2]
        return None

    def apply(self, data: np.ndarray, first: int, silence: int) -> np.ndarray:
        """`data` (staged samples or codes, leg positions from `first` on, along axis 0)
        with every paused sample replaced by `silence` or removed: a copy if anything
        changed, `data` itself otherwise."""
        n = len(data)
        cut: list[tuple[int, int]] = []
        out = data
        for start, end, mode in self.spans:
            lo = max(start, first) - first
            hi = (n if end is None else min(end - first, n))
            if hi <= lo or lo >= n:
                continue
            if mode == "skip":
                cut.append((lo, hi))
            else:
                if out is data:
                    out = data.copy()
                out[lo:hi] = silence
        if cut:
            keep = np.ones(n, bool)
            for lo, hi in cut:
                keep[lo:hi] = False
            out = out[keep]
        return out
