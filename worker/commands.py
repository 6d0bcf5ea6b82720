"""The worker's side of the control protocol: commands in, job events out.

Starting a job means creating its file, and creating a file can block: on a busy ext4,
inode allocation reads bitmaps and inode tables from disk (measured: the whole worker
stalled in `open(O_CREAT)` during a 1,000 starts/s ramp until its rings overran). So
files are created on a few opener threads, and the tick never waits for a disk.

The socket belongs to one I/O thread, not to the tick loop. It reads every command as
it arrives and hands a StartJob to the openers at once, and an opener sends JobStarted
as soon as the file is open: the job reads its rings from `start_pos`, so attaching it
to the pipeline at the loop's next serve point loses nothing, and a start no longer
waits for the tick to reach a serve point twice (to be read, then to be confirmed;
measured at 5,000 channels: 14 and 9 ms at p50). Everything else the loop and the
openers send goes through one outbox that the I/O thread drains, so the events of a
job leave in the order they were made (JobStarted before its JobEnded).

Every other command waits for the loop: stops and shutdown are applied between ticks
(`receive_all`), because a stop placed while the tick holds positions it
has not stored yet could end a job late. Mid-tick (`serve`, called between the tick's
steps) opened files are attached. Order per job is kept: a stop for a job whose file is
still being opened is held and applied right after it is attached.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import logging
import threading
import time
from collections.abc import Callable

import zmq

from wholecall.protocol import (
    Cause,
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
    decode,
    sockets,
)
from wholecall.protocol.wake import WakePipe

from .finished import FinishedFile
from .pipeline import Pipeline, close_kept
from .wavfile import WavWriter

#: Files created at once. More than one so that one slow create does not hold up the
#: starts behind it; few, because they all share the worker's CPU.
OPENER_THREADS = 4
#: Opened files attached in one `Pipeline.attach_many` (a takeover's thousands stamp
#: progress between batches).
ATTACH_BATCH = 64
#: Ended jobs remembered so that a stop or pause crossing an end is not reported as an
#: error: far more than can end between a controller's stop and its arrival.
ENDED_KEPT = 8192

#: A file an opener made for a job: (start, writer or None, error, (resume, leg position) of a takeover or None).
#: A takeover whose dead worker had published the final file gets a FinishedFile (`worker.finished`).
Opened = tuple[StartJob, WavWriter | FinishedFile | None, str, tuple[ResumeJob, int] | None]

log = logging.getLogger("wholecall.worker")


class Commands:
    """Commands for one pipeline. The worker loop calls the public methods; the I/O thread
    owns the socket from construction on (nobody else may touch it until `close`)."""

    def __init__(self, sock: zmq.Socket, pipe: Pipeline, index: int) -> None:
        self.sock = sock
        self.pipe = pipe
        self.index = index
        self.shutdown = False  # the loop has applied a Shutdown
        self._pool = cf.ThreadPoolExecutor(OPENER_THREADS, thread_name_prefix="opener")
        self._lock = threading.Lock()  # guards the four fields below, shared by all threads
        self._opening: dict[int, float] = {}  # job_id -> when its start was read; file being created
        # Filled by the openers: (start, writer, error, (resume, leg position) for a takeover).
        self._opened: list[Opened] = []
        self._accepting = True  # False once a Shutdown was read or the openers are shut down
        self._inbox: list[Message] = []  # commands for the loop, in arrival order
        self._held_stops: dict[int, StopJob] = {}  # stops for jobs still opening (loop only)
        self._held_pauses: dict[int, list[PauseJob]] = {}  # pauses and resumes for them, in order
        self._outbox: collections.deque[Message] = collections.deque()
        #: job_id -> [when its StopJob was read (I/O thread), when the loop applied it]:
        #: stamped on its JobEnded (`protocol.JobEnded.t_stop_received`).
        self._stop_times: dict[int, list[float]] = {}
        #: Jobs whose end was queued lately: a stop or pause that crossed the end (a call
        #: hung up as its silence limit ended it, a refused start) is no one's error.
        #: (An insertion-ordered dict: membership, and the oldest to forget, in one structure.)
        self._ended: dict[int, None] = {}
        self._ended_lock = threading.Lock()  # `send` runs on any thread
        # The loop waits on `wake` (commands, or an opened file it must see now); the I/O thread on
        # the socket and `_io_wake` (something to send, or time to stop).
        self.wake = WakePipe()
        self._io_wake = WakePipe()
        self._io_running = True
        self._io_failed = False
        self._closed = False
        #: Builds the worker's Heartbeat; sent every `heartbeat_s` by `beat_if_due`, which
        #: the loop calls between ticks and `serve` calls inside them.
        self.heartbeat: Callable[[], Message] | None = None
        self.heartbeat_s = 0.25
        self._next_beat = 0.0
        pipe.between = self.serve
        self._io = threading.Thread(target=self._io_loop, name="commands-io", daemon=True)
        self._io.start()

    @property
    def busy(self) -> bool:
        """Starts still in flight (their files are being created)."""
        return bool(self._opening)

    @property
    def io_alive(self) -> bool:
        """False once the I/O thread has failed (the worker must then fail too)."""
        return not self._io_failed and self._io.is_alive()

    # -- the loop's calls --------------------------------------------------------------

    def send(self, msg: Message) -> None:
        """Queue an event for the controller (any thread); the I/O thread sends it."""
        if isinstance(msg, JobEnded):
            self._note_ended(msg.job_id)
        self._outbox.append(msg)
        self._io_wake.wake()

    def _note_ended(self, job_id: int) -> None:
        with self._ended_lock:
            ended = self._ended
            ended.pop(job_id, None)
            ended[job_id] = None
            if len(ended) > ENDED_KEPT:
                del ended[next(iter(ended))]

    def send_all(self, msgs: list[Message]) -> None:
        """Queue several events with one wake-up of the I/O thread (a tick's endings)."""
        if msgs:
            for m in msgs:
                if isinstance(m, JobEnded):
                    self._note_ended(m.job_id)
            if self._stop_times:
                msgs = [self._stamp(m) if isinstance(m, JobEnded) else m for m in msgs]
            self._outbox.extend(msgs)
            self._io_wake.wake()

    def _stamp(self, msg: JobEnded) -> JobEnded:
        """A stopped job's end, with when its stop was read and applied, and now."""
        times = self._stop_times.pop(msg.job_id, None)
        if times is None:
            return msg
        return dataclasses.replace(msg, t_stop_received=times[0], t_stop_applied=times[1],
                                   t_queued=time.monotonic())

    def receive_all(self) -> None:
        """Between ticks: apply the commands read so far and attach every opened file."""
        self.wake.drain()
        with self._lock:
            inbox, self._inbox = self._inbox, []
        progress = self.pipe.progress
        for i, msg in enumerate(inbox):
            if progress is not None and i and i % 256 == 0:
                progress()  # thousands of takeover commands at once are work, not a stall
            self._apply(msg)
        self._attach_opened()

    def serve(self) -> None:
        """Mid-tick: attach opened files (they join at the next tick) and keep beating;
        commands wait."""
        self._attach_opened()
        self.beat_if_due()

    def beat_if_due(self) -> None:
        """Send a heartbeat if one is due. Also from inside a tick: an overloaded worker's
        tick can outlast the supervisor's heartbeat timeout (measured: 5.4 s at 12,500
        channels on a slow VM), and a worker that is slow but working must not be killed."""
        now = time.monotonic()
        if self.heartbeat is not None and now >= self._next_beat:
            self._next_beat = now + self.heartbeat_s
            self.send(self.heartbeat())

    def wait_openers(self) -> None:
        """Shutting down: let every file in creation finish, and attach it (it then ends ABORTED)."""
        with self._lock:
            self._accepting = False
        self._pool.shutdown(wait=True)
        self._attach_opened()

    def close(self) -> bool:
        """Stop the openers and the I/O thread (after it sent everything queued).

        Starts still in flight (a crash, or a stop before `wait_openers`) end with ERROR
        and leave no file. Returns False if the I/O thread did not stop: it still owns
        the socket, so the caller must not close it (the worker then exits hard).
        """
        if self._closed:
            return True
        with self._lock:
            self._accepting = False  # a start read from now on is refused, not submitted
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            opened, self._opened = self._opened, []
            cut = list(self._opening)  # opened but not attached, or never opened (cancelled)
            self._opening.clear()
        for msg, writer, _, resumed in opened:
            if isinstance(writer, FinishedFile) and resumed is not None:
                self.pipe.release_legs(msg)
                self._end_finished(msg, writer, resumed[0])  # over already: its end is known
                if msg.job_id in cut:
                    cut.remove(msg.job_id)
            elif writer is not None and resumed is None:
                writer.abort()  # leave no half-made file
            elif writer is not None:
                close_kept(writer.sink)  # a taken-over recording stays as the dead worker left it
        for job_id in cut:
            self.send(JobEnded(job_id=job_id, cause=Cause.ERROR, bytes=0, samples=0, duration_s=0.0,
                               error=f"worker {self.index} stopped before the job was attached"))
        self._io_running = False
        self._io_wake.wake()
        self._io.join(5)
        if self._io.is_alive():
            log.error("worker %d: the command I/O thread did not stop (blocked in a send?)", self.index)
            return False
        if self._io_failed:
            try:
                self._flush_outbox()  # the thread is gone: its last messages are ours to try
            except Exception:  # noqa: BLE001 - what failed the thread fails here too
                log.exception("worker %d: %d messages could not be sent", self.index, len(self._outbox))
        self.wake.close()
        self._io_wake.close()
        self._closed = True
        return True

    # -- the I/O thread --------------------------------------------------------------------

    def _io_loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self._io_wake.fileno(), zmq.POLLIN)
        try:
            while True:
                ready = dict(poller.poll())
                if self._io_wake.fileno() in ready:
                    self._io_wake.drain()
                self._flush_outbox()
                if self.sock in ready:
                    self._read_commands()
                if not self._io_running:
                    self._flush_outbox()
                    return
        except BaseException:  # noqa: BLE001 - the loop sees io_alive turn False and fails the worker
            log.exception("worker %d: command I/O thread failed", self.index)
            self._io_failed = True
            self.wake.wake()

    def _flush_outbox(self) -> None:
        while self._outbox:
            sockets.send(self.sock, self._outbox[0])
            self._outbox.popleft()  # only once sent: a failed send leaves it for close()

    def _read_commands(self) -> None:
        for_loop = False
        while (frames := sockets.recv_ready(self.sock)) is not None:
            msg = self._decode(frames[-1])
            if msg is None:
                continue
            if isinstance(msg, ResumeJob):
                try:
                    start = decode(msg.start)
                    if not isinstance(start, StartJob):
                        raise ProtocolError(f"resume carries a {start.TYPE}, not a start")
                except ProtocolError as e:
                    self.send(WorkerError(worker=self.index, job_id=0, message=f"bad resume: {e}"))
                    continue
                self._begin(start, msg)
                continue
            if isinstance(msg, StartJob):
                self._begin(msg)
                continue
            if isinstance(msg, StopJob):
                self._stop_times[msg.job_id] = [time.monotonic(), 0.0]
            with self._lock:
                if isinstance(msg, Shutdown):
                    self._accepting = False  # a start read after it is refused at once
                self._inbox.append(msg)
            for_loop = True
        if for_loop:
            self.wake.wake()

    def _decode(self, data: bytes) -> Message | None:
        """The command, or None after answering a malformed one with WorkerError."""
        try:
            return decode(data)
        except ProtocolError as e:
            self.send(WorkerError(worker=self.index, job_id=0, message=f"bad command: {e}"))
            return None

    def _begin(self, msg: StartJob, resume: ResumeJob | None = None) -> None:
        """I/O thread: hand a start (or a takeover, with `resume`) to the openers, or refuse it."""
        refusal = self.pipe.refusal(msg)  # reads only the message and the arena's size
        with self._lock:
            if msg.job_id in self.pipe.by_id or msg.job_id in self._opening:
                why = f"job {msg.job_id} already running"
            elif refusal:
                why = refusal  # numbers it cannot represent: this job fails, the worker goes on
            elif not self._accepting:
                # A start that crossed our Shutdown: the openers are gone (or going), so no
                # file is made and the controller hears why at once.
                why = f"worker {self.index} is shutting down"
            else:
                self._opening[msg.job_id] = time.monotonic()
                self._pool.submit(self._open, msg, resume)
                return
        self._refuse(msg, why)

    # -- openers ------------------------------------------------------------------------

    def _open(self, msg: StartJob, resume: ResumeJob | None = None) -> None:
        """Opener thread: create the file (may block on the disk), confirm; wake the loop
        only when the job has something urgent (see below). A takeover reopens the dead
        worker's file instead, and confirms only a job whose start the controller has not
        seen confirmed."""
        resumed = None
        try:
            if resume is None:
                writer, err = self.pipe.open_writer(msg)
            else:
                writer, err, pos = self.pipe.open_resumed(msg, resume)
                resumed = (resume, pos)
        except BaseException as e:  # noqa: BLE001 - the loop must hear about every start
            writer, err = None, f"cannot create {msg.path}: {e}"
        confirm = writer is not None and not (resume is not None and resume.confirmed)
        t_opened = time.monotonic()
        # One critical section: JobStarted is queued before the loop can attach (and so
        # end) the job, and a JobStarted the controller sees is already attachable: the
        # job is in `_opened` before the message is queued (the I/O thread sends without
        # this lock, so queued first it could reach the controller, and the loop serve,
        # before the job was there to attach).
        with self._lock:
            self._opened.append((msg, writer, err, resumed))
            if confirm:
                self.send(JobStarted(job_id=msg.job_id, t_received=self._opening[msg.job_id],
                                     t_opened=t_opened, t_confirmed=time.monotonic()))
            # An opened file alone is not worth waking the loop for: the job joins the
            # pipeline at the tick after its attach whenever that happens before it (the loop
            # attaches at every tick and serve point) and reads its rings from `start_pos`;
            # each wake was a round of the worker's main thread per start (~100-300 us of CPU
            # on these VMs). A failed open (its refusal) and a stop or pause already held for
            # the job (a start given up, a call hung up meanwhile, a takeover's last stop)
            # must not wait for a tick: for them it wakes the loop. Held under this lock by
            # `_apply`, so a stop is either seen here or finds the job in `_opened` itself.
            urgent = writer is None or msg.job_id in self._held_stops or msg.job_id in self._held_pauses
        if urgent:
            self.wake.wake()

    # -- the loop's internals -------------------------------------------------------------

    def _apply(self, msg: Message) -> None:
        if isinstance(msg, StopJob):
            times = self._stop_times.get(msg.job_id)
            if times is not None:
                times[1] = time.monotonic()
            with self._lock:  # held under the lock: `_open` wakes the loop for what is held
                opening = msg.job_id in self._opening
                if opening:
                    self._held_stops[msg.job_id] = msg
            if not opening and not self.pipe.stop(msg.job_id, msg.cause, msg.end_pos):
                self._stop_times.pop(msg.job_id, None)
                if msg.job_id not in self._ended:
                    self.send(WorkerError(worker=self.index, job_id=msg.job_id, message="stop for unknown job"))
        elif isinstance(msg, PauseJob):
            with self._lock:
                opening = msg.job_id in self._opening
                if opening:
                    self._held_pauses.setdefault(msg.job_id, []).append(msg)
            if not opening and not self.pipe.pause(msg) and msg.job_id not in self._ended:
                self.send(WorkerError(worker=self.index, job_id=msg.job_id, message="pause for unknown job"))
        elif isinstance(msg, Shutdown):
            self.shutdown = True
        else:
            self.send(WorkerError(worker=self.index, job_id=0, message=f"unexpected command {msg.TYPE}"))

    def _refuse(self, msg: StartJob, why: str, stopped: bool = False) -> None:
        """End a start that never recorded. `stopped`: its StopJob was read meanwhile, so its
        timings go on this end as on any stopped job's, and leave `_stop_times`."""
        end = JobEnded(job_id=msg.job_id, cause=Cause.ERROR, bytes=0, samples=0, duration_s=0.0, error=why)
        self.send(self._stamp(end) if stopped else end)

    def _end_finished(self, msg: StartJob, done: FinishedFile, r: ResumeJob) -> None:
        """End a taken-over job whose dead worker had published its file (`worker.finished`)
        with the cause that worker was finishing it with; a stop held for it is answered too."""
        error = "" if r.ending is not Cause.ERROR else \
            f"the job had failed and its worker died finishing it (its reason died with it); {done.path} is kept"
        log.warning("job %d: taken over with its file already finished by the worker that died: %s",
                    msg.job_id, r.ending.name)
        end = JobEnded(job_id=msg.job_id, cause=r.ending, bytes=done.bytes, samples=done.frames,
                       duration_s=done.frames / msg.rate, error=error, origin=r.origin, end_pos=r.pos, heard=r.heard)
        self.send(self._stamp(end) if msg.job_id in self._stop_times else end)

    def _attach_opened(self) -> None:
        if not self._opened:
            return
        with self._lock:
            opened, self._opened = self._opened, []
        progress = self.pipe.progress
        for lo in range(0, len(opened), ATTACH_BATCH):
            if progress is not None and lo:
                # A takeover attaches thousands of jobs at one serve point (measured: 5,100
                # in over 2 s before batches): the worker is working, and must not look stalled.
                progress()
            batch = opened[lo:lo + ATTACH_BATCH]
            try:
                self._attach_batch(batch)
            except BaseException:
                # What was neither attached nor refused goes back where close() finds it
                # (it aborts the file, or keeps a taken-over one, and reports the job).
                with self._lock:
                    left = [o for o in batch if o[0].job_id in self._opening and o[0].job_id not in self.pipe.by_id]
                    self._opened[:0] = left + opened[lo + ATTACH_BATCH:]
                    for msg, *_ in batch:
                        if msg.job_id in self.pipe.by_id:
                            self._opening.pop(msg.job_id, None)
                raise

    def _attach_batch(self, batch: list[Opened]) -> None:
        """Attach the opened files of `batch` in one `Pipeline.attach_many` (each passed
        `Pipeline.refusal` in `_begin`); a job whose file could not be made is refused alone."""
        good = []
        for msg, writer, err, resumed in batch:
            if writer is None:
                # Its stop may be read (timed) and not applied yet: it is stamped all the same.
                self._refuse(msg, err, stopped=msg.job_id in self._stop_times)
                self._done_opening(msg.job_id)
            elif isinstance(writer, FinishedFile):
                assert resumed is not None
                self.pipe.release_legs(msg)
                self._end_finished(msg, writer, resumed[0])
                self._done_opening(msg.job_id)
            else:
                good.append((msg, writer, *(resumed or (None, -1))))
        self.pipe.attach_many(good, checked=True)
        for msg, *_ in good:
            stop = self._held_stops.pop(msg.job_id, None)
            for p in self._held_pauses.pop(msg.job_id, []):  # before the stop: they were asked for first
                self.pipe.pause(p)
            if stop is not None:
                times = self._stop_times.get(stop.job_id)
                if times is not None:
                    times[1] = time.monotonic()
                self.pipe.stop(stop.job_id, stop.cause, stop.end_pos)
            elif self.shutdown:
                self.pipe.stop(msg.job_id, Cause.ABORTED, msg.start_pos)
            self._done_opening(msg.job_id)

    def _done_opening(self, job_id: int) -> None:
        """The job is attached or refused: only now may a start with its id be taken again."""
        with self._lock:
            self._held_stops.pop(job_id, None)  # a refused job's
            self._held_pauses.pop(job_id, None)
            del self._opening[job_id]
