"""The worker's command handling: files are created off the tick, and order per job holds.

Real pieces throughout: an arena, a ROUTER/DEALER pair over ipc://, the real pipeline
and `worker.commands.Commands` driven the way the worker loop drives them. The one
stand-in is the disk: the sink factory wraps the real one and can be made to block, as
an ext4 inode allocation does under load.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import soundfile as sf
import zmq

from wholecall.protocol import (
    Cause,
    Hello,
    JobEnded,
    JobStarted,
    PauseJob,
    Shutdown,
    StartJob,
    StopJob,
    WorkerError,
    decode,
    sockets,
)
from wholecall.shm import Arena
from wholecall.worker.commands import Commands
from wholecall.worker.crypto import open_sink
from wholecall.worker.pipeline import Pipeline

RATE = 8000


class SlowDisk:
    """The real sink factory; creating a path listed in `hold` blocks until released."""

    def __init__(self) -> None:
        self.hold: dict[str, threading.Event] = {}

    def __call__(self, path, cipher, mode):
        gate = self.hold.get(os.path.basename(path))
        if gate is not None:
            assert gate.wait(10), "test never released the slow create"
        return open_sink(path, cipher, mode)


@pytest.fixture
def rig(tmp_path):
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    arena = Arena.create(8, 1 << 14)
    ctx = zmq.Context()
    endpoint = sockets.control_endpoint(str(run))
    router = sockets.router(ctx, endpoint)
    dealer = sockets.dealer(ctx, endpoint, 0)
    # As the real worker does: say hello first, so the ROUTER knows the peer before it sends.
    sockets.send(dealer, Hello(worker=0, pid=os.getpid(), cpu=0))
    assert router.poll(5000), "the DEALER never connected"
    router.recv_multipart()
    disk = SlowDisk()
    pipe = Pipeline(arena, disk, capacity=4)
    commands = Commands(dealer, pipe, 0)
    events: list = []

    def pump(seconds: float, until=None, loop: bool = True) -> None:
        """Run the worker loop's calls: receive, tick (serving mid-tick), collect events.
        With loop=False only collect what the worker's I/O thread and openers send."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if loop:
                commands.receive_all()
                pipe.tick()
                commands.receive_all()
                for ev in pipe.ended:
                    commands.send(ev)
                pipe.ended.clear()
            while router.poll(0):
                events.append(decode(router.recv_multipart()[-1]))
            if until is not None and until():
                return
            time.sleep(0.005)

    def command(msg) -> None:
        sockets.send(router, msg, peer=sockets.worker_identity(0))

    yield tmp_path, arena, disk, pipe, commands, command, pump, events
    for gate in disk.hold.values():
        gate.set()
    commands.close()
    pipe.close()
    dealer.close(linger=0)
    router.close(linger=0)
    ctx.term()
    arena.close()


def start_msg(job_id: int, path: str, slot: int, pos: int = 0) -> StartJob:
    return StartJob(job_id=job_id, channel=job_id, slot_in=slot, slot_out=slot + 1, start_pos=pos, path=path,
                    file_format="s16bit", rate=RATE, max_bytes=0, ms_max_silence=0, ms_initial_silence=0,
                    dtmf_elim=False, mode="mixed", cipher=None)


def feed(arena: Arena, slot: int, pcm: np.ndarray) -> None:
    """Producer side: append to a leg's ring and publish the new position (LegWriter's order)."""
    w = int(arena.write_pos[slot])
    cap = arena.capacity
    arena.data[slot, (w + np.arange(len(pcm))) & (cap - 1)] = pcm
    arena.write_pos[slot] = w + len(pcm)


def ended(events, job_id):
    return next((e for e in events if isinstance(e, JobEnded) and e.job_id == job_id), None)


