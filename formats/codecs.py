"""The audio facts every layer shares: the call's sample clock, and the one table of file formats.

Calls arrive at `CALL_RATE` in frames of `FRAME` samples (20 ms), whoever produces them
(an IVR's legs, RTP or WebSocket ingest, the load generator); files are written at one
of `RATES` in one of `FORMATS`. Everything the WAV header, the parser, `repair` and the
controller's argument checks need to know about a format lives in `CODECS`: its WAVE
format tag, bits per sample, the unit its data comes in (frames and bytes of one
indivisible piece), and whether it may hold two channels (the spec's 'separate' mode
allows only alaw, ulaw, u8bit and s16bit). The encoders themselves are the worker's
(`wholecall.worker.codecs`); this table has no code that runs per sample.

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
from dataclasses import dataclass

#: Samples per second of every call leg; files at other `RATES` are resampled by the worker.
CALL_RATE = 8000
#: Samples per frame (20 ms at `CALL_RATE`): the unit producers write and the worker processes.
FRAME = 160

#: The spec's `file_format` values.
FORMATS: tuple[str, ...] = ("alaw", "ulaw", "oki", "ima", "s16bit", "u8bit")
#: The spec's `rate` values, in Hz.
RATES: tuple[int, ...] = (6000, 8000, 11000, 11025)
#: The spec's `recording_mode` values.
MODES: tuple[str, ...] = ("mixed", "separate")
#: The spec: "When recording separate channels file_format must be one of alaw, ulaw, u8bit and s16bit".
SEPARATE_FORMATS: tuple[str, ...] = ("alaw", "ulaw", "u8bit", "s16bit")
STEREO_FORMATS = SEPARATE_FORMATS

#: IMA/DVI ADPCM blocks as we write them: 256 bytes, a 4-byte header then 505 samples.
IMA_BLOCK_BYTES = 256
IMA_SAMPLES_PER_BLOCK = 1 + 2 * (IMA_BLOCK_BYTES - 4)


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
        Codec("alaw", 0x0006, 8, 1, 1, True, _CB_NONE, True),
        Codec("ulaw", 0x0007, 8, 1, 1, True, _CB_NONE, True),
        Codec("s16bit", 0x0001, 16, 1, 2, True, None, False),
        Codec("u8bit", 0x0001, 8, 1, 1, True, None, False),
        Codec("ima", 0x0011, 4, IMA_SAMPLES_PER_BLOCK, IMA_BLOCK_BYTES, False,
              struct.pack("<HH", 2, IMA_SAMPLES_PER_BLOCK), True),
        Codec("oki", 0x0017, 4, 2, 1, False, _CB_NONE, True, block_align_field=1),
    )
}  # fmt: skip


def get_codec(name: str) -> Codec:
    """The codec called `name`; ValueError naming the known ones otherwise."""
    try:
        return CODECS[name]
    except (KeyError, TypeError):
        raise ValueError(f"file_format: no codec for {name!r}; expected one of {', '.join(CODECS)}") from None


def tag_name(tag: int, bits: int) -> str:
    """A human name for a fmt chunk's format tag (and bits, which tell s16bit from u8bit)."""
    for codec in CODECS.values():
        if codec.format_tag == tag and (tag != 1 or codec.bits_per_sample == bits):
            return codec.name
    return {0x0010: "oki", 0x0003: "float"}.get(tag, f"tag 0x{tag:04x}")
