"""The recorder of one channel as an I/O-free core: events in (with `now`), actions out.

Every decision a `WholeCallRecorder` makes lives here: which job is current, whether a
worker's report is about it, when a start has waited too long, whether a stop must be
sent. The core never sleeps, sends or locks; the shell (`recorder.py`) holds the lock,
does the sends and waits on a condition until the core's phase changes. So the state
logic is tested in memory, deterministically, without processes
(`tests/test_recorder_core.py`), and the process tests only test the plumbing.
"""

from __future__ import annotations

from dataclasses import dataclass

from wholecall.protocol.causes import Cause

from .states import Phase, RecorderMachine, RecorderState


@dataclass(frozen=True)
class StopRequest:
    """Action: ask the worker to end `job_id`, recording everything up to the request."""

    job_id: int
    cause: Cause


@dataclass(frozen=True)
class PauseRequest:
    """Action: pause (`mode` "silence" | "skip") or resume (`mode` "") `job_id`; `seq`
    numbers the job's requests from 1 (the worker's gate compares it)."""

    job_id: int
    seq: int
    mode: str


@dataclass(frozen=True)
class JobReport:
    """Event: the worker's account of how a job ended."""

    job_id: int
    cause: Cause
    bytes: int
    samples: int
    duration_s: float
    error: str


class RecorderCore:
    """Phase, cause, current job and start deadline of one recorder. Not thread-safe: the shell locks."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._m = RecorderMachine(name)
        self.start_deadline: float | None = None
        """CLOCK_MONOTONIC time after which an unconfirmed start is given up (None: no start pending)."""
        self.last: JobReport | None = None
        self.paused = ""
        """The running job's pause mode ("silence" | "skip"), "" while it records."""
        self.finishing = False
        """The worker has ended the job; its file's sidecar is being written (`sidecar.py`)."""
        self.confirmed = False
        """The worker confirmed the current (or last) job: its file was made and it recorded.
        A job that ends unconfirmed never ran (its file could not be made): a failed start,
        not an ended recording."""
        self._seq = 0

    # -- queries ---------------------------------------------------------------------------

    @property
    def context(self) -> dict[str, object]:
        """Fields the state-change log lines carry (the shell fills in channel, recording, worker)."""
        return self._m.context

    @property
    def phase(self) -> Phase:
        return self._m.phase

    @property
    def job_id(self) -> int:
        return self._m.job_id

    @property
    def busy(self) -> bool:
        """A job is in progress (the spec's RECORDING)."""
        return self._m.busy

    def state(self) -> RecorderState:
        return self._m.phase.public

    def cause(self) -> Cause:
        """NONE while a job runs or before any job (the spec), else how the last one ended."""
        return Cause.NONE if self._m.busy else self._m.cause

    # -- commands --------------------------------------------------------------------------

    def begin(self, job_id: int, now: float, timeout_s: float) -> None:
        """A start was sent for `job_id`; it must be confirmed by `now + timeout_s`."""
        self._m.fire("start", job_id)
        self.start_deadline = now + timeout_s
        self.paused, self._seq, self.finishing, self.confirmed = "", 0, False, False

    def refuse(self, report: JobReport) -> None:
        """A start that failed before reaching a worker: a failed job all the same (state ERROR)."""
        self._m.fire("start", 0)
        self._end(report)

    def request_stop(self, cause: Cause) -> StopRequest | None:
        """End the running job for `cause`; the action to send, or None if nothing to ask
        (no job, or an end already requested: the first request's cause stands)."""
        if not self._m.busy or self._m.phase is Phase.STOPPING or self.finishing:
            return None
        job_id = self._m.job_id
        self._m.fire("stop")
        return StopRequest(job_id, cause)

    def request_pause(self, mode: str) -> PauseRequest | None:
        """Pause (`mode` "silence" | "skip") or resume (`mode` "") the running job; the
        action to send, or None when it already is so (the first pause's mode stands).
        ValueError, naming the phase, when no job is recording (not yet confirmed,
        ending, or none): there is nothing to pause."""
        if self._m.phase is not Phase.RECORDING or self.finishing:
            raise ValueError(f"{self.name}: cannot {'pause' if mode else 'resume'} the whole call recorder: it is "
                             f"{'ending' if self.finishing or self._m.phase is Phase.STOPPING else self._m.phase.value}"
                             f", not RECORDING")
        if bool(mode) == bool(self.paused):
            return None
        self._seq += 1
        self.paused = mode
        return PauseRequest(self._m.job_id, self._seq, mode)

    def poll(self, now: float) -> StopRequest | None:
        """Timers: a start not confirmed by its deadline is ended (cause ERROR when it reports)."""
        if self._m.phase is Phase.STARTING and self.start_deadline is not None and now >= self.start_deadline:
            self.start_deadline = None
            return self.request_stop(Cause.ERROR)
        return None

    # -- worker events ---------------------------------------------------------------------

    def started(self, job_id: int) -> bool:
        """The worker confirms `job_id`; False (ignored) if it is not the current job."""
        if job_id != self._m.job_id or self._m.phase not in (Phase.STARTING, Phase.STOPPING):
            return False
        self.start_deadline = None
        self.confirmed = True
        self._m.fire("started")
        return True

    def will_end(self, job_id: int) -> bool:
        """The worker ended `job_id` (its file is final); the shell finishes it (sidecar)
        and then reports `ended`. False (ignored) if it is not the current job or is
        already being finished."""
        if job_id != self._m.job_id or not self._m.busy or self.finishing:
            return False
        self.finishing = True
        return True

    def ended(self, report: JobReport) -> bool:
        """The worker ended `report.job_id`; False (ignored) if it is not the current job."""
        if report.job_id != self._m.job_id or not self._m.busy:
            return False
        self._end(report)
        return True

    def _end(self, report: JobReport) -> None:
        self.start_deadline = None
        self.finishing = False
        self.paused = ""
        self.last = report
        self._m.fire("ended", cause=report.cause)
