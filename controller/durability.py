"""Finished recordings' sidecars made durable behind `stop()`, not in front of it.

Why. `stop()` used to return only after the sidecar's two fsyncs (its temporary file, then
its directory). Under the 160 MB/s of recording writes of 20,000 calls on ext4 (the
kernel writes back ~1.6 GB in a burst every ~13 s), that pair alone measured p50 4 ms,
p99 47 ms, max 96 ms on the CI machine, and the sidecar hop of `stop()` p99 56-235 ms:
more than the whole 50 ms an IVR may wait (issue 25).

What is promised now. `stop()`, `record()` and `wait_until_finished()` return when the
file and its sidecar are *final*: complete, under their names, what every reader on the
machine sees and what a crash of any of our processes leaves. A `Syncer` thread then
makes the sidecar *durable* (fsync of the sidecar, then of each directory once), in the
order the recordings ended; everything that queued while it synced is the next batch. A
power loss or a kernel crash inside that window (its lag is in the metrics,
`wholecall_sync_lag_seconds`; milliseconds at call rate, seconds in a burst of
thousands) may leave the last sidecars empty or absent; `wholecall info` says so.
`Controller.wait_durable()` waits for every recording ended so far; `Controller.close()`
returns only when all are durable. `Config.sync_on_stop` restores the old order,
durability before `stop()` returns, and fsyncs the audio file as well, for an
application that must not acknowledge a call before that (and pays the p99 above).

The audio itself is left to the kernel's writeback, as it always was (a worker's files
reach the disk within `vm.dirty_expire_centisecs`, 30 s). Syncing it here too was
measured and not kept: an fsync of every ended recording's audio (a syncfs(2) for bursts)
starved the workers. At 20,000 calls their largest backlog moved from the end of the
start ramp (4.2-5.2 s, runs without it) into the end-of-run burst of stops (4.6-8.2 s),
and one run overran its 8 s rings: forced flushes of data that the kernel would have
written anyway held up the workers' own appends. Sidecars alone (a few hundred bytes
each) left the backlog where it was (4.7 s, at the ramp's end).
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import threading
import time
from collections.abc import Iterable

log = logging.getLogger(__name__)


def fsync_path(path: str, directory: bool = False) -> None:
    """fsync the file or directory `path`; a file removed meanwhile (an application that
    moved its recording away at once) has nothing left to make durable here."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | (os.O_DIRECTORY if directory else 0))
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_files(paths: Iterable[str]) -> None:
    """Make `paths` (files just written and named) durable: each file, then each of their
    directories once (a rename is durable with its directory)."""
    dirs: dict[str, None] = {}
    for p in paths:
        fsync_path(p)
        dirs[os.path.dirname(p) or "."] = None
    for d in dirs:
        fsync_path(d, directory=True)


class Syncer:
    """A thread that makes ended recordings' files durable, oldest first, in batches
    (a batch costs about one journal commit: a file already committed syncs at once)."""

    def __init__(self, name: str = "syncer") -> None:
        self._cond = threading.Condition()
        self._queue: collections.deque[tuple[float, tuple[str, ...]]] = collections.deque()
        self._added = 0  # recordings handed over, ever
        self._done = 0  # of those, the ones synced (or failed)
        self._failed = 0
        self._max_lag_s = 0.0
        self._oldest: float | None = None  # when the oldest recording of the batch in progress ended
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def add(self, *paths: str) -> None:
        """Queue the files of one ended recording (its sidecar)."""
        paths = tuple(p for p in paths if p)
        if not paths:
            return
        with self._cond:
            if self._closing:
                raise RuntimeError("the syncer is closed")
            self._queue.append((time.monotonic(), paths))
            self._added += 1
            self._cond.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every recording added so far is durable (or failed, logged); False on timeout."""
        with self._cond:
            target = self._added
            return self._cond.wait_for(lambda: self._done >= target, timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Sync what is queued, then end the thread; False if that took longer than `timeout`."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def snapshot(self) -> dict:
        """``{"pending", "synced", "failed", "lag_s", "max_lag_s"}``: recordings not yet durable,
        those made durable and those whose sync failed (ever), how long the oldest pending one
        has waited, and the longest wait so far (seconds)."""
        with self._cond:
            now = time.monotonic()
            oldest = self._queue[0][0] if self._queue else None
            if self._oldest is not None:
                oldest = self._oldest
            return {"pending": self._added - self._done, "synced": self._done - self._failed,
                    "failed": self._failed, "lag_s": 0.0 if oldest is None else round(now - oldest, 3),
                    "max_lag_s": round(self._max_lag_s, 3)}

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closing)
                if not self._queue:
                    return
                batch = list(self._queue)
                self._queue.clear()
                self._oldest = batch[0][0]
            try:
                failed = self._sync(batch)
            except Exception:  # noqa: BLE001 - the thread must live on, or wait() never returns
                log.exception("syncing %d recordings failed", len(batch))
                failed = len(batch)
            done = time.monotonic()
            with self._cond:
                self._done += len(batch)
                self._failed += failed
                self._max_lag_s = max(self._max_lag_s, done - batch[0][0])
                self._oldest = None
                self._cond.notify_all()

    def _sync(self, batch: list[tuple[float, tuple[str, ...]]]) -> int:
        """Sync one batch; returns how many of its recordings could not be made durable."""
        failed: set[int] = set()
        dirs: dict[str, set[int]] = {}  # directory -> the recordings (batch indices) in it
        for i, (_, ps) in enumerate(batch):
            try:
                for p in ps:
                    fsync_path(p)
            except OSError as e:
                failed.add(i)
                _log_failure(ps, e)
                continue
            for p in ps:
                dirs.setdefault(os.path.dirname(p) or ".", set()).add(i)
        for d, members in dirs.items():  # one fsync per directory for the whole batch
            try:
                fsync_path(d, directory=True)
            except OSError as e:
                failed |= members
                _log_failure((d,), e)
        return len(failed)


def _log_failure(paths: Iterable[str], e: OSError) -> None:
    # EIO here means the kernel lost written pages: the file may be damaged on disk.
    level = logging.CRITICAL if e.errno == errno.EIO else logging.ERROR
    log.log(level, "could not make %s durable: %s", ", ".join(paths), e)
