"""`resolve_filename`'s fast path (a new name in an existing directory under the root) gives
what the full check gives, and a recordings directory that is moved, replaced or re-pointed
is resolved anew, never written through its old name or out of the root."""

from __future__ import annotations

import os

import pytest

from wholecall.controller import Error
from wholecall.controller.args import resolve_filename


def test_a_plain_name_lands_in_the_real_directory_behind_a_symlinked_root(tmp_path):
    real = tmp_path / "disk1" / "rec"
    real.mkdir(parents=True)
    root = tmp_path / "recordings"
    root.symlink_to(real)
    for _ in range(2):
        assert resolve_filename(str(root), "a.wav") == os.path.join(os.path.realpath(real), "a.wav")


def test_a_root_pointed_elsewhere_is_resolved_anew(tmp_path):
    d1, d2 = tmp_path / "disk1", tmp_path / "disk2"
    d1.mkdir()
    d2.mkdir()
    root = tmp_path / "recordings"
    root.symlink_to(d1)
    assert resolve_filename(str(root), "a.wav") == str(d1 / "a.wav")
    root.unlink()
    root.symlink_to(d2)  # an operator moves recording to another disk
    assert resolve_filename(str(root), "a.wav") == str(d2 / "a.wav")


def test_a_root_moved_away_and_made_again_is_resolved_anew(tmp_path):
    root = tmp_path / "recordings"
    root.mkdir()
    assert resolve_filename(str(root), "a.wav") == str(root / "a.wav")
    root.rename(tmp_path / "old")
    root.mkdir()
    assert resolve_filename(str(root), "b.wav") == str(root / "b.wav")
    (root / "b.wav").write_bytes(b"")
    with pytest.raises(Error, match="already exists"):
        resolve_filename(str(root), "b.wav")  # the new directory's contents are what is checked


@pytest.mark.parametrize("name,what", [
    ("dangling.wav", "outside"),  # a plain name that exists as a symlink out: the full check's error
    ("kept.wav", "already exists"),
    ("sub/../../x.wav", "outside"),
    ("link-out/x.wav", "outside"),  # a directory under the root that is a symlink out of it
    ("/etc/x.wav", "outside"),
    ("..", "outside"),
    (".", "outside"),
])
def test_names_the_fast_path_does_not_take_get_the_full_checks(tmp_path, name, what):
    root = tmp_path / "rec"
    root.mkdir()
    (root / "kept.wav").write_bytes(b"RIFF")
    os.symlink(tmp_path / "elsewhere.wav", root / "dangling.wav")
    (tmp_path / "out").mkdir()
    os.symlink(tmp_path / "out", root / "link-out")
    (root / "sub").mkdir()
    resolve_filename(str(root), "warm.wav")  # the root remembered first
    resolve_filename(str(root), "sub/warm.wav")
    with pytest.raises(Error, match=what):
        resolve_filename(str(root), name)


def test_a_name_in_a_subdirectory_is_resolved_through_it(tmp_path):
    root = tmp_path / "rec"
    (root / "2026" / "12").mkdir(parents=True)
    assert resolve_filename(str(root), "2026/12/a.wav") == str(root / "2026" / "12" / "a.wav")
    assert resolve_filename(str(root), "2027/01/a.wav") == str(root / "2027" / "01" / "a.wav")  # made later


def test_a_subdirectory_pointed_out_of_the_root_after_use_is_refused(tmp_path):
    root = tmp_path / "rec"
    inside, outside = root / "d1", tmp_path / "out"
    inside.mkdir(parents=True)
    outside.mkdir()
    os.symlink(inside, root / "today")
    assert resolve_filename(str(root), "today/a.wav") == str(inside / "a.wav")
    (root / "today").unlink()
    os.symlink(outside, root / "today")
    with pytest.raises(Error, match="outside"):
        resolve_filename(str(root), "today/b.wav")


def test_a_subdirectory_moved_out_and_symlinked_back_is_refused(tmp_path):
    # The same inode, now outside the root and reached through a symlink left in its place.
    root, out = tmp_path / "rec", tmp_path / "out"
    (root / "sub").mkdir(parents=True)
    out.mkdir()
    assert resolve_filename(str(root), "sub/a.wav") == str(root / "sub" / "a.wav")
    (root / "sub").rename(out / "sub")
    os.symlink(out / "sub", root / "sub")
    with pytest.raises(Error, match="outside"):
        resolve_filename(str(root), "sub/b.wav")


def test_a_root_moved_and_symlinked_back_resolves_to_where_it_is_now(tmp_path):
    root, elsewhere = tmp_path / "rec", tmp_path / "disk2" / "rec"
    root.mkdir()
    elsewhere.parent.mkdir()
    assert resolve_filename(str(root), "a.wav") == str(root / "a.wav")
    root.rename(elsewhere)
    os.symlink(elsewhere, root)
    assert resolve_filename(str(root), "b.wav") == str(elsewhere / "b.wav")



def test_a_subdirectory_linked_to_a_sibling_whose_name_starts_like_the_root_is_refused(tmp_path):
    """"Under the root" is a path prefix ending at a separator: /x/rec2 is not under /x/rec."""
    root, sibling = tmp_path / "rec", tmp_path / "rec2"
    root.mkdir()
    sibling.mkdir()
    (root / "calls").symlink_to(sibling)
    with pytest.raises(Error, match="outside the recordings directory"):
        resolve_filename(str(root), "calls/a.wav")
    assert not (sibling / "a.wav").exists()


@pytest.mark.parametrize("suffix", [".wcpart", ".wctmp"])
def test_names_of_encrypted_intermediates_are_reserved(tmp_path, suffix):
    """A reviewer's find: a plain recording named x.wav.wctmp was deleted when an encrypted
    x.wav finished (its temporary file has that name)."""
    with pytest.raises(Error, match="are reserved for the intermediate files of encrypted recordings"):
        resolve_filename(str(tmp_path), "x.wav" + suffix)
