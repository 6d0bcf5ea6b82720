"""The DTMF bank's digit runs and mutes as they were written in numpy before issue 25
compiled them (`worker/dtmf_runs.py`): the reference test_dtmf_runs.py compares the
compiled bank with, on the stress load. Only the methods that changed are here; the
rest (prescreen, edges, delay line) is the bank's own.
"""

from __future__ import annotations

import numpy as np

from wholecall.worker.dtmf import (
    _HZ_PER_RAD,
    FRAME,
    FREQ_TOL,
    FREQS_HZ,
    GAP_MAX,
    N_DET,
    PURITY_RUN,
    WIN,
    DtmfBank,
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
