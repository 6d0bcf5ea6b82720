"""Host resources a recording needs before it starts: disk space and file descriptors.

Why: a recording started on a full filesystem fails seconds later in the worker
(ENOSPC mid-call, a truncated file) and one started past the descriptor limit fails at
open; both are better refused, or at least announced, up front with the numbers.
"""

from __future__ import annotations

import logging
import os
import resource
import threading
import time

from .errors import Unavailable

log = logging.getLogger("wholecall.controller")

#: Descriptors a worker holds whatever its load: interpreter and libraries, the arena,
#: the ZeroMQ context and socket (with its internal pipes), wake-up pipes, opener threads,
#: plus one spare per opener for an encrypted recording's temp file while it finishes.
WORKER_FIXED_FDS = 64
#: How long one free-space reading is trusted (statvfs costs ~2 us, but 1,000 starts/s
#: do not need 1,000 readings of a figure that moves slowly).
FREE_SPACE_CACHE_S = 1.0


class FreeSpace:
    """The recordings filesystem's free-space watermark, read at most once per `FREE_SPACE_CACHE_S`."""

    def __init__(self, path: str, min_free_bytes: int, clock=time.monotonic) -> None:
        self.path = path
        self.min_free_bytes = min_free_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._read_at = -float("inf")
        self._free = 0

    def free_bytes(self) -> int:
        """Bytes an unprivileged writer may still use (f_bavail), possibly up to a second old."""
        now = self._clock()
        with self._lock:
            if now - self._read_at >= FREE_SPACE_CACHE_S:
                st = os.statvfs(self.path)
                self._free = st.f_bavail * st.f_frsize
                self._read_at = now
            return self._free

    def check(self) -> None:
        """Raise `Unavailable` if the filesystem is below the watermark (0 turns the check off)."""
        if not self.min_free_bytes:
            return
        try:
            free = self.free_bytes()
        except OSError as e:
            raise Unavailable(f"cannot read the free space of recordings_dir {self.path}: {e.strerror or e}") from None
        if free < self.min_free_bytes:
            raise Unavailable(f"recordings_dir {self.path} has {free} bytes free, below the {self.min_free_bytes} "
                              "kept free (min_free_bytes); free some space")


def raise_nofile() -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; returns (soft, hard) after.

    Workers are spawned from here and inherit it (and raise their own too, in case they
    are started some other way). A worker holds one descriptor per recording.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as e:
            log.warning("cannot raise the descriptor limit from %d to %d: %s", soft, hard, e)
    return soft, hard


def nofile_shortfall(max_channels: int, limit: int) -> str:
    """Why `limit` descriptors per worker may not hold `max_channels` recordings, or "".

    Counted as if one worker held every channel: it does while the others are being
    replaced, and a worker past its limit fails each new recording with EMFILE.
    """
    need = max_channels + WORKER_FIXED_FDS
    if limit != resource.RLIM_INFINITY and limit < need:
        return (f"the descriptor limit (RLIMIT_NOFILE) is {limit}, but a worker holding all "
                f"max_channels={max_channels} recordings needs about {need} "
                f"({max_channels} + {WORKER_FIXED_FDS} fixed): past it a worker reopens plain recordings "
                f"for each write (slower; encrypted ones still hold one each); raise the hard limit "
                f"(ulimit -Hn, LimitNOFILE= in the service) or lower max_channels")
    return ""


def make_dirs(path: str, mode: int) -> None:
    """Create `path` and its missing parents, every one with `mode`.

    `os.makedirs` applies `mode` to the last directory only; the others would get the
    umask default (usually world-readable), and recordings are private.
    """
    missing = []
    while path and not os.path.isdir(path):  # a relative path's dirnames end at "" (never a directory)
        missing.append(path)
        path = os.path.dirname(path)
    for d in reversed(missing):
        try:
            os.mkdir(d, mode)
        except FileExistsError:
            if not os.path.isdir(d):
                raise
