"""What creating a recording's file costs the worker, and how deletions nearby change it.

Why: on ext4 without a journal (this project's VMs mount their root so) the inode allocator
skips every inode freed in the last 60-360 s, reading its inode-table entry to check, before
it takes a free one. After thousands of recordings are deleted, each new file costs about a
millisecond of system CPU instead of tens of microseconds, for minutes. A stress run started
soon after another's clean-up pays that for every start of its ramp (BENCHMARKS.md, eighth
step). With a journal the check is skipped.

    python bench/file_creates.py --dir /root --files 3000 --rounds 3

Each round creates `--files` files in a new directory under `--dir` as a worker does
(O_CREAT | O_EXCL | O_NOFOLLOW, a 58-byte header written), prints the system CPU per file,
and removes them: the second round is the one that follows mass deletions.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time


def round_(base: str, files: int) -> float:
    d = tempfile.mkdtemp(prefix="creates-", dir=base)
    fds = []
    try:
        t0 = os.times()
        for i in range(files):
            fd = os.open(os.path.join(d, f"c{i}.wav"), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
            fds.append(fd)
            os.pwrite(fd, b"R" * 58, 0)
        t1 = os.times()
        return 1e6 * (t1.system + t1.user - t0.system - t0.user) / files
    finally:
        for fd in fds:
            os.close(fd)
        shutil.rmtree(d, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", default="/var/tmp")
    p.add_argument("--files", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    for r in range(a.rounds):
        started = time.strftime("%H:%M:%S")
        print(f"round {r + 1} ({started}): {round_(a.dir, a.files):.0f} us CPU per file created, "
              f"{a.files} files in a new directory under {a.dir}")


if __name__ == "__main__":
    main()
