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
