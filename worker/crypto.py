"""Encrypted recording sinks: no plaintext audio ever reaches storage.

`open_sink(path, cipher)` is the worker's one entry point: the WAV writer gets a
`Sink` and does not know whether the recording is encrypted. For an encrypted
recording the sink writes the intermediate ``<path>.wcpart`` (AES-256-CTR under
an ephemeral key held in this process, that key also stored wrapped under the
user's credential; layout in `worker/cryptofile.py`). CTR is what makes the
WAV writer's header patches and tail truncation possible without ever holding
plaintext on disk. `finish()` streams the intermediate through CTR decryption
into the final scheme (AES-CBC or the RSA/GCM envelope) into ``<path>.wctmp``,
fsyncs it, links it to ``<path>`` (never overwriting) and removes the
intermediate. Plaintext exists only in this process's memory, one chunk at a time.

If the worker is killed while recording, ``<path>`` does not exist and
``<path>.wcpart`` holds every byte the WAV writer had written (the page cache
survives a process kill; a power loss keeps only what the kernel had flushed),
encrypted. `recover()` turns it into the normal encrypted ``<path>`` given the
same credential: the AES key for aes-cbc (the IV is in the intermediate's
header), the private key for the envelope. Killed during `finish()`: the
intermediate is intact (it is removed only after ``<path>`` is durable) and a
partial ``<path>.wctmp`` holds only ciphertext; `recover()` overwrites it.
"""

from __future__ import annotations

import errno
import glob
import os
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from wholecall.formats import encrypted as cf
from wholecall.formats import recovery
from wholecall.formats.recovery import lock_part
from wholecall.worker.sink import FILE_MODE, FileSink, Sink

__all__ = ["EncryptedSink", "open_sink", "recover", "find_parts"]

#: How long a writer waits for its intermediate's lock, which a `wholecall recover` run may
#: hold for a moment (`formats.recovery.lock_part`).
WRITER_LOCK_WAIT_S = 2.0


