"""Controller <-> worker messages (typed, versioned msgpack) and their ZeroMQ sockets."""

from .causes import Cause, cause_code, cause_of_code
from .messages import (
    VERSION,
    Heartbeat,
    Hello,
    JobDigits,
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
    decode,
    encode,
)

__all__ = [
    "Cause", "WorkerSettings", "VERSION", "Heartbeat", "Hello", "JobDigits", "JobEnded", "PauseJob", "JobStarted", "Message",
    "ProtocolError", "ResumeJob",
    "Shutdown", "StartJob", "StopJob", "WorkerError", "cause_code", "cause_of_code", "decode", "encode",
]
