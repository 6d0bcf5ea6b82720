"""A takeover of an encrypted job whose dead worker had already published its final file.

The finishing order: the worker stores the cause it is ending the job with in the job's
durable record (`shm.layout`, flags), then `EncryptedSink.finish` writes the final file
under a temporary name, fsyncs it, links it to the recording's name (the name appears
only for a complete file), removes the temporary name and then the intermediate; then
the worker releases the job's legs and reports the end. Killed after the link, it leaves
a complete recording (and perhaps its intermediate): the job is over, with that cause.
Resuming it is impossible (the name is taken, and a recording is never overwritten) and
reporting ERROR would turn a complete recording into a failure ("a worker that dies
loses nothing"). `adopt` checks that the final file is this job's, removes the leftover
intermediate, and says what the job's end reports.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from wholecall.formats import encrypted as cf
from wholecall.formats import wav
from wholecall.formats.recovery import final_matches, lock_part

__all__ = ["FinishedFile", "adopt"]


@dataclass(frozen=True)
class FinishedFile:
    """A taken-over job's final file, found complete: what its JobEnded reports."""

    path: str
    bytes: int  # size on disk
    frames: int  # sample frames of audio in it


def adopt(path: str, cipher: dict[str, Any], body_key: bytes, frames_hint: int) -> FinishedFile:
    """Take the finished file at `path` as the job's (module docstring); ValueError, the
    files left as they are, when it is not this job's. `body_key`: an envelope job's copy
    from the arena (empty if none); `frames_hint`: the frame count to report when no
    plaintext can be read (an envelope, whose private key wholecall never holds)."""
    scheme = cipher.get("scheme")
    key = iv = None
    if scheme == cf.SCHEME_CBC:
        key, iv = cf.parse_aes_key(cipher["key"]), cf.parse_iv(cipher["iv"])
    elif scheme != cf.SCHEME_ENVELOPE:
        raise ValueError(f"unknown cipher scheme {scheme!r}")
    part = path + cf.PART_SUFFIX
    try:
        fd = os.open(part, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:  # the dead worker had removed it too
        return FinishedFile(path, os.stat(path).st_size, _check_alone(path, cipher, key, iv, frames_hint))
    try:
        lock_part(fd, part)
        header = cf.PartHeader.read(fd)
        if header.scheme != scheme:
            raise ValueError(f"{part} is a {header.scheme} intermediate, the job's cipher is {scheme}")
        if key is not None:
            body_key = header.unwrap(key=key)
        why = final_matches(path, fd, header, body_key, key=key)
        if why:
            raise ValueError(f"{path} exists but is not the finished form of its intermediate ({why})")
        frames = frames_hint
        if any(body_key):
            size = max(0, os.fstat(fd).st_size - header.body_offset)
            head = b"".join(cf.iter_part_plaintext(fd, header, body_key, min(size, wav.HEAD_BYTES)))
            frames = _frames(head, size, path)
        os.unlink(part)  # what its worker died before doing
        cf.fsync_dir(part)
    finally:
        os.close(fd)
    return FinishedFile(path, os.stat(path).st_size, frames)


def _check_alone(path: str, cipher: dict[str, Any], key: bytes | None, iv: bytes | None, frames_hint: int) -> int:
    """A final file with no intermediate left: aes-cbc is decrypted whole and must be a
    valid WAV; an envelope must be one, for the job's recipient. Returns its frames."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if key is None:
            head = os.pread(fd, cf.ENV_FIXED.size, 0)
            mine = cf.key_fingerprint(cf.load_public_key(cipher["public_key"]))
            if len(head) < cf.ENV_FIXED.size or head[:8] != cf.ENV_MAGIC or cf.ENV_FIXED.unpack(head)[4] != mine:
                raise ValueError(f"{path} exists but is not an envelope recording for this job's recipient")
            return frames_hint
        checker = wav.WavChecker()
        first = b""
        for data in cf.iter_decrypt(fd, key=key, iv=iv):
            checker.feed(data)
            if len(first) < wav.HEAD_BYTES:
                first += data[:wav.HEAD_BYTES - len(first)]
        problem = checker.result()
        if problem:
            raise ValueError(f"{path} exists but does not decrypt to a valid WAV with this job's key ({problem})")
        return _frames(first, checker.length, path)
    finally:
        os.close(fd)


def _frames(head: bytes, size: int, name: str) -> int:
    """Sample frames in WAV content of `size` bytes that starts with `head`."""
    info = wav.parse(head, size, name)
    if info.fact_offset:
        return info.fact_frames
    unit_bytes, unit_frames = info.unit()
    return max(0, min(info.data_size, size - info.data_offset)) // unit_bytes * unit_frames
