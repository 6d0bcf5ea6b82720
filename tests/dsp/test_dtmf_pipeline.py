"""The bank inside the real recorder (controller + workers + rings + WAV): the caller's
digits vanish from the file, the other leg's audio under them stays, and with
dtmf_elim=False the digits are recorded."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from dtmftools import RATE, pair, tone, white

from tests.conftest import feed

DIGITS_KEYED = "4539"
AT = [8000 + 4000 * i for i in range(len(DIGITS_KEYED))]  # sample where each digit starts
TONE_MS = 70


def _legs(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = 8000 + 4000 * len(DIGITS_KEYED) + 8000
    caller = white(n, -45, rng)  # a quiet line, the caller keys digits
    for d, a in zip(DIGITS_KEYED, AT):
        t = tone(d, TONE_MS, -9, phase=tuple(rng.uniform(0, 6, 2)))
        caller[a:a + len(t)] += t
    t = np.arange(n) / RATE
    prompt = 3000 * np.sin(2 * np.pi * 440 * t)  # the far side keeps playing a prompt
    return (np.rint(caller).astype(np.int16), np.rint(prompt).astype(np.int16))


def _power_at(y: np.ndarray, freqs: tuple[float, float]) -> float:
    t = np.arange(len(y)) / RATE
    basis = np.stack([f(2 * np.pi * fr * t) for fr in freqs for f in (np.cos, np.sin)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, y.astype(np.float64), rcond=None)
    return float(((basis @ coef) ** 2).mean())


@pytest.mark.parametrize("elim", [True, False])
def test_recorded_call_has_no_digits(answered, elim):
    caller, prompt = _legs(1)
    rec = answered.WholeCallRecorder
    assert rec.start("keyed.wav", file_format="s16bit", dtmf_elim=elim)
    feed(answered, caller, prompt)
    assert rec.stop()
    data, rate = sf.read(rec.last_result.path, dtype="int16")
    assert rate == RATE
    n = min(len(data), len(caller))
    assert n >= len(caller) - 160
    data = data[:n].astype(np.float64)
    for d, a in zip(DIGITS_KEYED, AT):
        span = slice(a, a + TONE_MS * RATE // 1000)
        keyed = _power_at(caller[span], pair(d))
        left = _power_at(data[span], pair(d))
        if elim:
            assert left < keyed * 1e-4, f"digit {d}: {10 * np.log10(left / keyed):.1f} dB left"
            # the prompt on the other leg is still there, untouched, under the muted digit
            assert np.array_equal(data[span], prompt[span].astype(np.float64))
        else:
            assert left > keyed * 0.5
    quiet = slice(2000, 6000)  # far from any digit: the mix as is
    assert np.array_equal(data[quiet], np.clip(caller[quiet].astype(np.int32) + prompt[quiet], -32768, 32767))
