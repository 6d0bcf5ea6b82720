"""Where a recording's bytes go: the seam between the WAV writer and storage.

The WAV writer never touches a file descriptor itself. It appends audio and
patches its header through a `Sink`, so the same writer produces a plain file,
or an encrypted intermediate that never holds plaintext at rest (see
`worker/crypto.py`). Every sink is random-access (header refresh needs to patch
bytes 4..8 and the data size while audio is still being appended) and can be
truncated (the silent tail of a SILENCE-ended recording is cut off at the end).
"""

from __future__ import annotations

import os
from typing import Protocol

#: Mode of every recording file unless the Controller is configured otherwise.
FILE_MODE = 0o600


class Sink(Protocol):
    """Random-access byte store for one recording."""

    path: str  # the final file name the application asked for

    def pwrite(self, data: bytes, offset: int) -> None:
        """Write `data` at `offset` (logical, plaintext offset)."""

    def truncate(self, size: int) -> None:
        """Cut the logical content to `size` bytes."""

    def size(self) -> int:
        """Logical size in bytes (what the finished, decrypted file will hold)."""

    def finish(self) -> int:
        """Make the final file at `path`; returns its size on disk in bytes."""

    def discard(self) -> None:
        """Remove everything this sink created (error path: no orphan files)."""

    def keep(self) -> str:
        """Let go without finishing, leaving what was written where it can be recovered
        (finalising failed: the audio is the call's, not ours to delete); returns the
        path of what is left."""


class FileSink:
    """A plain file written in place: a crash leaves whatever the header says."""

    def __init__(self, path: str, mode: int = FILE_MODE) -> None:
        self.path = path
        # O_EXCL: an existing file is never overwritten behind the caller's back;
        # O_NOFOLLOW: nor is a file a symlink planted under this name points to.
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                       mode)
        self._size = 0

    @classmethod
    def reopen(cls, path: str) -> FileSink:
        """The sink of a recording a dead worker was writing (failover): the file as it is."""
        self = cls.__new__(cls)
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        self._size = os.fstat(self._fd).st_size
        return self

    def pread(self, n: int, offset: int) -> bytes:
        assert self._fd is not None, "sink already closed"
        return os.pread(self._fd, n, offset)

    def pwrite(self, data: bytes, offset: int) -> None:
        assert self._fd is not None, "sink already closed"
        view = memoryview(data)
        if not view:
            return  # as pwrite(2): an empty write extends nothing
        while view:
            done = os.pwrite(self._fd, view, offset)
            view = view[done:]
            offset += done
        self._size = max(self._size, offset)

    def truncate(self, size: int) -> None:
        assert self._fd is not None, "sink already closed"
        os.ftruncate(self._fd, size)
        self._size = size

    def size(self) -> int:
        return self._size

    def finish(self) -> int:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        return self._size

    def discard(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def keep(self) -> str:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        return self.path
