"""How long a sidecar's fsyncs take on a filesystem, idle or beside a load.

Every `--every-ms` a small file (a sidecar's size) is written, fsynced, renamed and its
directory fsynced, as `controller.sidecar.write_atomic(durable=True)` does; the two
fsyncs are timed, and the kernel's Dirty / Writeback figures are sampled beside them.
Run it beside `wholecall stress --channels 20000` to see what a stop() that waited for
them would pay (BENCHMARKS.md, issue 25, seventh step).

    python bench/fsync_probe.py [--dir DIR] [--seconds 100] [--every-ms 50] [--bytes 900]

Prints p50 / p90 / p99 / max in ms of each fsync and of the pair.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np


def meminfo_mb(keys: tuple[str, ...] = ("Dirty", "Writeback")) -> dict[str, int]:
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            if k in keys:
                out[k] = int(v.split()[0]) // 1024
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", help="directory on the filesystem to probe (default: a temporary one under .)")
    p.add_argument("--seconds", type=float, default=100.0)
    p.add_argument("--every-ms", type=float, default=50.0)
    p.add_argument("--bytes", type=int, default=900)
    a = p.parse_args()
    d = a.dir or tempfile.mkdtemp(prefix="fsync-probe-", dir=".")
    os.makedirs(d, exist_ok=True)
    pair, files, dirs, dirty = [], [], [], []
    body = b"x" * a.bytes
    end = time.monotonic() + a.seconds
    i = 0
    try:
        while time.monotonic() < end:
            i += 1
            path = os.path.join(d, f"probe{i}.json")
            fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, body)
            t0 = time.monotonic()
            os.fsync(fd)
            t1 = time.monotonic()
            os.close(fd)
            os.replace(path + ".tmp", path)
            dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
            t2 = time.monotonic()
            os.fsync(dfd)
            t3 = time.monotonic()
            os.close(dfd)
            files.append(1e3 * (t1 - t0))
            dirs.append(1e3 * (t3 - t2))
            pair.append(files[-1] + dirs[-1])
            dirty.append(meminfo_mb().get("Dirty", 0))
            time.sleep(a.every_ms / 1000)
    finally:
        if not a.dir:
            shutil.rmtree(d, ignore_errors=True)
    print(f"{len(pair)} probes, kernel Dirty up to {max(dirty, default=0)} MB")
    for name, xs in (("file fsync", files), ("directory fsync", dirs), ("both", pair)):
        q = np.percentile(xs, [50, 90, 99, 100])
        print(f"{name:16s} p50 {q[0]:.1f}  p90 {q[1]:.1f}  p99 {q[2]:.1f}  max {q[3]:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
