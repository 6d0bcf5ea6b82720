"""Exceptions and guards: call state (Hangup / Error), already RECORDING, and the channel
activities a recorder cannot be started under (play(), play_dtmf(), connect(),
conferences, music on hold), which are allowed, and recorded, once it runs."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conformance_helpers import feed, feed_both, files_under, has_tone, read, silence, tone, write_wav

from wholecall.controller import Cause, Error, Hangup, RecorderState
from wholecall.controller.states import CallState

FUNCS = ("record", "start", "stop", "wait_until_finished")


def _call(rec, func: str, filename: str):
    if func in ("record", "start"):
        return getattr(rec, func)(filename)
    return getattr(rec, func)()


def _unanswered(service, how: str):
    if how == "CALL_INCOMING":
        return service.incoming_call()
    if how == "RING_INCOMING":
        ch = service.incoming_call()
        ch.ring()
        return ch
    ch = service.channel()
    ch.call(answer=False)
    return ch


@pytest.mark.parametrize("func", FUNCS)
def test_idle_call_raises_hangup(service, rec_dir, sent, name, func):
    """record(): "If the call state is IDLE, this function will raise a Hangup exception."
    start(): "If the call state is IDLE, this function will raise a Hangup exception."
    stop(): "If the call state is IDLE, this function will raise a Hangup exception."
    wait_until_finished(): "If the call state is IDLE, this function will raise a Hangup exception."

    Both kinds of IDLE: a channel with no call yet, and a call that has hung up.
    """
    before = files_under(rec_dir)
    never = service.channel()
    hung = service.incoming_call()
    hung.answer()
    hung.hang_up()
    try:
        for ch in (never, hung):
            assert ch.state() is CallState.IDLE
            with pytest.raises(Hangup):
                _call(ch.WholeCallRecorder, func, name())
            assert ch.WholeCallRecorder.state() is RecorderState.IDLE
    finally:
        never.close()
        hung.close()
    assert not sent and files_under(rec_dir) == before


@pytest.mark.parametrize("state", ["CALL_INCOMING", "RING_INCOMING", "CALL_CONNECTING"])
@pytest.mark.parametrize("func", FUNCS)
def test_unanswered_call_raises_error(service, rec_dir, sent, name, func, state):
    """record(): "If the call state is not IDLE but also not ANSWERED, this function will raise an Error exception."
    start(): "If the call state is not IDLE but also not ANSWERED, this function will raise an Error exception."
    stop(): "If the call state is not IDLE but also not ANSWERED, this function will raise a Error exception."
    wait_until_finished(): "If the call state is not IDLE but also not ANSWERED, this function will raise an Error exception."
    """
    before = files_under(rec_dir)
    ch = _unanswered(service, state)
    try:
        assert ch.state().value == state
        with pytest.raises(Error, match="not ANSWERED") as e:
            _call(ch.WholeCallRecorder, func, name())
        assert not isinstance(e.value, Hangup)
    finally:
        ch.close()
    assert not sent and files_under(rec_dir) == before


def test_recorder_is_usable_once_answered(service, name):
    """start(): "If the call state is not IDLE but also not ANSWERED, this function will raise an Error exception."

    The same channel, after its outbound call is answered, records.
    """
    ch = _unanswered(service, "CALL_CONNECTING")
    try:
        with pytest.raises(Error):
            ch.WholeCallRecorder.start(name())
        ch.remote_answer()
        assert ch.WholeCallRecorder.start(name())
        assert ch.WholeCallRecorder.stop()
    finally:
        ch.close()


@pytest.mark.parametrize("func", ["record", "start"])
def test_already_recording_raises_error_and_leaves_the_job_alone(call, rec_dir, name, func):
    """record(): "If the whole call recorder state is already RECORDING, this function will raise an Error exception."
    start(): "If the whole call record state is already RECORDING, this function will raise an Error exception."
    """
    rec = call.WholeCallRecorder
    first, second = name(), name()
    assert rec.start(first)
    feed_both(call, tone(440, 0.3))
    with pytest.raises(Error, match="already RECORDING"):
        getattr(rec, func)(second)
    assert not os.path.exists(os.path.join(rec_dir, second))
    assert rec.state() is RecorderState.RECORDING and rec.cause() is Cause.NONE
    feed_both(call, tone(440, 0.3))
    assert rec.stop()
    assert rec.last_result.samples == 4800  # the first job was not disturbed


# -- activities ---------------------------------------------------------------------------


@pytest.fixture
def prompt(tmp_path):
    """A 3 s WAV prompt at 1300 Hz."""
    return write_wav(str(tmp_path / "prompt.wav"), tone(1300, 3.0))


def _begin_activity(kind: str, service, call, other_call, prompt):
    """Start the activity; returns a function that ends it."""
    if kind == "play()":
        call.FilePlayer.start(prompt)
        return call.FilePlayer.stop
    if kind == "play_dtmf()":
        call.DTMFPlayer.start("1234567890*#")
        return call.DTMFPlayer.stop
    if kind == "connected":
        call.connect(other_call)
        return call.disconnect
    if kind == "conference":
        conf = service.conference("guards")
        conf.add(call)
        return lambda: conf.remove(call)
    moh = service.music_on_hold("guards")
    moh.add(call)
    return lambda: moh.remove(call)


ACTIVITIES = ["play()", "play_dtmf()", "connected", "conference", "music on hold"]


@pytest.mark.parametrize("func", ["record", "start"])
@pytest.mark.parametrize("kind", ACTIVITIES)
def test_cannot_start_during_an_activity(service, call, other_call, rec_dir, sent, prompt, name, kind, func):
    """record(): "A whole call recorder cannot be started if the channel is currently using a
    transmitter function such as play() or play_dtmf()."
    start(): "A whole call recorder cannot be started if the channel is currently using a
    transmitter function such as play() or play_dtmf()."
    record(): "Additionally, a whole call recorder cannot be started if the call channel is
    connected to another channel, if it is part of a conference or if it has been added to a
    music on hold resource."
    start(): "Additionally, a whole call recorder cannot be started if the call channel is
    connected to another channel, if it is part of a conference or if it has been added to a
    music on hold resource."

    Error names the activity; nothing is started or created; once the activity is over
    the recorder starts.
    """
    rec = call.WholeCallRecorder
    end = _begin_activity(kind, service, call, other_call, prompt)
    before = files_under(rec_dir)
    with pytest.raises(Error, match=kind.replace("(", r"\(").replace(")", r"\)")):
        getattr(rec, func)(name())
    assert rec.state() is RecorderState.IDLE and rec.cause() is Cause.NONE
    assert not sent and files_under(rec_dir) == before
    end()
    assert rec.start(name())
    assert rec.stop()


def test_connected_peer_cannot_start_either(call, other_call, name):
    """start(): "Additionally, a whole call recorder cannot be started if the call channel is
    connected to another channel, if it is part of a conference or if it has been added to a
    music on hold resource."
    """
    assert call.WholeCallRecorder.start(name())
    call.connect(other_call)
    with pytest.raises(Error, match="connected"):
        other_call.WholeCallRecorder.start(name())
    call.disconnect()
    assert call.WholeCallRecorder.stop()


def test_play_while_recording_is_recorded(call, prompt, name):
    """start(): "The whole call recorder must be started before these other functions are used."

    FilePlayer.play() / CallChannel.play() stream the WAV into the outbound leg.
    """
    rec = call.WholeCallRecorder
    assert rec.start(name())
    feed(call, silence(0.2), None)
    call.play(prompt, realtime=False)
    assert rec.state() is RecorderState.RECORDING
    assert rec.stop()
    data, _ = read(rec.last_result.path)
    assert len(data) >= 3 * 8000 and has_tone(data, 1300)


def test_play_dtmf_while_recording_is_recorded(call, name):
    """record(): "The whole call recorder must be started before these other functions are used."

    With dtmf_elim=False the digits the channel sends are in the file (Q.23 pairs).
    """
    rec = call.WholeCallRecorder
    assert rec.start(name(), dtmf_elim=False)
    call.play_dtmf("5", tone_ms=200, realtime=False)
    assert rec.stop()
    data, _ = read(rec.last_result.path)
    assert has_tone(data, 770) and has_tone(data, 1336)
    assert not has_tone(data, 697) and not has_tone(data, 1477)


def test_connect_while_recording_records_the_other_party(call, other_call, name):
    """start(): "The whole call recorder must be started before these other functions are used."

    connect() bridges the calls: the other caller's audio reaches this call's outbound
    leg (recorded), and this caller's reaches the other call.
    """
    rec = call.WholeCallRecorder
    assert rec.start(name())
    call.connect(other_call)
    for i in range(0, 8000, 160):
        call.inbound.write(tone(500, 1.0)[i:i + 160])
        other_call.inbound.write(tone(1500, 1.0)[i:i + 160])
    call.disconnect()
    assert rec.stop()
    data, _ = read(rec.last_result.path)
    assert has_tone(data, 500) and has_tone(data, 1500)


def test_conference_while_recording_records_the_members(service, call, other_call, name):
    """record(): "The whole call recorder must be started before these other functions are used."
    """
    rec = call.WholeCallRecorder
    assert rec.start(name())
    conf = service.conference("recorded")
    conf.add(call)
    conf.add(other_call)
    x = tone(1700, 1.0)
    for i in range(0, len(x), 160):
        other_call.inbound.write(x[i:i + 160])
        call.inbound.write(np.zeros(160, np.int16))
    conf.remove(other_call)
    conf.remove(call)
    assert rec.stop()
    data, _ = read(rec.last_result.path)
    assert has_tone(data, 1700)


def test_music_on_hold_while_recording_is_recorded(service, call, name):
    """start(): "The whole call recorder must be started before these other functions are used."
    """
    rec = call.WholeCallRecorder
    assert rec.start(name())
    moh = service.music_on_hold("hold", audio=tone(620, 1.0))
    moh.add(call)
    feed(call, silence(0.5), None)  # the caller is quiet while on hold
    import time

    time.sleep(0.5)  # music on hold is paced at real time
    moh.remove(call)
    assert rec.stop()
    data, _ = read(rec.last_result.path)
    assert has_tone(data, 620)


def test_hang_up_ends_activities_and_recording(call, other_call, prompt, name):
    """Cause: "record ended due to a call hangup."
    """
    rec = call.WholeCallRecorder
    assert rec.start(name())
    call.FilePlayer.start(prompt)
    call.connect(other_call)
    call.hang_up()
    assert rec.cause() is Cause.HANGUP
    assert not call.FilePlayer.playing and call.activities.busy() == []
    assert other_call.activities.busy() == []


@pytest.mark.parametrize("func", ["record", "start"])
def test_hangup_comes_before_argument_errors(service, func):
    """record(): "If the call state is IDLE, this function will raise a Hangup exception."
    start(): "If the call state is IDLE, this function will raise a Hangup exception."

    Decided: the call state is checked first; an IDLE call with bad arguments raises Hangup.
    """
    ch = service.channel()
    try:
        kw = {"rate": 5, "max_bytes": -1}
        if func == "record":
            kw["seconds_timeout"] = -1
        with pytest.raises(Hangup):
            getattr(ch.WholeCallRecorder, func)("", **kw)
    finally:
        ch.close()
