"""The stress output directory is marked for ext4's Orlov allocator (FS_TOPDIR_FL), where the
file system has the flag; elsewhere the hint fails quietly."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from wholecall.sim.topdir import spread_subdirectories


def _lsattr(path) -> str:
    return subprocess.run(["lsattr", "-d", str(path)], capture_output=True, text=True, check=True).stdout.split()[0]


def _fs_type(path) -> str:
    return subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True, check=True).stdout


def test_a_directory_on_ext4_is_marked_top_of_a_hierarchy(tmp_path):
    if "ext2/ext3" not in _fs_type(tmp_path):  # how stat(1) names ext2, ext3 and ext4 alike
        pytest.skip(f"{tmp_path} is not on ext2/3/4")
    if shutil.which("lsattr") is None:
        pytest.skip("lsattr (e2fsprogs) is not installed")
    before = _lsattr(tmp_path)
    assert spread_subdirectories(str(tmp_path))
    assert "T" not in before
    assert "T" in _lsattr(tmp_path)
    assert spread_subdirectories(str(tmp_path))  # already marked: still True, nothing else changed


def test_the_hint_fails_quietly_where_it_cannot_apply(tmp_path):
    assert not spread_subdirectories(str(tmp_path / "missing"))
    assert not spread_subdirectories("/proc")  # procfs has no such flag
