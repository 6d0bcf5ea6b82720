"""SRTP with SDES keys: round trips through libsrtp for every suite, tampering, replay, bad parameters."""

from __future__ import annotations

import base64
import os

import pytest

from wholecall.ingest.rtp import build_packet, parse_header
from wholecall.ingest.srtp import SUITES, SrtpError, SrtpReceiver, SrtpReplay, SrtpSender, parse_sdes


def params(suite: str = "AES_CM_128_HMAC_SHA1_80", length: int | None = None) -> dict[str, str]:
    n = SUITES[suite].master_length if length is None else length
    return {"suite": suite, "key": base64.b64encode(os.urandom(n)).decode()}


@pytest.mark.parametrize("suite", list(SUITES))
def test_protect_then_unprotect_gives_the_packet_back(suite: str) -> None:
    p = params(suite)
    sender, receiver = SrtpSender(p), SrtpReceiver(p)
    for seq in range(65530, 65546):  # across the sequence wrap (the rollover counter)
        packet = build_packet(8, seq, seq * 160, 0x1234, bytes([seq & 0xFF]) * 160)
        protected = sender.protect(packet)
        assert protected != packet and len(protected) > len(packet)
        assert receiver.unprotect(protected) == packet
    tag = {"AES_CM_128_HMAC_SHA1_80": 10, "AES_CM_128_HMAC_SHA1_32": 4}.get(suite, 16)
    assert len(protected) == len(packet) + tag


def test_tampered_and_replayed_packets_are_told_apart() -> None:
    p = params()
    sender, receiver = SrtpSender(p), SrtpReceiver(p)
    protected = sender.protect(build_packet(0, 1, 160, 9, bytes(160)))
    broken = bytearray(protected)
    broken[20] ^= 1
    with pytest.raises(SrtpError, match="SRTP packet rejected: authentication failure") as info:
        receiver.unprotect(bytes(broken))
    assert not isinstance(info.value, SrtpReplay)
    assert parse_header(receiver.unprotect(protected)).sequence == 1
    with pytest.raises(SrtpReplay, match="SRTP packet rejected: replay check failed"):
        receiver.unprotect(protected)


def test_wrong_key_does_not_authenticate() -> None:
    protected = SrtpSender(params()).protect(build_packet(0, 1, 160, 9, bytes(160)))
    with pytest.raises(SrtpError, match="authentication failure"):
        SrtpReceiver(params()).unprotect(protected)


def test_sdp_inline_form_is_accepted() -> None:
    p = params("AES_CM_128_HMAC_SHA1_32")
    suite, master = parse_sdes({"suite": p["suite"], "key": "inline:" + p["key"] + "|2^31"})
    assert suite.name == "AES_CM_128_HMAC_SHA1_32" and master == base64.b64decode(p["key"])


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"suite": "AES_CM_256_HMAC_SHA1_80", "key": "AAAA"}, "SRTP suite 'AES_CM_256_HMAC_SHA1_80' is not supported (supported: AES_CM_128_HMAC_SHA1_80, AES_CM_128_HMAC_SHA1_32, AEAD_AES_128_GCM, AEAD_AES_256_GCM)"),
        ({"key": "AAAA"}, "SRTP suite None is not supported"),
        ({"suite": "AES_CM_128_HMAC_SHA1_80"}, "SRTP key must be a base64 string of the master key and salt"),
        ({"suite": "AES_CM_128_HMAC_SHA1_80", "key": "not base64!"}, "SRTP key is not valid base64"),
        (params(length=16), "SRTP key is 16 bytes, AES_CM_128_HMAC_SHA1_80 needs 30 (16-byte key + 14-byte salt)"),
        (params("AEAD_AES_128_GCM", 30), "SRTP key is 30 bytes, AEAD_AES_128_GCM needs 28 (16-byte key + 12-byte salt)"),
        ({**params(), "key": params()["key"] + "|2^20|1:4"}, "SRTP key has an MKI ('1:4'), which is not supported"),
        ({**params(), "mki": 1}, "unknown SRTP parameter(s): mki"),
    ],
)
def test_bad_parameters_have_clear_errors(given: dict, message: str) -> None:
    with pytest.raises(SrtpError) as info:
        SrtpReceiver(given)
    assert str(info.value).startswith(message)
