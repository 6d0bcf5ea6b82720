"""Streaming 8 kHz -> file-rate conversion for one recording.

Calls arrive at 8000 Hz; files may be 6000, 11000 or 11025 Hz. The conversion
is soxr's band-limited resampler (quality "HQ": passband to ~91% of the lower
Nyquist, >100 dB stopband) run as ONE stream per recording, so its filter
state carries across the pipeline's blocks: no click or phase jump at block
edges, and the output is sample-identical to resampling the whole call at once
however the input was cut.

Why float32 inside: soxr's int16 path dithers with a state that depends on
how the input was chunked (measured: outputs differ by up to 2 LSB from the
one-shot result), while the float path is chunk-invariant. We round to nearest
and clip ourselves. At 8000 Hz nothing is done at all (bit-exact pass-through).

Latency: soxr works in internal blocks, so the output trails the input by up
to ~115 ms (11000/11025 Hz) or ~150 ms (6000 Hz), measured. That is audio a
crash can lose on top of the last header refresh, well inside the 2 s bound.
"""

from __future__ import annotations

import numpy as np
import soxr

from wholecall.formats.codecs import CALL_RATE


def to_int16(samples: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1) to int16: round to nearest, clip (no dither)."""
    y = np.multiply(samples, np.float32(32768.0), dtype=np.float32)
    np.rint(y, out=y)
    np.clip(y, -32768, 32767, out=y)
    return y.astype(np.int16)


class StreamResampler:
    """Resample int16 frames (n, channels) from 8000 Hz to `out_rate` across many calls."""

    def __init__(self, out_rate: int, channels: int, in_rate: int = CALL_RATE) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self.channels = channels
        self._stream = None if out_rate == in_rate else \
            soxr.ResampleStream(in_rate, out_rate, channels, dtype="float32", quality="HQ")
        self._flushed = False

    @property
    def passthrough(self) -> bool:
        """True when no conversion happens (file rate equals call rate)."""
        return self._stream is None

    def process(self, frames: np.ndarray) -> np.ndarray:
        """Converted frames for the next input block (int16, shape (m, channels)); m may be 0."""
        if self._stream is None:
            return frames
        if self._flushed:
            raise RuntimeError("resampler already flushed")
        x = np.multiply(frames, np.float32(1.0 / 32768.0), dtype=np.float32)
        if self.channels == 1:
            x = x.reshape(-1)
        y = self._stream.resample_chunk(x, last=False)
        return to_int16(y).reshape(-1, self.channels)

    def flush(self) -> np.ndarray:
        """The audio still inside the resampler; call once at the end."""
        if self._stream is None or self._flushed:
            return np.zeros((0, self.channels), dtype=np.int16)
        self._flushed = True
        empty = np.zeros((0, self.channels) if self.channels > 1 else 0, dtype=np.float32)
        y = self._stream.resample_chunk(empty, last=True)
        return to_int16(y).reshape(-1, self.channels)
