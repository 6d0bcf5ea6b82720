"""Known audio for the conformance tests, and ways to look at what was recorded.

Everything is int16 at 8 kHz, built from whole 20 ms frames where timing matters so
that expected lengths are exact. Producers here write faster than real time: the
recorder measures silence on the audio, so the results must not depend on pacing.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import numpy as np
import soundfile as sf

from wholecall.worker.codecs.g711 import alaw_decode, alaw_encode

RATE = 8000
FRAME = 160  # 20 ms: the worker's unit, and the +-1 frame tolerance of the length checks
PREROLL_MAX = 2000  # DESIGN: at most 250 ms of leading audio before the first loud frame
TAIL_MAX = 2000  # DESIGN: at most 250 ms of silent tail kept after a SILENCE end
HANGOVER = 1600  # Config.silence_hangover_ms default (200 ms) in samples


def _delay() -> int:
    # The recorder's only delay: the DTMF eliminator's fixed look-ahead, which the
    # pipeline reads from the bank too. Silence and size are decided on delayed audio.
    from wholecall.worker.dtmf import DtmfBank

    return int(DtmfBank.lookahead_frames) * FRAME


DELAY = _delay()  # samples


def tone(freq: float, seconds: float, amp: float = 8000.0) -> np.ndarray:
    """A sine burst, -12 dBFS by default (far above the silence threshold)."""
    t = np.arange(int(round(seconds * RATE))) / RATE
    return np.rint(amp * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def silence(seconds: float) -> np.ndarray:
    """Digital silence."""
    return np.zeros(int(round(seconds * RATE)), np.int16)


def noise(seconds: float, dbfs: float, seed: int = 0) -> np.ndarray:
    """White noise whose mean square is `dbfs` relative to full scale (the silence detector's measure)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(int(round(seconds * RATE)))
    x *= 32768.0 * 10 ** (dbfs / 20) / np.sqrt(np.mean(x * x))
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)


def alaw_exact(x: np.ndarray) -> np.ndarray:
    """`x` as it comes back from an A-law file (G.711 is lossy; this is its exact result)."""
    return alaw_decode(alaw_encode(np.asarray(x, np.int16)))


def is_digital_silence(x: np.ndarray) -> bool:
    """Recorded digital silence: A-law has no zero code, so silence reads back as +-8."""
    return bool(np.array_equal(np.asarray(x), alaw_exact(np.zeros(len(x), np.int16))))


def mix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The mixed-mode sum of two legs, saturated like the worker's mixer."""
    n = max(len(a), len(b))
    s = np.zeros(n, np.int32)
    s[:len(a)] += a
    s[:len(b)] += b
    return np.clip(s, -32768, 32767).astype(np.int16)


def feed(channel, inbound: np.ndarray | None, outbound: np.ndarray | None, frame: int = FRAME) -> None:
    """Write both legs frame by frame, interleaved, as two (fast) producers would."""
    n = max(len(inbound) if inbound is not None else 0, len(outbound) if outbound is not None else 0)
    for i in range(0, n, frame):
        if inbound is not None and i < len(inbound):
            channel.inbound.write(inbound[i:i + frame])
        if outbound is not None and i < len(outbound):
            channel.outbound.write(outbound[i:i + frame])


def feed_both(channel, audio: np.ndarray) -> None:
    """The same audio timeline on the inbound leg, silence on the outbound (both legs advance)."""
    feed(channel, audio, np.zeros(len(audio), np.int16))


def read(path: str) -> tuple[np.ndarray, int]:
    """A recording as int16 samples ((n,) mono or (n, 2) stereo) and its rate."""
    data, rate = sf.read(path, dtype="int16")
    return data, rate


def level_at(x: np.ndarray, freq: float, rate: int = RATE) -> float:
    """Share of the energy of `x` within +-15 Hz of `freq` (0..1)."""
    x = np.asarray(x, float)
    power = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / rate)
    band = np.abs(freqs - freq) <= 15
    return float(power[band].sum() / (power.sum() + 1e-12))


def has_tone(x: np.ndarray, freq: float, rate: int = RATE) -> bool:
    """`freq` holds at least 5 % of the energy (two equal tones hold about 50 % each;
    G.711 distortion products stay below 0.1 %)."""
    return len(x) > 256 and level_at(x, freq, rate) > 0.05


def loud_span(x: np.ndarray, threshold: int = 100) -> tuple[int, int]:
    """(first, last + 1) sample index whose magnitude exceeds `threshold`; (0, 0) if none."""
    idx = np.flatnonzero(np.abs(np.asarray(x, np.int32)) > threshold)
    return (int(idx[0]), int(idx[-1]) + 1) if len(idx) else (0, 0)


def files_under(root: str) -> set[str]:
    """Every file (not directory) below `root`, relative to it."""
    out = set()
    for d, _, files in os.walk(root):
        for f in files:
            out.add(os.path.relpath(os.path.join(d, f), root))
    return out


def in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, dict]:
    """Run `fn` in a thread; the dict gets "result" or "error" and "elapsed"."""
    box: dict = {}

    def run() -> None:
        t0 = time.monotonic()
        try:
            box["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            box["error"] = e
        box["elapsed"] = time.monotonic() - t0

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def wait_for(pred: Callable[[], bool], timeout: float = 10.0, poll: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(poll)
    return pred()


def write_wav(path: str, x: np.ndarray, rate: int = RATE) -> str:
    sf.write(path, x, rate, subtype="PCM_16")
    return path
