"""The server side of RFC 6455 WebSockets, without I/O: the opening handshake, client frames
in, server frames out.

Why not aiohttp's WebSocket server (which the stream process used before): every message
went through its reader, a queue, a future and a wake-up of the connection's handler task
before our code saw it, which cost more than parsing the Twilio message itself (profiled
at 600 calls: ~30 % of the stream process). Here `FrameParser.feed` runs in the
protocol's `data_received` and hands out whole frames still masked; the stream process
unmasks every frame of a tick in one numpy pass (`unmask_batch`).

What is implemented, as RFC 6455 asks of a server: the handshake (section 4.2: GET,
HTTP/1.1, ``Upgrade: websocket``, ``Connection: Upgrade``, a 16-byte base64
``Sec-WebSocket-Key``, version 13, else 400 or 426); masked client frames only (5.1);
fragmentation with control frames between the fragments (5.4); ping answered by pong
(5.5.2); the close handshake (5.5.1, 7); reserved bits, unknown opcodes, oversized or
fragmented control frames and a message over the size limit are protocol errors with
their close codes (1002, 1009; 7.4.1). No extension is negotiated (permessage-deflate
offers are ignored, as the RFC allows).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct

import numpy as np

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_HEAD = 16 * 1024
"""Largest opening request accepted (request line and headers)."""
_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")


class ProtocolError(ValueError):
    """Bytes a WebSocket peer must not send; `code` is the close code that says so."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class HandshakeError(ValueError):
    """An opening request that is not a WebSocket upgrade; `status` is the HTTP reply's."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def parse_request(head: bytes) -> tuple[str, dict[str, str]]:
    """The request line and headers (up to and without the blank line) -> (path, headers by
    lower-case name). Raises HandshakeError naming what is wrong."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover  (latin-1 decodes every byte)
        raise HandshakeError(400, "the request is not text") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise HandshakeError(400, f"not an HTTP request line: {lines[0][:80]!r}")
    method, path, version = parts
    if method != "GET":
        raise HandshakeError(405, f"method {method} (a WebSocket opens with GET)")
    if version != "HTTP/1.1":
        raise HandshakeError(400, f"{version} (a WebSocket needs HTTP/1.1)")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HandshakeError(400, f"malformed header line {line[:80]!r}")
        key = name.lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    return path.split("?", 1)[0], headers


def accept(headers: dict[str, str]) -> bytes:
    """The 101 reply to a valid upgrade request; raises HandshakeError (400/426) otherwise."""
    if headers.get("upgrade", "").lower() != "websocket":
        raise HandshakeError(400, "no 'Upgrade: websocket' header")
    if "upgrade" not in [t.strip().lower() for t in headers.get("connection", "").split(",")]:
        raise HandshakeError(400, "no 'Connection: Upgrade' header")
    if headers.get("sec-websocket-version") != "13":
        raise HandshakeError(426, f"Sec-WebSocket-Version {headers.get('sec-websocket-version')!r} (13 is spoken)")
    key = headers.get("sec-websocket-key", "")
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError
    except (ValueError, binascii.Error):
        raise HandshakeError(400, f"Sec-WebSocket-Key {key[:40]!r} is not 16 bytes in base64") from None
    digest = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest())
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + digest + b"\r\n\r\n")


def http_error(status: int, text: str) -> bytes:
    """A plain-text HTTP reply that closes the connection (a refused upgrade)."""
    reason = {400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
              426: "Upgrade Required", 431: "Request Header Fields Too Large"}.get(status, "Error")
    body = (text + "\n").encode()
    extra = b"Sec-WebSocket-Version: 13\r\n" if status == 426 else b""
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n").encode() + extra + b"\r\n" + body


def frame(opcode: int, payload: bytes = b"") -> bytes:
    """One unmasked server frame (servers never mask, RFC 6455 5.1)."""
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 1 << 16:
        return struct.pack("!BBH", 0x80 | opcode, 126, n) + payload
    return struct.pack("!BBQ", 0x80 | opcode, 127, n) + payload


def close_frame(code: int, reason: str = "") -> bytes:
    return frame(CLOSE, struct.pack("!H", code) + reason.encode()[:123])


def unmask(payload: bytes, mask: bytes) -> bytes:
    """One payload unmasked (control frames and fragments: the rare path)."""
    n = len(payload)
    if not n or mask == b"\0\0\0\0":
        return payload
    return (int.from_bytes(payload, "little") ^ int.from_bytes((mask * (n // 4 + 1))[:n], "little")).to_bytes(n, "little")


def unmask_batch(frames: list[tuple[bytes, bytes]]) -> list[bytes]:
    """Many (payload, mask) pairs unmasked in one numpy pass: each payload is padded to whole
    32-bit words, so every word XORs with its frame's 4-byte key (the key repeats from each
    payload's first byte), then cut back to its length."""
    if not frames:
        return []
    parts: list[bytes] = []
    words: list[int] = []
    masks: list[bytes] = []
    for payload, mask in frames:
        n = len(payload)
        parts.append(payload)
        pad = -n & 3
        if pad:
            parts.append(_PAD[4 - pad])
        words.append((n + pad) >> 2)
        masks.append(mask)
    data = np.frombuffer(b"".join(parts), np.uint32)
    keys = np.frombuffer(b"".join(masks), np.uint32)
    out = (data ^ np.repeat(keys, words)).tobytes()
    res: list[bytes] = []
    at = 0
    for (payload, _), w in zip(frames, words):
        res.append(out[at:at + len(payload)])
        at += w << 2
    return res


class FrameParser:
    """Client bytes in, whole frames out as ``(opcode, fin, payload, mask)`` (payload still masked).

    Raises ProtocolError for what a client must not send: an unmasked frame, reserved bits,
    an unknown opcode, a control frame over 125 bytes or fragmented, a frame larger than
    `max_size`. Fragment assembly is the caller's (it needs the unmasked bytes).
    """

    __slots__ = ("_rest", "max_size")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._rest = b""

    def feed(self, data: bytes) -> list[tuple[int, int, bytes, bytes]]:
        if self._rest:
            data = self._rest + data
            self._rest = b""
        out: list[tuple[int, int, bytes, bytes]] = []
        end = len(data)
        at = 0
        while end - at >= 2:
            b0 = data[at]
            b1 = data[at + 1]
            opcode = b0 & 0x0F
            if b0 & 0x70:
                raise ProtocolError(1002, f"reserved bits set (0x{b0 & 0x70:02x}) without an extension")
            if not b1 & 0x80:
                raise ProtocolError(1002, "an unmasked client frame")
            n = b1 & 0x7F
            h = at + 2
            if n == 126:
                if end - h < 2:
                    break
                n = (data[h] << 8) | data[h + 1]
                h += 2
            elif n == 127:
                if end - h < 8:
                    break
                n = int.from_bytes(data[h:h + 8], "big")
                h += 8
            if opcode >= 0x8:
                if opcode > PONG:
                    raise ProtocolError(1002, f"unknown opcode 0x{opcode:x}")
                if n > 125 or not b0 & 0x80:
                    raise ProtocolError(1002, "a control frame over 125 bytes or fragmented")
            elif opcode > BINARY:
                raise ProtocolError(1002, f"unknown opcode 0x{opcode:x}")
            if n > self.max_size:
                raise ProtocolError(1009, f"message of {n} bytes exceeds {self.max_size}")
            if end - h < 4 + n:
                break
            out.append((opcode, b0 & 0x80, data[h + 4:h + 4 + n], data[h:h + 4]))
            at = h + 4 + n
        if at < end:
            self._rest = data[at:]
        return out
