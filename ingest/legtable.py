"""The playout state of many legs as numpy columns, shared by the Python core and the compiled fast path.

Why columns: at 200,000 packets/s the per-packet cost of a Python object model (a
`JitterBuffer` method call, attribute lookups, a heap push) is most of the budget. The
common packet, the next sequence number of a leg's current stream carrying G.711, needs
only a few integers of its leg: those live here, indexed by leg, so one compiled loop
(`ingest.fastpath`) places a whole batch of packets for thousands of legs, and another
releases every leg's due audio straight into its ring. Everything else (a new SSRC, a
loss, re-ordering, events, CN, L16, SRTP legs) still goes through `JitterBuffer.push`,
which keeps its per-stream Python objects and reads and writes the current stream's
fields here, so both paths see one state.

Audio lands in a per-leg staging ring (`stage`, `STAGE` samples, about 2 s) at ``position
& STAGE_MASK``: what was never written there is zero, which is exactly the silence a lost
packet must leave. A release copies ``[released, horizon)`` out and zeroes it behind.
Packets landing further ahead than the stage reaches are parked by the Python core until
the release comes near (`parked` marks such legs, whose release then runs in Python).
"""

from __future__ import annotations

import numpy as np

STAGE = 1 << 14
"""Samples of audio a leg can hold ahead of its release point (2.048 s at 8 kHz)."""
STAGE_MASK = STAGE - 1

KIND_OTHER = 0
"""Payload type the fast path leaves to Python (unknown, L16, events, CN)."""
KIND_PCMA = 1
KIND_PCMU = 2

_INT_FIELDS = ("cur_ssrc", "anchor", "base_ts", "max_ts", "max_seq", "end", "released", "window", "max_ahead",
               "src_ip", "src_port", "packets", "slot")
_FLOAT_FIELDS = ("call_t0", "last_arrival", "last_media")
_FLAG_FIELDS = ("active", "fast_ok", "parked")


class LegTable:
    """Columns of per-leg playout state; a leg is a row index handed out by `allocate`.

    Integer columns (int64): ``cur_ssrc`` (-1: no stream yet), the current stream's
    ``anchor``, ``base_ts``, ``max_ts``, ``max_seq`` (extended counters) and ``end``;
    the leg's ``released``, ``window``, ``max_ahead``, its first source ``src_ip`` /
    ``src_port`` (-1 until seen), ``packets`` received and ring ``slot`` (-1: none).
    Float columns: ``call_t0``, the current stream's ``last_arrival``, ``last_media``.
    Flags (uint8): ``active``, ``fast_ok`` (the fast path may take this leg's packets),
    ``parked``. ``kind[leg, pt]``: KIND_PCMA / KIND_PCMU / KIND_OTHER per payload type.
    """

    # The columns, made by `_grow` from the field lists above (named here for type checkers).
    cur_ssrc: np.ndarray
    anchor: np.ndarray
    base_ts: np.ndarray
    max_ts: np.ndarray
    max_seq: np.ndarray
    end: np.ndarray
    released: np.ndarray
    window: np.ndarray
    max_ahead: np.ndarray
    src_ip: np.ndarray
    src_port: np.ndarray
    packets: np.ndarray
    slot: np.ndarray
    call_t0: np.ndarray
    last_arrival: np.ndarray
    last_media: np.ndarray
    active: np.ndarray
    fast_ok: np.ndarray
    parked: np.ndarray
    kind: np.ndarray
    stage: np.ndarray

    def __init__(self, capacity: int = 16) -> None:
        self.capacity = 0
        self._free: list[int] = []
        self.size = 0
        """One past the highest row ever allocated: loops over legs stop here."""
        self._grow(max(1, capacity))

    def _grow(self, capacity: int) -> None:
        old = self.capacity

        def grown(name: str, dtype: type, shape: tuple[int, ...] = (), fill: int | float = 0) -> np.ndarray:
            a: np.ndarray = np.full((capacity, *shape), fill, dtype)
            if old:
                a[:old] = getattr(self, name)
            return a

        for name in _INT_FIELDS:
            setattr(self, name, grown(name, np.int64, fill=-1 if name in ("cur_ssrc", "src_ip", "src_port", "slot") else 0))
        for name in _FLOAT_FIELDS:
            setattr(self, name, grown(name, np.float64))
        for name in _FLAG_FIELDS:
            setattr(self, name, grown(name, np.uint8))
        self.kind = grown("kind", np.uint8, (128,))
        self.stage = grown("stage", np.int16, (STAGE,))
        self._free.extend(range(capacity - 1, old - 1, -1))
        self.capacity = capacity

    def allocate(self) -> int:
        """A fresh row (zero stage, no stream, no source); the caller fills in the leg's constants."""
        if not self._free:
            self._grow(2 * self.capacity)
        i = self._free.pop()
        for name in _INT_FIELDS:
            getattr(self, name)[i] = -1 if name in ("cur_ssrc", "src_ip", "src_port", "slot") else 0
        for name in _FLOAT_FIELDS + _FLAG_FIELDS:
            getattr(self, name)[i] = 0
        self.kind[i] = KIND_OTHER
        self.stage[i] = 0
        self.size = max(self.size, i + 1)
        return i

    def free(self, i: int) -> None:
        """Give row `i` back: the compiled loops skip it from now on."""
        self.active[i] = 0
        self.fast_ok[i] = 0
        self.slot[i] = -1
        self._free.append(i)
