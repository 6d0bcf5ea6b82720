"""`Controller`: the process that keeps the API, the state machines and the workers.

It owns the ring arena (and unlinks it when closed, also after an exception), an
owner-only run directory holding the control socket, and the `Supervisor` with its
worker processes. Channels get two ring slots each when created; a recording job is
placed on the least-loaded worker when it starts.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import glob
import itertools
import logging
import os
import shutil
import tempfile
import threading
import time
from typing import Any

from wholecall.formats.encrypted import PART_SUFFIX
from wholecall.formats.wav import read_info, repair
from wholecall.protocol import JobDigits, JobEnded, JobStarted, Message
from wholecall.shm import Arena
from wholecall.shm.arena import huge_pages
from wholecall.shm.owner import LOCKED_SUFFIX, create_claimed, legacy_owner_gone, sweep_unowned

from .channel import CallChannel
from .config import Config
from .counters import JobCounters
from .durability import Syncer, sync_files
from .errors import Error
from .heapfreeze import HeapFreezer
from .media import Conference, MusicOnHold
from .procenv import raise_current_thread
from .recorder import WholeCallRecorder
from .resources import FreeSpace, make_dirs, nofile_shortfall, raise_nofile
from .states import CallState, Cause
from .supervisor import DEGRADED_S, Supervisor

log = logging.getLogger("wholecall.controller")
#: From this size the arena's page size shows in the workers' CPU (a warning says so).
LARGE_ARENA_BYTES = 256 << 20


class Controller:
    """Whole-call recording service: `with Controller(workers=2, recordings_dir=d) as ctl: ...`.

    Keyword arguments are the fields of `controller.config.Config` (all documented there).
    """

    def __init__(self, **settings: Any) -> None:
        self.config = Config(**settings)
        self.arena: Arena | None = None
        self.supervisor: Supervisor | None = None
        self._run_dir: str | None = None
        #: Descriptor of `_run_dir` holding its owner's lock (`shm.owner`) until it is removed.
        self._run_lock: int | None = None
        self._channels: dict[int, CallChannel] = {}
        self._jobs: dict[int, WholeCallRecorder] = {}
        #: Starts given up unconfirmed (`WholeCallRecorder._abandon`): job id -> [its path,
        #: whether the worker has since confirmed it, i.e. made the file].
        self._abandoned: dict[int, list] = {}
        self._ids = itertools.count(1)
        self._job_ids = itertools.count(1)
        self._lock = threading.Lock()
        self._free_space = FreeSpace(self.config.recordings_dir, self.config.min_free_bytes)
        #: Finisher threads: hash ended recordings and write their sidecars (`sidecar.py`).
        self._finisher: concurrent.futures.ThreadPoolExecutor | None = None
        self._freezer: HeapFreezer | None = None
        #: Makes ended recordings' sidecars durable behind stop() (`durability.py`); None before start().
        self.syncer: Syncer | None = None
        #: Totals of finished recordings (by cause, bytes, failures) for metrics.
        self.counters = JobCounters()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Controller:
        """Create the arena, spawn and pin the workers, wait until they are ready."""
        if self.supervisor is not None:
            return self
        cfg = self.config
        make_dirs(cfg.recordings_dir, cfg.dir_mode)
        soft, _ = raise_nofile()
        shortfall = nofile_shortfall(cfg.max_channels, soft)
        if shortfall:
            log.warning("%s", shortfall)
        try:
            self.arena = Arena.create(2 * cfg.max_channels, cfg.ring_samples, cfg.arena_dir)
            if self.arena.layout.total >= LARGE_ARENA_BYTES and not huge_pages(cfg.arena_dir):
                log.warning("the %d MiB arena in %s has 4 KiB pages: workers spend more CPU (6-20 %% measured) "
                            "than on a tmpfs with huge=within_size (deploy/run-wholecall-arena.mount, "
                            "Config.arena_dir)", self.arena.layout.total >> 20, cfg.arena_dir)
            sweep_run_dirs()
            # mode 0700; its lock lets the next controller sweep it if this one is killed
            self._run_dir, self._run_lock = make_run_dir()
            # The finishers end every stop() (hash, sidecar, fsyncs) and hold the GIL while
            # they work: at normal priority beside the workers they waited for a CPU with it
            # (sidecar hop p90 137 ms at 20,000 channels), as the I/O thread would.
            self._finisher = concurrent.futures.ThreadPoolExecutor(
                max(1, cfg.finisher_threads), thread_name_prefix="finisher",
                initializer=raise_current_thread, initargs=(cfg.worker_priority, "finisher"))
            self.syncer = Syncer()
            self.supervisor = Supervisor(
                cfg.workers, self._run_dir, self.arena.path, self._on_event, self._on_worker_lost,
                tick_ms=cfg.tick_ms, heartbeat_ms=cfg.heartbeat_ms, stall_timeout_s=cfg.stall_timeout_s,
                skew_ms=cfg.skew_ms, flush_ms=cfg.flush_ms, pin=cfg.pin_workers,
                scale_tick_ms=cfg.scale_tick_ms, scale_jobs=cfg.scale_jobs,
                capacity=worker_capacity(cfg.max_channels, cfg.workers), priority=cfg.worker_priority,
                silence_dbfs=float(cfg.silence_dbfs), silence_hangover_ms=cfg.silence_hangover_ms,
                file_mode=cfg.file_mode,
            )
            self.supervisor.wait_ready(30.0)
            if cfg.gc_freeze_s:
                self._freezer = HeapFreezer(cfg.gc_freeze_s, cfg.worker_priority)
        except BaseException:
            self.close()
            raise
        log.info("controller up: %d workers, arena %s (%d slots x %d samples)", cfg.workers, self.arena.name,
                 self.arena.slots, self.arena.capacity)
        return self

    def close(self) -> None:
        """Hang up every channel (jobs end with HANGUP), stop the workers, unlink the arena."""
        try:
            channels = list(self._channels.values())
            for ch in channels:  # ask all first, then wait for all: close is O(1) in waits
                try:
                    ch.hang_up(wait=False)
                except Exception:
                    log.exception("hanging up Channel(%d) during close", ch.id)
            deadline = time.monotonic() + self.config.stop_timeout_s
            for ch in channels:
                ch.WholeCallRecorder._wait_end(max(0.0, deadline - time.monotonic()))
        finally:
            if self._freezer is not None:
                self._freezer.close()
                self._freezer = None
            if self.supervisor is not None:
                self.supervisor.close()
                self.supervisor = None
            if self._finisher is not None:
                self._finisher.shutdown(wait=True)  # every ended job's sidecar written, its recorder told
                self._finisher = None
            if self.syncer is not None:
                # Every one of them durable, unless the disk hangs: then say so and go on.
                if not self.syncer.close(self.config.stop_timeout_s):
                    log.error("closing: %d sidecars were not made durable within %.0f s",
                              self.syncer.snapshot()["pending"], self.config.stop_timeout_s)
                self.syncer = None
            if self.arena is not None:
                self.arena.close()
                self.arena = None
            if self._run_dir is not None:
                shutil.rmtree(self._run_dir, ignore_errors=True)
                self._run_dir = None
            if self._run_lock is not None:
                os.close(self._run_lock)
                self._run_lock = None

    def __enter__(self) -> Controller:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- channels and shared resources ---------------------------------------------------------

    def channel(self) -> CallChannel:
        """A new call channel in state IDLE."""
        return self._new_channel(CallState.IDLE)

    def incoming_call(self) -> CallChannel:
        """A new call channel in state CALL_INCOMING, as if a call had just arrived."""
        return self._new_channel(CallState.CALL_INCOMING)

    def _new_channel(self, state: CallState) -> CallChannel:
        if self.arena is None:
            raise Error("the controller is not started (use it as a context manager or call start())")
        try:
            slots = self.arena.allocate(2)
        except RuntimeError as e:
            raise Error(f"no room for another channel: {e}; raise max_channels (wholecall serve: --max-calls)") from None
        with self._lock:
            cid = next(self._ids)
            ch = CallChannel(self, cid, slots, state)
            self._channels[cid] = ch
        return ch

    def release_channel(self, ch: CallChannel) -> None:
        """Give a closed channel's ring slots back (CallChannel.close calls it)."""
        with self._lock:
            self._channels.pop(ch.id, None)
        if self.arena is not None:
            self.arena.release(ch.slots)

    def conference(self, name: str) -> Conference:
        return Conference(name)

    def music_on_hold(self, name: str = "default", **kw: Any) -> MusicOnHold:
        return MusicOnHold(name, **kw)

    # -- jobs ----------------------------------------------------------------------------------

    def new_job(self, recorder: WholeCallRecorder) -> int:
        """A fresh job id, routed to `recorder` until the job ends."""
        with self._lock:
            job_id = next(self._job_ids)
            self._jobs[job_id] = recorder
        return job_id

    def abandon(self, job_id: int, path: str) -> None:
        """`job_id`'s start was given up unconfirmed and reported as failed: its events no
        longer go to a recorder. Should its worker make the file after all, the file is
        removed when the job ends; its name stays taken until then (`abandoned_path`)."""
        with self._lock:
            self._jobs.pop(job_id, None)
            self._abandoned[job_id] = [path, False]

    def abandoned_path(self, path: str) -> bool:
        """Whether an abandoned start of `path` may still make that file."""
        with self._lock:
            return any(entry[0] == path for entry in self._abandoned.values())

    def _end_abandoned(self, msg: JobEnded) -> bool:
        with self._lock:
            entry = self._abandoned.pop(msg.job_id, None)
        if entry is None:
            return False
        path, made = entry
        if made:  # its worker made the file (it confirmed the job): the failed start leaves none
            for p in (path, path + PART_SUFFIX):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)
            log.warning("job %d ended (%s) after its start was given up; removed %s", msg.job_id, msg.cause.value,
                        path)
        return True

    def finish(self, fn: Any, *args: Any) -> None:
        """Run `fn(*args)` on a finisher thread (inline if there is none: closing)."""
        ex = self._finisher
        if ex is not None:
            try:
                ex.submit(fn, *args)
                return
            except RuntimeError:  # shut down meanwhile
                pass
        fn(*args)

    def durable_later(self, *paths: str) -> None:
        """Files of an ended recording, final now (its sidecar): fsync them and their
        directory behind the caller (`durability.py`); at once, in this thread, when there
        is no syncer."""
        syncer = self.syncer
        if syncer is not None:
            try:
                syncer.add(*paths)
                return
            except RuntimeError:  # closed meanwhile
                pass
        sync_files(p for p in paths if p)

    def wait_durable(self, timeout: float | None = None) -> bool:
        """Wait until the sidecar of every recording that ended so far is durable, with its
        directory (`Config.sync_on_stop` off, the default: the syncer fsyncs them behind
        `stop()`). False if `timeout` seconds were not enough."""
        syncer = self.syncer
        return True if syncer is None else syncer.wait(timeout)

    def _on_event(self, worker: int, msg: Message) -> bool:
        """Worker events, on the supervisor's I/O thread; False for one that applied to
        nothing (the supervisor counts it as dropped). The supervisor has already checked
        that `worker` owns the job."""
        if isinstance(msg, JobStarted):
            rec = self._jobs.get(msg.job_id)
            # Its recorder refuses it once the start was given up, also when that happened
            # while this thread waited for the recorder's lock: the file it made is noted then.
            if rec is not None and rec._on_started(msg):
                return True
            with self._lock:
                entry = self._abandoned.get(msg.job_id)
                if entry is not None:
                    entry[1] = True
            return entry is not None
        if isinstance(msg, JobEnded):
            with self._lock:
                rec = self._jobs.pop(msg.job_id, None)
            moved = self.supervisor.moved.pop(msg.job_id, None) if self.supervisor is not None else None
            if rec is None:
                return self._end_abandoned(msg)
            ran = rec._ran(msg.job_id)
            lost = moved.lost if moved is not None else 0
            nbytes, samples, seconds = msg.bytes, msg.samples, msg.duration_s
            estimated = False
            if msg.salvaged:  # its worker died before reporting it: the file tells, where it can
                nbytes, samples, seconds = salvage(rec._path, rec._encrypted)
                if not samples:  # encrypted (or unreadable): the last durable count, a lower bound
                    nbytes = os.path.getsize(rec._path) if rec._path and os.path.exists(rec._path) else 0
                    samples, seconds, estimated = msg.samples, msg.duration_s, True
            applied = rec._on_ended(msg.job_id, msg.cause, nbytes, samples, seconds, msg.error, lost,
                                    msg.origin, msg.end_pos, msg.heard,
                                    (msg.t_stop_received, msg.t_stop_applied, msg.t_queued),
                                    moved.resumed if moved is not None else (), estimated)
            if applied and ran:  # one that never ran is a failed start, not an ended recording
                self.counters.ended(msg.cause, nbytes, msg.error, lost)  # a salvaged job's, from its file
            return applied or self._end_abandoned(msg)  # given up while this thread waited for the lock
        if isinstance(msg, JobDigits):
            rec = self._jobs.get(msg.job_id)
            return rec is not None and rec._on_digits(msg)
        return True

    def _on_worker_lost(self, worker: int, jobs: set[int], why: str) -> None:
        """Jobs of a worker lost while the controller closes (no takeover then); runs on
        the supervisor's clean-up thread, never on its I/O thread."""
        for job_id in jobs:
            with self._lock:
                rec = self._jobs.pop(job_id, None)
            if rec is not None:
                nbytes, samples, seconds = salvage(rec._path, rec._encrypted)
                ran = rec._ran(job_id)
                if rec._on_ended(job_id, Cause.ERROR, nbytes, samples, seconds, why) and ran:
                    self.counters.ended(Cause.ERROR, nbytes, why, 0)

    def stats(self) -> dict:
        """Workers, their load, progress lag (from shared memory) and the last heartbeat figures.

        `lag_s` is the time since the worker last published progress; a worker lagging more
        than `supervisor.DEGRADED_S` is `degraded` (overloaded or paused). Slowness is never
        a reason to kill: only `Config.stall_timeout_s` without any progress is.
        `deaths_in_a_row`: deaths of the worker since one last stayed up
        `supervisor.RESPAWN_STABLE_S`; `respawn_in_s`: the wait before its replacement
        starts, after a back-off (`supervisor.respawn_delay`; 0 when none is held back)."""
        sup = self.supervisor
        if sup is None:
            return {"workers": []}
        now_ns = time.monotonic_ns()
        workers = []
        for w in sup.workers:
            lag = sup.lag(w.index, now_ns) if w.ready else 0.0
            workers.append(
                {"index": w.index, "pid": w.proc.pid, "cpu": w.cpu, "alive": w.alive, "ready": w.ready,
                 "jobs": w.load, "ticks": sup.ticks(w.index), "lag_s": round(lag, 3),
                 "degraded": lag > DEGRADED_S,
                 "cpu_s": w.beat.cpu_s if w.beat else 0.0, "overruns": w.beat.overruns if w.beat else 0,
                 "deaths_in_a_row": sup.deaths_in_a_row[w.index],
                 "respawn_in_s": round(sup.respawn_in(w.index), 3)})
        return {"restarts": sup.restarts, "takeovers": sup.takeovers,
                "degraded": any(w["degraded"] for w in workers),
                # Messages the I/O thread received and did not apply, by reason (a peer that is
                # not one of our workers, a malformed frame, a report on another worker's job, ...).
                "dropped_messages": sum(sup.dropped.values()), "dropped_by_reason": dict(sup.dropped),
                "workers": workers}


