"""kill -9 while recording: the file still opens everywhere and holds the audio; repair makes it exact.

A child process records through WavWriter + FileSink in 0.5 s blocks (as the
pipeline does) and prints how many input samples were accepted after each
write(). The parent SIGKILLs it at a random moment after at least 3 s of audio.
Asserted: libsndfile, sox and ffmpeg (OKI: ffmpeg) open the file, agree on
its length, that length covers at least everything reported more than 2 s
before the kill (in fact all of it, less the resampler's lag: printed), and
the audio is exactly the expected decode of the input's start. Then `repair`
rewrites the sizes from the file length and the tools agree on the new length.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time

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

from wholecall.formats.wav import read_info, repair
from wholecall.worker.codecs import g711, pcm

pytestmark = pytest.mark.skipif(not HAVE_TOOLS, reason="needs sox and ffmpeg")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHILD = r"""
import sys, time
import numpy as np
from wholecall.worker.sink import FileSink
from wholecall.worker.wavfile import WavWriter
path, fmt, rate, block, pause = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
x = np.load(sys.argv[6])
w = WavWriter(FileSink(path), fmt, rate, 1 if x.ndim == 1 else x.shape[1])
print("ready", flush=True)
while True:  # the call goes on until the kill: the input repeats
    for start in range(0, len(x), block):
        w.write(x[start:start + block])
        print(w.input_samples, flush=True)
        if pause:
            time.sleep(pause)
"""


def _record_and_kill(tmp_path, fmt: str, rate: int, x: np.ndarray, block: int, pause: float, seed: str):
    src = os.path.join(tmp_path, "input.npy")
    np.save(src, x)
    path = os.path.join(tmp_path, "killed.wav")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, path, fmt, str(rate), str(block), str(pause), src],
        stdout=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )  # fmt: skip
    counts: list[int] = []
    started = threading.Event()

    def follow() -> None:  # keep the pipe drained so the child never blocks on print
        for line in child.stdout:
            if line.strip() == "ready":
                continue
            counts.append(int(line))
            if counts[-1] >= 3 * 8000:
                started.set()
        started.set()

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    try:
        assert started.wait(30), "child never reached 3 s of audio"
        # the kill lands anywhere: inside a write, between audio and header, in a sleep
        time.sleep(random.Random(seed).uniform(0, 0.04))
        seen = counts[-1]  # accepted (write() returned) before the kill
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
        reader.join(5)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    return path, seen


def _read_all(path: str, fmt: str) -> dict[str, np.ndarray]:
    if fmt == "oki":
        readers = {"ffmpeg": decode_ffmpeg}
    else:
        readers = {"libsndfile": decode_soundfile, "sox": decode_sox, "ffmpeg": decode_ffmpeg}
    out = {}
    for name, reader in readers.items():
        got, _ = reader(path)
        out[name] = got
    return out


def _expected(fmt: str, ref: np.ndarray) -> np.ndarray:
    if fmt in ("alaw", "ulaw"):
        return getattr(g711, f"{fmt}_decode")(getattr(g711, f"{fmt}_encode")(ref))
    if fmt == "u8bit":
        return pcm.u8_decode(pcm.u8_encode(ref))
    return ref


def _check_audio(path: str, fmt: str, rate: int, x: np.ndarray, decoded: dict[str, np.ndarray]) -> None:
    frames = len(next(iter(decoded.values())))
    cycles = int(frames / rate * 8000 // len(x)) + 2
    x = np.concatenate([x] * cycles)  # what the child fed: its input, repeated
    ref = resample_reference(x, rate).reshape(-1, 1 if x.ndim == 1 else x.shape[1])
    if fmt in ("ima", "oki"):
        info = read_info(path)
        with open(path, "rb") as f:
            f.seek(info.data_offset)
            data = f.read(info.data_size)
        models = (
            {"libsndfile": ima_decode_model(data), "sox": ima_decode_model(data),
             "ffmpeg": ima_decode_model(data, multiply=True)}
            if fmt == "ima" else {"ffmpeg": oki_decode_model(data)}
        )  # fmt: skip
        for name, got in decoded.items():
            assert np.array_equal(got[:, 0], models[name]), name
            assert snr_db(ref[:frames, 0], got[:, 0]) >= SNR_FLOOR_DB[fmt], name
    else:
        expected = _expected(fmt, ref[:frames])
        for name, got in decoded.items():
            assert np.array_equal(got, expected), name


@pytest.mark.parametrize(
    "fmt, rate, channels, block, pause",
    [
        ("alaw", 8000, 1, 4000, 0.02),
        ("ima", 11025, 1, 4000, 0.02),
        ("s16bit", 11000, 2, 4000, 0.02),
        ("oki", 6000, 1, 4000, 0.02),
        ("ima", 8000, 1, 333, 0.0),  # flat out in small blocks: the kill most likely hits a write
        ("alaw", 11025, 1, 160, 0.0),
    ],
)
def test_sigkill_leaves_a_readable_file_and_repair_makes_it_exact(tmp_path, fmt, rate, channels, block, pause):
    x = speech(3.0)
    if channels == 2:
        x = np.stack([x, x[::-1]], axis=1)
    path, seen = _record_and_kill(tmp_path, fmt, rate, x, block, pause, seed=f"{fmt}-{rate}-{block}")

    decoded = _read_all(path, fmt)
    lengths = {name: len(got) for name, got in decoded.items()}
    assert len(set(lengths.values())) == 1, lengths
    frames = next(iter(lengths.values()))
    reported = seen * rate / 8000
    lag_ms = (reported - frames) / rate * 1000
    print(f"\n{fmt} {rate} Hz {channels} ch: reported {seen / 8000:.2f} s before the kill, file holds "
          f"{frames / rate:.2f} s (lag {lag_ms:.0f} ms)")  # fmt: skip
    assert frames >= reported - 2 * rate, "lost more than the 2 s the refresh contract allows"
    _check_audio(path, fmt, rate, x, decoded)

    before = os.path.getsize(path)
    summary = repair(path)
    print(summary)
    info = read_info(path)
    assert info.riff_size == info.file_size - 8
    assert info.file_size == info.data_offset + info.data_size + (info.data_size & 1) <= before + 1
    decoded = _read_all(path, fmt)
    lengths = {name: len(got) for name, got in decoded.items()}
    assert len(set(lengths.values())) == 1, lengths
    assert next(iter(lengths.values())) >= frames
    if info.fact_offset:
        assert info.fact_frames == next(iter(lengths.values()))
    _check_audio(path, fmt, rate, x, decoded)
    assert "already consistent" in repair(path)
