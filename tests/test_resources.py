"""Issue 21 item 8: the free-space watermark and the descriptor limit."""

from __future__ import annotations

import os
import resource
import types

import pytest

from wholecall.controller import Error
from wholecall.controller.resources import WORKER_FIXED_FDS, FreeSpace, nofile_shortfall


def test_free_space_is_read_at_most_once_a_second(tmp_path, monkeypatch):
    calls = []
    real = os.statvfs
    monkeypatch.setattr(os, "statvfs", lambda p: calls.append(p) or real(p))
    now = [100.0]
    fs = FreeSpace(str(tmp_path), 1, clock=lambda: now[0])
    for _ in range(1000):
        fs.check()
    assert len(calls) == 1
    now[0] += 1.0
    fs.check()
    assert len(calls) == 2


def test_below_the_watermark_is_an_error_with_both_numbers(tmp_path):
    from wholecall.controller.errors import Unavailable

    fs = FreeSpace(str(tmp_path), 1 << 62)
    with pytest.raises(Unavailable, match=rf"recordings_dir {tmp_path} has \d+ bytes free, below the "
                                          rf"{1 << 62} kept free \(min_free_bytes\)"):
        fs.check()  # Unavailable: an Error that is not the request's fault (serve: 503)
    FreeSpace(str(tmp_path), 0).check()  # 0: no check


def test_start_refuses_below_the_watermark_and_changes_nothing(make_controller):
    ctl = make_controller(workers=1, min_free_bytes=1 << 62)
    ch = ctl.incoming_call()
    ch.answer()
    rec = ch.WholeCallRecorder
    with pytest.raises(Error, match="min_free_bytes"):
        rec.start("a.wav")
    assert rec.state() is rec.State.IDLE and not os.path.exists(os.path.join(ctl.config.recordings_dir, "a.wav"))
    ctl._free_space.min_free_bytes = 0
    assert rec.start("a.wav") and rec.stop()


def test_descriptor_shortfall_names_both_numbers():
    msg = nofile_shortfall(10_000, 1024)
    assert "1024" in msg and "max_channels=10000" in msg and str(10_000 + WORKER_FIXED_FDS) in msg
    assert nofile_shortfall(100, 1024) == ""


def _limits(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/limits") as f:
        line = next(x for x in f if x.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    return int(soft), int(hard)


def test_controller_and_workers_raise_the_soft_descriptor_limit_to_the_hard_one(make_controller):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard < 256:
        pytest.skip(f"hard RLIMIT_NOFILE {hard} leaves nothing to raise to")
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))
    try:
        ctl = make_controller(workers=1)
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard
        assert _limits(ctl.supervisor.workers[0].proc.pid) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_limit_that_cannot_hold_max_channels_is_announced_with_both_numbers(make_controller, monkeypatch,
                                                                              caplog):
    """The hard limit is faked (lowering the real one could not be undone without root)."""
    from wholecall.controller import resources

    fake = types.SimpleNamespace(RLIMIT_NOFILE=resource.RLIMIT_NOFILE, RLIM_INFINITY=resource.RLIM_INFINITY,
                                 getrlimit=lambda _: (100, 100), setrlimit=lambda *_: None)
    monkeypatch.setattr(resources, "resource", fake)
    make_controller(workers=1, max_channels=64)
    assert any("the descriptor limit (RLIMIT_NOFILE) is 100" in r.getMessage() and "max_channels=64" in
               r.getMessage() for r in caplog.records)


def test_make_dirs_makes_a_relative_path_with_private_parents(tmp_path, monkeypatch) -> None:
    """A relative path whose first part does not exist walked up to "" for ever (the
    default recordings_dir "recordings" hung `wholecall demo` in a fresh checkout)."""
    import os

    from wholecall.controller.resources import make_dirs

    monkeypatch.chdir(tmp_path)
    old = os.umask(0o022)
    try:
        make_dirs("a/b", 0o700)
    finally:
        os.umask(old)
    assert oct((tmp_path / "a").stat().st_mode & 0o777) == oct((tmp_path / "a" / "b").stat().st_mode & 0o777) == "0o700"
