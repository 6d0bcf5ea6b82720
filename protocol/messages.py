"""Every message between the controller and its workers: typed, versioned msgpack.

Wire form: a msgpack map ``{"v": VERSION, "t": <type name>, <field>: <value>, ...}``.
`encode` and `decode` are the only pair that touches the wire; `decode` rejects
anything that is not exactly one of the types below (unknown type, wrong version,
missing, extra or mistyped field) with `ProtocolError`, so a malformed message can be
logged and dropped without crashing a worker. Audio never travels in these messages.
"""

from __future__ import annotations

import dataclasses
import enum
import operator
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Union

import msgpack

from .causes import Cause

VERSION = 3  # 3: pause/resume, digits, and what an ended job's file holds


class ProtocolError(ValueError):
    """A message that cannot be decoded; the text says what is wrong with it."""


@dataclass(frozen=True)
class Message:
    TYPE: ClassVar[str] = ""


# -- controller -> worker ------------------------------------------------------------


@dataclass(frozen=True)
class StartJob(Message):
    """Start recording one channel. Carries every recorder argument of the spec."""

    TYPE: ClassVar[str] = "start"
    job_id: int
    channel: int
    slot_in: int  # ring slot of the inbound leg (audio from the far end)
    slot_out: int  # ring slot of the outbound leg (audio sent to the far end)
    start_pos: int  # leg sample-clock position where the recording begins (both legs)
    path: str  # absolute final file path, already checked by the controller
    file_format: str
    rate: int  # Hz
    max_bytes: int  # 0 = no limit
    ms_max_silence: int  # 0 = no limit
    ms_initial_silence: int  # 0 = no limit
    dtmf_elim: bool
    mode: str  # "mixed" | "separate"
    # Wire form of the cipher; travels only over owner-only ipc:// sockets, never in a repr or log.
    cipher: dict | None = field(repr=False)


@dataclass(frozen=True)
class StopJob(Message):
    """End a job for a reason the controller knows (ABORTED, HANGUP, TIMEOUT)."""

    TYPE: ClassVar[str] = "stop"
    job_id: int
    cause: Cause
    end_pos: int  # leg position at the request: everything before it is recorded


@dataclass(frozen=True)
class PauseJob(Message):
    """Pause (`mode` "silence" or "skip") or resume (`mode` "") a job from leg position
    `pos` on: an extension of the spec's API (`WholeCallRecorder.pause`). The job's gate
    word in the arena holds the worker back at `pos` until it has applied request `seq`
    (`shm.layout`, "Pause gate"), so `pos` is exact however late this arrives."""

    TYPE: ClassVar[str] = "pause"
    job_id: int
    seq: int  # the job's request number, from 1; the gate word carries it too
    pos: int  # leg position (both legs) from which it applies
    mode: str  # "silence": digital silence of the paused length; "skip": nothing; "": resume


@dataclass(frozen=True)
class ResumeJob(Message):
    """Take over a job whose worker died: reopen its file, cut it back to what the dead
    worker published as durable, and go on reading the rings from there.

    The resume fields are the dead worker's last durable record (`shm.layout`, "durable");
    `lost` samples at `pos` were overwritten in the rings before the takeover and become
    silence of exactly that length."""

    TYPE: ClassVar[str] = "resume"
    start: bytes = field(repr=False)  # the job's StartJob, encoded (it carries the cipher)
    pos: int  # leg position of the first sample not in the file (both legs)
    samples: int  # input (8 kHz) samples the file holds up to `pos`
    audio: int  # the silence detector's sample count at `pos`
    run: int  # silent samples since the last loud frame, at `pos`
    loud_end: int  # file position just after the last loud frame
    heard: bool  # audio had been heard (initial silence is over)
    lost: int  # samples overwritten in the rings before the takeover, recorded as silence
    confirmed: bool  # JobStarted was already delivered: do not send another
    origin: int = -1  # leg position of the file's first sample; -1: nothing written yet
    # The cause the dead worker had begun finalising the job with (NONE: it was recording).
    # Its final file may then be complete already: the new owner ends the job with it.
    ending: Cause = Cause.NONE


@dataclass(frozen=True)
class Shutdown(Message):
    """Finish every job (ABORTED) and exit."""

    TYPE: ClassVar[str] = "shutdown"


