"""The metadata sidecar of a finished recording: `<file>.json`, written after the file is final.

Who writes it, and when. The worker's `JobEnded` means the audio file is final: its last
header written and closed (an encrypted one also fsynced and renamed by its finalise path;
a plain one is not fsynced: its tail reaches the disk with the kernel's writeback, so
after a power loss, not a process crash, the sidecar's bytes and sha256 may describe
audio the disk did not get). The supervisor's I/O thread delivers
that event; it must never hash a file or touch the disk, so the recorder hands the
ending to the controller's *finisher* threads (`Config.finisher_threads`). A finisher
hashes the file, builds the document below and writes it atomically (a temporary
file in the same directory, renamed), and only then applies the ending to the
recorder: when `stop()`, `record()` or `wait_until_finished()` return, the file and its
sidecar are both final, and a reader that sees `<file>.json` sees all of it. The
controller's syncer makes the sidecar durable right after (`controller.durability`:
its fsyncs cost stop() p99 56-235 ms at 20,000 calls); with `Config.sync_on_stop` the
finisher does that first, the audio file fsynced too (then the temporary file before
its rename, then the directory). A recording discarded by `min_seconds` has its file removed there, and
never gets a sidecar.

The document is described by `formats/sidecar.schema.json` (JSON Schema 2020-12);
`wholecall info FILE` prints it beside the file's own facts. It never holds a key:
an encrypted recording's sidecar names the scheme and a key fingerprint.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import hmac
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from wholecall.formats import encrypted as cf
from wholecall.formats.codecs import CALL_RATE

from .durability import fsync_path

SCHEMA_ID = "wholecall-sidecar/1"
#: A digit whose reported onset is this close before a paused span counts as keyed in it:
#: the detector reports onsets a guard early (`worker.dtmf`), and a digit that runs into
#: a pause is one the pause was asked for (PCI DSS favours leaving it out).
ONSET_SLACK = 160
#: After a takeover, the rest of a tone that began before the resume point is confirmed
#: again by the new worker, at an onset at most this far past that point.
TAIL_SLACK = 320
SUFFIX = ".json"


def utc(t: float) -> str:
    """Wall-clock `t` (time.time()) as UTC ISO 8601 with milliseconds and a Z."""
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class PauseSpan:
    """One pause of a recording, as the controller asked for it."""

    mode: str  # "silence" | "skip"
    start_pos: int  # leg position of the request
    start_t: float  # wall clock of the request
    end_pos: int | None = None  # leg position of the resume; None: paused until the end
    end_t: float | None = None


@dataclass
class JobNotes:
    """What the controller learns about one job while it runs (for its sidecar)."""

    start_pos: int
    start_t: float
    min_seconds: float
    # Tuples, replaced as they grow (rarely: a pause, a digit): the empty one is shared,
    # where two lists a call were two more objects for the cyclic collector to walk.
    pauses: tuple[PauseSpan, ...] = ()
    digits: tuple[list, ...] = ()  # [digit, leg, leg position] from the worker
    resumed: tuple[int, ...] = ()  # leg positions where a takeover's worker went on reading

    @property
    def paused(self) -> bool:
        return bool(self.pauses) and self.pauses[-1].end_pos is None


def file_offset(pos: int, origin: int, pauses: Sequence[PauseSpan], end_pos: int) -> int | None:
    """Offset in 8 kHz samples in the file of leg position `pos`; None if `pos` is not in
    the file (before its first sample, inside a paused span, or after its end).

    Skipped spans are not in the file, so they shift what follows; silent ones keep
    the timeline."""
    if origin < 0 or pos < origin or pos >= end_pos:
        return None
    off = pos - origin
    for p in pauses:
        end = end_pos if p.end_pos is None else p.end_pos
        if p.start_pos <= pos < end:
            return None
        if p.mode == "skip" and end <= pos:
            off -= max(0, end - max(p.start_pos, origin))
    return off


def heard_once(digits: Sequence[list], resumed: Sequence[int]) -> list[list]:
    """In-band digits less those heard twice across takeovers, in leg order.

    A takeover's worker reads again from the dead one's last durable position what the
    dead one may already have analysed: a digit with its onset past that point is then
    confirmed by both (the same onset, within a frame), and the rest of a tone that began
    before it is confirmed again just after it. Either is the digit already listed. A
    real second press of the same key cannot start within a frame of the first (a digit
    lasts 40 ms at least), nor, but for a press within 40 ms of the resume point right
    after the same key's, look like a tone's rest."""
    kept: list[list] = []
    last: dict[str, list] = {}  # leg -> the digit last kept on it
    for d in sorted(digits, key=lambda d: int(d[2])):
        prev = last.get(d[1])
        if prev is not None and prev[0] == d[0]:
            q, p = int(prev[2]), int(d[2])
            if p - q <= ONSET_SLACK or any(q < r <= p <= r + TAIL_SLACK for r in resumed):
                continue
        kept.append(d)
        last[d[1]] = d
    return kept


def key_fingerprint(cipher: dict | None) -> dict | None:
    """{"scheme", "key_fingerprint"} of a wire cipher; never the key itself.

    Envelope: the RSA public key's fingerprint (`formats.encrypted.key_fingerprint`),
    the one `wholecall decrypt` shows. AES-CBC: an HMAC-SHA256 of a fixed label under
    the key, first 16 bytes: it tells keys apart without revealing anything about one."""
    if cipher is None:
        return None
    scheme = cipher.get("scheme", "")
    if "public_key" in cipher:
        from cryptography.hazmat.primitives.serialization import load_pem_public_key
        pem = cipher["public_key"]
        public = load_pem_public_key(pem if isinstance(pem, bytes) else pem.encode())
        fp = cf.key_fingerprint(public).hex()  # type: ignore[arg-type]  # an envelope key is RSA (checked at start)
    else:
        key = cipher.get("key", b"")
        key = bytes.fromhex(key) if isinstance(key, str) else bytes(key)
        fp = hmac.new(key, b"wholecall key fingerprint", hashlib.sha256).hexdigest()[:32]
    return {"scheme": str(scheme), "key_fingerprint": fp}


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build(*, path: str, notes: JobNotes, end_t: float, channel: int, job_id: int, cause: str, error: str,
          file_format: str, rate: int, mode: str, nbytes: int, samples: int, duration_s: float, sha256: str,
          origin: int, end_pos: int, audio_detected: bool, lost_samples: int, cipher: dict | None,
          extra: dict | None = None) -> dict[str, Any]:
    """The sidecar document (see `formats/sidecar.schema.json`). `extra` is what the
    application adds: `call_id`, `media` (per-leg stats), `digits` (RFC 4733 events as
    {"digit", "leg", "position"}, positions on the legs' clock)."""
    extra = extra or {}
    digits = []
    # The file's length in 8 kHz samples: `end_pos` is how far the worker read, which
    # for a job ended by max_bytes or a silence limit is past the file's last sample.
    in_file = samples * CALL_RATE // rate if rate else samples
    inband = heard_once(notes.digits, notes.resumed) if notes.resumed else notes.digits
    sources = [("inband", d[0], d[1], int(d[2])) for d in inband]
    sources += [("rfc4733", str(d["digit"]), str(d["leg"]), int(d["position"])) for d in extra.get("digits", ())]
    for source, digit, leg, pos in sorted(sources, key=lambda s: s[3]):
        if any(p.start_pos <= pos + ONSET_SLACK and pos < (end_pos if p.end_pos is None else p.end_pos)
               for p in notes.pauses):
            continue  # keyed while paused: a card number must not reach the recording's metadata either
        off = file_offset(pos, origin, notes.pauses, end_pos)
        if off is not None and off >= in_file:
            off = None  # read by the worker but past the file's end (a size or silence limit cut it there)
        digits.append({"digit": digit, "source": source, "leg": leg,
                       "offset_s": None if off is None else round(off / CALL_RATE, 6)})
    paused = []
    for p in notes.pauses:
        end = end_pos if p.end_pos is None else max(p.start_pos, min(p.end_pos, end_pos))
        call = max(0, end - p.start_pos)
        start_off, in_it = None, 0
        if 0 <= origin <= end:
            # From the file's first sample on: a pause asked in leading silence that was held
            # back (milliseconds_initial_silence) is in the file only from there, if at all.
            first = max(p.start_pos, origin)
            start_off = file_offset(first, origin, [q for q in notes.pauses if q is not p], end_pos + 1)
            if start_off is not None and start_off > in_file:
                start_off, call = None, 0  # asked after the file's last sample (a size or silence limit ended it)
            elif start_off is not None and p.mode == "silence":
                in_it = min(end - first, in_file - start_off)  # its silence, up to where a limit cut the file
                if first == p.start_pos:
                    call = in_it  # the recording ended with the file
        paused.append({"mode": p.mode, "start": utc(p.start_t), "end": utc(p.end_t if p.end_t is not None else end_t),
                       "offset_s": None if start_off is None else round(start_off / CALL_RATE, 6),
                       "call_seconds": round(call / CALL_RATE, 6),
                       "file_seconds": round(in_it / CALL_RATE, 6)})
    media = extra.get("media")
    return {
        "schema": SCHEMA_ID,
        "file": os.path.basename(path),
        "call_id": extra.get("call_id") or f"channel-{channel}",
        "channel": channel,
        "job": job_id,
        "start": utc(notes.start_t),
        "end": utc(end_t),
        "cause": cause,
        "error": error,
        "format": file_format,
        "rate": rate,
        "mode": mode,
        "seconds": round(duration_s, 6),
        "samples": samples,
        "bytes": nbytes,
        "sha256": sha256,
        "audio_detected": audio_detected,
        "min_seconds": notes.min_seconds,
        "lost_samples": lost_samples,
        "digits": digits,
        "paused": paused,
        "media": media if media else None,
        "encryption": key_fingerprint(cipher),
    }


def write_atomic(path: str, doc: dict, mode: int = 0o600, durable: bool = True) -> None:
    """Write `doc` as `path`: complete or not at all. `durable`: also on the disk once this
    returns, complete or not at all after a power loss too; otherwise for every reader on
    this machine and across any process crash, and durable once `path` and its directory
    are fsynced (`controller.durability`)."""
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    # One line, through the C encoder: json's indenting encoder is pure Python whose nested
    # functions form a reference cycle per call (33 objects a recording left to the cyclic
    # collector; the soak counts them). `wholecall info FILE` prints it indented.
    data = (json.dumps(doc, separators=(",", ":")) + "\n").encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    try:
        # Published by a hard link, not a rename: a rename replaces whatever has the name
        # (another recording named like this one's sidecar), a link fails on it.
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, f"{path} already exists and is not overwritten") from None
    finally:
        os.unlink(tmp)
    if durable:
        fsync_path(directory, directory=True)


def sidecar_path(path: str) -> str:
    return path + SUFFIX
