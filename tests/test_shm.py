"""The ring arena: layout checks, SPSC data integrity, overruns, resume, unlinking."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wholecall.shm import Arena, LegReader, LegWriter
from wholecall.shm.layout import Layout


def test_capacity_must_be_power_of_two():
    with pytest.raises(ValueError, match="power of two.*3000"):
        Layout(4, 3000)


def test_counters_live_on_separate_pages():
    lay = Layout(10, 1024)
    offsets = [lay.write_pos, lay.overruns, lay.read_pos, lay.job, lay.data]
    assert all(o % 4096 == 0 for o in offsets)
    assert len(set(o // 4096 for o in offsets)) == 5


def test_attach_sees_the_same_memory_and_refuses_foreign_names():
    with Arena.create(4, 1024) as a:
        b = Arena.attach(a.name)
        LegWriter(a, 1).write(np.arange(10, dtype=np.int16))
        assert b.write_pos[1] == 10
        assert list(b.data[1, :3]) == [0, 1, 2]
        b.close()
        with pytest.raises(ValueError, match="not a wholecall arena"):
            Arena.attach("../etc/passwd")


def test_close_unlinks_even_after_an_exception():
    name = None
    with pytest.raises(RuntimeError):
        with Arena.create(2, 1024) as a:
            name = a.name
            raise RuntimeError("boom")
    assert not os.path.exists(f"/dev/shm/{name}")


def test_every_page_of_the_arena_is_reserved_at_creation():
    """A sparse arena would SIGBUS a producer or worker mid-call once /dev/shm runs out."""
    with Arena.create(8, 1 << 16) as a:
        st = os.stat(f"/dev/shm/{a.name}")
        assert st.st_blocks * 512 >= st.st_size >= 8 * (1 << 16) * 2


def test_an_arena_larger_than_dev_shm_is_refused_by_name_and_leaves_nothing():
    import errno

    vfs = os.statvfs("/dev/shm")
    free = vfs.f_bavail * vfs.f_frsize
    capacity = 1 << 22  # 8 MiB per slot
    slots = free // (2 * capacity) + 4
    before = {n for n in os.listdir("/dev/shm") if n.startswith(f"wholecall-{os.getpid()}-")}
    with pytest.raises(OSError, match=r"the arena needs \d+ MiB but /dev/shm has \d+ MiB free") as e:
        Arena.create(slots, capacity)
    assert e.value.errno == errno.ENOSPC
    assert {n for n in os.listdir("/dev/shm") if n.startswith(f"wholecall-{os.getpid()}-")} == before


def test_allocate_until_full_then_clear_error():
    with Arena.create(4, 1024) as a:
        a.allocate(2)
        a.allocate(2)
        with pytest.raises(RuntimeError, match="full: 4 slots, 0 free"):
            a.allocate(2)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 3000), min_size=1, max_size=30), st.integers(1, 2500))
def test_recorded_leg_delivers_every_sample_in_order(chunks, read_size):
    """Producer writes chunks of any size (a thread), consumer reads with any limit: no loss, no reorder."""
    import threading

    with Arena.create(2, 1024) as a:
        a.job[0] = 1  # recorded: the producer must wait for space
        total = sum(chunks)
        src = (np.arange(total) % 30000).astype(np.int16)
        w = LegWriter(a, 0, poll_s=0.0001)

        def produce():
            i = 0
            for c in chunks:
                assert w.write(src[i:i + c], timeout=10) == c
                i += c

        t = threading.Thread(target=produce)
        t.start()
        r = LegReader(a, 0)
        got = []
        n = 0
        while n < total:
            x = r.read(read_size)
            got.append(x)
            n += len(x)
        t.join()
        assert np.array_equal(np.concatenate(got), src)
        assert w.overruns == 0


def test_nonblocking_write_counts_overruns_and_never_corrupts():
    with Arena.create(2, 1024) as a:
        a.job[0] = 1
        w = LegWriter(a, 0)
        assert w.write(np.ones(1000, np.int16), block=False) == 1000
        assert w.write(np.full(100, 2, np.int16), block=False) == 24
        assert w.overruns == 76
        got = LegReader(a, 0).read(5000)
        assert np.array_equal(got, np.r_[np.ones(1000), np.full(24, 2)].astype(np.int16))


def test_unrecorded_leg_is_overwritten_and_clock_advances():
    with Arena.create(2, 1024) as a:
        w = LegWriter(a, 0)
        assert w.write(np.zeros(5000, np.int16), block=False) == 5000
        assert w.position == 5000 and w.overruns == 0


def test_late_leg_jumps_to_the_consumer_position():
    with Arena.create(2, 1024) as a:
        a.job[0] = 1
        a.read_pos[0] = 800  # the worker recorded this leg's gap as silence
        w = LegWriter(a, 0)
        w.write(np.ones(10, np.int16))
        assert w.position == 810


def test_replacement_reader_resumes_where_the_dead_one_stopped():
    with Arena.create(2, 1024) as a:
        a.job[0] = 1
        LegWriter(a, 0).write(np.arange(600, dtype=np.int16))
        code = textwrap.dedent(f"""
            from wholecall.shm import Arena, LegReader
            a = Arena.attach({a.name!r}); r = LegReader(a, 0); r.read(250); import os; os._exit(0)
        """)
        subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
        rest = LegReader(a, 0).read(1000)
        assert rest[0] == 250 and len(rest) == 350


def test_an_arena_outside_dev_shm_must_be_on_tmpfs(tmp_path):
    from wholecall.shm.arena import mount_of

    if mount_of(str(tmp_path))[0] == "tmpfs":
        pytest.skip("the test directory is itself on tmpfs")
    with pytest.raises(ValueError, match="not tmpfs: the rings would be on disk"):
        Arena.create(4, 1024, str(tmp_path))
    with pytest.raises(ValueError, match="does not exist"):
        Arena.create(4, 1024, str(tmp_path / "nowhere"))
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_an_arena_on_a_huge_page_tmpfs_is_attached_by_path_and_unlinked():
    from wholecall.shm.arena import huge_pages
    from wholecall.sim.arena_mount import private_arena_dir

    assert not huge_pages("/dev/shm") or "huge=" in open("/proc/self/mountinfo").read()
    with private_arena_dir(8 << 20) as d:
        if d is None:
            pytest.skip("this machine does not let us mount a tmpfs")
        assert huge_pages(d)
        with Arena.create(4, 1 << 16, d) as a:
            assert a.path.startswith(d + "/") and os.path.exists(a.path)
            b = Arena.attach(a.path)
            a.data[1, :5] = [1, 2, 3, 4, 5]
            assert list(b.data[1, :5]) == [1, 2, 3, 4, 5]
            b.close()
            with pytest.raises(ValueError, match="not a wholecall arena"):
                Arena.attach(d + "/../" + a.name)
        assert os.listdir(d) == []
    assert not os.path.exists(d)
    assert f" {d} " not in open("/proc/self/mountinfo").read()


def test_an_arena_named_with_this_process_number_that_it_did_not_make_is_swept() -> None:
    """A restarted container's service is PID 1 again, and its previous incarnation's arena,
    on a volume that outlived it, is named PID 1 too: it was kept as live and the new start-up
    found no room for its own (a reviewer's find). One this process made stays; one that a
    live process holds (`shm.owner`) stays; one named with a live process's number that no
    one holds is swept (in a container, numbers are few and come round again). An arena of
    an earlier version (no lock, no `.flock` in its name) goes by its PID, as it did then."""
    import pathlib
    import tempfile

    from wholecall.shm import sweep_stale

    tmp_path = pathlib.Path(tempfile.mkdtemp(dir="/dev/shm", prefix="sweep-test-"))  # a tmpfs, as arenas need
    mine = Arena.create(2, 1 << 12, directory=str(tmp_path))
    try:
        held = tmp_path / "wholecall-999999999-cafef00d.flock"  # a number nobody has: only its lock keeps it
        held.write_bytes(b"\0" * 4096)
        holder = subprocess.Popen([sys.executable, "-c", HOLD, str(held)], stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline() == "locked\n"
            stale = tmp_path / f"wholecall-{os.getpid()}-deadbeef"  # an earlier version's, with our number
            stale.write_bytes(b"\0" * 4096)
            reused = tmp_path / f"wholecall-{holder.pid}-0badf00d.flock"
            reused.write_bytes(b"\0" * 4096)
            earlier = tmp_path / f"wholecall-{holder.pid}-00c0ffee"  # an earlier version's, still running
            earlier.write_bytes(b"\0" * 4096)
            assert sorted(sweep_stale(str(tmp_path))) == sorted([stale.name, reused.name])
            assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, held.name, earlier.name])
        finally:
            holder.kill()
            holder.wait()
        assert sorted(sweep_stale(str(tmp_path))) == sorted([held.name, earlier.name])  # their owners are gone
        assert [p.name for p in tmp_path.iterdir()] == [mine.name]
    finally:
        mine.close()
        for p in tmp_path.iterdir():
            p.unlink()
        tmp_path.rmdir()


#: Holds a shared lock on argv[1] as a live arena's owner does (`shm.owner.claim`).
HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_SH)
print("locked", flush=True)
time.sleep(60)
"""
