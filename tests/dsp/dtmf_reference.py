"""The DTMF bank's decisions as they were written in numpy before issue 25 compiled
them: the digit runs and mutes (`worker/dtmf_runs.py`; `ReferenceBank`, compared with
in test_dtmf_runs.py) and the fine analysis and edge walk (`worker/dtmf_fine.py`;
`NumpyAnalysisBank`, compared with in test_dtmf_fine.py), on the stress load. Only the
methods that changed are here; the rest (prescreen, delay line) is the bank's own.
"""

from __future__ import annotations

import numpy as np

from wholecall.worker.dtmf import (
    _EDGE_CHUNK,
    _EDGE_REACH,
    _FINE_HZ,
    _HZ_PER_RAD,
    _ROT24,
    _TOL_HZ,
    _W2,
    _WINDOW,
    _WINDOW_FIT,
    FRAME,
    FREQ_TOL,
    FREQS_HZ,
    FS,
    GAP_MAX,
    N_DET,
    PURITY,
    PURITY_RUN,
    REL_PEAK_DB,
    SEG,
    SUB,
    TWIST_NORMAL_DB,
    TWIST_REVERSE_DB,
    WIN,
    DtmfBank,
    _projection,
)


class ReferenceBank(DtmfBank):
    """`DtmfBank` with the numpy digit runs and mutes of before the compiled kernels."""

    def _step_runs(self, rows: np.ndarray, n: np.ndarray, ends: np.ndarray, todo: np.ndarray, valid: np.ndarray,
                   digit: np.ndarray, adv: np.ndarray, top: np.ndarray, ew: np.ndarray) -> None:
        lo, hi = top[..., 0], top[..., 1]
        busy = (self._rd[rows] >= 0) | (valid & todo).any(axis=1)
        if busy.any():
            purity = (lo + hi) / np.maximum(ew, np.float32(1e-6))
            self._runs(rows[busy], n[busy], ends[busy], todo[busy], valid[busy], digit[busy], adv[busy],
                       purity[busy])

    def _runs(self, rows: np.ndarray, n: np.ndarray, ends: np.ndarray, todo: np.ndarray,
              valid: np.ndarray, digit: np.ndarray, adv: np.ndarray, purity: np.ndarray) -> None:
        """Advance the digit runs of `rows` window by window (a fixed, small loop).

        The run state is copied out once, updated in local arrays, and written back
        once: per window only a handful of operations on arrays of the busy rows.
        """
        rd, rv, rg = self._rd[rows], self._rv[rows], self._rg[rows]
        ra, rb, racc, rpur = self._ra[rows], self._rb[rows], self._racc[rows], self._rpur[rows]
        act = self._active[rows]
        vt = valid & todo
        any_valid = np.asarray(vt.any(axis=0))
        any_todo = np.asarray(todo.any(axis=0))
        # Nothing happens before a row's first window to do (with a run) or first valid one.
        j0 = int(np.where(rd >= 0, todo.argmax(axis=1), vt.argmax(axis=1)).min())

        # Digits that stop and digits confirmed, in window order. Their edges are found
        # after the loop in one `_edge` call per direction (its cost is mostly per
        # call), then the mutes are applied in the order the windows decided them.
        ended: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        confirmed: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

        def stop(sel: np.ndarray) -> None:
            fin = np.flatnonzero(sel & act)
            if len(fin):
                ended.append((j, fin, rd[fin], rb[fin] - WIN, racc[fin]))
            rd[sel], rv[sel], rg[sel], racc[sel], rpur[sel], act[sel] = -1, 0, 0, 0, 0, False

        for j in range(j0, ends.shape[1]):
            if not any_todo[j]:
                continue
            run = rd >= 0
            if not any_valid[j]:  # only gaps at this window
                rg += run & todo[:, j]
                over = run & (rg > GAP_MAX)
                if over.any():
                    stop(over)
                continue
            v = vt[:, j]
            dj = digit[:, j]
            other = v & (dj != rd)  # a valid window of another digit: a new run
            rg = np.where(v, 0, rg + (run & todo[:, j]))
            over = run & (other | (rg > GAP_MAX))
            if over.any():
                stop(over)
            if other.any():
                rd[other], rv[other], racc[other], rpur[other] = dj[other], 0, 0, 0
                ra[other] = ends[other, j] - WIN
            rv += v
            rb = np.where(v, ends[:, j], rb)
            racc += v[:, None] * adv[:, j]
            rpur += v * purity[:, j]
            cand = v & ~act & (rv >= N_DET) & (rpur >= rv * np.float32(PURITY_RUN))
            if cand.any():
                c = np.flatnonzero(cand)
                dig = rd[c]
                f = np.stack([FREQS_HZ[dig // 4], FREQS_HZ[dig % 4 + 4]], axis=-1)
                dev = np.abs(np.angle(racc[c])) * _HZ_PER_RAD / f
                c = c[(dev <= FREQ_TOL).all(axis=1)]
                if len(c):
                    confirmed.append((j, c, rd[c], ra[c], racc[c]))
                    act[c] = True
        self._rd[rows], self._rv[rows], self._rg[rows] = rd, rv, rg
        self._ra[rows], self._rb[rows], self._racc[rows], self._rpur[rows] = ra, rb, racc, rpur
        self._active[rows] = act
        if ended or confirmed:
            self._apply_edges(rows, n, ended, confirmed)

    def _apply_edges(self, rows: np.ndarray, n: np.ndarray, ended: list, confirmed: list) -> None:
        """Find the edges of the digits one `_runs` call ended and confirmed; mute in order.

        Each entry is (window, row positions, digits, reference window start, phase
        sums). Edges depend only on the held audio, not on the mutes, so all of one
        direction are found together; the mutes then follow window order, a stop
        before a confirmation at the same window, as the loop decided them.
        """
        edges = {}
        for kind, items, direction in (("end", ended, +1), ("start", confirmed, -1)):
            if not items:
                continue
            pos = np.concatenate([it[1] for it in items])
            at = self._edge(rows[pos], n[pos], np.concatenate([it[2] for it in items]),
                            np.concatenate([it[3] for it in items]), np.concatenate([it[4] for it in items]),
                            direction, None)
            bounds = np.cumsum([0] + [len(it[1]) for it in items])
            edges[kind] = [at[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        every = np.concatenate([it[1] for it in ended + confirmed])
        # Order matters only within a row: rows with one stop or confirmation here are
        # muted in one call per direction, rows with several (a digit ended and the next
        # confirmed in one block) in window order. Digits are logged in window order.
        once = np.bincount(every, minlength=len(rows)) == 1
        if ended:
            pos = np.concatenate([it[1] for it in ended])
            sel = once[pos]
            if sel.any():
                pos = pos[sel]
                self._unmute(rows[pos], n[pos], np.concatenate(edges["end"])[sel])
        if confirmed:
            pos = np.concatenate([it[1] for it in confirmed])
            start = self._log(rows[pos], n[pos], np.concatenate([it[2] for it in confirmed]),
                              np.concatenate(edges["start"]))
            sel = once[pos]
            if sel.any():
                self._mask_on(rows[pos[sel]], n[pos[sel]], start[sel])
            bounds = np.cumsum([0] + [len(it[1]) for it in confirmed])
            edges["start"] = [start[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        if once.all():
            return
        order = sorted([(it[0], 0, i) for i, it in enumerate(ended)] + [(it[0], 1, i) for i, it in enumerate(confirmed)])
        for _, is_start, i in order:
            pos = (confirmed if is_start else ended)[i][1]
            at = edges["start" if is_start else "end"][i]
            again = ~once[pos]
            if not again.any():
                continue
            pos, at = pos[again], at[again]
            if is_start:
                self._mask_on(rows[pos], n[pos], at)
            else:
                self._unmute(rows[pos], n[pos], at)

    def _mask_on(self, rows: np.ndarray, n: np.ndarray, start: np.ndarray) -> None:
        """Mute from `start` (clipped by `_log`) to the newest sample held."""
        el = self._elim[rows]
        if el.any():
            self._set_mask(rows[el], n[el], start[el], FRAME * (n[el] + 1), True)

    def _unmute(self, rows: np.ndarray, n: np.ndarray, end: np.ndarray) -> None:
        """Digits that stopped at `end`: unmute what follows."""
        el = self._elim[rows]
        if el.any():
            self._set_mask(rows[el], n[el], end[el], FRAME * (n[el] + 1), False)

    def _set_mask(self, rows: np.ndarray, n: np.ndarray, start: np.ndarray, stop: np.ndarray,
                  value: bool) -> None:
        """Set (or clear) the mute mask of samples [start, stop) held for each row.

        All held frames of all rows in one fancy index (the rows are unique): a loop over
        the delay line's slots cost ten calls of a dozen numpy operations each.
        """
        d = self._depth
        f = n[:, None] - np.arange(d)  # (g, d): the frames held, newest first
        base = FRAME * f
        sel = (f >= 0) & (start[:, None] < base + FRAME) & (stop[:, None] > base)
        if sel.any():
            gi, k = np.nonzero(sel)
            off = np.arange(FRAME) + base[gi, k][:, None]
            inside = (off >= start[gi][:, None]) & (off < stop[gi][:, None])
            slot = rows[gi] * d + f[gi, k] % d
            if value:
                self._mflat[slot] |= inside
            else:
                self._mflat[slot] &= ~inside
        self._masked[rows] = self._mask[rows].any(axis=(1, 2))


_NF = len(_FINE_HZ)
_C_WIN = _projection(_WINDOW, _FINE_HZ)  # (160, 48): each window projected whole, cos x 24, -sin x 24
_PAIR = np.array([0, 4])  # offsets of the low and high group in the 8 bins
_PAIR2 = _PAIR + 2
_T_WIN = np.arange(WIN, dtype=np.float32)[:, None]


def _energy_weights(frames: int) -> np.ndarray:
    """(segments, windows): 10-sample segment energies -> each window's windowed mean square."""
    nwin = (frames * FRAME - WIN) // SUB + 1
    e_win = np.zeros((frames * FRAME // SEG, nwin), np.float32)
    for j in range(nwin):
        e_win[j * SUB // SEG: j * SUB // SEG + WIN // SEG, j] = _W2
    return e_win


class NumpyAnalysisBank(DtmfBank):
    """`DtmfBank` with the numpy fine analysis and edge walk of before `dtmf_fine`."""

    def _windows(self, rows: np.ndarray, n: np.ndarray, frames: int) -> tuple[np.ndarray, ...]:
        h = len(rows)
        d = self._depth
        e_win = _energy_weights(frames)
        nwin = e_win.shape[1]
        last = np.arange(1 - frames, 1)
        span = self._flat[rows[:, None] * d + (n[:, None] + last) % d].reshape(h, frames * FRAME)
        span = span.astype(np.float32, copy=False)
        # The overlapping windows as a strided view, copied once by the reshape.
        win = np.ndarray((h, nwin, WIN), np.float32, span, 0, (frames * FRAME * 4, SUB * 4, 4))
        z = (win.reshape(h * nwin, WIN) @ _C_WIN).reshape(h, nwin, 2 * _NF)
        nseg = frames * FRAME // SEG
        seg = span.reshape(h * nseg, SEG)
        ew = (np.einsum("ij,ij->i", seg, seg).reshape(h, nseg) @ e_win)[:, 1:]  # windows 1 ..
        zr, zi = z[..., :_NF], z[..., _NF:]
        p24 = zr * zr + zi * zi  # mean square at the 24 sub-bins
        pw = np.maximum(np.maximum(p24[..., :8], p24[..., 8:16]), p24[..., 16:])[:, 1:]  # (h, 12, 8)
        g = pw.reshape(h, nwin - 1, 2, 4)  # [..., group, bin]: both groups at once
        a, b, c, e = g[..., 0], g[..., 1], g[..., 2], g[..., 3]
        ab, cd = np.maximum(a, b), np.maximum(c, e)
        top = np.maximum(ab, cd)  # (h, nwin - 1, 2): strongest low, strongest high
        second = np.maximum(np.minimum(ab, cd), np.maximum(np.minimum(a, b), np.minimum(c, e)))
        bins = np.where(cd > ab, (e > c) + _PAIR2, (b > a) + _PAIR)  # (h, nwin - 1, 2) in 0..7
        at = (np.arange(h)[:, None, None] * nwin + np.arange(1, nwin)[None, :, None]) * _NF + bins
        p = p24.reshape(-1)
        pm, p0, pp = p[at], p[at + 8], p[at + 16]
        k = at + np.where(pp > np.maximum(pm, p0), 16, 8 * (p0 > pm))
        zc = (zr + 1j * zi).astype(np.complex64).reshape(-1)
        adv = zc[k] * np.conj(zc[k - _NF]) * _ROT24[k % _NF]
        hz = np.angle(adv) * np.float32(_HZ_PER_RAD)
        lo, hi = top[..., 0], top[..., 1]
        tol = _TOL_HZ[bins]
        rel = np.float32(10 ** (REL_PEAK_DB / 10))
        valid = (
            (lo >= self._tone_ms)
            & (hi >= self._tone_ms)
            & (hi <= lo * np.float32(10 ** (TWIST_REVERSE_DB / 10)))
            & (lo <= hi * np.float32(10 ** (TWIST_NORMAL_DB / 10)))
            & (lo + hi >= ew * np.float32(PURITY))
            & (lo >= second[..., 0] * rel)
            & (hi >= second[..., 1] * rel)
            & (np.abs(hz[..., 0]) <= tol[..., 0])
            & (np.abs(hz[..., 1]) <= tol[..., 1])
        )
        digit = (bins[..., 0] * 4 + bins[..., 1] - 4).astype(np.int16)
        return valid, digit, adv, top, ew

    def _held(self, rows: np.ndarray, n: np.ndarray, offs: np.ndarray, limit: np.ndarray | None) -> np.ndarray:
        """Samples at absolute indices `offs` (rows x k) from the ring; 0 where not held."""
        frame = offs // FRAME
        cur = n[:, None]  # the ring holds frames cur - depth + 1 .. cur
        held = (frame >= 0) & (frame <= cur) & (frame > cur - self._depth)
        if limit is not None:
            held &= offs < limit[:, None]
        x = self._flat[rows[:, None] * self._depth + frame % self._depth, offs % FRAME]
        return np.where(held, x.astype(np.float32, copy=False), np.float32(0.0))

    def _edge(self, rows: np.ndarray, n: np.ndarray, digits: np.ndarray, ref: np.ndarray, acc: np.ndarray,
              direction: int, limit: np.ndarray | None) -> np.ndarray:
        m = len(rows)
        f = FREQS_HZ[np.stack([digits // 4, digits % 4 + 4], axis=1)]  # (m, 2) nominal
        f = f + np.angle(acc) * _HZ_PER_RAD  # measured deviation
        om = (2 * np.pi * f / FS).astype(np.float32)[:, None, :]  # rad/sample
        back = direction < 0
        anchor = ref + SUB if back else ref + WIN - SUB
        walked = np.zeros(m, np.int64)
        going = np.arange(m)
        nseg = _EDGE_CHUNK // SEG
        chunk = SEG * np.arange(nseg + 1)[:, None] + np.arange(SEG)  # (nseg + 1, SEG)
        if back:
            chunk = -1 - chunk[:, ::-1]  # segments before the front, nearest first
        for _ in range(_EDGE_REACH // _EDGE_CHUNK):
            r, nn, o = rows[going], n[going], om[going]
            lim = None if limit is None else limit[going]
            front = anchor[going] - walked[going] if back else anchor[going] + walked[going]
            fit0 = np.minimum(front, ref[going]) if back else np.maximum(front - WIN, ref[going])
            x = self._held(r, nn, fit0[:, None] + np.arange(WIN), lim)
            ph = o * _T_WIN  # (g, WIN, 2), time from fit0
            wx = (x * _WINDOW_FIT)[:, None, :]
            cr = np.matmul(wx, np.cos(ph))[:, 0, :, None]  # (g, 2, 1): C = cr - j ci
            ci = np.matmul(wx, np.sin(ph))[:, 0, :, None]
            at = front[:, None] + chunk.reshape(-1)  # absolute sample indices
            ph = o * (at - fit0[:, None])[..., None].astype(np.float32)
            pred = (np.matmul(np.cos(ph), cr) + np.matmul(np.sin(ph), ci)).reshape(len(going), -1, SEG)
            y = self._held(r, nn, at, lim).reshape(pred.shape)
            c = (y * pred).sum(axis=2) / np.maximum((pred * pred).sum(axis=2), np.float32(1e-9))
            strong = c > 0.5
            tone = strong[:, :-1] | ((c[:, :-1] > 0) & strong[:, 1:])
            run = np.logical_and.accumulate(tone, axis=1).sum(axis=1)
            walked[going] += SEG * run
            going = going[run == nseg]
            if not len(going):
                break
        return anchor - walked - SEG if back else anchor + walked + SEG
