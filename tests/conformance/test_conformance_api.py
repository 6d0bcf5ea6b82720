"""The recorder as an object: the channel property, the State and Cause classes, state()
and cause(), the explicit state machine, and the spec's usage examples run as written."""

from __future__ import annotations

import ast
import os
import threading

import numpy as np
import pytest
from conformance_helpers import DELAY, FRAME, feed_both, in_thread, silence, tone, wait_for
from conftest import make_controller

import wholecall.controller as api
from wholecall.controller import Cause, RecorderState
from wholecall.controller.states import _TRANSITIONS, Phase, RecorderMachine, TransitionError


def test_channel_has_a_whole_call_recorder_property(service):
    """UASWholeCallFileRecorder: "The CallChannel object has a public property called WholeCallRecorder of this type."
    UASWholeCallFileRecorder: "The CallChannel object uses the class described below to provide
    whole call recording functionality."
    """
    a, b = service.incoming_call(), service.incoming_call()
    try:
        assert isinstance(a.WholeCallRecorder, api.UASWholeCallFileRecorder)
        assert api.UASWholeCallFileRecorder is api.WholeCallRecorder
        assert a.WholeCallRecorder is a.WholeCallRecorder  # one recorder per channel
        assert a.WholeCallRecorder is not b.WholeCallRecorder
        for method in ("record", "start", "stop", "state", "cause", "wait_until_finished"):
            assert callable(getattr(a.WholeCallRecorder, method))
    finally:
        a.close()
        b.close()


def test_state_and_cause_classes(call):
    """State: "recording is in progress."
    State: "recording is not in progress."
    State: "a record job failed"
    Cause: "record has stopped due to an error."
    Cause: "record has stopped due to a silence timeout."
    Cause: "record has stopped due to the maximum file size being reached."
    Cause: "record has been aborted (probably because stop was called)."
    Cause: "record ended due to a call hangup."
    Cause: "record stopped because a timer has expired."
    Cause: "record is in progress or record has not occurred."

    The members are reachable as the spec's examples use them (through the recorder)
    and are exactly the spec's lists.
    """
    rec = call.WholeCallRecorder
    assert {s.name for s in rec.State} == {"RECORDING", "IDLE", "ERROR"}
    assert {c.name for c in rec.Cause} == {"ERROR", "SILENCE", "SIZE", "ABORTED", "HANGUP", "TIMEOUT", "NONE"}
    assert rec.State is api.RecorderState and rec.Cause is api.Cause
    assert type(call).__name__ == "CallChannel"


def test_state_tracks_the_job(call, name):
    """state(): "This function will return the current state."
    state(): "When a particular job is busy, its status can be tracked by calling this function."
    state(): "If this function is called when no job is in progress, the state will be IDLE."
    State: "The record state can be checked to determine whether a record job is in progress."
    State: "When a record job ends, the record termination cause can be checked to find the reason why."
    """
    rec = call.WholeCallRecorder
    assert rec.state() is RecorderState.IDLE
    assert rec.start(name(), milliseconds_max_silence=200)
    seen = set()
    for _ in range(5):
        feed_both(call, tone(440, 0.1))
        seen.add(rec.state())
    assert seen == {RecorderState.RECORDING}
    feed_both(call, silence(0.4))
    assert wait_for(lambda: rec.state() is not RecorderState.RECORDING)
    assert rec.state() is RecorderState.IDLE and rec.cause() is Cause.SILENCE


