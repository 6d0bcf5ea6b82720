"""Reading an encrypted file once, front to back, from a descriptor that may not seek.

`wholecall decrypt -` reads a pipe (``cat rec.enc | wholecall decrypt - -o rec.wav``),
where ``pread`` fails with ESPIPE. Every format of `formats.encrypted` can be decrypted
in one pass in order (an envelope's tag is its last 16 bytes: they are held back until
the end), so decryption reads through a `Source` and never seeks. A regular file is
read with ``pread`` from offset 0 up to the size it had when it was opened (whatever the
descriptor's own offset: ``wholecall decrypt - < rec.enc`` works too, and a file that
grows meanwhile is read as it was); anything else is read until end of file.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

__all__ = ["Source", "SourceShrank"]


class SourceShrank(ValueError):
    """A regular file ended before the size it had when it was opened."""


class Source:
    """The bytes of one descriptor, in order, each read once (peeked bytes are kept)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        st = os.fstat(fd)
        #: Size of a regular file when opened; None for a pipe, socket, terminal or device.
        self.size: int | None = st.st_size if stat.S_ISREG(st.st_mode) else None
        self._pos = 0  # bytes taken from the descriptor
        self._ahead = b""  # taken from the descriptor, not yet given out
        self.consumed = 0  # bytes given out by `read` and `chunks`

    def _take(self, n: int) -> bytes:
        """Up to `n` bytes from the descriptor; b"" only at its end."""
        if self.size is None:
            data = os.read(self.fd, n)
            self._pos += len(data)
            return data
        n = min(n, self.size - self._pos)
        if n <= 0:
            return b""
        data = os.pread(self.fd, n, self._pos)
        if not data:
            raise SourceShrank(f"file shrank to {self._pos} bytes while being read (it had {self.size})")
        self._pos += len(data)
        return data

    def peek(self, n: int) -> bytes:
        """The next `n` bytes (fewer at the end), left to be read again."""
        while len(self._ahead) < n:
            data = self._take(n - len(self._ahead))
            if not data:
                break
            self._ahead += data
        return self._ahead[:n]

    def read(self, n: int) -> bytes:
        """The next `n` bytes; fewer only at the end."""
        out = self.peek(n)
        self._ahead = self._ahead[len(out):]
        self.consumed += len(out)
        return out

    def chunks(self, chunk: int, holdback: int = 0) -> Iterator[bytes]:
        """The rest, in pieces of about `chunk` bytes, except its last `holdback` bytes,
        which are left in `held` at the end (fewer when the rest was shorter)."""
        pending = self._ahead
        self._ahead = b""
        while True:
            data = self._take(chunk)
            if not data:
                break
            pending += data
            if len(pending) > holdback:
                out = pending[:len(pending) - holdback]
                pending = pending[len(pending) - holdback:]
                self.consumed += len(out)
                yield out
        if len(pending) > holdback:  # only what was peeked, with nothing read after it
            out = pending[:len(pending) - holdback]
            pending = pending[len(pending) - holdback:]
            self.consumed += len(out)
            yield out
        self.held = pending
        self.consumed += len(pending)

    #: The bytes `chunks` held back, once it has ended.
    held: bytes = b""
