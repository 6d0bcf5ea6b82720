"""The DTMF bank's per-row decisions, compiled (numba): digit runs and mute intervals.

Why compiled: the fine analysis judges a few dozen windows of the few hundred rows
that are hot in a tick, and the state machine over them (gaps, a new run on another
digit, confirmation) is a handful of numbers per row and window. In numpy it was a
Python loop over windows with a dozen operations on arrays of the busy rows each, and
the mutes it decided were applied one numpy fancy index per window and direction: at
10,000 channels of the stress load (callers key digits often) that was ~14 us per
channel-second of numpy call overhead for very little arithmetic. Here each is one
call per tick.

The decisions are exactly those of the numpy code they replace (tests/dsp/
test_dtmf_runs.py runs both on the stress load and compares events and masks): the
same int16 counters, the float32 purity sums in the same order, the float64 phase
sums, and the same libm atan2 for the deviation test.

`nogil`: the worker's command thread runs while a kernel works. `cache`: compiled once
per machine into __pycache__; `warm_up` loads them before the first tick.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from wholecall.formats.codecs import FRAME

_jit = nb.njit(cache=True, nogil=True)


@_jit
def digit_runs(rows, ends, todo, valid, digit, adv, top, ew,  # noqa: PLR0913 (one call per tick)
               rd, rv, rg, ra, rb, racc, rpur, active,
               win, n_det, gap_max, purity_run, freq_tol, hz_per_rad, freqs):
    """Advance the digit runs of `rows` window by window.

    Per row (positions i of `rows`, windows j of the analysed span, shaped (rows, W)):
    `ends` the end sample of each window, `todo` whether it is new to the row,
    `valid`/`digit` the window's verdict, `adv` (rows, W, 2) complex64 phase advances,
    `top` (rows, W, 2) the two tones' mean squares and `ew` the window's.
    The run state (rd .. active) is indexed by row and updated in place.

    Returns the digits that stopped and those confirmed, each as (window, position,
    digit, reference sample, phase sums), in window order then position order: the
    reference is the start of the last valid window for a stop, of the first for a
    confirmation.
    """
    m, nw = ends.shape
    cap = m * nw
    e_j = np.empty(cap, np.int64)
    e_pos = np.empty(cap, np.int64)
    e_dig = np.empty(cap, np.int64)
    e_ref = np.empty(cap, np.int64)
    e_acc = np.empty((cap, 2), np.complex128)
    c_j = np.empty(cap, np.int64)
    c_pos = np.empty(cap, np.int64)
    c_dig = np.empty(cap, np.int64)
    c_ref = np.empty(cap, np.int64)
    c_acc = np.empty((cap, 2), np.complex128)
    ne = 0
    nc = 0
    floor = np.float32(1e-6)
    for j in range(nw):
        for i in range(m):
            t = todo[i, j]
            v = t and valid[i, j]
            r = rows[i]
            d = rd[r]
            run = d >= 0
            if not run and not v:
                continue
            dj = digit[i, j]
            other = v and dj != d  # a valid window of another digit: a new run
            if v:
                rg[r] = 0
            elif run and t:
                rg[r] += 1
            if run and (other or rg[r] > gap_max):
                if active[r]:
                    e_j[ne] = j
                    e_pos[ne] = i
                    e_dig[ne] = d
                    e_ref[ne] = rb[r] - win
                    e_acc[ne, 0] = racc[r, 0]
                    e_acc[ne, 1] = racc[r, 1]
                    ne += 1
                rd[r] = -1
                rv[r] = 0
                rg[r] = 0
                racc[r, 0] = 0
                racc[r, 1] = 0
                rpur[r] = 0
                active[r] = False
            if other:
                rd[r] = dj
                rv[r] = 0
                racc[r, 0] = 0
                racc[r, 1] = 0
                rpur[r] = 0
                ra[r] = ends[i, j] - win
            if not v:
                continue
            rv[r] += 1
            rb[r] = ends[i, j]
            racc[r, 0] += np.complex128(adv[i, j, 0])
            racc[r, 1] += np.complex128(adv[i, j, 1])
            lo = top[i, j, 0]
            hi = top[i, j, 1]
            rpur[r] += (lo + hi) / max(ew[i, j], floor)
            if active[r] or rv[r] < n_det or rpur[r] < np.float32(rv[r]) * purity_run:
                continue
            d = rd[r]
            ok = True
            for k in range(2):
                f = freqs[d // 4] if k == 0 else freqs[d % 4 + 4]
                z = racc[r, k]
                if not abs(math.atan2(z.imag, z.real)) * hz_per_rad / f <= freq_tol:
                    ok = False
            if ok:
                c_j[nc] = j
                c_pos[nc] = i
                c_dig[nc] = d
                c_ref[nc] = ra[r]
                c_acc[nc, 0] = racc[r, 0]
                c_acc[nc, 1] = racc[r, 1]
                nc += 1
                active[r] = True
    return (e_j[:ne], e_pos[:ne], e_dig[:ne], e_ref[:ne], e_acc[:ne],
            c_j[:nc], c_pos[:nc], c_dig[:nc], c_ref[:nc], c_acc[:nc])


@_jit
def set_mutes(mflat, masked, elim, depth, rows, n, at, on):
    """Mute (on[e]) or unmute samples at[e] .. newest held of row rows[e], in the order
    given (a digit that ends and the next that starts in one tick touch one row
    twice); rows that do not eliminate are left alone. Then `masked` (any mute bit in
    the row's delay line) is brought up to date for the rows touched.

    `n[e]` is the newest frame of the row; its `depth` slots hold frames
    n - depth + 1 .. n (slot f % depth, flat row rows[e] * depth + f % depth).
    """
    for e in range(len(rows)):
        r = rows[e]
        if not elim[r]:
            continue
        newest = n[e]
        start = at[e]
        stop = FRAME * (newest + 1)
        value = on[e]
        for k in range(depth):
            f = newest - k
            if f < 0:
                break
            base = FRAME * f
            if start >= base + FRAME or stop <= base:
                continue
            slot = r * depth + f % depth
            for s in range(max(start - base, 0), min(stop - base, FRAME)):
                mflat[slot, s] = value
    for e in range(len(rows)):
        r = rows[e]
        if not elim[r]:
            continue
        any_on = False
        for slot in range(r * depth, (r + 1) * depth):
            for s in range(FRAME):
                if mflat[slot, s]:
                    any_on = True
                    break
            if any_on:
                break
        masked[r] = any_on


def warm_up() -> None:
    """Load (or compile) both kernels for the types `DtmfBank` calls them with.

    The first call of a kernel in a process costs ~0.5 s even from the cache; a worker
    pays it when it builds its bank, not in its first tick with calls recording.
    """
    one = np.zeros(1, np.int64)
    w = np.zeros((1, 1), np.int64)
    b = np.zeros((1, 1), np.bool_)
    digit_runs(one, w, b, b, np.zeros((1, 1), np.int16), np.zeros((1, 1, 2), np.complex64),
               np.zeros((1, 1, 2), np.float32), np.zeros((1, 1), np.float32),
               np.full(1, -1, np.int16), np.zeros(1, np.int16), np.zeros(1, np.int16), one.copy(), one.copy(),
               np.zeros((1, 2), np.complex128), np.zeros(1, np.float32), np.zeros(1, np.bool_),
               160, 4, 7, np.float32(0.9), 0.025, 1.0, np.ones(8))
    flag = np.zeros(1, np.bool_)
    set_mutes(np.zeros((1, FRAME), np.bool_), flag, flag, 1, one, one, one, flag)
