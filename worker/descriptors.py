"""How many recording files a worker keeps open: within RLIMIT_NOFILE, whatever its load.

A worker used to hold one descriptor per recording for the recording's whole life, so
its open-file limit capped its calls: at 20,000 recordings on one worker (one worker per
core at 20,000 channels after a takeover, or a one-core box) it needs more than the
hard limit of many machines (20,000 here), and every start past it failed with EMFILE.

Now a process has a budget of descriptors for recordings (`configure`, from the soft
limit the worker raised at start-up, less what it already holds and a reserve for
sockets, pipes, libraries, and the files the openers create). A recording created
while the budget has room keeps its descriptor, as before. One created beyond it is
*transient*: its file is created and closed at once, and each later write reopens it
(O_NOFOLLOW, and checked to be the same inode, so a file renamed or replaced behind us
is an error, never a write into someone else's file), writes at the writer's own
offset (pwrite) and closes it; it takes a kept descriptor again as soon as the budget
has one free (a kept recording ended). With a flush a second per recording, a
transient file costs two more system calls per second (bench/descriptors.py measures it).
"""

from __future__ import annotations

import os
import resource
import threading

#: Descriptors left out of the budget: the interpreter, libraries, the arena, ZeroMQ
#: and its pipes, wake-up pipes, and one file per opener thread being created (a file
#: is created with a descriptor before it can be made transient) or an encrypted
#: recording's temp file while it finishes.
RESERVE = 64


class Descriptors:
    """The budget of kept recording descriptors of one process (thread-safe: opener
    threads create files while the loop writes)."""

    def __init__(self, budget: int | None = None) -> None:
        self._lock = threading.Lock()
        self.budget = budget  # None: no limit
        self.kept = 0  # descriptors held by recordings now
        self.reopens = 0  # transient opens so far (for figures)

    def configure(self, budget: int | None) -> None:
        """Set the budget (None: unlimited). Recordings already kept stay kept."""
        if budget is not None and budget < 0:
            raise ValueError(f"descriptor budget must be >= 0 or None, not {budget}")
        with self._lock:
            self.budget = budget

    def configure_from_limit(self, reserve: int = RESERVE) -> int | None:
        """Budget = soft RLIMIT_NOFILE - descriptors open now - `reserve`; returns it
        (None when the limit is infinite)."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            self.configure(None)
            return None
        try:
            open_now = len(os.listdir("/proc/self/fd"))
        except OSError:
            open_now = 32
        budget = max(0, soft - open_now - reserve)
        self.configure(budget)
        return budget

    def take(self) -> bool:
        """Claim a kept descriptor; False when the budget is spent (the file goes transient)."""
        with self._lock:
            if self.budget is not None and self.kept >= self.budget:
                return False
            self.kept += 1
            return True

    def give_back(self) -> None:
        with self._lock:
            self.kept -= 1

    def note_reopen(self) -> None:
        self.reopens += 1  # a statistic: a lost increment between threads is harmless


#: This process's budget (a worker configures it at start-up; unlimited until then).
DESCRIPTORS = Descriptors()
