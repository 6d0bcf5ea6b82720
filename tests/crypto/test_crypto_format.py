"""worker.cryptofile building blocks: random-access CTR, the intermediate header, the WAV checker and repair."""

from __future__ import annotations

import io
import os
import struct
import wave

import numpy as np
import pytest
import soundfile as sf
from crypto_helpers import known_audio, rsa_pems, wav_header
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from wholecall.formats import encrypted as cf
from wholecall.formats import wav


@settings(max_examples=200, deadline=None)
@given(offset=st.integers(0, 300), length=st.integers(0, 100),
       ctr=st.sampled_from([bytes(16), b"\xff" * 16, b"\x00" * 8 + b"\xff" * 8, os.urandom(16)]))
def test_ctr_random_access_equals_one_stream(offset: int, length: int, ctr: bytes) -> None:
    """Encrypting a slice at its offset gives the same bytes as the whole stream, across counter wrap."""
    key = b"k" * 32
    data = known_audio(offset + length)
    whole = Cipher(algorithms.AES(key), modes.CTR(ctr)).encryptor().update(data)
    assert cf.ctr_apply(key, ctr, offset, data[offset:]) == whole[offset:]
    assert cf.ctr_apply(key, ctr, offset, whole[offset:]) == data[offset:]


def test_part_header_round_trip(tmp_path) -> None:
    key, iv = os.urandom(24), os.urandom(16)
    header, body_key = cf.PartHeader.new(cf.SCHEME_CBC, key=key, iv=iv)
    path = tmp_path / "x.wcpart"
    path.write_bytes(bytes(header))
    fd = os.open(path, os.O_RDONLY)
    try:
        again = cf.PartHeader.read(fd)
    finally:
        os.close(fd)
    assert again == header and again.iv == iv and header.body_offset == 76 + 60
    assert again.unwrap(key=key) == body_key
    with pytest.raises(cf.CryptoFileError, match="wrong AES key"):
        again.unwrap(key=os.urandom(24))
    with pytest.raises(cf.CryptoFileError, match="give its AES key"):
        again.unwrap()


def _pcm_wav(nframes: int, channels: int = 1, width: int = 2) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(8000)
        w.writeframes(known_audio(nframes * channels * width))
    return buf.getvalue()


def _sf_wav(subtype: str, n: int = 4001) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.sin(np.arange(n) / 7.0) * 0.3, 8000, subtype=subtype, format="WAV")
    return buf.getvalue()


def _check(data: bytes, piece: int = 7) -> str | None:
    checker = wav.WavChecker()
    for i in range(0, len(data), piece):
        checker.feed(data[i:i + piece])
    return checker.result()


@pytest.mark.parametrize("data", [
    _pcm_wav(1000), _pcm_wav(1001, 2), _pcm_wav(999, 1, 1), _pcm_wav(0),
    _sf_wav("ALAW"), _sf_wav("ULAW"), _sf_wav("PCM_U8"), _sf_wav("PCM_16"), _sf_wav("IMA_ADPCM"),
    wav_header(5) + b"12345",  # odd data size, pad byte missing (the last chunk may omit it)
], ids=["s16", "s16-stereo", "u8-odd", "empty", "alaw", "ulaw", "u8", "pcm16", "ima", "odd-nopad"])
def test_valid_wavs(data: bytes) -> None:
    assert _check(data) is None
    assert _check(data, piece=1 << 20) is None


def _with(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value):]


GOOD = wav_header(800) + known_audio(800)


ODD_ALIGN2 = _with(_with(_with(GOOD, 32, struct.pack("<H", 2)), 4, struct.pack("<I", 36 + 799)), 40,
                   struct.pack("<I", 799))[:-1]


