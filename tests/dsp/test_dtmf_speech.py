"""Real speech (espeak-ng: an hour in every language it has, a dozen voice variants,
5 speeds, 6 pitches, digits read aloud) through the bank: no false detections
(talk-off), and digits keyed into speech are removed completely while the speech
around them survives.

Q.24's talk-off figures are given for speech at a mean level of -15 dBm0; the speech
here runs at -25, -15 and -5 dBm0 (active level), an hour at each.
"""

from __future__ import annotations

import numpy as np
from dtmftools import DIGITS, FRAME, RATE, pair, run_bank, speech_at, tone, white

LEVELS_DBM0 = (-25.0, -15.0, -5.0)
ROWS_PER_LEVEL = 128


def test_talkoff_no_false_detection_in_speech(speech, report):
    x, voices = speech
    minutes = len(x) / RATE / 60
    assert minutes >= 60.0
    n = len(x) // (ROWS_PER_LEVEL * FRAME) * FRAME  # samples per row
    sigs = []
    for level in LEVELS_DBM0:
        s = speech_at(x, level)
        sigs += [s[i * n:(i + 1) * n] for i in range(ROWS_PER_LEVEL)]
    run = run_bank(sigs)
    hours = len(sigs) * n / RATE / 3600
    changed = sum(int((run.out[i] != np.float32(sigs[i])).sum()) for i in range(len(sigs)))
    report["talk-off: speech"] = (f"{minutes:.1f} min x {len(LEVELS_DBM0)} levels {LEVELS_DBM0} dBm0 = "
                                  f"{hours * 60:.0f} min; {len(voices)} utterances, "
                                  f"{len({v.split('+')[0].split('@')[0] for v in voices})} languages, "
                                  f"{len({v.split('@')[0].partition('+')[2] for v in voices})} voice variants, "
                                  f"{len({v.split('@')[1] for v in voices})} speed/pitch settings")
    report["talk-off: false detections"] = (f"{len(run.events)} ({len(run.events) / hours:.1f} per hour); "
                                            f"speech samples altered: {changed}")
    assert run.events == [], [(e.row, e.digit) for e in run.events]
    assert changed == 0


def _tone_power_at(y: np.ndarray, f_lo: float, f_hi: float) -> float:
    """Mean square of the components of `y` at the two frequencies (least squares)."""
    t = np.arange(len(y)) / RATE
    basis = np.stack([np.cos(2 * np.pi * f_lo * t), np.sin(2 * np.pi * f_lo * t),
                      np.cos(2 * np.pi * f_hi * t), np.sin(2 * np.pi * f_hi * t)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, y.astype(np.float64), rcond=None)
    return float(((basis @ coef) ** 2).mean())


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    return float((a @ b) / np.sqrt((a @ a) * (b @ b)))


def test_digits_keyed_into_speech_are_removed_completely(speech, report):
    """16 digits per row at known places in running speech; two ways of keying:
    the tone replaces the caller's speech (handset muted while keying), or is added on
    top of speech at least 20 dB below it (someone talking in the background; where the
    speech is louder than that, it is turned down around the tone)."""
    x, _ = speech
    s = speech_at(x, -15.0)
    rng = np.random.default_rng(55)
    rows, per_row = 10, 16
    n = 60 * RATE  # one minute per row
    sigs, clean, spans = [], [], []
    for r in range(rows):
        base = s[r * n:(r + 1) * n].copy()
        mode_add = r % 2 == 1
        if mode_add:
            base *= 10 ** (-20 / 20)
        sig = base + white(n, -65, rng)
        ref = sig.copy()
        row_spans = []
        starts = np.sort(rng.choice(np.arange(RATE, n - RATE, 2 * RATE // 3), per_row, replace=False))
        for i, a in enumerate(starts):
            d = DIGITS[(r + i) % 16]
            ms = float(rng.uniform(45, 120))
            level = float(rng.uniform(-25, -5))
            twist = float(rng.uniform(-8, 4))
            dev = tuple(rng.uniform(-0.015, 0.015, 2))
            t = tone(d, ms, level - max(0.0, twist), twist, dev, phase=tuple(rng.uniform(0, 6.3, 2)))
            a = int(a) + int(rng.integers(0, FRAME))
            b = a + len(t)
            if mode_add:
                p_speech = float((base[a:b] ** 2).mean()) + 1e-9
                duck = min(1.0, np.sqrt(float((t**2).mean()) / 100 / p_speech))
                around = slice(a - 800, b + 800)
                sig[around] -= base[around] * (1 - duck)
                ref[around] -= base[around] * (1 - duck)
                sig[a:b] += t
            else:
                sig[a:b] = t + white(b - a, -65, rng)
                ref[a:b] = 0.0  # nothing of the caller to keep there
            f_lo, f_hi = pair(d)
            row_spans.append((a, b, d, f_lo * (1 + dev[0]), f_hi * (1 + dev[1]), float((t**2).mean())))
        sigs.append(sig)
        clean.append(ref)
        spans.append(row_spans)
    run = run_bank(sigs)

    found = sum(run.digits(r) == "".join(sp[2] for sp in spans[r]) for r in range(rows))
    resid_db, guard_pre, guard_post, near_out, near_ref = [], [], [], [], []
    outside_out, outside_ref = [], []
    for r in range(rows):
        y = run.out[r].astype(np.float64)
        keep = np.ones(n, bool)
        for a, b, _, f_lo, f_hi, p_tone in spans[r]:
            resid = _tone_power_at(y[a:b], f_lo, f_hi)
            resid_db.append(10 * np.log10(max(resid, 1e-30) / p_tone))
            i, e = a, b
            while i > 0 and y[i - 1] == 0:
                i -= 1
            while e < n and y[e] == 0:
                e += 1
            guard_pre.append(a - i)
            guard_post.append(e - b)
            w = int(0.1 * RATE)  # the 100 ms either side of the tone, guard included
            near_out += [y[a - w:a], y[b:b + w]]
            near_ref += [clean[r][a - w:a], clean[r][b:b + w]]
            keep[i:e] = False
        outside_out.append(y[keep])
        outside_ref.append(clean[r][keep])
    c_near = _corr(np.concatenate(near_out), np.concatenate(near_ref))
    c_out = _corr(np.concatenate(outside_out), np.concatenate(outside_ref))
    worst = max(resid_db)
    report["elimination: digits found"] = f"{found}/{rows} rows with all {per_row} digits, in order"
    report["elimination: residual at the DTMF frequencies inside each tone"] = (
        f"worst {worst:.0f} dB re the tone" + (" (exact zeros)" if worst < -250 else ""))
    report["elimination: muted outside the tone (guard)"] = (
        f"before max {max(guard_pre) / 8:.2f} ms mean {np.mean(guard_pre) / 8:.2f} ms; "
        f"after max {max(guard_post) / 8:.2f} ms mean {np.mean(guard_post) / 8:.2f} ms")
    report["elimination: speech correlation"] = (
        f"100 ms either side of each tone (guard included) {c_near:.4f}; rest of the speech {c_out:.6f}")
    assert found == rows
    assert run.onsets_cut == 0
    assert worst <= -40.0
    assert max(guard_pre) <= 80 and max(guard_post) <= 80  # <= 10 ms
    assert c_near >= 0.95
    assert c_out == 1.0 or c_out > 0.999999
