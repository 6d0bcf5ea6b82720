"""Ask ext4 to spread the directories made under a path over the disk (chattr +T).

Why: each stress run creates ~20,000 recordings in a new directory and deletes them at the
end. ext4 puts a new directory near its parent, so the next run's files land in the block
groups the last run just emptied, and on ext4 without a journal (this project's VMs) the
inode allocator skips every inode freed in the last 60-360 s, checking each: creating a
file cost 0.8-1 ms instead of ~50 us, a core of worker CPU in a 1,000/s start ramp
(BENCHMARKS.md, eighth step; `bench/file_creates.py`). Under a directory marked "top of a
hierarchy" (FS_TOPDIR_FL) ext4's Orlov allocator places each new subdirectory in a group of
its own, so one run's clean-up no longer taxes the next. A hint only: file systems without
the flag refuse it, and nothing else changes. The flag stays on the directory (it only
decides where new subdirectories go); `chattr -T DIR` removes it.
"""

from __future__ import annotations

import array
import fcntl
import logging
import os

log = logging.getLogger(__name__)

# _IOR('f', 1, long) / _IOW('f', 2, long) as x86-64, arm64 and riscv64 number them; the
# kernel copies an int either way. Elsewhere the calls fail and the hint is skipped.
FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_TOPDIR_FL = 0x00020000


def spread_subdirectories(path: str) -> bool:
    """Mark directory `path` FS_TOPDIR_FL; True if it is (or already was) marked."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        log.debug("%s: cannot open to set the top-directory flag: %s", path, e)
        return False
    try:
        flags = array.array("i", [0])
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags, True)
        if flags[0] & FS_TOPDIR_FL:
            return True
        flags[0] |= FS_TOPDIR_FL
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, flags, True)
        return True
    except OSError as e:  # not ext2/3/4, or not allowed: allocation stays the file system's own
        log.debug("%s: top-directory flag not set: %s", path, e)
        return False
    finally:
        os.close(fd)
