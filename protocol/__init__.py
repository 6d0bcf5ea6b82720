"""Controller <-> worker messages (typed, versioned msgpack) and their ZeroMQ sockets."""

from .causes import Cause
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
    "Shutdown", "StartJob", "StopJob", "WorkerError", "decode", "encode",
]
