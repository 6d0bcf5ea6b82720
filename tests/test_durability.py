"""Durability behind stop(): the syncer fsyncs ended recordings' sidecars (and their
directory) in batches; `Config.sync_on_stop` fsyncs audio and sidecar before stop()
returns; a failed fsync is counted and logged, never lost in silence, and never holds up
the rest of a batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import feed, tone
from wholecall.controller.durability import Syncer, sync_files
from wholecall.controller.sidecar import sha256_file


def _files(tmp_path, n: int) -> list[str]:
    out = []
    for i in range(n):
        p = tmp_path / f"r{i}.wav"
        p.write_bytes(b"RIFF" + bytes(100))
        out.append(str(p))
    return out


def test_syncer_makes_every_added_recording_durable_and_counts_them(tmp_path):
    s = Syncer()
    try:
        files = _files(tmp_path, 5)
        for p in files:
            s.add(p, p + ".json")  # the sidecar never written: nothing to sync there, not a failure
        assert s.wait(10)
        snap = s.snapshot()
        assert snap["pending"] == 0 and snap["synced"] == 5 and snap["failed"] == 0
        assert snap["lag_s"] == 0.0 and snap["max_lag_s"] >= 0.0
    finally:
        assert s.close(10)


def test_a_failed_fsync_is_counted_and_the_rest_of_the_batch_synced(tmp_path, caplog):
    files = _files(tmp_path, 3)
    s = Syncer()
    try:
        # procfs refuses fsync (EINVAL): a real failure, not a stand-in.
        batch = [(0.0, (files[0],)), (0.0, ("/proc/self/status",)), (0.0, (files[1], files[2]))]
        assert s._sync(batch) == 1
        assert "could not make /proc/self/status durable" in caplog.text
    finally:
        s.close(10)


def test_a_batch_of_many_syncs_in_one_pass_and_the_syncer_refuses_work_once_closed(tmp_path):
    files = _files(tmp_path, 200)
    s = Syncer()
    assert s._sync([(0.0, (p,)) for p in files]) == 0
    assert s.close(10)
    with pytest.raises(RuntimeError, match="closed"):
        s.add(files[0])
    sync_files(files[:2])  # the closing controller's path: inline


def test_a_recording_whose_files_both_fail_counts_once(tmp_path):
    files = _files(tmp_path, 2)
    s = Syncer()
    try:
        # Two files of one recording in /proc/self (procfs refuses fsync) count once; the
        # recordings in tmp_path around it are synced.
        batch = [(0.0, (files[0],)), (0.0, ("/proc/self/status", "/proc/self/stat")), (0.0, (files[1],))]
        assert s._sync(batch) == 1
    finally:
        s.close(10)


def _fsyncs_seen(monkeypatch) -> list[str]:
    """Record the path of every fsync(2) this process makes, in order (the real call still
    runs): the syscall observed, not our code replaced."""
    seen: list[str] = []
    real = os.fsync

    def fsync(fd):
        seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


def test_a_failed_directory_fsync_fails_every_recording_in_it(tmp_path, monkeypatch, caplog):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    in_a, in_b = _files(a, 2), _files(b, 1)
    real = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}") == os.path.realpath(a):
            raise OSError(5, "Input/output error")  # the kernel lost the directory's pages
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    s = Syncer()
    try:
        batch = [(0.0, (in_a[0], in_a[0] + ".json")), (0.0, (in_b[0],)), (0.0, (in_a[1],))]
        assert s._sync(batch) == 2  # both recordings in a; b's is durable
        assert f"could not make {a} durable" in caplog.text  # the directory as the recordings name it
        assert any(r.levelname == "CRITICAL" for r in caplog.records)  # EIO: data may be damaged on disk
    finally:
        monkeypatch.setattr(os, "fsync", real)
        assert s.close(10)


def test_sync_on_stop_fsyncs_the_audio_then_its_sidecar_and_directory_before_stop_returns(make_controller, monkeypatch):
    ctl = make_controller(workers=1, sync_on_stop=True)
    ch = ctl.incoming_call()
    ch.answer()
    rec = ch.WholeCallRecorder
    assert rec.start("d.wav", file_format="s16bit")
    feed(ch, (np.arange(8000) % 200 - 100).astype(np.int16) * 50, None)
    seen = _fsyncs_seen(monkeypatch)
    assert rec.stop()
    res = rec.last_result
    got = list(seen)  # what had been fsynced when stop() returned
    audio, side = os.path.realpath(res.path), os.path.realpath(res.sidecar)
    assert audio in got, got
    i = got.index(audio)
    # The sidecar is fsynced under its temporary name, then renamed: its directory after it.
    tmps = [k for k, p in enumerate(got) if os.path.basename(p).startswith("." + os.path.basename(side))]
    assert tmps, f"the sidecar was not fsynced under its temporary name before stop() returned: {got}"
    j = tmps[0]
    assert i < j < got.index(os.path.dirname(audio), j), got
    assert ctl.syncer.snapshot()["synced"] == 0  # nothing left for the syncer


def test_stop_returns_with_the_sidecar_final_and_the_syncer_makes_it_durable(make_controller):
    ctl = make_controller(workers=1)
    ch = ctl.incoming_call()
    ch.answer()
    rec = ch.WholeCallRecorder
    assert rec.start("d.wav", file_format="alaw")
    feed(ch, tone(440, 0.5, 6000), tone(660, 0.5, 6000))
    assert rec.stop()
    res = rec.last_result
    side = json.load(open(res.sidecar))  # complete the moment stop() returned
    assert side["sha256"] == sha256_file(res.path) and side["bytes"] == os.path.getsize(res.path)
    assert ctl.wait_durable(10)
    snap = ctl.syncer.snapshot()
    assert snap == {**snap, "pending": 0, "synced": 1, "failed": 0}
    # An application that moves its recording away at once: nothing left here, no failure.
    assert rec.start("gone.wav", file_format="alaw")
    feed(ch, tone(440, 0.2, 6000), None)
    assert rec.stop()
    os.unlink(rec.last_result.sidecar)
    assert ctl.wait_durable(10)
    assert ctl.syncer.snapshot()["failed"] == 0


def test_sync_on_stop_makes_them_durable_before_stop_returns(make_controller):
    ctl = make_controller(workers=1, sync_on_stop=True)
    ch = ctl.incoming_call()
    ch.answer()
    rec = ch.WholeCallRecorder
    assert rec.start("s.wav", file_format="s16bit")
    pcm = (np.arange(8000) % 200 - 100).astype(np.int16) * 50
    feed(ch, pcm, None)
    assert rec.stop()
    assert os.path.getsize(rec.last_result.sidecar) > 0
    assert ctl.syncer.snapshot()["synced"] == 0  # the finisher did it: nothing handed over


def test_info_names_an_empty_sidecar(tmp_path):
    import soundfile

    path = str(tmp_path / "x.wav")
    soundfile.write(path, np.zeros(800, np.int16), 8000, subtype="PCM_16")
    open(path + ".json", "w").close()  # what a power loss right after stop() may leave
    out = subprocess.run([sys.executable, "-m", "wholecall.cli.main", "info", path], capture_output=True, text=True)
    assert out.returncode == 1
    assert "it is empty (the machine stopped before it was made durable)" in out.stderr
