"""The WebSocket server adapter (RFC 6455, over the `websockets` library's sans-I/O server)
the stream process reads Twilio and L16 streams with: its contract (routing before the 101,
refusals with their status, whole messages, close codes for what a client must not send); and
the exact fast path for Twilio media messages, checked against the general one."""

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


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Unmasked server frames (RFC 6455 5.2) -> [(opcode, payload)]."""
    out, at = [], 0
    while at < len(data):
        op, n = data[at] & 0x0F, data[at + 1] & 0x7F
        at += 2
        if n == 126:
            n, at = struct.unpack("!H", data[at:at + 2])[0], at + 2
        elif n == 127:
            n, at = struct.unpack("!Q", data[at:at + 8])[0], at + 8
        out.append((op, data[at:at + n]))
        at += n
    return out


UPGRADE = (b"GET /v1/media/abc?x=1 HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def opened(max_size: int = 1 << 20) -> wsp.ServerConnection:
    ws = wsp.ServerConnection(max_size)
    assert ws.opening(UPGRADE) == "/v1/media/abc"
    ws.accept()
    ws.out()
    return ws


def test_the_path_comes_before_the_101_whose_accept_key_is_rfc_6455s_example() -> None:
    ws = wsp.ServerConnection(1024)
    assert ws.opening(UPGRADE[:30]) is None and ws.opening(UPGRADE[30:]) == "/v1/media/abc"
    assert ws.out() == (b"", False)  # nothing sent until the caller has routed the path
    ws.accept()
    reply, eof = ws.out()
    assert reply.startswith(b"HTTP/1.1 101 ") and b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in reply
    assert not eof and ws.open


def test_a_path_the_caller_refuses_gets_its_status_and_the_socket_closes() -> None:
    ws = wsp.ServerConnection(1024)
    assert ws.opening(UPGRADE) == "/v1/media/abc"
    ws.refuse(404, "no call has this stream URL")
    reply, eof = ws.out()
    assert reply.startswith(b"HTTP/1.1 404 Not Found\r\n") and reply.endswith(b"\r\n\r\nno call has this stream URL\n")
    assert eof and not ws.open


@pytest.mark.parametrize("head, status, why", [
    (b"POST /v1/media/a HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade", 405, "POST"),
    (b"GET /v1/media/a HTTP/1.0\r\nUpgrade: websocket\r\nConnection: Upgrade", 505, "HTTP/1.0"),
    (b"GET /v1/media/a HTTP/1.1\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13", 426, "Upgrade"),
    (b"GET /v1/media/a HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\n"
     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", 426, "Sec-WebSocket-Version header: 8"),
    (b"GET /v1/media/a HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
     b"Sec-WebSocket-Key: c2hvcnQ=", 400, "Sec-WebSocket-Key"),
    (b"HELLO", 400, "invalid HTTP request line"),
])
def test_a_request_that_is_not_an_upgrade_is_refused_with_its_status(head: bytes, status: int, why: str) -> None:
    ws = wsp.ServerConnection(1024)
    got = ws.opening(head + b"\r\n\r\n")
    assert isinstance(got, wsp.Refusal) and got.status == status and why in got.reason, got
    reply, eof = ws.out()
    assert reply.startswith(f"HTTP/1.1 {status} ".encode()) and eof
    if status == 426 and b"Version: 8" in head:
        assert b"Sec-WebSocket-Version: 13\r\n" in reply  # the version spoken (RFC 6455 4.2.2)


def test_messages_of_every_length_split_anywhere_come_out_whole_and_unmasked() -> None:
    rng = np.random.default_rng(3)
    payloads = [rng.integers(0, 256, n).astype(np.uint8).tobytes() for n in (0, 1, 2, 3, 5, 125, 126, 127, 300, 65535, 70000)]
    wire = b"".join(client_frame(0x2, p) for p in payloads) + client_frame(0x1, b'{"event":"stop"}')
    for cut in (1, 7, 1000):
        ws = opened()
        got = []
        for at in range(0, len(wire), cut):
            got += ws.receive(wire[at:at + cut])
        assert got == [(wsp.BINARY, p) for p in payloads] + [(wsp.TEXT, b'{"event":"stop"}')]
        assert ws.out() == (b"", False) and ws.error is None


def test_fragments_are_joined_and_a_ping_between_them_is_answered() -> None:
    ws = opened()
    wire = (client_frame(0x1, b"abc", fin=False) + client_frame(0x9, b"are you there") + client_frame(0x0, b"def", fin=False)
            + client_frame(0x0, b"ghi"))
    assert ws.receive(wire) == [(wsp.TEXT, b"abcdefghi")]
    assert server_frames(ws.out()[0]) == [(0xA, b"are you there")]


def test_the_peers_close_is_echoed_and_ours_is_answered() -> None:
    ws = opened()
    assert ws.receive(client_frame(0x1, b"last") + client_frame(0x8, struct.pack("!H", 1000) + b"bye")) == [(wsp.TEXT, b"last")]
    data, eof = ws.out()
    assert server_frames(data) == [(0x8, struct.pack("!H", 1000) + b"bye")] and eof and ws.peer_code == 1000
    ws = opened()
    ws.close(1008, "x" * 300)  # the reason is cut to fit a control frame
    data, eof = ws.out()
    [(op, body)] = server_frames(data)
    assert (op, body[:2], len(body)) == (0x8, struct.pack("!H", 1008), 125) and not eof
    assert ws.receive(client_frame(0x1, b"late")) == []  # after our close, messages are dropped
    assert ws.receive(client_frame(0x8, struct.pack("!H", 1000))) == [] and ws.out() == (b"", True)


@pytest.mark.parametrize("wire, code, why", [
    (bytes([0x81, 0x05]) + b"hello", 1002, "incorrect masking"),
    (bytes([0xC1, 0x80]) + b"\0\0\0\0", 1002, "reserved bits"),
    (bytes([0x83, 0x80]) + b"\0\0\0\0", 1002, "invalid opcode"),
    (bytes([0x89, 0xFE, 0x00, 0x7E]) + b"\0" * 130, 1002, "control frame too long"),
    (bytes([0x09, 0x80]) + b"\0\0\0\0", 1002, "fragmented control frame"),
    (client_frame(0x0, b"x"), 1002, "unexpected continuation frame"),
    (client_frame(0x1, b"a", fin=False) + client_frame(0x1, b"b"), 1002, "expected a continuation frame"),
    (bytes([0x81, 0xFF]) + struct.pack("!Q", 70000), 1009, "70000 bytes exceeds limit of 65536"),
    (client_frame(0x2, bytes(40000), fin=False) + client_frame(0x0, bytes(40000)), 1009, "exceeds limit of 65536"),
], ids=lambda v: "wire" if isinstance(v, bytes) else str(v))  # the wires carry random masks
def test_what_a_client_must_not_send_closes_with_its_code_after_the_messages_before_it(wire: bytes, code: int, why: str) -> None:
    ws = opened(65536)
    assert ws.receive(client_frame(0x1, b"before") + wire) == [(wsp.TEXT, b"before")]
    assert ws.error is not None and ws.error[0] == code and why in ws.error[1], ws.error
    data, eof = ws.out()  # the oversized frame is refused before its payload arrives
    assert server_frames(data)[0][0] == 0x8 and server_frames(data)[0][1][:2] == struct.pack("!H", code) and eof
    assert not ws.open and ws.receive(client_frame(0x1, b"after")) == []


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


@pytest.mark.parametrize("stamp", ["\u00b2", "\u0664\u0660", "-5", "abc", ""])
def test_a_timestamp_that_is_not_ascii_digits_is_named_as_the_error(stamp: str) -> None:
    """str.isdigit() takes "²" and Arabic-Indic digits, which int() then refused with a
    ValueError: the stream closed as an internal error, not as the peer's bad timestamp."""
    with pytest.raises(twilio.StreamError, match="media.timestamp must be a non-negative integer"):
        twilio.parse(json.dumps(_media(ts=stamp)))


