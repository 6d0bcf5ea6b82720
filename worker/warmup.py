"""The worker's compiled kernels, loaded before it says hello: compiled once per machine.

Why. numba compiles a kernel at its first call and keeps the result on disk
(`cache=True`), so a machine's first worker compiles every kernel: 26 s of CPU on this
project's VM (`dtmf_fine`'s two signatures alone 15.7 s), where loading them from the
cache takes ~0.8 s. That first start went wrong two ways. Every worker of a fresh
machine compiled the same kernels at once (CI's two test processes started four workers
on two cores), and the controller's start-up timeout (30 s to hello) was then reached by
workers that were busy, not hung: CI failed with "workers [1] did not report ready".

So the first process of a machine compiles under an exclusive lock while the others wait
for it and then load what it cached; once a compile has succeeded, a marker beside the
lock (keyed by numba's version, the kernels' sources and the CPU, as numba's cache is)
lets every later start load without the lock, all workers at once. A worker compiling
or waiting is alive, not late: a thread stamps its progress meanwhile, which
`Supervisor.wait_ready` judges start-up by (with a hard cap). And it stays stoppable: the
wait gives up when the worker is told to stop.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator

from .pipeline import warm_up

log = logging.getLogger("wholecall.worker")

#: Seconds between progress stamps while kernels load or compile.
STAMP_S = 0.5
#: Seconds between two tries of the lock while another process compiles.
LOCK_POLL_S = 0.1


class Stopped(Exception):
    """The worker was told to stop while it waited for another process's compile."""


def lock_path() -> str:
    """One lock per user and machine: numba's cache is per machine, and users do not share
    a cache directory (or a lock another user could hold)."""
    return os.path.join(tempfile.gettempdir(), f"wholecall-kernels-{os.getuid()}.lock")


def _cache_key() -> str:
    """What numba's cache entries depend on: its version, each kernel module's source
    (path, size, mtime) and the CPU it compiles for."""
    import llvmlite.binding as llvm
    import numba

    from . import dtmf_fine, dtmf_runs, kernels

    parts = [numba.__version__, llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten()]
    for mod in (kernels, dtmf_runs, dtmf_fine):
        st = os.stat(mod.__file__ or "")
        parts.append(f"{mod.__file__}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def marker_path(lock: str) -> str:
    return f"{lock}.{_cache_key()}.done"


@contextlib.contextmanager
def machine_lock(path: str | None = None, should_stop: Callable[[], bool] = lambda: False) -> Iterator[bool]:
    """Held while kernels compile; yields whether the lock is held. A lock that cannot be
    had (a read-only temp dir, a file system without flock, a file another user made)
    only costs the duplicate compile it was there to save, never the start. Raises
    `Stopped` when `should_stop()` turns true while another process holds it."""
    path = path or lock_path()
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        log.debug("kernel compile lock %s unavailable (%s): compiling without it", path, e)
        yield False
        return
    try:
        if os.fstat(fd).st_uid != os.getuid():
            log.warning("kernel compile lock %s belongs to another user: compiling without it", path)
            held = False
        else:
            held = _take(fd, path, should_stop)
        yield held
    finally:
        os.close(fd)  # releases the lock


def _take(fd: int, path: str, should_stop: Callable[[], bool]) -> bool:
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                log.debug("kernel compile lock %s: %s: compiling without it", path, e)
                return False
        if should_stop():
            raise Stopped(f"told to stop while another process compiled the kernels ({path})")
        time.sleep(LOCK_POLL_S)


def load_kernels(progress: Callable[[], None] = lambda: None, should_stop: Callable[[], bool] = lambda: False,
                 lock: str | None = None) -> float:
    """Load every kernel the worker calls, compiling what the cache lacks (the first
    process of the machine, the others waiting for it), stamping `progress` every
    `STAMP_S` meanwhile. Returns the seconds it took; raises `Stopped` (see `machine_lock`)."""
    started = time.monotonic()
    stop = threading.Event()

    def stamp() -> None:
        while not stop.wait(STAMP_S):
            progress()

    stamper = threading.Thread(target=stamp, name="kernel-warm-up", daemon=True)
    stamper.start()
    try:
        lock = lock or lock_path()
        marker = marker_path(lock)
        if os.path.exists(marker):
            warm_up()  # compiled before on this machine: every process loads at once
        else:
            with machine_lock(lock, should_stop) as held:
                warm_up()  # compiles, unless the process we waited for just did
                if held:
                    with contextlib.suppress(OSError), open(marker, "x"):
                        pass
    finally:
        stop.set()
        stamper.join()
    return time.monotonic() - started
