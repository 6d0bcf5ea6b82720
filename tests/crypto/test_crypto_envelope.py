"""Envelope recordings: round trip, any flipped byte or a wrong key fails loudly, a fresh key per file."""

from __future__ import annotations

import os
import struct

import pytest
from crypto_helpers import apply, known_audio, rsa_pems, writer_ops

from wholecall.controller.cipher import EnvelopeCipher, EnvelopePrivateKey, validate, validation_error
from wholecall.controller.errors import Error
from wholecall.formats import encrypted as cf
from wholecall.worker.crypto import open_sink
from wholecall.worker.sink import FileSink


def _record(tmp_path, name: str, ops, pub: bytes) -> str:
    sink = open_sink(str(tmp_path / name), EnvelopeCipher(pub).to_wire())
    apply(sink, ops)
    sink.finish()
    return str(tmp_path / name)


def _plain(tmp_path, ops) -> bytes:
    sink = FileSink(str(tmp_path / "plain.wav"))
    apply(sink, ops)
    sink.finish()
    return (tmp_path / "plain.wav").read_bytes()


def _decrypt(path: str, priv: bytes) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return b"".join(cf.iter_decrypt(fd, private_key=cf.load_private_key(priv)))
    finally:
        os.close(fd)


def test_round_trip_and_layout(tmp_path) -> None:
    priv, pub = rsa_pems()
    ops = writer_ops(known_audio(30_000), refresh_every=2, trim=1234)
    path = _record(tmp_path, "r.wav.enc", ops, pub)
    plain = _plain(tmp_path, ops)
    assert _decrypt(path, priv) == plain
    data = open(path, "rb").read()
    magic, version, suite, wlen, fp, nonce = cf.ENV_FIXED.unpack(data[:56])
    assert (magic, version, suite, wlen) == (b"WCALLENV", 1, 1, 256)
    assert fp.hex() == EnvelopeCipher(pub).fingerprint
    assert len(data) == 56 + 256 + len(plain) + 16
    assert validate(path, EnvelopePrivateKey(priv))
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_every_recording_gets_its_own_content_key(tmp_path) -> None:
    _, pub = rsa_pems()
    ops = writer_ops(known_audio(2000))
    a = open(_record(tmp_path, "a", ops, pub), "rb").read()
    b = open(_record(tmp_path, "b", ops, pub), "rb").read()
    assert a[56:312] != b[56:312]  # wrapped keys (OAEP is randomised, and the keys differ)
    assert a[44:56] != b[44:56]  # nonces
    assert a[312:] != b[312:]


def test_any_flipped_byte_fails(tmp_path) -> None:
    priv, pub = rsa_pems()
    ops = writer_ops(known_audio(200), trim=0)
    path = _record(tmp_path, "r", ops, pub)
    good = open(path, "rb").read()
    key = cf.load_private_key(priv)
    bad = tmp_path / "bad"
    messages = set()
    for i in range(len(good)):
        bad.write_bytes(good[:i] + bytes([good[i] ^ 0x01]) + good[i + 1:])
        fd = os.open(bad, os.O_RDONLY)
        try:
            with pytest.raises(cf.CryptoFileError) as info:
                b"".join(cf.iter_decrypt(fd, private_key=key))
        finally:
            os.close(fd)
        messages.add(str(info.value).split(":")[0])
    assert "authentication failed" in messages  # ciphertext, tag, nonce
    assert "cannot unwrap the content key" in messages  # wrapped key
    assert any(m.startswith("unsupported envelope") for m in messages)  # version, suite


@pytest.mark.parametrize("cut", ["truncate-tag", "truncate-body", "append", "header-only"])
def test_truncated_or_extended_files_fail(tmp_path, cut: str) -> None:
    priv, pub = rsa_pems()
    path = _record(tmp_path, "r", writer_ops(known_audio(500)), pub)
    data = open(path, "rb").read()
    data = {"truncate-tag": data[:-1], "truncate-body": data[:-17] + data[-16:], "append": data + b"\0",
            "header-only": data[:40]}[cut]
    open(path, "wb").write(data)
    problem = validation_error(path, EnvelopePrivateKey(priv))
    assert problem and ("authentication failed" in problem or "truncated" in problem)


def test_wrong_private_key_is_named_clearly(tmp_path) -> None:
    _, pub = rsa_pems(0)
    other_priv, _ = rsa_pems(1)
    path = _record(tmp_path, "r", writer_ops(known_audio(500)), pub)
    problem = validation_error(path, EnvelopePrivateKey(other_priv))
    assert problem is not None
    assert problem.startswith(f"file is encrypted for key sha256:{EnvelopeCipher(pub).fingerprint[:16]}, "
                              f"the private key given is sha256:{EnvelopePrivateKey(other_priv).fingerprint[:16]}")


def test_validate_needs_the_private_key(tmp_path) -> None:
    _, pub = rsa_pems()
    path = _record(tmp_path, "r", writer_ops(known_audio(500)), pub)
    with pytest.raises(Error, match="needs the private key"):
        validate(path, EnvelopeCipher(pub))
    with pytest.raises(Error, match="cannot read"):
        validate(str(tmp_path / "missing"), EnvelopePrivateKey(rsa_pems()[0]))


def test_authentic_but_not_a_wav_is_invalid(tmp_path) -> None:
    """Decryption succeeds, the structure check still says no: validate covers both."""
    priv, pub = rsa_pems()
    path = _record(tmp_path, "r", [("pwrite", b"RIFF" + struct.pack("<I", 100) + b"WAVE", 0)], pub)
    assert validation_error(path, EnvelopePrivateKey(priv)) == "RIFF size says 108 bytes, the file has 12"


def test_empty_recording(tmp_path) -> None:
    priv, pub = rsa_pems()
    path = _record(tmp_path, "r", [], pub)
    assert _decrypt(path, priv) == b""
    assert os.path.getsize(path) == 56 + 256 + 16
