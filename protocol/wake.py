"""A self-pipe that wakes a poll loop from another thread, on both sides of the protocol.

Both ends are non-blocking: a waker must never stall (the supervisor's API threads
wake its I/O thread for every message; with a blocking write end, a full pipe, i.e. an
I/O thread that stopped reading, would freeze every API thread). A full pipe already
means "awake", so a write that would block is simply dropped.
"""

from __future__ import annotations

import os


class WakePipe:
    """`wake()` from any thread; poll `fileno()` and `drain()` in the loop that sleeps."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def fileno(self) -> int:
        """The read end, for zmq.Poller / select."""
        return self._r

    def wake(self) -> None:
        try:
            os.write(self._w, b"x")
        except BlockingIOError:
            pass  # the pipe is full: the reader is already due to wake up
        except OSError:
            pass  # closed during shutdown: nobody is left to wake

    def drain(self) -> None:
        """Consume every pending wake-up (call before doing the work they announce)."""
        try:
            while os.read(self._r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._r = self._w = -1
