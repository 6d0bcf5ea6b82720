"""Generic WebSocket audio (FreeSWITCH audio forks and the like): JSON metadata, then raw L16.

The first text frame is a JSON object of metadata (kept with the call); every binary frame
after it is little-endian 16-bit PCM, interleaved when there are 2 channels (channel 0 is
the inbound leg, channel 1 the outbound leg). No I/O here.

Why arrival order: the frames carry no timestamps, so audio is placed where the previous
frame of its leg ended (see `service.stream_proc`). Rates other than the call's 8 kHz go
through soxr, the project's resampler, streamed (its state carries across frames) in
float32: soxr's int16 path dithers, which would make a replayed stream record differently.
"""

from __future__ import annotations

import numpy as np

RATE = 8000
RATES = (8000, 16000)
CHANNELS = (1, 2)


class L16Error(ValueError):
    """A frame or setting this stream cannot take; the text says which."""


class L16Stream:
    """Binary frames in, one int16 8 kHz array per channel out."""

    def __init__(self, channels: int, rate: int, rates: tuple[int, ...] = RATES) -> None:
        """`rates`: the input rates this stream's protocol allows (AudioSocket has more than
        the WebSocket API's 8 and 16 kHz)."""
        if channels not in CHANNELS:
            raise L16Error(f"channels must be 1 or 2, got {channels!r}")
        if rate not in rates:
            raise L16Error(f"rate must be {', '.join(map(str, rates[:-1]))} or {rates[-1]}, got {rate!r}")
        self.channels = channels
        self.rate = rate
        self._resampler = None
        if rate != RATE:
            import soxr

            self._resampler = soxr.ResampleStream(rate, RATE, channels, dtype="float32", quality="HQ")

    def feed(self, data: bytes) -> list[np.ndarray]:
        """One binary frame -> per channel samples at 8 kHz (possibly empty while soxr fills up)."""
        width = 2 * self.channels
        if len(data) % width:
            raise L16Error(f"binary frame of {len(data)} bytes is not a whole number of {width}-byte sample frames")
        x = np.frombuffer(data, "<i2").reshape(-1, self.channels)
        return self._out(x, last=False)

    def flush(self) -> list[np.ndarray]:
        """What the resampler still holds at the end of the stream."""
        return self._out(np.zeros((0, self.channels), np.int16), last=True)

    def _out(self, x: np.ndarray, last: bool) -> list[np.ndarray]:
        if self._resampler is None:
            return [np.ascontiguousarray(x[:, c]).astype(np.int16, copy=False) for c in range(self.channels)]
        y = self._resampler.resample_chunk(x.astype(np.float32) / 32768.0, last=last)
        y = np.clip(np.rint(np.asarray(y).reshape(-1, self.channels) * 32768.0), -32768, 32767).astype(np.int16)
        return [np.ascontiguousarray(y[:, c]) for c in range(self.channels)]
