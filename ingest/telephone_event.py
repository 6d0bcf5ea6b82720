"""RFC 4733 telephone events (DTMF in RTP): the payload and the rule for "is this a new key press".

Why a rule of its own: a sender repeats every event packet while the key is held (growing
duration, same RTP timestamp), sends the end packet three times, and may retransmit; one key
press must still become exactly one digit. An event is identified by its stream (SSRC) and its
RTP timestamp, the instant it started. A very long press is sent as several segments whose
timestamps advance (RFC 4733 2.5.1.3) without the marker bit: those continue the same digit.

Payload (4 bytes per event)::

    0                   1                   2                   3
    0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
   +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
   |     event     |E|R| volume    |          duration             |
   +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .payload import PayloadError

EVENT_SIZE = 4
DIGITS = "0123456789*#ABCD"
"""Event codes 0..15 (RFC 4733 3.2) as the characters they stand for."""

_EVENT = struct.Struct("!BBH")


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """One decoded telephone-event payload."""

    event: int
    """Event code, 0..255; 0..15 are the DTMF keys."""
    end: bool
    """E bit: this packet reports the end of the event."""
    volume: int
    """Power level in -dBm0, 0..63 (for DTMF)."""
    duration: int
    """Duration so far, in timestamp units (samples at 8 kHz) since the event's timestamp."""

    @property
    def digit(self) -> str | None:
        """The key as a character, None for events that are not DTMF keys."""
        return DIGITS[self.event] if self.event < len(DIGITS) else None


def parse_event(payload: bytes | bytearray | memoryview) -> TelephoneEvent:
    """Decode the first event block of a telephone-event payload (any further blocks are ignored)."""
    if len(payload) < EVENT_SIZE:
        raise PayloadError(f"telephone-event payload too short: {len(payload)} bytes, needs {EVENT_SIZE}")
    event, flags, duration = _EVENT.unpack_from(payload, 0)
    return TelephoneEvent(event=event, end=bool(flags & 0x80), volume=flags & 0x3F, duration=duration)


def build_event(event: int, duration: int, *, end: bool = False, volume: int = 10) -> bytes:
    """Serialise one event block (for senders and tests)."""
    if not 0 <= event <= 255 or not 0 <= volume <= 63 or not 0 <= duration <= 0xFFFF:
        raise ValueError(f"event {event}, volume {volume} or duration {duration} out of range")
    return _EVENT.pack(event, (0x80 if end else 0) | volume, duration)
