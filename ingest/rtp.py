"""RTP fixed header (RFC 3550 section 5.1): one packet at a time, or a whole batch at once.

Layout of the fixed header (network byte order)::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |V=2|P|X|  CC   |M|     PT      |       sequence number         |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                           timestamp                           |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                             SSRC                              |
    +=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+
    |                  CSRC list (CC x 32 bits)                     |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    | extension: profile (16) | length in 32-bit words (16) | data  |   (if X)
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    | payload ...                       | padding ... | pad count   |   (if P)
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

Why two parsers: `parse_header` is the reference, exact about what is wrong with a bad
packet (its message is what a test or a log shows). `parse_batch` exists because a
receiver gets 64 datagrams per `recvmmsg` in one buffer, and parsing their headers with
a handful of numpy operations costs a fraction of 64 Python calls; it handles the
common shape (no CSRC, no extension) vectorised and hands the rest to `parse_header`,
so both always agree (a property test holds them to it).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

RTP_VERSION = 2
HEADER_SIZE = 12  # fixed header, before CSRCs and extension
CSRC_SIZE = 4
EXTENSION_HEADER_SIZE = 4  # profile-defined 16 bits + length in 32-bit words 16 bits

_FIXED = struct.Struct("!BBHII")
_EXT = struct.Struct("!HH")


class RtpError(ValueError):
    """A datagram that is not a well-formed RTP packet; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class RtpHeader:
    """The parsed header of one RTP packet and where its payload sits in the datagram."""

    marker: bool
    """M bit: for audio, the first packet after a silence (talkspurt); for RFC 4733, a new event."""
    payload_type: int
    """PT, 0..127; its meaning comes from the call's payload-type map."""
    sequence: int
    """16-bit sequence number, wraps at 65536."""
    timestamp: int
    """32-bit sampling instant of the first payload sample, in the payload's clock (8 kHz here)."""
    ssrc: int
    """32-bit synchronisation source: one per stream; a new one means a new stream."""
    csrc: tuple[int, ...] = ()
    """Contributing sources (mixers); carried, not used."""
    extension_profile: int | None = None
    """16-bit profile of the header extension, None without an extension."""
    extension: bytes = b""
    """Header extension data (without its 4-byte header)."""
    payload_offset: int = HEADER_SIZE
    """Byte offset of the payload in the datagram."""
    payload_length: int = 0
    """Payload bytes, padding excluded."""
    padding: int = 0
    """Padding bytes at the end (including the count byte), 0 without the P bit."""


def parse_header(data: bytes | bytearray | memoryview) -> RtpHeader:
    """Parse one datagram's RTP header; raise `RtpError` naming the defect if it has one."""
    size = len(data)
    if size < HEADER_SIZE:
        raise RtpError(f"RTP packet too short: {size} bytes, the fixed header needs {HEADER_SIZE}")
    first, second, sequence, timestamp, ssrc = _FIXED.unpack_from(data, 0)
    version = first >> 6
    if version != RTP_VERSION:
        raise RtpError(f"RTP version {version} is not supported, only version {RTP_VERSION}")
    has_padding = bool(first & 0x20)
    has_extension = bool(first & 0x10)
    cc = first & 0x0F
    offset = HEADER_SIZE + CSRC_SIZE * cc
    if offset > size:
        raise RtpError(f"RTP packet has a truncated CSRC list: {cc} CSRCs need {offset} bytes, got {size}")
    csrc = struct.unpack_from(f"!{cc}I", data, HEADER_SIZE) if cc else ()
    profile: int | None = None
    extension = b""
    if has_extension:
        if offset + EXTENSION_HEADER_SIZE > size:
            raise RtpError(
                f"RTP packet has a truncated extension header: needs {offset + EXTENSION_HEADER_SIZE} bytes, got {size}"
            )
        profile, words = _EXT.unpack_from(data, offset)
        start = offset + EXTENSION_HEADER_SIZE
        offset = start + 4 * words
        if offset > size:
            raise RtpError(
                f"RTP packet has a truncated extension: {words} words need {offset} bytes, got {size}"
            )
        extension = bytes(data[start:offset])
    padding = 0
    if has_padding:
        if size == offset:
            raise RtpError("RTP packet has bad padding: the P bit is set but there is no padding count byte")
        padding = data[size - 1]
        if padding == 0 or padding > size - offset:
            raise RtpError(
                f"RTP packet has bad padding: count {padding}, but {size - offset} bytes follow the header"
            )
    return RtpHeader(
        marker=bool(second & 0x80),
        payload_type=second & 0x7F,
        sequence=sequence,
        timestamp=timestamp,
        ssrc=ssrc,
        csrc=tuple(csrc),
        extension_profile=profile,
        extension=extension,
        payload_offset=offset,
        payload_length=size - offset - padding,
        padding=padding,
    )


