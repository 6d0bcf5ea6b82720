"""Payload types of a call: which RTP PT means which format, and how to turn a payload into samples.

Why one table: the receiver, the playout core and the API's validation all ask the same
questions (is PT 96 audio? how many samples is this payload? is 101 a telephone event?),
so the answers live here once. Static types 0 (PCMU), 8 (PCMA) and 13 (CN) are always
known (RFC 3551); dynamic types 96..127 come from the call's map, e.g.
``{"96": "L16/8000", "101": "telephone-event/8000"}``. Every format runs at 8 kHz, the
call's sample clock: a map naming another rate or more than one channel is rejected when
the call is created rather than producing audio at the wrong speed.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from .g711 import decode_alaw, decode_ulaw

RATE = 8000
"""The call's sample clock and the RTP clock rate of every accepted format, in Hz."""
DYNAMIC_TYPES = range(96, 128)


class Kind(enum.Enum):
    """What a payload type carries, which decides what the playout core does with it."""

    AUDIO = "audio"
    """Samples, written at the packet's place."""
    EVENT = "event"
    """RFC 4733 telephone events: reported as digits, never written as audio."""
    COMFORT_NOISE = "comfort-noise"
    """RFC 3389 CN: silence until the next packet."""


class PayloadError(ValueError):
    """A payload-type map entry, payload type or payload that cannot be used."""


def decode_l16(payload: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """L16 (RFC 3551 4.5.11): 16-bit signed, network byte order -> native int16, a new array."""
    data = payload if isinstance(payload, np.ndarray) else np.frombuffer(payload, dtype=np.uint8)
    if len(data) % 2:
        raise PayloadError(f"L16 payload of {len(data)} bytes is not a whole number of samples")
    return data.view(">i2").astype(np.int16)


@dataclass(frozen=True, slots=True)
class Format:
    """One payload format: its SDP encoding name, what it carries and how to decode it."""

    name: str
    """Encoding name as in SDP rtpmap (``PCMA``, ``L16``, ``telephone-event``, ``CN``)."""
    kind: Kind
    bytes_per_sample: int = 0
    """Payload bytes per sample for audio, 0 otherwise."""
    decode: Callable[[bytes | bytearray | memoryview | np.ndarray], np.ndarray] | None = None
    """Payload bytes -> int16 samples, for audio only."""


PCMU = Format("PCMU", Kind.AUDIO, 1, decode_ulaw)
PCMA = Format("PCMA", Kind.AUDIO, 1, decode_alaw)
L16 = Format("L16", Kind.AUDIO, 2, decode_l16)
TELEPHONE_EVENT = Format("telephone-event", Kind.EVENT)
CN = Format("CN", Kind.COMFORT_NOISE)

FORMATS: dict[str, Format] = {f.name.lower(): f for f in (PCMU, PCMA, L16, TELEPHONE_EVENT, CN)}
"""Every encoding we accept, by lower-case SDP name."""
STATIC: dict[int, Format] = {0: PCMU, 8: PCMA, 13: CN}
"""RFC 3551 static payload types that are always known."""


def parse_encoding(text: str) -> Format:
    """``"L16/8000"`` or ``"L16/8000/1"`` -> the format; anything we cannot record raises."""
    parts = text.strip().split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise PayloadError(f'encoding "{text}" is not NAME/RATE or NAME/RATE/CHANNELS')
    fmt = FORMATS.get(parts[0].lower())
    if fmt is None:
        raise PayloadError(f'encoding "{text}" is not supported (supported: {", ".join(f.name for f in FORMATS.values())})')
    try:
        rate = int(parts[1])
        channels = int(parts[2]) if len(parts) == 3 else 1
    except ValueError:
        raise PayloadError(f'encoding "{text}" has a rate or channel count that is not a number') from None
    if rate != RATE:
        raise PayloadError(f'encoding "{text}" runs at {rate} Hz, only {RATE} Hz is supported')
    if channels != 1:
        raise PayloadError(f'encoding "{text}" has {channels} channels, only mono is supported')
    return fmt


class PayloadTypes:
    """A call's payload-type map: the static types plus the dynamic ones it was given."""

    __slots__ = ("_formats",)

    def __init__(self, mapping: Mapping[str | int, str] | None = None) -> None:
        formats: dict[int, Format] = dict(STATIC)
        for key, encoding in (mapping or {}).items():
            try:
                pt = int(key)
            except (TypeError, ValueError):
                raise PayloadError(f'payload type "{key}" is not a number') from None
            if not isinstance(encoding, str):
                raise PayloadError(f"payload type {pt}: encoding must be a string, got {type(encoding).__name__}")
            fmt = parse_encoding(encoding)
            if pt in STATIC:
                if STATIC[pt] is not fmt:
                    raise PayloadError(f'payload type {pt} is statically {STATIC[pt].name}, cannot be "{encoding}"')
            elif pt not in DYNAMIC_TYPES:
                raise PayloadError(f"payload type {pt} is neither static (0, 8, 13) nor dynamic (96..127)")
            formats[pt] = fmt
        self._formats = formats

    def get(self, payload_type: int) -> Format | None:
        """The format of `payload_type`, None when the call does not know it."""
        return self._formats.get(payload_type)

    def __getitem__(self, payload_type: int) -> Format:
        fmt = self._formats.get(payload_type)
        if fmt is None:
            raise PayloadError(f"payload type {payload_type} is not in this call's map (known: {self.known()})")
        return fmt

    def __contains__(self, payload_type: object) -> bool:
        return payload_type in self._formats

    def known(self) -> str:
        return ", ".join(f"{pt} {f.name}" for pt, f in sorted(self._formats.items()))

    def items(self) -> list[tuple[int, Format]]:
        return sorted(self._formats.items())

    def __repr__(self) -> str:
        return f"PayloadTypes({self.known()})"