def test_slow_create_does_not_hold_up_other_jobs_and_a_stop_sent_meanwhile_is_kept(rig):
    tmp, arena, disk, pipe, commands, command, pump, events = rig
    disk.hold["slow.wav"] = gate = threading.Event()
    tone = (3000 * np.sin(2 * np.pi * 440 * np.arange(RATE) / RATE)).astype(np.int16)
    for s in range(4):
        arena.job[s] = 1 + s // 2
    command(start_msg(1, str(tmp / "slow.wav"), 0))
    command(start_msg(2, str(tmp / "fast.wav"), 2))
    pump(2.0, until=lambda: any(isinstance(e, JobStarted) and e.job_id == 2 for e in events))
    assert [e.job_id for e in events if isinstance(e, JobStarted)] == [2], "the fast job waited for the slow create"
    assert commands.busy

    # The fast job records while the slow file is still being created.
    feed(arena, 2, tone)
    feed(arena, 3, tone)
    pump(1.0, until=lambda: pipe.pos[pipe.by_id[2].row] >= RATE)
    assert pipe.pos[pipe.by_id[2].row] == RATE

    # Audio reaches the slow job's legs, then its stop, all before its file exists: the
    # stop is held, applied once the file is open, and the audio up to it is recorded.
    feed(arena, 0, tone[:4000])
    feed(arena, 1, tone[:4000])
    command(StopJob(job_id=1, cause=Cause.ABORTED, end_pos=4000))
    pump(0.3)
    assert ended(events, 1) is None
    gate.set()
    pump(5.0, until=lambda: ended(events, 1) is not None)
    done = ended(events, 1)
    assert done.cause is Cause.ABORTED and done.samples == 4000, done
    audio, rate = sf.read(tmp / "slow.wav", dtype="int16")
    assert rate == RATE and len(audio) == 4000
    expect = np.clip(2 * tone[:4000].astype(np.int32), -32768, 32767).astype(np.int16)
    np.testing.assert_array_equal(audio, expect)

    command(StopJob(job_id=2, cause=Cause.ABORTED, end_pos=RATE))
    pump(5.0, until=lambda: ended(events, 2) is not None)
    assert ended(events, 2).cause is Cause.ABORTED and ended(events, 2).samples == RATE
    assert not pipe.jobs and not commands.busy


def test_duplicate_start_while_opening_is_refused_and_creates_nothing_twice(rig):
    tmp, arena, disk, pipe, commands, command, pump, events = rig
    disk.hold["a.wav"] = gate = threading.Event()
    command(start_msg(7, str(tmp / "a.wav"), 0))
    command(start_msg(7, str(tmp / "a.wav"), 0))
    pump(1.0, until=lambda: ended(events, 7) is not None)
    err = ended(events, 7)
    assert err is not None and err.cause is Cause.ERROR and "already running" in err.error
    gate.set()
    pump(3.0, until=lambda: any(isinstance(e, JobStarted) for e in events))
    assert [e.job_id for e in events if isinstance(e, JobStarted)] == [7]
    command(StopJob(job_id=7, cause=Cause.ABORTED, end_pos=0))
    pump(3.0, until=lambda: len([e for e in events if isinstance(e, JobEnded)]) == 2)
    assert [e.cause for e in events if isinstance(e, JobEnded)] == [Cause.ERROR, Cause.ABORTED]


def test_failed_create_is_reported_and_leaves_no_file(rig):
    tmp, arena, disk, pipe, commands, command, pump, events = rig
    (tmp / "taken.wav").write_bytes(b"not ours")
    command(start_msg(3, str(tmp / "taken.wav"), 0))
    pump(2.0, until=lambda: ended(events, 3) is not None)
    e = ended(events, 3)
    assert e.cause is Cause.ERROR and "cannot create" in e.error
    assert (tmp / "taken.wav").read_bytes() == b"not ours"
    assert not pipe.jobs and not commands.busy


