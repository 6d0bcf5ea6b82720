"""The on-disk formats of encrypted recordings: both the encrypt and the decrypt side.

This module owns every byte layout that encryption puts on disk, so that the
worker (which writes recordings) and the controller and CLI (which validate and
decrypt them, `wholecall decrypt`) can never disagree about a format. It holds
no process state: only constants, pure functions and small stream objects. It
sits in the bottom layer (`wholecall.formats`); turning an intermediate into a
recording, and the lock that keeps a live one from being taken, are
`formats.recovery`'s.

Three formats (all integers big-endian):

1. ``aes-cbc`` final file: exactly what
   ``openssl enc -aes-{128,192,256}-cbc -K <key> -iv <iv>`` produces, i.e.
   AES-CBC of the WAV with PKCS#7 padding, no header, no salt. The key and IV
   are the user's; the file carries neither and is not authenticated (that is
   the price of OpenSSL compatibility; use the envelope for integrity).

2. ``envelope`` final file (``ENV_MAGIC``)::

       0   8  magic "WCALLENV"
       8   1  version (1)
       9   1  suite (1: RSA-OAEP-SHA256 key wrap, AES-256-GCM content)
      10   2  W = length of the wrapped key (the RSA modulus size in bytes)
      12  32  recipient fingerprint: SHA-256 of the public key's DER SubjectPublicKeyInfo
      44  12  GCM nonce
      56   W  wrapped content key: RSA-OAEP(MGF1-SHA256, SHA256, no label) of a fresh 32-byte key
    56+W   n  ciphertext: AES-256-GCM of the WAV, one stream, AAD = bytes 0 .. 56+W
     end  16  GCM tag

   One GCM stream over the whole file (cryptography's ``update()``/``finalize()``),
   not per-chunk tags: recordings stay far below GCM's 64 GiB limit, and a
   decryptor must anyway not trust any output until the tag at the end checks,
   which `iter_decrypt` enforces by raising at the end and `wholecall decrypt`
   by writing to a temp file that is only renamed after the tag checked. The
   header is the AAD, so a flipped byte anywhere fails.

3. intermediate (``PART_MAGIC``, file ``<final name>.wcpart``): what exists while a
   recording is being written. The WAV writer patches headers and truncates, so
   the body is AES-256-CTR (random access) under an ephemeral key that lives in
   the worker's memory; the header stores that key wrapped under the user's
   credential, so a crashed worker's recording can be turned into a normal
   encrypted file by whoever holds the credential (`formats.recovery`)::

       0   8  magic "WCALLPRT"
       8   1  version (1)
       9   1  final scheme (1: aes-cbc, 2: envelope)
      10   2  W = length of the wrapped ephemeral key
      12  16  CTR initial counter block (random); block i of the body uses counter+i mod 2^128
      28  16  aes-cbc: the user's IV (not secret); envelope: zeros
      44  32  envelope: recipient fingerprint as above; aes-cbc: zeros
      76   W  wrapped ephemeral key, with bytes 0..76 (the fixed header) bound to it:
                aes-cbc:  12-byte nonce + AES-256-GCM(KEK, key, AAD = fixed header) + 16-byte tag,
                          KEK = HKDF-SHA256(user key, info=KEK_INFO)   (W = 60)
                envelope: RSA-OAEP-SHA256 under the recipient public key, label = fixed header
    76+W   n  body: AES-256-CTR of the logical (plaintext) content, byte i at 76+W+i

   The wrap is an AEAD rather than RFC 3394 key wrap because it also
   authenticates the header (scheme, counter block, IV) and because
   cryptography's RFC 3394 is pure Python (~100 µs per recording). A wrong
   credential or a modified header is always detected. The body is
   confidential but not authenticated: `formats.recovery` trusts it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.padding import MGF1, OAEP
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from . import wav  # noqa: F401 - kept as `encrypted.wav` for scripts that reach it from here
from .source import Source, SourceShrank

#: Wire names of the schemes (the ``"scheme"`` value of a cipher's wire dict).
SCHEME_CBC = "aes-cbc"
SCHEME_ENVELOPE = "envelope"

AES_KEY_SIZES = (16, 24, 32)
IV_SIZE = 16
MIN_RSA_BITS = 2048

ENV_MAGIC = b"WCALLENV"
ENV_VERSION = 1
ENV_SUITE = 1
ENV_FIXED = struct.Struct(">8sBBH32s12s")  # magic, version, suite, W, fingerprint, nonce
ENV_TAG_SIZE = 16
ENV_KEY_SIZE = 32
ENV_NONCE_SIZE = 12



def plaintext_limit(max_bytes: int, scheme: str, rsa_bits: int = 0) -> int:
    """The largest plaintext whose final encrypted file still fits in `max_bytes` (0 = no
    limit): the worker stops there, and `start()` refuses a limit that leaves no room for audio.

    AES-CBC with PKCS#7 always adds 1..16 bytes of padding; an envelope adds its header,
    the wrapped key (`rsa_bits` / 8) and the GCM tag.
    """
    if not max_bytes:
        return 0
    if scheme == SCHEME_CBC:
        return max(0, max_bytes // 16 * 16 - 1)
    return max(0, max_bytes - (ENV_FIXED.size + rsa_bits // 8 + ENV_TAG_SIZE))


PART_MAGIC = b"WCALLPRT"
PART_VERSION = 1
PART_FIXED = struct.Struct(">8sBBH16s16s32s")  # magic, version, scheme, W, ctr, iv, fingerprint
PART_SCHEME_IDS = {SCHEME_CBC: 1, SCHEME_ENVELOPE: 2}
PART_SCHEMES = {v: k for k, v in PART_SCHEME_IDS.items()}
PART_KEY_SIZE = 32
#: HKDF info for the key-encryption key derived from the user's CBC key: the
#: user's key itself is never used for two algorithms.
KEK_INFO = b"wholecall intermediate key wrap v1"

#: File name suffixes next to the final name: the intermediate while recording,
#: and the final file while it is being written (renamed away when complete).
PART_SUFFIX = ".wcpart"
TMP_SUFFIX = ".wctmp"

CHUNK = 1 << 16  # 64 KiB: OpenSSL is ~5x faster on cache-resident chunks than on 1 MiB ones
_ZERO_FILL = bytes(CHUNK)


class CryptoFileError(ValueError):
    """A credential or an encrypted file is unusable. Messages never contain key material."""


def read_secret_file(path: str, what: str) -> bytes:
    """A key, IV or PEM file's bytes; `CryptoFileError` naming `what` and the path (never
    the content) when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise CryptoFileError(f"cannot read {what} file {path}: {exc.strerror}") from None


