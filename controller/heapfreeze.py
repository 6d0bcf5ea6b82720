"""Keeps the long-lived objects of the controller's process out of the cyclic collector's walks.

Why. With 20,000 calls open the process holds ~680,000 objects the cyclic collector
tracks (a call's channel, legs, recorder, locks; the application's own per-call state
beside them). A full collection walks all of them with the GIL held: 190-700 ms of CPU
on this project's VM, and longer on the wall clock when the collecting thread is at
normal priority beside the workers (`procenv.raise_threads`). Every controller thread
stops meanwhile, and stop() p99 at 20,000 channels followed these pauses.

How. Every `every_s` seconds a young collection (so that fresh garbage cycles are
freed, not kept) and then `gc.freeze()`: what survived moves to the permanent
generation, which no automatic collection walks. Full collections then see only what
came since the last freeze. A frozen object is still freed the moment its reference
count drops to zero; what the collector would be needed for is an object that is part
of a reference cycle when it dies. The controller's calls are freed by reference
counting alone (`tests/test_call_memory.py` runs them with the collector disabled), so
they lose nothing by it. An application's own objects that die in cycles after being
frozen are not freed until `close()` unfreezes them: that is the trade, and why this is
off unless the application turns it on (`Config.gc_freeze_s`).
"""

from __future__ import annotations

import gc
import logging
import threading

from .procenv import raise_current_thread

log = logging.getLogger("wholecall.controller")


class HeapFreezer:
    """A daemon thread freezing the process's survivors every `every_s` seconds."""

    def __init__(self, every_s: float, priority: int = 0) -> None:
        if every_s <= 0:
            raise ValueError(f"every_s must be positive, got {every_s}")
        self.every_s = every_s
        self.priority = priority
        self.freezes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heap-freezer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # At the workers' level: a young collection holds the GIL, and a thread preempted
        # while holding it stalls every controller thread (`procenv.raise_threads`).
        raise_current_thread(self.priority, "heap freezer")
        while not self._stop.wait(self.every_s):
            try:
                gc.collect(1)  # fresh cycles die young, not frozen
                gc.freeze()
                self.freezes += 1
            except Exception:  # noqa: BLE001 - a failed freeze costs pauses, never the service
                log.exception("freezing the heap failed")

    def close(self) -> None:
        """Stop freezing and give every frozen object back to the collector (it may then
        take one long full collection: the application is shutting the controller down)."""
        self._stop.set()
        self._thread.join()
        gc.unfreeze()