def test_a_start_that_crosses_shutdown_is_refused_and_the_one_before_it_ends_aborted(rig):
    tmp, arena, disk, pipe, commands, command, pump, events = rig
    command(start_msg(4, str(tmp / "before.wav"), 0))
    command(Shutdown())
    deadline = time.monotonic() + 3
    while not commands.shutdown and time.monotonic() < deadline:
        commands.receive_all()
        time.sleep(0.005)
    assert commands.shutdown
    commands.wait_openers()  # as the worker loop does on Shutdown...
    pipe.abort_all(Cause.ABORTED)  # ...then it stops what runs (job 4 may have been attached already)
    command(start_msg(5, str(tmp / "after.wav"), 2))  # raced the Shutdown
    pump(2.0, until=lambda: ended(events, 4) is not None and ended(events, 5) is not None)
    assert ended(events, 4).cause is Cause.ABORTED
    late = ended(events, 5)
    assert late is not None and late.cause is Cause.ERROR and "shutting down" in late.error
    assert (tmp / "before.wav").exists() and not (tmp / "after.wav").exists()
    assert not pipe.jobs and not commands.busy


def test_a_start_read_right_after_shutdown_is_refused_before_the_loop_applies_the_shutdown(rig):
    """The I/O thread reads Shutdown and then a StartJob; the loop has not run: the start
    must not reach the openers, although the openers are still open."""
    tmp, arena, disk, pipe, commands, command, pump, events = rig
    command(Shutdown())
    command(start_msg(6, str(tmp / "same-batch.wav"), 0))
    pump(3.0, until=lambda: ended(events, 6) is not None, loop=False)
    assert not commands.shutdown and not commands.busy  # refused by the I/O thread alone
    pump(2.0, until=lambda: ended(events, 6) is not None and commands.shutdown)
    late = ended(events, 6)
    assert late is not None and late.cause is Cause.ERROR and "shutting down" in late.error
    assert not (tmp / "same-batch.wav").exists() and not pipe.jobs


def test_a_start_is_confirmed_as_soon_as_its_file_is_open_without_waiting_for_the_loop(rig):
    """JobStarted comes from the opener via the I/O thread; the loop attaches it later,
    and the job's audio from start_pos is all there (nothing lost by the later attach)."""
    tmp, arena, disk, pipe, commands, command, pump, events = rig
    tone = (3000 * np.sin(2 * np.pi * 300 * np.arange(RATE) / RATE)).astype(np.int16)
    feed(arena, 4, tone[:2000])
    feed(arena, 5, tone[:2000])
    command(start_msg(8, str(tmp / "early.wav"), 4, pos=2000))
    pump(3.0, until=lambda: any(isinstance(e, JobStarted) for e in events), loop=False)
    assert [e.job_id for e in events if isinstance(e, JobStarted)] == [8]
    assert not pipe.jobs, "confirmed before the loop ran"
    feed(arena, 4, tone[2000:])
    feed(arena, 5, tone[2000:])
    command(StopJob(job_id=8, cause=Cause.ABORTED, end_pos=RATE))
    pump(5.0, until=lambda: ended(events, 8) is not None)
    kinds = [type(e).__name__ for e in events if getattr(e, "job_id", None) == 8]
    assert kinds == ["JobStarted", "JobEnded"]
    audio, _ = sf.read(tmp / "early.wav", dtype="int16")
    expect = np.clip(2 * tone[2000:].astype(np.int32), -32768, 32767).astype(np.int16)
    np.testing.assert_array_equal(audio, expect)


