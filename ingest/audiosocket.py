"""Asterisk AudioSocket: the TCP framing, parsed incrementally (no I/O here).

A frame is 1 byte kind, 2 bytes big-endian payload length, then the payload::

    0x00 hang-up (no payload)       0x01 UUID (16 bytes, the first frame of a connection)
    0x03 DTMF digit (1 ASCII byte)  0x10 audio: 8 kHz signed 16-bit little-endian mono
    0x11-0x18 audio, the same sample format at 12, 16, 24, 32, 44.1, 48, 96 and 192 kHz
    0xff error (an error code byte, Asterisk's)

The higher-rate kinds are Asterisk's (res_audiosocket, asterisk/asterisk pull request 1492,
documented on docs.asterisk.org "AudioSocket"): a channel whose codec is slin16 and up sends
its audio with the kind of its rate. The stream process resamples them to the call rate.

Why incremental: TCP hands over bytes, not frames; `FrameReader.feed` keeps a partial frame
for the next read and returns every complete one, so the caller's cost is per read, not
per byte. A frame kind we do not know, or a payload larger than its kind's limit
(`max_payload`; Asterisk sends 20 ms audio frames: 320 bytes at 8 kHz, 7,680 at 192 kHz),
is a protocol violation: the reader raises and the connection
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
AUDIO_RATES = {KIND_AUDIO: 8000, 0x11: 12000, 0x12: 16000, 0x13: 24000, 0x14: 32000, 0x15: 44100, 0x16: 48000,
               0x17: 96000, 0x18: 192000}
"""Audio frame kind -> its sample rate (16-bit signed little-endian mono at every rate)."""
KINDS = {KIND_HANGUP: "hangup", KIND_UUID: "uuid", KIND_DTMF: "dtmf", KIND_ERROR: "error",
         **{k: "audio" if r == 8000 else f"audio {r / 1000:g} kHz" for k, r in AUDIO_RATES.items()}}
MAX_PAYLOAD = 8000
"""Largest payload of a non-audio or 8 kHz audio frame (500 ms of 8 kHz audio)."""


def max_payload(kind: int) -> int:
    """Largest payload accepted for `kind`: 500 ms of audio at its rate, at most the 16-bit length."""
    return min(0xFFFF, max(MAX_PAYLOAD, AUDIO_RATES.get(kind, 0)))


_LIMITS = {k: max_payload(k) for k in KINDS}
DIGITS = "0123456789*#ABCD"

_HEADER = struct.Struct("!BH")


class AudioSocketError(ValueError):
    """Bytes that are not AudioSocket; the text names what is wrong. `frames`: the whole
    frames read before the violation in the same bytes, which are the call's as much as
    any earlier read's (a peer's last good audio is kept, as on the Twilio path)."""

    def __init__(self, message: str, frames: list[tuple[int, bytes]] | None = None) -> None:
        super().__init__(message)
        self.frames = frames or []


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
                raise AudioSocketError(f"unknown frame kind 0x{kind:02x}", out)
            if length > _LIMITS[kind]:
                del buf[:at]
                raise AudioSocketError(f"{KINDS[kind]} frame of {length} bytes exceeds {_LIMITS[kind]}", out)
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
