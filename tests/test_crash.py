"""A worker killed with SIGKILL mid-recording leaves a file every tool opens, holding the
audio up to (at most) one flush interval before the kill."""

import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
import soundfile as sf

from wholecall.controller import Cause
from tests.conftest import tone


def frames_by_sox(path):
    out = subprocess.run(["sox", "--i", "-s", path], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def frames_by_ffmpeg(path):
    out = subprocess.run(["ffmpeg", "-v", "error", "-i", path, "-f", "s16le", "-ac", "1", "-"],
                         capture_output=True, check=True)
    return len(out.stdout) // 2


@pytest.mark.skipif(not (shutil.which("sox") and shutil.which("ffmpeg")), reason="needs sox and ffmpeg")
@pytest.mark.parametrize("fmt", ["alaw", "s16bit", "ima"])
def test_sigkill_mid_job_leaves_a_readable_file(make_controller, fmt):
    ctl = make_controller(workers=1)
    ch = ctl.incoming_call()
    ch.answer()
    rec = ch.WholeCallRecorder
    assert rec.start(f"crash-{fmt}.wav", file_format=fmt)
    a, b = tone(440, 4.0, 5000), tone(1200, 4.0, 5000)
    t0 = time.monotonic()
    for i in range(0, 3 * 8000 + 4000, 160):  # 3.5 s at real time
        ch.inbound.write(a[i:i + 160])
        ch.outbound.write(b[i:i + 160])
        delay = t0 + (i + 160) / 8000 - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    fed_s = 3.5
    os.kill(ctl.supervisor.workers[0].proc.pid, signal.SIGKILL)
    assert rec.wait_until_finished(10) is Cause.ERROR
    path = rec._path
    info = sf.info(path)
    n_sf = info.frames
    n_sox = frames_by_sox(path)
    n_ff = frames_by_ffmpeg(path)
    # The header describes only audio already on disk, so every reader sees the same length...
    assert n_sf == n_sox == n_ff, (n_sf, n_sox, n_ff)
    # ...and it holds at least the audio up to 2 s before the kill. Workers refresh a
    # header only every 5 s: the controller repairs the dead worker's files, so the header
    # covers all that was written, and the result reports it.
    assert n_sf >= (fed_s - 2.0) * 8000
    assert rec.last_result.samples == n_sf and rec.last_result.bytes == os.path.getsize(path)
    data, _ = sf.read(path, dtype="int16")
    spectrum = np.abs(np.fft.rfft(data[:8000].astype(float)))
    assert spectrum[440] > 50 * np.median(spectrum) and spectrum[1200] > 50 * np.median(spectrum)