@pytest.mark.parametrize("data, problem", [
    (b"", "too short for a RIFF header"),
    (b"RIFX" + GOOD[4:], "not a RIFF/WAVE file"),
    (_with(GOOD, 8, b"AVI "), "not a RIFF/WAVE file"),
    (GOOD + b"xx", "RIFF size says 844 bytes, the file has 846"),
    (GOOD[:-1], "RIFF size says 844 bytes, the file has 843"),
    (_with(GOOD, 40, struct.pack("<I", 900)), "runs past the RIFF end"),
    (_with(GOOD, 16, struct.pack("<I", 12)), "fmt chunk of 12 bytes"),
    (_with(GOOD, 22, struct.pack("<H", 0)), "zero channels"),
    (ODD_ALIGN2, "data size 799 is not a multiple of the block align 2"),
    (GOOD[:12] + GOOD[36:], "data chunk before fmt chunk"),
    (_with(GOOD, 4, struct.pack("<I", 36 + 800 + 3)) + b"abc", "3 stray bytes"),
], ids=["empty", "rifx", "avi", "trailing", "truncated", "data-too-big", "short-fmt", "no-channels",
        "partial-block", "data-first", "stray"])
def test_invalid_wavs(data: bytes, problem: str) -> None:
    assert problem in (_check(data) or "valid")


def test_two_fmt_chunks() -> None:
    two = GOOD[:36] + GOOD[12:36] + GOOD[36:]
    two = _with(two, 4, struct.pack("<I", len(two) - 8))
    assert _check(two) == "two fmt chunks"


def test_missing_data_chunk() -> None:
    fmt_only = b"RIFF" + struct.pack("<I", 4 + 24) + b"WAVE" + wav_header(0)[12:36]
    assert _check(fmt_only) == "no data chunk"


def test_wav_repair_stale_header() -> None:
    """A writer killed between header refreshes: sizes say 1000, 1803 bytes of audio are there.

    The one repair policy (formats.wav) keeps every whole unit and adds the RIFF pad byte
    to an odd data chunk, the same for a plain file and for an intermediate's plaintext.
    """
    content = wav_header(1000) + known_audio(1803)
    plan = wav.repair_plan(content[:100], len(content))
    fixed = b"".join(wav.patch_stream([content[i:i + 5] for i in range(0, len(content), 5)], plan.patches, plan.size))
    assert _check(fixed) is None
    assert plan.size == 44 + 1803 + 1 and fixed[44:44 + 1803] == content[44:] and fixed[-1:] == b"\0"  # pad byte
    s16 = wav_header(0, tag=1, bits=16) + known_audio(1001)  # a half sample at the end is dropped
    assert wav.repair_plan(s16, len(s16)).size == 44 + 1000
    assert wav.repair_plan(GOOD, len(GOOD)).patches == []  # consistent: left alone
    for garbage in (b"garbage" * 10, b""):
        with pytest.raises(ValueError, match="not a WAV file"):
            wav.repair_plan(garbage, len(garbage))


def test_patch_stream_across_chunk_boundaries() -> None:
    data = bytes(range(50))
    out = b"".join(wav.patch_stream([data[i:i + 3] for i in range(0, 50, 3)], [(4, b"ABCD"), (20, b"Z")], 30))
    assert out == bytes(range(4)) + b"ABCD" + bytes(range(8, 20)) + b"Z" + bytes(range(21, 30))


@pytest.mark.parametrize("scheme", [cf.SCHEME_CBC, cf.SCHEME_ENVELOPE])
def test_part_header_fields_are_bound_to_the_wrapped_key(tmp_path, scheme: str) -> None:
    """Changing the scheme, counter block, IV or fingerprint of an intermediate makes unwrapping fail."""
    key = os.urandom(32)
    private_key = cf.load_private_key(rsa_pems()[0])
    header, _ = cf.PartHeader.new(scheme, key=key, iv=os.urandom(16), public_key=private_key.public_key())
    good = bytes(header)
    for offset in (12, 27, 28, 43, 44, 75):  # ctr first/last, iv first/last, fingerprint first/last
        path = tmp_path / f"x{offset}"
        path.write_bytes(good[:offset] + bytes([good[offset] ^ 1]) + good[offset + 1:])
        fd = os.open(path, os.O_RDONLY)
        try:
            with pytest.raises(cf.CryptoFileError, match="modified|is for key"):
                cf.PartHeader.read(fd).unwrap(key=key, private_key=private_key)
        finally:
            os.close(fd)
