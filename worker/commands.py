"""The worker's side of the control protocol: commands in, job events out.

Starting a job means creating its file, and creating a file can block: on a busy ext4,
inode allocation reads bitmaps and inode tables from disk (measured: the whole worker
stalled in `open(O_CREAT)` during a 1,000 starts/s ramp until its rings overran). So
files are created on a few opener threads, and the worker loop only attaches a job
whose file is open (cheap) and then confirms it with `JobStarted`; the tick never
waits for a disk.

Commands are also served in the middle of a tick (`serve`, called between the tick's
steps), so a start at 10,000 channels waits for a slice of a tick, not a whole one.
Mid-tick, starts are handed to the openers and finished opens are attached; every
other command waits for the end of the tick (`after_tick`), because a stop placed
while the tick holds positions it has not stored yet could end a job late.

Order per job is kept: a stop for a job whose file is still being opened is held and
applied right after it is attached.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import threading
import time

import zmq

from protocol import (
    JobEnded,
    JobStarted,
    Message,
    ProtocolError,
    Shutdown,
    StartJob,
    StopJob,
    WorkerError,
    decode,
)
from protocol import sockets

from .pipeline import Pipeline
from .wavfile import WavWriter

#: Files created at once. More than one so that one slow create does not hold up the
#: starts behind it; few, because they all share the worker's CPU.
OPENER_THREADS = 4


class Commands:
    """Applies commands to one pipeline; the worker loop is its only caller (plus its openers)."""

    def __init__(self, sock: zmq.Socket, pipe: Pipeline, index: int) -> None:
        self.sock = sock
        self.pipe = pipe
        self.index = index
        self.shutdown = False
        self._pool = cf.ThreadPoolExecutor(OPENER_THREADS, thread_name_prefix="opener")
        self._opening: dict[int, float] = {}  # job_id -> when its start was read; file being created
        self._held_stops: dict[int, StopJob] = {}  # stops for jobs still opening
        self._opened: list[tuple[StartJob, WavWriter | None, str, float]] = []  # filled by the openers
        self._lock = threading.Lock()
        self._deferred: list[Message] = []
        self._accepting = True  # False once the openers are shut down
        # Opener threads wake the loop through this pipe when a file is ready.
        self.wake_r, self._wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self._wake_w, False)
        pipe.between = self.serve

    @property
    def busy(self) -> bool:
        """Starts still in flight (their files are being created)."""
        return bool(self._opening)

    # -- the loop's calls --------------------------------------------------------------

    def receive_all(self) -> None:
        """Apply every queued command and every finished open (between ticks)."""
        self._apply_deferred()
        self._receive(mid_tick=False)

    def serve(self) -> None:
        """Mid-tick: pass starts to the openers and attach opened files; hold the rest."""
        self._receive(mid_tick=True)

    def after_tick(self) -> None:
        self._apply_deferred()
        self._attach_opened()

    def wait_openers(self) -> None:
        """Shutting down: let every file in creation finish, and attach it (it then ends ABORTED)."""
        self._accepting = False
        self._pool.shutdown(wait=True)
        self._attach_opened()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            opened, self._opened = self._opened, []
        for _, writer, _, _ in opened:  # a crash between open and attach: leave no half-made file
            if writer is not None:
                writer.abort()
        os.close(self.wake_r)
        os.close(self._wake_w)

    # -- internals -------------------------------------------------------------------------

    def _receive(self, mid_tick: bool) -> None:
        while self.sock.poll(0, zmq.POLLIN):
            msg = self._decode(self.sock.recv_multipart()[-1])
            if msg is None:
                continue
            if mid_tick and not isinstance(msg, StartJob):
                self._deferred.append(msg)
            else:
                self._apply(msg)
        self._attach_opened()

    def _decode(self, data: bytes) -> Message | None:
        """The command, or None after answering a malformed one with WorkerError."""
        try:
            return decode(data)
        except ProtocolError as e:
            self._send(WorkerError(worker=self.index, job_id=0, message=f"bad command: {e}"))
            return None

    def _apply_deferred(self) -> None:
        deferred, self._deferred = self._deferred, []
        for msg in deferred:
            self._apply(msg)

    def _apply(self, msg: Message) -> None:
        if isinstance(msg, StartJob):
            self._begin(msg)
        elif isinstance(msg, StopJob):
            if msg.job_id in self._opening:
                self._held_stops[msg.job_id] = msg
            elif not self.pipe.stop(msg.job_id, msg.cause, msg.end_pos):
                self._send(WorkerError(worker=self.index, job_id=msg.job_id, message="stop for unknown job"))
        elif isinstance(msg, Shutdown):
            self.shutdown = True
        else:
            self._send(WorkerError(worker=self.index, job_id=0, message=f"unexpected command {msg.TYPE}"))

    def _begin(self, msg: StartJob) -> None:
        if msg.job_id in self.pipe.by_id or msg.job_id in self._opening:
            self._refuse(msg, f"job {msg.job_id} already running")
            return
        if not self._accepting or self.shutdown:
            # A start that crossed our Shutdown: the openers are gone (or going), so no
            # file is made and the controller hears why at once.
            self._refuse(msg, f"worker {self.index} is shutting down")
            return
        self._opening[msg.job_id] = time.monotonic()
        self._pool.submit(self._open, msg)

    def _refuse(self, msg: StartJob, why: str) -> None:
        self._send(JobEnded(job_id=msg.job_id, cause="ERROR", bytes=0, samples=0, duration_s=0.0, error=why))

    def _open(self, msg: StartJob) -> None:
        """Opener thread: create the file (may block on the disk), then wake the loop."""
        try:
            writer, err = self.pipe.open_writer(msg)
        except BaseException as e:  # noqa: BLE001 - the loop must hear about every start
            writer, err = None, f"cannot create {msg.path}: {e}"
        with self._lock:
            self._opened.append((msg, writer, err, time.monotonic()))
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # the pipe is full (the loop is already due to wake) or closing

    def _attach_opened(self) -> None:
        # Always drain the wake-up pipe: an opener may write its byte after an earlier
        # call took its file, and a byte left behind would keep the loop's poll spinning.
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        if not self._opened:
            return
        with self._lock:
            opened, self._opened = self._opened, []
        for msg, writer, err, t_opened in opened:
            t_received = self._opening.pop(msg.job_id)
            stop = self._held_stops.pop(msg.job_id, None)
            if writer is None:
                self._refuse(msg, err)
                continue
            self.pipe.attach(msg, writer)
            self._send(JobStarted(job_id=msg.job_id, t_received=t_received, t_opened=t_opened,
                                  t_confirmed=time.monotonic()))
            if stop is not None:
                self.pipe.stop(stop.job_id, stop.cause, stop.end_pos)
            elif self.shutdown:
                self.pipe.stop(msg.job_id, "ABORTED", msg.start_pos)

    def _send(self, msg: Message) -> None:
        sockets.send(self.sock, msg)
