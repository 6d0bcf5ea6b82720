"""Intermediates (``.wcpart``) after their writer: who may touch one, and turning one into
its final encrypted recording (`recover`, what ``wholecall recover`` runs).

Lock protocol. Whoever writes an intermediate (the worker's `EncryptedSink`, from its
creation or a takeover until it lets go) or recovers one holds ``flock(LOCK_EX)`` on an
open descriptor of it. The kernel drops the lock when the last copy of that descriptor
closes, so a killed worker's lock goes with it and a takeover or ``wholecall recover``
may then take the file; a running recording's cannot be taken (`PartInUse`). flock, not
fcntl record locks: those belong to the process and vanish when it closes *any*
descriptor of the file (a `recover` run inside a worker's process would drop them).

A final file next to an intermediate means its writer died between linking the final
file and removing the intermediate (the finishing order: the final name appears only
once the whole file is written and fsynced). `final_matches` tells whether that final
file is this intermediate's, so the leftover can be removed instead of reported.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import rsa

from . import wav
from .codecs import tag_name
from .encrypted import (
    ENV_FIXED,
    ENV_MAGIC,
    ENV_TAG_SIZE,
    PART_SUFFIX,
    SCHEME_CBC,
    TMP_SUFFIX,
    CbcEncryptor,
    CryptoFileError,
    EnvelopeEncryptor,
    PartHeader,
    StreamEncryptor,
    fsync_dir,
    iter_decrypt,
    iter_part_plaintext,
    publish,
)

__all__ = ["PartInUse", "Recovered", "final_matches", "lock_part", "recover"]


class PartInUse(CryptoFileError):
    """Another process holds the intermediate's lock: a recording still being written."""


