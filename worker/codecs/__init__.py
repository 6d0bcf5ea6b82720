"""The streaming encoders a recording can be written with, one module per codec.

The WAV facts of each format (tag, bits, unit, stereo) are `wholecall.formats.codecs.CODECS`;
this package only turns samples into the bytes of a data chunk.
"""

from __future__ import annotations

from collections.abc import Callable

from wholecall.formats.codecs import CODECS

from . import g711, ima, oki, pcm
from .base import Encoder

__all__ = ["ENCODERS", "Encoder", "make_encoder"]

#: file_format -> the encoder class (built with the channel count).
ENCODERS: dict[str, Callable[[int], Encoder]] = {
    "alaw": g711.AlawEncoder,
    "ulaw": g711.UlawEncoder,
    "s16bit": pcm.S16Encoder,
    "u8bit": pcm.U8Encoder,
    "ima": ima.ImaEncoder,
    "oki": oki.OkiEncoder,
}
assert ENCODERS.keys() == CODECS.keys(), "every format of the facts table has an encoder"


def make_encoder(file_format: str, channels: int) -> Encoder:
    """A streaming encoder for `file_format`; ValueError naming the known ones otherwise."""
    try:
        cls = ENCODERS[file_format]
    except (KeyError, TypeError):
        raise ValueError(f"file_format: no encoder for {file_format!r}; expected one of {', '.join(ENCODERS)}") from None
    return cls(channels)
