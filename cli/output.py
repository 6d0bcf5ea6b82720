"""Where `wholecall decrypt` puts the plaintext, and how, by what the output name is.

Nothing is output before the whole input has decrypted and, for an envelope, its tag
has checked (and the WAV check passed): a tampered file never yields plaintext.

- A new or regular file: a temp file next to it (0600), renamed into place at the end
  (over an existing file only with ``--force``).
- ``-``, or a name for one of our descriptors (``/dev/stdout``, ``/dev/fd/N``,
  ``/proc/self/fd/N``, or a symlink to one): written to that descriptor. Renaming over
  such a name would replace the node (``/dev/stdout`` itself, as root) with a file.
- A FIFO or character device (``/dev/null``, a named pipe): opened and written into,
  never replaced.
- A directory, block device or socket, and a terminal: refused, saying why.

For the two written-into kinds the plaintext waits in an anonymous memfd (memory,
never named on any filesystem) until it is authenticated, then is copied out.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterable

from wholecall.formats import encrypted as cf

__all__ = ["TargetError", "deliver"]

_FD_NAME = re.compile(r"/(?:dev/fd|proc/(self|thread-self|\d+)/fd)/(\d+)")


class TargetError(Exception):
    """The output cannot be written as asked; the message says why, naming it."""


def _descriptor(out: str) -> int | None:
    """The descriptor number `out` names (through any chain of symlinks), or None."""
    path = os.path.abspath(out)
    for _ in range(40):  # the kernel's own limit on a chain of links
        m = _FD_NAME.fullmatch(path)
        if m and m.group(1) in (None, "self", "thread-self", str(os.getpid())):  # ours, not another process's
            return int(m.group(2))
        try:
            link = os.readlink(path)
        except OSError:  # not a symlink (or not there): a plain name
            return None
        path = os.path.normpath(os.path.join(os.path.dirname(path), link))
    return None


def _kind(out: str, force: bool) -> str:
    """'fd', 'stream' or 'file' for `out`; TargetError for what cannot be written."""
    if out == "-" or _descriptor(out) is not None:
        return "fd"
    try:
        mode = os.stat(out).st_mode
    except FileNotFoundError:
        if os.path.lexists(out) and not force:
            raise TargetError(f"{out} exists (a dangling symlink; use --force to replace it)") from None
        return "file"
    except OSError as exc:
        raise TargetError(f"cannot write {out}: {exc.strerror}") from None
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
        return "stream"
    for test, what in ((stat.S_ISDIR, "a directory"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            raise TargetError(f"{out} is {what}: give the name of a file to write (or - for stdout)")
    if not force:
        raise TargetError(f"{out} exists (use --force to overwrite)")
    return "file"


def deliver(out: str, plain: Iterable[bytes], verify: Callable[[], None], force: bool) -> None:
    """Write all of `plain` to `out` once `verify()` (called after `plain` is exhausted)
    has not raised. Errors of the output: TargetError; a closed stdout: BrokenPipeError."""
    kind = _kind(out, force)
    if kind == "file":
        _to_file(out, plain, verify, force)
        return
    if kind == "fd":
        fd = 1 if out == "-" else _descriptor(out)
        assert fd is not None
        try:
            os.fstat(fd)
        except OSError:
            raise TargetError(f"{out}: descriptor {fd} is not open") from None
        _to_stream(out, fd, plain, verify)
        return
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise TargetError(f"cannot write {out}: {exc.strerror}") from None
    try:
        _to_stream(out, fd, plain, verify)
    except BrokenPipeError:
        raise TargetError(f"cannot write {out}: its reader went away") from None
    finally:
        os.close(fd)


def _to_stream(out: str, fd: int, plain: Iterable[bytes], verify: Callable[[], None]) -> None:
    if os.isatty(fd):
        raise TargetError(f"refusing to write audio to a terminal ({out}): redirect it, or give -o FILE")
    held = os.memfd_create("wholecall-decrypt", os.MFD_CLOEXEC)
    try:
        try:
            for data in plain:
                cf.write_all(held, data)
        except OSError as exc:  # reading errors come as the caller's own exception, not OSError
            raise TargetError(f"cannot hold the plaintext in memory before writing {out}: {exc.strerror}") from None
        verify()
        pos = 0
        while True:
            data = os.pread(held, cf.CHUNK, pos)
            if not data:
                break
            try:
                cf.write_all(fd, data)
            except BrokenPipeError:
                raise  # stdout's reader went away: `cli.main` ends quietly; a FIFO's: `deliver` says so
            except OSError as exc:
                raise TargetError(f"cannot write {out}: {exc.strerror}") from None
            pos += len(data)
    finally:
        os.close(held)


def _to_file(out: str, plain: Iterable[bytes], verify: Callable[[], None], force: bool) -> None:
    directory = os.path.dirname(os.path.abspath(out))
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(out) + ".", suffix=".tmp")
    except OSError as exc:
        raise TargetError(f"cannot write in {directory}: {exc.strerror}") from None
    try:
        for data in plain:
            cf.write_all(fd, data)
        verify()
        os.fsync(fd)
        os.close(fd)
        fd = -1
        if force:
            os.replace(tmp, out)
        else:
            cf.link_no_replace(tmp, out)
    except OSError as exc:
        why = "it exists (use --force to overwrite)" if exc.errno == errno.EEXIST else exc.strerror
        raise TargetError(f"cannot write {out}: {why}") from None
    finally:
        if fd >= 0:
            os.close(fd)
        if os.path.lexists(tmp):
            os.unlink(tmp)