def lock_part(fd: int, path: str, wait_s: float = 0.0) -> None:
    """Take the intermediate's lock on `fd` (module docstring), or raise `PartInUse`.

    `wait_s`: how long a writer waits for it. A `recover` run can hold the lock of a part a
    worker has just created, for the moment it takes to find no header in it and let go:
    the worker's start must not fail for that."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise PartInUse(f"{path} is in use: a running recording is writing it (its worker holds the "
                                f"lock); it is left alone") from None
            time.sleep(0.01)


@dataclass(frozen=True)
class Recovered:
    """What `recover` made of an intermediate."""

    path: str  # the final encrypted recording
    bytes: int  # its size on disk
    wav_bytes: int  # size of the WAV inside
    frames: int  # sample frames of audio in it
    rate: int  # sample rate of that audio (Hz)
    audio: str  # "alaw 8000 Hz mono"
    changes: list[str] = field(default_factory=list)  # what the repair changed in the WAV header
    repaired: bool = True  # False: --no-repair, the header is as the writer last left it
    finished_before: bool = False  # the final file was there already (its writer died finishing)

    def summary(self) -> str:
        """One line for a human: what was recovered, and what was changed."""
        seconds = self.frames / self.rate if self.rate else 0.0
        what = f"{seconds:.2f} s of {self.audio} ({self.wav_bytes} bytes of WAV, {self.bytes} bytes encrypted)"
        if self.finished_before:
            return f"{what}; it had been finished already (its worker died removing the intermediate)"
        if not self.repaired:
            return f"{what}; WAV header left as the writer last wrote it (--no-repair)"
        if self.changes:
            return f"{what}; repaired the WAV header: {', '.join(self.changes)}"
        return f"{what}; WAV header already consistent"


def recover(part_path: str, *, key: bytes | None = None, private_key: rsa.RSAPrivateKey | None = None,
            repair_wav: bool = True, mode: int = 0o600) -> Recovered:
    """Turn an intermediate left by a killed worker into the final encrypted recording.

    The final file is what `finish()` would have made from the intermediate's content
    at the moment of the kill: every byte the WAV writer had handed to the sink. With
    `repair_wav` the WAV's RIFF/data sizes are rewritten to cover all whole blocks
    present (the writer only refreshes them every few seconds); without it the content
    is byte-for-byte what a plain `FileSink` would hold. The intermediate is removed
    once the final file is durable. The IV of an aes-cbc recording comes from the
    intermediate's header.

    Refused, the intermediate kept: `PartInUse` (a running recording's), a
    `CryptoFileError` for a wrong credential or content with no complete WAV header (a
    worker killed before it had written one: there is nothing a player could read),
    OSError naming the file it concerns (a full disk names the temp file).
    """
    if not part_path.endswith(PART_SUFFIX):
        raise CryptoFileError(f"{part_path} is not an intermediate (its name does not end with {PART_SUFFIX})")
    final_path = part_path[: -len(PART_SUFFIX)]
    fd = os.open(part_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        lock_part(fd, part_path)
        header = PartHeader.read(fd)
        body_key = header.unwrap(key=key, private_key=private_key)
        size = max(0, os.fstat(fd).st_size - header.body_offset)
        head = b"".join(iter_part_plaintext(fd, header, body_key, min(size, wav.HEAD_BYTES)))
        try:
            plan = wav.repair_plan(head, size, part_path)
        except ValueError as exc:
            raise CryptoFileError(f"{part_path} holds no complete WAV header ({size} bytes of content: "
                                  f"{str(exc).removeprefix(part_path + ': ')}), so no recording can be made of "
                                  f"it (`wholecall decrypt` shows what it holds)") from None
        info = plan.info
        audio = (f"{tag_name(info.format_tag, info.bits_per_sample)} {info.rate} Hz "
                 f"{'mono' if info.channels == 1 else f'{info.channels} channels'}")
        if os.path.lexists(final_path):
            why = final_matches(final_path, fd, header, body_key, key=key, private_key=private_key)
            if why:
                raise FileExistsError(errno.EEXIST, f"the final recording exists and is not this intermediate's "
                                      f"({why}): move one of them aside", final_path)
            os.unlink(part_path)  # its worker died between publishing and removing it
            fsync_dir(part_path)
            return Recovered(final_path, os.stat(final_path).st_size, size, plan.frames, info.rate, audio,
                             finished_before=True)
        chunks: Iterable[bytes] = iter_part_plaintext(fd, header, body_key, size)
        wav_bytes = size
        if repair_wav and plan.patches:
            chunks = wav.patch_stream(chunks, plan.patches, plan.size)
            wav_bytes = plan.size
        encryptor: StreamEncryptor
        if header.scheme == SCHEME_CBC:
            assert key is not None
            encryptor = CbcEncryptor(key, header.iv)
        else:
            assert private_key is not None
            encryptor = EnvelopeEncryptor(private_key.public_key())
        try:
            written = publish(final_path, encryptor, chunks, mode)
        except OSError as exc:
            if exc.filename is None:  # a write or fsync of the temp file: name it
                raise OSError(exc.errno, exc.strerror, final_path + TMP_SUFFIX) from None
            raise
        os.unlink(part_path)
        fsync_dir(part_path)
    finally:
        os.close(fd)
    return Recovered(final_path, written, wav_bytes, plan.frames, info.rate, audio,
                     changes=plan.changes if repair_wav else [], repaired=repair_wav)


def final_matches(final_path: str, fd: int, header: PartHeader, body_key: bytes, *, key: bytes | None = None,
                  private_key: rsa.RSAPrivateKey | None = None) -> str:
    """"" when the file at `final_path` is the finished form of the intermediate open on
    `fd`, else why not. With the recording's credential (the aes-cbc key, or the private
    key of an envelope) the final file is decrypted and compared with the intermediate's
    content byte for byte; a worker, which holds only the public key of an envelope, can
    check only its structure: magic, recipient and exact length (the finishing order
    makes the name appear only for a complete file)."""
    size = max(0, os.fstat(fd).st_size - header.body_offset)
    try:
        ffd = os.open(final_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        return f"cannot read it: {exc.strerror}"
    try:
        final_size = os.fstat(ffd).st_size
        if header.scheme == SCHEME_CBC:
            expected = (size // 16 + 1) * 16
        else:
            fixed = os.pread(ffd, ENV_FIXED.size, 0)
            if len(fixed) < ENV_FIXED.size or fixed[:8] != ENV_MAGIC:
                return "not an envelope file"
            _, _, _, wlen, fp, _ = ENV_FIXED.unpack(fixed)
            if fp != header.fingerprint:
                return "encrypted for another recipient"
            expected = ENV_FIXED.size + wlen + size + ENV_TAG_SIZE
        if final_size != expected:
            return f"{final_size} bytes, the intermediate's content makes {expected}"
        if (key if header.scheme == SCHEME_CBC else private_key) is None:
            return ""  # no credential to decrypt it with: the structure is all there is to check
        try:  # all of the final file is read: its padding or tag is checked too
            theirs = _digest(iter_decrypt(ffd, key=key, iv=header.iv, private_key=private_key))
        except CryptoFileError as exc:
            return str(exc)
        return "" if theirs == _digest(iter_part_plaintext(fd, header, body_key, size)) else "its content differs"
    finally:
        os.close(ffd)


def _digest(chunks: Iterable[bytes]) -> bytes:
    h = hashlib.sha256()
    for data in chunks:
        h.update(data)
    return h.digest()
