"""Many recorders from many threads, and races on one recorder. For every race the
acceptable outcomes are listed and nothing else may happen."""

from __future__ import annotations

import threading

import numpy as np
from conformance_helpers import feed, feed_both, has_tone, in_thread, read, silence, tone, wait_for

from wholecall.controller import Cause, Error, Hangup, RecorderState


def test_many_channels_from_many_threads(service, name):
    """record(): "Record an entire call."
    start(): "Begin the recording of a media file."
    record(): "Upon return, this function will return a termination cause."

    16 calls, one thread each, three ways of ending a job; every file holds its own
    call's tones and no other's.
    """
    n = 16
    errors: list[BaseException] = []
    results: dict[int, tuple] = {}
    barrier = threading.Barrier(n)

    def one_call(i: int) -> None:
        ch = service.incoming_call()
        ch.answer()
        try:
            rec = ch.WholeCallRecorder
            f_in, f_out = 300 + 100 * i, 2000 + 70 * i
            barrier.wait(10)
            if i % 3 == 0:
                assert rec.start(name())
                feed(ch, tone(f_in, 0.6), tone(f_out, 0.6))
                assert rec.stop()
                cause = rec.cause()
            elif i % 3 == 1:
                assert rec.start(name(), milliseconds_max_silence=300)
                feed(ch, np.concatenate([tone(f_in, 0.6), silence(0.5)]),
                     np.concatenate([tone(f_out, 0.6), silence(0.5)]))
                cause = rec.wait_until_finished(10)
            else:
                def talk():
                    wait_for(lambda: rec.state() is RecorderState.RECORDING)
                    feed(ch, tone(f_in, 0.6), tone(f_out, 0.6))

                t, _ = in_thread(talk)
                cause = rec.record(name(), seconds_timeout=2.0)  # ample for 0.6 s written at once
                t.join(5)
            data, _ = read(rec.last_result.path)
            results[i] = (cause, len(data), data)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            ch.close()

    threads = [threading.Thread(target=one_call, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    expected = {0: Cause.ABORTED, 1: Cause.SILENCE, 2: Cause.TIMEOUT}
    for i, (cause, length, data) in sorted(results.items()):
        assert cause is expected[i % 3], (i, cause)
        assert abs(length - (4800 + (1600 if i % 3 == 1 else 0))) <= 160, (i, length)
        assert has_tone(data, 300 + 100 * i) and has_tone(data, 2000 + 70 * i)
        for j in range(n):
            if j != i:
                assert not has_tone(data, 300 + 100 * j) and not has_tone(data, 2000 + 70 * j)


def test_wait_in_one_thread_stop_in_another(call, name):
    """wait_until_finished(): "This function will block until the recorder terminates or the timeout expires."
    stop(): "This function will block until the record job terminates or a timeout expires."
    """
    rec = call.WholeCallRecorder
    assert rec.start(name())
    waiters = [in_thread(lambda: rec.wait_until_finished(None)) for _ in range(4)]
    feed_both(call, tone(440, 0.3))
    t, box = in_thread(rec.stop)
    t.join(10)
    assert box["result"] is True
    for w, wbox in waiters:
        w.join(10)
        assert wbox["result"] is Cause.ABORTED


def test_stop_from_two_threads(call, name):
    """stop(): "Upon return, this method will return True for success, otherwise False."
    stop(): "If the whole call recorder state is not RECORDING, this function will simply return True."
    """
    rec = call.WholeCallRecorder
    for _ in range(5):
        assert rec.start(name())
        feed_both(call, tone(440, 0.1))
        go = threading.Barrier(2)
        runs = [in_thread(lambda: (go.wait(5), rec.stop())[1]) for _ in range(2)]
        for t, box in runs:
            t.join(10)
            assert box["result"] is True
        assert rec.cause() is Cause.ABORTED and rec.last_result.samples == 800


def test_start_race_on_one_channel(call, name, rec_dir):
    """start(): "If the whole call record state is already RECORDING, this function will raise an Error exception."

    Two threads start at once: one job runs; the other call raises Error. No other outcome.
    """
    import os

    rec = call.WholeCallRecorder
    for _ in range(5):
        names = [name(), name()]
        go = threading.Barrier(2)
        runs = [in_thread(lambda fn=fn: (go.wait(5), rec.start(fn))[1]) for fn in names]
        outcomes = []
        for t, box in runs:
            t.join(10)
            outcomes.append("started" if box.get("result") is True else type(box.get("error")).__name__)
        assert sorted(outcomes) == ["Error", "started"], outcomes
        assert sum(os.path.exists(os.path.join(rec_dir, fn)) for fn in names) == 1
        assert rec.stop()


def test_hang_up_racing_stop(service, name):
    """stop(): "If the call state is IDLE, this function will raise a Hangup exception."
    Cause: "record ended due to a call hangup."
    Cause: "record has been aborted (probably because stop was called)."

    Acceptable: stop() returns True or raises Hangup (the call was already IDLE); the
    cause is ABORTED or HANGUP; the file is final with all the audio.
    """
    seen = set()
    for _ in range(6):
        ch = service.incoming_call()
        ch.answer()
        rec = ch.WholeCallRecorder
        assert rec.start(name())
        feed_both(ch, tone(440, 0.2))
        go = threading.Barrier(2)
        s_t, s_box = in_thread(lambda: (go.wait(5), rec.stop())[1])
        h_t, h_box = in_thread(lambda: (go.wait(5), ch.hang_up())[1])
        s_t.join(10)
        h_t.join(10)
        assert "error" not in h_box
        assert s_box.get("result") is True or isinstance(s_box.get("error"), Hangup)
        assert rec.cause() in (Cause.ABORTED, Cause.HANGUP)
        assert rec.state() is RecorderState.IDLE and rec.last_result.samples == 1600
        seen.add(rec.cause())
        ch.close()
    assert seen <= {Cause.ABORTED, Cause.HANGUP}


def test_stop_while_record_blocks_with_a_timeout(call, name):
    """record(): "This function will block until the recording has finished or a timeout
    (seconds_timeout) has expired."
    Cause: "record has been aborted (probably because stop was called)."
    """
    rec = call.WholeCallRecorder
    t, box = in_thread(lambda: rec.record(name(), seconds_timeout=30))
    assert wait_for(lambda: rec.state() is RecorderState.RECORDING)
    feed_both(call, tone(440, 0.2))
    assert rec.stop()
    t.join(10)
    assert box["result"] is Cause.ABORTED and box["elapsed"] < 10


def test_guards_hold_under_concurrent_activity(call, other_call, name):
    """start(): "Additionally, a whole call recorder cannot be started if the call channel is
    connected to another channel, if it is part of a conference or if it has been added to a
    music on hold resource."

    connect() and start() racing: either the recorder started first (then the bridge is
    allowed and both succeed) or the bridge came first (then start raises Error).
    """
    rec = call.WholeCallRecorder
    outcomes = set()
    for _ in range(6):
        go = threading.Barrier(2)
        s_t, s_box = in_thread(lambda: (go.wait(5), rec.start(name()))[1])
        c_t, c_box = in_thread(lambda: (go.wait(5), call.connect(other_call))[1])
        s_t.join(10)
        c_t.join(10)
        assert "error" not in c_box
        if s_box.get("result") is True:
            outcomes.add("recorder first")
            assert rec.stop()
        else:
            assert isinstance(s_box.get("error"), Error) and "connected" in str(s_box["error"])
            outcomes.add("bridge first")
        call.disconnect()
    assert outcomes <= {"recorder first", "bridge first"}


def test_two_calls_racing_for_one_filename(service, name, rec_dir):
    """start(): "the name of the file to record."
    start(): "Upon return, this function will return True for success, otherwise False."

    Two calls start recording to the same new name at once. Acceptable: one records; the
    other raises Error (the name already exists) or returns False (its worker found the
    file created by the first: never overwritten). The winner's file is intact.
    """
    import os

    for _ in range(4):
        fn = name()
        chans = [service.incoming_call() for _ in range(2)]
        try:
            for ch in chans:
                ch.answer()
            go = threading.Barrier(2)
            runs = [in_thread(lambda ch=ch: (go.wait(5), ch.WholeCallRecorder.start(fn))[1]) for ch in chans]
            outcomes = []
            for t, box in runs:
                t.join(10)
                if box.get("result") is True:
                    outcomes.append("started")
                elif box.get("result") is False:
                    outcomes.append("failed")
                else:
                    assert isinstance(box.get("error"), Error) and "already exists" in str(box["error"])
                    outcomes.append("refused")
            assert outcomes.count("started") == 1 and len(outcomes) == 2, outcomes
            winner = chans[outcomes.index("started")]
            loser = chans[1 - outcomes.index("started")]
            if "failed" in outcomes:
                assert loser.WholeCallRecorder.state() is RecorderState.ERROR
            feed_both(winner, tone(440, 0.25))
            assert winner.WholeCallRecorder.stop()
            assert len(read(os.path.join(rec_dir, fn))[0]) == 2000
        finally:
            for ch in chans:
                ch.close()
