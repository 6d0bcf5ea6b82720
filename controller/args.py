"""Validation of the recorder's arguments: every bad value becomes an `Error` naming it.

Nothing here creates anything; `start()` acts only on the `RecordOptions` that
`check_start` returns: the one value object for a recording's arguments, from which the
worker's `StartJob` is built (`RecordOptions.start_job`).
"""

from __future__ import annotations

import math
import numbers
import os
import threading
from dataclasses import dataclass, field
from typing import Any, cast

from wholecall.formats.codecs import CODECS, FORMATS, MODES, RATES, SEPARATE_FORMATS
from wholecall.formats.encrypted import PART_SUFFIX, TMP_SUFFIX
from wholecall.formats.wav import header_bytes
from wholecall.protocol import StartJob
from wholecall.protocol.limits import MAX_BYTES, MAX_SILENCE_MS

from .cipher import wire_cipher
from .errors import Error


@dataclass(frozen=True)
class RecordOptions:
    """A recording's arguments, validated: what `start()` / `record()` were asked for."""

    path: str
    """Absolute, inside the recordings root, not existing yet."""
    file_format: str
    rate: int
    """Hz."""
    max_bytes: int
    """Whole file, header included; 0 = no limit."""
    ms_max_silence: int
    """0 = no limit."""
    ms_initial_silence: int
    """0 = no limit."""
    dtmf_elim: bool
    mode: str
    """'mixed' or 'separate'."""
    cipher: dict | None = field(repr=False)
    """Wire form of the cipher (never in a repr or log)."""

    def start_job(self, job_id: int, channel: int, slot_in: int, slot_out: int, start_pos: int) -> StartJob:
        """The worker's command for these options on one channel's two legs."""
        return StartJob(
            job_id=job_id, channel=channel, slot_in=slot_in, slot_out=slot_out, start_pos=start_pos, path=self.path,
            file_format=self.file_format, rate=self.rate, max_bytes=self.max_bytes,
            ms_max_silence=self.ms_max_silence, ms_initial_silence=self.ms_initial_silence,
            dtmf_elim=self.dtmf_elim, mode=self.mode, cipher=self.cipher,
        )


#: Longest finite timeout in seconds: a lock or condition cannot wait longer
#: (`threading.TIMEOUT_MAX`, ~292 years on Linux); longer ones raise OverflowError there.
MAX_TIMEOUT_S = float(threading.TIMEOUT_MAX)


def _int(name: str, value: Any, maximum: int, why: str) -> int:
    """A non-negative integer up to `maximum`; `why` says where the bound comes from.

    Bounded here because a value the worker cannot represent would otherwise pass, be
    sent, and fail inside the worker (taking its other calls with it) or in the encoder
    after the recorder had changed state.
    """
    # numbers.Integral so numpy integers from an application's arithmetic are accepted;
    # bool is an int to Python but never meant as a size or a duration. A plain int (the
    # common case) skips the ABC checks, a few us of every start().
    if type(value) is not int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise Error(f"{name} must be a non-negative integer, got {value!r}")
        value = int(value)  # exact for any Integral (numpy's too), and what is returned
    if value < 0:
        raise Error(f"{name} must be a non-negative integer, got {value}")
    if value > maximum:
        raise Error(f"{name} must be at most {maximum} ({why}), got {value}")
    return int(value)


