"""Asterisk AudioSocket: the TCP framing, parsed incrementally (no I/O here).

A frame is 1 byte kind, 2 bytes big-endian payload length, then the payload::

    0x00 hang-up (no payload)       0x01 UUID (16 bytes, the first frame of a connection)
    0x03 DTMF digit (1 ASCII byte)  0x10 audio: 8 kHz signed 16-bit little-endian mono
    0xff error (an error code byte, Asterisk's)

Why incremental: TCP hands over bytes, not frames; `FrameReader.feed` keeps a partial frame
for the next read and returns every complete one, so the caller's cost is per read, not
per byte. A frame kind we do not know, or a payload larger than `MAX_PAYLOAD` (Asterisk
sends 320-byte audio frames), is a protocol violation: the reader raises and the connection
is closed rather than guessing where the next frame starts.
"""

from __future__ import annotations

import struct
import uuid

KIND_HANGUP = 0x00
KIND_UUID = 0x01
KIND_DTMF = 0x03
KIND_AUDIO = 0x10
KIND_ERROR = 0xFF
KINDS = {KIND_HANGUP: "hangup", KIND_UUID: "uuid", KIND_DTMF: "dtmf", KIND_AUDIO: "audio", KIND_ERROR: "error"}
MAX_PAYLOAD = 8000
"""Largest payload accepted: 250 ms of audio."""
DIGITS = "0123456789*#ABCD"

_HEADER = struct.Struct("!BH")


class AudioSocketError(ValueError):
    """Bytes that are not AudioSocket; the text names what is wrong."""


def frame(kind: int, payload: bytes = b"") -> bytes:
    """One frame on the wire (for senders and tests)."""
    if len(payload) > 0xFFFF:
        raise ValueError(f"AudioSocket payload of {len(payload)} bytes exceeds 65535")
    return _HEADER.pack(kind, len(payload)) + payload


def uuid_frame(value: str | uuid.UUID) -> bytes:
    return frame(KIND_UUID, uuid.UUID(str(value)).bytes)


class FrameReader:
    """Bytes in, complete ``(kind, payload)`` frames out."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buf
        buf += data
        out: list[tuple[int, bytes]] = []
        at = 0
        end = len(buf)
        while end - at >= 3:
            kind, length = _HEADER.unpack_from(buf, at)
            if kind not in KINDS:
                del buf[:at]
                raise AudioSocketError(f"unknown frame kind 0x{kind:02x}")
            if length > MAX_PAYLOAD:
                del buf[:at]
                raise AudioSocketError(f"{KINDS[kind]} frame of {length} bytes exceeds {MAX_PAYLOAD}")
            if end - at < 3 + length:
                break
            out.append((kind, bytes(buf[at + 3:at + 3 + length])))
            at += 3 + length
        del buf[:at]
        return out

    @property
    def pending(self) -> int:
        """Bytes of a frame not yet complete."""
        return len(self._buf)


def parse_uuid(payload: bytes) -> uuid.UUID:
    if len(payload) != 16:
        raise AudioSocketError(f"UUID frame of {len(payload)} bytes, must be 16")
    return uuid.UUID(bytes=payload)


def parse_digit(payload: bytes) -> str:
    if len(payload) != 1 or chr(payload[0]).upper() not in DIGITS:
        raise AudioSocketError(f"DTMF frame must carry one of 0-9 * # A-D, got {payload!r}")
    return chr(payload[0]).upper()
