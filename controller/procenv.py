"""The environment of the media processes the controller spawns (workers, load generators).

Both run numpy over thousands of channels per tick, so each tick allocates temporaries
of several MB. By default glibc serves those with fresh mmap()s and numpy asks for huge
pages on them, so every tick page-faults and zeroes them again: measured during a
10,000-channel ramp, `clear_page_erms` was 14 % of the whole machine (half of the load
generator's CPU). Keeping allocations up to glibc's maximum mmap threshold (32 MiB) in
the heap, and not trimming it, makes the second tick reuse the first one's memory.
"""

from __future__ import annotations

import os

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
