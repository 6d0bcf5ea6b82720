"""The WAV files wholecall writes: header layout, the one parser/checker, the one repair policy.

File layout (little-endian; data is always the last chunk, so a file cut anywhere
after the header is the header plus a prefix of the audio):

    offset  bytes
    0       "RIFF" <u32 file size - 8> "WAVE"
    12      "fmt " <u32 16|18|20> tag ch rate avg-bytes block-align bits [cbSize [samples/block]]
    ..      "fact" <u32 4> <u32 sample frames>        (non-PCM formats only)
    ..      "data" <u32 data bytes> <encoded audio ...> [pad byte if odd]

    header_bytes(): s16bit/u8bit 44, alaw/ulaw/oki 58, ima 60.

Both sides use this module: the worker's writer builds headers with `header`, the
controller repairs the file of a dead worker with `repair`, `wholecall recover` repairs
the plaintext inside an encrypted intermediate with `repair_plan` + `patch_stream`, and
`wholecall decrypt` checks what it decrypted with `WavChecker`. One parser
(`WavChecker`, fed in order, keeping only headers) and one repair policy
(`repair_plan`) serve all of them, so a file is never "valid" to one tool and broken to
another.

The repair policy. The audio runs from the data chunk to the end of the content (our
writer's layout); a trailing partial unit (ADPCM block, frame) is cut off; an odd data
size gets its RIFF pad byte (a zero) rather than losing a sample; the RIFF, fact and
data sizes are rewritten. Content whose sizes already match is left untouched.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .codecs import RATES, STEREO_FORMATS, Codec, get_codec, tag_name

#: Largest file the RIFF size field can describe, kept even for the pad byte.
RIFF_LIMIT = 0xFFFFFFFE
#: A data chunk header must lie in this many first bytes for the file to be parsed or repaired.
HEAD_BYTES = 1 << 16


def check_channels(codec: Codec, channels: int) -> None:
    """ValueError unless `codec` may be written with `channels` channels."""
    if type(channels) is not int or channels not in (1, 2):
        raise ValueError(f"channels: must be 1 or 2, got {channels!r}")
    if channels == 2 and not codec.stereo:
        raise ValueError(
            f"file_format: {codec.name!r} cannot be recorded in 2 channels ('separate' mode allows "
            f"{', '.join(STEREO_FORMATS)})"
        )


def header(codec: Codec, channels: int, rate: int, data_bytes: int, frames: int, pad: int = 0) -> bytes:
    """The complete header for `data_bytes` of audio holding `frames` sample frames."""
    fmt = struct.pack(
        "<HHIIHH",
        codec.format_tag,
        channels,
        rate,
        codec.avg_bytes_per_sec(rate, channels),
        codec.block_align(channels),
        codec.bits_per_sample,
    )
    if codec.fmt_extra is not None:
        fmt += codec.fmt_extra
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt
    if codec.fact:
        chunks += b"fact" + struct.pack("<II", 4, frames)
    chunks += b"data" + struct.pack("<I", data_bytes)
    return b"RIFF" + struct.pack("<I", 4 + len(chunks) + data_bytes + pad) + b"WAVE" + chunks


def header_bytes(file_format: str, channels: int = 1) -> int:
    """Bytes before the audio in the files we write (a max_bytes below this cannot work)."""
    codec = get_codec(file_format)
    check_channels(codec, channels)
    return len(header(codec, channels, RATES[0], 0, 0))


# -- reading: one parser -------------------------------------------------------------


class WavChecker:
    """Parses and checks the RIFF/WAVE structure of a byte stream fed in order, keeping only headers.

    Valid (`result()` is None) means: "RIFF" size + 8 == stream length, "WAVE", a chain
    of chunks that ends exactly at the RIFF end (the last chunk's pad byte may be
    missing), a fmt chunk (>= 16 bytes, channels, rate and block align non-zero) before
    the data chunk, and for PCM / A-law / mu-law a data size that is a whole number of
    blocks. The fields it found (`fmt`, `data_at`, `fact_at`, ...) are there for
    `parse`, also when the sizes are stale (a crashed writer's file).
    """

    def __init__(self) -> None:
        self.length = 0
        self.error: str | None = None
        self.riff_end: int | None = None
        self.fmt: tuple[int, int, int, int, int, int] | None = None  # tag, channels, rate, bytes/s, align, bits
        self.samples_per_block = 0  # from a fmt chunk of >= 20 bytes (IMA)
        self.data_at: int | None = None  # offset of the data chunk's payload
        self.data_size: int | None = None
        self.fact_at = 0  # offset of the fact chunk's frame count (0: none)
        self.fact_frames = 0
        self._want_at = 0
        self._want_len = 12
        self._got = bytearray()
        self._stage = "riff"
        self._chunk_at = 0
        self._chunk_size = 0

    def feed(self, data: bytes) -> None:
        start = self.length
        self.length += len(data)
        while self.error is None and self._want_len:
            need_from = self._want_at + len(self._got)
            if need_from >= self.length:
                return
            hi = min(self._want_at + self._want_len, self.length)
            self._got += data[max(need_from - start, 0):hi - start]
            if len(self._got) < self._want_len:
                return
            got = bytes(self._got)
            self._got.clear()
            self._parse(got)

    def _next_chunk(self, at: int) -> None:
        assert self.riff_end is not None
        if at >= self.riff_end:  # the end (past it by one when the last chunk's pad byte is missing)
            self._want_len = 0
            return
        if at + 8 > self.riff_end:
            self.error = f"{self.riff_end - at} stray bytes at {at} before the RIFF end"
            return
        self._stage, self._want_at, self._want_len = "chunk", at, 8

    def _parse(self, got: bytes) -> None:
        if self._stage == "riff":
            if got[:4] != b"RIFF" or got[8:12] != b"WAVE":
                self.error = "not a RIFF/WAVE file"
                return
            self.riff_end = 8 + int.from_bytes(got[4:8], "little")
            self._next_chunk(12)
        elif self._stage == "chunk":
            cid, size = got[:4], int.from_bytes(got[4:8], "little")
            at = self._want_at
            assert self.riff_end is not None
            if cid == b"data" and self.fmt is not None and self.data_at is None:
                self.data_at, self.data_size = at + 8, size  # known even when the sizes are stale
            if at + 8 + size > self.riff_end:
                self.error = f"chunk {cid!r} at {at} ({size} bytes) runs past the RIFF end {self.riff_end}"
                return
            if cid == b"fmt ":
                if self.fmt is not None:
                    self.error = "two fmt chunks"
                    return
                if size < 16:
                    self.error = f"fmt chunk of {size} bytes (needs 16)"
                    return
                self._stage, self._want_at, self._want_len = "fmt", at + 8, min(size, 20)
                self._chunk_at, self._chunk_size = at, size
                return
            if cid == b"fact" and size >= 4 and not self.fact_at:
                self._stage, self._want_at, self._want_len = "fact", at + 8, 4
                self._chunk_at, self._chunk_size = at, size
                return
            if cid == b"data":
                if self.fmt is None:
                    self.error = "data chunk before fmt chunk"
                    return
                if self.data_at != at + 8:
                    self.error = "two data chunks"
                    return
            self._next_chunk(at + 8 + size + (size & 1))
        elif self._stage == "fmt":
            tag, channels, rate, bps, align, bits = struct.unpack_from("<HHIIHH", got)
            if not channels or not rate or not align:
                self.error = "fmt chunk has zero channels, rate or block align"
                return
            self.fmt = (tag, channels, rate, bps, align, bits)
            if len(got) >= 20:
                self.samples_per_block = struct.unpack_from("<H", got, 18)[0]
            self._next_chunk(self._chunk_at + 8 + self._chunk_size + (self._chunk_size & 1))
        elif self._stage == "fact":
            self.fact_at, self.fact_frames = self._want_at, struct.unpack("<I", got)[0]
            self._next_chunk(self._chunk_at + 8 + self._chunk_size + (self._chunk_size & 1))

    def result(self) -> str | None:
        """None if the stream was a valid WAV, else why not."""
        if self.error:
            return self.error
        if self.riff_end is None:
            return f"too short for a RIFF header ({self.length} bytes)"
        if self.length != self.riff_end:
            return f"RIFF size says {self.riff_end} bytes, the file has {self.length}"
        if self._want_len:
            return "truncated inside a chunk header"
        if self.fmt is None:
            return "no fmt chunk"
        if self.data_at is None or self.data_size is None:
            return "no data chunk"
        if self.fmt[0] in (1, 6, 7) and self.data_size % self.fmt[4]:
            return f"data size {self.data_size} is not a multiple of the block align {self.fmt[4]}"
        return None


@dataclass(frozen=True)
class WavInfo:
    """What a WAV file's header says, and where things are."""

    format_tag: int
    channels: int
    rate: int
    block_align: int
    bits_per_sample: int
    samples_per_block: int
    """Frames per IMA block from the fmt extra (0 when absent)."""
    riff_size: int
    data_offset: int
    """File offset of the first audio byte."""
    data_size: int
    """Data bytes the header declares."""
    fact_offset: int
    """File offset of the fact chunk's frame count (0 when there is none)."""
    fact_frames: int
    file_size: int

    def unit(self) -> tuple[int, int]:
        """(bytes, frames) of the smallest whole piece of this file's audio."""
        if self.format_tag == 0x0011:
            spb = self.samples_per_block or (self.block_align - 4 * self.channels) * 2 // self.channels + 1
            return self.block_align, spb
        if self.format_tag in (0x0010, 0x0017):
            return self.channels, 2
        if self.format_tag in (0x0001, 0x0003, 0x0006, 0x0007) and self.block_align > 0:
            return self.block_align, 1
        raise ValueError(f"unsupported WAV format tag 0x{self.format_tag:04x}")


def parse(head: bytes, file_size: int, name: str = "WAV") -> WavInfo:
    """The header facts of content whose first bytes are `head` and whole length `file_size`.

    ValueError with the reason when it is not a RIFF/WAVE file we can read. Stale sizes
    (a file whose writer was killed) are accepted: this is what repair starts from.
    """
    checker = WavChecker()
    checker.feed(head)
    if checker.riff_end is None:
        raise ValueError(f"{name}: not a WAV file (no RIFF/WAVE header)")
    if checker.fmt is None:
        why = checker.error or "no fmt chunk"
        raise ValueError(f"{name}: not a WAV file we can read ({why})")
    if checker.data_at is None or checker.data_size is None:
        raise ValueError(f"{name}: no data chunk (file cut inside the header?)")
    tag, channels, rate, _avg, block_align, bits = checker.fmt
    return WavInfo(
        tag, channels, rate, block_align, bits, checker.samples_per_block if tag == 0x0011 else 0,
        checker.riff_end - 8, checker.data_at, checker.data_size, checker.fact_at, checker.fact_frames, file_size,
    )  # fmt: skip


def read_info(path: str) -> WavInfo:
    """Parse the header of the WAV file at `path` (chunks up to the data chunk)."""
    with open(path, "rb") as f:
        file_size = os.fstat(f.fileno()).st_size
        head = f.read(HEAD_BYTES)
    return parse(head, file_size, path)


# -- repair: one policy ----------------------------------------------------------------


@dataclass(frozen=True)
class RepairPlan:
    """How to make content describe its audio exactly: byte patches, then the new length."""

    patches: list[tuple[int, bytes]]
    """(offset, bytes) to write; a pad byte lies at the end, past the old content."""
    size: int
    """Length of the repaired content (truncate to it, or extend by the pad byte)."""
    info: WavInfo
    """The header as found."""
    frames: int
    """Sample frames the repaired file holds."""
    changes: list[str]
    """What changed, for a human (empty when already consistent)."""


def repair_plan(head: bytes, size: int, name: str = "WAV") -> RepairPlan:
    """The repair policy (module docstring) for content of `size` bytes starting with `head`.

    ValueError (with the reason) when the content has no recognisable fmt + data header.
    """
    info = parse(head, size, name)
    if info.channels < 1:
        raise ValueError(f"{name}: fmt chunk says {info.channels} channels")
    unit_bytes, unit_frames = info.unit()
    available = size - info.data_offset
    if info.data_size & 1 and available == info.data_size + 1:
        available -= 1  # that last byte is the RIFF pad of a finished file, not audio
    data = max(0, min(available // unit_bytes * unit_bytes, RIFF_LIMIT - info.data_offset))
    pad = data & 1
    new_size = info.data_offset + data + pad
    frames = data // unit_bytes * unit_frames
    changes = [
        f"{label} {old} -> {new}"
        for label, old, new in (
            ("data size", info.data_size, data),
            ("RIFF size", info.riff_size, new_size - 8),
            ("fact frames", info.fact_frames if info.fact_offset else frames, frames),
        )
        if old != new
    ]
    if available > data:
        changes.append(f"dropped {available - data} bytes of a partial unit")
    if pad and size < new_size:
        changes.append("added the RIFF pad byte")
    if not changes and size == new_size:
        return RepairPlan([], size, info, frames, [])
    patches = [(4, struct.pack("<I", new_size - 8)), (info.data_offset - 4, struct.pack("<I", data))]
    if info.fact_offset:
        patches.append((info.fact_offset, struct.pack("<I", frames)))
    if pad:
        patches.append((info.data_offset + data, b"\0"))
    return RepairPlan(patches, new_size, info, frames, changes)


def repair(path: str) -> str:
    """Make the header of a WAV left by a crash describe its audio exactly; returns a one-line summary.

    ValueError (with the reason) if `path` is not a WAV file we can repair.
    """
    with open(path, "rb") as f:
        file_size = os.fstat(f.fileno()).st_size
        head = f.read(HEAD_BYTES)
    plan = repair_plan(head, file_size, path)
    info = plan.info
    name = os.path.basename(path)
    seconds = plan.frames / info.rate if info.rate else 0.0
    what = (f"{tag_name(info.format_tag, info.bits_per_sample)} {info.rate} Hz {info.channels} ch, "
            f"{plan.frames} frames ({seconds:.2f} s)")
    if not plan.patches:
        return f"{name}: header already consistent: {what}"
    with open(path, "r+b") as f:
        if file_size > plan.size:
            f.truncate(plan.size)
        for offset, data in plan.patches:
            f.seek(offset)
            f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return f"{name}: repaired: {what}; " + ", ".join(plan.changes)


def patch_stream(chunks: Iterable[bytes], patches: list[tuple[int, bytes]], size: int) -> Iterator[bytes]:
    """`chunks` with byte patches applied, cut (or zero-extended, for a pad byte) to `size` bytes."""
    pos = 0
    for data in chunks:
        if pos >= size:
            break
        if pos + len(data) > size:
            data = data[:size - pos]
        yield _patched(data, pos, patches)
        pos += len(data)
    if pos < size:
        yield _patched(bytes(size - pos), pos, patches)


def _patched(data: bytes, pos: int, patches: list[tuple[int, bytes]]) -> bytes:
    end = pos + len(data)
    hits = [(o, b) for o, b in patches if o < end and o + len(b) > pos]
    if not hits:
        return data
    buf = bytearray(data)
    for o, b in hits:
        for i, byte in enumerate(b):
            if pos <= o + i < end:
                buf[o + i - pos] = byte
    return bytes(buf)


def to_vox(wav_path: str, vox_path: str) -> int:
    """Write the raw .vox form of an OKI WAV (for sox and libsndfile, which refuse OKI in WAV).

    The .vox file is the data chunk's bytes, nothing else; readers must be told
    the rate (`sox -t vox -r RATE`). Returns the number of samples it holds.
    Refuses to overwrite an existing `vox_path`.
    """
    info = read_info(wav_path)
    if info.format_tag not in (0x0010, 0x0017) or info.channels != 1:
        raise ValueError(f"{wav_path}: not a mono OKI ADPCM WAV (format tag 0x{info.format_tag:04x})")
    size = min(info.data_size, info.file_size - info.data_offset)
    with open(wav_path, "rb") as src:
        src.seek(info.data_offset)
        data = src.read(size)
    fd = os.open(vox_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as dst:
        dst.write(data)
    return 2 * len(data)
