"""Failures and the bounded waits of start() and stop(): workers that die (taken over,
no loss), freeze or cannot write. Each test has its own controller (one worker, so the victim is known)."""

from __future__ import annotations

import os
import resource
import signal
import time

import numpy as np
import pytest
from conformance_helpers import alaw_exact, feed_both, in_thread, read, tone, wait_for
from conftest import make_controller

from wholecall.controller import Cause, RecorderState
from wholecall.formats.wav import read_info


@pytest.fixture
def solo(tmp_path):
    """Factory: a one-worker controller, closed after the test (SIGCONT first if frozen)."""
    made = []

    def make(**kw):
        ctl = make_controller(str(tmp_path / f"rec{len(made)}"), workers=1, **kw)
        made.append(ctl)
        return ctl

    yield make
    for ctl in made:
        for w in ctl.supervisor.workers if ctl.supervisor else []:
            try:
                os.kill(w.proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        ctl.close()


def _answered(ctl):
    ch = ctl.incoming_call()
    ch.answer()
    return ch


def _worker_ready(ctl) -> bool:
    return all(w.alive and w.ready for w in ctl.supervisor.workers)


def test_worker_death_loses_nothing_and_the_job_ends_with_its_own_cause(solo):
    """record(): "Upon return, this function will return a termination cause."
    Cause: "record ended due to a call hangup."

    Decided: a worker killed mid-job does not end the job: a replacement takes it over
    from the rings (zero-loss failover), the call never sees an error, and the job ends
    later with the cause it would have had, its file holding every sample fed.
    """
    ctl = solo()
    ch = _answered(ctl)
    rec = ch.WholeCallRecorder
    t, box = in_thread(lambda: rec.record("killed.wav"))
    assert wait_for(lambda: rec.state() is RecorderState.RECORDING)
    first = tone(440, 2.5)
    feed_both(ch, first)  # more than one flush (Config.flush_ms, 2 s) reaches the file
    assert wait_for(lambda: os.path.exists(rec._path) and os.path.getsize(rec._path) >= 58 + 8000)
    os.kill(ctl.supervisor.workers[0].proc.pid, signal.SIGKILL)
    second = tone(660, 1.0)
    feed_both(ch, second)
    assert wait_for(lambda: _worker_ready(ctl), 15)
    assert rec.state() is RecorderState.RECORDING
    ch.hang_up()
    t.join(15)
    assert box.get("result") is Cause.HANGUP
    assert rec.cause() is Cause.HANGUP and rec.last_result.error == ""
    data, _ = read(rec.last_result.path)
    assert np.array_equal(data, alaw_exact(np.concatenate([first, second])))  # inbound only; outbound silent
    assert ctl.stats()["restarts"] == 1


def test_start_survives_a_frozen_worker(solo):
    """start(): "This function will block until the recording has started or a timeout has expired."
    start(): "Upon return, this function will return True for success, otherwise False."

    Decided: a worker that makes no progress for `stall_timeout_s` (here SIGSTOP) is
    killed and its jobs, a start in flight included, are taken over: start() returns
    True within its bound and the job records normally.
    """
    ctl = solo(stall_timeout_s=1.0, start_timeout_s=8.0)
    ch = _answered(ctl)
    rec = ch.WholeCallRecorder
    os.kill(ctl.supervisor.workers[0].proc.pid, signal.SIGSTOP)
    t0 = time.monotonic()
    assert rec.start("frozen.wav") is True
    assert time.monotonic() - t0 < 8.0
    assert rec.state() is RecorderState.RECORDING
    feed_both(ch, tone(440, 0.5))
    assert rec.stop() and rec.cause() is Cause.ABORTED
    assert rec.last_result.samples == 4000
    assert ctl.stats()["restarts"] == 1


def test_stop_returns_false_when_the_job_does_not_end_in_time(solo):
    """stop(): "This function will block until the record job terminates or a timeout expires."
    stop(): "Upon return, this method will return True for success, otherwise False."

    A worker frozen for longer than `stop_timeout_s`: stop() returns False and the job
    is still in progress; when the worker resumes, the job ends ABORTED.
    """
    ctl = solo(stop_timeout_s=0.5, stall_timeout_s=30.0)
    ch = _answered(ctl)
    rec = ch.WholeCallRecorder
    assert rec.start("slow.wav")
    feed_both(ch, tone(440, 0.3))
    pid = ctl.supervisor.workers[0].proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        assert rec.stop() is False
        assert 0.5 <= time.monotonic() - t0 < 5
        assert rec.state() is RecorderState.RECORDING and rec.cause() is Cause.NONE
    finally:
        os.kill(pid, signal.SIGCONT)
    assert rec.wait_until_finished(10) is Cause.ABORTED
    assert rec.last_result.samples == 2400


def test_file_that_cannot_be_written_ends_the_job_with_error(solo):
    """Cause: "record has stopped due to an error."
    State: "a record job failed"

    The worker's writes start failing (file size limit, like a full disk): the job ends
    with ERROR naming the failure, and what was written before stays a readable WAV.
    """
    ctl = solo()
    pid = ctl.supervisor.workers[0].proc.pid
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (20000, 20000))
    ch = _answered(ctl)
    rec = ch.WholeCallRecorder
    assert rec.start("big.wav")
    feed_both(ch, tone(440, 5.0))  # past the second 2 s flush, which the limit cuts
    assert rec.wait_until_finished(10) is Cause.ERROR
    assert rec.state() is RecorderState.ERROR
    assert "write failed" in rec.last_result.error
    info = read_info(rec.last_result.path)
    assert info.data_offset + info.data_size <= os.path.getsize(rec.last_result.path) <= 20000
    # Nothing of the failed write is left past what the result says (the sidecar says the same).
    assert os.path.getsize(rec.last_result.path) == rec.last_result.bytes
    data, _ = read(rec.last_result.path)
    assert len(data) == info.data_size and np.abs(data.astype(int)).max() > 1000


