"""The environment of the media processes the controller spawns (workers, load generators).

Both run numpy over thousands of channels per tick, so each tick allocates temporaries
of several MB. By default glibc serves those with fresh mmap()s and numpy asks for huge
pages on them, so every tick page-faults and zeroes them again: measured during a
10,000-channel ramp, `clear_page_erms` was 14 % of the whole machine (half of the load
generator's CPU). Keeping allocations up to glibc's maximum mmap threshold (32 MiB) in
the heap, and not trimming it, makes the second tick reuse the first one's memory.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger("wholecall.controller")

#: glibc malloc tunables for the media processes (an existing GLIBC_TUNABLES is kept).
MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824"


def media_env() -> dict[str, str]:
    """os.environ plus single-threaded BLAS and heap-kept temporaries.

    The children start as `python -P -m wholecall.<...>`: -P keeps the working directory
    (the application's, where a `worker.py` may lie) off their sys.path, and the
    installed package is found the way the parent found it.
    """
    env = dict(os.environ)
    # One pinned core per worker: BLAS threads would only fight it.
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.setdefault("GLIBC_TUNABLES", MALLOC_TUNABLES)
    return env


def raise_threads(steps: int) -> int:
    """Raise every thread of this process to nice -`steps` (threads made later inherit it
    from their creator); returns how many were raised. Raises OSError without CAP_SYS_NICE.

    Why the whole process. The controller raises the threads that relay commands and
    events to the workers' level, but Python threads share one GIL: an application thread
    at normal priority that holds it (its own Python, or a cyclic collection it triggered)
    and is preempted by the workers stalls the raised ones too, a priority inversion.
    Measured at 20,000 channels: a full collection of 306 ms CPU held the GIL for 2,298 ms,
    a young one of 7 ms for 101 ms; stop() p99 followed. The trade: raised, the
    application competes with the workers as an equal, and at 20,000 channels on two cores
    its start() ramp took the CPU the workers needed (the rings overran). So it is the
    application's choice (`wholecall stress --app-priority`), not the controller's."""
    tids = [int(t) for t in os.listdir("/proc/self/task")]
    for tid in tids:
        os.setpriority(os.PRIO_PROCESS, tid, -steps)
    return len(tids)


def raise_current_thread(steps: int, what: str) -> bool:
    """Raise the calling thread to nice -`steps` (a controller thread joining the workers'
    level, as the supervisor's I/O thread does); logs why not and returns False without
    CAP_SYS_NICE. 0 leaves it alone."""
    if not steps:
        return False
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), -steps)
    except OSError as e:
        log.warning("%s thread: cannot raise priority to nice -%d: %s", what, steps, e)
        return False
    return True
