"""Worker processes and the one thread that talks to them.

The supervisor spawns N workers (worker i pinned to CPU i mod cpu_count), owns the
ROUTER socket, and runs a single I/O thread: ZeroMQ sockets are not thread-safe, so
API threads hand messages over through a queue and a wake-up pipe, and the I/O thread
delivers worker events to the recorders through the `on_event` callback.

Liveness is read from shared memory, never from messages: each worker stores a progress
stamp in its arena record (`shm.layout`) every loop turn and every serve point of a
tick. A worker whose stamp is older than `degraded_s` is reported as degraded
(`lag_s` in `Controller.stats()`); only one that has made no progress at all for
`stall_timeout_s` (stopped by SIGSTOP, wedged in the kernel) is killed, well inside the
rings' span so that its takeover loses nothing. A worker that exits, by any signal or
code, is replaced once (one spawn per death, on the same CPU; after a back-off when its
predecessors keep dying soon after their start, `respawn_delay`) and its jobs are taken
over at once (`_take_over`): each goes to the least-loaded surviving worker, or to the
replacement when there is none, as a `ResumeJob` built from the job's durable record in
the arena; the rings' read positions are first rewound to that record, so producers
cannot overwrite what the new owner must read again. Messages for a job always go to
its current owner; a message for a worker that is not connected (yet) waits for it,
and a failed send never condemns a worker. The calls never see any of this: their
recordings end later with the cause they would have had.

No warm spare: the survivors are already warm, so a takeover costs only the time to
notice the death (<= 100 ms) and to build the ResumeJobs (measured: 1,020 jobs in 19-26 ms
of this thread; the files are reopened and cut on the new owner's opener threads). Only
with a single worker do the jobs wait for the replacement's start-up (~1 s of numba),
well inside the rings' span. Files are never repaired here (a job the dead worker had
already finished but not reported is answered by the controller from what it knows).

Worker life is tied to the controller *process*: every worker gets the read end of the
lifeline pipe, whose write end only this process holds.
"""

from __future__ import annotations

import base64
import collections
import concurrent.futures as cf
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from wholecall.protocol import (
    Cause,
    Heartbeat,
    Hello,
    JobEnded,
    JobStarted,
    Message,
    PauseJob,
    ProtocolError,
    ResumeJob,
    Shutdown,
    StartJob,
    StopJob,
    WorkerError,
    WorkerSettings,
    cause_of_code,
    decode,
    encode,
    sockets,
)
from wholecall.protocol.wake import WakePipe
from wholecall.shm import Arena
from wholecall.shm import layout as L

from .cpuquota import quota_cpus
from .procenv import media_env

log = logging.getLogger("wholecall.controller")



def zmq_io_threads() -> list[int]:
    """Thread ids of libzmq's I/O threads in this process (it names them ZMQbg/IO/<n>)."""
    tids = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().startswith("ZMQbg/IO"):
                    tids.append(int(tid))
        except OSError:
            continue  # the thread ended
    return tids


#: A replacement that stays up this long ends a worker's run of deaths (`respawn_delay`).
RESPAWN_STABLE_S = 10.0
#: The wait before the replacement of the second death in a row; doubled for each further
#: one, up to `RESPAWN_MAX_S`.
RESPAWN_FIRST_S = 0.5
RESPAWN_MAX_S = 30.0
RESPAWN_WITH_JOBS_MAX_S = 2.0
"""The longest wait for a replacement that the jobs of a dead worker wait for (no survivor
took them): they must resume well within the rings' 8 s."""


def respawn_delay(deaths_before: int) -> float:
    """Seconds to wait before replacing a worker whose index has died `deaths_before` times
    since one last stayed up `RESPAWN_STABLE_S`, not counting this death.

    The first replacement starts at once: a takeover's jobs wait for it when it is the
    only worker. A worker that cannot start at all (its arena removed, a broken install)
    must not be respawned in a tight loop, though: measured at 125 spawns in 27 s, each
    a numba import, on CPUs the other workers need.
    """
    if deaths_before <= 0:
        return 0.0
    return min(RESPAWN_MAX_S, RESPAWN_FIRST_S * 2 ** min(deaths_before - 1, 16))  # (2**1024 overflowed a float)


