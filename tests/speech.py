"""Real speech for end-to-end tests: espeak-ng sentences at 8 kHz int16, cached per session."""

from __future__ import annotations

import functools
import io
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf
import soxr


@functools.cache
def say(text: str, voice: str = "en", speed: int = 160, dbfs: float = -20.0) -> np.ndarray:
    """`text` spoken by espeak-ng, 8 kHz int16 with its RMS at `dbfs` (skips the test if espeak-ng is missing)."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text],
                         capture_output=True, check=True).stdout
    x, rate = sf.read(io.BytesIO(wav), dtype="float64")
    x = soxr.resample(x, rate, 8000)
    # espeak pads with silence: cut it so "the last speech" is where the audio says it is.
    loud = np.flatnonzero(np.abs(x) > 0.02)
    x = x[loud[0]:loud[-1] + 1]
    rms = np.sqrt(np.mean(x ** 2))
    x = x / rms * 32768 * 10 ** (dbfs / 20)
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)


def line_noise(n: int, dbfs: float, seed: int = 0) -> np.ndarray:
    """White noise at `dbfs` RMS: the hiss of a telephone line."""
    rng = np.random.default_rng(seed)
    return np.rint(rng.standard_normal(n) * 32768 * 10 ** (dbfs / 20)).astype(np.int16)