def check_timeout(name: str, value: Any, allow_zero: bool) -> float | None:
    """A timeout in seconds: None (no limit) or a positive number."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != value:
        raise Error(f"{name} must be a number of seconds or None, got {value!r}")
    value = cast(Any, value)  # a Real: compared as it is (a huge int does not convert to float)
    if value < 0 or (value == 0 and not allow_zero):
        raise Error(f"{name} must be {'non-negative' if allow_zero else 'positive'} or None, got {value}")
    if not isinstance(value, numbers.Integral) and math.isinf(value):
        return None  # an endless wait; a deadline at infinity would overflow the lock's timeout
    if value > MAX_TIMEOUT_S:  # compared before float(): a huge int does not convert
        raise Error(f"{name} must be at most {MAX_TIMEOUT_S:.0f} seconds (the longest wait a lock "
                    f"can do), None or inf for no limit; got {value}")
    return float(value)


def _real_dir(path: str) -> str | None:
    """The real path of the existing directory `path`, as the kernel names what it opens
    (symlinks and `..` resolved), or None (missing, not a directory, no /proc): three
    system calls instead of realpath's lstat per component and Python per component.
    Asked anew every time: a remembered answer goes stale when a directory is moved out
    of the root and a symlink to it left in its place (same inode, escaped path)."""
    try:
        fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    finally:
        os.close(fd)
    # Unreachable from this root (another mount namespace) or removed meanwhile: the full check decides.
    return real if real.startswith("/") and not real.endswith(" (deleted)") else None


def _within(root_real: str, path: str) -> bool:
    """Whether `path` is `root_real` or under it. Both must be canonical (absolute, no `.`,
    `..` or doubled separators: the kernel's names or realpath's), so it is a prefix ending
    at a separator (os.path.commonpath's Python was 7.5 us of a start())."""
    return path == root_real or path.startswith(root_real.rstrip(os.sep) + os.sep)


#: Names the encrypted recordings' intermediate files take beside theirs (`formats.encrypted`):
#: a recording so named would be deleted when the recording it seems to belong to finishes.
RESERVED_SUFFIXES = (PART_SUFFIX, TMP_SUFFIX)


def resolve_filename(root: str, filename: Any) -> str:
    """The absolute path for `filename` under `root`; refuses escapes and existing files.

    Decided rule: an existing file is never overwritten (a recording is evidence);
    the caller picks a new name.
    """
    if isinstance(filename, os.PathLike):
        filename = os.fspath(filename)
    if not isinstance(filename, str):
        raise Error(f"filename must be a string, got {type(filename).__name__}")
    if not filename or not filename.strip():
        raise Error("filename must not be empty")
    if "\0" in filename:
        raise Error("filename must not contain NUL characters")
    try:
        filename.encode("utf-8")  # the worker gets it over msgpack, which carries only UTF-8
    except UnicodeEncodeError:
        raise Error(f"filename {filename!r} is not valid UTF-8") from None
    if filename.endswith(("/", os.sep)):
        raise Error(f"filename {filename!r} names a directory")
    if filename.endswith(RESERVED_SUFFIXES):
        raise Error(f"filename {filename!r}: names ending in {' or '.join(RESERVED_SUFFIXES)} are reserved for "
                    "the intermediate files of encrypted recordings")
    root_real = _real_dir(root) or os.path.realpath(root)
    head, tail = os.path.split(filename)
    if tail not in (".", ".."):
        # A new name in an existing directory under the root: its real path is that
        # directory's (as the kernel names it) plus the name, which the full check below would
        # conclude after an lstat per component and realpath's Python (it was most of
        # start()'s own time in the ramp of `wholecall stress`). Anything else, or any doubt
        # (a missing directory, an escape, a name that exists), takes the full check.
        parent = _real_dir(os.path.join(root_real, head)) if head else root_real
        if parent is not None and _within(root_real, parent):
            candidate = os.path.join(parent, tail)
            if not os.path.lexists(candidate):
                return candidate
    candidate = os.path.join(root_real, filename)
    real = os.path.realpath(candidate)
    if not _within(root_real, real) or real == root_real:
        raise Error(f"filename {filename!r} is outside the recordings directory {root_real}")
    if os.path.lexists(candidate) or os.path.lexists(real):
        raise Error(f"filename {filename!r} already exists; recordings are never overwritten")
    return real


PAUSE_MODES = ("silence", "skip")


def check_pause_mode(mode: Any) -> str:
    """`pause()`'s mode: "silence" (the paused span becomes digital silence) or "skip"."""
    if not isinstance(mode, str) or mode not in PAUSE_MODES:
        raise Error(f"mode must be 'silence' or 'skip'; got {mode!r}")
    return mode


def check_min_seconds(value: Any) -> float:
    """`min_seconds`: a finite number of seconds >= 0 (0: keep every recording)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise Error(f"min_seconds must be a non-negative number of seconds, got {value!r}")
    return float(value)


def check_start(
    root: str,
    filename: Any,
    file_format: Any = "alaw",
    rate: Any = 8000,
    max_bytes: Any = 0,
    milliseconds_max_silence: Any = 0,
    milliseconds_initial_silence: Any = 0,
    dtmf_elim: Any = True,
    recording_mode: Any = "mixed",
    cipher: Any = None,
) -> RecordOptions:
    if not isinstance(file_format, str) or file_format not in FORMATS:
        raise Error(f"file_format must be one of {', '.join(FORMATS)}; got {file_format!r}")
    # A str subclass (an application's StrEnum) as the plain string it equals: that is
    # what goes to the worker, whatever the subclass's own str() or name would say.
    file_format = str.__str__(file_format)
    if isinstance(rate, bool) or not isinstance(rate, numbers.Integral) or rate not in RATES:
        raise Error(f"rate must be one of {', '.join(map(str, RATES))} Hz; got {rate!r}")
    rate = int(rate)
    max_bytes = _int("max_bytes", max_bytes, MAX_BYTES, "the RIFF limit: no WAV file is larger")
    ms_max = _int("milliseconds_max_silence", milliseconds_max_silence, MAX_SILENCE_MS,
                  "its sample count must fit in 64 bits")
    ms_init = _int("milliseconds_initial_silence", milliseconds_initial_silence, MAX_SILENCE_MS,
                   "its sample count must fit in 64 bits")
    if not isinstance(dtmf_elim, bool):
        raise Error(f"dtmf_elim must be True or False, got {dtmf_elim!r}")
    if not isinstance(recording_mode, str) or recording_mode not in MODES:
        raise Error(f"recording_mode must be 'mixed' or 'separate'; got {recording_mode!r}")
    recording_mode = str.__str__(recording_mode)
    if recording_mode == "separate":
        if file_format not in SEPARATE_FORMATS:
            raise Error(
                f"file_format {file_format!r} cannot record separate channels; use one of {', '.join(SEPARATE_FORMATS)}"
            )
        # The spec: in separate mode these limits are ignored.
        max_bytes = ms_max = ms_init = 0
    wire = wire_cipher(cipher)  # the cipher module knows its types (and what a private key by mistake means)
    if max_bytes:
        # The smallest file with audio in it: the header, one unit of data (an IMA block, a
        # sample) and its RIFF pad byte if that is odd, then what encryption adds. A limit
        # below it ended every recording SIZE at once with a file of no audio.
        head = header_bytes(file_format, 1)
        unit = CODECS[file_format].unit_bytes(1)
        minimum = head + unit + (unit & 1)
        room = max_bytes if cipher is None else cipher.plaintext_limit(max_bytes)
        if room < minimum:
            extra = "" if cipher is None else f" (encrypted: {max_bytes - room} bytes of it go to the cipher)"
            raise Error(f"max_bytes {max_bytes} cannot hold the {head}-byte WAV header of {file_format} and "
                        f"its first {unit} byte(s) of audio{extra}")
    path = resolve_filename(root, filename)
    return RecordOptions(path, file_format, rate, max_bytes, ms_max, ms_init, dtmf_elim, recording_mode, wire)