def test_closing_the_controller_hangs_up_recording_calls(solo):
    """Cause: "record ended due to a call hangup."

    Shutting the service down hangs up its calls: their jobs end with HANGUP and the
    files are final.
    """
    ctl = solo()
    ch = _answered(ctl)
    rec = ch.WholeCallRecorder
    assert rec.start("closing.wav")
    feed_both(ch, tone(440, 0.5))
    ctl.close()
    assert rec.cause() is Cause.HANGUP
    assert len(read(rec.last_result.path)[0]) == 4000


def test_a_start_given_up_unconfirmed_leaves_no_job_and_no_file(solo):
    """start(): "Upon return, this function will return True for success, otherwise False."

    Decided (DESIGN): start() returns False if the worker does not confirm in a bounded
    time "(and no job is left running)"; README ambiguity 4: state ERROR, cause ERROR, no
    file. A worker frozen past start_timeout_s (stall detection off, as for an opener stuck
    on a slow disk) left the recorder RECORDING (the next start() refused) and made the file
    when it woke (a reviewer's find). The name stays taken until that worker is done."""
    from wholecall.controller import Error

    ctl = solo(stall_timeout_s=30.0, start_timeout_s=0.5)
    ch = _answered(ctl)
    rec = ch.WholeCallRecorder
    pid = ctl.supervisor.workers[0].proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        assert rec.start("late.wav") is False
        assert (rec.state(), rec.cause()) == (RecorderState.ERROR, Cause.ERROR)
        assert "did not confirm the start in 0.5 s" in rec.last_result.error
        with pytest.raises(Error, match="a start of this name was given up"):
            rec.start("late.wav")
        assert rec.start("later.wav") is False  # not "already RECORDING": the recorder is free
    finally:
        os.kill(pid, signal.SIGCONT)
    root = ctl.config.recordings_dir
    wait_for(lambda: not ctl.abandoned_path(os.path.join(root, "late.wav"))
             and not ctl.abandoned_path(os.path.join(root, "later.wav")), 10)
    assert sorted(os.listdir(root)) == []
    assert rec.start("after.wav") is True  # the worker is fine, and so is the recorder
    feed_both(ch, tone(440, 0.2))
    assert rec.stop() and rec.last_result.samples == 1600
    assert ctl.counters.snapshot()["ended"]["ERROR"] == 0  # the given-up starts never ran


def test_a_hang_up_racing_start_raises_hangup_and_leaves_nothing_running(solo):
    """start(): "If the call state is IDLE, this function will raise a Hangup exception."
    A hang-up landing between start()'s check of the call and its job's start found no job
    to end, and the job then ran on the IDLE call for ever (a reviewer's find): the call is
    checked again under the recorder's lock."""
    import inspect
    import sys
    import threading

    from wholecall.controller import Hangup, WholeCallRecorder

    lines, first = inspect.getsourcelines(WholeCallRecorder.start)
    at = first + next(i for i, line in enumerate(lines) if "with self._cond:" in line)
    ctl = solo()
    ch = _answered(ctl)
    rec = ch.WholeCallRecorder

    def tracer(frame, event, arg):
        if event == "line" and frame.f_lineno == at:  # past the first check: the call hangs up now
            sys.settrace(None)
            frame.f_trace = None
            t = threading.Thread(target=ch.hang_up)
            t.start()
            t.join(5)
        return tracer

    sys.settrace(lambda frame, event, arg: tracer if frame.f_code is WholeCallRecorder.start.__code__ else None)
    try:
        with pytest.raises(Hangup):
            rec.start("race.wav")
    finally:
        sys.settrace(None)
    assert rec.state() is RecorderState.IDLE
    assert not any(w["jobs"] for w in ctl.stats()["workers"]) and not os.listdir(ctl.config.recordings_dir)


