"""Kernel CPU of many files' appends, as the workers make them: 16 kB (2 s of A-law) per file
per round, at an unaligned offset (after a WAV header), from a cold buffer per file.

Why: in `wholecall stress` at 20,000 channels the workers' kernel time (almost all of it
the page cache's copy of each pwrite) moved from 9 to 25 us per channel-second between
runs of the same code. This separates the file system's cost from ours, and shows how it
grows once the writes reach memory the VM has not touched for a while (BENCHMARKS.md).

    python bench/file_appends.py --files 10000 --rounds 80 --dir /var/tmp/appends
    python bench/file_appends.py --files 10000 --rounds 80 --dir /var/tmp/appends --pace 0.4

Prints the process's system CPU per MB for every 10 rounds, then the whole run's; the
files are removed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time

import numpy as np

CHUNK = 16_384  # bytes per append: a flush of 2 s of 8 kHz A-law, rounded to pages
HEADER = 58  # an A-law WAV header: the appends start mid-block, as the recordings' do


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy so far (every process and kernel thread:
    writeback done by the kernel's flusher threads is not the writer's own CPU)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def fallocate_keep_size(fd: int, length: int) -> None:
    """Reserve `length` bytes of blocks without changing the file's size (unwritten extents)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    if libc.fallocate(fd, 1, 0, length) != 0:  # FALLOC_FL_KEEP_SIZE
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def run(files: int, rounds: int, where: str, pace: float, drop_behind: bool = False, prealloc: int = 0,
        drop_lag: int = 0) -> None:
    os.makedirs(where, exist_ok=True)
    src = np.random.default_rng(1).integers(0, 255, size=(files, CHUNK), dtype=np.uint8)
    fds = [os.open(os.path.join(where, f"f{i}.wav"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
           for i in range(files)]
    if prealloc:
        for fd in fds:
            fallocate_keep_size(fd, prealloc)
    mb_round = files * CHUNK / 1e6
    try:
        t0 = last = os.times()
        m0 = machine_busy_s()
        w0 = time.monotonic()
        for r in range(rounds):
            if pace:
                time.sleep(pace)
            for i, fd in enumerate(fds):
                os.pwrite(fd, src[i], HEADER + r * CHUNK)
                if drop_behind:
                    # Start writing this append back now and drop what earlier ones left in the
                    # page cache (clean by now): the kernel reuses those pages for the next appends.
                    os.posix_fadvise(fd, 0, (HEADER + (r + 1) * CHUNK) & ~4095, os.POSIX_FADV_DONTNEED)
                elif drop_lag and r >= drop_lag and r % 5 == 0:
                    # Every fifth round, drop what the file held `drop_lag` rounds back and
                    # before: written back by the flusher long ago (dirty_expire), so clean.
                    os.posix_fadvise(fd, 0, (HEADER + (r - drop_lag) * CHUNK) & ~4095, os.POSIX_FADV_DONTNEED)
            if (r + 1) % 10 == 0:
                now = os.times()
                print(f"rounds {r - 8:3d}-{r + 1:3d} ({(r + 1) * mb_round / 1000:5.1f} GB written): "
                      f"{(now.system - last.system) / (10 * mb_round) * 1e6:6.0f} us system CPU per MB", flush=True)
                last = now
        end = os.times()
        machine = machine_busy_s() - m0
        mb = rounds * mb_round
        print(f"{mb:.0f} MB in {time.monotonic() - w0:.1f} s: {(end.system - t0.system) / mb * 1e6:.0f} us system "
              f"and {(end.user - t0.user) / mb * 1e6:.0f} us user CPU per MB "
              f"({(end.system + end.user - t0.system - t0.user) / mb * 8e3:.1f} us per channel-second at 8 kB/s); "
              f"the whole machine {machine / mb * 1e6:.0f} us busy per MB")
    finally:
        for fd in fds:
            os.close(fd)
        shutil.rmtree(where, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--dir", default="/var/tmp/wholecall-appends")
    p.add_argument("--pace", type=float, default=0.0, help="seconds to sleep before each round (writeback keeps up)")
    p.add_argument("--drop-behind", action="store_true",
                   help="after each append, fadvise(DONTNEED) the file up to it (writeback now, clean pages freed)")
    p.add_argument("--drop-lag", type=int, default=0, metavar="ROUNDS",
                   help="every fifth round, fadvise(DONTNEED) each file up to ROUNDS rounds back (clean by then)")
    p.add_argument("--prealloc", type=int, default=0, metavar="BYTES",
                   help="reserve this many bytes per file first (fallocate, size kept: unwritten extents)")
    a = p.parse_args()
    if a.drop_lag < 0:
        p.error("--drop-lag must be >= 0")
    run(a.files, a.rounds, a.dir, a.pace, a.drop_behind, a.prealloc, a.drop_lag)


if __name__ == "__main__":
    main()
