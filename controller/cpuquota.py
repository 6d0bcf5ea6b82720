"""The CPU quota of this process's cgroup: how many CPUs' worth of time it may use.

Kubernetes (without the kubelet's static CPU manager), Docker's `--cpus` and systemd's
CPUQuota= limit a container by a CFS quota, not by a cpuset: sched_getaffinity still
lists every CPU of the node. Sizing workers, ingest and stream processes by the affinity
alone gave a pod limited to 4 CPUs on a 32-CPU node 32 workers, 16 ingest and 8 stream
processes, about 4.6 GB at idle against its 2 GiB limit: OOM-killed at start-up.

cgroup v2: `cpu.max` holds "<quota> <period>" in microseconds, or "max <period>" for no
limit. cgroup v1: `cpu.cfs_quota_us` (-1 for no limit) and `cpu.cfs_period_us`. A limit
may sit on any ancestor of our cgroup (a pod's cgroup above its containers'), so the
tightest along the path counts. Inside a cgroup namespace the path is "/" and the
mount's root is our own cgroup; a container without one sees the host's path, which
does not exist under its mount, and its own cgroup at the mount's root: both are read.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

CGROUP_ROOT = "/sys/fs/cgroup"
SELF_CGROUP = "/proc/self/cgroup"
#: Where a cgroup v1 hierarchy with the cpu controller is mounted, under CGROUP_ROOT.
V1_CPU_MOUNTS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")


def parse_cpu_max(text: str) -> float | None:
    """CPUs a cgroup v2 `cpu.max` allows ("200000 100000" -> 2.0), None for "max ..."."""
    fields = text.split()
    if not fields or fields[0] == "max":
        return None
    quota = int(fields[0])
    period = int(fields[1]) if len(fields) > 1 else 100_000
    return quota / period if quota > 0 and period > 0 else None


def parse_cfs(quota_text: str, period_text: str) -> float | None:
    """CPUs a cgroup v1 quota allows (cpu.cfs_quota_us / cpu.cfs_period_us), None for -1."""
    quota, period = int(quota_text.strip()), int(period_text.strip())
    return quota / period if quota > 0 and period > 0 else None


def quota_cpus(root: str = CGROUP_ROOT, self_cgroup: str = SELF_CGROUP) -> int | None:
    """Whole CPUs the tightest CFS quota on this process's cgroup or its ancestors allows
    (rounded up: 1.5 CPUs is 2), None when there is none or it cannot be read.

    `root` and `self_cgroup` stand for /sys/fs/cgroup and /proc/self/cgroup (tests).
    """
    try:
        with open(self_cgroup) as f:
            lines = f.read().splitlines()
    except OSError:
        lines = []
    limits: list[float] = []
    for line in lines or ["0::/"]:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            for d in _ancestors(root, path):
                limits += _read(d, "cpu.max", parse_cpu_max)
        elif "cpu" in controllers.split(","):
            for mount in V1_CPU_MOUNTS:
                top = os.path.join(root, mount)
                if os.path.isdir(top):
                    for d in _ancestors(top, path):
                        limits += _read(d, "cpu.cfs_quota_us", parse_cfs, "cpu.cfs_period_us")
                    break
    return max(1, math.ceil(min(limits) - 1e-9)) if limits else None


def _ancestors(top: str, path: str) -> list[str]:
    """`top`/`path` and each directory above it up to `top` itself."""
    parts = [p for p in path.split("/") if p and p not in (".", "..")]
    return [os.path.join(top, *parts[:n]) for n in range(len(parts), -1, -1)]


def _read(directory: str, name: str, parse: Callable[..., float | None], *more: str) -> list[float]:
    """[the CPUs `parse` makes of the files `name`, `*more` in `directory`], [] if none."""
    try:
        texts = []
        for n in (name, *more):
            with open(os.path.join(directory, n)) as f:
                texts.append(f.read())
        cpus = parse(*texts)
    except (OSError, ValueError):
        return []
    return [] if cpus is None else [cpus]
