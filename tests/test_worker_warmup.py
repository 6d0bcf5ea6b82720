"""A machine's first worker start compiles the audio kernels (25 s of CPU on this VM): one
process at a time, and a worker compiling or waiting for the compile is alive, not late.

CI failed on a fresh clone with "workers [1] did not report ready within 30 s": the
kernel cache was cold and every test process's workers compiled at once. Here the
compile lock is held by the test (its path follows the workers' TMPDIR), so the workers
are kept in their start-up for as long as the test likes, with nothing compiled.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from wholecall.controller.supervisor import Supervisor
from wholecall.shm import Arena
from wholecall.worker import warmup
from wholecall.worker.warmup import Stopped, load_kernels, machine_lock, marker_path


@pytest.fixture
def held_lock(tmp_path, monkeypatch):
    """The kernel compile lock of workers spawned from now on, held until the test lets go."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    lock = machine_lock(str(tmp_path / f"wholecall-kernels-{os.getuid()}.lock"))
    assert lock.__enter__() is True
    held = [lock]
    yield lambda: held and held.pop().__exit__(None, None, None)
    if held:
        held.pop().__exit__(None, None, None)


@pytest.fixture
def supervisor(tmp_path):
    made = []

    def make() -> Supervisor:
        run = tmp_path / "run"
        run.mkdir(mode=0o700)
        arena = Arena.create(4, 1 << 14)
        sup = Supervisor(2, str(run), arena.path, lambda *a: None, lambda *a: None, tick_ms=20, heartbeat_ms=200,
                         stall_timeout_s=2.0, skew_ms=100, flush_ms=200, capacity=4)
        made.append((sup, arena))
        return sup

    yield make
    for sup, arena in made:
        for w in sup.workers:
            if not w.ready and w.proc.poll() is None:
                w.proc.kill()  # still waiting for the test's lock: it would not hear a shutdown
        sup.close()
        arena.close()


def test_workers_waiting_for_the_kernel_compile_stamp_progress_and_are_not_late(held_lock, supervisor):
    sup = supervisor()
    _until_both_stamp(sup)
    time.sleep(3.5)  # past the 3 s start-up timeout below, measured from the spawn
    assert [w.ready for w in sup.workers] == [False, False]
    assert all(w.proc.poll() is None for w in sup.workers)
    lags = [sup.lag(w.index) for w in sup.workers]
    assert max(lags) < 1.5, f"waiting workers must stamp their progress, lags {lags}"
    held_lock()
    sup.wait_ready(3.0, limit=120)  # a deadline counted from the spawn would have failed already
    assert all(w.ready for w in sup.workers)


def test_a_worker_silent_in_its_start_up_is_named_late(held_lock, supervisor):
    sup = supervisor()
    _until_both_stamp(sup)
    os.kill(sup.workers[1].proc.pid, signal.SIGSTOP)  # wedged while waiting: no more stamps
    began = time.monotonic()
    with pytest.raises(TimeoutError, match=r"workers \[1\] did not report ready: no progress for 3 s"):
        sup.wait_ready(3.0)
    assert time.monotonic() - began < 30


def test_a_worker_waiting_for_the_compile_still_stops_on_sigterm(held_lock, supervisor):
    sup = supervisor()
    _until_both_stamp(sup)
    sup.workers[1].proc.terminate()
    assert sup.workers[1].proc.wait(timeout=20) == 0  # not after the compile: at once, cleanly


def _until_both_stamp(sup: Supervisor) -> None:
    """Until both workers are in their start-up's kernel load (stamping), not importing."""
    time.sleep(1.5)  # past the spawn's own stamp
    deadline = time.monotonic() + 60  # their imports may take a while on a loaded machine
    while max(sup.lag(w.index) for w in sup.workers) > 1.0:
        assert time.monotonic() < deadline, "the workers never reached their kernel load"
        time.sleep(0.05)


def test_start_up_has_a_hard_cap_even_while_workers_stamp(held_lock, supervisor):
    sup = supervisor()
    with pytest.raises(TimeoutError, match=r"workers \[0, 1\] did not report ready within 2 s"):
        sup.wait_ready(30.0, limit=2.0)


def test_the_compile_lock_is_exclusive_and_its_wait_stamps_and_can_be_stopped(tmp_path, monkeypatch):
    monkeypatch.setattr(warmup, "STAMP_S", 0.01)
    monkeypatch.setattr(warmup, "LOCK_POLL_S", 0.01)
    path = str(tmp_path / "k.lock")
    stamps: list[float] = []
    with machine_lock(path) as held:
        assert held
        with pytest.raises(Stopped), machine_lock(path, should_stop=lambda: True):
            pass  # another holder: not taken
        with pytest.raises(Stopped):
            load_kernels(lambda: stamps.append(time.monotonic()), should_stop=lambda: len(stamps) >= 3, lock=path)
    assert len(stamps) >= 3  # stamped while it waited
    assert not os.path.exists(marker_path(path))  # nothing was compiled under it


def test_once_compiled_every_start_loads_without_the_lock(tmp_path):
    path = str(tmp_path / "k.lock")
    load_kernels(lock=path)  # the lock free: taken, kernels loaded, the marker left
    assert os.path.exists(marker_path(path))
    with machine_lock(path) as held:  # another process compiling something now
        assert held
        load_kernels(should_stop=lambda: True, lock=path)  # would raise Stopped if it waited


def test_an_unusable_lock_file_does_not_stop_a_start(tmp_path):
    with machine_lock(str(tmp_path / "missing-dir" / "k.lock")) as held:
        assert held is False
    (tmp_path / "real").write_text("")
    os.symlink(tmp_path / "real", tmp_path / "link.lock")  # never followed
    with machine_lock(str(tmp_path / "link.lock")) as held:
        assert held is False
