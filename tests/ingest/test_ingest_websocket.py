"""The sans-I/O WebSocket server (RFC 6455) the stream process reads Twilio and L16 streams
with, and the exact fast path for Twilio media messages, checked against the general one."""

from __future__ import annotations

import base64
import json
import os
import struct

import numpy as np
import pytest

from wholecall.ingest import twilio
from wholecall.ingest import websocket as wsp


def client_frame(opcode: int, payload: bytes, fin: bool = True, mask: bytes | None = None) -> bytes:
    """A masked client frame written from RFC 6455 5.2 (independent of the module's code)."""
    mask = os.urandom(4) if mask is None else mask
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def test_the_accept_key_is_rfc_6455s_example() -> None:
    headers = {"upgrade": "websocket", "connection": "keep-alive, Upgrade", "sec-websocket-version": "13",
               "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ=="}
    reply = wsp.accept(headers)
    assert reply.startswith(b"HTTP/1.1 101 ") and b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in reply
    path, parsed = wsp.parse_request(b"GET /v1/media/abc?x=1 HTTP/1.1\r\nHost: h\r\nUpgrade: websocket")
    assert path == "/v1/media/abc" and parsed["upgrade"] == "websocket"


@pytest.mark.parametrize("head, status, why", [
    (b"POST /v1/media/a HTTP/1.1\r\nUpgrade: websocket", 405, "method POST"),
    (b"GET /v1/media/a HTTP/1.0\r\nUpgrade: websocket", 400, "HTTP/1.0"),
    (b"GET /v1/media/a HTTP/1.1\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13", 400, "Upgrade: websocket"),
    (b"GET /v1/media/a HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8", 426, "13"),
    (b"GET /v1/media/a HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
     b"Sec-WebSocket-Key: c2hvcnQ=", 400, "not 16 bytes"),
])
def test_a_request_that_is_not_an_upgrade_gets_its_status(head: bytes, status: int, why: str) -> None:
    with pytest.raises(wsp.HandshakeError, match=why) as e:
        wsp.accept(wsp.parse_request(head)[1])
    assert e.value.status == status


def test_frames_of_every_length_split_anywhere_come_out_whole_and_unmask_in_one_batch() -> None:
    rng = np.random.default_rng(3)
    payloads = [rng.integers(0, 256, n).astype(np.uint8).tobytes() for n in (0, 1, 2, 3, 5, 125, 126, 127, 300, 65535, 70000)]
    wire = b"".join(client_frame(wsp.BINARY, p) for p in payloads)
    for cut in (1, 7, 1000):
        parser = wsp.FrameParser(1 << 20)
        frames = []
        for at in range(0, len(wire), cut):
            frames += parser.feed(wire[at:at + cut])
        assert [(op, bool(fin)) for op, fin, _, _ in frames] == [(wsp.BINARY, True)] * len(payloads)
        assert wsp.unmask_batch([(p, m) for _, _, p, m in frames]) == payloads
        assert [wsp.unmask(p, m) for _, _, p, m in frames] == payloads


@pytest.mark.parametrize("wire, code, why", [
    (bytes([0x81, 0x05]) + b"hello", 1002, "unmasked"),
    (bytes([0xC1, 0x80]) + b"\0\0\0\0", 1002, "reserved bits"),
    (bytes([0x83, 0x80]) + b"\0\0\0\0", 1002, "unknown opcode 0x3"),
    (bytes([0x89, 0xFE, 0x00, 0x7E]), 1002, "control frame over 125"),
    (bytes([0x09, 0x80]) + b"\0\0\0\0", 1002, "fragmented"),
    (bytes([0x81, 0xFF]) + struct.pack("!Q", 70000), 1009, "message of 70000 bytes exceeds 65536"),
])
def test_what_a_client_must_not_send_is_a_protocol_error_with_its_close_code(wire: bytes, code: int, why: str) -> None:
    with pytest.raises(wsp.ProtocolError, match=why) as e:
        wsp.FrameParser(65536).feed(wire)  # the oversized frame is refused before its payload arrives
    assert e.value.code == code


def _media(track: str = "inbound", ts: str = "40", payload: str = "//79", sid_last: bool = False) -> dict:
    media = {"track": track, "chunk": "3", "timestamp": ts, "payload": payload}
    if sid_last:
        return {"event": "media", "sequenceNumber": "4", "media": media, "streamSid": "MZ01"}
    return {"event": "media", "sequenceNumber": "4", "streamSid": "MZ01", "media": media}


@pytest.mark.parametrize("text", [
    json.dumps(_media(), separators=(",", ":")),
    json.dumps(_media("outbound", "0", base64.b64encode(bytes(160)).decode(), sid_last=True), separators=(",", ":")),
    json.dumps(_media(payload=base64.b64encode(b"\x01").decode()), separators=(",", ":")),
])
def test_the_fast_path_reads_twilio_media_as_the_json_path_does(text: str) -> None:
    fast = twilio.fast_media(text.encode())
    assert fast is not None
    assert ("media", *fast[:2], fast[2].decode()) == twilio.parse(text)


@pytest.mark.parametrize("text", [
    json.dumps(_media()),  # spaces: valid JSON, not the compact layout
    json.dumps(_media(payload="\\/\\/79"), separators=(",", ":")).replace("\\\\", "\\"),  # an escape
    json.dumps(_media(), separators=(",", ":"))[:-1] + ',"x":1}',  # another key
    json.dumps(_media(), separators=(",", ":")).replace('"40"', '"4\u0660"'),  # not an ASCII digit
    json.dumps(_media(track="inbound_track"), separators=(",", ":")),
    json.dumps(_media(), separators=(",", ":")) + " ",
])
def test_anything_else_takes_the_general_path(text: str) -> None:
    assert twilio.fast_media(text.encode()) is None