@dataclass
class WorkerHandle:
    index: int
    cpu: int
    proc: subprocess.Popen
    #: time.monotonic() of the spawn: whether it stayed up (`RESPAWN_STABLE_S`).
    started: float = field(default_factory=time.monotonic)
    ready: bool = False
    alive: bool = True
    last_beat: float = field(default_factory=time.monotonic)
    jobs: set[int] = field(default_factory=set)
    beat: Heartbeat | None = None
    #: Encoded messages waiting for this worker to say hello (a replacement) or for its
    #: socket to take them; sent in order.
    pending: collections.deque[bytes] = field(default_factory=collections.deque)

    @property
    def load(self) -> int:
        return len(self.jobs)


@dataclass
class JobRoute:
    """What the supervisor keeps of a running job: where it is, and what a takeover needs."""

    start: StartJob  # encoded again for a takeover's ResumeJob (rare): not kept as bytes per job
    owner: int  # worker index
    confirmed: bool = False  # JobStarted was delivered
    stop: bytes | None = None  # the last StopJob, encoded: a new owner gets it again
    #: Every PauseJob of the job, encoded, in order: a new owner gets them again, so a
    #: paused job stays paused across a takeover (the worker's `PauseSchedule` drops
    #: spans that end before the position it resumes from).
    pauses: tuple[bytes, ...] = ()  # a tuple, replaced as it grows: no list per job
    lost: int = 0  # samples the rings overwrote before takeovers, recorded as silence
    moves: int = 0
    resumed: tuple[int, ...] = ()  # leg positions each takeover's worker read from (sidecar digits)


@dataclass(frozen=True)
class Durable:
    """A job's durable record as the dead worker last published it (`shm.layout`)."""

    pos: int
    samples: int = 0
    audio: int = 0
    run: int = 0
    loud_end: int = 0
    heard: bool = False
    origin: int = -1
    ending: Cause = Cause.NONE  # the cause the worker had begun finalising the job with


def read_durable(arena: Arena, slot_in: int, job_id: int, start_pos: int) -> Durable:
    """The newest complete copy of the record of `job_id`; the job's start if there is none."""
    best = None
    for copy in arena.durable[slot_in].copy():
        if copy[L.D_SEQ] > 0 and copy[L.D_JOB] == job_id and (best is None or copy[L.D_SEQ] > best[L.D_SEQ]):
            best = copy
    if best is None:
        return Durable(start_pos)
    flags = int(best[L.D_FLAGS])
    ending = cause_of_code(flags >> L.D_END_SHIFT & L.D_END_MASK) or Cause.NONE
    return Durable(int(best[L.D_RESUME]), int(best[L.D_SAMPLES]), int(best[L.D_AUDIO]), int(best[L.D_RUN]),
                   int(best[L.D_LOUD_END]), bool(flags & L.D_HEARD), (flags >> L.D_ORIGIN_SHIFT & L.D_ORIGIN_MASK) - 1,
                   ending)


#: A worker whose last progress is older than this is reported degraded (never killed for it).
DEGRADED_S = 1.0


