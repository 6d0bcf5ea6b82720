"""Proof that a controller's shared file or directory still has its owner: an flock.

The arena and the run directory are named with their controller's PID, but a PID proves
nothing across PID namespaces: a `wholecall serve` in a container that shares the arena
directory (or /tmp) with the host's sees no process with the host controller's number and
took its live arena for a dead one's (its workers then could not be replaced). An flock
does not depend on who can see whom: the kernel keeps it on the open file, whichever
namespace holds it, and drops it when the owner's last descriptor to it closes, on
SIGKILL or an OOM kill too.

So the owner holds a shared lock for the object's whole life (`claim`), and a sweep
removes an object only while it holds the exclusive lock itself (`sweep_unowned`), which it gets
only when no owner is left. Locks are per open file description: the owner's own sweep
opens the file anew and is refused like anyone else's. The owner's descriptor is
close-on-exec and the workers are started with `close_fds`, so no child keeps a dead
controller's object alive. An application that *forks without exec* after `start()`
(multiprocessing's "fork" context) gives its children the arena's mapping, which holds the
lock as the descriptor does (the kernel drops an flock at the last reference to the open
file, and a mapping is one): a SIGKILLed controller's arena is then swept only once those
children have exited. Use the "spawn" or "forkserver" context, or fork before `start()`.

Names of locked objects end in `LOCKED_SUFFIX`. A wholecall from before held no lock on
its objects: for a name without the suffix, of one still running during an upgrade, a
sweep keeps the old rule (`legacy_owner_gone`) besides the lock test, or it would remove
every live one. The older sweeps also leave ours alone where they can see our PID.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Callable

#: The end of the name of an object whose owner holds its lock (`claim`).
LOCKED_SUFFIX = ".flock"


def legacy_owner_gone(pid_text: str) -> bool:
    """For an object named without `LOCKED_SUFFIX` (made by a wholecall that took no lock),
    from the PID its name starts with: gone from this PID namespace, or ours (this
    version makes no such names). The rule those versions used; it cannot see into other
    PID namespaces, which is why ours are locked. False when there is no number."""
    try:
        pid = int(pid_text.split("-", 1)[0])
    except ValueError:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def claim(fd: int, path: str) -> None:
    """Take the owner's shared lock on `fd`, the object just created at `path`.

    A sweep can find the object between its creation and this lock, lock it first and
    remove it: FileNotFoundError then, and the caller creates another (its name is
    random). Never blocks: a sweep holding the exclusive lock is about to remove it.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise FileNotFoundError(errno.ENOENT, "swept before its owner locked it", path) from None
    if not _same(fd, path):
        raise FileNotFoundError(errno.ENOENT, "swept before its owner locked it", path)


def create_claimed(create: Callable[[], tuple[str, int]], attempts: int = 8) -> tuple[str, int]:
    """A new object, locked by this process: `create()` makes one under a fresh random name
    and opens it, (path, descriptor). A sweep may remove it before it is open or before our
    lock (FileNotFoundError from either); then another, up to `attempts` times."""
    for attempt in range(attempts):
        fd = -1
        try:
            path, fd = create()
            claim(fd, path)
            return path, fd
        except FileNotFoundError:
            if fd >= 0:
                os.close(fd)
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def sweep_unowned(path: str, remove: Callable[[str], None], want_dir: bool = False) -> bool:
    """Remove `path` with `remove` if no process holds it (`claim`); True if removed.

    Kept when it is locked, cannot be opened (another user's, without root) or is not
    what a sweep expects (a regular file, or with `want_dir` a directory; never a link).
    The exclusive lock is held until `remove` has finished, so an owner that created the
    object a moment ago cannot claim it meanwhile (`claim` then fails and it makes another).
    """
    try:
        # O_NONBLOCK: a FIFO someone left under our prefix must not hang the sweep.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISDIR(mode) if want_dir else stat.S_ISREG(mode)):
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # its owner is alive, in whatever PID namespace
        if not _same(fd, path):
            return False
        try:
            remove(path)
        except FileNotFoundError:  # another sweep was quicker
            return False
        return True
    finally:
        os.close(fd)


def _same(fd: int, path: str) -> bool:
    """Whether `path` still names the file open as `fd`."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    here = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (here.st_dev, here.st_ino)
