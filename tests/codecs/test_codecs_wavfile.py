"""WavWriter contract: arguments, header, max_bytes, truncate, refresh after every write, abort, repair."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest
import soundfile as sf
from codectools import decode_ffmpeg, speech
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wholecall.formats.codecs import CODECS, FORMATS, RATES, STEREO_FORMATS
from wholecall.formats.wav import header_bytes, read_info, repair, to_vox
from wholecall.worker.codecs import pcm
from wholecall.worker.sink import FileSink
from wholecall.worker.wavfile import WavWriter


def _frames_seen(path: str, file_format: str) -> int:
    """Sample frames a reader gets from the file (ffmpeg for OKI, libsndfile otherwise)."""
    if file_format == "oki":
        return len(decode_ffmpeg(path)[0])
    return sf.info(path).frames


# -- arguments and header -----------------------------------------------------------


def test_header_sizes():
    assert {f: header_bytes(f, 1) for f in FORMATS} == {
        "alaw": 58, "ulaw": 58, "s16bit": 44, "u8bit": 44, "ima": 60, "oki": 58,
    }  # fmt: skip
    assert all(header_bytes(f, 2) == header_bytes(f, 1) for f in STEREO_FORMATS)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"file_format": "mp3"}, "file_format"),
        ({"rate": 16000}, "rate"),
        ({"rate": True}, "rate"),
        ({"rate": 8000.0}, "rate"),
        ({"channels": True}, "channels"),
        ({"channels": 3}, "channels"),
        ({"file_format": "ima", "channels": 2}, "file_format"),
        ({"file_format": "oki", "channels": 2}, "file_format"),
        ({"max_bytes": -1}, "max_bytes"),
        ({"max_bytes": 57}, "max_bytes"),
        ({"max_bytes": 1.5}, "max_bytes"),
    ],
)
def test_bad_arguments_name_the_argument(tmp_path, kwargs, name):
    args = {"file_format": "alaw", "rate": 8000, "channels": 1, "max_bytes": 0, **kwargs}
    sink = FileSink(os.path.join(tmp_path, "x.wav"))
    with pytest.raises(ValueError, match=rf"^{name}: "):
        WavWriter(sink, **args)
    with pytest.raises(ValueError):
        header_bytes("mp3", 1)


@pytest.mark.parametrize("file_format", FORMATS)
@pytest.mark.parametrize("rate", RATES)
def test_header_fields(tmp_path, file_format, rate):
    path = os.path.join(tmp_path, "h.wav")
    w = WavWriter(FileSink(path), file_format, rate)
    w.write(speech(0.2))
    _, frames = w.close()
    info = read_info(path)
    codec = CODECS[file_format]
    assert (info.format_tag, info.channels, info.rate, info.bits_per_sample) == (
        codec.format_tag, 1, rate, codec.bits_per_sample,
    )  # fmt: skip
    assert info.data_offset == header_bytes(file_format, 1)
    assert info.riff_size == info.file_size - 8
    assert info.data_offset + info.data_size + (info.data_size & 1) == info.file_size
    if codec.fact:
        assert info.fact_frames == frames
    if file_format == "ima":
        assert (info.block_align, info.samples_per_block) == (256, 505)
    if file_format == "oki":
        assert info.block_align == 1


def test_u8_rounds_to_nearest():
    x = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)
    expected = np.clip(np.floor(x / 256 + 0.5), -128, 127).astype(np.int16) + 128
    assert np.array_equal(pcm.u8_encode(x), expected.astype(np.uint8))


def test_write_validates_input(tmp_path):
    w = WavWriter(FileSink(os.path.join(tmp_path, "v.wav")), "s16bit", 8000, 2)
    with pytest.raises(ValueError, match="^pcm: .*int16"):
        w.write(np.zeros((10, 2), np.float32))
    with pytest.raises(ValueError, match=r"^pcm: .*\(n, 2\)"):
        w.write(np.zeros(10, np.int16))
    assert w.write(np.zeros((0, 2), np.int16)) == 0
    w.close()
    with pytest.raises(RuntimeError, match="closed"):
        w.write(np.zeros((10, 2), np.int16))
    assert w.close() == w.close()  # idempotent


def test_abort_leaves_nothing(tmp_path):
    path = os.path.join(tmp_path, "a.wav")
    w = WavWriter(FileSink(path), "ima", 11025)
    w.write(speech(0.5))
    w.abort()
    assert not os.path.exists(path)


# -- crash safety without a kill: the header on disk is right after every write ---------


@pytest.mark.parametrize(
    "file_format, rate, channels",
    [("alaw", 8000, 1), ("u8bit", 11025, 1), ("s16bit", 6000, 2), ("ima", 11025, 1), ("oki", 8000, 1)],
)
def test_file_on_disk_is_valid_after_every_write(tmp_path, file_format, rate, channels):
    path = os.path.join(tmp_path, "live.wav")
    x = speech(1.2)
    if channels == 2:
        x = np.stack([x, x[::-1]], axis=1)
    w = WavWriter(FileSink(path), file_format, rate, channels)
    unit_frames = CODECS[file_format].unit_frames
    for start in range(0, len(x), 1337):
        w.write(x[start : start + 1337])
        info = read_info(path)
        assert info.data_offset + info.data_size == info.file_size, "header must describe the bytes on disk"
        assert info.riff_size == info.file_size - 8
        seen = _frames_seen(path, file_format)
        expected = info.data_size // CODECS[file_format].unit_bytes(channels) * unit_frames
        assert seen == expected
        # everything written so far is there, except what the resampler (<= 160 ms) and the unit still hold
        assert seen >= min(start + 1337, len(x)) * rate // 8000 - unit_frames - (0 if rate == 8000 else 0.16 * rate)


def test_long_write_refreshes_inside(tmp_path):
    """One 5 s write() refreshes the header every second of input, not only at the end."""

    class RecordingSink(FileSink):
        def __init__(self, path: str) -> None:
            super().__init__(path)
            self.headers: list[int] = []

        def pwrite(self, data: bytes, offset: int) -> None:
            if offset == 0:
                self.headers.append(struct.unpack_from("<I", data, 40)[0])  # data size (PCM header)
            super().pwrite(data, offset)

    sink = RecordingSink(os.path.join(tmp_path, "long.wav"))
    w = WavWriter(sink, "s16bit", 8000)
    w.write(np.zeros(40000, np.int16))
    assert sink.headers == [0, 16000, 32000, 48000, 64000, 80000]


# -- max_bytes -------------------------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    file_format=st.sampled_from(FORMATS),
    rate=st.sampled_from(RATES),
    extra=st.integers(0, 3000),
    block=st.integers(1, 2000),
)
def test_max_bytes_is_never_exceeded_and_is_filled(tmp_path_factory, file_format, rate, extra, block):
    path = os.path.join(tmp_path_factory.mktemp("mb"), "m.wav")
    max_bytes = header_bytes(file_format, 1) + extra
    w = WavWriter(FileSink(path), file_format, rate, max_bytes=max_bytes)
    x = speech(0.8)
    total = 0
    for start in range(0, len(x), block):
        chunk = x[start : start + block]
        took = w.write(chunk)
        total += took
        if took < len(chunk):
            assert w.full
            break
        assert not w.full
    assert w.input_samples == total
    if w.full:
        assert w.write(x[:100]) == 0
    size, frames = w.close()
    assert size == os.path.getsize(path) <= max_bytes
    unit = CODECS[file_format].unit_bytes(1)
    if w.full:
        assert max_bytes - size <= unit + 1, "stopped although another unit fitted"
    info = read_info(path)
    assert info.data_size % unit == 0 and info.riff_size == size - 8
    assert _frames_seen(path, file_format) == frames


@pytest.mark.parametrize("file_format", FORMATS)
def test_max_bytes_equal_to_header(tmp_path, file_format):
    path = os.path.join(tmp_path, "h.wav")
    w = WavWriter(FileSink(path), file_format, 8000, max_bytes=header_bytes(file_format, 1))
    assert w.write(speech(0.1)) == 0 and w.full
    assert w.close() == (header_bytes(file_format, 1), 0)


def test_max_bytes_exact_at_8k_alaw(tmp_path):
    """A-law at 8 kHz: one byte per input sample, so the accepted count is exact too."""
    path = os.path.join(tmp_path, "a.wav")
    w = WavWriter(FileSink(path), "alaw", 8000, max_bytes=58 + 1000)
    assert w.write(speech(0.1)[:600]) == 600
    assert w.write(speech(0.1)[:600]) == 400 and w.full
    assert w.close() == (1058, 1000)


# -- truncate ----------------------------------------------------------------------------


@pytest.mark.parametrize("file_format", FORMATS)
@pytest.mark.parametrize("rate", [8000, 11025])
def test_truncate_cuts_the_tail(tmp_path, file_format, rate):
    x = speech(1.0)
    full_path, cut_path = os.path.join(tmp_path, "full.wav"), os.path.join(tmp_path, "cut.wav")
    for path, cut in ((full_path, None), (cut_path, 3000)):
        w = WavWriter(FileSink(path), file_format, rate)
        for start in range(0, len(x), 800):
            w.write(x[start : start + 800])
        if cut is not None:
            w.truncate(cut)
            assert w.input_samples == cut
            with pytest.raises(RuntimeError, match="truncate"):
                w.write(x[:10])
        _, frames = w.close()
    target = 3000 * rate / 8000
    unit_frames = CODECS[file_format].unit_frames
    tolerance = 0 if (rate == 8000 and unit_frames == 1) else unit_frames // 2 + 1
    assert abs(frames - target) <= tolerance + (unit_frames - 1), (frames, target)
    assert _frames_seen(cut_path, file_format) == frames
    # what is kept is exactly the start of the uncut recording
    a, b = read_info(full_path), read_info(cut_path)
    with open(full_path, "rb") as f1, open(cut_path, "rb") as f2:
        f1.seek(a.data_offset)
        f2.seek(b.data_offset)
        kept = f2.read(b.data_size)
        original = f1.read(a.data_size)
    if file_format in ("ima", "oki"):  # the last unit may be a padded partial one
        kept = kept[: len(kept) - CODECS[file_format].unit_bytes(1)]
    assert original.startswith(kept)


def test_truncate_inside_the_pending_block(tmp_path):
    path = os.path.join(tmp_path, "p.wav")
    w = WavWriter(FileSink(path), "ima", 8000)
    w.write(speech(0.2)[:700])  # one block on disk, 195 samples pending
    w.truncate(600)
    w.truncate(900)  # beyond what was written: nothing to do
    assert w.input_samples == 600
    assert w.close()[1] == 2 * 505


# -- repair -------------------------------------------------------------------------------


@pytest.mark.parametrize("file_format", FORMATS)
def test_repair_restores_exact_sizes(tmp_path, file_format):
    path = os.path.join(tmp_path, "crash.wav")
    sink = FileSink(path)
    w = WavWriter(sink, file_format, 11025)
    w.write(speech(0.5))
    with open(path, "rb") as f:
        stale_header = f.read(header_bytes(file_format, 1))
    w.write(speech(1.0)[4000:])
    w.close()
    with open(path, "r+b") as f:  # a crash: old header, more audio, half a unit of garbage
        f.write(stale_header)
        f.seek(0, os.SEEK_END)
        f.write(b"\x11" * 77)
    before = os.path.getsize(path)
    summary = repair(path)
    assert summary.startswith("crash.wav: repaired") and "\n" not in summary
    info = read_info(path)
    codec = CODECS[file_format]
    unit = codec.unit_bytes(1)
    assert info.data_size % unit == 0
    # (for 1-byte units the garbage cannot be told from audio and stays; a pad byte may be added)
    assert info.file_size == info.data_offset + info.data_size + (info.data_size & 1) <= before + 1
    assert before - info.file_size < unit + 77
    assert info.riff_size == info.file_size - 8
    frames = info.data_size // unit * codec.unit_frames
    if codec.fact:
        assert info.fact_frames == frames
    assert _frames_seen(path, file_format) == frames
    assert "already consistent" in repair(path)


def test_repair_refuses_what_is_not_a_wav(tmp_path):
    text = os.path.join(tmp_path, "notes.txt")
    with open(text, "w") as f:
        f.write("hello, this is not audio\n")
    with pytest.raises(ValueError, match="not a WAV file"):
        repair(text)
    empty = os.path.join(tmp_path, "empty.wav")
    open(empty, "wb").close()
    with pytest.raises(ValueError, match="not a WAV file"):
        repair(empty)
    cut = os.path.join(tmp_path, "cut.wav")
    with open(cut, "wb") as f:
        f.write(b"RIFF\0\0\0\0WAVEfmt \x10\0\0\0\x01\0")
    with pytest.raises(ValueError, match="fmt"):
        repair(cut)


def test_to_vox_refuses_other_formats(tmp_path):
    path = os.path.join(tmp_path, "a.wav")
    WavWriter(FileSink(path), "alaw", 8000).close()
    with pytest.raises(ValueError, match="OKI"):
        to_vox(path, os.path.join(tmp_path, "a.vox"))


@pytest.mark.parametrize("file_format", FORMATS)
@pytest.mark.parametrize("rate", RATES)
def test_every_refreshed_header_is_the_one_built_from_scratch(tmp_path, file_format, rate):
    """Refreshes patch a header template; after each write it must equal a freshly built header."""
    from wholecall.formats.wav import header as _header

    channels = 2 if file_format in STEREO_FORMATS and rate == 8000 else 1
    path = str(tmp_path / "h.wav")
    w = WavWriter(FileSink(path), file_format, rate, channels)
    rng = np.random.default_rng(3)
    for n in (0, 1, 159, 160, 4000, 8001):
        block = rng.integers(-9000, 9000, (n, channels) if channels == 2 else n).astype(np.int16)
        w.write(block)
        with open(path, "rb") as f:
            head = f.read(w._header_len)
        want = _header(w.codec, channels, rate, w._data_bytes, w._frames_on_disk())
        assert head == want, (n, head.hex(), want.hex())
    w.close()


@pytest.mark.parametrize("file_format", ["alaw", "ulaw"])
def test_write_codes_makes_the_file_write_makes(tmp_path, file_format):
    """The pipeline encodes many G.711 recordings in one lookup and hands each its codes:
    the file must be byte for byte what `write` of the same samples gives."""
    x = speech(1.3)
    a, b = (WavWriter(FileSink(str(tmp_path / f"{k}.wav")), file_format, 8000) for k in "ab")
    table = b.byte_table
    assert table is not None
    for i in range(0, len(x), 3000):
        a.write(x[i:i + 3000])
        b.write_codes(np.take(table, x[i:i + 3000].view(np.uint16)))
        assert b.input_samples == a.input_samples and b.room == a.room
    a.close(), b.close()
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes()


@pytest.mark.parametrize("file_format, rate, channels", [("ima", 8000, 1), ("s16bit", 8000, 1), ("alaw", 11025, 1),
                                                         ("alaw", 8000, 2)])
def test_write_codes_only_where_a_sample_is_a_byte(tmp_path, file_format, rate, channels):
    w = WavWriter(FileSink(str(tmp_path / "x.wav")), file_format, rate, channels)
    assert w.byte_table is None
    with pytest.raises(RuntimeError, match="takes write"):
        w.write_codes(np.zeros(160, np.uint8))
    w.abort()


def test_write_codes_refuses_what_does_not_fit(tmp_path):
    path = str(tmp_path / "x.wav")
    w = WavWriter(FileSink(path), "alaw", 8000, max_bytes=58 + 1000)
    w.write_codes(np.zeros(600, np.uint8))
    with pytest.raises(ValueError, match="400 left"):
        w.write_codes(np.zeros(401, np.uint8))
    w.write_codes(np.zeros(400, np.uint8))
    assert w.room == 0
    w.close()
    assert os.path.getsize(path) == 58 + 1000 and sf.info(path).frames == 1000


def test_write_codes_with_fit_takes_what_fits_and_the_file_is_full(tmp_path):
    """A recording's last flush at max_bytes: the rest is refused as `write` refuses it."""
    path = str(tmp_path / "x.wav")
    w = WavWriter(FileSink(path), "alaw", 8000, max_bytes=58 + 1000)
    assert w.write_codes(np.full(600, 0xD5, np.uint8), fit=True) == 600 and not w.full
    assert w.write_codes(np.full(700, 0xD5, np.uint8), fit=True) == 400
    assert w.full and w.room == 0
    assert w.write_codes(np.zeros(10, np.uint8), fit=True) == 0
    w.close()
    assert os.path.getsize(path) == 58 + 1000 and sf.info(path).frames == 1000


def test_refresh_samples_lets_the_header_lag_but_never_lie(tmp_path):
    """The pipeline refreshes headers every few seconds: in between, readers see the audio
    up to the last refresh (never more than is there), and close() makes it exact."""
    path = str(tmp_path / "lag.wav")
    w = WavWriter(FileSink(path), "alaw", 8000, refresh_samples=16000)
    x = speech(3.0)
    seen = []
    for i in range(0, 24000, 8000):
        w.write_codes(np.take(w.byte_table, x[i:i + 8000].view(np.uint16)))
        seen.append(sf.info(path).frames)
    assert seen == [0, 16000, 16000]
    assert w.close() == (58 + 24000, 24000) and sf.info(path).frames == 24000
