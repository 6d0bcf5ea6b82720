"""aes-cbc recordings decrypt with stock `openssl enc` to exactly the bytes a plain recording holds."""

from __future__ import annotations

import os
import subprocess

import pytest
from crypto_helpers import apply, known_audio, openssl_decrypt, writer_ops
from hypothesis import given, settings
from hypothesis import strategies as st

from wholecall.controller.cipher import AESCBCCipher, new_iv, new_key, validate, validation_error
from wholecall.formats import encrypted as cf
from wholecall.worker.crypto import open_sink
from wholecall.worker.sink import FileSink


def _both(tmp_path, ops, cipher: AESCBCCipher) -> tuple[bytes, str]:
    plain = FileSink(str(tmp_path / "plain.wav"))
    enc = open_sink(str(tmp_path / "enc.wav"), cipher.to_wire())
    apply(plain, ops)
    apply(enc, ops)
    assert enc.size() == plain.size()
    plain.finish()
    size = enc.finish()
    assert size == os.path.getsize(tmp_path / "enc.wav")
    return (tmp_path / "plain.wav").read_bytes(), str(tmp_path / "enc.wav")


@pytest.mark.parametrize("bits", [128, 192, 256])
def test_openssl_decrypts_to_the_plain_wav(tmp_path, bits: int) -> None:
    cipher = AESCBCCipher(new_key(bits), new_iv())
    ops = writer_ops(known_audio(45_001), chunk=8000, refresh_every=2, trim=3001)
    plain, enc = _both(tmp_path, ops, cipher)
    wire = cipher.to_wire()
    assert openssl_decrypt(enc, wire["key"], wire["iv"]) == plain
    assert len(plain) == 44 + 45_001 - 3001
    assert os.path.getsize(enc) == (len(plain) // 16 + 1) * 16  # PKCS#7: always 1..16 bytes of padding
    assert validate(enc, cipher) and validate(str(tmp_path / "plain.wav"), None)
    assert sorted(os.listdir(tmp_path)) == ["enc.wav", "plain.wav"]


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 31, 32, 33, 4095])
def test_padding_edges(tmp_path, n: int) -> None:
    cipher = AESCBCCipher(new_key(128), new_iv())
    plain, enc = _both(tmp_path, [("pwrite", known_audio(n), 0)] if n else [], cipher)
    wire = cipher.to_wire()
    assert openssl_decrypt(enc, wire["key"], wire["iv"]) == plain


@pytest.mark.parametrize("bits", [128, 192, 256])
def test_openssl_encrypted_file_validates(tmp_path, bits: int) -> None:
    """The other direction: what openssl encrypts, our reader accepts (same format, no header)."""
    cipher = AESCBCCipher(new_key(bits), new_iv())
    wav = tmp_path / "p.wav"
    plain = FileSink(str(wav))
    apply(plain, writer_ops(known_audio(20_000)))
    plain.finish()
    wire = cipher.to_wire()
    subprocess.run(["openssl", "enc", f"-aes-{bits}-cbc", "-K", wire["key"].hex(), "-iv", wire["iv"].hex(),
                    "-in", str(wav), "-out", str(tmp_path / "o.enc")], check=True)
    assert validate(str(tmp_path / "o.enc"), cipher)
    assert not validate(str(tmp_path / "o.enc"), AESCBCCipher(new_key(bits), wire["iv"]))
    # A wrong IV garbles only the first block: the padding is fine, the WAV check catches it.
    assert validation_error(str(tmp_path / "o.enc"), AESCBCCipher(wire["key"], new_iv())) == "not a RIFF/WAVE file"


def test_cbc_reader_errors(tmp_path) -> None:
    cipher = AESCBCCipher(new_key(), new_iv())
    (tmp_path / "odd").write_bytes(b"x" * 33)
    assert "not a positive multiple of 16" in validation_error(str(tmp_path / "odd"), cipher)
    (tmp_path / "empty").write_bytes(b"")
    assert not validate(str(tmp_path / "empty"), cipher)
    (tmp_path / "junk").write_bytes(os.urandom(64))
    assert not validate(str(tmp_path / "junk"), cipher)


# Empty writes are left out: FileSink.size() counts pwrite(b"", n) as extending to n while the
# file does not grow (EncryptedSink follows the file: an empty write is a no-op).
ops_strategy = st.lists(
    st.one_of(
        st.tuples(st.just("pwrite"), st.binary(min_size=1, max_size=300), st.integers(0, 2000)),
        st.tuples(st.just("truncate"), st.integers(0, 2200), st.none()),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(ops=ops_strategy)
def test_any_write_pattern_matches_a_file_sink(tmp_path_factory, ops) -> None:
    """Random offsets, holes, overwrites, truncations up and down: same logical bytes as a plain file."""
    tmp = tmp_path_factory.mktemp("h")
    cipher = AESCBCCipher(new_key(), new_iv())
    plain, enc = _both(tmp, ops, cipher)
    wire = cipher.to_wire()
    fd = os.open(enc, os.O_RDONLY)
    try:
        assert b"".join(cf.iter_decrypt(fd, key=wire["key"], iv=wire["iv"])) == plain
    finally:
        os.close(fd)
