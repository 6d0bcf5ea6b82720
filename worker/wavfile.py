"""The WAV writer of a recording: header, streaming encode, limits, crash safety, repair.

File layout (little-endian; data is always the last chunk, so a file cut
anywhere after the header is the header plus a prefix of the audio):

    offset  bytes
    0       "RIFF" <u32 file size - 8> "WAVE"
    12      "fmt " <u32 16|18|20> tag ch rate avg-bytes block-align bits [cbSize [samples/block]]
    ..      "fact" <u32 4> <u32 sample frames>        (non-PCM formats only)
    ..      "data" <u32 data bytes> <encoded audio ...> [pad byte if odd]

    header_bytes(): s16bit/u8bit 44, alaw/ulaw/oki 58, ima 60.

Crash safety: audio is appended first and the header is rewritten after
(one pwrite of the whole header) at the end of every `write()` and after every
second of audio inside a long one, so a kill -9 at any moment leaves a header
that describes only audio already on disk: sox, ffmpeg and libsndfile open it
and play everything up to the last refresh (less, at rates other than 8000 Hz,
the <= 150 ms still inside the resampler). ADPCM data is appended in whole
units only (IMA blocks, OKI bytes), so that audio is always decodable.
`repair(path)` then rewrites the sizes from the file length (dropping a
partial unit), which is what `wholecall repair FILE` runs.

Limits: with `max_bytes` the whole file, header and RIFF pad byte included,
never exceeds it; ADPCM counts whole blocks only. Without it the RIFF 4 GiB
limit applies the same way.

Who reads what (sox 14.4.2, ffmpeg 5.1, libsndfile 1.2.2):
  alaw, ulaw, s16bit, u8bit, ima (mono or stereo where allowed): all three.
  oki WAV (tag 0x0017): ffmpeg only. Its raw form (`to_vox()`): sox with
  `-t vox -r RATE`, libsndfile with format RAW + subtype VOX_ADPCM.
All three readers decode IMA in whole 505-frame blocks and ignore the fact
chunk, so our last block is padded with silence and counted as such: the
frame count we report is the one every reader sees.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np

from .codecs import CODECS, Codec, get_codec
from .resample import CALL_RATE, StreamResampler
from .sink import Sink

FORMATS: tuple[str, ...] = ("alaw", "ulaw", "s16bit", "u8bit", "ima", "oki")
RATES: tuple[int, ...] = (6000, 8000, 11000, 11025)
STEREO_FORMATS: tuple[str, ...] = ("alaw", "ulaw", "u8bit", "s16bit")

#: Largest file the RIFF size field can describe, kept even for the pad byte.
RIFF_LIMIT = 0xFFFFFFFE
#: Input (8 kHz) frames between header refreshes inside one long write().
REFRESH_INPUT_FRAMES = CALL_RATE


def header_bytes(file_format: str, channels: int) -> int:
    """Bytes before the audio in the files we write (a max_bytes below this cannot work)."""
    codec = get_codec(file_format)
    _check_channels(codec, channels)
    return len(_header(codec, channels, RATES[0], 0, 0))


def _check_channels(codec: Codec, channels: int) -> None:
    if type(channels) is not int or channels not in (1, 2):
        raise ValueError(f"channels: must be 1 or 2, got {channels!r}")
    if channels == 2 and not codec.stereo:
        raise ValueError(
            f"file_format: {codec.name!r} cannot be recorded in 2 channels ('separate' mode allows {', '.join(STEREO_FORMATS)})"
        )


def _header(codec: Codec, channels: int, rate: int, data_bytes: int, frames: int, pad: int = 0) -> bytes:
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


class WavWriter:
    """Streams one recording into a Sink as a WAV file that is valid at every moment.

    Input is int16 at 8000 Hz, mono (n,) or two channels (n, 2); the writer
    resamples to `rate`, encodes to `file_format` and appends through the sink
    (the only thing it writes to, so the same writer serves plain and encrypted
    files). See the module docstring for the layout and the guarantees.
    """

    full: bool
    """max_bytes (or the RIFF limit) has been reached; further writes accept nothing."""
    input_samples: int
    """Input (8 kHz) sample frames accepted so far."""

    def __init__(self, sink: Sink, file_format: str, rate: int, channels: int = 1, max_bytes: int = 0,
                 refresh_samples: int = 0) -> None:
        """`refresh_samples`: input samples between two header refreshes by `write` and
        `write_codes` (0: after every call). The header always describes audio already
        in the file, so a file is readable at every moment; refreshing less often only
        lets it lag. The pipeline refreshes every few seconds (a killed worker's files are
        repaired exactly by the controller) because each refresh is a system call that
        costs as much CPU as the audio it describes."""
        if file_format not in FORMATS:
            raise ValueError(f"file_format: unknown format {file_format!r}; expected one of {', '.join(FORMATS)}")
        if type(rate) is not int or rate not in RATES:  # True and 8000.0 are not rates
            raise ValueError(f"rate: unsupported rate {rate!r}; expected one of {', '.join(map(str, RATES))}")
        codec = CODECS[file_format]
        _check_channels(codec, channels)
        if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 0:
            raise ValueError(f"max_bytes: must be a non-negative integer, got {max_bytes!r}")
        self._header_len = header_bytes(file_format, channels)
        if 0 < max_bytes < self._header_len:
            raise ValueError(f"max_bytes: {max_bytes} cannot hold the {self._header_len}-byte {file_format} header")

        self.sink = sink
        self.codec = codec
        self.file_format = file_format
        self.rate = rate
        self.channels = channels
        self.max_bytes = max_bytes
        self.full = False
        self.input_samples = 0
        self._refresh_every = refresh_samples
        self._refreshed_at = 0  # input_samples when the header was last rewritten

        limit = min(max_bytes, RIFF_LIMIT) if max_bytes else RIFF_LIMIT
        unit = codec.unit_bytes(channels)
        units = (limit - self._header_len) // unit
        if (units * unit) % 2:
            units -= 1  # an odd-length data chunk needs a pad byte: keep room for it
        self._unit_bytes = unit
        self._capacity_frames = units * codec.unit_frames
        self._frames = 0  # frames given to the encoder (on disk + pending in it)
        self._data_bytes = 0  # encoded bytes on disk after the header
        self._encoder = codec.make_encoder(channels)
        self._resampler = StreamResampler(rate, channels)
        table = getattr(self._encoder, "table", None)
        self._table = table if channels == 1 and self._resampler.passthrough else None
        self._trimmed = False
        self._result: tuple[int, int] | None = None
        self._aborted = False
        # The header only changes in its three sizes: refreshes patch a template
        # (0.5 us) instead of rebuilding it (2.9 us, once a second per recording).
        self._tmpl = bytearray(_header(codec, channels, rate, 0, 0))
        # Data is the last chunk and fact (when there is one) the one before it.
        self._fact_at = len(self._tmpl) - 12 if codec.fact else -1
        self._refresh()

    # -- the pipeline's calls -------------------------------------------------

    @property
    def room(self) -> int:
        """Output sample frames that still fit under max_bytes (or the RIFF limit); 0 once reached.

        `full` only turns True when audio had to be refused; a file filled exactly has
        reached max_bytes too, and the pipeline needs this to end the job with SIZE then.
        """
        return 0 if self.full else max(0, self._capacity_frames - self._frames)

    def write(self, pcm: np.ndarray) -> int:
        """Append 8 kHz int16 audio; returns the input frames accepted (fewer only once full)."""
        frames = self._as_frames(pcm)
        self._check_open("write")
        if self._trimmed:
            raise RuntimeError("write after truncate(): the recording's end has been fixed")
        if self.full or not len(frames):
            return 0
        accepted = 0
        for start in range(0, len(frames), REFRESH_INPUT_FRAMES):
            block = frames[start : start + REFRESH_INPUT_FRAMES]
            out = self._resampler.process(block)
            taken = self._append(out)
            if taken < len(out):
                self.full = True
                # The kept output frames stand for this much of the input (the
                # resampler's ~2 ms lag is within the "about" of max_bytes).
                accepted += min(len(block) - 1, taken * CALL_RATE // self.rate)
                break
            accepted += len(block)
            if start + REFRESH_INPUT_FRAMES < len(frames):
                self._refresh()
        self.input_samples += accepted
        self._refresh_if_due()
        return accepted

    @property
    def byte_table(self) -> np.ndarray | None:
        """The code table when each 8 kHz input sample becomes one byte of the file
        (G.711 at 8 kHz, mono), else None.

        With it, the pipeline encodes the second of audio of every such recording due in
        a tick with one table lookup and hands each its codes (`write_codes`), instead of
        one `write` per recording with its copies and checks.
        """
        return self._table

    def write_codes(self, codes: np.ndarray, fit: bool = False) -> int:
        """Append input samples already encoded with `byte_table`; returns how many.

        All of them must fit, unless `fit`: then, as with `write`, what does not fit is
        refused and the file is full (the last flush of a recording that hit max_bytes).
        """
        self._check_open("write_codes")
        if self._table is None:
            raise RuntimeError(f"write_codes: a {self.file_format} file at {self.rate} Hz takes write()")
        if self._trimmed:
            raise RuntimeError("write after truncate(): the recording's end has been fixed")
        n = len(codes)
        if n > self.room:
            if not fit:
                raise ValueError(f"write_codes: {n} samples do not fit in the {self.room} left")
            codes, n = codes[:self.room], self.room
            self.full = True
        if not n:
            return 0
        self._put(codes)
        self._frames += n
        self.input_samples += n
        self._refresh_if_due()
        return n

    def truncate(self, input_samples: int) -> None:
        """Cut the recording back to about `input_samples` 8 kHz frames (to drop a silent tail).

        Exact for PCM and G.711 at 8 kHz; otherwise within the resampler's delay
        and half an ADPCM unit. The file stays valid; only close() may follow.
        """
        self._check_open("truncate")
        if input_samples < 0:
            raise ValueError(f"input_samples: must be >= 0, got {input_samples}")
        if input_samples >= self.input_samples:
            return
        target = input_samples if self.rate == CALL_RATE else round(input_samples * self.rate / CALL_RATE)
        if target > self._frames:
            # The cut falls in audio still inside the resampler (it lags up to ~150 ms): get it out.
            self._append(self._resampler.flush())
        self._trimmed = True  # whatever the resampler held now belongs to the cut audio
        on_disk = self._data_bytes // self._unit_bytes * self.codec.unit_frames
        if target >= on_disk:
            self._encoder.keep_pending(target - on_disk)
        else:
            self._encoder.keep_pending(0)
            unit_frames = self.codec.unit_frames
            units = (target + unit_frames // 2) // unit_frames
            self._data_bytes = units * self._unit_bytes
            self.sink.truncate(self._header_len + self._data_bytes)
        self._frames = self._data_bytes // self._unit_bytes * self.codec.unit_frames + self._encoder.pending
        self.input_samples = input_samples
        self._refresh()

    def close(self) -> tuple[int, int]:
        """Flush the resampler and the last unit, write the final header, finish the sink.

        Returns (file bytes as the sink reports them, sample frames in the file).
        """
        if self._result is not None:
            return self._result
        self._check_open("close")
        if not self._trimmed:
            self._append(self._resampler.flush())
        tail = self._encoder.flush()
        if tail:
            self._put(tail)
        pad = self._data_bytes & 1
        if pad:
            self.sink.pwrite(b"\0", self._header_len + self._data_bytes)
        frames = self._frames_on_disk()
        self.sink.pwrite(_header(self.codec, self.channels, self.rate, self._data_bytes, frames, pad), 0)
        size = self.sink.finish()
        self._result = (size, frames)
        return self._result

    def abort(self) -> None:
        """Error path: remove everything written (sink.discard())."""
        if self._aborted:
            return
        self._aborted = True
        self.sink.discard()

    # -- internals ------------------------------------------------------------

    def _as_frames(self, pcm: np.ndarray) -> np.ndarray:
        pcm = np.asarray(pcm)
        if pcm.dtype != np.int16:
            raise ValueError(f"pcm: expected int16 samples, got {pcm.dtype}")
        if pcm.ndim == 1 and self.channels == 1:
            return pcm.reshape(-1, 1)
        if pcm.ndim == 2 and pcm.shape[1] == self.channels:
            return pcm
        expected = "(n,) or (n, 1)" if self.channels == 1 else "(n, 2)"
        raise ValueError(f"pcm: expected shape {expected} for {self.channels} channel(s), got {pcm.shape}")

    def _check_open(self, what: str) -> None:
        if self._aborted:
            raise RuntimeError(f"cannot {what}: the writer was aborted")
        if self._result is not None:
            raise RuntimeError(f"cannot {what}: the writer is closed")

    def _append(self, frames: np.ndarray) -> int:
        """Encode and append as many of `frames` as the limit allows; returns how many."""
        room = self._capacity_frames - self._frames
        if len(frames) > room:
            frames = frames[:room]
        if len(frames):
            data = self._encoder.encode(frames)
            self._frames += len(frames)
            if data:
                self._put(data)
        return len(frames)

    def _put(self, data: bytes) -> None:
        self.sink.pwrite(data, self._header_len + self._data_bytes)
        self._data_bytes += len(data)

    def _frames_on_disk(self) -> int:
        return self._data_bytes // self._unit_bytes * self.codec.unit_frames

    def _refresh_if_due(self) -> None:
        if self.full or self.input_samples - self._refreshed_at >= self._refresh_every:
            self._refresh()
            self._refreshed_at = self.input_samples

    def _refresh(self) -> None:
        """Rewrite the header so it describes exactly the audio already appended."""
        t = self._tmpl
        struct.pack_into("<I", t, 4, len(t) - 8 + self._data_bytes)
        struct.pack_into("<I", t, len(t) - 4, self._data_bytes)
        if self._fact_at >= 0:
            struct.pack_into("<I", t, self._fact_at, self._frames_on_disk())
        self.sink.pwrite(bytes(t), 0)  # a copy: a sink may keep what it is given


# -- reading our files back: header info, repair, raw .vox --------------------


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


def read_info(path: str) -> WavInfo:
    """Parse the header of the WAV file at `path` (chunks up to the data chunk).

    ValueError with the reason when it is not a RIFF/WAVE file we can read.
    """
    with open(path, "rb") as f:
        file_size = os.fstat(f.fileno()).st_size
        head = f.read(65536)
    return _parse(head, file_size, path)


def _parse(head: bytes, file_size: int, name: str) -> WavInfo:
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        raise ValueError(f"{name}: not a WAV file (no RIFF/WAVE header)")
    riff_size = struct.unpack_from("<I", head, 4)[0]
    pos = 12
    fmt: tuple[int, ...] | None = None
    spb = 0
    fact_offset = fact_frames = 0
    while pos + 8 <= len(head):
        cid = head[pos : pos + 4]
        size = struct.unpack_from("<I", head, pos + 4)[0]
        body = pos + 8
        if cid == b"fmt ":
            if size < 16 or body + 16 > len(head):
                raise ValueError(f"{name}: truncated fmt chunk")
            fmt = struct.unpack_from("<HHIIHH", head, body)
            if size >= 20 and body + 20 <= len(head):
                spb = struct.unpack_from("<H", head, body + 18)[0]
        elif cid == b"fact" and size >= 4 and body + 4 <= len(head):
            fact_offset = body
            fact_frames = struct.unpack_from("<I", head, body)[0]
        elif cid == b"data":
            if fmt is None:
                raise ValueError(f"{name}: data chunk before any fmt chunk")
            tag, channels, rate, _avg, block_align, bits = fmt
            return WavInfo(
                tag, channels, rate, block_align, bits, spb if tag == 0x0011 else 0,
                riff_size, body, size, fact_offset, fact_frames, file_size,
            )  # fmt: skip
        pos = body + size + (size & 1)
    if fmt is None:
        raise ValueError(f"{name}: not a WAV file we can read (no fmt chunk)")
    raise ValueError(f"{name}: no data chunk (file cut inside the header?)")


def repair(path: str) -> str:
    """Make the header of a WAV left by a crash describe its audio exactly; returns a one-line summary.

    The audio is taken to run from the data chunk to the end of the file (our
    writer's layout); a trailing partial unit (ADPCM block, frame) is cut off,
    a RIFF pad byte added when the data is odd, and the RIFF, fact and data
    sizes rewritten. A file whose header already matches is left untouched.
    ValueError (with the reason) if `path` is not a WAV file we can repair.
    """
    info = read_info(path)
    if info.channels < 1:
        raise ValueError(f"{path}: fmt chunk says {info.channels} channels")
    unit_bytes, unit_frames = info.unit()
    available = info.file_size - info.data_offset
    if info.data_size & 1 and available == info.data_size + 1:
        available -= 1  # that last byte is the RIFF pad of a finished file, not audio
    data = available // unit_bytes * unit_bytes
    pad = data & 1
    new_size = info.data_offset + data + pad
    frames = data // unit_bytes * unit_frames
    name = os.path.basename(path)
    seconds = frames / info.rate if info.rate else 0.0
    what = f"{_tag_name(info.format_tag, info.bits_per_sample)} {info.rate} Hz {info.channels} ch, {frames} frames ({seconds:.2f} s)"
    consistent = (
        info.data_size == data
        and info.riff_size == new_size - 8
        and info.file_size == new_size
        and (not info.fact_offset or info.fact_frames == frames)
    )
    if consistent:
        return f"{name}: header already consistent: {what}"
    with open(path, "r+b") as f:
        if info.file_size > info.data_offset + data:
            f.truncate(info.data_offset + data)
        if pad:
            f.seek(info.data_offset + data)
            f.write(b"\0")
        f.seek(4)
        f.write(struct.pack("<I", new_size - 8))
        if info.fact_offset:
            f.seek(info.fact_offset)
            f.write(struct.pack("<I", frames))
        f.seek(info.data_offset - 4)
        f.write(struct.pack("<I", data))
        f.flush()
        os.fsync(f.fileno())
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
    if pad and info.file_size < new_size:
        changes.append("added the RIFF pad byte")
    return f"{name}: repaired: {what}; " + ", ".join(changes)


def _tag_name(tag: int, bits: int) -> str:
    for codec in CODECS.values():
        if codec.format_tag == tag and (tag != 1 or codec.bits_per_sample == bits):
            return codec.name
    return {0x0010: "oki", 0x0003: "float"}.get(tag, f"tag 0x{tag:04x}")


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
    fd = os.open(vox_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as dst:
        dst.write(data)
    return 2 * len(data)