def test_a_file_opened_during_a_tick_is_attached_inside_that_tick(rig):
    """The tick's serve points attach opened files; the loop's between-tick calls are not needed."""
    tmp, arena, disk, pipe, commands, command, pump, events = rig
    tone = (3000 * np.sin(2 * np.pi * 500 * np.arange(RATE) / RATE)).astype(np.int16)
    command(start_msg(10, str(tmp / "running.wav"), 0))
    pump(3.0, until=lambda: 10 in pipe.by_id)
    disk.hold["late.wav"] = gate = threading.Event()
    command(start_msg(11, str(tmp / "late.wav"), 2))
    pump(1.0, until=lambda: commands.busy, loop=False)
    gate.set()
    pump(3.0, until=lambda: any(isinstance(e, JobStarted) and e.job_id == 11 for e in events), loop=False)
    assert 11 not in pipe.by_id
    feed(arena, 0, tone[:1600])
    feed(arena, 1, tone[:1600])
    pipe.tick()  # job 10 has frames to process: the tick passes its serve points
    assert 11 in pipe.by_id and not commands.busy


def test_close_ends_a_confirmed_but_unattached_start_with_error_and_removes_its_file(rig):
    tmp, arena, disk, pipe, commands, command, pump, events = rig
    command(start_msg(12, str(tmp / "cut.wav"), 0))
    pump(3.0, until=lambda: any(isinstance(e, JobStarted) and e.job_id == 12 for e in events), loop=False)
    assert (tmp / "cut.wav").exists() and 12 not in pipe.by_id
    assert commands.close()  # a crash of the loop before it attached the file
    pump(2.0, until=lambda: ended(events, 12) is not None, loop=False)
    e = ended(events, 12)
    assert e is not None and e.cause is Cause.ERROR and "before the job was attached" in e.error
    assert not (tmp / "cut.wav").exists()


def test_heartbeats_keep_coming_from_inside_a_long_tick(rig):
    """A tick longer than the supervisor's heartbeat timeout must not look like a hung worker."""
    from wholecall.protocol import Heartbeat

    tmp, arena, disk, pipe, commands, command, pump, events = rig
    commands.heartbeat = lambda: Heartbeat(worker=0, jobs=0, cpu_s=0.0, ticks=0, overruns=0)
    commands.heartbeat_s = 0.05
    t_end = time.monotonic() + 0.5
    while time.monotonic() < t_end:  # one long tick: only its serve points run
        commands.serve()
        time.sleep(0.005)
    pump(1.0, until=lambda: sum(isinstance(e, Heartbeat) for e in events) >= 8, loop=False)
    assert sum(isinstance(e, Heartbeat) for e in events) >= 8


ABSURD = [  # field, value, the name the refusal must carry
    ("ms_max_silence", 2**62, "milliseconds_max_silence"),
    ("ms_initial_silence", 2**63, "milliseconds_initial_silence"),
    ("max_bytes", 2**64 - 1, "max_bytes"),
    ("start_pos", -5, "start_pos"),
    ("slot_in", 10**6, "slot_in"),
    ("slot_out", -1, "slot_out"),
]


def test_a_job_with_absurd_numbers_is_refused_alone_and_the_others_keep_recording(rig):
    """Issue 21 item 4: crafted StartJobs straight to the command path. Before, the first of
    them raised OverflowError in the worker loop (silence limits), killing every job."""
    import dataclasses

    tmp, arena, disk, pipe, commands, command, pump, events = rig
    tone = (3000 * np.sin(2 * np.pi * 440 * np.arange(RATE) / RATE)).astype(np.int16)
    arena.job[0] = arena.job[1] = 1
    command(start_msg(1, str(tmp / "good.wav"), 0))
    pump(2.0, until=lambda: any(isinstance(e, JobStarted) and e.job_id == 1 for e in events))
    feed(arena, 0, tone[:4000])
    feed(arena, 1, tone[:4000])
    for i, (field, value, _) in enumerate(ABSURD):
        command(dataclasses.replace(start_msg(10 + i, str(tmp / f"bad{i}.wav"), 2), **{field: value}))
    pump(5.0, until=lambda: all(ended(events, 10 + i) for i in range(len(ABSURD))))
    for i, (_, value, name) in enumerate(ABSURD):
        e = ended(events, 10 + i)
        assert e is not None and e.cause is Cause.ERROR, (name, e)
        assert name in e.error and str(value) in e.error, e.error
        assert not (tmp / f"bad{i}.wav").exists()
    feed(arena, 0, tone[4000:])
    feed(arena, 1, tone[4000:])
    command(StopJob(job_id=1, cause=Cause.ABORTED, end_pos=RATE))
    pump(5.0, until=lambda: ended(events, 1) is not None)
    assert ended(events, 1).cause is Cause.ABORTED and ended(events, 1).samples == RATE
    assert not pipe.jobs and not commands.busy


