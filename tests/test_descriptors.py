"""A worker records more calls than its open-file limit allows (`worker.descriptors`).

Past the descriptor budget a recording's file is transient: closed between writes,
reopened (same inode, checked) for each. Real files, compared sample for sample.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf

from wholecall.worker.descriptors import Descriptors
from wholecall.worker.sink import FileSink
from wholecall.worker.wavfile import WavWriter

RATE = 8000


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_writers_past_the_budget_hold_no_descriptor_and_write_the_same_files(tmp_path):
    budget = Descriptors(2)
    before = _open_fds()
    rng = np.random.default_rng(1)
    audio = [rng.integers(-20000, 20000, 24_000).astype(np.int16) for _ in range(6)]
    writers = [WavWriter(FileSink(str(tmp_path / f"{i}.wav"), descriptors=budget), "s16bit", RATE)
               for i in range(6)]
    assert [w.sink.transient for w in writers] == [False, False, True, True, True, True]
    assert _open_fds() == before + 2 and budget.kept == 2
    for k in range(0, 24_000, 4000):  # interleaved, as the pipeline flushes them
        for w, a in zip(writers, audio):
            w.write(a[k:k + 4000])
    assert budget.reopens >= 4 * 6
    writers[0].close()  # a kept file ends: the next transient write takes its descriptor
    writers[2].sink.pwrite(b"", 0)  # (an empty write opens nothing)
    assert writers[2].sink.transient
    writers[2].truncate(23_000)
    assert not writers[2].sink.transient and budget.kept == 2
    for w in writers[1:]:
        w.close()
    assert budget.kept == 0 and _open_fds() == before
    for i, a in enumerate(audio):
        got, rate = sf.read(str(tmp_path / f"{i}.wav"), dtype="int16")
        assert rate == RATE
        np.testing.assert_array_equal(got, a[:23_000] if i == 2 else a)


def test_a_transient_file_replaced_behind_the_worker_is_an_error_not_a_write_elsewhere(tmp_path):
    budget = Descriptors(0)
    path = tmp_path / "r.wav"
    sink = FileSink(str(path), descriptors=budget)
    sink.pwrite(b"RIFF", 0)
    os.rename(path, tmp_path / "moved.wav")
    path.write_bytes(b"someone else's file")
    with pytest.raises(OSError, match="replaced"):
        sink.pwrite(b"more", 4)
    assert path.read_bytes() == b"someone else's file"
    os.unlink(path)
    with pytest.raises(FileNotFoundError):
        sink.pwrite(b"more", 4)
    sink.discard()


CALLS = 160
LIMIT = 128

SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    import numpy as np
    from wholecall.controller import Controller

    out, calls = sys.argv[1], int(sys.argv[2])
    with Controller(workers=1, recordings_dir=out, max_channels=calls, ring_ms=4096) as ctl:
        pid = ctl.supervisor.workers[0].proc.pid
        chans = []
        for i in range(calls):
            ch = ctl.incoming_call()
            ch.answer()
            assert ch.WholeCallRecorder.start(f"c{i}.wav", file_format="s16bit", dtmf_elim=False,
                                              recording_mode="separate"), i
            chans.append(ch)
        most = 0
        for part in range(3):  # three writes per file, so transient files are reopened
            for i, ch in enumerate(chans):
                rng = np.random.default_rng([i, part])
                ch.inbound.write(rng.integers(-20000, 20000, 4000).astype(np.int16))
                ch.outbound.write(rng.integers(-20000, 20000, 4000).astype(np.int16))
            time.sleep(1.2)
            wavs = sum(os.readlink(f"/proc/{pid}/fd/{fd}").endswith(".wav") for fd in os.listdir(f"/proc/{pid}/fd"))
            most = max(most, wavs)
        ok = [ch.WholeCallRecorder.stop() for ch in chans]
        json.dump({"ok": all(ok), "most_open_wavs": most,
                   "limit": open(f"/proc/{pid}/limits").read()}, sys.stdout)
""")


def test_a_worker_limited_to_fewer_descriptors_than_calls_records_every_call_exactly(tmp_path):
    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))

    out = tmp_path / "rec"
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(out), str(CALLS)], capture_output=True, text=True,
                       timeout=240, preexec_fn=low_limit)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout)
    assert res["ok"]
    line = next(x for x in res["limit"].splitlines() if x.startswith("Max open files"))
    assert line.split()[3:5] == [str(LIMIT), str(LIMIT)]  # the worker ran under the low limit
    # More calls than the limit, and the worker held far fewer recordings open than calls.
    assert CALLS > LIMIT and 0 < res["most_open_wavs"] < LIMIT
    for i in range(CALLS):
        got, rate = sf.read(str(out / f"c{i}.wav"), dtype="int16")
        want = np.concatenate([np.stack([rng.integers(-20000, 20000, 4000), rng.integers(-20000, 20000, 4000)], 1)
                               for rng in (np.random.default_rng([i, p]) for p in range(3))]).astype(np.int16)
        assert rate == RATE
        np.testing.assert_array_equal(got, want, err_msg=f"call {i}")
