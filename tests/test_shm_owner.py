"""Ownership across PID namespaces (`shm/owner.py`): a controller in a container that shares
the arena directory or TMPDIR with the host's must not sweep the host controller's live
arena or run directory at its start-up (a reviewer's find: the host's workers could then
no longer be replaced, and were respawned in a tight loop). What a dead controller leaves
is still swept, whichever namespace looks."""

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from wholecall.controller.controller import RUN_DIR_PREFIX, sweep_run_dirs
from wholecall.shm import Arena, sweep_stale

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def other_pid_namespace_works() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True)
    return probe.returncode == 0


needs_pidns = pytest.mark.skipif(not other_pid_namespace_works(), reason="needs root and unshare --pid")


def in_other_pid_namespace(code: str, *args: str, env: dict | None = None) -> str:
    """Run python `code` in a new PID namespace (as `unshare --pid` or a container does);
    its stdout."""
    cmd = ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", code, *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


SWEEP_ARENAS = """
import os, sys
from wholecall.shm import sweep_stale
print(os.getpid(), sweep_stale(sys.argv[1]))
"""


@needs_pidns
def test_a_sweep_in_another_pid_namespace_keeps_a_live_arena_and_takes_a_dead_one():
    d = tempfile.mkdtemp(dir="/dev/shm", prefix="owner-test-")  # a tmpfs, as arenas need
    try:
        live = Arena.create(2, 1 << 12, d)
        try:
            # A dead controller's arena: made by a process that has exited since.
            dead = subprocess.run([sys.executable, "-c", MAKE_AND_EXIT, d], capture_output=True, text=True,
                                  check=True, cwd=ROOT).stdout.strip()
            out = in_other_pid_namespace(SWEEP_ARENAS, d)
            pid, removed = out.split(" ", 1)
            assert pid == "1"  # it really ran in a namespace of its own, where our pid means nothing
            assert removed.strip() == repr([dead])
            assert os.listdir(d) == [live.name]
        finally:
            live.close()
        assert os.listdir(d) == []
    finally:
        shutil.rmtree(d, ignore_errors=True)


#: Creates an arena and exits without closing it, as a SIGKILLed controller leaves it.
MAKE_AND_EXIT = """
import os, sys
from wholecall.shm import Arena
a = Arena.create(2, 1 << 12, sys.argv[1])
print(a.name, flush=True)
os._exit(0)
"""

#: Makes a run directory as a controller does and keeps it until stdin closes.
MAKE_RUN_DIR = """
import sys
from wholecall.controller.controller import make_run_dir
path, fd = make_run_dir()
print(path, flush=True)
sys.stdin.read()
"""

SWEEP_RUN_DIRS = """
import os, sys
from wholecall.controller.controller import sweep_run_dirs
print(os.getpid(), sweep_run_dirs(sys.argv[1]))
"""


@needs_pidns
def test_a_sweep_in_another_pid_namespace_keeps_a_live_run_dir_and_takes_a_dead_one(tmp_path):
    env = dict(os.environ, TMPDIR=str(tmp_path))
    owner = subprocess.Popen([sys.executable, "-c", MAKE_RUN_DIR], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, env=env, cwd=ROOT)
    try:
        live = owner.stdout.readline().strip()
        assert os.path.basename(live).startswith(f"{RUN_DIR_PREFIX}{owner.pid}-")
        dead = tmp_path / f"{RUN_DIR_PREFIX}999999999-abc.flock"  # no lock: its controller is gone
        dead.mkdir(mode=0o700)
        (dead / "control.sock").touch()
        out = in_other_pid_namespace(SWEEP_RUN_DIRS, str(tmp_path), env=env)
        pid, removed = out.split(" ", 1)
        assert pid == "1"
        assert removed.strip() == repr([str(dead)])
        assert os.path.isdir(live)
    finally:
        owner.stdin.close()
        owner.wait(10)
    assert sweep_run_dirs(str(tmp_path)) == [live]  # its owner exited: now it goes
    assert os.listdir(tmp_path) == []


def test_an_owner_that_loses_the_race_to_a_sweep_makes_another_arena():
    """A sweep that locks a new arena file before its creator does removes it; the creator
    notices (`shm.owner.claim`) and makes another rather than keeping an unlinked one."""
    from wholecall.shm import owner

    d = tempfile.mkdtemp(dir="/dev/shm", prefix="owner-test-")
    try:
        path = os.path.join(d, "wholecall-1-race.flock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            assert sweep_stale(d) == ["wholecall-1-race.flock"]  # it got there between open and claim
            with pytest.raises(FileNotFoundError, match="swept before its owner locked it"):
                owner.claim(fd, path)
        finally:
            os.close(fd)
        with Arena.create(2, 1 << 12, d) as a:
            assert sweep_stale(d) == [] and os.listdir(d) == [a.name]
    finally:
        shutil.rmtree(d, ignore_errors=True)
