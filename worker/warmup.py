"""The worker's compiled kernels, loaded before it says hello: compiled once per machine.

Why. numba compiles a kernel at its first call and keeps the result on disk
(`cache=True`), so a machine's first worker compiles every kernel: 25 s of CPU on this
project's VM (`dtmf_fine`'s two signatures alone 15.7 s), where loading them from the
cache takes ~0.6 s. That first start went wrong two ways. Every worker of a fresh
machine compiled the same kernels at once (CI's two test processes started four workers
on two cores), and the controller's start-up timeout (30 s to hello) was then reached by
workers that were busy, not hung: CI failed with "workers [1] did not report ready".

So one process of the machine compiles at a time, under an exclusive lock, and the others
wait for it and then load what it cached. And a worker compiling or waiting is alive, not
late: a thread stamps its progress meanwhile, which `Supervisor.wait_ready` judges
start-up by (with a hard cap, so a worker wedged here is still caught).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np

log = logging.getLogger("wholecall.worker")

#: Seconds between progress stamps while kernels load or compile.
STAMP_S = 0.5


def lock_path() -> str:
    """One lock per user and machine: numba's cache is per machine, and users do not share
    a cache directory (or a lock another user could hold)."""
    return os.path.join(tempfile.gettempdir(), f"wholecall-kernels-{os.getuid()}.lock")


@contextlib.contextmanager
def machine_lock(path: str | None = None) -> Iterator[bool]:
    """Held while kernels compile; yields whether the lock is held. A lock that cannot be
    opened (a read-only temp dir, a file another user made) only costs the duplicate
    compile it was there to save, never the start."""
    path = path or lock_path()
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        log.debug("kernel compile lock %s unavailable (%s): compiling without it", path, e)
        yield False
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocks in C: the stamping thread runs meanwhile
        yield True
    finally:
        os.close(fd)  # releases the lock


def load_kernels(progress: Callable[[], None] = lambda: None) -> float:
    """Load every kernel the worker calls (compiling what the cache lacks, one process
    of the machine at a time), stamping `progress` every `STAMP_S` meanwhile. Returns the
    seconds it took."""
    from . import dtmf_fine, dtmf_runs, kernels

    started = time.monotonic()
    stop = threading.Event()

    def stamp() -> None:
        while not stop.wait(STAMP_S):
            progress()

    stamper = threading.Thread(target=stamp, name="kernel-warm-up", daemon=True)
    stamper.start()
    try:
        with machine_lock():
            kernels.warm_up((np.int16,))  # the pipeline's delay lines are int16
            dtmf_runs.warm_up()
            dtmf_fine.warm_up((np.int16,))
    finally:
        stop.set()
        stamper.join()
    return time.monotonic() - started
