"""G.711 decoding (ITU-T G.711 / G.191): A-law (RTP PT 8, PCMA) and mu-law (PT 0, PCMU) to int16.

Why tables: a code is one byte, so decoding is one numpy fancy index into a 256-entry
table, the cheapest thing a receiver can do per payload. The tables are built once at import
from G.711's segment rule (not copied from anywhere): a code is sign, 3-bit segment, 4-bit
step; the decoded value is the middle of the step's interval, left-justified in 16 bits as
G.191 returns it (A-law's 13-bit and mu-law's 14-bit values shifted up by 3 and 2).
"""

from __future__ import annotations

import numpy as np


def _alaw_table() -> np.ndarray:
    code = np.arange(256, dtype=np.int32) ^ 0x55  # even bits are inverted on the wire
    segment = (code >> 4) & 0x07
    step = code & 0x0F
    # segment 0 is linear with the same step size (16 in 16-bit units) as segment 1
    magnitude = np.where(
        segment == 0,
        (step << 4) + 8,
        ((step << 4) + 0x108) << np.maximum(segment - 1, 0),
    )
    # A-law: sign bit 1 means positive
    return np.where(code & 0x80, magnitude, -magnitude).astype(np.int16)


def _ulaw_table() -> np.ndarray:
    code = ~np.arange(256, dtype=np.int32) & 0xFF  # all bits are inverted on the wire
    segment = (code >> 4) & 0x07
    step = code & 0x0F
    # mu-law's segments start at multiples of the bias 33 (132 in 16-bit units): remove it
    magnitude = (((step << 3) + 0x84) << segment) - 0x84
    # mu-law: sign bit 1 means negative
    return np.where(code & 0x80, -magnitude, magnitude).astype(np.int16)


ALAW_TO_INT16: np.ndarray = _alaw_table()
"""A-law code (0..255) -> int16 sample; read-only."""
ULAW_TO_INT16: np.ndarray = _ulaw_table()
"""mu-law code (0..255) -> int16 sample; read-only."""
ALAW_TO_INT16.flags.writeable = False
ULAW_TO_INT16.flags.writeable = False


def _codes(payload: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    if isinstance(payload, np.ndarray):
        if payload.dtype != np.uint8:
            raise ValueError(f"G.711 payload must be uint8 codes, got {payload.dtype}")
        return payload
    return np.frombuffer(payload, dtype=np.uint8)


def decode_alaw(payload: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """A-law payload bytes -> int16 samples (one per byte), a new array."""
    return ALAW_TO_INT16[_codes(payload)]


def decode_ulaw(payload: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """mu-law payload bytes -> int16 samples (one per byte), a new array."""
    return ULAW_TO_INT16[_codes(payload)]
