"""A threading.Condition whose waiter queue is a list: ~580 bytes less per recorder.

Why: every recorder holds one Condition (its API calls wait on it for the worker's
confirmation or the job's end), and CPython's creates a `collections.deque` for its
waiters, whose first block of 64 slots is ~630 bytes even when nobody waits. At 20,000
calls that was ~6 % of the controller's memory per call (issue 25 wants it at 10 kB).
A recorder has at most a few waiters at once, and `Condition` only appends, removes,
indexes [0], measures and clears its queue (3.11-3.13), which a list does as well.
tests/test_condition.py holds that to account on the running Python.
"""

from __future__ import annotations

import threading
from typing import Any


class Condition(threading.Condition):
    """`threading.Condition` with a list for its waiters (see the module docstring)."""

    def __init__(self, lock: Any = None) -> None:
        super().__init__(lock)
        waiters: list[Any] = []
        self._waiters = waiters
