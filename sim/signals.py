"""Test signals for demos, load generators and benchmarks: audio that needs no TTS."""

from __future__ import annotations

import numpy as np


def speech_like(seconds: float, f0: float, seed: int, rate: int = 8000) -> np.ndarray:
    """Voiced, syllable-paced audio with pauses: a stand-in for speech that needs no TTS."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    pitch = f0 * (1 + 0.08 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6)))
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 12))
    syllables = np.clip(np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6)), 0, None) ** 2
    phrases = (np.sin(2 * np.pi * 0.25 * t + rng.uniform(0, 6)) > -0.3).astype(float)
    x = voice * syllables * phrases + 0.01 * rng.standard_normal(n)
    return np.clip(np.rint(x / np.max(np.abs(x)) * 12000), -32768, 32767).astype(np.int16)