@dataclass(frozen=True)
class WorkerSettings(Message):
    """Everything a worker is configured with, sent once when it is spawned (on its command
    line, encoded like every message). Per-job values are `StartJob`'s; nothing here
    changes while the worker lives."""

    TYPE: ClassVar[str] = "settings"
    index: int  # the worker's number (its ZeroMQ identity is w<index>)
    cpu: int  # the CPU it pins itself to
    endpoint: str  # the controller's ROUTER
    arena: str  # path of the ring arena
    parent: int  # pid of the controller: the worker exits with it
    tick_ms: float  # pipeline tick period with few jobs
    heartbeat_ms: float  # heartbeat period
    skew_ms: float  # a leg this far behind the other is recorded as silence
    flush_ms: float  # audio is written to files in blocks of this much
    scale_tick_ms: float  # tick period once `scale_jobs` jobs run
    scale_jobs: int  # from this many jobs the worker steps in blocks of frames
    capacity: int  # jobs to size the per-job arrays for at start-up
    priority: int  # run at nice -priority (0: unchanged)
    silence_dbfs: float  # frame energy below this is silence
    silence_hangover_ms: int  # speech is held this long after the last loud frame
    file_mode: int  # permission bits of recording files
    # Read end of the controller's lifeline pipe (inherited): EOF once the controller
    # process is gone, whichever of its threads spawned the worker. -1: none.
    lifeline: int = -1


# -- worker -> controller ------------------------------------------------------------


@dataclass(frozen=True)
class Hello(Message):
    """A worker is up: attached to the arena, pinned, ready for jobs."""

    TYPE: ClassVar[str] = "hello"
    worker: int
    pid: int
    cpu: int


@dataclass(frozen=True)
class JobStarted(Message):
    """The file is open and the job's rings are being read."""

    TYPE: ClassVar[str] = "started"
    job_id: int
    # The worker's CLOCK_MONOTONIC (system-wide on Linux, so the controller can subtract
    # its own readings): when the StartJob was read, when its file was open, and when
    # this confirmation was sent. They split a start()'s latency into controller,
    # transport and worker shares.
    t_received: float
    t_opened: float
    t_confirmed: float


@dataclass(frozen=True)
class JobEnded(Message):
    """A job is over and its file finalised (or removed, for a job that failed to start)."""

    TYPE: ClassVar[str] = "ended"
    job_id: int
    cause: Cause
    bytes: int  # size of the final file on disk
    samples: int  # sample frames in the file, at the file's rate
    duration_s: float  # audio duration in the file
    error: str  # why, for cause ERROR; "" otherwise
    # Leg position of the file's first sample (after a dropped leading silence); -1: none
    # written. With the pause requests it maps leg positions to offsets in the file.
    origin: int = -1
    end_pos: int = -1  # leg position the job ended at (first sample not recorded); -1: unknown
    heard: bool = False  # a frame above the silence threshold was recorded (not while paused)
    # For a job ended by a StopJob, the worker's CLOCK_MONOTONIC (as JobStarted's) when the
    # stop was read, when the loop applied it, and when this event was queued: they split a
    # stop()'s latency into transport, wait for the loop, drain + finalise. 0.0: not a stop.
    t_stop_received: float = 0.0
    t_stop_applied: float = 0.0
    t_queued: float = 0.0
    #: Made by the controller for a job its worker ended and died before reporting: the
    #: counts are the last durable record's (a lower bound); the file says the rest.
    salvaged: bool = False


@dataclass(frozen=True)
class JobDigits(Message):
    """In-band DTMF digits the worker's detector confirmed on a job's legs, as they come
    (not with JobEnded: digits seen before a worker died would die with it)."""

    TYPE: ClassVar[str] = "digits"
    job_id: int
    # [digit, leg ("inbound" | "outbound"), leg position of its onset] per digit
    digits: list


@dataclass(frozen=True)
class Heartbeat(Message):
    """Sent every heartbeat interval; its absence tells the controller a worker is stuck."""

    TYPE: ClassVar[str] = "heartbeat"
    worker: int
    jobs: int
    cpu_s: float  # process CPU time so far
    ticks: int
    overruns: int  # ring overruns seen on this worker's legs so far


@dataclass(frozen=True)
class WorkerError(Message):
    """Something went wrong outside a job's own cause (e.g. a malformed command)."""

    TYPE: ClassVar[str] = "error"
    worker: int
    job_id: int  # 0 if not about a job
    message: str


_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (StartJob, StopJob, PauseJob, ResumeJob, JobDigits, Shutdown, WorkerSettings, Hello, JobStarted, JobEnded,
                Heartbeat, WorkerError)
}


def _field_types(cls: type[Message]) -> dict[str, tuple[type, ...]]:
    hints = typing.get_type_hints(cls)
    out: dict[str, tuple[type, ...]] = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is Union:
            out[f.name] = tuple(type(None) if a is type(None) else a for a in typing.get_args(hint))
        else:
            out[f.name] = (hint,)
    return out


_FIELDS = {name: _field_types(cls) for name, cls in _TYPES.items()}

