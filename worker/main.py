"""The worker process: pinned to one CPU, owns a set of jobs, reports their causes.

Loop: wait for commands (or an opened file with a stop already held for it) until the next
tick is due, run the pipeline tick, queue what it produced (ended events), heartbeat. `worker.commands` owns the
socket on its own I/O thread, creates files on opener threads and confirms starts from
there; the loop attaches opened files (also mid-tick) and applies stops between ticks.
A malformed command is reported as a `WorkerError` and dropped; it never stops the loop. The worker exits when the
controller says so, when the controller *process* dies, or on SIGTERM, finalising every
file first. The controller's death is seen on the lifeline: a pipe whose write end only
the controller process holds (never inherited, never written), so its read end turns
readable (EOF) the moment that process is gone, whichever of its threads spawned us
(PR_SET_PDEATHSIG fires when the spawning *thread* exits, and is not used). A ppid
check backs it up.

Liveness: every loop turn and every serve point inside a tick store the tick counter
and a CLOCK_MONOTONIC stamp in this worker's record in the arena header
(`shm.layout`); the supervisor judges progress from that, never from messages.
"""

from __future__ import annotations

import argparse
import base64
import gc
import logging
import os
import resource
import signal
import sys
import time

import zmq

from wholecall.protocol import Cause, Heartbeat, Hello, ProtocolError, WorkerSettings, decode, logline, sockets
from wholecall.shm import Arena
from wholecall.shm import layout as L

from .commands import Commands
from .descriptors import DESCRIPTORS
from .dtmf import FRAME
from .pipeline import SAMPLE_RATE, Pipeline, cpu_seconds, default_open_sink
from .warmup import Stopped, load_kernels

log = logging.getLogger("wholecall.worker")

#: GIL hand-over interval in the worker (Python's default is 5 ms).
GIL_SWITCH_S = 0.0005
FRAME_S = FRAME / SAMPLE_RATE
#: Frames one tick may advance a job by (a backlog drains over several ticks).
MAX_FRAMES_PER_TICK = 25


