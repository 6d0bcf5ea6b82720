"""The call and recorder state machines, each in one place, with no I/O.

`RecorderMachine` follows the spec's states and causes. Internally a job also passes
through STARTING (start sent, worker not yet confirmed) and STOPPING (end requested,
worker still draining); publicly both read as RECORDING, because a job is in progress
and `cause()` must say NONE until the worker has reported how the job ended. The worker
decides every cause (DESIGN: "Who decides a cause"); this machine only follows reports.
"""

from __future__ import annotations

import enum
import logging

from wholecall.protocol.causes import Cause

log = logging.getLogger("wholecall.controller")


class CallState(enum.Enum):
    """Call states of a `CallChannel` (the names the platform uses)."""

    IDLE = "IDLE"
    CALL_INCOMING = "CALL_INCOMING"
    RING_INCOMING = "RING_INCOMING"
    CALL_CONNECTING = "CALL_CONNECTING"
    ANSWERED = "ANSWERED"


class RecorderState(enum.Enum):
    """The spec's record states."""

    IDLE = "IDLE"  # recording is not in progress
    RECORDING = "RECORDING"  # recording is in progress
    ERROR = "ERROR"  # a record job failed


class Phase(enum.Enum):
    """The recorder's internal phases; `public` maps them onto the spec's states."""

    IDLE = "IDLE"
    STARTING = "STARTING"
    RECORDING = "RECORDING"
    STOPPING = "STOPPING"
    ERROR = "ERROR"

    @property
    def public(self) -> RecorderState:
        if self in (Phase.STARTING, Phase.RECORDING, Phase.STOPPING):
            return RecorderState.RECORDING
        return RecorderState[self.value]


class TransitionError(RuntimeError):
    """An event that the machine does not accept in its current phase."""


# phase -> event -> next phase
_TRANSITIONS: dict[Phase, dict[str, Phase]] = {
    Phase.IDLE: {"start": Phase.STARTING},
    Phase.ERROR: {"start": Phase.STARTING},
    Phase.STARTING: {"started": Phase.RECORDING, "ended": Phase.IDLE, "stop": Phase.STOPPING},
    Phase.RECORDING: {"stop": Phase.STOPPING, "ended": Phase.IDLE},
    Phase.STOPPING: {"stop": Phase.STOPPING, "started": Phase.STOPPING, "ended": Phase.IDLE},
}


class RecorderMachine:
    """Phase and cause of one channel's recorder. Callers hold the recorder's lock."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.phase = Phase.IDLE
        self.cause = Cause.NONE
        self.job_id = 0
        #: Fields of this recorder's state-change log lines (channel, recording, worker).
        self.context: dict[str, object] = {}

    def _set(self, new: Phase, job_id: int) -> None:
        if new is not self.phase:
            log.info("%s recorder %s -> %s cause=%s", self.name, self.phase.value, new.value, self.cause.value,
                     extra={"event": "recording_state", "old": self.phase.value, "new": new.value,
                            "cause": self.cause.value, "job": job_id, **self.context})
        self.phase = new

    def fire(self, event: str, job_id: int = 0, cause: Cause | None = None) -> None:
        nxt = _TRANSITIONS[self.phase].get(event)
        if nxt is None:
            raise TransitionError(f'{self.name}: cannot {event} in state "{self.phase.value}"')
        job = job_id or self.job_id
        if event == "start":
            self.job_id, self.cause = job_id, Cause.NONE
        elif event == "ended":
            assert cause is not None
            self.cause = cause
            self.job_id = 0
            if cause is Cause.ERROR:
                nxt = Phase.ERROR
        self._set(nxt, job)

    @property
    def busy(self) -> bool:
        return self.phase.public is RecorderState.RECORDING


# call state -> event -> next call state
_CALL: dict[CallState, dict[str, CallState]] = {
    CallState.IDLE: {"incoming": CallState.CALL_INCOMING, "call": CallState.CALL_CONNECTING},
    CallState.CALL_INCOMING: {"ring": CallState.RING_INCOMING, "answer": CallState.ANSWERED},
    CallState.RING_INCOMING: {"answer": CallState.ANSWERED, "ring": CallState.RING_INCOMING},
    CallState.CALL_CONNECTING: {"connected": CallState.ANSWERED},
    CallState.ANSWERED: {},
}


def call_transition(name: str, state: CallState, event: str) -> CallState:
    """Next call state; `hang_up` is accepted in every state and leads to IDLE."""
    if event == "hang_up":
        return CallState.IDLE
    nxt = _CALL[state].get(event)
    if nxt is None:
        raise TransitionError(f'{name}: cannot {event} a call in state "{state.value}"')
    return nxt