# --------------------------------------------------------------------------- credentials


def parse_aes_key(value: str | bytes | bytearray | memoryview, what: str = "key",
                  sizes: tuple[int, ...] = AES_KEY_SIZES) -> bytes:
    """Raw key bytes from hex text (str) or raw bytes; the error never echoes the value."""
    allowed = " or ".join(str(8 * n) for n in sizes)
    if isinstance(value, str):
        text = value.strip()
        if text[:2].lower() == "0x":
            text = text[2:]
        if not text or any(c not in "0123456789abcdefABCDEF" for c in text):
            raise CryptoFileError(f"{what} is not hex: give {allowed} bits as hex digits")
        if len(text) % 2 or len(text) // 2 not in sizes:
            raise CryptoFileError(f"{what} has {len(text)} hex digits; expected {allowed} bits "
                                  f"({' or '.join(str(2 * n) for n in sizes)} hex digits)")
        return bytes.fromhex(text)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        if len(raw) not in sizes:
            raise CryptoFileError(f"{what} is {len(raw)} bytes; expected {allowed} bits "
                                  f"({' or '.join(str(n) for n in sizes)} bytes)")
        return raw
    raise CryptoFileError(f"{what} must be hex str or bytes, not {type(value).__name__}")


def parse_iv(value: str | bytes | bytearray | memoryview) -> bytes:
    """Raw 16-byte IV from hex text or bytes."""
    return parse_aes_key(value, "iv", (IV_SIZE,))


