"""The recorder's I/O-free core, driven in memory with explicit times: no processes, no sleeps."""

from __future__ import annotations

import pytest

from wholecall.controller.recorder_core import JobReport, RecorderCore, StopRequest
from wholecall.controller.states import Phase, RecorderState, TransitionError
from wholecall.protocol import Cause


def report(job_id: int, cause: Cause, error: str = "") -> JobReport:
    return JobReport(job_id, cause, 100, 50, 0.00625, error)


def test_a_job_runs_from_start_to_its_reported_end():
    core = RecorderCore("Channel(1)")
    assert (core.state(), core.cause()) == (RecorderState.IDLE, Cause.NONE)
    core.begin(7, now=100.0, timeout_s=10.0)
    assert core.state() is RecorderState.RECORDING and core.cause() is Cause.NONE and core.start_deadline == 110.0
    assert core.started(7) and core.phase is Phase.RECORDING and core.start_deadline is None
    assert core.request_stop(Cause.ABORTED) == StopRequest(7, Cause.ABORTED)
    assert core.request_stop(Cause.HANGUP) is None  # the first request's cause stands
    assert core.ended(report(7, Cause.ABORTED))
    assert (core.state(), core.cause(), core.last.bytes) == (RecorderState.IDLE, Cause.ABORTED, 100)


def test_reports_about_other_jobs_are_ignored():
    core = RecorderCore("Channel(1)")
    core.begin(7, now=0.0, timeout_s=10.0)
    assert not core.started(8) and core.phase is Phase.STARTING
    assert not core.ended(report(6, Cause.SIZE)) and core.busy
    assert core.started(7)
    assert not core.started(7)  # a duplicate confirmation changes nothing
    assert core.ended(report(7, Cause.SILENCE)) and core.cause() is Cause.SILENCE
    assert not core.ended(report(7, Cause.ERROR)) and core.cause() is Cause.SILENCE  # a late duplicate


def test_an_unconfirmed_start_is_given_up_at_its_deadline_and_ends_in_error():
    core = RecorderCore("Channel(2)")
    core.begin(3, now=50.0, timeout_s=10.0)
    assert core.poll(59.999) is None
    assert core.poll(60.0) == StopRequest(3, Cause.ERROR)
    assert core.poll(61.0) is None and core.phase is Phase.STOPPING
    assert core.ended(report(3, Cause.ERROR, "worker lost"))
    assert core.state() is RecorderState.ERROR and core.cause() is Cause.ERROR


def test_a_refused_start_is_a_failed_job_and_the_next_start_clears_it():
    core = RecorderCore("Channel(3)")
    core.refuse(report(0, Cause.ERROR, "no worker is available to record"))
    assert (core.state(), core.cause()) == (RecorderState.ERROR, Cause.ERROR)
    core.begin(4, now=0.0, timeout_s=1.0)
    assert core.state() is RecorderState.RECORDING and core.cause() is Cause.NONE


def test_starting_twice_is_refused_by_the_machine():
    core = RecorderCore("Channel(4)")
    core.begin(1, now=0.0, timeout_s=1.0)
    with pytest.raises(TransitionError, match='cannot start in state "STARTING"'):
        core.begin(2, now=0.0, timeout_s=1.0)


def test_an_end_reported_before_the_confirmation_ends_the_job():
    """The worker may fail a job before confirming it (file cannot be created)."""
    core = RecorderCore("Channel(5)")
    core.begin(9, now=0.0, timeout_s=1.0)
    assert core.ended(report(9, Cause.ERROR, "cannot create"))
    assert core.state() is RecorderState.ERROR and core.start_deadline is None
