"""A finished call leaves nothing behind in the controller, and is freed the moment it is dropped.

The soak (`wholecall stress --churn`) saw the controller's resident memory ratchet up:
every call was a reference cycle (channel -> recorder/players -> channel), so its
~44 objects (conditions, locks, deques, legs, results) were freed only by the cyclic
collector's rare full passes, and megabytes of dead calls piled up between them. These
tests count live structures and objects, never bytes or time.
"""

from __future__ import annotations

import gc
import weakref

import pytest

from tests.conftest import feed, tone
from wholecall.controller.errors import Hangup
from wholecall.controller.states import Cause

CALLS = 40


def _alive_after(refs: list[weakref.ref], wait_s: float = 2.0) -> list[str]:
    """The types still alive, once any controller thread still inside a call's last event
    has returned (stop() returns when the result is set, a few statements before the
    finisher's frame is gone; a preempted thread makes that a while on a loaded machine).
    The collector stays off meanwhile: only reference counting can free them."""
    import time

    deadline = time.monotonic() + wait_s
    while True:
        alive = [type(o).__name__ for o in (r() for r in refs) if o is not None]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.01)


def test_finished_calls_leave_no_per_call_structure_and_are_freed_without_the_cycle_collector(make_controller):
    ctl = make_controller(workers=1, max_channels=8)
    refs: list[weakref.ref] = []
    gc.collect()
    gc.disable()  # only reference counting frees anything from here on
    try:
        for i in range(CALLS):
            ch = ctl.incoming_call()
            ch.answer()
            rec = ch.WholeCallRecorder
            assert rec.start(f"calls/c{i:03d}.wav", file_format="alaw", milliseconds_max_silence=5000)
            feed(ch, tone(440, 0.1), tone(880, 0.1))
            if i % 4 == 3:
                ch.play_dtmf("15", tone_ms=40, gap_ms=40, realtime=False)  # a player ran on this call
            if i % 2:
                ch.hang_up()
            else:
                assert rec.stop()
            assert rec.last_result is not None and rec.last_result.cause is (Cause.HANGUP if i % 2 else Cause.ABORTED)
            ch.close()
            refs += [weakref.ref(o) for o in (ch, rec, ch.FilePlayer, ch.DTMFPlayer, ch.inbound, ch.activities)]
            del ch, rec
        alive = _alive_after(refs)
    finally:
        gc.enable()
    assert alive == [], f"{len(alive)} objects of {CALLS} finished calls still alive without a cycle collection"

    sup = ctl.supervisor
    assert ctl._channels == {} and ctl._jobs == {}
    assert sup.routes == {} and sup.moved == {} and not sup._outbox
    assert all(not w.jobs and not w.pending for w in sup.workers)
    assert ctl.arena.free_slots == ctl.arena.slots
    assert sum(sup.dropped.values()) == 0


def test_the_recorder_of_a_closed_channel_nobody_holds_says_hang_up(ctl):
    ch = ctl.incoming_call()
    ch.answer()
    rec, player = ch.WholeCallRecorder, ch.DTMFPlayer
    ch.close()
    del ch
    with pytest.raises(Hangup, match="closed"):
        rec.start("gone.wav")
    with pytest.raises(Hangup):
        rec.stop()
    with pytest.raises(Hangup):
        player.start("1")
    assert rec.state() is rec.State.IDLE and rec.last_result is None


def test_a_frozen_heap_still_frees_finished_calls_and_is_given_back_on_close(make_controller):
    """`Config.gc_freeze_s`: survivors leave the collector's walks every interval (a full
    collection over 20,000 calls held the GIL 190-700 ms), and a call frozen while it ran
    is still freed by reference counting when it ends; close() unfreezes everything."""
    import time

    ctl = make_controller(workers=1, max_channels=8, gc_freeze_s=0.05)
    ch = ctl.incoming_call()
    ch.answer()
    rec = ch.WholeCallRecorder
    assert rec.start("calls/frozen.wav", file_format="alaw")
    deadline = time.monotonic() + 5
    while ctl._freezer.freezes < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ctl._freezer.freezes >= 2 and gc.get_freeze_count() > 0  # the running call is frozen now
    feed(ch, tone(440, 0.1), tone(880, 0.1))
    gc.disable()
    try:
        assert rec.stop()
        ch.close()
        refs = [weakref.ref(o) for o in (ch, rec, ch.inbound, ch.activities)]
        del ch, rec
        assert _alive_after(refs) == [], "a frozen call must still be freed when it ends"
    finally:
        gc.enable()
    ctl.close()
    assert gc.get_freeze_count() == 0


def test_the_heap_freezer_needs_a_positive_interval():
    from wholecall.controller.config import Config
    from wholecall.controller.heapfreeze import HeapFreezer

    with pytest.raises(ValueError, match="every_s"):
        HeapFreezer(0)
    with pytest.raises(ValueError, match="gc_freeze_s"):
        Config(gc_freeze_s=-1.0)
