"""Causes ABORTED, HANGUP, TIMEOUT, NONE and ERROR (file cannot be created), and the
blocking behaviour of record(), start(), stop() and wait_until_finished(), against a
real controller and its workers. SILENCE and SIZE have their own modules; worker
deaths are in test_conformance_failures.py."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from conformance_helpers import (
    FRAME,
    alaw_exact,
    feed,
    files_under,
    in_thread,
    mix,
    read,
    silence,
    tone,
    wait_for,
)

from wholecall.controller import Cause, RecorderState
from wholecall.controller.states import CallState
from wholecall.formats.wav import read_info
from wholecall.protocol import StartJob


def test_stop_aborts_and_returns_true_once_the_file_is_final(call, name):
    """stop(): "Stop a whole call record job."
    stop(): "This function will block until the record job terminates or a timeout expires."
    stop(): "Upon return, this method will return True for success, otherwise False."
    Cause: "record has been aborted (probably because stop was called)."

    Decided: everything written to the legs before stop() is in the file, and the file
    is final (header sizes exact) when stop() returns.
    """
    rec = call.WholeCallRecorder
    a, b = tone(440, 1.0), tone(1000, 1.0)
    assert rec.start(name()) is True
    feed(call, a, b)
    assert rec.stop() is True
    # Checked right after the return: no waiting for the worker.
    assert rec.state() is RecorderState.IDLE and rec.cause() is Cause.ABORTED
    path = rec.last_result.path
    info = read_info(path)
    assert info.data_size == info.file_size - info.data_offset == 8000  # header agrees with the data
    data, rate = read(path)
    assert rate == 8000 and np.array_equal(data, alaw_exact(mix(a, b)))


@pytest.mark.parametrize("samples", [4000, 4321, 1])
def test_audio_written_before_stop_is_in_the_file_exactly(call, name, samples):
    """stop(): "Stop a whole call record job."
    Cause: "record has been aborted (probably because stop was called)."

    Decided (DESIGN): audio written to a leg before stop() was called is in the file,
    to the sample, also when it ends inside a 20 ms frame.
    """
    rec = call.WholeCallRecorder
    assert rec.start(name())
    x = tone(700, samples / 8000 + 0.01)[:samples]
    feed(call, x, x)
    assert rec.stop()
    data, _ = read(rec.last_result.path)
    assert len(data) == samples
    assert np.array_equal(data, alaw_exact(mix(x, x)))


def test_audio_before_start_is_not_recorded(call, name):
    """start(): "Begin the recording of a media file."

    The recording begins when start() is called: audio the legs carried before is not
    in the file.
    """
    rec = call.WholeCallRecorder
    feed(call, tone(300, 1.0), tone(300, 1.0))
    assert rec.start(name())
    b = tone(900, 0.5)
    feed(call, b, None)
    assert rec.stop()
    data, _ = read(rec.last_result.path)
    assert np.array_equal(data, alaw_exact(b))


def test_hangup_ends_the_job_with_hangup_and_a_final_file(call, name):
    """Cause: "record ended due to a call hangup."

    Decided: hang_up() ends the job with HANGUP, the audio written before it is in the
    file, and the file is final when hang_up() returns.
    """
    rec = call.WholeCallRecorder
    assert rec.start(name())
    x = tone(500, 0.6)
    feed(call, x, None)
    call.hang_up()
    assert call.state() is CallState.IDLE
    assert rec.state() is RecorderState.IDLE and rec.cause() is Cause.HANGUP
    data, _ = read(rec.last_result.path)
    assert np.array_equal(data, alaw_exact(x))


def test_hangup_while_record_blocks_returns_hangup(call, name):
    """record(): "This function will block until the recording has finished or a timeout
    (seconds_timeout) has expired."
    record(): "Upon return, this function will return a termination cause."
    Cause: "record ended due to a call hangup."
    """
    rec = call.WholeCallRecorder
    t, box = in_thread(lambda: rec.record(name()))
    assert wait_for(lambda: rec.state() is RecorderState.RECORDING)
    feed(call, tone(400, 0.3), None)
    time.sleep(0.2)
    assert t.is_alive()  # still blocked: nothing has ended the job
    call.hang_up()
    t.join(10)
    assert box.get("result") is Cause.HANGUP
    assert len(read(rec.last_result.path)[0]) == 2400


def test_record_seconds_timeout_ends_the_job_with_timeout(call, name):
    """record(): "the amount of time allocated to the record job. Default is None seconds (no timeout)."
    record(): "This function will block until the recording has finished or a timeout
    (seconds_timeout) has expired."
    Cause: "record stopped because a timer has expired."

    Decided: seconds_timeout is wall-clock time; its expiry stops the job with cause
    TIMEOUT and a valid, finalised file holding the audio written until then.
    """
    rec = call.WholeCallRecorder
    x = tone(600, 0.5)

    def producer():
        assert wait_for(lambda: rec.state() is RecorderState.RECORDING)
        feed(call, x, x)

    t, box = in_thread(producer)
    t0 = time.monotonic()
    cause = rec.record(name(), seconds_timeout=0.8)
    elapsed = time.monotonic() - t0
    t.join(5)
    assert "error" not in box
    assert cause is Cause.TIMEOUT and rec.cause() is Cause.TIMEOUT
    assert rec.state() is RecorderState.IDLE
    assert elapsed >= 0.8
    data, _ = read(rec.last_result.path)
    assert np.array_equal(data, alaw_exact(mix(x, x)))


def test_record_without_timeout_waits_for_the_end(call, name):
    """record(): "the amount of time allocated to the record job. Default is None seconds (no timeout)."
    record(): "Upon return, this function will return a termination cause."
    """
    rec = call.WholeCallRecorder
    t, box = in_thread(lambda: rec.record(name()))
    assert wait_for(lambda: rec.state() is RecorderState.RECORDING)
    time.sleep(0.5)
    assert t.is_alive() and rec.cause() is Cause.NONE
    assert rec.stop()
    t.join(5)
    assert box["result"] is Cause.ABORTED


def test_wait_until_finished_timeout_returns_timeout_and_the_job_goes_on(call, name):
    """wait_until_finished(): "If the timeout does expire, a cause of TIMEOUT will be returned."
    wait_until_finished(): "This function will block until the recorder terminates or the timeout expires."
    Cause: "record stopped because a timer has expired."

    Decided: only the wait ends; the job keeps recording (state RECORDING, cause NONE).
    """
    rec = call.WholeCallRecorder
    assert rec.start(name())
    feed(call, tone(300, 0.4), None)
    t0 = time.monotonic()
    assert rec.wait_until_finished(0.4) is Cause.TIMEOUT
    assert time.monotonic() - t0 >= 0.4
    assert rec.wait_until_finished(0) is Cause.TIMEOUT
    assert rec.state() is RecorderState.RECORDING and rec.cause() is Cause.NONE
    feed(call, tone(300, 0.4), None)  # still recording
    assert rec.stop()
    assert rec.cause() is Cause.ABORTED
    assert len(read(rec.last_result.path)[0]) == 6400


def test_wait_until_finished_default_is_120_seconds(call):
    """wait_until_finished(): "wait_until_finished(seconds_timeout=120)"
    wait_until_finished(): "the amount of time allocated to wait for the record job to
    terminate. Default is 120 seconds."
    """
    import inspect

    sig = inspect.signature(call.WholeCallRecorder.wait_until_finished)
    assert list(sig.parameters) == ["seconds_timeout"]
    assert sig.parameters["seconds_timeout"].default == 120


def test_wait_until_finished_none_waits_until_the_job_ends(call, name):
    """wait_until_finished(): "Giving a value of None for seconds_timeout will enable an infinite wait."
    wait_until_finished(): "Wait until the current whole call recording job is complete."
    wait_until_finished(): "Upon return, this function will return a termination cause."
    """
    rec = call.WholeCallRecorder
    assert rec.start(name(), milliseconds_max_silence=500)
    t, box = in_thread(lambda: rec.wait_until_finished(None))
    time.sleep(0.6)
    assert t.is_alive()
    feed(call, np.concatenate([tone(440, 0.4), silence(0.6)]), None)
    t.join(10)
    assert box["result"] is Cause.SILENCE


def test_wait_until_finished_without_a_job_returns_the_last_cause(call, name):
    """wait_until_finished(): "Upon return, this function will return a termination cause."
    Cause: "record is in progress or record has not occurred."
    """
    rec = call.WholeCallRecorder
    assert rec.wait_until_finished(0) is Cause.NONE  # no job has occurred
    assert rec.start(name())
    assert rec.stop()
    t0 = time.monotonic()
    assert rec.wait_until_finished() is Cause.ABORTED
    assert time.monotonic() - t0 < 1.0  # nothing to wait for


def test_cause_none_before_any_job_and_while_running(call, name):
    """Cause: "record is in progress or record has not occurred."
    cause(): "If this function is called while a job is still running, the cause will be NONE."
    cause(): "This function will return a cause."
    cause(): "When a particular job terminates, the reason why can be requested by calling this function."
    """
    rec = call.WholeCallRecorder
    assert rec.cause() is Cause.NONE
    assert rec.start(name())
    assert rec.cause() is Cause.NONE
    feed(call, tone(300, 0.2), None)
    assert rec.cause() is Cause.NONE
    assert rec.stop()
    assert isinstance(rec.cause(), Cause) and rec.cause() is Cause.ABORTED
    assert rec.start(name())
    assert rec.cause() is Cause.NONE  # a new job clears the last one's cause
    assert rec.stop()


def test_stop_when_not_recording_returns_true(call, name):
    """stop(): "If the whole call recorder state is not RECORDING, this function will simply return True."
    """
    rec = call.WholeCallRecorder
    assert rec.stop() is True  # before any job
    assert rec.cause() is Cause.NONE and rec.state() is RecorderState.IDLE
    assert rec.start(name())
    assert rec.stop() is True
    assert rec.stop() is True  # after a job: nothing changes
    assert rec.cause() is Cause.ABORTED


def test_start_returns_true_once_the_file_is_open(call, name, rec_dir):
    """start(): "This function will block until the recording has started or a timeout has expired."
    start(): "Upon return, this function will return True for success, otherwise False."

    Decided: True means the worker has confirmed the job: the file exists with a valid
    header and the legs are being read.
    """
    rec = call.WholeCallRecorder
    fn = name()
    assert rec.start(fn) is True
    path = os.path.join(rec_dir, fn)
    info = read_info(path)  # exists, parses, describes no audio yet
    assert info.format_tag == 6 and info.data_size == 0
    assert rec.state() is RecorderState.RECORDING
    assert rec.stop()


def test_file_that_cannot_be_created_fails_the_job(call, name, rec_dir):
    """start(): "Upon return, this function will return True for success, otherwise False."
    Cause: "record has stopped due to an error."
    State: "a record job failed"

    Decided: a file the worker cannot create (here a name longer than the file system
    allows) is a failed job: start() returns False, state ERROR, cause ERROR, no file.
    """
    rec = call.WholeCallRecorder
    before = files_under(rec_dir)
    assert rec.start("x" * 300 + ".wav") is False
    assert rec.state() is RecorderState.ERROR and rec.cause() is Cause.ERROR
    assert "File name too long" in rec.last_result.error
    assert files_under(rec_dir) == before


def test_directory_in_place_of_the_file_fails_the_job(call, name, rec_dir, service, monkeypatch):
    """start(): "Upon return, this function will return True for success, otherwise False."
    record(): "Upon return, this function will return a termination cause."
    Cause: "record has stopped due to an error."

    A directory appears where the file should be between the controller's checks and
    the worker's open (another process raced us): the worker refuses to use it.
    """
    sup = service.supervisor
    real = sup.send

    def race(index, msg):
        if isinstance(msg, StartJob):
            os.mkdir(msg.path)
        real(index, msg)

    monkeypatch.setattr(sup, "send", race)
    rec = call.WholeCallRecorder
    fn = name()
    assert rec.start(fn) is False
    assert rec.state() is RecorderState.ERROR and rec.cause() is Cause.ERROR
    assert os.path.isdir(os.path.join(rec_dir, fn))  # untouched
    fn2 = name()
    assert rec.record(fn2) is Cause.ERROR
    assert os.path.isdir(os.path.join(rec_dir, fn2))
    assert not any(f.startswith(fn) or f.startswith(fn2) for f in files_under(rec_dir))


def test_unusable_directory_path_fails_the_job(call, name, rec_dir):
    """start(): "Upon return, this function will return True for success, otherwise False."
    Cause: "record has stopped due to an error."

    A path component that is a regular file: the directory for the recording cannot be
    made. Same outcome as any file that cannot be created; nothing is left behind.
    """
    blocker = name(".txt")
    with open(os.path.join(rec_dir, blocker), "w"):
        pass
    rec = call.WholeCallRecorder
    before = files_under(rec_dir)
    assert rec.start(f"{blocker}/call.wav") is False
    assert rec.state() is RecorderState.ERROR and rec.cause() is Cause.ERROR
    assert files_under(rec_dir) == before
    # ERROR is left by the next job.
    assert rec.start(name())
    assert rec.state() is RecorderState.RECORDING
    assert rec.stop() and rec.state() is RecorderState.IDLE


def test_error_state_lasts_until_the_next_job(call, name):
    """State: "a record job failed"
    State: "recording is not in progress."
    state(): "If this function is called when no job is in progress, the state will be IDLE."

    Decided: after a failed job the state stays ERROR (a failed job is reported, not
    hidden) until the next start(); stop() on it returns True and changes nothing.
    """
    rec = call.WholeCallRecorder
    assert rec.state() is RecorderState.IDLE
    assert rec.start("y" * 300) is False
    assert rec.state() is RecorderState.ERROR
    assert rec.stop() is True and rec.state() is RecorderState.ERROR
    assert rec.start(name())
    assert rec.stop()
    assert rec.state() is RecorderState.IDLE


def test_frames_are_whole_and_nothing_is_lost_at_frame_edges(call, name):
    """record(): "Record an entire call."

    Audio written in odd-sized pieces on each leg ends up in the file sample for sample.
    """
    rec = call.WholeCallRecorder
    a, b = tone(350, 0.77), tone(1250, 0.77)
    assert rec.start(name())
    i = 0
    for step in (1, 7, 159, 161, 320, 1000, 3):
        call.inbound.write(a[i:i + step])
        call.outbound.write(b[i:i + step])
        i += step
    call.inbound.write(a[i:])
    call.outbound.write(b[i:])
    assert rec.stop()
    data, _ = read(rec.last_result.path)
    assert len(data) == len(a)
    assert np.array_equal(data, alaw_exact(mix(a, b)))
    assert len(a) % FRAME  # the end is inside a frame
