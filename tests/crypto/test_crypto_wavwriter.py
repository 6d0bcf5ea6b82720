"""The team's WavWriter through an encrypted sink: same bytes as through a FileSink, and `validate` agrees."""

from __future__ import annotations

import numpy as np
import pytest
from crypto_helpers import openssl_decrypt, rsa_pems

from wholecall.controller.cipher import AESCBCCipher, EnvelopeCipher, EnvelopePrivateKey, new_iv, new_key, validation_error
from wholecall.formats.codecs import FORMATS
from wholecall.worker.crypto import open_sink
from wholecall.worker.sink import FileSink
from wholecall.worker.wavfile import WavWriter

TONE = np.rint(8000 * np.sin(np.arange(8000 * 2) / 5.0)).astype(np.int16)


def _write(sink, fmt: str, rate: int, channels: int, cut: int | None) -> None:
    writer = WavWriter(sink, fmt, rate, channels)
    pcm = TONE if channels == 1 else np.stack([TONE, TONE[::-1]], axis=1)
    for i in range(0, len(pcm), 1600):
        writer.write(pcm[i:i + 1600])
    if cut is not None:
        writer.truncate(cut)
    writer.close()


@pytest.mark.parametrize("fmt, rate, channels, cut", [(f, 8000, 1, 12_345) for f in FORMATS] + [
    ("alaw", 11025, 1, None), ("ima", 6000, 1, 9999), ("s16bit", 8000, 2, 8001), ("u8bit", 11000, 2, None)])
def test_writer_output_is_identical_after_openssl(tmp_path, fmt: str, rate: int, channels: int,
                                                  cut: int | None) -> None:
    cipher = AESCBCCipher(new_key(), new_iv())
    _write(FileSink(str(tmp_path / "p.wav")), fmt, rate, channels, cut)
    _write(open_sink(str(tmp_path / "e.wav"), cipher.to_wire()), fmt, rate, channels, cut)
    wire = cipher.to_wire()
    assert openssl_decrypt(str(tmp_path / "e.wav"), wire["key"], wire["iv"]) == (tmp_path / "p.wav").read_bytes()
    assert validation_error(str(tmp_path / "p.wav"), None) is None
    assert validation_error(str(tmp_path / "e.wav"), cipher) is None


def test_writer_through_envelope(tmp_path) -> None:
    priv, pub = rsa_pems()
    _write(open_sink(str(tmp_path / "e.wav"), EnvelopeCipher(pub).to_wire()), "oki", 8000, 1, 7777)
    assert validation_error(str(tmp_path / "e.wav"), EnvelopePrivateKey(priv)) is None
