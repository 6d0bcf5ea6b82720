"""Where a recording's bytes go: the seam between the WAV writer and storage.

The WAV writer never touches a file descriptor itself. It appends audio and
patches its header through a `Sink`, so the same writer produces a plain file,
or an encrypted intermediate that never holds plaintext at rest (see
`worker/crypto.py`). Every sink is random-access (header refresh needs to patch
bytes 4..8 and the data size while audio is still being appended) and can be
truncated (the silent tail of a SILENCE-ended recording is cut off at the end).
"""

from __future__ import annotations

import contextlib
import errno
import os
from typing import Protocol

from .descriptors import DESCRIPTORS, Descriptors

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
    """A plain file written in place: a crash leaves whatever the header says.

    Keeps its descriptor while the process's budget (`worker.descriptors`) has one;
    beyond it the file is transient: reopened for each operation, at the offsets the
    writer gives (pwrite), and checked to be the same inode it created."""

    def __init__(self, path: str, mode: int = FILE_MODE, descriptors: Descriptors = DESCRIPTORS) -> None:
        self.path = path
        self._budget = descriptors
        # O_EXCL: an existing file is never overwritten behind the caller's back;
        # O_NOFOLLOW: nor is a file a symlink planted under this name points to.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        self._size = 0
        self._adopt(fd)

    @classmethod
    def reopen(cls, path: str, descriptors: Descriptors = DESCRIPTORS) -> FileSink:
        """The sink of a recording a dead worker was writing (failover): the file as it is."""
        self = cls.__new__(cls)
        self.path = path
        self._budget = descriptors
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        self._size = os.fstat(fd).st_size
        self._adopt(fd)
        return self

    def _adopt(self, fd: int) -> None:
        """Keep `fd` if the budget allows, else note the file's identity and close it."""
        st = os.fstat(fd)
        self._ident = (st.st_dev, st.st_ino)
        self._open = True  # until finish, discard or keep
        if self._budget.take():
            self._fd: int | None = fd
        else:
            os.close(fd)
            self._fd = None

    @property
    def direct_fd(self) -> int:
        """The descriptor this sink holds, for a caller that writes through it directly
        (`WavWriter.codes_target`) and then reports the new end (`extended`); -1 when
        the file is transient (each operation reopens it, checked)."""
        return -1 if self._fd is None else self._fd

    def extended(self, end: int) -> None:
        """Bytes up to `end` were written through `direct_fd`."""
        self._size = max(self._size, end)

    @property
    def transient(self) -> bool:
        """The file holds no descriptor between operations (the budget was spent)."""
        return self._open and self._fd is None

    def _reopen(self) -> tuple[int, bool]:
        """A descriptor for one operation of a transient file: (fd, kept). A kept one is
        this sink's again (the budget had room); otherwise the caller closes it."""
        assert self._open, "sink already closed"
        fd = os.open(self.path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != self._ident:
                raise OSError(errno.ESTALE, "the recording file was replaced behind the worker", self.path)
        except BaseException:
            os.close(fd)
            raise
        self._budget.note_reopen()
        if self._budget.take():
            self._fd = fd
            return fd, True
        return fd, False

    def pread(self, n: int, offset: int) -> bytes:
        fd = self._fd
        if fd is not None:
            return os.pread(fd, n, offset)
        fd, kept = self._reopen()
        try:
            return os.pread(fd, n, offset)
        finally:
            if not kept:
                os.close(fd)

    def pwrite(self, data: bytes, offset: int) -> None:
        view = memoryview(data)
        if not view:
            return  # as pwrite(2): an empty write extends nothing
        fd = self._fd
        kept = True
        if fd is None:
            fd, kept = self._reopen()
        try:
            start = offset
            while view:
                done = os.pwrite(fd, view, offset)
                view = view[done:]
                offset += done
        except OSError:
            self._cut_back(fd, max(self._size, start))
            raise
        finally:
            if not kept:
                os.close(fd)
        self._size = max(self._size, offset)

    def _cut_back(self, fd: int, end: int) -> None:
        """A failed write (a full disk) may have left some of its bytes past `end`, where
        nobody accounts for them: the file would be larger than its recording says
        (`JobEnded.bytes`, the sidecar's `bytes`). Cut them off; best effort, the write's
        own error is what the caller hears."""
        with contextlib.suppress(OSError):
            if os.fstat(fd).st_size > end:
                os.ftruncate(fd, end)

    def truncate(self, size: int) -> None:
        fd = self._fd
        kept = True
        if fd is None:
            fd, kept = self._reopen()
        try:
            os.ftruncate(fd, size)
        finally:
            if not kept:
                os.close(fd)
        self._size = size

    def size(self) -> int:
        return self._size

    def _let_go(self) -> None:
        """Close the kept descriptor (giving it back to the budget); the sink is done."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            self._budget.give_back()
            os.close(fd)
        self._open = False

    def finish(self) -> int:
        self._let_go()
        return self._size

    def discard(self) -> None:
        self._let_go()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def keep(self) -> str:
        self._let_go()
        return self.path

    def close_kept(self) -> None:
        """Failover: let go of the file without finishing or removing it."""
        self._let_go()