#: The exact types a plain field type accepts as msgpack gives them (bool is not an int here).
_EXACT: dict[type, tuple[type, ...]] = {int: (int,), float: (int, float), str: (str,), bool: (bool,), bytes: (bytes,),
                                        type(None): (type(None),)}


def _decode_plan(allowed: tuple[type, ...]) -> tuple[frozenset[type], bool, type[enum.Enum] | None]:
    """A field's fast path: the exact value types accepted without `_check`, whether an int
    becomes a float, and the enum a string names."""
    exact = frozenset(x for t in allowed for x in _EXACT.get(t, ()))
    enums = [t for t in allowed if isinstance(t, type) and issubclass(t, enum.Enum)]
    return exact, float in allowed, enums[0] if enums else None


#: Per message type: (field names, one getter of them all) to encode, and each field's
#: decode plan. A start() encodes a StartJob twice (checked, then sent) and each call's
#: JobStarted and JobEnded are decoded on the controller's I/O thread: a field-by-field
#: loop of getattr and isinstance was 9.5 us to encode a StartJob and 13-30 us to decode
#: one of these.
_ENCODE = {kind: (tuple(fields), operator.attrgetter(*fields) if fields else None) for kind, fields in _FIELDS.items()}
_DECODE = {kind: [(name, allowed, *_decode_plan(allowed)) for name, allowed in fields.items()]
           for kind, fields in _FIELDS.items()}
#: Message types whose __init__ only stores the fields (no __post_init__, no slots): a
#: decoded one is made by filling its __dict__, not through the frozen dataclass's
#: object.__setattr__ per field (6 us of a StartJob's 16).
_PLAIN = frozenset(cls for cls in _TYPES.values()
                   if not hasattr(cls, "__post_init__") and not hasattr(cls, "__slots__")
                   and all(f.init for f in dataclasses.fields(cls))
                   and cls.__init__.__code__.co_filename == "<string>")  # the dataclass's own __init__


def _check(value: Any, allowed: tuple[type, ...]) -> bool:
    for t in allowed:
        if isinstance(t, type) and issubclass(t, enum.Enum):
            if isinstance(value, str) and value in t.__members__:
                return True
            continue
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if t not in (int, float) and isinstance(value, t):
            return True
    return False


def _enum_name(value: Any) -> Any:
    """msgpack's hook for what it cannot pack itself: an enum goes by its name."""
    if isinstance(value, enum.Enum):
        return value.name
    raise TypeError(f"cannot encode a {type(value).__name__}")


def encode(msg: Message) -> bytes:
    """The one way a message becomes bytes."""
    body: dict[str, Any] = {"v": VERSION, "t": msg.TYPE}
    # Not dataclasses.asdict: that deep-copies every value (0.17 ms for a StartJob, half
    # of a start()'s own CPU in the controller); msgpack only reads them. Enums (plain
    # ones, which msgpack cannot pack) reach `_enum_name`.
    names, get = _ENCODE[msg.TYPE]
    if get is not None:
        values = get(msg)
        body.update(zip(names, values) if len(names) > 1 else ((names[0], values),))
    return msgpack.packb(body, use_bin_type=True, default=_enum_name)


def decode(data: bytes) -> Message:
    """The one way bytes become a message; anything else raises `ProtocolError`."""
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types
        raise ProtocolError(f"not msgpack: {e}") from None
    if not isinstance(body, dict):
        raise ProtocolError(f"message is a {type(body).__name__}, not a map")
    version = body.pop("v", None)
    if version != VERSION:
        raise ProtocolError(f"protocol version {version!r}, this build speaks {VERSION}")
    kind = body.pop("t", None)
    cls = _TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"unknown message type {kind!r}")
    fields = _FIELDS[kind]
    if body.keys() != fields.keys():  # compared in place; the differences only for the error
        missing = fields.keys() - body.keys()
        if missing:
            raise ProtocolError(f"{kind}: missing field(s) {', '.join(sorted(missing))}")
        extra = body.keys() - fields.keys()
        raise ProtocolError(f"{kind}: unknown field(s) {', '.join(sorted(map(str, extra)))}")
    for name, allowed, exact, to_float, enum_type in _DECODE[kind]:
        value = body[name]
        kind_of = type(value)
        if kind_of not in exact and not _check(value, allowed):
            want = " or ".join(t.__name__ for t in allowed)
            raise ProtocolError(f"{kind}.{name}: expected {want}, got {kind_of.__name__}")
        if to_float and kind_of is int:
            body[name] = float(value)
        elif enum_type is not None and kind_of is str:
            body[name] = enum_type[value]
    if cls in _PLAIN:  # every field checked and present: what the frozen __init__ would store
        msg = object.__new__(cls)
        msg.__dict__.update(body)
        return msg
    return cls(**body)
