"""The recorders' Condition (a list for its waiters) behaves as threading.Condition on the
running Python: wait, wait_for with a timeout, notify of one, notify_all of many."""

from __future__ import annotations

import sys
import threading
import time

from wholecall.controller.condition import Condition


def test_notify_wakes_one_waiter_and_notify_all_the_rest():
    cond = Condition(threading.Lock())
    woke: list[int] = []

    def waiter(i: int) -> None:
        with cond:
            if cond.wait(60):  # only a notified wake counts: a timeout would fail the sums below
                woke.append(i)

    threads = [threading.Thread(target=waiter, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while len(cond._waiters) < 5 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert len(cond._waiters) == 5
    with cond:
        cond.notify()
    deadline = time.monotonic() + 10
    while len(woke) < 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.05)
    assert len(woke) == 1 and len(cond._waiters) == 4
    with cond:
        cond.notify_all()
    for t in threads:
        t.join(60)
    assert sorted(woke) == [0, 1, 2, 3, 4] and cond._waiters == []


def test_a_wait_that_times_out_leaves_no_waiter_behind():
    cond = Condition(threading.Lock())
    with cond:
        assert cond.wait_for(lambda: False, timeout=0.05) is False
    assert cond._waiters == [] and isinstance(cond._waiters, list)
    assert sys.getsizeof(cond._waiters) < 100  # the point: a deque would be ~630 bytes
