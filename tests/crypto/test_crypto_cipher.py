"""controller.cipher: credentials are checked up front and never shown; open_sink refuses bad wire dicts."""

from __future__ import annotations

import os
import pickle

import pytest
from crypto_helpers import rsa_pems
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from wholecall.controller.cipher import AESCBCCipher, EnvelopeCipher, EnvelopePrivateKey, new_iv, new_key, wire_cipher
from wholecall.controller.errors import Error
from wholecall.worker.crypto import EncryptedSink, open_sink
from wholecall.worker.sink import FileSink

KEY256 = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
IV = "0f0e0d0c0b0a09080706050403020100"


@pytest.mark.parametrize("bits", [128, 192, 256])
def test_key_sizes_hex_and_bytes(bits: int) -> None:
    key = KEY256[: bits // 4]
    a = AESCBCCipher(key, IV)
    b = AESCBCCipher(bytes.fromhex(key), bytes.fromhex(IV))
    assert a.bits == b.bits == bits
    assert a.openssl_name == f"aes-{bits}-cbc"
    assert a.to_wire() == b.to_wire() == {"scheme": "aes-cbc", "key": bytes.fromhex(key), "iv": bytes.fromhex(IV)}
    assert AESCBCCipher(key.upper(), IV).to_wire() == a.to_wire()


@pytest.mark.parametrize("key, iv, message", [
    (KEY256[:30], IV, "key has 30 hex digits; expected 128 or 192 or 256 bits"),
    (KEY256 + "00", IV, "key has 66 hex digits"),
    ("zz" * 16, IV, "key is not hex"),
    ("", IV, "key is not hex"),
    (b"\x01" * 20, IV, "key is 20 bytes; expected 128 or 192 or 256 bits"),
    (KEY256, IV[:30], "iv has 30 hex digits; expected 128 bits"),
    (KEY256, "g" * 32, "iv is not hex"),
    (KEY256, b"\x00" * 8, "iv is 8 bytes"),
    (12345, IV, "key must be hex str or bytes, not int"),
])
def test_bad_key_or_iv_raises_error_without_echoing_it(key: object, iv: object, message: str) -> None:
    with pytest.raises(Error) as info:
        AESCBCCipher(key, iv)  # type: ignore[arg-type]
    assert message in str(info.value)
    for secret in (key, iv):
        if isinstance(secret, str) and len(secret) > 4:
            assert secret not in str(info.value)


def test_repr_and_pickle_never_reveal_the_key() -> None:
    c = AESCBCCipher(KEY256, IV)
    for text in (repr(c), str(c), f"{c!r}"):
        assert KEY256 not in text.lower() and IV not in text.lower()
        assert "hidden" in text
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(c)
    priv = EnvelopePrivateKey(rsa_pems()[0])
    assert "hidden" in repr(priv) and "PRIVATE" not in repr(priv)
    with pytest.raises(TypeError):
        pickle.dumps(priv)


def test_fresh_ivs_and_keys() -> None:
    ivs = {new_iv() for _ in range(100)}
    assert len(ivs) == 100 and all(len(v) == 32 for v in ivs)
    assert len(new_key()) == 64 and len(new_key(128)) == 32 and len(new_key(192)) == 48
    with pytest.raises(Error, match="128, 192 or 256"):
        new_key(100)
    c = AESCBCCipher(KEY256, IV)
    d = c.with_new_iv()
    assert d.to_wire()["key"] == c.to_wire()["key"] and d.to_wire()["iv"] != c.to_wire()["iv"]


def test_envelope_cipher_from_pem_and_file(tmp_path) -> None:
    priv, pub = rsa_pems()
    a = EnvelopeCipher(pub)
    b = EnvelopeCipher(pub.decode())
    path = tmp_path / "pub.pem"
    path.write_bytes(pub)
    c = EnvelopeCipher.from_pem_file(str(path))
    assert a.to_wire() == b.to_wire() == c.to_wire() == {"scheme": "envelope", "public_key": pub}
    assert a.fingerprint == EnvelopePrivateKey(priv).fingerprint == EnvelopePrivateKey(priv).public().fingerprint
    assert a.fingerprint[:16] in repr(a)
    # PKCS#1 "RSA PUBLIC KEY" PEM is accepted and normalised to SPKI.
    pkcs1 = serialization.load_pem_public_key(pub).public_bytes(serialization.Encoding.PEM,
                                                                serialization.PublicFormat.PKCS1)
    assert EnvelopeCipher(pkcs1).to_wire() == a.to_wire()


def test_envelope_cipher_rejects_what_is_not_a_usable_public_key(tmp_path) -> None:
    priv, _ = rsa_pems()
    with pytest.raises(Error, match="got a private key"):
        EnvelopeCipher(priv)
    with pytest.raises(Error, match="not a PEM public key"):
        EnvelopeCipher(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    small = rsa.generate_private_key(65537, 1024).public_key()
    with pytest.raises(Error, match="1024 bits is too small"):
        EnvelopeCipher(small.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    ecpub = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(Error, match="needs an RSA public key"):
        EnvelopeCipher(ecpub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(Error, match="cannot read public key file"):
        EnvelopeCipher.from_pem_file(str(tmp_path / "missing.pem"))


def test_private_key_with_passphrase() -> None:
    key = serialization.load_pem_private_key(rsa_pems()[0], None)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.BestAvailableEncryption(b"s3cret"))
    assert EnvelopePrivateKey(pem, "s3cret").fingerprint == EnvelopePrivateKey(rsa_pems()[0]).fingerprint
    with pytest.raises(Error, match="passphrase-protected"):
        EnvelopePrivateKey(pem)
    with pytest.raises(Error, match="wrong passphrase"):
        EnvelopePrivateKey(pem, "nope")


def test_wire_cipher() -> None:
    assert wire_cipher(None) is None
    assert wire_cipher(AESCBCCipher(KEY256, IV))["scheme"] == "aes-cbc"
    with pytest.raises(Error, match="not the private key"):
        wire_cipher(EnvelopePrivateKey(rsa_pems()[0]))  # type: ignore[arg-type]
    with pytest.raises(Error, match="not str"):
        wire_cipher("aes")  # type: ignore[arg-type]


def test_open_sink_kinds_and_mode(tmp_path) -> None:
    plain = open_sink(str(tmp_path / "p.wav"), None)
    assert isinstance(plain, FileSink)
    plain.finish()
    enc = open_sink(str(tmp_path / "e.wav"), AESCBCCipher(KEY256, IV).to_wire())
    assert isinstance(enc, EncryptedSink)
    assert os.stat(tmp_path / "e.wav.wcpart").st_mode & 0o777 == 0o600
    enc.pwrite(b"x" * 100, 0)
    enc.finish()
    assert os.stat(tmp_path / "e.wav").st_mode & 0o777 == 0o600
    env = open_sink(str(tmp_path / "v.wav"), EnvelopeCipher(rsa_pems()[1]).to_wire(), mode=0o640)
    env.finish()
    assert os.stat(tmp_path / "v.wav").st_mode & 0o777 == 0o640 & ~_umask()
    assert sorted(os.listdir(tmp_path)) == ["e.wav", "p.wav", "v.wav"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("cipher, message", [
    ("aes", "cipher must be a dict or None, not str"),
    ({"scheme": "rot13"}, "unknown cipher scheme 'rot13'"),
    ({"scheme": "aes-cbc", "key": b"k" * 32}, "missing fields ['iv']"),
    ({"scheme": "aes-cbc", "key": b"k" * 32, "iv": b"i" * 16, "mode": 1}, "unexpected fields ['mode']"),
    ({"scheme": "aes-cbc", "key": b"k" * 31, "iv": b"i" * 16}, "aes-cbc cipher: key is 31 bytes"),
    ({"scheme": "aes-cbc", "key": "k" * 64, "iv": b"i" * 16}, "key and iv must be raw bytes"),
    ({"scheme": "aes-cbc", "key": b"k" * 32, "iv": b"i" * 15}, "iv is 15 bytes"),
    ({"scheme": "envelope", "public_key": b"junk"}, "envelope cipher: not a PEM public key"),
])
def test_open_sink_rejects_bad_cipher_dicts_before_creating_files(tmp_path, cipher: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        open_sink(str(tmp_path / "r.wav"), cipher)  # type: ignore[arg-type]
    assert message in str(info.value)
    assert "kkkk" not in str(info.value)
    assert os.listdir(tmp_path) == []


def test_existing_recording_is_never_replaced(tmp_path) -> None:
    (tmp_path / "r.wav").write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        open_sink(str(tmp_path / "r.wav"), AESCBCCipher(KEY256, IV).to_wire())
    assert sorted(os.listdir(tmp_path)) == ["r.wav"]
    # Created between open and finish: finish refuses too, and leaves the intermediate for recovery.
    sink = open_sink(str(tmp_path / "s.wav"), AESCBCCipher(KEY256, IV).to_wire())
    (tmp_path / "s.wav").write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        sink.finish()
    assert (tmp_path / "s.wav").read_bytes() == b"precious"
    assert sorted(os.listdir(tmp_path)) == ["r.wav", "s.wav", "s.wav.wcpart"]
    sink.discard()
    assert sorted(os.listdir(tmp_path)) == ["r.wav", "s.wav"]
