"""G.711 A-law and mu-law as numpy lookup tables (WAVE format tags 6 and 7).

Why our own tables: the encoders of libsndfile, ffmpeg and Python's audioop
disagree with the ITU-T G.191 reference implementation on some inputs (for
example the handling of small negative values, where G.191 uses the one's
complement), while every decoder agrees with G.191. So both directions are
built here, once at import, from the G.191 algorithm (`alaw_compress`,
`ulaw_compress` and their `_expand` counterparts), and encoding a block is
then a single table lookup: 64 KiB table indexed by the int16 bit pattern.

The input is the full int16 range: A-law looks at the 12 most significant
bits of the magnitude (13-bit signed), mu-law at 13 (14-bit signed); the
decoders return those values left-justified in int16, as G.191 does.
"""

from __future__ import annotations

import numpy as np

from .base import SampleEncoder


def _bit_length(values: np.ndarray) -> np.ndarray:
    """Number of significant bits of non-negative ints (0 -> 0), vectorised."""
    out = np.zeros(values.shape, dtype=np.int32)
    v = values.astype(np.int64)
    while np.any(v):
        nz = v > 0
        out[nz] += 1
        v >>= 1
    return out


def _build_alaw_encode() -> np.ndarray:
    x = np.arange(-32768, 32768, dtype=np.int32)
    # G.191: magnitude from the one's complement, so -1 maps like 0 and the
    # quantiser is symmetric around -0.5 (mid-riser, no zero level).
    ix = np.where(x < 0, ~x, x) >> 4  # 0..2047
    iexp = np.maximum(_bit_length(ix) - 4, 0)  # segment 0 and 1 share the step size
    code = np.where(ix > 15, (ix >> np.maximum(iexp - 1, 0)) - 16 + (iexp << 4), ix)
    code = np.where(x >= 0, code | 0x80, code) ^ 0x55
    return _by_bit_pattern(x, code.astype(np.uint8))


def _build_ulaw_encode() -> np.ndarray:
    x = np.arange(-32768, 32768, dtype=np.int32)
    absno = np.minimum((np.where(x < 0, ~x, x) >> 2) + 33, 0x1FFF)  # bias 33 (14-bit units)
    segno = _bit_length(absno >> 6) + 1
    high = 8 - segno
    low = 15 - ((absno >> segno) & 0x0F)
    code = (high << 4) | low
    code = np.where(x >= 0, code | 0x80, code)
    return _by_bit_pattern(x, code.astype(np.uint8))


def _by_bit_pattern(x: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Reorder a table made for x = -32768..32767 so it is indexed by x's uint16 bit pattern."""
    table = np.empty(65536, dtype=np.uint8)
    table[x.astype(np.int16).view(np.uint16)] = codes
    return table


def _build_alaw_decode() -> np.ndarray:
    code = np.arange(256, dtype=np.int32)
    ix = (code ^ 0x55) & 0x7F
    iexp = ix >> 4
    mant = ix & 0x0F
    mant = np.where(iexp > 0, mant + 16, mant)
    mant = (mant << 4) + 8  # half a quantisation step: reconstruct at the middle
    mant = np.where(iexp > 1, mant << np.maximum(iexp - 1, 0), mant)
    return np.where(code > 127, mant, -mant).astype(np.int16)


def _build_ulaw_decode() -> np.ndarray:
    code = np.arange(256, dtype=np.int32)
    sign = np.where(code < 0x80, -1, 1)
    inv = ~code
    exponent = (inv >> 4) & 0x07
    mantissa = inv & 0x0F
    step = 4 << (exponent + 1)
    value = (0x80 << exponent) + step * mantissa + step // 2 - 4 * 33
    return (sign * value).astype(np.int16)


ALAW_ENCODE: np.ndarray = _build_alaw_encode()
ULAW_ENCODE: np.ndarray = _build_ulaw_encode()
ALAW_DECODE: np.ndarray = _build_alaw_decode()
ULAW_DECODE: np.ndarray = _build_ulaw_decode()
for _table in (ALAW_ENCODE, ULAW_ENCODE, ALAW_DECODE, ULAW_DECODE):
    _table.flags.writeable = False


def _as_int16(pcm: np.ndarray) -> np.ndarray:
    pcm = np.asarray(pcm)
    if pcm.dtype != np.int16:
        raise ValueError(f"pcm: expected int16 samples, got {pcm.dtype}")
    return pcm


def alaw_encode(pcm: np.ndarray) -> np.ndarray:
    """A-law codes (uint8, same shape) for int16 samples, bit-exact with G.191 `alaw_compress`."""
    return np.take(ALAW_ENCODE, _as_int16(pcm).view(np.uint16))


def ulaw_encode(pcm: np.ndarray) -> np.ndarray:
    """mu-law codes (uint8, same shape) for int16 samples, bit-exact with G.191 `ulaw_compress`."""
    return np.take(ULAW_ENCODE, _as_int16(pcm).view(np.uint16))


def alaw_decode(codes: np.ndarray) -> np.ndarray:
    """int16 samples for A-law codes (uint8), as G.191 `alaw_expand` and every common decoder."""
    return np.take(ALAW_DECODE, np.asarray(codes, dtype=np.uint8))


def ulaw_decode(codes: np.ndarray) -> np.ndarray:
    """int16 samples for mu-law codes (uint8), as G.191 `ulaw_expand` and every common decoder."""
    return np.take(ULAW_DECODE, np.asarray(codes, dtype=np.uint8))


class AlawEncoder(SampleEncoder):
    """Streaming A-law: stateless, one byte per sample, channels interleaved."""

    #: Code of each int16 sample (indexed by its uint16 view), for callers that encode
    #: many recordings' samples in one lookup (see `WavWriter.byte_table`).
    table = ALAW_ENCODE

    def _encode(self, samples: np.ndarray) -> bytes:
        # np.take, not fancy indexing: 1.6x faster on a 64 KiB table (720 vs 444 Msamples/s).
        return np.take(ALAW_ENCODE, samples.view(np.uint16)).tobytes()


class UlawEncoder(SampleEncoder):
    """Streaming mu-law: stateless, one byte per sample, channels interleaved."""

    table = ULAW_ENCODE

    def _encode(self, samples: np.ndarray) -> bytes:
        return np.take(ULAW_ENCODE, samples.view(np.uint16)).tobytes()