def test_every_end_leaves_idle_or_error_with_a_cause(call, name):
    """Cause: "Once a record job has ended and the record state has returned to IDLE or ERROR,
    the cause will be one of these."
    cause(): "When a particular job terminates, the reason why can be requested by calling this function."
    """
    rec = call.WholeCallRecorder
    outcomes = []
    # ABORTED
    assert rec.start(name())
    rec.stop()
    outcomes.append((rec.state(), rec.cause()))
    # SILENCE
    assert rec.start(name(), milliseconds_initial_silence=100)
    feed_both(call, silence(0.3))
    rec.wait_until_finished(5)
    outcomes.append((rec.state(), rec.cause()))
    # SIZE
    assert rec.start(name(), max_bytes=100)
    feed_both(call, tone(440, 0.2))
    rec.wait_until_finished(5)
    outcomes.append((rec.state(), rec.cause()))
    # TIMEOUT
    outcomes_cause = rec.record(name(), seconds_timeout=0.1)
    outcomes.append((rec.state(), outcomes_cause))
    # ERROR
    assert rec.start("z" * 300) is False
    outcomes.append((rec.state(), rec.cause()))
    assert outcomes == [
        (RecorderState.IDLE, Cause.ABORTED), (RecorderState.IDLE, Cause.SILENCE), (RecorderState.IDLE, Cause.SIZE),
        (RecorderState.IDLE, Cause.TIMEOUT), (RecorderState.ERROR, Cause.ERROR),
    ]


# -- the state machine: one table, no other writer ---------------------------------------------

EVENTS = ("start", "started", "stop", "ended")


@pytest.mark.parametrize("phase", list(Phase))
@pytest.mark.parametrize("event", EVENTS)
def test_state_machine_table(phase, event):
    """State: "The record state can be checked to determine whether a record job is in progress."
    cause(): "If this function is called while a job is still running, the cause will be NONE."

    Every (phase, event) pair either follows the table in controller/states.py or is
    refused; the public state is RECORDING exactly while a job is in progress.
    """
    m = RecorderMachine("test")
    m.phase = phase
    nxt = _TRANSITIONS[phase].get(event)
    if nxt is None:
        with pytest.raises(TransitionError, match=phase.value):
            m.fire(event, cause=Cause.ABORTED)
        assert m.phase is phase
        return
    m.fire(event, job_id=7, cause=Cause.ABORTED)
    assert m.phase is nxt
    busy = nxt in (Phase.STARTING, Phase.RECORDING, Phase.STOPPING)
    assert m.busy is busy and (nxt.public is RecorderState.RECORDING) is busy


def test_state_machine_error_end_and_restart():
    """State: "a record job failed"
    Cause: "Once a record job has ended and the record state has returned to IDLE or ERROR,
    the cause will be one of these."
    """
    m = RecorderMachine("test")
    m.fire("start", 1)
    m.fire("started")
    m.fire("ended", cause=Cause.ERROR)
    assert m.phase.public is RecorderState.ERROR and m.cause is Cause.ERROR
    m.fire("start", 2)
    assert m.phase.public is RecorderState.RECORDING and m.cause is Cause.NONE
    m.fire("ended", cause=Cause.HANGUP)
    assert m.phase.public is RecorderState.IDLE and m.cause is Cause.HANGUP


def test_state_machine_is_the_only_writer_of_state():
    """state(): "This function will return the current state."

    The recorder's phase and cause are assigned in controller/states.py only; every
    other module goes through `RecorderMachine.fire`.
    """
    root = os.path.dirname(api.__file__)
    offenders = []
    for fn in sorted(os.listdir(root)):
        if not fn.endswith(".py") or fn == "states.py":
            continue
        tree = ast.parse(open(os.path.join(root, fn)).read())
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
                continue
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            # Writing a field of a recorder's machine (`self._m.phase = ...`) ...
            machine_field = any(isinstance(t, ast.Attribute) and isinstance(t.value, ast.Attribute)
                                and t.value.attr == "_m" for t in targets)
            # ... or storing a Phase anywhere.
            phase_value = node.value is not None and any(
                isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "Phase"
                for n in ast.walk(node.value))
            if machine_field or phase_value:
                offenders.append(f"{fn}:{node.lineno}")
    assert not offenders


# -- the spec's usage examples, run as written ---------------------------------------------------


@pytest.fixture
def channel(tmp_path):
    """A fresh controller per example: the examples all record to "recfile"."""
    ctl = make_controller(str(tmp_path / "rec"), workers=1)
    ch = ctl.incoming_call()
    ch.answer()
    yield ch
    ctl.close()


