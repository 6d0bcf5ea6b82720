"""Interop matrix: every format x rate x channel layout, written by WavWriter, read by three tools.

Each file is written in many odd-sized blocks, then decoded by libsndfile
(soundfile), sox and ffmpeg; the OKI WAV only by ffmpeg (sox and libsndfile
refuse OKI in WAV) and its raw .vox form by sox and libsndfile. Asserted:
  - every reader reports the file's channels, rate and length (= close()'s frames);
  - PCM and G.711: all readers return identical samples, equal to the codec's
    exact round trip of the one-shot resampled input (so the streaming
    resampler and the encoder are both bit-exact);
  - IMA: libsndfile and sox equal the reference (shift-and-add) decode of the
    file's blocks exactly, ffmpeg equals the multiply-form decode exactly
    (its known rounding, see codectools); OKI: ffmpeg equals the 12-bit-clamp
    decode, sox and libsndfile (.vox) the 16-bit-clamp decode, exactly;
  - ADPCM against the input: SNR above the codec's floor for every reader.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from codectools import (
    HAVE_TOOLS,
    decode_ffmpeg,
    decode_soundfile,
    decode_sox,
    ima_decode_model,
    oki_decode_model,
    resample_reference,
    snr_db,
    speech,
)
from test_codecs_adpcm import SNR_FLOOR_DB

from wholecall.formats.codecs import FORMATS, RATES, STEREO_FORMATS
from wholecall.formats.wav import read_info, to_vox
from wholecall.worker.codecs import g711, pcm
from wholecall.worker.sink import FileSink
from wholecall.worker.wavfile import WavWriter

pytestmark = pytest.mark.skipif(not HAVE_TOOLS, reason="needs sox and ffmpeg")

BLOCKS = (1, 37, 160, 999, 7, 1601, 320, 3, 4000)
CASES = [(f, r, 1) for f in FORMATS for r in RATES] + [(f, r, 2) for f in STEREO_FORMATS for r in RATES]


def _signal(channels: int, seconds: float = 0.6) -> np.ndarray:
    x = speech(seconds)
    if channels == 1:
        return x
    # two different channels, so a swap or an interleaving slip cannot pass
    return np.stack([x, (x[::-1] // 2).astype(np.int16)], axis=1)


def _write(path: str, file_format: str, rate: int, x: np.ndarray) -> tuple[int, int]:
    w = WavWriter(FileSink(path), file_format, rate, x.shape[1] if x.ndim == 2 else 1)
    start, k = 0, 0
    while start < len(x):
        n = BLOCKS[k % len(BLOCKS)]
        assert w.write(x[start : start + n]) == len(x[start : start + n])
        start, k = start + n, k + 1
    return w.close()


def _roundtrip(file_format: str, ref: np.ndarray) -> np.ndarray:
    if file_format == "s16bit":
        return ref
    if file_format == "u8bit":
        return pcm.u8_decode(pcm.u8_encode(ref))
    enc, dec = getattr(g711, f"{file_format}_encode"), getattr(g711, f"{file_format}_decode")
    return dec(enc(ref))


def _data(path: str) -> bytes:
    info = read_info(path)
    with open(path, "rb") as f:
        f.seek(info.data_offset)
        return f.read(info.data_size)


@pytest.mark.parametrize("file_format, rate, channels", CASES, ids=[f"{f}-{r}-{c}ch" for f, r, c in CASES])
def test_written_file_reads_the_same_in_every_tool(tmp_path, file_format, rate, channels):
    x = _signal(channels)
    path = os.path.join(tmp_path, "rec.wav")
    size, frames = _write(path, file_format, rate, x)
    assert size == os.path.getsize(path)
    ref = resample_reference(x, rate).reshape(-1, channels)

    if file_format == "oki":
        readers = {"ffmpeg": decode_ffmpeg(path)}
        vox = os.path.join(tmp_path, "rec.vox")
        assert to_vox(path, vox) == frames
        readers["sox(vox)"] = decode_sox(vox, vox_rate=rate)
        readers["libsndfile(vox)"] = decode_soundfile(vox, vox_rate=rate)
    else:
        readers = {"libsndfile": decode_soundfile(path), "sox": decode_sox(path), "ffmpeg": decode_ffmpeg(path)}

    for name, (got, got_rate) in readers.items():
        assert got_rate == rate, name
        assert got.shape == (frames, channels), (name, got.shape, frames)

    if file_format in ("s16bit", "u8bit", "alaw", "ulaw"):
        assert frames == len(ref)
        expected = _roundtrip(file_format, ref)
        for name, (got, _) in readers.items():
            bad = np.argwhere(got != expected)
            assert len(bad) == 0, f"{name}: {len(bad)} samples differ, first at {bad[0]}"
        return

    data = _data(path)
    if file_format == "ima":
        assert frames == len(data) // 256 * 505 and frames - len(ref) in range(505)
        models = {
            "libsndfile": ima_decode_model(data),
            "sox": ima_decode_model(data),
            "ffmpeg": ima_decode_model(data, multiply=True),
        }
    else:
        assert frames == 2 * len(data) and frames - len(ref) in (0, 1)
        models = {
            "ffmpeg": oki_decode_model(data),
            "sox(vox)": oki_decode_model(data, high=32767),
            "libsndfile(vox)": oki_decode_model(data, high=32767),
        }
    for name, (got, _) in readers.items():
        assert np.array_equal(got[:, 0], models[name]), f"{name} differs from its decoder model"
        snr = snr_db(ref[:, 0], got[: len(ref), 0])
        assert snr >= SNR_FLOOR_DB[file_format], f"{name}: SNR {snr:.1f} dB"


@pytest.mark.parametrize("file_format", FORMATS)
def test_empty_recording_opens_everywhere(tmp_path, file_format):
    """A job that ends before any audio (initial-silence timeout) still leaves a valid WAV."""
    path = os.path.join(tmp_path, "empty.wav")
    size, frames = WavWriter(FileSink(path), file_format, 8000).close()
    assert frames == 0 and size == os.path.getsize(path) == read_info(path).data_offset
    readers = [decode_ffmpeg] if file_format == "oki" else [decode_soundfile, decode_sox, decode_ffmpeg]
    for reader in readers:
        got, rate = reader(path)
        assert rate == 8000 and len(got) == 0, reader.__name__