class Supervisor:
    def __init__(
        self,
        workers: int,
        run_dir: str,
        arena_name: str,
        on_event: Callable[[int, Message], bool | None],
        on_worker_lost: Callable[[int, set[int], str], None],
        tick_ms: float,
        heartbeat_ms: float,
        stall_timeout_s: float,
        skew_ms: float,
        flush_ms: float,
        pin: bool = True,
        scale_tick_ms: float = 100.0,
        scale_jobs: int = 256,
        capacity: int = 64,
        priority: int = 0,
        silence_dbfs: float = -45.0,
        silence_hangover_ms: int = 200,
        file_mode: int = 0o600,
    ) -> None:
        if workers > L.MAX_WORKERS:
            raise ValueError(f"workers: at most {L.MAX_WORKERS} (the arena's worker records), got {workers}")
        self.n = workers
        self.run_dir = run_dir
        self.arena_name = arena_name
        self.on_event = on_event
        self.on_worker_lost = on_worker_lost
        self.worker_settings: dict[str, Any] = dict(
            tick_ms=float(tick_ms), heartbeat_ms=float(heartbeat_ms), skew_ms=float(skew_ms), flush_ms=float(flush_ms),
            scale_tick_ms=float(scale_tick_ms), scale_jobs=int(scale_jobs), capacity=int(capacity),
            priority=int(priority), silence_dbfs=float(silence_dbfs), silence_hangover_ms=int(silence_hangover_ms),
            file_mode=int(file_mode),
        )
        self.stall_timeout = stall_timeout_s
        self.pin = pin
        self.priority = priority
        self.arena = Arena.attach(arena_name)
        self.ctx = zmq.Context()
        self.endpoint = sockets.control_endpoint(run_dir)
        # Only processes this supervisor spawned may connect: the ZAP handler (served on the
        # I/O thread) checks each connection's pid (SO_PEERCRED). The 0700 run directory
        # already keeps other users out; this keeps out other processes of the same user
        # (and root), which could otherwise claim a worker's identity before it connects.
        self.zap = self.ctx.socket(zmq.REP)
        self.zap.setsockopt(zmq.LINGER, 0)
        self.zap.bind("inproc://zeromq.zap.01")
        self.sock = sockets.router(self.ctx, self.endpoint, zap=True)
        self._identities = {sockets.worker_identity(i): i for i in range(workers)}
        #: Messages received and not applied, by reason (`Controller.stats()` shows them).
        self.dropped: collections.Counter[str] = collections.Counter()
        self.workers: list[WorkerHandle] = []
        self.routes: dict[int, JobRoute] = {}  # job id -> route; guarded by _lock
        #: The route of each job that ended after a takeover: what it lost to ring overruns
        #: and where it resumed (the controller pops them).
        self.moved: dict[int, JobRoute] = {}
        self._outbox: collections.deque[tuple[int, int, bytes]] = collections.deque()  # (worker, job id, data)
        self._wake = WakePipe()
        # The lifeline: workers get the read end; the write end is never inherited (os.pipe
        # makes both non-inheritable; only the read end is passed on) and never written.
        self._life_r, self._life_w = os.pipe()
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._running = True
        self._closing = False
        self.restarts = 0
        self.takeovers = 0
        #: Deaths by worker index since one last stayed up `RESPAWN_STABLE_S` (`respawn_delay`);
        #: the I/O thread's.
        self.deaths_in_a_row = [0] * workers
        #: Worker index -> time.monotonic() at which its replacement is spawned, for a dead
        #: worker whose replacement is held back; guarded by _lock.
        self.respawn_at: dict[int, float] = {}
        # Clean-up of jobs that cannot be taken over (files to repair) runs here, never
        # on the I/O thread.
        self._cleanup = cf.ThreadPoolExecutor(1, thread_name_prefix="wholecall-cleanup")
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
        self._cpus = cpus
        # Pinned one per CPU, unless told not to (`Config.pin_workers`, which was stored and
        # never read) or a CPU quota, not a cpuset, is what bounds them: pods with a limit of 4
        # on a 32-CPU node all pinned their workers to CPUs 0-3 while the rest idled.
        quota = quota_cpus()
        self._pin = self.pin and (quota is None or quota >= len(cpus))
        for i in range(workers):
            self.workers.append(self._spawn(i))
        self._thread = threading.Thread(target=self._loop, name="wholecall-io", daemon=True)
        self._thread.start()

    # -- processes --------------------------------------------------------------------------

    def _spawn(self, index: int) -> WorkerHandle:
        cpu = self._cpus[index % len(self._cpus)] if self._pin else -1
        env = media_env()
        settings = WorkerSettings(index=index, cpu=cpu, endpoint=self.endpoint, arena=self.arena_name,
                                  parent=os.getpid(), lifeline=self._life_r, **self.worker_settings)
        cmd = [sys.executable, "-P", "-m", "wholecall.worker", "--settings", base64.b64encode(encode(settings)).decode()]
        self.arena.workers[index, L.W_PROGRESS_NS] = time.monotonic_ns()  # its start-up is not a stall
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, close_fds=True, pass_fds=(self._life_r,))
        log.info("worker %d spawned pid=%d cpu=%d", index, proc.pid, cpu, extra={"worker": index})
        return WorkerHandle(index, cpu, proc)

    def wait_ready(self, timeout: float, limit: float | None = None) -> None:
        """Until every worker has said hello. A worker is late when it made no progress for
        `timeout` seconds, or has not said hello within `limit` (10 x `timeout`): a machine's
        first start compiles the audio kernels (25 s of CPU here, longer on a loaded box),
        and a worker doing so stamps its progress (`worker.warmup`); only a silent one is hung."""
        started = time.monotonic()
        limit = 10 * timeout if limit is None else limit
        restarts = self.restarts
        with self._ready:
            while not all(w.ready for w in self.workers):
                dead = [w for w in self.workers if w.proc.poll() is not None]
                if dead:
                    raise RuntimeError(f"worker {dead[0].index} exited with code {dead[0].proc.returncode} during start-up")
                if self.restarts != restarts:  # the I/O thread saw a death first and spawned anew
                    raise RuntimeError(f"a worker died during start-up ({self.restarts - restarts} restarted)")
                waiting = [w for w in self.workers if not w.ready]
                silent = [w.index for w in waiting if self.lag(w.index) > timeout]
                if silent:
                    raise TimeoutError(f"workers {silent} did not report ready: no progress for {timeout:.0f} s")
                if time.monotonic() - started > limit:
                    raise TimeoutError(f"workers {[w.index for w in waiting]} did not report ready within {limit:.0f} s")
                self._ready.wait(0.1)

    def pick(self) -> WorkerHandle | None:
        """The least-loaded live worker."""
        with self._lock:
            live = [w for w in self.workers if w.alive and w.ready]
            return min(live, key=lambda w: w.load) if live else None

    def assign(self, worker: WorkerHandle, job_id: int) -> None:
        with self._lock:
            worker.jobs.add(job_id)

    def unassign(self, worker_index: int, job_id: int) -> None:
        with self._lock:
            self.workers[worker_index].jobs.discard(job_id)

    def lag(self, index: int, now_ns: int | None = None) -> float:
        """Seconds since worker `index` last published progress in the arena."""
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        return max(0.0, (now_ns - int(self.arena.workers[index, L.W_PROGRESS_NS])) / 1e9)

    def ticks(self, index: int) -> int:
        return int(self.arena.workers[index, L.W_TICKS])

    # -- messages -------------------------------------------------------------------------

    def send(self, worker_index: int, msg: Message) -> None:
        """Queue a message for a worker (any thread); the I/O thread sends it.

        A job's messages go to the job's current owner, whatever `worker_index` says:
        after a takeover the caller's idea of the worker may be stale."""
        data = encode(msg)
        job_id = 0
        if isinstance(msg, StartJob):
            job_id = msg.job_id
            with self._lock:
                self.routes[job_id] = JobRoute(msg, worker_index)
        elif isinstance(msg, (StopJob, PauseJob)):
            job_id = msg.job_id
            with self._lock:
                route = self.routes.get(job_id)
                if route is not None:
                    if isinstance(msg, StopJob):
                        route.stop = data
                    else:
                        route.pauses = (*route.pauses, data)
        self._outbox.append((worker_index, job_id, data))
        self._wake.wake()

    def _flush_outbox(self) -> None:
        while self._outbox:
            index, job_id, data = self._outbox.popleft()
            if job_id:
                with self._lock:
                    route = self.routes.get(job_id)
                    if route is not None:
                        index = route.owner
            self._deliver(self.workers[index], data)

    def _deliver(self, w: WorkerHandle, data: bytes) -> None:
        """Send now, or keep it for the worker (I/O thread). Never kills anything: a worker
        that cannot be reached is either starting (it gets its messages on hello) or dead
        (its jobs and their last stops go to the new owner)."""
        if not (w.alive and w.ready) or w.pending:
            w.pending.append(data)
            return
        try:
            sockets.send_frames(self.sock, sockets.worker_identity(w.index), data)
        except zmq.ZMQError as e:
            # ROUTER_MANDATORY: not connected (it died, or is reconnecting). Keep it.
            log.warning("worker %d not reachable (%s): message kept", w.index, e, extra={"worker": w.index})
            w.pending.append(data)

    def _send_pending(self, w: WorkerHandle) -> None:
        while w.pending and w.alive:
            try:
                sockets.send_frames(self.sock, sockets.worker_identity(w.index), w.pending[0])
            except zmq.ZMQError as e:
                log.warning("worker %d not reachable (%s): %d messages kept", w.index, e, len(w.pending),
                            extra={"worker": w.index})
                return
            w.pending.popleft()

    def _loop(self) -> None:
        if self.priority:
            # Linux keeps a nice value per thread: only the threads every command and event
            # passes through (this one and ZeroMQ's I/O thread) are raised to the workers'
            # level, so a worker's JobStarted is taken at once, not after the workers'
            # slice on a saturated box. The API threads stay the caller's business.
            for tid in [threading.get_native_id(), *zmq_io_threads()]:
                try:
                    os.setpriority(os.PRIO_PROCESS, tid, -self.priority)
                except OSError as e:
                    log.warning("controller thread %d: cannot raise priority to nice -%d: %s", tid, self.priority, e)
                    break
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.zap, zmq.POLLIN)
        poller.register(self._wake.fileno(), zmq.POLLIN)
        next_check = time.monotonic()
        while self._running:
            # This thread is the only one that hears workers: an exception escaping it would
            # leave every start() and stop() to time out and dead workers unnoticed. Whatever
            # one round raises is logged and counted, and the next round goes on.
            try:
                events = dict(poller.poll(100))
                if self._wake.fileno() in events:
                    self._wake.drain()
                if self.zap in events:
                    self._authenticate()
                self._flush_outbox()
                if self.sock in events:
                    self._drain()
                now = time.monotonic()
                if now >= next_check:
                    self._check(now)
                    for w in self.workers:
                        if w.pending and w.alive and w.ready:
                            self._send_pending(w)
                    next_check = now + 0.1
            except Exception:
                log.exception("controller I/O thread: a round failed; going on")
                self.dropped["I/O round failed"] += 1
                time.sleep(0.01)  # a fault that repeats must not spin a core
        self._drain()
        self._check(time.monotonic())

    def _authenticate(self) -> None:
        """Answer the ZAP requests queued: a connection is accepted only from a live worker process we spawned."""
        while self.zap.poll(0, zmq.POLLIN):
            request = self.zap.recv_multipart()
            pid = sockets.zap_peer_pid(request)
            with self._lock:
                ours = pid is not None and any(w.alive and w.proc.pid == pid for w in self.workers)
            if not ours:
                log.error("refused a connection to the control socket from pid %s: not a worker of this controller",
                          pid)
                self.dropped["connection refused"] += 1
            self.zap.send_multipart(sockets.zap_reply(request, ours))

    def _drain(self, limit: int = 10_000) -> None:
        for _ in range(limit):
            frames = sockets.recv_ready(self.sock)
            if frames is None:
                return
            self._receive(frames)

    def _drop(self, reason: str, ident: bytes, detail: object = "") -> None:
        log.error("dropping a message from %r: %s%s", ident, reason, f" ({detail})" if detail else "")
        self.dropped[reason] += 1

    def _receive(self, frames: list[bytes]) -> None:
        """One message from a peer: applied only if it comes, well-formed, from the worker
        it concerns. Everything else is logged, counted and dropped."""
        ident = frames[0]
        index = self._identities.get(ident)  # exact: b"w01" or b"w-1" is nobody
        if index is None or len(frames) != 2:
            return self._drop("unknown peer", ident)
        w = self.workers[index]
        try:
            msg = decode(frames[1])
        except ProtocolError as e:
            return self._drop("malformed", ident, e)
        if isinstance(msg, Hello):
            if w.ready or msg.worker != index or msg.pid != w.proc.pid:
                return self._drop("unexpected hello", ident, f"worker {msg.worker} pid {msg.pid}")
            w.last_beat = time.monotonic()
            with self._ready:
                w.ready = True
                self._ready.notify_all()
            self._send_pending(w)
            return
        if not (w.alive and w.ready):
            return self._drop("before hello", ident, msg.TYPE)
        w.last_beat = time.monotonic()
        if isinstance(msg, Heartbeat):
            w.beat = msg
            return
        if isinstance(msg, WorkerError):
            log.warning("worker %d: %s", index, msg.message, extra={"worker": index})
        if isinstance(msg, (JobStarted, JobEnded)):
            with self._lock:
                route = self.routes.get(msg.job_id)
                if route is not None and route.owner != index:
                    return self._drop("not its job", ident, f"{msg.TYPE} for job {msg.job_id} (worker {route.owner}'s)")
                if isinstance(msg, JobStarted):
                    if route is not None and route.confirmed:
                        # a second confirmation (forged, or a takeover that had to create the file): not applied
                        return self._drop("not applicable", ident, f"duplicate started for job {msg.job_id}")
                    if route is not None:
                        route.confirmed = True
                else:
                    self.routes.pop(msg.job_id, None)
                    if route is not None and route.moves:
                        self.moved[msg.job_id] = route
                    w.jobs.discard(msg.job_id)
        try:
            applied = self.on_event(index, msg)
        except Exception:
            log.exception("worker %d: %s for job %s could not be applied", index, msg.TYPE,
                          getattr(msg, "job_id", "-"), extra={"worker": index})
            applied = False
        if applied is False:
            self._drop("not applicable", ident, f"{msg.TYPE} for job {getattr(msg, 'job_id', '-')}")

    def _check(self, now: float) -> None:
        now_ns = time.monotonic_ns()
        self._respawn_due(now)
        for w in list(self.workers):
            if not w.alive:
                continue
            if self.deaths_in_a_row[w.index] and now - w.started >= RESPAWN_STABLE_S:
                log.info("worker %d has stayed up %.0f s: its respawn back-off is reset", w.index, RESPAWN_STABLE_S,
                         extra={"worker": w.index})
                self.deaths_in_a_row[w.index] = 0
            code = w.proc.poll()
            if code is not None:
                self._drain()  # its last words (ended events) may still be queued
                if not self._closing:
                    log.error("worker %d (pid %d) died with code %s", w.index, w.proc.pid, code, extra={"worker": w.index})
                self._lose(w, f"worker {w.index} died (exit code {code})")
            elif w.ready and self.stall_timeout and self.lag(w.index, now_ns) > self.stall_timeout:
                # No progress at all (not slow: a slow worker still stamps at every serve
                # point): stopped or wedged. Its jobs are taken over while the rings still
                # hold what it had not written.
                log.error("worker %d (pid %d) made no progress for %.1f s: killing it, its jobs move",
                          w.index, w.proc.pid, self.lag(w.index, now_ns), extra={"worker": w.index})
                w.proc.kill()
                w.proc.wait()
                self._drain()
                self._lose(w, f"worker {w.index} stopped making progress")

    def _lose(self, w: WorkerHandle, why: str) -> None:
        if not w.alive:
            return
        with self._lock:
            w.alive = False
            w.jobs = set()
            w.pending.clear()  # job messages are re-sent to the new owners below
            jobs = sorted(j for j, r in self.routes.items() if r.owner == w.index)
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait()
        now = time.monotonic()
        if now - w.started >= RESPAWN_STABLE_S:
            self.deaths_in_a_row[w.index] = 0
        delay = respawn_delay(self.deaths_in_a_row[w.index])
        if jobs and not any(o.alive and o.ready for o in self.workers if o is not w):
            # Its jobs wait for this replacement and the rings hold 8 s: no longer than that.
            delay = min(delay, RESPAWN_WITH_JOBS_MAX_S)
        with self._lock:
            closing = self._closing
            if delay and not closing:
                # Its jobs go to the survivors; with none, they wait in the dead handle for
                # the replacement (`_respawn_due` hands them over).
                self.respawn_at[w.index] = now + delay
            if closing:
                for j in jobs:
                    self.routes.pop(j, None)
        if closing:
            self._cleanup.submit(self.on_worker_lost, w.index, set(jobs), why)
            return
        self.deaths_in_a_row[w.index] += 1
        if delay:
            log.error("worker %d died %.1f s after its start, %d deaths in a row: its replacement starts in %.1f s",
                      w.index, now - w.started, self.deaths_in_a_row[w.index], delay, extra={"worker": w.index})
        else:
            self.restarts += 1
            new = self._spawn(w.index)
            with self._lock:
                self.workers[w.index] = new
        t0 = time.monotonic()
        for job_id in jobs:
            self._take_over(job_id, w.index)
        if jobs:
            log.warning("%s: %d jobs taken over in %.1f ms", why, len(jobs), 1000 * (time.monotonic() - t0))

    def _respawn_due(self, now: float) -> None:
        """Spawn the replacements whose back-off has passed (I/O thread). Under the lock,
        which `close` takes to cancel them: no replacement starts once it has."""
        with self._lock:
            for index, at in sorted(self.respawn_at.items()):
                if at > now or self._closing:
                    continue
                del self.respawn_at[index]
                dead = self.workers[index]
                new = self._spawn(index)
                new.jobs, new.pending = dead.jobs, dead.pending  # what waited for it
                self.workers[index] = new
                self.restarts += 1

    def respawn_in(self, index: int, now: float | None = None) -> float:
        """Seconds until the held-back replacement of worker `index` starts (0: none waits)."""
        with self._lock:
            at = self.respawn_at.get(index)
        return 0.0 if at is None else max(0.0, at - (time.monotonic() if now is None else now))

    def _take_over(self, job_id: int, dead: int) -> None:
        """Move one job of a dead worker to a live one (I/O thread; reads a few words of shm)."""
        with self._lock:
            route = self.routes.get(job_id)
        if route is None:
            return
        st = route.start
        a = self.arena
        if a.job[st.slot_in] != job_id:
            # The dead worker ended the job (it released the legs) but its JobEnded was lost.
            with self._lock:
                self.routes.pop(job_id, None)
            stop = decode(route.stop) if route.stop else None
            d = read_durable(a, st.slot_in, job_id, st.start_pos)
            # Its own decision (SILENCE, SIZE) is in the durable record when it got that far.
            cause = stop.cause if isinstance(stop, StopJob) else d.ending if d.ending is not Cause.NONE else Cause.ERROR
            log.error("job %d ended on worker %d, which died before reporting it: %s", job_id, dead, cause)
            known = route.stop is not None or cause is not Cause.ERROR
            self.on_event(dead, JobEnded(job_id=job_id, cause=cause, bytes=0, samples=d.samples * st.rate // 8000,
                                         duration_s=d.samples / 8000, origin=d.origin, heard=d.heard, salvaged=True,
                                         error="" if known else f"worker {dead} died as the job ended"))
            return
        d = read_durable(a, st.slot_in, job_id, st.start_pos)
        # Rewind first: from here producers keep everything from d.pos on for the new owner.
        a.rewind([st.slot_in, st.slot_out], job_id, d.pos)
        newest = max(int(a.write_pos[st.slot_in]), int(a.write_pos[st.slot_out]))
        lost = max(0, newest - a.capacity - d.pos)
        with self._lock:
            live = [x for x in self.workers if x.alive and x.ready and x.index != dead]
            target = min(live, key=lambda x: x.load) if live else self.workers[dead]  # else the replacement
            route.owner = target.index
            route.lost += lost
            route.moves += 1
            route.resumed += (d.pos + lost,)
            target.jobs.add(job_id)
        self.takeovers += 1
        if lost:
            log.error("job %d: the rings overwrote %d samples (%.3f s) before the takeover: recorded as silence",
                      job_id, lost, lost / 8000)
        msg = ResumeJob(start=encode(route.start), pos=d.pos, samples=d.samples, audio=d.audio, run=d.run,
                        loud_end=d.loud_end, heard=d.heard, lost=lost, confirmed=route.confirmed, origin=d.origin,
                        ending=d.ending)
        log.info("job %d: worker %d -> worker %d at leg position %d (%d samples in the file)",
                 job_id, dead, target.index, d.pos, d.samples)
        self._deliver(target, encode(msg))
        for data in route.pauses:
            self._deliver(target, data)
        if route.stop is not None:
            self._deliver(target, route.stop)

    # -- shutdown ---------------------------------------------------------------------------

    def close(self, timeout: float = 10.0) -> None:
        """Ask every worker to finish its jobs and exit; kill what does not."""
        with self._lock:
            self._closing = True
            waiting = sorted(self.respawn_at)
            self.respawn_at.clear()
            lost = {i: {j for j, r in self.routes.items() if r.owner == i} for i in waiting}
            for jobs in lost.values():
                for j in jobs:
                    self.routes.pop(j, None)
        for i, jobs in lost.items():  # their worker's replacement was held back: nobody has them
            if jobs:
                self._cleanup.submit(self.on_worker_lost, i, jobs, f"worker {i} died and was not replaced before closing")
        for w in self.workers:
            if w.alive and w.proc.poll() is None:
                if w.ready:
                    self.send(w.index, Shutdown())
                else:  # still starting (maybe waiting for a kernel compile): no socket hears a Shutdown yet
                    w.proc.terminate()
        deadline = time.monotonic() + timeout
        for w in self.workers:
            try:
                w.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d did not exit in time: killing it", w.index, extra={"worker": w.index})
                w.proc.kill()
                w.proc.wait()
        # The I/O thread delivers the last events and reports lost jobs, then stops.
        self._running = False
        self._wake.wake()
        self._thread.join(5)
        self._cleanup.shutdown(wait=True)
        self.sock.close(linger=0)
        self.zap.close(linger=0)
        self.ctx.term()
        self._wake.close()
        for fd in (self._life_r, self._life_w):
            os.close(fd)
        self.arena.close()
