"""A private tmpfs with 2 MiB pages for one stress run's ring arena.

The workers read every leg's new audio from all over the arena each tick; on /dev/shm's
4 KiB pages nearly every read is a TLB miss: at 10,000 channels the workers spent 6 %
more CPU end to end, and the pipeline bench 20 % more (`shm.arena.huge_pages`). A service gets its huge-page
tmpfs from `deploy/run-wholecall-arena.mount`; `wholecall stress`, run as root on a bare
machine, mounts one of its own for the run (and says so in its report), so that it
measures what a deployment runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

log = logging.getLogger("wholecall.stress")


@contextlib.contextmanager
def private_arena_dir(nbytes: int) -> Iterator[str | None]:
    """Yield a fresh tmpfs directory with huge=within_size, room for `nbytes` plus slack,
    unmounted and removed afterwards; None (nothing mounted) where this process may not
    mount (not root, no mount(8), a container without the capability)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        yield None
        return
    path = tempfile.mkdtemp(prefix="wholecall-arena-")
    size = nbytes + (64 << 20)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},huge=within_size,mode=0700",
                               "wholecall-arena", path], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        done = subprocess.CompletedProcess([], 1, "", str(e))
    if done.returncode != 0:
        log.info("no private huge-page arena (%s): using /dev/shm", done.stderr.strip())
        os.rmdir(path)
        yield None
        return
    try:
        yield path
    finally:
        # Lazy if something still holds a mapping: the memory goes when the last one does.
        if subprocess.run(["umount", path], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", path], capture_output=True)
        try:
            os.rmdir(path)
        except OSError as e:
            log.warning("arena mount point %s left behind: %s", path, e)