class EncryptedSink:
    """A `Sink` whose storage is a CTR-encrypted intermediate, finished into an AES-CBC or envelope file.

    Offsets and sizes are logical (plaintext) ones, exactly as for `FileSink`:
    writing past the end or truncating upwards fills with (encrypted) zeros, as
    a hole in a plain file would read.
    """

    def __init__(self, path: str, scheme: str, *, key: bytes | None = None, iv: bytes | None = None,
                 public_key: rsa.RSAPublicKey | None = None, mode: int = FILE_MODE) -> None:
        self.path = path
        self._part = path + cf.PART_SUFFIX
        self._mode = mode
        self._scheme = scheme
        self._key = key
        self._iv = iv
        self._public_key = public_key
        if os.path.lexists(path):
            # Same promise as FileSink's O_EXCL: an existing recording is never replaced.
            raise FileExistsError(errno.EEXIST, "recording file already exists", path)
        header, self._body_key = cf.PartHeader.new(scheme, key=key, iv=iv, public_key=public_key)
        self._header = header
        self._ctr = cf.CtrBody(self._body_key, header.ctr)
        self._base = header.body_offset
        # O_EXCL | O_NOFOLLOW: a file or symlink already under the intermediate's name is
        # never opened (a planted link must not make a root worker write through it).
        self._fd: int | None = os.open(self._part, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                       mode)
        self._size = 0
        self._finished = False  # before the first write: `discard` reads it when that fails (a full disk)
        try:
            # Held while this process writes it: `wholecall recover` leaves a running
            # recording's intermediate alone (`formats.recovery`, lock protocol).
            lock_part(self._fd, self._part, WRITER_LOCK_WAIT_S)
            self._pwrite_raw(bytes(header), 0)
        except BaseException:
            self.discard()
            raise

    @property
    def body_key(self) -> bytes:
        """The intermediate's body key (an envelope job publishes it in the arena for failover)."""
        return self._body_key

    @classmethod
    def reopen(cls, path: str, cipher: dict[str, Any], mode: int = FILE_MODE,
               body_key: bytes | None = None) -> EncryptedSink:
        """The sink of an encrypted recording a dead worker was writing (failover).

        aes-cbc: the intermediate's body key is unwrapped with the job's key (the
        controller kept its wire dict). envelope: the body key is wrapped under the
        recipient's public key, which only the private key (never held by wholecall)
        unwraps, so the dead worker's copy in the arena is used (`body_key`; `shm.layout`,
        "Envelope keys"). Without it: ValueError, and the .wcpart stays for `wholecall recover`.
        """
        scheme = cipher.get("scheme")
        if scheme not in (cf.SCHEME_CBC, cf.SCHEME_ENVELOPE):
            raise ValueError(f"unknown cipher scheme {scheme!r}")
        if scheme == cf.SCHEME_ENVELOPE and not (body_key and any(body_key)):
            raise ValueError("an envelope recording whose body key was not published cannot be resumed by "
                             "another worker; its .wcpart is kept for `wholecall recover`")
        self = cls.__new__(cls)
        self.path = path
        self._part = path + cf.PART_SUFFIX
        self._mode = mode
        self._scheme = scheme
        if scheme == cf.SCHEME_CBC:
            self._key, self._iv = cf.parse_aes_key(cipher["key"]), cf.parse_iv(cipher["iv"])
            self._public_key = None
        else:
            self._key = self._iv = None
            self._public_key = cf.load_public_key(cipher["public_key"])
        if os.path.lexists(path):  # `worker.finished` takes a job that far; never written over
            raise FileExistsError(errno.EEXIST, "recording already finished by the worker that died", path)
        fd = os.open(self._part, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            # The dead worker's lock went with its descriptors; one still held is a live
            # writer's (a `wholecall recover` at work, a worker that is not dead): PartInUse.
            lock_part(fd, self._part, WRITER_LOCK_WAIT_S)
            header = cf.PartHeader.read(fd)
            if header.scheme != scheme:
                raise ValueError(f"{self._part} is a {header.scheme} intermediate, the job's cipher is {scheme}")
            self._body_key = header.unwrap(key=self._key) if scheme == cf.SCHEME_CBC else bytes(body_key or b"")
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._header = header
        self._ctr = cf.CtrBody(self._body_key, header.ctr)
        self._base = header.body_offset
        self._size = max(0, os.fstat(fd).st_size - self._base)
        self._finished = False
        return self

    def pread(self, n: int, offset: int) -> bytes:
        """Plaintext of logical bytes `offset` .. `offset + n` (short at the end)."""
        assert self._fd is not None, "sink already closed"
        data = os.pread(self._fd, max(0, min(n, self._size - offset)), self._base + offset)
        return self._ctr.apply(offset, data) if data else b""

    def __repr__(self) -> str:
        return f"EncryptedSink({self.path!r}, scheme={self._scheme!r}, size={self.size()})"

    def _pwrite_raw(self, data: bytes, offset: int) -> None:
        assert self._fd is not None, "sink already closed"
        view = memoryview(data)
        while view:
            done = os.pwrite(self._fd, view, offset)
            view = view[done:]
            offset += done

    def _write_zeros(self, start: int, end: int) -> None:
        pos = start
        for zeros in cf.zero_fill(end - start):
            self._pwrite_raw(self._ctr.apply(pos, zeros, tail=True), self._base + pos)
            pos += len(zeros)

    def pwrite(self, data: bytes, offset: int) -> None:
        """Encrypt `data` (any contiguous buffer) for logical `offset` and write it in place."""
        assert self._fd is not None, "sink already closed"
        view = memoryview(data).cast("B")
        if not view:
            return  # as pwrite(2): writing nothing extends nothing
        if offset > self._size:
            self._write_zeros(self._size, offset)
        self._pwrite_raw(self._ctr.apply(offset, view, tail=offset + len(view) >= self._size), self._base + offset)
        self._size = max(self._size, offset + len(view))

    def truncate(self, size: int) -> None:
        """Cut (or zero-extend) the logical content to `size` bytes."""
        assert self._fd is not None, "sink already closed"
        if size > self._size:
            self._write_zeros(self._size, size)
        else:
            os.ftruncate(self._fd, self._base + size)
        self._size = size

    def size(self) -> int:
        return self._size

    def plaintext_limit(self, max_bytes: int) -> int:
        """The largest plaintext whose final encrypted file still fits in `max_bytes` (0 = no limit)."""
        if self._scheme == cf.SCHEME_CBC:
            return cf.plaintext_limit(max_bytes, self._scheme)
        assert self._public_key is not None
        return cf.plaintext_limit(max_bytes, self._scheme, self._public_key.key_size)

    def finish(self) -> int:
        """Write the final encrypted file at `path`; returns its size on disk."""
        if self._finished:
            return os.stat(self.path).st_size
        assert self._fd is not None, "sink already discarded"
        encryptor: cf.StreamEncryptor
        if self._scheme == cf.SCHEME_CBC:
            assert self._key is not None and self._iv is not None
            encryptor = cf.CbcEncryptor(self._key, self._iv)
        else:
            assert self._public_key is not None
            encryptor = cf.EnvelopeEncryptor(self._public_key)
        chunks = cf.iter_part_plaintext(self._fd, self._header, self._body_key, self._size)
        written = cf.publish(self.path, encryptor, chunks, self._mode)
        os.close(self._fd)
        self._fd = None
        self._finished = True
        cf._unlink(self._part)
        cf.fsync_dir(self._part)
        return written

    def keep(self) -> str:
        """Finishing failed (ENOSPC, EMFILE...): keep the intermediate, which holds every
        byte written, for `wholecall recover`; drop only the temp file (ciphertext that
        `publish` removes itself, unless it was killed). Returns the path of what is kept,
        checked to be there: FileNotFoundError when it is not (the error then says that
        nothing was kept, instead of naming a file that is gone)."""
        fd, self._fd = self._fd, None
        if self._finished:
            if not os.path.lexists(self.path):
                raise FileNotFoundError(errno.ENOENT, "the finished recording is gone", self.path)
            return self.path
        try:
            ours = os.fstat(fd) if fd is not None else None
        finally:
            if fd is not None:
                os.close(fd)
        try:
            there = os.lstat(self._part)
        except FileNotFoundError:
            there = None
        if ours is None or there is None or (there.st_dev, there.st_ino) != (ours.st_dev, ours.st_ino):
            raise FileNotFoundError(errno.ENOENT, "the intermediate this job wrote is no longer under its name "
                                    "(removed or replaced by another process)", self._part)
        try:
            cf._unlink(self.path + cf.TMP_SUFFIX)
        except OSError:
            pass
        return self._part

    def discard(self) -> None:
        """Remove the intermediate, any temp file, and the final file if `finish` made it."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        cf._unlink(self._part)
        cf._unlink(self.path + cf.TMP_SUFFIX)
        if self._finished:
            cf._unlink(self.path)
            self._finished = False


_WIRE_FIELDS = {cf.SCHEME_CBC: {"scheme", "key", "iv"}, cf.SCHEME_ENVELOPE: {"scheme", "public_key"}}


def open_sink(path: str, cipher: dict[str, Any] | None, mode: int = FILE_MODE) -> Sink:
    """The sink for a recording: a plain `FileSink` without a cipher, an `EncryptedSink` with one.

    `cipher` is the wire dict made by the controller's `AESCBCCipher.to_wire()`
    (``{"scheme": "aes-cbc", "key": <16/24/32 bytes>, "iv": <16 bytes>}``) or
    `EnvelopeCipher.to_wire()` (``{"scheme": "envelope", "public_key": <PEM>}``).
    A malformed dict raises ValueError before any file is created; the message
    names the field, never its value.
    """
    if cipher is None:
        return FileSink(path, mode)
    if not isinstance(cipher, dict):
        raise ValueError(f"cipher must be a dict or None, not {type(cipher).__name__}")
    scheme = cipher.get("scheme")
    if scheme not in _WIRE_FIELDS:
        raise ValueError(f"unknown cipher scheme {scheme!r}: expected {cf.SCHEME_CBC!r} or {cf.SCHEME_ENVELOPE!r}")
    missing = _WIRE_FIELDS[scheme] - cipher.keys()
    extra = cipher.keys() - _WIRE_FIELDS[scheme]
    if missing or extra:
        problems = ([f"missing fields {sorted(missing)}"] if missing else []) + \
                   ([f"unexpected fields {sorted(map(str, extra))}"] if extra else [])
        raise ValueError(f"{scheme} cipher: {', '.join(problems)}")
    try:
        if scheme == cf.SCHEME_CBC:
            if not isinstance(cipher["key"], bytes) or not isinstance(cipher["iv"], bytes):
                raise ValueError("aes-cbc cipher: key and iv must be raw bytes")
            key, iv = cf.parse_aes_key(cipher["key"]), cf.parse_iv(cipher["iv"])
            return EncryptedSink(path, scheme, key=key, iv=iv, mode=mode)
        public_key = cf.load_public_key(cipher["public_key"])
        return EncryptedSink(path, scheme, public_key=public_key, mode=mode)
    except cf.CryptoFileError as exc:
        raise ValueError(f"{scheme} cipher: {exc}") from None


def recover(part_path: str, *, key: bytes | str | None = None, private_key_pem: bytes | None = None,
            passphrase: bytes | None = None, repair_wav: bool = True, mode: int = FILE_MODE) -> str:
    """Turn the ``.wcpart`` left by a killed worker into the normal encrypted recording; returns its path.

    Give the credential the recording was made with: `key` (AES key, hex or
    raw) for aes-cbc, `private_key_pem` for the envelope. With `repair_wav` the
    WAV's RIFF/data sizes are rewritten to cover all whole blocks that were
    written (they are otherwise only as fresh as the writer's last header
    refresh); with ``repair_wav=False`` the decrypted content is byte-for-byte
    what a plain recording would have held at the kill. Raises
    `cryptofile.CryptoFileError` (a ValueError) for a wrong credential.
    """
    raw_key = cf.parse_aes_key(key) if key is not None else None
    private_key = cf.load_private_key(private_key_pem, passphrase) if private_key_pem is not None else None
    return recovery.recover(part_path, key=raw_key, private_key=private_key, repair_wav=repair_wav, mode=mode).path


def find_parts(directory: str) -> list[str]:
    """Intermediates in `directory` (recordings whose worker died before finishing), sorted."""
    return sorted(glob.glob(os.path.join(glob.escape(directory), "*" + cf.PART_SUFFIX)))
