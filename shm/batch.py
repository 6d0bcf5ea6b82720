"""The batched producer: one call writes the same-length block to many leg rings.

A load generator (or a media server relaying thousands of RTP streams) that moved
20 ms frames one leg at a time through `LegWriter` would spend ~1 µs of Python per
frame per leg; at 10,000 calls that is 40 % of a core before any audio moves.
`LegBatchWriter.write` does the work of `LegWriter.write(block=False)` for k legs with
a fixed number of numpy operations: one vector load of the positions, room checks as
array arithmetic, one scatter of the audio, one vector store of the new positions.

Why the scatter is grouped. Each leg's block lands at its own ring column
(``position & (capacity - 1)``). Legs whose blocks start at the same column are written
with a row index and a *slice* (numpy copies whole contiguous rows, ~2.8 G samples/s
here); a fully general per-sample fancy index reaches ~0.2 G samples/s. Producers that
keep their legs in step (same position, e.g. calls that began on the same tick) get
the fast path; mixed columns fall back to one slice per distinct column, and only when
nearly every leg has its own column to one per-sample fancy index.

Memory ordering (see ``shm/layout.py``). All audio of a `write` is stored before
any position, and the positions are then stored with one numpy fancy assignment. That
store is not atomic as a whole, and need not be: each element is an aligned 8-byte
store, which is atomic on x86-64, and the consumer judges every leg on its own
position alone, so a consumer that sees leg i's new position (and not yet leg j's)
reads a consistent ring for both. Under total store order a consumer that sees a
position also sees the samples stored before it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .arena import Arena

#: Fewer legs than this per distinct ring column on average and one per-sample fancy index
#: is cheaper than a slice copy per column (a column group costs ~10 µs of numpy overhead,
#: a sample ~4.5 ns more through a fancy index than through a slice).
_MIN_LEGS_PER_GROUP = 2


_store_rows: Callable[..., int] | None = None


def _kernel() -> Callable[..., int]:
    """`ringcopy.store_rows`, imported on first use: numba is heavy and most users of shm never need it."""
    global _store_rows
    if _store_rows is None:
        from .ringcopy import store_rows

        _store_rows = store_rows
    return _store_rows


def warm_up() -> None:
    """Load the compiled `write_rows` path now (~0.5 s the first time in a process)."""
    from .ringcopy import warm_up as _warm

    _warm()


class LegBatchWriter:
    """The producer side of many leg rings at once (non-blocking, real-time semantics).

    ``slots`` must be distinct ring slots of ``arena``; this writer must be the only
    producer of each of them while it is used (the arena's rings are single-producer).
    ``write(block)`` behaves for every leg i exactly like
    ``LegWriter(arena, slots[i]).write(block[i], block=False)`` would in the same
    state: a recorded leg whose ring is full keeps what fits and counts the rest in
    ``overruns`` (a real-time producer must never wait), an unrecorded leg is simply
    overwritten, and a leg the worker has already moved past jumps forward to the
    worker's position first. The one difference: a single-leg writer re-reads the
    worker's position after filling the ring, a batch reads all positions once per
    call, so a batch never stores more than a single-leg writer would, and both are
    equal when no consumer runs concurrently.
    """

    def __init__(self, arena: Arena, slots: np.ndarray) -> None:
        s = np.asarray(slots)
        if s.ndim != 1:
            raise ValueError(f"slots must be 1-D, got shape {s.shape}")
        if s.size and not np.issubdtype(s.dtype, np.integer):
            raise TypeError(f"slots must be integers, got {s.dtype}")
        s = s.astype(np.int64)
        if s.size and (s.min() < 0 or s.max() >= arena.slots):
            bad = int(s[(s < 0) | (s >= arena.slots)][0])
            raise ValueError(f"slot {bad} outside arena of {arena.slots} slots")
        if np.unique(s).size != s.size:
            raise ValueError("slots must be distinct: a ring has one producer")
        self.arena = arena
        self.slots = s
        self._mask = arena.capacity - 1

    def __len__(self) -> int:
        return int(self.slots.size)

    @property
    def positions(self) -> np.ndarray:
        """Every leg's sample clock (a copy)."""
        return self.arena.write_pos[self.slots]

    @property
    def overruns(self) -> np.ndarray:
        """Samples dropped per leg because its ring was full (a copy)."""
        return self.arena.overruns[self.slots]

    def write(self, block: np.ndarray) -> np.ndarray:
        """Append ``block[i]`` (int16, 8 kHz) to leg i for every leg; returns samples stored per leg."""
        block = np.asarray(block)
        if block.dtype != np.int16:
            raise TypeError(f"leg audio must be int16, got {block.dtype}")
        k = self.slots.size
        if block.ndim != 2 or block.shape[0] != k:
            raise ValueError(f"block must have shape ({k}, samples) for {k} legs, got {block.shape}")
        n = block.shape[1]
        if k == 0 or n == 0:
            return np.zeros(k, np.int64)
        a = self.arena
        s = self.slots
        cap = a.capacity
        # One snapshot of the three counters (each element an atomic 8-byte load).
        w = a.write_pos[s]
        recorded = a.job[s] != 0
        r = a.read_pos[s]
        # A recorded leg the worker has moved past lands at the worker's position, and the
        # gap it recorded as silence is zeroed in the ring too (as `LegWriter` does), so a
        # replacement worker that re-reads that span after a failover reads the same silence.
        behind = recorded & (w < r)
        if behind.any():
            for i in np.flatnonzero(behind).tolist():
                gap = int(min(r[i] - w[i], cap))
                self._write_row(int(s[i]), int(w[i]), np.zeros(gap, np.int16))
            w = np.where(behind, r, w)
        room = np.where(recorded, cap - (w - r), n)
        stored = np.clip(np.minimum(room, n), 0, None)
        # Samples of the block that reach the ring: [lo, stored). An unrecorded leg
        # longer than the ring keeps only its last `cap` samples, as a lapping writer would.
        lo = np.where(recorded, 0, max(0, n - cap))
        whole = (stored == n) & (lo == 0)
        if whole.all():
            self._scatter_whole(np.arange(k), w, block)
        else:
            self._scatter_whole(np.flatnonzero(whole), w, block)
            for i in np.flatnonzero(~whole & (stored > lo)).tolist():
                self._write_row(int(s[i]), int(w[i]) + int(lo[i]), block[i, int(lo[i]):int(stored[i])])
        dropped = n - stored
        over = recorded & (dropped > 0)
        if over.any():
            a.overruns[s[over]] += dropped[over]
        # Publish last: data above, then the positions (per-element atomic stores).
        a.write_pos[s] = w + stored
        return stored

    def write_rows(self, sources: np.ndarray, rows: np.ndarray, start: int, n: int) -> np.ndarray:
        """Append ``sources[rows[i], start:start + n]`` to leg i for every leg; returns samples stored per leg.

        Stores exactly what ``write(sources[rows, start:start + n])`` would (same rules for
        recorded, unrecorded, full and overtaken rings), without building that block: each
        leg's samples go from its source row straight into its ring in one compiled pass
        (`shm.ringcopy`). For producers that play a library of clips, like the stress load
        generator, whose every block otherwise crossed memory twice.
        """
        sources = np.asarray(sources)
        if sources.dtype != np.int16:
            raise TypeError(f"leg audio must be int16, got {sources.dtype}")
        if sources.ndim != 2:
            raise ValueError(f"sources must be 2-D (rows, samples), got shape {sources.shape}")
        rows = np.asarray(rows)
        if rows.size and not np.issubdtype(rows.dtype, np.integer):
            raise TypeError(f"rows must be integers, got {rows.dtype}")
        rows = rows.astype(np.int64, copy=False)
        k = self.slots.size
        if rows.shape != (k,):
            raise ValueError(f"rows must have shape ({k},), one source row per leg, got {rows.shape}")
        start, n = int(start), int(n)
        if n < 0 or start < 0 or start + n > sources.shape[1]:
            raise ValueError(f"samples [{start}, {start + n}) outside sources of {sources.shape[1]} samples")
        if k == 0 or n == 0:
            return np.zeros(k, np.int64)
        store_rows = _kernel()
        a = self.arena
        new_pos = np.empty(k, np.int64)
        stored = np.empty(k, np.int64)
        bad = store_rows(a.data, a.write_pos, a.read_pos, a.job, a.overruns, self.slots, sources, rows,
                         start, n, new_pos, stored)
        if bad >= 0:
            raise ValueError(f"row {int(rows[bad])} of leg {bad} outside sources of {sources.shape[0]} rows")
        # Publish last: the kernel stored the data, then the positions (per-element atomic stores).
        a.write_pos[self.slots] = new_pos
        return stored

    # -- scatter strategies ----------------------------------------------------------------

    def _scatter_whole(self, rows: np.ndarray, w: np.ndarray, block: np.ndarray) -> None:
        """Store all n samples of each block row in ``rows`` at ring position ``w[row]``."""
        if not rows.size:
            return
        n = block.shape[1]
        col = w[rows] & self._mask
        c0 = int(col[0])
        if (col == c0).all():
            self._slices(self.slots[rows], c0, block if rows.size == block.shape[0] else block[rows])
            return
        order = np.argsort(col, kind="stable")
        scol = col[order]
        starts = np.flatnonzero(np.r_[True, scol[1:] != scol[:-1]])
        if rows.size < _MIN_LEGS_PER_GROUP * starts.size:
            # Almost every leg at its own column: one per-sample fancy index is cheaper.
            cols = (w[rows][:, None] + np.arange(n)) & self._mask
            self.arena.data[self.slots[rows][:, None], cols] = block[rows]
            return
        ends = np.r_[starts[1:], order.size]
        for g0, g1 in zip(starts.tolist(), ends.tolist()):
            sel = rows[order[g0:g1]]
            self._slices(self.slots[sel], int(scol[g0]), block[sel])

    def _slices(self, slots: np.ndarray, col: int, rows: np.ndarray) -> None:
        """Rows of equal length starting at the same ring column: at most two slice copies."""
        data = self.arena.data
        n = rows.shape[1]
        first = min(n, data.shape[1] - col)
        data[slots, col:col + first] = rows[:, :first]
        if first < n:
            data[slots, :n - first] = rows[:, first:]

    def _write_row(self, slot: int, pos: int, pcm: np.ndarray) -> None:
        """One leg's partial block (an overrun or an overlong unrecorded write)."""
        data = self.arena.data
        cap = data.shape[1]
        col = pos & self._mask
        first = min(len(pcm), cap - col)
        data[slot, col:col + first] = pcm[:first]
        if first < len(pcm):
            data[slot, :len(pcm) - first] = pcm[first:]
