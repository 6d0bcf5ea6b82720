"""`channel.WholeCallRecorder`: the spec's API, a thin waiting shell over `RecorderCore`.

Every public method may be called from any thread. Each recorder has one condition
variable; API calls and worker events (delivered by the supervisor's I/O thread) feed
the I/O-free core under it, perform the actions it returns (send a StartJob or a
StopJob) and wake whoever waits. The decisions are the core's (`recorder_core.py`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from wholecall.formats.encrypted import PART_SUFFIX
from wholecall.protocol import JobDigits, JobStarted, PauseJob, StartJob, StopJob, encode
from wholecall.protocol.limits import start_job_problem
from wholecall.shm import layout as L

from . import sidecar as sc
from . import states
from .args import RESERVED_SUFFIXES, RecordOptions, check_min_seconds, check_pause_mode, check_start, check_timeout
from .condition import Condition
from .durability import fsync_path, sync_files
from .errors import Error, Hangup
from .recorder_core import JobReport, PauseRequest, RecorderCore
from .resources import make_dirs
from .states import CallState, Cause, RecorderState

if TYPE_CHECKING:
    from .channel import CallChannel
    from .supervisor import Supervisor

log = logging.getLogger("wholecall.controller")
#: The stop trace of a recorder no stop() has traced yet: one shared empty list (see `_stop_marks`).
_NO_MARKS: list[float] = []


@dataclass(frozen=True)
class JobResult:
    """What the worker reported about the last job of a recorder."""

    path: str
    cause: Cause
    bytes: int
    samples: int
    duration_s: float
    error: str
    #: Samples of this recording that were overwritten in the rings before a worker
    #: takeover could read them (recorded as silence of exactly that length); 0 normally.
    lost_samples: int = 0
    #: The recording was shorter than `min_seconds`: its file was removed (no sidecar);
    #: `cause` is still why it ended.
    discarded: bool = False
    #: Something above the silence threshold was recorded (paused audio does not count).
    audio_detected: bool = False
    #: The metadata sidecar written next to the file ("" if none: discarded, no file, off).
    sidecar: str = ""
    #: The paused spans, as the sidecar lists them.
    paused: tuple = ()


@dataclass(frozen=True)
class StartTrace:
    """Where the last successful start() spent its time: CLOCK_MONOTONIC readings, the
    worker's two included (the clock is system-wide). Tells an operator whether a slow
    start is the controller's, the transport's or the worker's."""

    called: float  # start() entered
    sent: float  # StartJob handed to the supervisor's I/O thread
    worker_received: float  # the worker read it
    worker_opened: float  # an opener thread had the file open
    worker_confirmed: float  # the opener queued JobStarted (the tick attaches the job at its next serve point)
    delivered: float  # the I/O thread handed JobStarted to this recorder
    returned: float  # start() returned True

    HOPS = ("checks", "to_worker", "open", "confirm", "from_worker", "wake_up")

    def hops_ms(self) -> dict[str, float]:
        """Each hop in ms: argument checks, controller to worker, the file's creation on an
        opener thread (including its wait in the openers' queue), the opener's confirmation,
        worker back to the I/O thread, I/O thread to the waiting API thread."""
        t = (self.called, self.sent, self.worker_received, self.worker_opened, self.worker_confirmed,
             self.delivered, self.returned)
        return {name: 1000 * (b - a) for name, a, b in zip(self.HOPS, t, t[1:])}


@dataclass(frozen=True)
class StopTrace:
    """Where the last stop() spent its time, as `StartTrace` for start(): CLOCK_MONOTONIC
    readings, the worker's three included."""

    called: float  # stop() entered
    sent: float  # StopJob handed to the supervisor's I/O thread
    worker_received: float  # the worker's I/O thread read it
    worker_applied: float  # the worker loop applied it (between ticks)
    worker_queued: float  # the job drained and its file finalised, JobEnded queued
    delivered: float  # the controller's I/O thread handed JobEnded to this recorder
    finished: float  # a finisher thread had hashed the file and written its sidecar
    returned: float  # stop() returned

    HOPS = ("checks", "to_worker", "wait_loop", "drain_finalise", "from_worker", "sidecar", "wake_up")

    def hops_ms(self) -> dict[str, float]:
        """Each hop in ms: checks and lock, controller to worker, the worker loop reaching
        the stop (a tick in progress), draining and finalising the file, worker back to the
        I/O thread, the finisher (hash, sidecar, fsyncs, with its queue), the API thread's wake-up."""
        t = (self.called, self.sent, self.worker_received, self.worker_applied, self.worker_queued,
             self.delivered, self.finished, self.returned)
        return {name: 1000 * (b - a) for name, a, b in zip(self.HOPS, t, t[1:])}