def _raise_nofile(index: int) -> None:
    """Soft RLIMIT_NOFILE up to the hard limit: a worker holds one descriptor per recording,
    and the default soft limit (often 1,024) is below what thousands of calls need."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as e:
            log.warning("worker %d: cannot raise the descriptor limit from %d to %d: %s", index, soft, hard, e)


def run(settings: WorkerSettings) -> int:
    """The worker's life: attach, pin, serve jobs until told to stop or the controller is gone."""
    index, cpu, priority, parent = settings.index, settings.cpu, settings.priority, settings.parent
    lifeline = settings.lifeline
    _raise_nofile(index)
    # Recordings past this many hold no descriptor between writes (`worker.descriptors`).
    budget = DESCRIPTORS.configure_from_limit()
    log.debug("worker %d: %s recording descriptors kept open at most", index, budget)
    try:
        if cpu >= 0:  # -1: not pinned (`Config.pin_workers` off, or a CPU quota bounds the workers)
            os.sched_setaffinity(0, {cpu})
    except (AttributeError, OSError) as e:
        log.warning("worker %d: cannot pin to CPU %d: %s", index, cpu, e)
    if priority:
        # Before any thread starts: Linux keeps a nice value per thread, and threads inherit it.
        try:
            os.setpriority(os.PRIO_PROCESS, 0, -priority)
        except OSError as e:
            log.warning("worker %d: cannot raise priority to nice -%d: %s", index, priority, e)
    stopping = False

    def on_term(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the controller, which shuts us down

    # Opener threads create files between the tick's Python work, and each needs the GIL
    # back after every system call: at the default 5 ms hand-over, a start queued behind
    # a busy tick waited ~50 ms to open its file (5,000 channels, p50). 0.5 ms cut that
    # in all three A/B pairs, at no measurable CPU cost (BENCHMARKS.md).
    sys.setswitchinterval(GIL_SWITCH_S)
    arena = Arena.attach(settings.arena)
    if not 0 <= index < L.MAX_WORKERS:
        raise ValueError(f"worker index {index} outside the arena's {L.MAX_WORKERS} worker records")
    record = arena.workers[index]
    record[L.W_PID] = os.getpid()
    ticks = 0

    def progress() -> None:
        record[L.W_TICKS] = ticks
        record[L.W_PROGRESS_NS] = time.monotonic_ns()

    progress()
    try:  # compiled once per machine; alive (stamping) meanwhile
        took = load_kernels(progress, should_stop=lambda: stopping or os.getppid() != parent)
    except Stopped as e:
        log.info("worker %d: %s: exiting", index, e)
        return 0
    if took > 5:
        log.info("worker %d: audio kernels ready after %.1f s (compiled: first start on this machine)", index, took)
    ctx = zmq.Context()
    sock = sockets.dealer(ctx, settings.endpoint, index)
    tick_s = settings.tick_ms / 1000
    scale_tick_s = settings.scale_tick_ms / 1000
    scale_jobs = settings.scale_jobs
    # At scale, frames per pipeline step: what one scale tick brings (100 ms: 5 frames),
    # and never more than a tick may take or a quarter of a ring holds (a running job only
    # advances by whole blocks, so a block the ring cannot hold would never come).
    scale_block = max(1, min(round(max(tick_s, scale_tick_s) / FRAME_S), MAX_FRAMES_PER_TICK,
                             arena.capacity // (4 * FRAME)))
    pipe = Pipeline(
        arena, default_open_sink(), skew_samples=int(settings.skew_ms * SAMPLE_RATE / 1000), tick_s=tick_s,
        flush_samples=max(FRAME, int(settings.flush_ms * SAMPLE_RATE / 1000)), capacity=settings.capacity,
        max_block=scale_block, max_frames_per_tick=MAX_FRAMES_PER_TICK, silence_dbfs=settings.silence_dbfs,
        silence_hangover_ms=settings.silence_hangover_ms, file_mode=settings.file_mode,
    )
    commands = Commands(sock, pipe, index)  # from here on only its I/O thread uses the socket
    serve = pipe.between

    def serve_and_progress() -> None:
        progress()
        serve()

    pipe.between = serve_and_progress
    pipe.progress = progress
    poller = zmq.Poller()
    poller.register(commands.wake.fileno(), zmq.POLLIN)
    orphaned = False
    if lifeline >= 0:
        poller.register(lifeline, zmq.POLLIN)
    # Everything alive now (modules, numba's compiled kernels, the pipeline's arrays) lives
    # as long as the worker: out of the cyclic collector's walks with it. Its full
    # collections at 10,000 jobs walked ~177,000 objects for 120-220 ms, with the tick
    # stopped; ~123,000 of them were these. A job's own objects are freed by reference
    # counting (no cycles), so the collector only ever needs to see what came since.
    gc.collect()
    gc.freeze()
    # Stamped again now: the supervisor judges a ready worker by its last stamp, and the
    # start-up above (numba's kernels loaded, the pipeline's arrays, the collection) took
    # over a second on a loaded machine, so a replacement was killed as stalled on arrival.
    progress()
    commands.send(Hello(worker=index, pid=os.getpid(), cpu=cpu))

    def heartbeat() -> Heartbeat:
        rows = pipe.rows
        overruns = int(arena.overruns[pipe.slot_in[rows]].sum() + arena.overruns[pipe.slot_out[rows]].sum()) \
            if len(rows) else 0
        return Heartbeat(worker=index, jobs=len(pipe.jobs), cpu_s=cpu_seconds(), ticks=ticks, overruns=overruns)

    commands.heartbeat = heartbeat
    commands.heartbeat_s = settings.heartbeat_ms / 1000
    draining = False
    next_tick = time.monotonic()

    def drain_stopped() -> None:
        # Jobs whose stop was just applied end now, in a pass over their own rows, not at
        # the next tick (100 ms apart at scale): stop() returns when the file is final.
        pipe.drain(time.monotonic(), block=scale_block if len(pipe.jobs) >= scale_jobs else 1)
        if pipe.ended or pipe.digits:
            commands.send_all(pipe.digits + pipe.ended)
            pipe.digits.clear()
            pipe.ended.clear()
    def between_parts() -> None:
        # Inside a tick, between two parts of its jobs: stops read meanwhile end their jobs
        # now, so a stop waits for one part of the tick, not all of it.
        commands.receive_all()
        progress()
        drain_stopped()

    pipe.between_parts = between_parts
    try:
        while True:
            now = time.monotonic()
            wait_ms = max(0, int((next_tick - now) * 1000))
            events = dict(poller.poll(wait_ms))
            if events:
                # Apply everything queued before ticking: stops and attaches are cheap.
                commands.receive_all()
                if lifeline in events:
                    log.warning("worker %d: the controller process is gone: finishing every file", index)
                    poller.unregister(lifeline)
                    orphaned = True
                elif time.monotonic() < next_tick:
                    drain_stopped()
            progress()
            if not commands.io_alive:
                raise RuntimeError("the command I/O thread died")
            if commands.shutdown or stopping or orphaned or os.getppid() != parent:
                if not draining:
                    # Also after SIGTERM (and so parent death, PDEATHSIG): starts in flight
                    # end ABORTED with final files, and later ones are refused.
                    commands.wait_openers()
                    draining = True
                pipe.abort_all(Cause.ABORTED)
                stopping = True
            now = time.monotonic()
            if now >= next_tick or stopping:
                scale = len(pipe.jobs) >= scale_jobs
                work = pipe.tick(now, block=scale_block if scale else 1)
                commands.receive_all()
                ticks += 1
                progress()
                commands.send_all(pipe.digits + pipe.ended)
                pipe.digits.clear()
                pipe.ended.clear()
                drain_stopped()  # stops read during the tick
                # Busy with a backlog: tick again at once; otherwise keep the cadence.
                # Many jobs: tick less often, and step through blocks of frames, so each step
                # covers every job (producers write ~100 ms blocks; a 20 ms tick would split
                # them into 5x more steps, each paying the fixed numpy cost).
                period = max(tick_s, scale_tick_s) if scale else tick_s
                next_tick = now if work >= len(pipe.rows) * pipe.max_frames and work else next_tick + period
                if next_tick < now - tick_s:
                    next_tick = now
            if stopping and not pipe.jobs and not commands.busy:
                break
            commands.beat_if_due()
    except BaseException as e:  # noqa: BLE001 - the last word before dying is worth sending
        log.exception("worker %d crashed", index)
        pipe.fail_all(f"worker {index} crashed: {e}")
        commands.send_all(pipe.digits + pipe.ended)  # sent by close() below, before the socket goes
        raise
    finally:
        if not commands.close():
            os._exit(3)  # its I/O thread still holds the socket: nothing more can be said safely
        sock.close(linger=1000)
        ctx.term()
        pipe.close()
        pipe = None  # type: ignore[assignment]  # the closures' last reference to the arena's views
        record = None  # the last view of the arena (progress() holds it)
        arena.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m wholecall.worker", description="wholecall worker process")
    p.add_argument("--settings", required=True,
                   help="base64 of an encoded protocol.WorkerSettings (the supervisor writes it)")
    a = p.parse_args(argv)
    try:
        msg = decode(base64.b64decode(a.settings, validate=True))
    except (ValueError, ProtocolError) as e:
        p.error(f"--settings: {e}")
    if not isinstance(msg, WorkerSettings):
        p.error(f"--settings: a {msg.TYPE!r} message, not WorkerSettings")
    logline.configure(text="%(asctime)s worker[" + str(msg.index) + "] %(levelname)s %(message)s", worker=msg.index)
    return run(msg)
