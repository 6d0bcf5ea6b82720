"""A worker killed with SIGKILL mid-recording: its job is taken over and the file every
tool opens holds all the audio fed, before and after the kill."""

import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import tone
from wholecall.controller import Cause


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
    os.kill(ctl.supervisor.workers[0].proc.pid, signal.SIGKILL)
    ch.inbound.write(a[3 * 8000 + 4000:])
    ch.outbound.write(b[3 * 8000 + 4000:])
    assert rec.stop() and rec.cause() is Cause.ABORTED
    path = rec._path
    info = sf.info(path)
    n_sf = info.frames
    n_sox = frames_by_sox(path)
    n_ff = frames_by_ffmpeg(path)
    # The header describes only audio already on disk, so every reader sees the same length...
    assert n_sf == n_sox == n_ff, (n_sf, n_sox, n_ff)
    # ...and it holds everything fed, before and after the kill (the replacement cut the
    # file back to what the dead worker had published as durable and read the rest again
    # from the rings). IMA restarts its predictor at a block boundary: lengths agree to a block.
    assert abs(n_sf - 4 * 8000) <= (505 if fmt == "ima" else 0), n_sf
    if fmt != "ima":
        got, _ = sf.read(path, dtype="int16")
        want = np.clip(a.astype(np.int32) + b, -32768, 32767).astype(np.int16)
        if fmt == "alaw":
            from wholecall.worker.codecs.g711 import alaw_decode, alaw_encode
            want = alaw_decode(alaw_encode(want))
        assert np.array_equal(got, want)
    assert rec.last_result.samples == n_sf and rec.last_result.bytes == os.path.getsize(path)
    data, _ = sf.read(path, dtype="int16")
    spectrum = np.abs(np.fft.rfft(data[:8000].astype(float)))
    assert spectrum[440] > 50 * np.median(spectrum) and spectrum[1200] > 50 * np.median(spectrum)
