"""Sizing by the cgroup's CPU quota (`controller/cpuquota.py`): a pod limited to 4 CPUs on a
32-CPU node (no static CPU manager: its affinity lists all 32) started 32 workers, 16 ingest
and 8 stream processes and was OOM-killed (a reviewer's find). The files below stand for
/sys/fs/cgroup and /proc/self/cgroup as the kernel lays them out; the last test puts a real
process in a real cgroup with a quota when this machine lets us make one."""

import os
import subprocess
import sys
import uuid

import pytest

from wholecall.controller.config import usable_cpus
from wholecall.controller.cpuquota import quota_cpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def affinity() -> int:
    return len(os.sched_getaffinity(0))


def cgroup(tmp_path, self_line: str, files: dict[str, str]) -> tuple[str, str]:
    """A stand-in cgroup tree under tmp_path: (root, self_cgroup file)."""
    root = tmp_path / "sys-fs-cgroup"
    root.mkdir(parents=True)
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    me = tmp_path / "proc-self-cgroup"
    me.write_text(self_line + "\n")
    return str(root), str(me)


@pytest.mark.parametrize("cpu_max, want", [("200000 100000\n", 2), ("150000 100000\n", 2), ("50000 100000\n", 1),
                                           ("400000 100000\n", 4), ("max 100000\n", None)])
def test_cgroup_v2_cpu_max_in_a_cgroup_namespace(tmp_path, cpu_max, want):
    root, me = cgroup(tmp_path, "0::/", {"cpu.max": cpu_max})
    assert quota_cpus(root, me) == want
    assert usable_cpus(root, me) == (affinity() if want is None else min(affinity(), want))


def test_a_quota_of_one_cpu_bounds_the_affinity(tmp_path):
    root, me = cgroup(tmp_path, "0::/", {"cpu.max": "100000 100000\n"})
    assert usable_cpus(root, me) == 1
    root2, me2 = cgroup(tmp_path / "none", "0::/", {})  # no cpu.max at all (no cpu controller): the affinity
    assert usable_cpus(root2, me2) == affinity()


def test_cgroup_v2_the_tightest_limit_on_the_path_counts(tmp_path):
    """A Kubernetes pod's limit sits on the pod's cgroup, above the container's (which may say max)."""
    root, me = cgroup(tmp_path, "0::/kubepods.slice/pod1/cri-abc", {
        "cpu.max": "max 100000\n",
        "kubepods.slice/cpu.max": "max 100000\n",
        "kubepods.slice/pod1/cpu.max": "400000 100000\n",
        "kubepods.slice/pod1/cri-abc/cpu.max": "800000 100000\n",
    })
    assert quota_cpus(root, me) == 4


def test_cgroup_v1_cfs_quota_seen_from_a_container_without_a_cgroup_namespace(tmp_path):
    """Docker on cgroup v1: /proc/self/cgroup names the host's path; the container's own
    cgroup is mounted at the hierarchy's root."""
    root, me = cgroup(tmp_path, "4:cpu,cpuacct:/docker/0123abcd", {
        "cpu,cpuacct/cpu.cfs_quota_us": "250000\n",
        "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
    })
    assert quota_cpus(root, me) == 3
    root2, me2 = cgroup(tmp_path / "unlimited", "4:cpu,cpuacct:/", {
        "cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"})
    assert quota_cpus(root2, me2) is None


def test_unreadable_or_garbled_files_mean_no_quota(tmp_path):
    root, me = cgroup(tmp_path, "0::/", {"cpu.max": "lots\n"})
    assert quota_cpus(root, me) is None
    assert quota_cpus(str(tmp_path / "absent"), str(tmp_path / "absent-self")) is None


def real_cgroup_with_one_cpu() -> tuple[str, str] | None:
    """A new cgroup limited to one CPU's time, (its directory, the file to join it), or None."""
    name = f"wholecall-test-{uuid.uuid4().hex[:8]}"
    v1 = "/sys/fs/cgroup/cpu"
    try:
        if os.path.isfile(os.path.join(v1, "cpu.cfs_quota_us")):
            d = os.path.join(v1, name)
            os.mkdir(d)
            with open(os.path.join(d, "cpu.cfs_quota_us"), "w") as f:
                f.write(str(int(open(os.path.join(d, "cpu.cfs_period_us")).read())))
            return d, os.path.join(d, "cgroup.procs")
        if "cpu" in open("/sys/fs/cgroup/cgroup.subtree_control").read().split():
            d = os.path.join("/sys/fs/cgroup", name)
            os.mkdir(d)
            with open(os.path.join(d, "cpu.max"), "w") as f:
                f.write("100000 100000")
            return d, os.path.join(d, "cgroup.procs")
    except OSError:
        if "d" in locals() and os.path.isdir(d):
            os.rmdir(d)
    return None


def test_a_process_in_a_cgroup_limited_to_one_cpu_sizes_one_worker():
    made = real_cgroup_with_one_cpu()
    if made is None:
        pytest.skip("cannot make a cgroup with a CPU quota here (needs root and a writable cgroup fs)")
    d, procs = made
    try:
        code = "from wholecall.controller import Controller; print(Controller().config.workers)"
        # The shell joins the cgroup, then becomes python: the quota applies from its start.
        out = subprocess.run(["sh", "-c", f'echo $$ > {procs} && exec "$0" -c "$1"', sys.executable, code],
                             capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        assert int(out.stdout) == 1
    finally:
        os.rmdir(d)