def test_the_twilio_timeline_keeps_a_stalled_streams_place_and_anchors_a_reordered_start() -> None:
    """A reviewer's finds. A stalled connection's backlog (3 s of messages at once) re-anchored
    the stream at the first of them, and the later ones then overwrote audio already placed,
    uncounted; and a first message that is not the stream's first timestamp anchored it so
    that the earlier ones had no place (negative positions) at the start of a call."""
    window = 1600  # 200 ms
    t = twilio.Timeline(window)
    assert t.position(300, clock=400, released=0) == 2400  # ts 300 ms first, 50 ms into the call
    assert t.position(0, clock=400, released=0) == 0  # ts 0 still has its place: the call's start
    for ms in range(320, 1000, 20):  # paced
        assert t.position(ms, clock=ms * 8 - 800, released=ms * 8 - 2400) == ms * 8
    # Stalled 3 s, then the backlog at once: late (the jitter buffer counts them), in place.
    clock = 4000 * 8
    assert [t.position(ms, clock, clock - window) for ms in range(1000, 1200, 20)] == list(range(8000, 9600, 160))
    assert t.resyncs == 0
    assert t.position(4000, clock + 160, clock + 160 - window) == 32000  # the next, paced again: its place
    # Far ahead (a burst past 2 s): dropped until that has lasted a window, then re-anchored
    # after what the legs hold, never over it.
    assert t.position(9000, clock + 320, clock - window) is None
    later = clock + 320 + window
    assert t.position(9020, later, later - window, covered=later + 1000) == later + 1000 and t.resyncs == 1
    assert t.position(9040, later + 160, later - window) == later + 1160  # and on from there