RUN_DIR_PREFIX = "wholecall-run-"


def make_run_dir(prefix: str = RUN_DIR_PREFIX) -> tuple[str, int]:
    """A new owner-only run directory, locked by this process: (path, descriptor to keep).
    `prefix`: the controller's, or another process's of ours (`wholecall serve`'s).

    Another controller's sweep may remove it before our lock; then again (`create_claimed`)."""
    def create() -> tuple[str, int]:
        path = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", suffix=LOCKED_SUFFIX)
        return path, os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    return create_claimed(create)


def sweep_run_dirs(directory: str | None = None, prefix: str = RUN_DIR_PREFIX) -> list[str]:
    """Remove run directories (control socket) of controllers that were killed: ours by
    owner, named wholecall-run-*, that no process holds locked (`make_run_dir`; an
    earlier version's, unlocked, only when its PID is gone, `shm.owner.legacy_owner_gone`).

    Not by the PID in the name: a controller in another PID namespace (a container
    sharing /tmp or TMPDIR) has a number that means nothing here, and removing its run
    directory would take its control socket from every worker it starts later."""
    removed = []
    directory = directory or tempfile.gettempdir()
    for path in glob.glob(os.path.join(glob.escape(directory), prefix + "*")):
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not path.endswith(LOCKED_SUFFIX) and not legacy_owner_gone(os.path.basename(path)[len(prefix):]):
            continue  # an earlier version's, which takes no lock: by its PID, as that version did
        if st.st_uid == os.geteuid() and sweep_unowned(path, _remove_tree, want_dir=True):
            removed.append(path)
    return removed


