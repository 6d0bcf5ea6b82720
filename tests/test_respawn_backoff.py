"""A worker that dies right after every start is replaced after a growing back-off, not
in a tight loop (a reviewer saw 125 spawns in 27 s once a foreign sweep had removed the
arena: every replacement failed to attach), and once a replacement stays up the back-off
is forgotten. `restarts` counts every replacement; `stats()` (and so /healthz) shows the
back-off."""

import os
import shutil
import signal
import tempfile
import time

from wholecall.controller.supervisor import RESPAWN_STABLE_S


def test_a_worker_that_keeps_dying_young_is_respawned_with_a_back_off(make_controller):
    d = tempfile.mkdtemp(dir="/dev/shm", prefix="backoff-test-")  # a tmpfs, as arenas need
    try:
        ctl = make_controller(workers=1, arena_dir=d)
        arena = ctl.arena.path
        kept = os.path.join(d, "kept")
        os.link(arena, kept)
        os.unlink(arena)  # every replacement now fails to attach and exits at once
        os.kill(ctl.supervisor.workers[0].proc.pid, signal.SIGKILL)
        t0 = time.monotonic()
        seen_wait = 0.0
        young = 0
        while time.monotonic() - t0 < 6.0:
            w = ctl.stats()["workers"][0]
            seen_wait = max(seen_wait, w["respawn_in_s"])
            young = max(young, w["deaths_in_a_row"])
            time.sleep(0.05)
        restarts = ctl.stats()["restarts"]
        # Without a back-off: one spawn per ~0.2-0.5 s start-up (12-30 here). With it: at once,
        # then after 0.5, 1 and 2 s (each on top of the start-up that failed).
        assert 2 <= restarts <= 5, restarts
        assert young >= 2 and seen_wait > 0
        os.link(kept, arena)  # the cause goes away: the next replacement stays up
        deadline = time.monotonic() + 30 + RESPAWN_STABLE_S
        while time.monotonic() < deadline:
            w = ctl.stats()["workers"][0]
            if w["alive"] and w["ready"] and w["deaths_in_a_row"] == 0:
                break
            time.sleep(0.2)
        w = ctl.stats()["workers"][0]
        assert w["alive"] and w["ready"] and w["deaths_in_a_row"] == 0 and w["respawn_in_s"] == 0
        assert ctl.stats()["restarts"] > restarts
        # It records again.
        ch = ctl.incoming_call()
        ch.answer()
        assert ch.WholeCallRecorder.start("after.wav")
        assert ch.WholeCallRecorder.stop()
        os.unlink(kept)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_the_delay_stays_capped_however_long_the_run_of_deaths() -> None:
    """2 ** 1024 overflowed a float at the 1,025th death in a row (8.5 h of a crash loop at the
    cap): the respawn raised and that worker slot was never replaced again (a reviewer's find)."""
    from wholecall.controller.supervisor import RESPAWN_MAX_S, respawn_delay

    assert [respawn_delay(n) for n in (0, 1, 2)] == [0.0, 0.5, 1.0]
    assert respawn_delay(1025) == respawn_delay(10**6) == RESPAWN_MAX_S


def test_workers_are_not_pinned_when_told_not_to_be(make_controller) -> None:
    """Config.pin_workers was stored and never read: pin_workers=False still pinned each
    worker to one CPU (a reviewer's find)."""
    ctl = make_controller(workers=1, pin_workers=False)
    pid = ctl.supervisor.workers[0].proc.pid
    assert os.sched_getaffinity(pid) == os.sched_getaffinity(0)
    assert ctl.stats()["workers"][0]["cpu"] == -1
