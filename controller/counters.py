"""Running totals of the recordings a controller has finished, for an operator's metrics.

Why here: only the controller sees every job end (worker reports, and jobs of a worker
lost while it closes), whoever started it. The totals only grow; `snapshot()` is what a
metrics scrape reads (`service.metrics`), at any time, from any thread.
"""

from __future__ import annotations

import collections
import threading

from wholecall.protocol.causes import Cause


class JobCounters:
    """Recordings ended by cause, their bytes, those that failed, samples lost before takeovers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ended: collections.Counter[str] = collections.Counter()
        self._bytes = 0
        self._failed = 0
        self._lost_samples = 0

    def ended(self, cause: Cause, nbytes: int, error: str, lost_samples: int) -> None:
        """A job ended: `error` non-empty means its file could not be written or finalised."""
        with self._lock:
            self._ended[cause.value] += 1
            self._bytes += max(0, nbytes)
            self._failed += bool(error)
            self._lost_samples += max(0, lost_samples)

    def snapshot(self) -> dict:
        """``{"ended": {cause: n}, "bytes": n, "failed": n, "lost_samples": n}``, every cause listed."""
        with self._lock:
            return {"ended": {c.value: self._ended.get(c.value, 0) for c in Cause if c is not Cause.NONE},
                    "bytes": self._bytes, "failed": self._failed, "lost_samples": self._lost_samples}