def _remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def worker_capacity(max_channels: int, workers: int) -> int:
    """Jobs each worker sizes its arrays for at start-up.

    Growing them later copies every per-job array (hundreds of MB at 10,000 channels)
    while the rings fill: the one stall that overran rings at 8,192 channels. Sized
    for an even share plus 25 % of imbalance; the arrays are calloc'd, so rows never
    used cost no resident memory, and a worker that gets more still grows.
    """
    return max(64, min(max_channels, -(-max_channels * 5 // (4 * max(1, workers))) + 16))


def salvage(path: str, encrypted: bool) -> tuple[int, int, float]:
    """Make a dead worker's file describe all the audio it wrote: (bytes, frames, seconds).

    Workers refresh a header only every few seconds (`worker.pipeline.HEADER_REFRESH_SAMPLES`),
    so the file of a killed worker says less than it holds; the worker process is gone
    when this runs, so nothing else writes the file. An encrypted file is left as it is:
    `wholecall decrypt` repairs what it decrypts.
    """
    if not path or encrypted:
        return 0, 0, 0.0
    try:
        repair(path)
        info = read_info(path)
        unit_bytes, unit_frames = info.unit()
        frames = info.data_size // unit_bytes * unit_frames
        return info.file_size, frames, frames / info.rate if info.rate else 0.0
    except (OSError, ValueError) as e:
        log.warning("cannot repair %s after its worker was lost: %s", path, e)
        return 0, 0, 0.0