def build_packet(
    payload_type: int,
    sequence: int,
    timestamp: int,
    ssrc: int,
    payload: bytes = b"",
    *,
    marker: bool = False,
    csrc: tuple[int, ...] = (),
    extension: tuple[int, bytes] | None = None,
    padding: int = 0,
) -> bytes:
    """Serialise one RTP packet: for senders (load generator, tests), the inverse of `parse_header`.

    `extension` is (profile, data) with data a multiple of 4 bytes; `padding` is the total
    number of padding bytes including the count byte (0 for none, else 1..255).
    """
    if not 0 <= payload_type <= 127:
        raise ValueError(f"payload type {payload_type} is outside 0..127")
    if len(csrc) > 15:
        raise ValueError(f"{len(csrc)} CSRCs, at most 15 fit")
    if not 0 <= padding <= 255:
        raise ValueError(f"padding {padding} is outside 0..255")
    first = (RTP_VERSION << 6) | (0x20 if padding else 0) | (0x10 if extension else 0) | len(csrc)
    parts = [
        _FIXED.pack(first, (0x80 if marker else 0) | payload_type, sequence & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc & 0xFFFFFFFF)
    ]
    if csrc:
        parts.append(struct.pack(f"!{len(csrc)}I", *csrc))
    if extension is not None:
        profile, data = extension
        if len(data) % 4:
            raise ValueError(f"extension data of {len(data)} bytes is not a multiple of 4")
        parts.append(_EXT.pack(profile, len(data) // 4) + data)
    parts.append(payload)
    if padding:
        parts.append(bytes(padding - 1) + bytes([padding]))
    return b"".join(parts)


SMALL_BATCH = 4
"""Up to this many datagrams, `parse_batch` parses one by one: each numpy operation costs
about 0.5 us however short its array, and the vectorised path is some 30 of them."""


@dataclass(slots=True)
class RtpBatch:
    """Headers of the first `count` datagrams of a receive buffer, one array element per datagram.

    Fields of invalid datagrams (``valid[i]`` False) are unspecified (zero in practice).
    """

    valid: np.ndarray
    """bool: a well-formed RTP packet that fits the buffer row."""
    payload_type: np.ndarray
    """uint8, 0..127."""
    sequence: np.ndarray
    """uint16."""
    timestamp: np.ndarray
    """uint32."""
    ssrc: np.ndarray
    """uint32."""
    marker: np.ndarray
    """bool."""
    payload_offset: np.ndarray
    """int64: byte offset of the payload within the datagram's buffer row."""
    payload_length: np.ndarray
    """int64: payload bytes, padding excluded."""


def parse_batch(buffer: np.ndarray, lengths: np.ndarray, count: int | None = None) -> RtpBatch:
    """Parse the RTP headers of the datagrams in `buffer` (uint8, one datagram per row) at once.

    `lengths[i]` is datagram i's size as the kernel reported it; a length larger than the
    row (a datagram truncated by the buffer, which `recvmmsg` with MSG_TRUNC reports this
    way) is invalid. Rows with a CSRC list or an extension go through `parse_header`.
    """
    if buffer.ndim != 2 or buffer.dtype != np.uint8:
        raise ValueError(f"buffer must be a 2-D uint8 array, got {buffer.ndim}-D {buffer.dtype}")
    stride = buffer.shape[1]
    if stride < HEADER_SIZE:
        raise ValueError(f"buffer rows of {stride} bytes cannot hold an RTP header ({HEADER_SIZE})")
    n = len(lengths) if count is None else count
    if n <= SMALL_BATCH:
        return _parse_few(buffer, lengths, n)
    size = lengths[:n].astype(np.int64)
    words = buffer[:n, :HEADER_SIZE].view(">u4")  # (n, 3) strided view: flags|pt|seq, timestamp, ssrc
    w0 = words[:, 0].astype(np.uint32)
    first = w0 >> 24
    fits = (size >= HEADER_SIZE) & (size <= stride)
    v2 = fits & ((first & 0xC0) == RTP_VERSION << 6)
    simple = (first & 0x1F) == 0  # no extension, no CSRC: the header is 12 bytes
    valid = v2 & simple
    length = size - HEADER_SIZE
    padded = valid & ((first & 0x20) != 0)
    if padded.any():
        rows = np.flatnonzero(padded)
        pad = buffer[rows, size[rows] - 1].astype(np.int64)
        bad = (pad == 0) | (pad > length[rows])
        valid[rows[bad]] = False
        length[rows] -= pad
    length[~valid] = 0
    batch = RtpBatch(
        valid=valid,
        payload_type=((w0 >> 16) & 0x7F).astype(np.uint8),
        sequence=(w0 & 0xFFFF).astype(np.uint16),
        timestamp=words[:, 1].astype(np.uint32),
        ssrc=words[:, 2].astype(np.uint32),
        marker=(w0 & 0x800000) != 0,
        payload_offset=np.full(n, HEADER_SIZE, dtype=np.int64),
        payload_length=length,
    )
    if simple.all():
        return batch
    slow = np.flatnonzero(v2 & ~simple)
    for i in slow.tolist():
        try:
            header = parse_header(buffer[i, : size[i]].data)
        except RtpError:
            batch.valid[i] = False
            batch.payload_length[i] = 0
            continue
        batch.valid[i] = True
        batch.payload_offset[i] = header.payload_offset
        batch.payload_length[i] = header.payload_length
    return batch


def _parse_few(buffer: np.ndarray, lengths: np.ndarray, n: int) -> RtpBatch:
    stride = buffer.shape[1]
    fields: list[tuple[bool, int, int, int, int, bool, int, int]] = []
    for i in range(n):
        size = int(lengths[i])
        try:
            if size > stride:
                raise RtpError("datagram longer than its buffer row")
            h = parse_header(buffer[i, :size].data)
        except RtpError:
            fields.append((False, 0, 0, 0, 0, False, HEADER_SIZE, 0))
            continue
        fields.append((True, h.payload_type, h.sequence, h.timestamp, h.ssrc, h.marker, h.payload_offset, h.payload_length))
    columns = list(zip(*fields)) if fields else [()] * 8
    return RtpBatch(
        valid=np.array(columns[0], dtype=bool),
        payload_type=np.array(columns[1], dtype=np.uint8),
        sequence=np.array(columns[2], dtype=np.uint16),
        timestamp=np.array(columns[3], dtype=np.uint32),
        ssrc=np.array(columns[4], dtype=np.uint32),
        marker=np.array(columns[5], dtype=bool),
        payload_offset=np.array(columns[6], dtype=np.int64),
        payload_length=np.array(columns[7], dtype=np.int64),
    )
