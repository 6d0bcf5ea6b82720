"""Controller <-> worker messages (typed, versioned msgpack) and their ZeroMQ sockets."""

from .messages import (
    VERSION,
    Heartbeat,
    Hello,
    JobEnded,
    JobStarted,
    Message,
    ProtocolError,
    Shutdown,
    StartJob,
    StopJob,
    WorkerError,
    decode,
    encode,
)

__all__ = [
    "VERSION", "Heartbeat", "Hello", "JobEnded", "JobStarted", "Message", "ProtocolError",
    "Shutdown", "StartJob", "StopJob", "WorkerError", "decode", "encode",
]
