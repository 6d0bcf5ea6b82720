"""The WAV writer of a recording: streaming encode, limits, crash safety.

The file layout, the parser and the repair policy are `wholecall.formats.wav`'s
(the controller and the CLI read and repair what this writes); the codec facts are
`wholecall.formats.codecs`'; the encoders are `wholecall.worker.codecs`'.

Crash safety: audio is appended first and the header is rewritten after
(one pwrite of the whole header) at the end of every `write()` and after every
second of audio inside a long one, so a kill -9 at any moment leaves a header
that describes only audio already on disk: sox, ffmpeg and libsndfile open it
and play everything up to the last refresh (less, at rates other than 8000 Hz,
the <= 150 ms still inside the resampler). ADPCM data is appended in whole
units only (IMA blocks, OKI bytes), so that audio is always decodable.
`formats.wav.repair(path)` then rewrites the sizes from the file length (dropping
a partial unit), which is what `wholecall repair FILE` runs.

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

import struct
from typing import cast

import numpy as np

from wholecall.formats.codecs import CALL_RATE, CODECS, FORMATS, RATES
from wholecall.formats.wav import RIFF_LIMIT, check_channels, header, header_bytes

from .codecs import make_encoder
from .resample import StreamResampler
from .sink import FileSink, Sink

#: Input (8 kHz) frames between header refreshes inside one long write().
REFRESH_INPUT_FRAMES = CALL_RATE


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
        check_channels(codec, channels)
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
        self._encoder = make_encoder(file_format, channels)
        self._resampler = StreamResampler(rate, channels)
        table = getattr(self._encoder, "table", None)
        self._table = table if channels == 1 and self._resampler.passthrough else None
        self._trimmed = False
        self._result: tuple[int, int] | None = None
        self._aborted = False
        # The header only changes in its three sizes: refreshes patch a template
        # (0.5 us) instead of rebuilding it (2.9 us, once a second per recording).
        self._tmpl = bytearray(header(codec, channels, rate, 0, 0))
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
        self._took_codes(n)
        return n

    def codes_target(self, n: int) -> tuple[int, int]:
        """(descriptor, offset) where the caller may write `n` codes of `byte_table`
        itself, then `codes_written(n)`; (-1, 0) where they must go through `write_codes`
        (not a plain file holding its descriptor, closed, trimmed, or they do not all fit).

        Why: the pipeline writes a flush of thousands of G.711 recordings in one compiled
        loop of system calls (`kernels.pwrite_rows`), not one `write_codes` each."""
        sink = self.sink
        if (type(sink) is not FileSink or self._table is None or self._trimmed or self._aborted
                or self._result is not None or n > self.room):
            return -1, 0
        fd = sink.direct_fd
        return (fd, self._header_len + self._data_bytes) if fd >= 0 else (-1, 0)

    def codes_written(self, n: int) -> None:
        """`n` codes were written whole at `codes_target(n)`'s offset: account for them as
        `write_codes` does (and refresh the header when due)."""
        end = self._header_len + self._data_bytes + n
        cast(FileSink, self.sink).extended(end)
        self._data_bytes += n
        self._took_codes(n)

    def _took_codes(self, n: int) -> None:
        self._frames += n
        self.input_samples += n
        self._refresh_if_due()

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
        self.sink.pwrite(header(self.codec, self.channels, self.rate, self._data_bytes, frames, pad), 0)
        size = self.sink.finish()
        self._result = (size, frames)
        return self._result

    def keep(self) -> str:
        """Closing failed: leave the file as recovery wants it, not removed. The header is
        rewritten (best effort) to describe the audio on disk, so a plain file is a valid
        partial WAV; an encrypted one keeps its intermediate. Returns what is left."""
        if not self._aborted and self._result is None:
            self._aborted = True
            try:
                self._refresh()
            except OSError:
                pass  # the header still describes an earlier, valid length
        return self.sink.keep()

    def abort(self) -> None:
        """Error path: remove everything written (sink.discard())."""
        if self._aborted:
            return
        self._aborted = True
        self.sink.discard()

    def continue_from(self, data_bytes: int, input_samples: int) -> None:
        """Failover: adopt a file whose audio (`data_bytes` after the header, whole units,
        standing for `input_samples` 8 kHz input frames) a dead worker wrote; the next
        write appends right after it. The sink must already be cut to that length. The
        encoder and resampler start afresh (exact for PCM and G.711 at 8 kHz)."""
        self._check_open("continue_from")
        self._data_bytes = data_bytes
        self._frames = self._frames_on_disk()
        self.input_samples = input_samples
        self._refreshed_at = input_samples
        self.full = self._frames >= self._capacity_frames
        self._refresh()

    @property
    def header_len(self) -> int:
        return self._header_len

    @property
    def unit(self) -> tuple[int, int]:
        """(bytes, frames) of one whole unit of this file's audio."""
        return self._unit_bytes, self.codec.unit_frames

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
