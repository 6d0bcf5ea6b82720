"""The DTMF bank's fine analysis and edge walk, compiled (numba): one call per tick each.

Why compiled: both run on the few hundred legs that are hot in a tick (callers keying
digits), and in numpy each was ~30 array operations on small arrays: at 10,000
channels of the stress load that was ~9 us per channel-second, most of it numpy's
per-call overhead, and it grew with every part a tick is split into (the worker
splits ticks so that stops need not wait for a whole tick: 10 parts cost +12 us per
channel-second, almost all of it here). Here the cost is per hot leg only.

Same arithmetic as the numpy code they replace (tests/dsp/dtmf_reference.py keeps
it): float32 projections, energies and levels, complex64 phase advances, float32
atan2 for the deviation. Only summation order differs (BLAS blocks its dot products),
so levels agree to float32 rounding; tests/dsp/test_dtmf_fine.py compares verdicts
and every digit, mute and output sample on the stress load.

`nogil`: the worker's command thread runs while a kernel works. `cache`: compiled once
per machine into __pycache__; `warm_up` loads them before the first tick.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from wholecall.formats.codecs import FRAME

_jit = nb.njit(cache=True, nogil=True)

SUB = 40  # hop of the fine analysis (5 ms): dtmf.SUB (dtmf.py asserts they agree)
SEG = 10  # segment of the energies and of the edge walk: dtmf.SEG
WIN = 160  # analysis window: dtmf.WIN


@_jit
def _span(flat, depth, row, newest, frames, span):
    """The row's last `frames` frames (the newest is frame `newest`) as float32."""
    for f in range(frames):
        slot = row * depth + (newest - frames + 1 + f) % depth
        for t in range(FRAME):
            span[f * FRAME + t] = np.float32(flat[slot, t])


@_jit
def _sub_sums(span, c_sub, sums, acc):
    """Each sub-block's projections on the SUB x 4NF basis `c_sub` (the inner loop over
    the basis' columns is the one that vectorises)."""
    for q in range(sums.shape[0]):
        acc[:] = 0.0
        for u in range(SUB):
            x = span[q * SUB + u]
            for k in range(c_sub.shape[1]):
                acc[k] += x * c_sub[u, k]
        sums[q, :] = acc