class WholeCallRecorder:
    """Records the whole call (both legs) of one `CallChannel` to a WAV file."""

    State = RecorderState
    Cause: ClassVar[type[states.Cause]] = Cause

    def __init__(self, channel: CallChannel) -> None:
        # The channel owns its recorder (`channel.WholeCallRecorder`); a strong reference
        # back would make every call a reference cycle, freed only by the cyclic garbage
        # collector's rare full passes: at 100 calls/s that is megabytes of dead calls
        # between passes, and the controller's resident memory ratchets up with them.
        # A channel is alive while it is open (the controller holds it) or while its user does.
        self._channel_ref = weakref.ref(channel)
        self._channel_id = channel.id
        self._about = {"channel": self._channel_id}  # log lines' extra: the service adds its call id
        self._slots = channel.slots
        self._arena = channel.controller.arena
        self._ctl = channel.controller
        # Over a plain lock, not the default RLock: nothing here takes it twice (every wait
        # is outside the `with` blocks), and an RLock-backed Condition keeps three more
        # objects a call (the RLock's bound _release_save, _acquire_restore and _is_owned)
        # for every full collection of the process to walk.
        self._cond = Condition(threading.Lock())
        self._core = RecorderCore(f"Channel({channel.id})")
        self._core.context["channel"] = channel.id
        self._worker = -1
        self._path = ""
        self._encrypted = False
        self.last_result: JobResult | None = None
        #: Timestamps of the last start() that succeeded (None before one has).
        self.last_start_trace: StartTrace | None = None
        self._started: tuple[float, JobStarted] | None = None
        #: Timestamps of the last stop() whose job ended by it (None before one has).
        self.last_stop_trace: StopTrace | None = None
        # stop(): called, sent; then the worker's and ours. Shared and empty until a stop()
        # makes its own (every append below is guarded by a length of at least one).
        self._stop_marks: list[float] = _NO_MARKS
        self._opts: RecordOptions | None = None
        self._notes: sc.JobNotes | None = None
        #: Set by an application (`wholecall serve` does) to add to each sidecar: a dict
        #: with any of `call_id`, `media` (per-leg stats), `digits` (RFC 4733 events:
        #: {"digit", "leg", "position"} on the legs' clock). Called on a finisher thread.
        self.sidecar_source: Callable[[], dict] | None = None
        #: Set by an application to hear of each recording's end with its own result: called
        #: once, on a finisher thread, with the `JobResult` of every recording started while
        #: it was set that a worker took (ended, or failed to make its file). Taken at
        #: `start()`, so a recording that ends at once, before `start()` has returned, is
        #: reported all the same, and a later start's result is never mistaken for it
        #: (`wholecall serve`'s webhooks polled `state()` and could miss a short IDLE).
        self.on_end: Callable[[JobResult], None] | None = None
        self._on_end: Callable[[JobResult], None] | None = None
        #: Extension of the spec: a recording started while this is > 0 and whose file
        #: holds less audio (seconds) is discarded when it ends: file removed, no sidecar,
        #: cause unchanged, `last_result.discarded` True. Checked by `start()`.
        self.min_seconds: float = 0.0

    @property
    def _channel(self) -> CallChannel:
        ch = self._channel_ref()
        if ch is None:
            raise Hangup(f"Channel({self._channel_id}) is closed (hung up)")
        return ch

    # -- the spec's queries ---------------------------------------------------------------

    def state(self) -> RecorderState:
        """IDLE, RECORDING or ERROR (the last job failed)."""
        with self._cond:
            return self._core.state()

    def progress(self) -> tuple[float, int]:
        """While RECORDING: (seconds of the call since the recording started, paused spans
        included; bytes its file holds so far, written at each flush). A limit or a held-back
        silence can leave the final file shorter; `last_result` says what it holds.
        (0.0, 0) otherwise."""
        with self._cond:
            if self._core.state() is not RecorderState.RECORDING or self._notes is None:
                return 0.0, 0
            start, path, encrypted = self._notes.start_pos, self._path, self._encrypted
        ch = self._channel_ref()
        seconds = max(0, ch.position() - start) / 8000 if ch is not None else 0.0
        del ch  # see _on_ended
        try:
            nbytes = os.path.getsize(path + PART_SUFFIX if encrypted else path)
        except OSError:
            nbytes = 0
        return seconds, nbytes

    @property
    def path(self) -> str:
        """The file of the running recording, else of the last one started ("" before any);
        a start refused for its arguments changes nothing."""
        with self._cond:
            if self._core.busy:
                return self._path
            return self.last_result.path if self.last_result is not None else ""

    def cause(self) -> states.Cause:
        """Why the last job ended; NONE while a job runs or before any job."""
        with self._cond:
            return self._core.cause()

    # -- the spec's commands ----------------------------------------------------------------

    def start(
        self,
        filename: Any,
        file_format: str = "alaw",
        rate: int = 8000,
        max_bytes: int = 0,
        milliseconds_max_silence: int = 0,
        milliseconds_initial_silence: int = 0,
        dtmf_elim: bool = True,
        recording_mode: str = "mixed",
        cipher: Any = None,
    ) -> bool:
        """Begin recording; True once the worker has the file open and reads the rings.

        `self.min_seconds` (an extension of the spec, an attribute so that the spec's
        signature stays as it is) applies to the recording started here."""
        called = time.monotonic()
        self._check_call()
        with self._cond:
            # Again under the lock: a hang-up makes the call IDLE before it takes this lock to
            # end the job, so a start that passed the check above while the call hung up would
            # otherwise begin a job no one ends (nothing was running when the hang-up looked).
            self._check_call()
            if self._core.busy:
                raise Error(f"Channel({self._channel_id}): whole call recorder is already RECORDING")
            busy = self._channel.activities.busy()
            if busy:
                raise Error(
                    f"Channel({self._channel_id}): cannot start the whole call recorder while the channel "
                    f"{' and '.join(busy)}; start the recorder before these"
                )
            args = check_start(
                self._ctl.config.recordings_dir, filename, file_format, rate, max_bytes,
                milliseconds_max_silence, milliseconds_initial_silence, dtmf_elim, recording_mode, cipher,
            )
            min_s = check_min_seconds(self.min_seconds)
            cfg = self._ctl.config
            if cfg.sidecars and os.path.lexists(sc.sidecar_path(args.path)):
                raise Error(f"filename {filename!r}: {os.path.basename(sc.sidecar_path(args.path))} already exists "
                            "where the recording's sidecar would go; recordings are never overwritten")
            if self._ctl.abandoned_path(args.path):
                raise Error(f"filename {filename!r}: a start of this name was given up unconfirmed and its worker "
                            "may still make the file; use another name")
            for suffix in RESERVED_SUFFIXES:  # an encrypted recording's unfinished files: `wholecall recover` them
                if os.path.lexists(args.path + suffix):
                    raise Error(f"filename {filename!r}: {os.path.basename(args.path + suffix)} exists, the "
                                "intermediate of an unfinished encrypted recording of that name (wholecall recover)")
            self._ctl._free_space.check()
            # The whole request is built, checked and encoded before anything changes: one
            # the encoder or a worker could not take must leave the recorder as it was,
            # not RECORDING for ever with its legs armed. The job id and start position,
            # known only once the state changes, are bounded ints that always encode.
            # Built and encoded before anything changes: job_id and start_pos are filled in below.
            msg = args.start_job(1, self._channel_id, self._channel.inbound.slot, self._channel.outbound.slot, 0)
            _check_encodes(self._channel_id, msg)
            worker = self._supervisor().pick()
            if worker is None:
                return self._failed_to_start(args.path, "no worker is available to record")
            parent = os.path.dirname(args.path)
            try:
                make_dirs(parent, self._ctl.config.dir_mode)
            except OSError as e:
                return self._failed_to_start(args.path, f"cannot create directory {parent}: {e.strerror or e}")
            job_id = self._ctl.new_job(self)
            root = cfg.recordings_dir
            # The name under the recordings directory, for the state-change log lines (relpath's
            # Python was ~9 % of start()'s own CPU; a prefix is the common case).
            rel = args.path[len(root) + 1:] if args.path.startswith(root + os.sep) else os.path.relpath(args.path, root)
            self._core.context.update(recording=rel, worker=worker.index)
            self._core.begin(job_id, called, cfg.start_timeout_s)
            self._worker = worker.index
            self._path = args.path
            self._encrypted = args.cipher is not None
            self._on_end = self.on_end
            start_pos = self._channel.arm(job_id)
            self._opts = args
            self._notes = sc.JobNotes(start_pos, time.time(), min_s)
            msg = dataclasses.replace(msg, job_id=job_id, start_pos=start_pos)
            self._supervisor().assign(worker, job_id)
            sent = time.monotonic()
            self._supervisor().send(worker.index, msg)
            # Until the worker confirms the job or it ends unconfirmed. A stop or hang-up while
            # it starts does not end the wait: a job its worker confirms did start (True, and its
            # result tells how it ended), one that never ran did not.
            deadline = self._core.start_deadline or (called + cfg.start_timeout_s)
            while self._core.job_id == job_id and self._core.busy and not self._core.confirmed:
                now = time.monotonic()
                if now >= deadline and self._core.finishing:
                    # It ended unconfirmed (its file could not be made) and a finisher thread
                    # is about to say so: that error, not "did not confirm", is its end.
                    self._cond.wait(0.05)
                    continue
                if now >= deadline:
                    give_up = self._core.poll(now)  # None when a stop is already on its way
                    if give_up is not None:
                        self._send_stop(give_up.job_id, give_up.cause)
                    self._abandon(job_id, worker.index, cfg.start_timeout_s)
                    break
                self._cond.wait(deadline - now)
            started = self._started
            if started is None or started[1].job_id != job_id:
                ch = self._channel_ref()
                hung_up = ch is None or ch.state() is CallState.IDLE
                del ch  # see _on_ended
                if hung_up:  # the spec: IDLE raises Hangup
                    raise Hangup(f"Channel({self._channel_id}): the call hung up while the recording started")
                return False
            delivered, ev = started
            self.last_start_trace = StartTrace(called, sent, ev.t_received, ev.t_opened, ev.t_confirmed, delivered,
                                               time.monotonic())
            return True

    def record(
        self,
        filename: Any,
        file_format: str = "alaw",
        rate: int = 8000,
        seconds_timeout: float | None = None,
        max_bytes: int = 0,
        milliseconds_max_silence: int = 0,
        milliseconds_initial_silence: int = 0,
        dtmf_elim: bool = True,
        recording_mode: str = "mixed",
        cipher: Any = None,
    ) -> states.Cause:
        """Record until the job ends (or `seconds_timeout` expires: cause TIMEOUT); returns the cause."""
        self._check_call()  # the spec's Hangup/Error come before any argument is looked at
        timeout = check_timeout("seconds_timeout", seconds_timeout, allow_zero=False)
        started = self.start(filename, file_format, rate, max_bytes, milliseconds_max_silence,
                             milliseconds_initial_silence, dtmf_elim, recording_mode, cipher)
        if not started:
            return self._wait_end(self._ctl.config.stop_timeout_s) or Cause.ERROR
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._core.busy:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    self._request_stop(Cause.TIMEOUT)
                    break
                self._cond.wait(left)
        return self._wait_end(None) or Cause.ERROR

    def stop(self) -> bool:
        """End the job with ABORTED; True once the file is finalised."""
        self._check_call()
        called = time.monotonic()
        with self._cond:
            if not self._core.busy:
                return True
            self._stop_marks = [called]
            self._request_stop(Cause.ABORTED)
        ended = self._wait_end(self._ctl.config.stop_timeout_s) is not None
        marks = self._stop_marks
        if ended and len(marks) == 7 and marks[2] > 0:
            self.last_stop_trace = StopTrace(*(marks + [time.monotonic()]))
        return ended

    # -- extension: pause and resume (not in the spec) -------------------------------------

    def pause(self, mode: str = "silence") -> bool:
        """Stop recording what the call says from this moment, until `resume()` (PCI DSS:
        a caller reading out a card number). An extension of the spec's API.

        Effective from the legs' sample position at the moment of the call, exactly,
        however late the worker applies it (`shm.layout`, "Pause gate"). `mode`
        "silence" (default) puts digital silence of the paused length in the file, so
        the timeline is kept; "skip" leaves the paused span out. Paused time counts
        toward neither silence limit; the sidecar lists the spans. True if the recorder
        was recording and is now paused; False if it was already paused (nothing changes).
        """
        self._check_call()
        mode = check_pause_mode(mode)
        return self._pause_or_resume(mode)

    def resume(self) -> bool:
        """Record again from this moment (exactly, as `pause`); False if not paused."""
        self._check_call()
        return self._pause_or_resume("")

    @property
    def paused(self) -> str:
        """The pause mode of the running recording ("silence" | "skip"), or "" if not paused."""
        with self._cond:
            return self._core.paused

    def _pause_or_resume(self, mode: str) -> bool:
        with self._cond:
            try:
                req = self._core.request_pause(mode)
            except ValueError as e:
                raise Error(str(e)) from None
            if req is None:
                return False
            pos, now = self._send_pause(req), time.time()
            notes = self._notes
            if notes is not None:
                if mode:
                    notes.pauses = (*notes.pauses, sc.PauseSpan(mode, pos, now))
                elif notes.paused:
                    notes.pauses[-1].end_pos, notes.pauses[-1].end_t = pos, now
            log.info("Channel(%d): recording %s at leg position %d", self._channel_id,
                     f"paused ({mode})" if mode else "resumed", pos, extra=self._about)
            return True

    def _send_pause(self, req: PauseRequest) -> int:
        """Fix the request's position and send it; returns the position (caller holds the condition).

        The gate protocol (`shm.layout`, "Pause gate"): HOLD first, a full barrier (a
        lock's atomic read-modify-write), the legs' positions, then the position with
        the request's number. The worker cannot have read past the position before it
        applies the request, so the pause is exact to the sample."""
        arena = self._channel.inbound.arena
        slot = self._channel.inbound.slot
        arena.gate[slot] = L.GATE_HOLD
        with _BARRIER:
            pass
        pos = self._channel.position()
        arena.gate[slot] = L.gate_word(req.seq, pos)
        self._supervisor().send(self._worker, PauseJob(job_id=req.job_id, seq=req.seq, pos=pos, mode=req.mode))
        return pos

    def wait_until_finished(self, seconds_timeout: float | None = 120) -> states.Cause:
        """The job's cause once it ends; TIMEOUT if still running after `seconds_timeout` (the job goes on)."""
        self._check_call()
        timeout = check_timeout("seconds_timeout", seconds_timeout, allow_zero=True)
        cause = self._wait_end(timeout)
        return Cause.TIMEOUT if cause is None else cause

    # -- internals ---------------------------------------------------------------------------

    def _supervisor(self) -> Supervisor:
        sup = self._ctl.supervisor
        if sup is None:
            raise Error("the controller is closed")
        return sup

    def _check_call(self) -> None:
        state = self._channel.state()
        if state is CallState.IDLE:
            raise Hangup(f"Channel({self._channel_id}): the call is IDLE (hung up)")
        if state is not CallState.ANSWERED:
            raise Error(f"Channel({self._channel_id}): the call is {state.value}, not ANSWERED")

    def _failed_to_start(self, path: str, error: str) -> bool:
        """A job that fails before reaching a worker (caller holds the condition).

        It is still a failed record job, reported as the worker would report one:
        `start()` returns False, state ERROR, cause ERROR; no file was created.
        """
        log.error("Channel(%d): cannot start recording %s: %s", self._channel_id, path, error, extra=self._about)
        self._core.refuse(JobReport(0, Cause.ERROR, 0, 0, 0.0, error))
        self.last_result = JobResult(path, Cause.ERROR, 0, 0, 0.0, error)
        self._cond.notify_all()
        return False

    def _abandon(self, job_id: int, worker: int, timeout_s: float) -> bool:
        """A start its worker did not confirm in time (an opener stuck on a slow disk, a
        frozen worker): over for the caller now, as a failed start (state ERROR, cause
        ERROR, no file), not RECORDING with a job that a next start() is refused for. The
        stop is on its way; the controller removes the file if the worker makes it after
        all (`Controller.abandon`). Caller holds the condition."""
        error = f"the worker did not confirm the start in {timeout_s:g} s"
        log.error("Channel(%d): job %d on worker %d: %s; given up", self._channel_id, job_id, worker, error,
                  extra=self._about)
        self._ctl.abandon(job_id, self._path)
        ch = self._channel_ref()
        if ch is not None:
            ch.disarm(job_id)
        del ch  # see _on_ended
        self._core.ended(JobReport(job_id, Cause.ERROR, 0, 0, 0.0, error))
        self.last_result = JobResult(self._path, Cause.ERROR, 0, 0, 0.0, error)
        self._cond.notify_all()
        return False

    def _wait_end(self, timeout: float | None) -> states.Cause | None:
        """Wait until no job runs; its cause, or None on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._core.busy:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(left)
            return self._core.cause()

    def _request_stop(self, cause: states.Cause) -> None:
        """Ask the worker to end the job (caller holds the condition)."""
        action = self._core.request_stop(cause)
        if action is not None:
            self._send_stop(action.job_id, action.cause)

    def _send_stop(self, job_id: int, cause: states.Cause) -> None:
        end_pos = self._channel.position()
        self._supervisor().send(self._worker, StopJob(job_id=job_id, cause=cause, end_pos=end_pos))
        if len(self._stop_marks) == 1:
            self._stop_marks.append(time.monotonic())

    def _hangup(self, wait_s: float) -> None:
        """The call hung up: end a running job with HANGUP and wait (bounded) for the file."""
        with self._cond:
            if not self._core.busy:
                return
            self._request_stop(Cause.HANGUP)
        if wait_s > 0:
            self._wait_end(wait_s)

    # -- events (I/O thread) -------------------------------------------------------------------

    def _on_started(self, ev: JobStarted) -> bool:
        """Apply a worker's confirmation; False (nothing changed) for one that is not due:
        another job's, or a second one for this job (the machine would refuse it)."""
        with self._cond:
            delivered = time.monotonic()
            if not self._core.started(ev.job_id):
                return False
            self._started = (delivered, ev)
            self._cond.notify_all()
            return True

    def _ran(self, job_id: int) -> bool:
        """Whether `job_id`, the current job, was confirmed by its worker (made its file)."""
        with self._cond:
            return job_id == self._core.job_id and self._core.confirmed

    def _on_digits(self, ev: JobDigits) -> bool:
        with self._cond:
            if ev.job_id != self._core.job_id or self._notes is None:
                return False
            self._notes.digits = (*self._notes.digits, *ev.digits)
            return True

    def _on_ended(self, job_id: int, cause: states.Cause, nbytes: int, samples: int, duration_s: float, error: str,
                  lost_samples: int = 0, origin: int = -1, end_pos: int = -1, heard: bool = False,
                  worker_times: tuple[float, float, float] = (0.0, 0.0, 0.0), resumed: tuple[int, ...] = (),
                  estimated: bool = False) -> bool:
        """The worker ended the job (I/O thread): its file is final. The rest (removing a
        too short file, or hashing it and writing its sidecar) is disk work for a
        finisher thread (`sidecar.py`); the recorder reports the end after it.
        `worker_times`: the worker's stop stamps (`JobEnded.t_stop_received` ...);
        `resumed`: where takeovers went on reading (`sidecar.heard_once`); `estimated`: the
        worker died before reporting the end and the file could not tell its counts, which
        may fall short of it, so it is never discarded for `min_seconds` (a complete
        recording was deleted so)."""
        delivered = time.monotonic()
        with self._cond:
            if not self._core.will_end(job_id):
                return False
            if len(self._stop_marks) == 2:
                self._stop_marks.extend((*worker_times, delivered))
            ch = self._channel_ref()
            if ch is not None:
                ch.disarm(job_id)
                # Not kept past its use: a caller dropping the call once stop() returns
                # frees it then, not when this thread's frame is gone.
                del ch
            elif self._arena is not None:  # closed and dropped before its job ended: the same slots
                self._arena.disarm(self._slots, job_id)
            notes, opts, path = self._notes, self._opts, self._path
            if notes is not None and resumed:
                notes.resumed = resumed
        self._ctl.finish(self._finish, job_id, cause, nbytes, samples, duration_s, error, lost_samples, origin,
                         end_pos, heard, notes, opts, path, estimated)
        return True

    def _finish(self, job_id: int, cause: states.Cause, nbytes: int, samples: int, duration_s: float, error: str,
                lost_samples: int, origin: int, end_pos: int, heard: bool, notes: sc.JobNotes | None,
                opts: RecordOptions | None, path: str, estimated: bool = False) -> None:
        """Finisher thread: discard or describe the final file, then end the job."""
        discarded, side, paused = False, "", ()
        try:
            exists = bool(path) and os.path.isfile(path)
            if notes is not None and exists and notes.min_seconds and cause is not Cause.ERROR \
                    and duration_s < notes.min_seconds and not estimated:
                os.unlink(path)
                discarded = True
                log.info("Channel(%d): job %d: %.3f s < min_seconds %.3f: %s discarded", self._channel_id, job_id,
                         duration_s, notes.min_seconds, path, extra=self._about)
            elif notes is not None and opts is not None:
                if origin < 0 and samples and not opts.ms_initial_silence:
                    origin = notes.start_pos  # a takeover's worker does not know it; no leading trim: the start
                ch = self._channel_ref()
                try:
                    end = end_pos if end_pos >= 0 or ch is None else ch.position()
                finally:
                    del ch  # see _on_ended
                extra = None
                if self.sidecar_source is not None:
                    try:
                        extra = self.sidecar_source()
                    except Exception:  # noqa: BLE001 - the application's hook must not lose the file
                        log.exception("Channel(%d): the sidecar source failed; writing without it", self._channel_id,
                                      extra=self._about)
                doc = sc.build(path=path, notes=notes, end_t=time.time(), channel=self._channel_id, job_id=job_id,
                               cause=cause.value, error=error, file_format=opts.file_format, rate=opts.rate,
                               mode=opts.mode, nbytes=nbytes, samples=samples, duration_s=duration_s,
                               sha256=sc.sha256_file(path) if exists else "", origin=origin, end_pos=end,
                               audio_detected=heard, lost_samples=lost_samples, cipher=opts.cipher, extra=extra)
                paused = tuple(doc["paused"])
                if exists and self._ctl.config.sidecars:
                    side = sc.sidecar_path(path)
                    if self._ctl.config.sync_on_stop:
                        fsync_path(path)  # the audio on the disk before the sidecar that describes it
                    sc.write_atomic(side, doc, self._ctl.config.file_mode, durable=self._ctl.config.sync_on_stop)
        except Exception as e:  # noqa: BLE001 - the job must still end
            log.exception("Channel(%d): job %d: finishing %s failed", self._channel_id, job_id, path, extra=self._about)
            error = (f"{error}; " if error else "") + f"sidecar not written: {e}"
            side = ""
        if not discarded and path:
            self._durable(path, side)
        finished = time.monotonic()
        with self._cond:
            if not self._core.ended(JobReport(job_id, cause, nbytes, samples, duration_s, error)):
                return
            if len(self._stop_marks) == 6:
                self._stop_marks.append(finished)
            result = self.last_result = JobResult(path, cause, nbytes, samples, duration_s, error, lost_samples,
                                                  discarded, heard, side, paused)
            hook = self._on_end
            if lost_samples:
                log.error("Channel(%d): job %d lost %d samples to ring overruns before a worker takeover",
                          self._channel_id, job_id, lost_samples, extra=self._about)
            if error:
                log.error("Channel(%d): job %d ended with %s: %s", self._channel_id, job_id, cause.value, error,
                          extra=self._about)
            self._cond.notify_all()
        if hook is not None:
            try:
                hook(result)
            except Exception:  # noqa: BLE001 - the application's hook must not break the finisher
                log.exception("Channel(%d): the on_end hook failed", self._channel_id, extra=self._about)

    def _durable(self, path: str, side: str) -> None:
        """The final files on the disk: the audio and the sidecar now (`Config.sync_on_stop`),
        else the sidecar by the controller's syncer, behind the caller, and the audio by the
        kernel's writeback (`durability.py` has why). A failure is logged, never the job's."""
        try:
            if self._ctl.config.sync_on_stop:
                if not side:  # with one, both are on the disk already (`_finish`)
                    sync_files((path,))
            elif side:
                self._ctl.durable_later(side)
        except OSError:
            log.exception("Channel(%d): could not make %s durable", self._channel_id, path, extra=self._about)


#: Taken and released between storing a pause gate's HOLD and reading the legs' positions:
#: acquiring a lock is an atomic read-modify-write, a full barrier on x86, so the load of
#: the positions cannot pass the store of HOLD (`shm.layout`, "Pause gate").
_BARRIER = threading.Lock()


def _check_encodes(channel: int, msg: StartJob) -> None:
    """Raise `Error` if the worker could not run `msg` or it cannot be encoded (nothing changed yet)."""
    problem = start_job_problem(msg)
    if problem:
        raise Error(f"Channel({channel}): cannot start the whole call recorder: {problem}")
    try:
        encode(msg)
    except (ValueError, TypeError, OverflowError) as e:
        raise Error(f"Channel({channel}): cannot start the whole call recorder: the request "
                    f"cannot be encoded: {e}") from None


#: The spec's name for the class of `channel.WholeCallRecorder`.
UASWholeCallFileRecorder = WholeCallRecorder
