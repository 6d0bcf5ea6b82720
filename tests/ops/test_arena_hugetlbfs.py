"""The ring arena on a hugetlbfs, as Kubernetes mounts an emptyDir of medium HugePages
(deploy/kubernetes): a real recording through it is sample-exact, and the controller
counts it as huge pages (no warning). Needs root to reserve pages and mount; the pages
reserved are given back at the end."""

from __future__ import annotations

import contextlib
import os
import subprocess

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import feed, tone
from wholecall.shm.arena import huge_pages, mount_of

NR = "/proc/sys/vm/nr_hugepages"
PAGES = 16  # 32 MiB: a 4-channel arena with 4 s rings needs 2 pages


def _hugetlbfs_possible() -> str:
    if os.geteuid() != 0:
        return "needs root to reserve huge pages and mount a hugetlbfs"
    with open("/proc/filesystems") as f:
        if "hugetlbfs" not in f.read():
            return "the kernel has no hugetlbfs"
    if not os.access(NR, os.W_OK):
        return f"{NR} is not writable here (a container?)"
    return ""


@contextlib.contextmanager
def hugetlbfs(where: str):
    with open(NR) as f:
        before = int(f.read())
    with open(NR, "w") as f:
        f.write(str(before + PAGES))
    mounted = False
    try:
        with open(NR) as f:
            if int(f.read()) < before + PAGES:
                pytest.skip("the kernel could not reserve 16 huge pages now (memory fragmented)")
        os.makedirs(where)
        subprocess.run(["mount", "-t", "hugetlbfs", "-o", "pagesize=2M,mode=0700", "wholecall-test", where], check=True)
        mounted = True
        yield where
    finally:
        if mounted:
            subprocess.run(["umount", where], check=False)
        with open(NR, "w") as f:
            f.write(str(before))


@pytest.mark.skipif(bool(_hugetlbfs_possible()), reason=_hugetlbfs_possible() or "n/a")
def test_a_recording_through_an_arena_on_hugetlbfs(make_controller, tmp_path) -> None:
    with hugetlbfs(str(tmp_path / "huge")) as mnt:
        assert mount_of(mnt)[0] == "hugetlbfs" and huge_pages(mnt)
        ctl = make_controller(workers=1, max_channels=4, arena_dir=mnt)
        assert os.path.dirname(ctl.arena.path) == mnt
        assert os.path.getsize(ctl.arena.path) % (2 << 20) == 0  # whole huge pages
        ch = ctl.incoming_call()
        ch.answer()
        rec = ch.WholeCallRecorder
        caller, agent = tone(440, 1.0), tone(1000, 1.0, 5000)
        assert rec.start("huge.wav", file_format="s16bit", recording_mode="separate")
        feed(ch, caller, agent)
        ch.hang_up()
        assert rec.cause().name == "HANGUP"
        x, rate = sf.read(str(tmp_path / "rec" / "huge.wav"), dtype="int16")
        np.testing.assert_array_equal(x[:len(caller), 0], caller)
        np.testing.assert_array_equal(x[:len(agent), 1], agent)
        ctl.close()
        assert os.listdir(mnt) == []  # the arena is unlinked: its pages go back before the unmount