@_jit
def fine_windows(flat, depth, rows, n, frames, c_sub, rot, w2, tone_ms, twist_rev, twist_norm,  # noqa: PLR0913
                 purity, rel, tol_hz, rot24, hz_per_rad):
    """Judge the windows ending in the last frames of each row (`DtmfBank._fine`).

    Row i's span is its frames n[i] - frames + 1 .. n[i] of the delay line `flat`
    (rows x depth slots). Window j covers samples SUB * j .. SUB * j + WIN of the span;
    windows 1 .. nwin - 1 are judged (window 0 gives window 1 its phase advance).
    Each window is projected on NF sub-bins, three per DTMF bin (sub-bin k, k + 8 and
    k + 16 belong to bin k), through its sub-blocks: `c_sub` (SUB, 4 * NF) holds the
    scaled cos and -sin at time u in the sub-block, then the same times u; `rot`
    (3, NF) turns a sub-block's sums to window offsets SUB, 2 SUB and 3 SUB. With the
    trapezoid window (ramps of one sub-block: (u + 0.5) / SUB up, (SUB - 0.5 - u) / SUB
    down), window j is (S1 + S0 / 2) / SUB of sub-block j, S0 of j + 1 and j + 2 turned,
    and ((SUB - 1/2) S0 - S1) / SUB of j + 3 turned, each relative to its sub-block.
    `w2` weights a window's 10-sample segment energies into its windowed mean square.

    Returns, each (rows, nwin - 1, ...): valid, digit (int16), the phase advance of
    each tone (complex64, x 2), the two tones' mean squares (float32, x 2) and the
    window's (float32).
    """
    h = len(rows)
    length = frames * FRAME
    nsub = length // SUB
    nwin = nsub - WIN // SUB + 1
    nj = nwin - 1
    nf = rot.shape[1]
    valid = np.zeros((h, nj), np.bool_)
    digit = np.zeros((h, nj), np.int16)
    adv = np.zeros((h, nj, 2), np.complex64)
    top = np.zeros((h, nj, 2), np.float32)
    ew = np.zeros((h, nj), np.float32)
    span = np.empty(length, np.float32)
    eseg = np.empty(length // SEG, np.float32)
    sums = np.empty((nsub, 4 * nf), np.float32)  # per sub-block: S0 (re, im), S1 (re, im)
    z = np.empty((nwin, 2 * nf), np.float32)
    p24 = np.empty((nwin, nf), np.float32)
    acc = np.empty(4 * nf, np.float32)
    lo_hi = np.empty(2, np.float32)
    second = np.empty(2, np.float32)
    bins = np.empty(2, np.int64)
    pw = np.empty(4, np.float32)
    rot_re, rot_im = rot.real.copy(), rot.imag.copy()
    half = np.float32(0.5)
    inv = np.float32(1.0 / SUB)
    tail = np.float32(SUB - 0.5)
    for i in range(h):
        _span(flat, depth, rows[i], n[i], frames, span)
        for s in range(length // SEG):
            e = np.float32(0.0)
            for t in range(SEG):
                v = span[s * SEG + t]
                e += v * v
            eseg[s] = e
        _sub_sums(span, c_sub, sums, acc)
        for j in range(nwin):
            for k in range(nf):
                # Rising ramp: sub-block j as it is (its time is the window's); the flat
                # top and the falling ramp turned to their offsets in the window.
                re = (sums[j, 2 * nf + k] + half * sums[j, k]) * inv
                im = (sums[j, 3 * nf + k] + half * sums[j, nf + k]) * inv
                a, b = sums[j + 1, k], sums[j + 1, nf + k]
                re += rot_re[0, k] * a - rot_im[0, k] * b
                im += rot_re[0, k] * b + rot_im[0, k] * a
                a, b = sums[j + 2, k], sums[j + 2, nf + k]
                re += rot_re[1, k] * a - rot_im[1, k] * b
                im += rot_re[1, k] * b + rot_im[1, k] * a
                a = (tail * sums[j + 3, k] - sums[j + 3, 2 * nf + k]) * inv
                b = (tail * sums[j + 3, nf + k] - sums[j + 3, 3 * nf + k]) * inv
                re += rot_re[2, k] * a - rot_im[2, k] * b
                im += rot_re[2, k] * b + rot_im[2, k] * a
                z[j, k] = re
                z[j, nf + k] = im
                p24[j, k] = re * re + im * im
        for j in range(1, nwin):
            q = j - 1
            e = np.float32(0.0)
            s0 = j * SUB // SEG
            for u in range(WIN // SEG):
                e += eseg[s0 + u] * w2[u]
            ew[i, q] = e
            for g in range(2):  # the low group (bins 0..3), then the high one (4..7)
                for b in range(4):
                    k = 4 * g + b
                    pw[b] = max(max(p24[j, k], p24[j, k + 8]), p24[j, k + 16])
                a, b_, c, d = pw[0], pw[1], pw[2], pw[3]
                ab, cd = max(a, b_), max(c, d)
                lo_hi[g] = max(ab, cd)
                second[g] = max(min(ab, cd), max(min(a, b_), min(c, d)))
                bins[g] = 4 * g + (2 + (1 if d > c else 0) if cd > ab else (1 if b_ > a else 0))
                # The strongest sub-bin of the chosen bin gives the phase advance.
                k0 = bins[g]
                pm, p0, pp = p24[j, k0], p24[j, k0 + 8], p24[j, k0 + 16]
                k = k0 + (16 if pp > max(pm, p0) else (8 if p0 > pm else 0))
                zc = np.complex64(complex(z[j, k], z[j, k + nf]))
                zp = np.complex64(complex(z[j - 1, k], z[j - 1, k + nf]))
                ad = zc * np.conj(zp) * rot24[k]
                adv[i, q, g] = ad
                top[i, q, g] = lo_hi[g]
            lo, hi = lo_hi[0], lo_hi[1]
            hz_lo = np.float32(math.atan2(adv[i, q, 0].imag, adv[i, q, 0].real)) * hz_per_rad
            hz_hi = np.float32(math.atan2(adv[i, q, 1].imag, adv[i, q, 1].real)) * hz_per_rad
            valid[i, q] = (
                lo >= tone_ms and hi >= tone_ms
                and hi <= lo * twist_rev and lo <= hi * twist_norm
                and lo + hi >= e * purity
                and lo >= second[0] * rel and hi >= second[1] * rel
                and abs(hz_lo) <= tol_hz[bins[0]] and abs(hz_hi) <= tol_hz[bins[1]]
            )
            digit[i, q] = bins[0] * 4 + bins[1] - 4
    return valid, digit, adv, top, ew


@_jit
def _held(flat, depth, row, newest, limit, off):
    """Sample `off` of the row (0 where the delay line does not hold it, or past `limit`)."""
    frame = off // FRAME
    if frame < 0 or frame > newest or frame <= newest - depth or off >= limit:
        return np.float32(0.0)
    return np.float32(flat[row * depth + frame % depth, off % FRAME])


@_jit
def edges(flat, depth, rows, n, om, ref, back, limit, window_fit, reach, chunk):  # noqa: PLR0913
    """Walk from each digit's valid window to its onset (`back`) or end (`DtmfBank._edge`).

    om (rows, 2): the two tones in rad/sample (float32); ref: the start of the valid
    window; limit: the first sample not to look at, per row (int64 max: none). Returns
    the first muted sample (onset) or the first sample after the mute (end).
    """
    m = len(rows)
    nseg = chunk // SEG
    out = np.empty(m, np.int64)
    x = np.empty(WIN, np.float32)
    c = np.empty(nseg + 1, np.float32)
    for i in range(m):
        r, nn, lim = rows[i], n[i], limit[i]
        o0, o1 = om[i, 0], om[i, 1]
        anchor = ref[i] + SUB if back else ref[i] + WIN - SUB
        walked = 0
        for _ in range(reach // chunk):
            front = anchor - walked if back else anchor + walked
            fit0 = min(front, ref[i]) if back else max(front - WIN, ref[i])
            # Complex amplitude of each tone on the fit region; the tone goes on as
            # Re(sum_k C_k e^{j w_k t}) with C = cr - j ci.
            cr0 = ci0 = cr1 = ci1 = np.float32(0.0)
            for t in range(WIN):
                x[t] = _held(flat, depth, r, nn, lim, fit0 + t) * window_fit[t]
            for t in range(WIN):
                tt = np.float32(t)
                p0, p1 = o0 * tt, o1 * tt
                cr0 += x[t] * np.float32(math.cos(p0))
                cr1 += x[t] * np.float32(math.cos(p1))
                ci0 += x[t] * np.float32(math.sin(p0))
                ci1 += x[t] * np.float32(math.sin(p1))
            for s in range(nseg + 1):
                yp = pp = np.float32(0.0)
                for u in range(SEG):
                    at = front - SEG * (s + 1) + u if back else front + SEG * s + u
                    tt = np.float32(at - fit0)
                    p0, p1 = o0 * tt, o1 * tt
                    pred = (np.float32(math.cos(p0)) * cr0 + np.float32(math.cos(p1)) * cr1) \
                        + (np.float32(math.sin(p0)) * ci0 + np.float32(math.sin(p1)) * ci1)
                    yp += _held(flat, depth, r, nn, lim, at) * pred
                    pp += pred * pred
                c[s] = yp / max(pp, np.float32(1e-9))
            # A segment carries the tone when its projection on the prediction exceeds
            # half of it; one that still leans towards it is let through when the next
            # one carries it.
            run = 0
            while run < nseg and (c[run] > 0.5 or (c[run] > 0 and c[run + 1] > 0.5)):
                run += 1
            walked += SEG * run
            if run < nseg:
                break
        out[i] = anchor - walked - SEG if back else anchor + walked + SEG
    return out


def warm_up(sample_types: tuple[type, ...] = (np.int16, np.float32)) -> None:
    """Load (or compile) both kernels for the types `DtmfBank` calls them with (int16
    and float32 delay lines; a bank asks for its own). The first call of a kernel in a
    process costs ~0.5 s even from the cache; a worker pays it when it builds its bank,
    not in its first tick. Compiling costs ~7.8 s of CPU per type: the worker's banks are
    int16, so a machine's first worker compiles that one only."""
    one = np.zeros(1, np.int64)
    for t in sample_types:
        flat = np.zeros((6, FRAME), t)
        fine_windows(flat, 6, one, one + 5, 4, np.zeros((SUB, 96), np.float32), np.zeros((3, 24), np.complex64),
                     np.zeros(16, np.float32),
                     np.float32(1), np.float32(1), np.float32(1), np.float32(1), np.float32(1),
                     np.zeros(8, np.float32), np.zeros(24, np.complex64), np.float32(1))
        edges(flat, 6, one, one + 5, np.zeros((1, 2), np.float32), one, True, one, np.zeros(WIN, np.float32),
              640, 80)