def _talk_then_silence(channel, seconds_silence: float = 2.0 + (DELAY + FRAME) / 8000) -> threading.Thread:
    """A caller who says something, then is silent (written once the job runs)."""

    def caller():
        wait_for(lambda: channel.WholeCallRecorder.state() == channel.WholeCallRecorder.State.RECORDING)
        wait_for(lambda: channel.WholeCallRecorder._core.phase is Phase.RECORDING)
        feed_both(channel, np.concatenate([tone(440, 0.5), silence(seconds_silence)]))

    t, _ = in_thread(caller)
    return t


def test_usage_example_record(channel):
    """record(): "Usage example:" (record until finished due to two seconds of silence)
    record(): "This function will block until the recording has finished or a timeout
    (seconds_timeout) has expired."
    record(): "Upon return, this function will return a termination cause."
    Cause: "record has stopped due to a silence timeout."
    """
    t = _talk_then_silence(channel)
    taken = False
    # record until finished due to two seconds of silence
    cause = channel.WholeCallRecorder.record(filename="recfile",
                                             milliseconds_max_silence=2000)
    if cause == channel.WholeCallRecorder.Cause.SILENCE:
        # the recording job was terminated because of two seconds of silence
        taken = True
    t.join(5)
    assert taken
    assert abs(channel.WholeCallRecorder.last_result.samples - (4000 + 1600)) <= 160


def test_usage_example_start(channel):
    """start(): "Usage example:"
    start(): "Upon return, this function will return True for success, otherwise False."
    wait_until_finished(): "Wait until the current whole call recording job is complete."
    """
    t = _talk_then_silence(channel)
    taken = False
    # Start a record job that will terminate on 2 seconds of silence.
    if channel.WholeCallRecorder.start(filename="recfile", milliseconds_max_silence=2000) == True:  # noqa: E712 - the spec's own example, as written
        # While recording, we can do something else; then wait until recording is complete.
        cause = channel.WholeCallRecorder.wait_until_finished()
        if cause == channel.WholeCallRecorder.Cause.SILENCE:
            # recording stopped due to 2 seconds of silence
            taken = True
    t.join(5)
    assert taken


def test_usage_example_wait_until_finished(channel):
    """wait_until_finished(): "Usage example:"
    wait_until_finished(): "Upon return, this function will return a termination cause."
    """
    t = _talk_then_silence(channel)
    taken = False
    # Start a record job that will terminate on 2 seconds of silence.
    # The spec's own example, as written (hence the comparison with True).
    if channel.WholeCallRecorder.start(filename="recfile",  # noqa: E712
                                       milliseconds_max_silence=2000) == True:
        # While recording, we can do something else
        # then wait until recording is complete.
        cause = channel.WholeCallRecorder.wait_until_finished()
        if cause == channel.WholeCallRecorder.Cause.SILENCE:
            # the recording job was terminated because of silence
            taken = True
    t.join(5)
    assert taken


def test_usage_example_stop(channel):
    """stop(): "Usage example:"
    stop(): "Stop a whole call record job."
    """
    # Start a record job.
    if channel.WholeCallRecorder.start(filename="recfile") == True:  # noqa: E712
        # While recording, we can do something else; then stop the recording.
        feed_both(channel, tone(440, 0.3))
        channel.WholeCallRecorder.stop()
    assert channel.WholeCallRecorder.cause() is Cause.ABORTED
    assert channel.WholeCallRecorder.last_result.samples == 2400


def test_usage_examples_state_and_cause(channel):
    """State: "Usage example:"
    Cause: "Usage example:"
    """
    branches = []
    assert channel.WholeCallRecorder.start(filename="recfile", milliseconds_max_silence=300)
    state = channel.WholeCallRecorder.state()
    if state == channel.WholeCallRecorder.State.RECORDING:
        # recording a call in progress
        branches.append("recording")
    feed_both(channel, np.concatenate([tone(440, 0.3), silence(0.5)]))
    channel.WholeCallRecorder.wait_until_finished(5)
    state = channel.WholeCallRecorder.state()
    if state != channel.WholeCallRecorder.State.RECORDING:
        # recording a call has terminated
        cause = channel.WholeCallRecorder.cause()
        if cause == channel.WholeCallRecorder.Cause.SILENCE:
            # recording stopped due to silence
            branches.append("silence")
    assert branches == ["recording", "silence"]
