"""Silence tracking for `milliseconds_initial_silence` and `milliseconds_max_silence`.

Decisions are per 20 ms frame of what is recorded (after DTMF elimination; in mixed
mode, the mix), on energy: a frame is loud when its mean square exceeds the
Controller's threshold (`silence_dbfs`, relative to full scale). Time is counted in
samples of audio, never on the wall clock, so a backlog drained at once decides
exactly as real time would.

All state is numpy arrays indexed by job row; `step` advances many jobs by one frame
each with a handful of vector operations.

File coordinates: `emitted` counts samples committed to the file so far (after the
leading silence of an initial-silence job has been dropped), `last_loud_end` the file
position just after the last loud frame: a SILENCE end trims the file to
`last_loud_end + tail`.
"""

from __future__ import annotations

import numpy as np

FULL_SCALE = 32768.0
#: Leading audio kept before the first loud frame of an initial-silence job (DESIGN: <= 250 ms).
PREROLL_SAMPLES = 1920  # 12 whole frames: staging holds frames


def dbfs_to_mean_square(dbfs: float) -> float:
    """Mean-square threshold in int16 units for a level in dB relative to full scale."""
    return (FULL_SCALE ** 2) * 10.0 ** (dbfs / 10.0)


def frame_energy(frames: np.ndarray) -> np.ndarray:
    """Mean square of each row of `frames` (float32, rows x samples)."""
    return np.einsum("ij,ij->i", frames, frames) / frames.shape[1]


class SilenceTracker:
    """Per-job silence state; rows are job rows of the worker's job table."""

    def __init__(self, capacity: int) -> None:
        self.threshold = np.zeros(capacity)  # mean-square threshold per job
        self.initial_limit = np.zeros(capacity, np.int64)  # samples; 0 = none
        self.max_limit = np.zeros(capacity, np.int64)  # samples; 0 = none
        self.heard = np.zeros(capacity, bool)
        self.audio = np.zeros(capacity, np.int64)  # samples processed since the job began
        self.run = np.zeros(capacity, np.int64)  # samples of silence since the last loud frame
        self.emitted = np.zeros(capacity, np.int64)
        self.last_loud_end = np.zeros(capacity, np.int64)

    def grow(self, capacity: int) -> None:
        for name, arr in vars(self).items():
            new = np.zeros(capacity, arr.dtype)
            new[: len(arr)] = arr
            setattr(self, name, new)

    def reset(self, row: int, threshold_dbfs: float, initial_samples: int, max_samples: int) -> None:
        self.threshold[row] = dbfs_to_mean_square(threshold_dbfs)
        self.initial_limit[row] = initial_samples
        self.max_limit[row] = max_samples
        self.heard[row] = False
        self.audio[row] = self.run[row] = self.emitted[row] = self.last_loud_end[row] = 0

    def step(self, rows: np.ndarray, frames: np.ndarray, fill: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Account one frame per row; `fill` is each row's staging fill before this frame.

        Returns (first_loud, ended): `first_loud` marks rows whose first loud frame this
        is (the caller drops leading silence before it, keeping the pre-roll), `ended`
        marks rows whose initial or max silence limit was reached with this frame.
        """
        return self.step_energy(rows, frame_energy(frames), frames.shape[1], fill)

    def step_energy(self, rows: np.ndarray, ms: np.ndarray, n: int, fill: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
        """`step` for frames of `n` samples whose mean squares `ms` the caller computed
        (the pipeline does it for a whole block of frames in one call)."""
        loud = ms > self.threshold[rows]
        heard = self.heard[rows]
        trims = self.initial_limit[rows] > 0
        first = loud & ~heard
        # Samples of this job's file before this frame: leading silence of an
        # initial-silence job is held back in staging until the first loud frame.
        before = np.where(first & trims, np.minimum(fill, PREROLL_SAMPLES), self.emitted[rows])
        before = np.where(~heard & ~first & trims, 0, before)
        emitted = before + np.where(~heard & ~first & trims, 0, n)
        self.emitted[rows] = emitted
        heard_now = heard | loud
        self.heard[rows] = heard_now
        self.last_loud_end[rows] = np.where(loud, emitted, self.last_loud_end[rows])
        run = np.where(loud, 0, self.run[rows] + n)
        self.run[rows] = run
        audio = self.audio[rows] + n
        self.audio[rows] = audio
        init_lim = self.initial_limit[rows]
        max_lim = self.max_limit[rows]
        ended = (~heard_now & (init_lim > 0) & (audio >= init_lim)) | (
            heard_now & (max_lim > 0) & (run >= max_lim)
        )
        return first, ended

    def pass_over(self, rows: np.ndarray, n: int, kept: np.ndarray) -> None:
        """Paused frames (`worker.pauses`): counted toward neither limit and never loud;
        only the file position moves, for those `kept` in the file as silence."""
        if not len(rows):
            return
        writing = kept & (self.heard[rows] | (self.initial_limit[rows] == 0))
        self.emitted[rows] += np.where(writing, n, 0)
