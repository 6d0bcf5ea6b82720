"""What every encoder looks like to the WAV writer.

An encoder turns int16 sample frames (already at the file's rate) into the
bytes of a WAV data chunk. Codecs whose data comes in indivisible units (an IMA
block of 505 frames, an OKI byte of 2 frames) keep the frames of an unfinished
unit inside the encoder between calls, so the writer only ever appends whole
units and the file on disk is decodable after every call.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Encoder(Protocol):
    """Streaming encoder for one recording."""

    def encode(self, frames: np.ndarray) -> bytes:
        """Encode `frames` (int16, shape (n, channels)); return the whole units now complete."""

    def flush(self) -> bytes:
        """Return the unfinished unit padded with silence (b"" if none), as the format allows."""

    @property
    def pending(self) -> int:
        """Frames accepted but not yet returned as bytes (always less than one unit)."""

    def keep_pending(self, frames: int) -> None:
        """Forget all but the first `frames` pending frames (used when trimming a silent tail)."""


class SampleEncoder:
    """Base for codecs with one frame per unit: nothing is ever pending."""

    def __init__(self, channels: int) -> None:
        self.channels = channels

    def encode(self, frames: np.ndarray) -> bytes:
        return self._encode(np.ascontiguousarray(frames).reshape(-1))

    def _encode(self, samples: np.ndarray) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def flush(self) -> bytes:
        return b""

    @property
    def pending(self) -> int:
        return 0

    def keep_pending(self, frames: int) -> None:
        return None