def test_a_start_whose_file_cannot_be_made_is_not_counted_as_an_ended_recording(solo):
    """start(): "Upon return, this function will return True for success, otherwise False."

    A worker that cannot make the file (a 300-character name: ENAMETOOLONG) fails the
    start: start() False, state ERROR. Such a recording never ran; it was also counted
    among the ended ones (ERROR) and the finalising failures (a reviewer's find)."""
    ctl = solo()
    ch = _answered(ctl)
    rec = ch.WholeCallRecorder
    assert rec.start("n" * 300 + ".wav") is False
    assert (rec.state(), rec.cause()) == (RecorderState.ERROR, Cause.ERROR)
    assert "name too long" in rec.last_result.error.lower()
    snap = ctl.counters.snapshot()
    assert snap["ended"]["ERROR"] == 0 and snap["failed"] == 0
    assert rec.path.endswith("n" * 300 + ".wav")  # what the ERROR is about
    assert rec.start("fine.wav") and rec.stop()
    assert ctl.counters.snapshot()["ended"]["ABORTED"] == 1


def test_a_start_stopped_before_its_worker_confirms_it_still_reports_that_it_started(solo):
    """start(): "Upon return, this function will return True for success, otherwise False."

    A stop() from another thread while start() waits for its worker (here frozen for the
    while): the worker makes the file, then ends the job ABORTED. The recording did start,
    so start() says True; it said False, as for a start that failed (a reviewer's find)."""
    ctl = solo(stall_timeout_s=30.0, start_timeout_s=10.0)
    ch = _answered(ctl)
    rec = ch.WholeCallRecorder
    pid = ctl.supervisor.workers[0].proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        t_start, started = in_thread(lambda: rec.start("stopped-early.wav"))
        wait_for(lambda: rec.state() is RecorderState.RECORDING, 5)
        t_stop, stopped = in_thread(rec.stop)
        time.sleep(0.3)  # the stop is sent while the start is unconfirmed
    finally:
        os.kill(pid, signal.SIGCONT)
    t_start.join(10)
    t_stop.join(10)
    assert started.get("result") is True, started
    assert stopped.get("result") is True and rec.cause() is Cause.ABORTED, stopped
    assert os.path.exists(rec.last_result.path)


def test_a_confirmation_held_up_past_the_start_deadline_still_has_its_file_removed(solo):
    """start(): "Upon return, this function will return True for success, otherwise False."

    The I/O thread took the recorder from the job table, then lost the CPU (a second here)
    while start() gave the job up: the recorder refused the late confirmation, the file its
    worker made was not noted, and it stayed on the disk of a start that said False (a
    reviewer's find)."""
    ctl = solo(start_timeout_s=0.5)
    ch = _answered(ctl)
    rec = ch.WholeCallRecorder
    on_started = rec._on_started

    def held_up(ev):
        time.sleep(1.0)
        return on_started(ev)
    rec._on_started = held_up
    assert rec.start("held-up.wav") is False
    root = ctl.config.recordings_dir
    wait_for(lambda: not ctl.abandoned_path(os.path.join(root, "held-up.wav")), 10)
    assert os.listdir(root) == []


def test_a_start_that_failed_while_the_finishers_were_busy_keeps_its_own_error(solo):
    """start(): "Upon return, this function will return True for success, otherwise False."

    The worker could not make the file (a 300-character name) but the finisher threads were
    busy past the start deadline: start() gave up with "did not confirm", left the name
    refused for ever and on_end never called (a reviewer's find). It waits for that end."""
    ctl = solo(start_timeout_s=0.3, finisher_threads=1)
    ch = _answered(ctl)
    rec = ch.WholeCallRecorder
    ctl.finish(time.sleep, 1.0)  # the only finisher, busy
    results = []
    rec.on_end = results.append
    assert rec.start("m" * 300 + ".wav") is False
    assert "name too long" in rec.last_result.error.lower(), rec.last_result.error
    assert not ctl._abandoned and [r.cause for r in results] == [Cause.ERROR]