def test_attach_refuses_what_it_cannot_represent_without_taking_a_row(rig):
    tmp, arena, disk, pipe, commands, command, pump, events = rig
    import dataclasses

    msg = dataclasses.replace(start_msg(5, str(tmp / "x.wav"), 0), ms_max_silence=2**61)
    free = list(pipe._free_rows)
    with pytest.raises(ValueError, match="milliseconds_max_silence"):
        pipe.attach(msg, None)
    assert pipe._free_rows == free and not pipe.jobs and not pipe.by_id
    assert pipe.start(msg).startswith("job 5 refused: milliseconds_max_silence")


def test_the_loop_is_woken_for_an_opened_file_only_when_something_waits_for_it(rig):
    """An opened file joins at the loop's next tick anyway, so its opener does not wake the
    loop (a round of the worker's main thread per start); a stop held for it while its file
    was being made, or a failed create, must not wait for that tick."""
    tmp, arena, disk, pipe, commands, command, pump, events = rig
    import select

    def woken(timeout_s: float) -> bool:
        ready = bool(select.select([commands.wake.fileno()], [], [], timeout_s)[0])
        commands.wake.drain()
        return ready

    def until_opened(job_id: int) -> None:
        pump(5.0, until=lambda: any(isinstance(e, JobStarted) and e.job_id == job_id for e in events), loop=False)

    command(start_msg(1, str(tmp / "plain.wav"), 0))
    until_opened(1)
    assert not woken(0.3), "a plain start woke the loop"
    disk.hold["held.wav"] = gate = threading.Event()
    command(start_msg(2, str(tmp / "held.wav"), 2))
    command(StopJob(job_id=2, cause=Cause.HANGUP, end_pos=0))
    assert woken(5.0)  # the I/O thread's stop: the loop holds it (the file is still being made)
    commands.receive_all()
    assert 2 in commands._held_stops
    gate.set()
    assert woken(5.0), "the opener did not wake the loop for the stop held for its job"
    commands.receive_all()
    assert 2 not in commands._held_stops and (2 not in pipe.by_id or pipe.end[pipe.by_id[2].row] == 0)
    command(start_msg(3, str(tmp / "missing" / "x.wav"), 4))  # its directory does not exist
    assert woken(5.0), "a failed create did not wake the loop"
    commands.receive_all()
    pump(5.0, until=lambda: ended(events, 3) is not None, loop=False)
    assert ended(events, 3).cause is Cause.ERROR


