"""Why a recording ended: the spec's causes, one enum for the worker that decides them and
the controller that reports them (`WholeCallRecorder.Cause` is this class).

On the wire a cause travels as its name (`protocol.messages` encodes and checks it).
"""

from __future__ import annotations

import enum


class Cause(enum.Enum):
    """The spec's recording termination causes."""

    ERROR = "ERROR"  # record has stopped due to an error
    SILENCE = "SILENCE"  # record has stopped due to a silence timeout
    SIZE = "SIZE"  # record has stopped due to the maximum file size being reached
    ABORTED = "ABORTED"  # record has been aborted (stop() was called)
    HANGUP = "HANGUP"  # record ended due to a call hangup
    TIMEOUT = "TIMEOUT"  # record stopped because a timer has expired
    NONE = "NONE"  # record is in progress or record has not occurred


_BY_CODE = tuple(Cause)


def cause_code(cause: Cause | str) -> int:
    """A small number for `cause` (1..7; 0 is left for "none decided"), as shared memory
    stores it (`shm.layout`, durable record flags): the order of `Cause`, which only grows.
    A cause's name is taken too; anything else is 0 (a job's end must not fail on it)."""
    try:
        return _BY_CODE.index(Cause(cause)) + 1
    except ValueError:
        return 0


def cause_of_code(code: int) -> Cause | None:
    """The cause `cause_code` gave `code`; None for 0 (or a number no cause has)."""
    return _BY_CODE[code - 1] if 0 < code <= len(_BY_CODE) else None
