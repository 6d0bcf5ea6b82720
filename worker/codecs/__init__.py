"""The codecs a recording can be written in, and the one table of their WAV facts.

Everything the WAV writer, `repair` and the controller's argument checks need
to know about a format lives in `CODECS`: its WAVE format tag, bits per
sample, the unit its data comes in (frames and bytes of one indivisible piece),
whether it may hold two channels (the spec's 'separate' mode allows only
alaw, ulaw, u8bit and s16bit), and how to make a streaming encoder.

    name    tag     bits  unit (mono)            stereo  fmt extra   fact
    alaw    0x0006  8     1 frame  / 1 byte      yes     cbSize=0    yes
    ulaw    0x0007  8     1 frame  / 1 byte      yes     cbSize=0    yes
    s16bit  0x0001  16    1 frame  / 2 bytes     yes     (none)      no
    u8bit   0x0001  8     1 frame  / 1 byte      yes     (none)      no
    ima     0x0011  4     505 frames / 256 bytes no      spb=505     yes
    oki     0x0017  4     2 frames / 1 byte      no      cbSize=0    yes
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from . import g711, ima, oki, pcm
from .base import Encoder

__all__ = ["CODECS", "Codec", "Encoder", "get_codec"]


@dataclass(frozen=True)
class Codec:
    """WAV facts of one file format."""

    name: str
    """The spec's `file_format` value."""
    format_tag: int
    """wFormatTag of the fmt chunk."""
    bits_per_sample: int
    """wBitsPerSample of the fmt chunk."""
    unit_frames: int
    """Sample frames in one indivisible unit of data (an ADPCM block, an OKI byte, one PCM frame)."""
    unit_bytes_mono: int
    """Bytes of that unit for one channel."""
    stereo: bool
    """May be written with two channels."""
    fmt_extra: bytes | None
    """Bytes after the 16-byte WAVEFORMAT (cbSize and extra); None for a plain 16-byte PCM fmt."""
    fact: bool
    """Non-PCM: the file carries a fact chunk with the frame count."""
    make_encoder: Callable[[int], Encoder]
    """Streaming encoder for the given channel count."""
    block_align_field: int | None = None
    """nBlockAlign when it is not simply the unit's bytes (OKI: 1 byte holds 2 frames)."""

    def unit_bytes(self, channels: int) -> int:
        """Bytes of one unit of data for `channels` channels."""
        return self.unit_bytes_mono * channels

    def block_align(self, channels: int) -> int:
        """The fmt chunk's nBlockAlign."""
        return self.block_align_field if self.block_align_field is not None else self.unit_bytes(channels)

    def avg_bytes_per_sec(self, rate: int, channels: int) -> int:
        """The fmt chunk's nAvgBytesPerSec (rounded down, as libsndfile does for IMA)."""
        return rate * self.unit_bytes(channels) // self.unit_frames


_CB_NONE = struct.pack("<H", 0)

CODECS: dict[str, Codec] = {
    c.name: c
    for c in (
        Codec("alaw", 0x0006, 8, 1, 1, True, _CB_NONE, True, g711.AlawEncoder),
        Codec("ulaw", 0x0007, 8, 1, 1, True, _CB_NONE, True, g711.UlawEncoder),
        Codec("s16bit", 0x0001, 16, 1, 2, True, None, False, pcm.S16Encoder),
        Codec("u8bit", 0x0001, 8, 1, 1, True, None, False, pcm.U8Encoder),
        Codec(
            "ima", 0x0011, 4, ima.SAMPLES_PER_BLOCK, ima.BLOCK_BYTES, False,
            struct.pack("<HH", 2, ima.SAMPLES_PER_BLOCK), True, ima.ImaEncoder,
        ),
        Codec("oki", 0x0017, 4, 2, 1, False, _CB_NONE, True, oki.OkiEncoder, block_align_field=1),
    )
}  # fmt: skip


def get_codec(name: str) -> Codec:
    """The codec called `name`; ValueError naming the known ones otherwise."""
    try:
        return CODECS[name]
    except (KeyError, TypeError):
        raise ValueError(f"file_format: no codec for {name!r}; expected one of {', '.join(CODECS)}") from None
