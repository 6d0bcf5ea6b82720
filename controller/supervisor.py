"""Worker processes and the one thread that talks to them.

The supervisor spawns N workers (worker i pinned to CPU i mod cpu_count), owns the
ROUTER socket, and runs a single I/O thread: ZeroMQ sockets are not thread-safe, so
API threads hand messages over through a queue and a wake-up pipe, and the I/O thread
delivers worker events to the recorders through the `on_event` callback. It watches
heartbeats and process exits; a dead or silent worker is killed, its jobs are ended
with ERROR and a replacement is spawned on the same CPU.
"""

from __future__ import annotations

import base64
import collections
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import zmq

from wholecall.protocol import (
    Heartbeat, Hello, JobEnded, JobStarted, Message, ProtocolError, Shutdown, WorkerError, WorkerSettings, decode,
    encode,
)
from wholecall.protocol import sockets
from wholecall.protocol.wake import WakePipe

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


@dataclass
class WorkerHandle:
    index: int
    cpu: int
    proc: subprocess.Popen
    ready: bool = False
    alive: bool = True
    last_beat: float = field(default_factory=time.monotonic)
    jobs: set[int] = field(default_factory=set)
    beat: Heartbeat | None = None

    @property
    def load(self) -> int:
        return len(self.jobs)


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
        heartbeat_timeout_s: float,
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
        self.n = workers
        self.run_dir = run_dir
        self.arena_name = arena_name
        self.on_event = on_event
        self.on_worker_lost = on_worker_lost
        self.worker_settings = dict(
            tick_ms=float(tick_ms), heartbeat_ms=float(heartbeat_ms), skew_ms=float(skew_ms), flush_ms=float(flush_ms),
            scale_tick_ms=float(scale_tick_ms), scale_jobs=int(scale_jobs), capacity=int(capacity),
            priority=int(priority), silence_dbfs=float(silence_dbfs), silence_hangover_ms=int(silence_hangover_ms),
            file_mode=int(file_mode),
        )
        self.heartbeat_timeout = heartbeat_timeout_s
        self.pin = pin
        self.priority = priority
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
        self._outbox: collections.deque[tuple[int, bytes]] = collections.deque()
        self._wake = WakePipe()
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._running = True
        self._closing = False
        self.restarts = 0
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
        self._cpus = cpus
        for i in range(workers):
            self.workers.append(self._spawn(i))
        self._thread = threading.Thread(target=self._loop, name="wholecall-io", daemon=True)
        self._thread.start()

    # -- processes --------------------------------------------------------------------------

    def _spawn(self, index: int) -> WorkerHandle:
        cpu = self._cpus[index % len(self._cpus)]
        env = media_env()
        settings = WorkerSettings(index=index, cpu=cpu, endpoint=self.endpoint, arena=self.arena_name,
                                  parent=os.getpid(), **self.worker_settings)
        cmd = [sys.executable, "-P", "-m", "wholecall.worker", "--settings", base64.b64encode(encode(settings)).decode()]
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, close_fds=True)
        log.info("worker %d spawned pid=%d cpu=%d", index, proc.pid, cpu)
        return WorkerHandle(index, cpu, proc)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._ready:
            while not all(w.ready for w in self.workers):
                left = deadline - time.monotonic()
                dead = [w for w in self.workers if w.proc.poll() is not None]
                if dead:
                    raise RuntimeError(f"worker {dead[0].index} exited with code {dead[0].proc.returncode} during start-up")
                if left <= 0:
                    late = [w.index for w in self.workers if not w.ready]
                    raise TimeoutError(f"workers {late} did not report ready within {timeout:.0f} s")
                self._ready.wait(min(left, 0.1))

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

    # -- messages -------------------------------------------------------------------------

    def send(self, worker_index: int, msg: Message) -> None:
        """Queue a message for a worker (any thread); the I/O thread sends it."""
        self._outbox.append((worker_index, encode(msg)))
        self._wake.wake()

    def _flush_outbox(self) -> None:
        while self._outbox:
            index, data = self._outbox.popleft()
            w = self.workers[index]
            try:
                self.sock.send_multipart([sockets.worker_identity(index), data])
            except zmq.ZMQError as e:
                # ROUTER_MANDATORY: the worker is not connected (dead or restarting).
                log.error("cannot reach worker %d: %s", index, e)
                self._lose(w, f"worker {index} unreachable: {e}")

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
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
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
            return
        if not (w.alive and w.ready):
            return self._drop("before hello", ident, msg.TYPE)
        w.last_beat = time.monotonic()
        if isinstance(msg, Heartbeat):
            w.beat = msg
            return
        if isinstance(msg, WorkerError):
            log.warning("worker %d: %s", index, msg.message)
        if isinstance(msg, (JobStarted, JobEnded)):
            with self._lock:
                owned = msg.job_id in w.jobs
            if not owned:
                return self._drop("not its job", ident, f"{msg.TYPE} for job {msg.job_id}")
        if isinstance(msg, JobEnded):
            self.unassign(index, msg.job_id)
        try:
            applied = self.on_event(index, msg)
        except Exception:
            log.exception("worker %d: %s for job %s could not be applied", index, msg.TYPE,
                          getattr(msg, "job_id", "-"))
            applied = False
        if applied is False:
            self._drop("not applicable", ident, f"{msg.TYPE} for job {getattr(msg, 'job_id', '-')}")

    def _check(self, now: float) -> None:
        for w in list(self.workers):
            if not w.alive:
                continue
            code = w.proc.poll()
            if code is not None:
                self._drain()  # its last words (ended events) may still be queued
                if not self._closing:
                    log.error("worker %d (pid %d) died with code %s", w.index, w.proc.pid, code)
                self._lose(w, f"worker {w.index} died (exit code {code})")
            elif w.ready and now - w.last_beat > self.heartbeat_timeout:
                log.error("worker %d silent for %.1f s: killing it", w.index, now - w.last_beat)
                w.proc.kill()
                w.proc.wait()
                self._lose(w, f"worker {w.index} stopped responding")

    def _lose(self, w: WorkerHandle, why: str) -> None:
        if not w.alive:
            return
        with self._lock:
            w.alive = False
            jobs, w.jobs = set(w.jobs), set()
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait()
        self.on_worker_lost(w.index, jobs, why)
        if not self._closing:
            self.restarts += 1
            new = self._spawn(w.index)
            with self._lock:
                self.workers[w.index] = new

    # -- shutdown ---------------------------------------------------------------------------

    def close(self, timeout: float = 10.0) -> None:
        """Ask every worker to finish its jobs and exit; kill what does not."""
        self._closing = True
        for w in self.workers:
            if w.alive and w.proc.poll() is None:
                self.send(w.index, Shutdown())
        deadline = time.monotonic() + timeout
        for w in self.workers:
            try:
                w.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d did not exit in time: killing it", w.index)
                w.proc.kill()
                w.proc.wait()
        # The I/O thread delivers the last events and reports lost jobs, then stops.
        self._running = False
        self._wake.wake()
        self._thread.join(5)
        self.sock.close(linger=0)
        self.zap.close(linger=0)
        self.ctx.term()
        self._wake.close()
