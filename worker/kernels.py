"""The worker's per-sample inner loops, compiled (numba).

Why compiled: at 10,000 channels the batched numpy pipeline spent most of its time
moving the same samples through memory once per operation: gather a block from the
rings, copy it into the DTMF delay line, convert it to float32 for the prescreen, take
the delayed frames out again, mix, clip, measure energy, scatter into staging, encode.
Each pass is cheap per sample but there were a dozen of them, each a separate trip to
memory for ~30 MB per tick. These kernels do each chain in one pass, row by row, while
the row is in cache. The decisions (silence, DTMF runs, flushes) stay in numpy: they
touch a few numbers per row, not samples.

Every kernel here keeps the numbers exactly what the numpy code computed, except the
float32 sums (energies, prescreen projections), whose rounding depends on the order of
the additions; they only feed threshold tests with wide margins.

`nogil`: the worker's command thread (starts, stops) runs while a kernel works.
`cache`: compiled once per machine into __pycache__, not at every worker start.
"""

from __future__ import annotations

import numba as nb
import numpy as np

FRAME = 160  # samples per frame (20 ms)

_jit = nb.njit(cache=True, nogil=True, fastmath={"reassoc"})


@_jit
def frames_in(ring, base, pos, avail, wrap_mask, b, dst, dst_slot, c_pre_t, bound, pre_min, twist, purity, fired):
    """Copy `b` frames per row from a ring into the delay-line slots `dst_slot` (row-major,
    `b` per row) of `dst`, and run the DTMF prescreen on each frame (`fired`, rows x b).

    Row r reads samples pos[r] .. pos[r] + b * FRAME of the ring starting at base[r]
    (index taken modulo `wrap_mask + 1`); samples at or past pos[r] + avail[r] are not
    written yet and read as silence.

    Prescreen (see dtmf.py): a frame fires when, over its first `c_pre_t.shape[1]`
    samples (projected on the rows of `c_pre_t`), one low and one high DTMF bin are loud enough (`pre_min`), within `twist`
    of each other and hold `purity` of the energy (per sample). A frame whose energy
    times `bound` is below `pre_min` cannot fire and is not projected.
    """
    m = base.shape[0]
    nb2, pre_n = c_pre_t.shape
    nbin = nb2 // 2
    p = np.empty(nb2, np.float32)
    x = np.empty(pre_n, np.float32)
    for r in range(m):
        for k in range(b):
            out = dst[dst_slot[r * b + k]]
            s0 = pos[r] + k * FRAME
            lim = avail[r] - k * FRAME
            col = s0 & wrap_mask
            if lim >= FRAME and col + FRAME <= wrap_mask + 1:
                src = base[r] + col
                for i in range(FRAME):
                    out[i] = ring[src + i]
            else:
                for i in range(FRAME):
                    if i < lim:
                        out[i] = ring[base[r] + ((s0 + i) & wrap_mask)]
                    else:
                        out[i] = 0
            e = np.float32(0.0)
            for i in range(pre_n):
                v = np.float32(out[i])
                x[i] = v
                e += v * v
            f = False
            if e * bound > pre_min:
                for q in range(nb2):  # one dot product per basis vector: vectorised
                    acc = np.float32(0.0)
                    for i in range(pre_n):
                        acc += x[i] * c_pre_t[q, i]
                    p[q] = acc
                lo = np.float32(0.0)
                hi = np.float32(0.0)
                for q in range(nbin):
                    w = p[q] * p[q] + p[q + nbin] * p[q + nbin]
                    if q < nbin // 2:
                        lo = max(lo, w)
                    else:
                        hi = max(hi, w)
                weak = min(lo, hi)
                strong = max(lo, hi)
                f = weak > pre_min and strong < weak * twist and weak + strong > e * purity
            fired[r, k] = f


@_jit
def mix_to_stage(y_in, y_out, rows, first, stage, energy):
    """Mix the two legs' `b` frames of each job j (y_in / y_out: jobs x b x FRAME,
    int16) with saturation into staging planes first[j] .. first[j] + b - 1 of job row
    rows[j] (`stage`: planes x rows x FRAME, int16), and measure each mixed frame's mean
    square (`energy`, jobs x b, float32) for the silence detector.
    """
    m = y_in.shape[0]
    b = y_in.shape[1]
    for j in range(m):
        row = rows[j]
        for k in range(b):
            dst = stage[first[j] + k, row]
            s = np.float32(0.0)
            for i in range(FRAME):
                v = np.int32(y_in[j, k, i]) + np.int32(y_out[j, k, i])
                v = min(max(v, -32768), 32767)
                dst[i] = v
                f = np.float32(v)
                s += f * f
            energy[j, k] = s / np.float32(FRAME)


def warm_up() -> None:
    """Load (or compile) every kernel for the types the worker calls it with.

    The first call of a kernel in a process costs ~0.5 s even from the cache (numba's
    own start-up); a worker pays it here, before it says hello, not in its first tick
    with calls running (a 0.5 s stall of every leg).
    """
    ring = np.zeros(2 * FRAME, np.int16)
    one = np.zeros(1, np.int64)
    fired = np.zeros((1, 1), np.bool_)
    for dtype in (np.int16, np.float32):
        frames_in(ring.astype(dtype), one, one, one, 2 * FRAME - 1, 1, np.zeros((1, FRAME), dtype), one,
                  np.zeros((16, 80), np.float32), np.float32(1), np.float32(1), np.float32(1), np.float32(1), fired)
    legs = np.zeros((1, 2, 1, FRAME), np.int16)
    stage = np.zeros((1, 1, FRAME), np.int16)
    energy = np.zeros((1, 1), np.float32)
    mix_to_stage(legs[:, 0], legs[:, 1], one, one, stage, energy)  # views of one block (strided)
    mix_to_stage(legs[:, 0].copy(), legs[:, 1].copy(), one, one, stage, energy)  # a selection (contiguous)
