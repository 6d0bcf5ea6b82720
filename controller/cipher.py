"""The ciphers an application passes as ``record(..., cipher=...)``, and checking encrypted recordings.

Two schemes:

- `AESCBCCipher(key, iv)`: the recording is AES-CBC/PKCS#7 with the caller's key
  and IV, decryptable by stock ``openssl enc -d -aes-256-cbc -K <key> -iv <iv>``.
  Not authenticated (OpenSSL's raw format has no room for a tag).
- `EnvelopeCipher(public_key_pem)`: each recording gets a fresh AES-256-GCM key
  wrapped with RSA-OAEP-SHA256 for the holder of the private key; authenticated.
  The recorder never sees a secret: only the private key (`EnvelopePrivateKey`)
  can decrypt, with ``wholecall decrypt --private-key key.pem rec.wav``.

Credentials are checked here, in the application's process, so a bad key or IV
raises `Error` before a job is started. Key material never appears in a repr,
an exception message or a log line.

The on-disk formats are `wholecall.formats.encrypted`'s (shared with the worker that
writes them); the CLI commands `wholecall decrypt` and `recover` are `wholecall.cli.decrypt`.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from typing import Any

from wholecall.controller.errors import Error
from wholecall.formats import encrypted as cf
from wholecall.formats import wav

__all__ = ["AESCBCCipher", "EnvelopeCipher", "EnvelopePrivateKey", "new_iv", "new_key",
           "wire_cipher", "validate", "validation_error"]


def new_iv() -> str:
    """A fresh random 128-bit IV as hex: use a new one for every recording made with the same key."""
    return secrets.token_hex(cf.IV_SIZE)


def new_key(bits: int = 256) -> str:
    """A fresh random AES key of `bits` (128, 192 or 256) as hex."""
    if bits not in (128, 192, 256):
        raise Error(f"AES key size must be 128, 192 or 256 bits, not {bits}")
    return secrets.token_hex(bits // 8)


class AESCBCCipher:
    """AES-CBC (128/192/256-bit key, 128-bit IV, PKCS#7 padding) compatible with ``openssl enc``.

    `key` and `iv` are hex strings or raw bytes. A wrong length or non-hex text
    raises `Error` here, before anything starts.

    Never record twice with the same key and IV: CBC under a repeated IV shows
    which recordings start with the same bytes (every WAV header does), so the
    IV must be fresh per recording. Use `new_iv()` or `with_new_iv()` for each
    call to ``record()``/``start()``. The file itself is not authenticated: a
    modified file decrypts to garbage rather than failing; use `EnvelopeCipher`
    when integrity matters.
    """

    __slots__ = ("_key", "_iv")

    def __init__(self, key: str | bytes, iv: str | bytes) -> None:
        try:
            self._key = cf.parse_aes_key(key)
            self._iv = cf.parse_iv(iv)
        except cf.CryptoFileError as exc:
            raise Error(f"cipher: {exc}") from None

    @property
    def bits(self) -> int:
        """Key size in bits (128, 192 or 256)."""
        return 8 * len(self._key)

    @property
    def openssl_name(self) -> str:
        """The ``openssl enc`` cipher name that decrypts recordings made with this cipher."""
        return f"aes-{self.bits}-cbc"

    def with_new_iv(self) -> AESCBCCipher:
        """The same key with a fresh random IV: the safe way to reuse a key for another recording."""
        return AESCBCCipher(self._key, secrets.token_bytes(cf.IV_SIZE))

    def to_wire(self) -> dict[str, Any]:
        """The msgpack-ready form sent to the worker (holds the key: never log or store it)."""
        return {"scheme": cf.SCHEME_CBC, "key": self._key, "iv": self._iv}

    def plaintext_limit(self, max_bytes: int) -> int:
        """The WAV bytes a file of at most `max_bytes` holds once encrypted (0: no limit)."""
        return cf.plaintext_limit(max_bytes, cf.SCHEME_CBC)

    def __repr__(self) -> str:
        return f"AESCBCCipher(bits={self.bits}, key=<hidden>, iv=<hidden>)"

    def __reduce__(self) -> Any:
        # Pickling would silently copy the key somewhere (a queue, a cache, a crash dump).
        raise TypeError("AESCBCCipher holds a secret key and cannot be pickled")


class EnvelopeCipher:
    """Public-key encryption: fresh AES-256-GCM key per recording, wrapped with RSA-OAEP-SHA256.

    Built from an RSA public key (>= 2048 bits) in PEM. The recorder needs no
    secret; decrypting needs the private key (`EnvelopePrivateKey`, or
    ``wholecall decrypt --private-key``). Any modified byte makes decryption fail.
    """

    __slots__ = ("_key", "_pem")

    def __init__(self, public_key_pem: bytes | str) -> None:
        try:
            self._key = cf.load_public_key(public_key_pem)
        except cf.CryptoFileError as exc:
            raise Error(f"cipher: {exc}") from None
        self._pem = cf.public_pem(self._key)

    @classmethod
    def from_pem_file(cls, path: str) -> EnvelopeCipher:
        """Load the public key from a PEM file."""
        return cls(_read_file(path, "public key"))

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the public key (DER SubjectPublicKeyInfo) as hex: names the recipient in logs."""
        return cf.key_fingerprint(self._key).hex()

    def to_wire(self) -> dict[str, Any]:
        """The msgpack-ready form sent to the worker: the public key only."""
        return {"scheme": cf.SCHEME_ENVELOPE, "public_key": self._pem}

    def plaintext_limit(self, max_bytes: int) -> int:
        """The WAV bytes a file of at most `max_bytes` holds once encrypted (0: no limit)."""
        return cf.plaintext_limit(max_bytes, cf.SCHEME_ENVELOPE, self._key.key_size)

    def __repr__(self) -> str:
        return f"EnvelopeCipher(rsa={self._key.key_size}, fingerprint={self.fingerprint[:16]})"


class EnvelopePrivateKey:
    """The private half of an `EnvelopeCipher`: decrypts and validates envelope recordings.

    Keep it away from the recorder; it is needed only where recordings are read.
    """

    __slots__ = ("_key",)

    def __init__(self, private_key_pem: bytes | str, passphrase: bytes | str | None = None) -> None:
        if isinstance(passphrase, str):
            passphrase = passphrase.encode()
        try:
            self._key = cf.load_private_key(private_key_pem, passphrase)
        except cf.CryptoFileError as exc:
            raise Error(str(exc)) from None

    @classmethod
    def from_pem_file(cls, path: str, passphrase: bytes | str | None = None) -> EnvelopePrivateKey:
        """Load the private key from a PEM file."""
        return cls(_read_file(path, "private key"), passphrase)

    def public(self) -> EnvelopeCipher:
        """The matching cipher to record with."""
        return EnvelopeCipher(cf.public_pem(self._key.public_key()))

    @property
    def fingerprint(self) -> str:
        """Fingerprint of the matching public key, as `EnvelopeCipher.fingerprint`."""
        return cf.key_fingerprint(self._key).hex()

    def __repr__(self) -> str:
        return f"EnvelopePrivateKey(rsa={self._key.key_size}, fingerprint={self.fingerprint[:16]}, key=<hidden>)"

    def __reduce__(self) -> Any:
        raise TypeError("EnvelopePrivateKey holds a secret key and cannot be pickled")


def _read_file(path: str, what: str) -> bytes:
    try:
        return cf.read_secret_file(path, what)
    except cf.CryptoFileError as exc:
        raise Error(str(exc)) from None


def wire_cipher(cipher: AESCBCCipher | EnvelopeCipher | None) -> dict[str, Any] | None:
    """The worker's form of a ``record(cipher=...)`` argument; `Error` for anything that is not a cipher."""
    if cipher is None:
        return None
    if isinstance(cipher, (AESCBCCipher, EnvelopeCipher)):
        return cipher.to_wire()
    if isinstance(cipher, EnvelopePrivateKey):
        raise Error("cipher: record with the public key (EnvelopeCipher / key.public()), not the private key")
    raise Error(f"cipher must be an AESCBCCipher or EnvelopeCipher, not {type(cipher).__name__}")


def _plaintext(fd: int, cipher: AESCBCCipher | EnvelopePrivateKey | None) -> Iterator[bytes]:
    if cipher is None:
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            data = os.pread(fd, min(cf.CHUNK, size - pos), pos)
            if not data:
                return
            pos += len(data)
            yield data
    elif isinstance(cipher, AESCBCCipher):
        yield from cf.iter_decrypt(fd, key=cipher._key, iv=cipher._iv)
    else:
        yield from cf.iter_decrypt(fd, private_key=cipher._key)


def validation_error(filename: str, cipher: AESCBCCipher | EnvelopePrivateKey | None) -> str | None:
    """Why `filename` is not a valid recording for these credentials, or None if it is.

    Decrypts in memory, chunk by chunk (nothing is written), and checks the
    RIFF/WAVE structure as `formats.wav.WavChecker` describes. `cipher` is
    the `AESCBCCipher` the file was recorded with, the `EnvelopePrivateKey`
    matching the `EnvelopeCipher` it was recorded with, or None for a plain WAV.
    Raises `Error` if the file cannot be read, or if given an `EnvelopeCipher`
    (a public key cannot decrypt).
    """
    if isinstance(cipher, EnvelopeCipher):
        raise Error("validating an envelope recording needs the private key: "
                    "pass EnvelopePrivateKey.from_pem_file(...)")
    if cipher is not None and not isinstance(cipher, (AESCBCCipher, EnvelopePrivateKey)):
        raise Error(f"cipher must be an AESCBCCipher, EnvelopePrivateKey or None, not {type(cipher).__name__}")
    try:
        fd = os.open(filename, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise Error(f"cannot read {filename}: {exc.strerror}") from None
    checker = wav.WavChecker()
    try:
        for data in _plaintext(fd, cipher):
            checker.feed(data)
    except cf.CryptoFileError as exc:
        return str(exc)
    finally:
        os.close(fd)
    return checker.result()


def validate(filename: str, cipher: AESCBCCipher | EnvelopePrivateKey | None) -> bool:
    """True if `filename` decrypts with `cipher` (see `validation_error`) and holds a valid WAV."""
    return validation_error(filename, cipher) is None