def load_public_key(pem: bytes | str) -> rsa.RSAPublicKey:
    """An RSA public key (>= 2048 bits) from PEM; a private key is refused so it never travels to a worker."""
    data = pem.encode() if isinstance(pem, str) else bytes(pem)
    if b"PRIVATE KEY" in data:
        raise CryptoFileError("expected an RSA public key (PEM 'BEGIN PUBLIC KEY'), got a private key: "
                              "only the public key may be given to the recorder")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise CryptoFileError(f"not a PEM public key ({type(exc).__name__})") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise CryptoFileError(f"envelope encryption needs an RSA public key, not {type(key).__name__}")
    if key.key_size < MIN_RSA_BITS:
        raise CryptoFileError(f"RSA key of {key.key_size} bits is too small (minimum {MIN_RSA_BITS})")
    return key


def load_private_key(pem: bytes | str, passphrase: bytes | None = None) -> rsa.RSAPrivateKey:
    """An RSA private key from PEM, optionally passphrase-protected."""
    data = pem.encode() if isinstance(pem, str) else bytes(pem)
    try:
        key = serialization.load_pem_private_key(data, password=passphrase or None)
    except TypeError:
        raise CryptoFileError("the private key is passphrase-protected: give the passphrase") from None
    except ValueError:
        raise CryptoFileError("cannot load the private key: not a PEM private key, "
                              "or wrong passphrase") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise CryptoFileError(f"envelope decryption needs an RSA private key, not {type(key).__name__}")
    return key


def key_fingerprint(key: rsa.RSAPublicKey | rsa.RSAPrivateKey) -> bytes:
    """SHA-256 of the public key's DER SubjectPublicKeyInfo: names the recipient without revealing anything."""
    pub = key.public_key() if isinstance(key, rsa.RSAPrivateKey) else key
    der = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).digest()


def public_pem(key: rsa.RSAPublicKey) -> bytes:
    """Canonical SPKI PEM, the form that goes on the wire."""
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _oaep(label: bytes | None = None) -> OAEP:
    return OAEP(mgf=MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=label)


def _kek(user_key: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=KEK_INFO).derive(user_key)


def _fp_text(fp: bytes) -> str:
    return "sha256:" + fp.hex()[:16]


# --------------------------------------------------------------------------- final encryptors


class StreamEncryptor(Protocol):
    """Turns the plaintext WAV, fed in order, into a final encrypted file: header + update()* + finalize()."""

    header: bytes

    def update(self, data: bytes) -> bytes: ...

    def finalize(self) -> bytes: ...


class CbcEncryptor:
    """AES-CBC + PKCS#7, byte-identical to ``openssl enc -K -iv``."""

    def __init__(self, key: bytes, iv: bytes) -> None:
        self.header = b""
        self._enc = Cipher(algorithms.AES(parse_aes_key(key)), modes.CBC(parse_iv(iv))).encryptor()
        self._pad = padding.PKCS7(128).padder()

    def update(self, data: bytes) -> bytes:
        return self._enc.update(self._pad.update(data))

    def finalize(self) -> bytes:
        return self._enc.update(self._pad.finalize()) + self._enc.finalize()


class EnvelopeEncryptor:
    """A fresh AES-256-GCM content key per file, wrapped with RSA-OAEP-SHA256 for the recipient."""

    def __init__(self, public_key: rsa.RSAPublicKey) -> None:
        cek = os.urandom(ENV_KEY_SIZE)
        nonce = os.urandom(ENV_NONCE_SIZE)
        wrapped = public_key.encrypt(cek, _oaep())
        self.header = ENV_FIXED.pack(ENV_MAGIC, ENV_VERSION, ENV_SUITE, len(wrapped),
                                     key_fingerprint(public_key), nonce) + wrapped
        self._enc = Cipher(algorithms.AES(cek), modes.GCM(nonce)).encryptor()
        self._enc.authenticate_additional_data(self.header)

    def update(self, data: bytes) -> bytes:
        return self._enc.update(data)

    def finalize(self) -> bytes:
        return self._enc.finalize() + self._enc.tag