def test_files_opened_together_are_attached_together_each_with_what_was_held_for_it(rig):
    """Four starts whose files are made at once land in one batch (`Pipeline.attach_many`):
    a failed create is refused alone, stops held while the files were being made end their
    own jobs at their own positions, and the job nobody stopped goes on recording."""
    tmp, arena, disk, pipe, commands, command, pump, events = rig
    tone = (np.sin(np.arange(RATE) * 0.05) * 8000).astype(np.int16)
    names = ["a.wav", "b.wav", "c.wav"]
    gates = {n: threading.Event() for n in names}
    disk.hold.update(gates)
    for i, name in enumerate(names):
        command(start_msg(1 + i, str(tmp / name), 2 * i))
    for slot in range(6):
        feed(arena, slot, tone)
    command(StopJob(job_id=1, cause=Cause.HANGUP, end_pos=3000))
    command(StopJob(job_id=3, cause=Cause.ABORTED, end_pos=5000))
    deadline = time.monotonic() + 5
    while {1, 3} - set(commands._held_stops) and time.monotonic() < deadline:
        commands.receive_all()  # the stops are read and held: the files are still being made
        time.sleep(0.005)
    assert {1, 3} <= set(commands._held_stops)
    command(start_msg(4, str(tmp / "missing" / "d.wav"), 6))  # fails at once: its directory does not exist
    deadline = time.monotonic() + 5
    while not commands._opened and time.monotonic() < deadline:
        time.sleep(0.005)
    for gate in gates.values():
        gate.set()
    deadline = time.monotonic() + 5
    while len(commands._opened) < 4 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert len(commands._opened) == 4  # all opened before the loop attaches any: one batch
    commands.receive_all()
    assert not commands._opened and not commands._held_stops
    assert sorted(pipe.by_id) == [1, 2, 3] and set(commands._opening) == set()
    pump(5.0, until=lambda: all(ended(events, j) for j in (1, 3, 4)))
    assert ended(events, 4).cause is Cause.ERROR and "missing" in ended(events, 4).error
    assert (ended(events, 1).cause, ended(events, 1).samples) == (Cause.HANGUP, 3000)
    assert (ended(events, 3).cause, ended(events, 3).samples) == (Cause.ABORTED, 5000)
    assert ended(events, 2) is None and 2 in pipe.by_id
    got, rate = sf.read(str(tmp / "a.wav"), dtype="int16")
    assert rate == RATE and np.array_equal(got, (tone[:3000].astype(np.int32) * 2).clip(-32768, 32767))


def test_a_stop_held_for_a_start_whose_file_cannot_be_made_ends_it_with_its_timings_and_is_forgotten(rig):
    """The stop's read/applied times go on the refused start's JobEnded like any stopped
    job's, and leave the worker's table of stop times (which every tick's endings consult)."""
    tmp, arena, disk, pipe, commands, command, pump, events = rig
    disk.hold["gone.wav"] = gate = threading.Event()
    command(start_msg(5, str(tmp / "missing" / "gone.wav"), 0))  # blocks, then fails: no such directory
    command(StopJob(job_id=5, cause=Cause.HANGUP, end_pos=0))
    deadline = time.monotonic() + 5
    while 5 not in commands._held_stops and time.monotonic() < deadline:
        commands.receive_all()
        time.sleep(0.005)
    assert 5 in commands._held_stops
    gate.set()
    pump(5.0, until=lambda: ended(events, 5) is not None)
    end = ended(events, 5)
    assert end.cause is Cause.ERROR and "missing" in end.error
    assert end.t_stop_received > 0 and end.t_stop_applied >= end.t_stop_received
    assert not commands._stop_times and not commands._held_stops and not commands.busy
    assert not (tmp / "missing").exists()


def test_a_stop_or_pause_that_crosses_its_jobs_end_is_no_error_but_one_for_a_job_never_seen_is(rig):
    """A call hung up as its job ended (a silence limit, a refused start) sends a stop the
    worker can no longer apply: that race is no one's fault and must not reach the logs as
    a WorkerError, while a stop or pause for a job the worker never had still does."""
    tmp, arena, disk, pipe, commands, command, pump, events = rig
    command(start_msg(5, str(tmp / "missing" / "gone.wav"), 0))  # refused: no such directory
    pump(5.0, until=lambda: ended(events, 5) is not None)
    command(StopJob(job_id=5, cause=Cause.HANGUP, end_pos=0))
    command(PauseJob(job_id=5, seq=1, pos=0, mode="skip"))
    command(StopJob(job_id=9, cause=Cause.HANGUP, end_pos=0))
    pump(5.0, until=lambda: any(isinstance(e, WorkerError) for e in events))
    pump(0.2)
    errors = [(e.job_id, e.message) for e in events if isinstance(e, WorkerError)]
    assert errors == [(9, "stop for unknown job")]
