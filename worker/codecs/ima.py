"""IMA/DVI ADPCM in the WAV block layout (WAVE format tag 0x0011), mono.

Layout of one block (Microsoft/IMA, as sox, ffmpeg and libsndfile read it):

    +--------+-------+----------+----------------------------------+
    | int16  | uint8 | uint8 0  | (BLOCK_BYTES - 4) bytes of codes |
    | sample | index | reserved | 2 codes a byte, first in LOW nib.|
    +--------+-------+----------+----------------------------------+

The header carries the block's first sample verbatim and the step index the
encoder had reached, so every block decodes on its own and a file cut at any
block boundary is still valid (that is what crash safety and `repair` rely on).
256-byte blocks hold 1 + 2 * 252 = 505 samples; libsndfile uses 256 bytes for
every rate below 12 kHz and so do we.

The per-sample loop is sequential, so it runs in C: the standard library's
`audioop.lin2adpcm` (the `audioop-lts` package from Python 3.13 on) implements
the same reference IMA encoder; it packs the first sample of a byte in the HIGH
nibble, so we swap nibbles with a 256-byte translation table. Fed one block at
a time with the block's first sample as predictor, the result is byte-identical
to libsndfile's IMA writer (checked in the tests). Why we write the container
ourselves: libsndfile pads the last block and gets the stereo fact count wrong.
"""

from __future__ import annotations

import struct
import warnings

import numpy as np

with warnings.catch_warnings():  # 3.11/3.12 warn that audioop leaves the stdlib in 3.13
    warnings.simplefilter("ignore", DeprecationWarning)
    try:  # 3.13+: the audioop-lts package provides the same module under the same name
        import audioop
    except ImportError:  # pragma: no cover
        import audioop_lts as audioop  # type: ignore[import-not-found, no-redef]

from wholecall.formats.codecs import IMA_BLOCK_BYTES as BLOCK_BYTES
from wholecall.formats.codecs import IMA_SAMPLES_PER_BLOCK as SAMPLES_PER_BLOCK

HEADER_BYTES = 4
assert SAMPLES_PER_BLOCK == 1 + 2 * (BLOCK_BYTES - HEADER_BYTES)  # 505

_SWAP_NIBBLES = bytes(((b >> 4) | ((b & 0x0F) << 4)) for b in range(256))
_HEADER = struct.Struct("<hBB")


def encode_blocks(samples: np.ndarray, index: int = 0) -> tuple[bytes, int]:
    """Encode whole blocks of mono int16 `samples` (a multiple of 505) starting at step `index`.

    Returns the block bytes and the step index to carry into the next block.
    """
    n = len(samples)
    if n % SAMPLES_PER_BLOCK:
        raise ValueError(f"samples: {n} is not a whole number of {SAMPLES_PER_BLOCK}-sample blocks")
    raw = np.ascontiguousarray(samples, dtype="<i2").tobytes()
    out = bytearray()
    step = 2 * SAMPLES_PER_BLOCK
    for start in range(0, 2 * n, step):
        first = int.from_bytes(raw[start : start + 2], "little", signed=True)
        out += _HEADER.pack(first, index, 0)
        codes, (_, index) = audioop.lin2adpcm(raw[start + 2 : start + step], 2, (first, index))
        out += codes.translate(_SWAP_NIBBLES)
    return bytes(out), index


def decode_blocks(data: bytes) -> np.ndarray:
    """Reference decoder for whole mono blocks (the same arithmetic as libsndfile and sox)."""
    if len(data) % BLOCK_BYTES:
        raise ValueError(f"data: {len(data)} bytes is not a whole number of {BLOCK_BYTES}-byte blocks")
    parts = []
    for start in range(0, len(data), BLOCK_BYTES):
        first, index, _ = _HEADER.unpack_from(data, start)
        body = data[start + HEADER_BYTES : start + BLOCK_BYTES].translate(_SWAP_NIBBLES)
        pcm, _ = audioop.adpcm2lin(body, 2, (first, index))
        parts.append(np.array([first], dtype=np.int16))
        parts.append(np.frombuffer(pcm, dtype=np.int16))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)


class ImaEncoder:
    """Streaming IMA ADPCM: buffers the samples of the unfinished block."""

    def __init__(self, channels: int) -> None:
        if channels != 1:
            raise ValueError(f"channels: IMA ADPCM is written mono only, got {channels}")
        self._index = 0
        self._buffer = np.zeros(0, dtype=np.int16)

    def encode(self, frames: np.ndarray) -> bytes:
        samples = np.asarray(frames, dtype=np.int16).reshape(-1)
        if len(self._buffer):
            samples = np.concatenate([self._buffer, samples])
        whole = len(samples) - len(samples) % SAMPLES_PER_BLOCK
        self._buffer = samples[whole:].copy()
        if not whole:
            return b""
        data, self._index = encode_blocks(samples[:whole], self._index)
        return data

    def flush(self) -> bytes:
        """The last block padded with silence: all readers decode whole blocks only."""
        if not len(self._buffer):
            return b""
        pad = np.zeros(SAMPLES_PER_BLOCK - len(self._buffer), dtype=np.int16)
        data, self._index = encode_blocks(np.concatenate([self._buffer, pad]), self._index)
        self._buffer = np.zeros(0, dtype=np.int16)
        return data

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def keep_pending(self, frames: int) -> None:
        self._buffer = self._buffer[: max(frames, 0)].copy()