# --------------------------------------------------------------------------- intermediate


@dataclass(frozen=True)
class PartHeader:
    """The intermediate file's header (layout in the module docstring)."""

    scheme: str  # SCHEME_CBC or SCHEME_ENVELOPE: what `finish`/`recover` will produce
    ctr: bytes  # 16-byte initial counter block of the body
    iv: bytes  # the user's CBC IV (zeros for the envelope)
    fingerprint: bytes  # recipient key fingerprint (zeros for aes-cbc)
    wrapped: bytes  # the ephemeral body key, wrapped under the user's credential

    @property
    def body_offset(self) -> int:
        """Where logical byte 0 is stored."""
        return PART_FIXED.size + len(self.wrapped)

    def fixed(self, wrapped_len: int) -> bytes:
        """Bytes 0..76, which the key wrap authenticates."""
        return PART_FIXED.pack(PART_MAGIC, PART_VERSION, PART_SCHEME_IDS[self.scheme], wrapped_len,
                               self.ctr, self.iv, self.fingerprint)

    def __bytes__(self) -> bytes:
        return self.fixed(len(self.wrapped)) + self.wrapped

    @classmethod
    def new(cls, scheme: str, *, key: bytes | None = None, iv: bytes | None = None,
            public_key: rsa.RSAPublicKey | None = None) -> tuple[PartHeader, bytes]:
        """A header for a new intermediate and its ephemeral body key (which must stay in memory only)."""
        body_key = os.urandom(PART_KEY_SIZE)
        ctr = os.urandom(16)
        if scheme == SCHEME_CBC:
            assert key is not None and iv is not None
            unwrapped = cls(scheme, ctr, parse_iv(iv), bytes(32), b"")
            nonce = os.urandom(12)
            aad = unwrapped.fixed(12 + PART_KEY_SIZE + 16)
            wrapped = nonce + AESGCM(_kek(parse_aes_key(key))).encrypt(nonce, body_key, aad)
        elif scheme == SCHEME_ENVELOPE:
            assert public_key is not None
            unwrapped = cls(scheme, ctr, bytes(IV_SIZE), key_fingerprint(public_key), b"")
            wrapped = public_key.encrypt(body_key, _oaep(unwrapped.fixed((public_key.key_size + 7) // 8)))
        else:
            raise CryptoFileError(f"unknown scheme {scheme!r}")
        return cls(scheme, ctr, unwrapped.iv, unwrapped.fingerprint, wrapped), body_key

    @classmethod
    def read(cls, fd: int) -> PartHeader:
        """Parse the header at the start of an open intermediate."""
        return cls.parse(Source(fd).read)

    @classmethod
    def parse(cls, read: Callable[[int], bytes]) -> PartHeader:
        """Parse a header from `read(n)`, which gives the intermediate's next `n` bytes
        (fewer only at its end) from its first byte on: a file or a pipe."""
        fixed = read(PART_FIXED.size)
        if len(fixed) < PART_FIXED.size or fixed[:8] != PART_MAGIC:
            raise CryptoFileError("not a wholecall intermediate (.wcpart) file")
        _, version, scheme_id, wlen, ctr, iv, fp = PART_FIXED.unpack(fixed)
        if version != PART_VERSION:
            raise CryptoFileError(f"unsupported intermediate version {version} (this build reads {PART_VERSION})")
        if scheme_id not in PART_SCHEMES:
            raise CryptoFileError(f"intermediate names unknown scheme id {scheme_id}")
        wrapped = read(wlen)
        if len(wrapped) != wlen:
            raise CryptoFileError("intermediate header is truncated")
        return cls(PART_SCHEMES[scheme_id], ctr, iv, fp, wrapped)

    def unwrap(self, *, key: bytes | None = None, private_key: rsa.RSAPrivateKey | None = None) -> bytes:
        """The ephemeral body key, given the credential the recording was made with."""
        if self.scheme == SCHEME_CBC:
            if key is None:
                raise CryptoFileError("this intermediate belongs to an aes-cbc recording: give its AES key")
            try:
                body_key = AESGCM(_kek(parse_aes_key(key))).decrypt(self.wrapped[:12], self.wrapped[12:],
                                                                    self.fixed(len(self.wrapped)))
            except (InvalidTag, ValueError):
                raise CryptoFileError("wrong AES key for this intermediate (key unwrap failed), "
                                      "or its header was modified") from None
        else:
            if private_key is None:
                raise CryptoFileError("this intermediate belongs to an envelope recording: give the private key")
            mine = key_fingerprint(private_key)
            if mine != self.fingerprint:
                raise CryptoFileError(f"intermediate is for key {_fp_text(self.fingerprint)}, "
                                      f"the private key given is {_fp_text(mine)}")
            try:
                body_key = private_key.decrypt(self.wrapped, _oaep(self.fixed(len(self.wrapped))))
            except ValueError:
                raise CryptoFileError("cannot unwrap the intermediate's key: its header was modified") from None
        if len(body_key) != PART_KEY_SIZE:
            raise CryptoFileError("intermediate's wrapped key has the wrong size (damaged header)")
        return body_key


class CtrBody:
    """Random-access AES-CTR over an intermediate's body (encrypting and decrypting are the same).

    OpenSSL's CTR increments the whole 128-bit counter block, so body block i
    uses (ctr + i) mod 2^128, which is what starting a fresh CTR stream there
    gives. Setting up a context costs several µs, more than encrypting a second
    of A-law, so appends (writes at the current end) continue one kept context
    and only out-of-order writes (header patches) get a fresh one.
    """

    #: Keystream kept for the start of the body, where the WAV header is patched every few seconds.
    HEAD = 512

    def __init__(self, key: bytes, ctr: bytes) -> None:
        self._aes = algorithms.AES(key)
        self._ctr = int.from_bytes(ctr, "big")
        self._tail: CipherContext | None = None
        self._tail_pos = -1
        self._head: bytes | None = None

    def _context(self, offset: int) -> CipherContext:
        block, skip = divmod(offset, 16)
        start = ((self._ctr + block) % (1 << 128)).to_bytes(16, "big")
        ctx = Cipher(self._aes, modes.CTR(start)).encryptor()
        if skip:
            ctx.update(bytes(skip))
        return ctx

    def apply(self, offset: int, data: bytes | memoryview, tail: bool = False) -> bytes:
        """`data` (plaintext or ciphertext) located at body `offset`, transformed.

        `tail`: the write ends at the body's end, so the next append continues
        where it stops (the kept context is used and advanced).
        """
        if offset == self._tail_pos and self._tail is not None:
            out = self._tail.update(data)
        elif tail:
            self._tail = self._context(offset)
            out = self._tail.update(data)
        elif offset + len(data) <= self.HEAD:
            if self._head is None:
                self._head = self._context(0).update(bytes(self.HEAD))
            # A header patch: XOR with the kept keystream instead of setting up a context (~8 µs).
            n = len(data)
            stream = int.from_bytes(self._head[offset:offset + n], "big")
            return (int.from_bytes(data, "big") ^ stream).to_bytes(n, "big")
        else:
            return self._context(offset).update(data)
        self._tail_pos = offset + len(data) if tail else -1
        return out


def ctr_apply(key: bytes, ctr: bytes, offset: int, data: bytes) -> bytes:
    """One-off random-access CTR transform of `data` at body `offset` (see `CtrBody`)."""
    return CtrBody(key, ctr).apply(offset, data)


def iter_part_plaintext(fd: int, header: PartHeader, body_key: bytes, size: int,
                        chunk: int = CHUNK) -> Iterator[bytes]:
    """The logical content of an intermediate, `size` bytes, in order (unauthenticated)."""
    dec = Cipher(algorithms.AES(body_key), modes.CTR(header.ctr)).decryptor()
    base = header.body_offset
    pos = 0
    while pos < size:
        data = os.pread(fd, min(chunk, size - pos), base + pos)
        if not data:
            raise CryptoFileError(f"intermediate ended at {pos} of {size} bytes")
        pos += len(data)
        yield dec.update(data)


# --------------------------------------------------------------------------- decryption


def sniff(head: bytes) -> str:
    """Which format a file is, from its first 8 bytes: 'envelope', 'part' or 'raw' (aes-cbc or plain)."""
    if head[:8] == ENV_MAGIC:
        return SCHEME_ENVELOPE
    if head[:8] == PART_MAGIC:
        return "part"
    return "raw"


def iter_decrypt(fd: int | Source, *, key: bytes | None = None, iv: bytes | None = None,
                 private_key: rsa.RSAPrivateKey | None = None, allow_part: bool = False,
                 chunk: int = CHUNK) -> Iterator[bytes]:
    """Plaintext of an encrypted recording, streamed; raises `CryptoFileError` on any failure.

    Output is only trustworthy once the iterator has been exhausted without an
    exception: an envelope's tag and a CBC file's padding are checked at the end.
    An intermediate (.wcpart) is decrypted only with `allow_part` because it is
    not authenticated. `fd` is read once, in order (`formats.source`): a pipe works.
    An OSError of reading `fd` passes through as it is (the caller names its input).
    """
    src = fd if isinstance(fd, Source) else Source(fd)
    try:
        kind = sniff(src.peek(8))
        if kind == SCHEME_ENVELOPE:
            if private_key is None:
                raise CryptoFileError("this is an envelope-encrypted file: give the private key")
            yield from _iter_envelope(src, private_key, chunk)
        elif kind == "part":
            if not allow_part:
                raise CryptoFileError("this is an unfinished intermediate (.wcpart) left by a killed worker: "
                                      "recover it first")
            header = PartHeader.parse(src.read)
            body_key = header.unwrap(key=key, private_key=private_key)
            dec = Cipher(algorithms.AES(body_key), modes.CTR(header.ctr)).decryptor()
            for data in src.chunks(chunk):
                yield dec.update(data)
        else:
            if key is None or iv is None:
                raise CryptoFileError("not an envelope file: decrypting it as aes-cbc needs the AES key and IV")
            yield from _iter_cbc(src, key, iv, chunk)
    except SourceShrank as exc:
        raise CryptoFileError(str(exc)) from None


def _not_cbc(size: int) -> CryptoFileError:
    return CryptoFileError(f"not an AES-CBC file: its size ({size} bytes) is not a positive multiple of 16")


def _iter_cbc(src: Source, key: bytes, iv: bytes, chunk: int) -> Iterator[bytes]:
    if src.size is not None and (src.size == 0 or src.size % 16):
        raise _not_cbc(src.size)  # known before decrypting anything
    dec = Cipher(algorithms.AES(parse_aes_key(key)), modes.CBC(parse_iv(iv))).decryptor()
    unpad = padding.PKCS7(128).unpadder()
    for data in src.chunks(chunk):
        out = unpad.update(dec.update(data))
        if out:
            yield out
    if src.consumed == 0 or src.consumed % 16:
        raise _not_cbc(src.consumed)  # a stream: known only at its end
    try:
        tail = unpad.update(dec.finalize()) + unpad.finalize()
    except ValueError:
        raise CryptoFileError("bad padding: wrong AES key or IV, or the file is damaged") from None
    if tail:
        yield tail


def _iter_envelope(src: Source, private_key: rsa.RSAPrivateKey, chunk: int) -> Iterator[bytes]:
    fixed = src.read(ENV_FIXED.size)
    if len(fixed) < ENV_FIXED.size:
        raise CryptoFileError("envelope file is truncated (incomplete header)")
    _, version, suite, wlen, fp, nonce = ENV_FIXED.unpack(fixed)
    if version != ENV_VERSION:
        raise CryptoFileError(f"unsupported envelope version {version} (this build reads {ENV_VERSION})")
    if suite != ENV_SUITE:
        raise CryptoFileError(f"unsupported envelope suite {suite}")
    body = ENV_FIXED.size + wlen
    if src.size is not None and src.size < body + ENV_TAG_SIZE:
        raise CryptoFileError("envelope file is truncated")
    mine = key_fingerprint(private_key)
    if fp != mine:
        raise CryptoFileError(f"file is encrypted for key {_fp_text(fp)}, the private key given is "
                              f"{_fp_text(mine)} (wrong key, or the header was modified)")
    wrapped = src.read(wlen)
    if len(wrapped) < wlen:
        raise CryptoFileError("envelope file is truncated")
    header = fixed + wrapped
    try:
        cek = private_key.decrypt(wrapped, _oaep())
    except ValueError:
        raise CryptoFileError("cannot unwrap the content key: the wrapped key was modified") from None
    if len(cek) != ENV_KEY_SIZE:
        raise CryptoFileError("the content key has the wrong size: the file was modified")
    # The tag is the last 16 bytes: held back from the stream, given to the GCM at its end.
    dec = Cipher(algorithms.AES(cek), modes.GCM(nonce)).decryptor()
    dec.authenticate_additional_data(header)
    for data in src.chunks(chunk, holdback=ENV_TAG_SIZE):
        yield dec.update(data)
    if len(src.held) < ENV_TAG_SIZE:
        raise CryptoFileError("envelope file is truncated")
    try:
        dec.finalize_with_tag(src.held)
    except InvalidTag:
        raise CryptoFileError("authentication failed: the file was modified or truncated "
                              "(discard anything decrypted from it)") from None


# --------------------------------------------------------------------------- publishing


def write_all(fd: int, data: bytes | memoryview) -> None:
    """os.write until done (a regular file may take less than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def fsync_dir(path: str) -> None:
    """Make a rename or unlink in `path`'s directory durable."""
    fd = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(final_path: str, encryptor: StreamEncryptor, chunks: Iterable[bytes], mode: int,
            tmp_path: str | None = None) -> int:
    """Encrypt `chunks` into `<final>.wctmp`, fsync it, and give it the final name without overwriting.

    The temp name is fixed (not random) so a crash here leaves a file that the
    next `publish` for the same recording replaces (unlinks, then creates anew with
    O_EXCL | O_NOFOLLOW: never writes through whatever is there); it only ever holds
    ciphertext. Whoever holds the `.wcpart` of a recording owns its `.wctmp`.
    Returns the final file's size in bytes.
    """
    tmp = tmp_path or final_path + TMP_SUFFIX
    # A stale temp file of this recording is ours to replace, but never by opening it: a
    # symlink planted under that name would have us write through it (as root, over any
    # file). Unlinking removes the link itself; O_EXCL | O_NOFOLLOW then fails on
    # anything that reappears in between instead of following it.
    _unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # a stale temp file may have been created with another mode
        write_all(fd, encryptor.header)
        written = len(encryptor.header)
        for data in chunks:
            out = encryptor.update(data)
            write_all(fd, out)
            written += len(out)
        tail = encryptor.finalize()
        write_all(fd, tail)
        written += len(tail)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink(tmp)
        raise
    os.close(fd)
    try:
        link_no_replace(tmp, final_path)
    except BaseException:
        _unlink(tmp)
        raise
    fsync_dir(final_path)
    return written


def link_no_replace(src: str, dst: str) -> None:
    """Rename `src` to `dst`, failing with FileExistsError rather than overwrite an existing `dst`."""
    try:
        os.link(src, dst)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "recording file already exists", dst) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
            raise
        # Filesystems without hard links: check-then-rename (a narrow race, but never a plaintext one).
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, "recording file already exists", dst) from None
        os.rename(src, dst)
        return
    os.unlink(src)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def zero_fill(n: int) -> Iterator[bytes]:
    """`n` zero bytes in chunks (to extend a CTR body the way a hole extends a plain file)."""
    while n > 0:
        yield _ZERO_FILL[:min(n, CHUNK)]
        n -= CHUNK
