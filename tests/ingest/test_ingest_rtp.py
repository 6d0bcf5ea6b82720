"""RTP header parsing: exact error text for each defect, and the numpy batch parser agreeing with
the per-packet one on random valid and invalid datagrams."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wholecall.ingest.rtp import RtpError, RtpHeader, build_packet, parse_batch, parse_header


def test_round_trip_of_every_field() -> None:
    data = build_packet(
        101, 65535, 0xFFFFFFFF, 0xDEADBEEF, b"abcd", marker=True, csrc=(1, 2), extension=(0xBEDE, b"\x10\x01\x00\x00"), padding=3
    )
    h = parse_header(data)
    assert h == RtpHeader(
        marker=True, payload_type=101, sequence=65535, timestamp=0xFFFFFFFF, ssrc=0xDEADBEEF, csrc=(1, 2),
        extension_profile=0xBEDE, extension=b"\x10\x01\x00\x00", payload_offset=12 + 8 + 8, payload_length=4, padding=3,
    )
    assert data[h.payload_offset: h.payload_offset + h.payload_length] == b"abcd"


def test_known_bytes() -> None:
    # V=2, M=1, PT=8, seq=0x1234, ts=0x01020304, ssrc=0x0A0B0C0D, two payload bytes
    h = parse_header(bytes.fromhex("8088123401020304 0a0b0c0d d5d5".replace(" ", "")))
    assert (h.marker, h.payload_type, h.sequence, h.timestamp, h.ssrc, h.payload_offset, h.payload_length) == (
        True, 8, 0x1234, 0x01020304, 0x0A0B0C0D, 12, 2
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x80\x08\x00", "RTP packet too short: 3 bytes, the fixed header needs 12"),
        (bytes([0x40]) + bytes(11), "RTP version 1 is not supported, only version 2"),
        (bytes([0x82]) + bytes(15), "RTP packet has a truncated CSRC list: 2 CSRCs need 20 bytes, got 16"),
        (bytes([0x90]) + bytes(13), "RTP packet has a truncated extension header: needs 16 bytes, got 14"),
        (bytes([0x90]) + bytes(11) + b"\x00\x00\x00\x02" + bytes(4), "RTP packet has a truncated extension: 2 words need 24 bytes, got 20"),
        (bytes([0xA0]) + bytes(11), "RTP packet has bad padding: the P bit is set but there is no padding count byte"),
        (bytes([0xA0]) + bytes(11) + b"\x00\x00", "RTP packet has bad padding: count 0, but 2 bytes follow the header"),
        (bytes([0xA0]) + bytes(11) + b"\x00\x03", "RTP packet has bad padding: count 3, but 2 bytes follow the header"),
    ],
)
def test_exact_error_text(data: bytes, message: str) -> None:
    with pytest.raises(RtpError) as info:
        parse_header(data)
    assert str(info.value) == message


def _reference(datagram: bytes) -> tuple[bool, int, int, int, int, bool, int, int]:
    try:
        h = parse_header(datagram)
    except RtpError:
        return (False, 0, 0, 0, 0, False, 0, 0)
    return (True, h.payload_type, h.sequence, h.timestamp, h.ssrc, h.marker, h.payload_offset, h.payload_length)


valid_packets = st.builds(
    build_packet,
    payload_type=st.integers(0, 127),
    sequence=st.integers(0, 65535),
    timestamp=st.integers(0, 2**32 - 1),
    ssrc=st.integers(0, 2**32 - 1),
    payload=st.binary(max_size=40),
    marker=st.booleans(),
    csrc=st.lists(st.integers(0, 2**32 - 1), max_size=3).map(tuple),
    extension=st.none() | st.tuples(st.integers(0, 65535), st.binary(max_size=3).map(lambda b: b * 4)),
    padding=st.sampled_from([0, 0, 1, 4]),
)


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    """Valid packets with a flipped header bit, a cut, a bad padding byte, or plain noise."""
    data = bytearray(draw(valid_packets))
    how = draw(st.sampled_from(["flip", "cut", "pad", "noise", "keep"]))
    if how == "flip":
        i = draw(st.integers(0, min(len(data), 16) - 1))
        data[i] ^= 1 << draw(st.integers(0, 7))
    elif how == "cut":
        data = data[: draw(st.integers(0, len(data)))]
    elif how == "pad" and data:
        data[-1] = draw(st.integers(0, 255))
        data[0] |= 0x20
    elif how == "noise":
        data = bytearray(draw(st.binary(max_size=60)))
    return bytes(data)


@settings(max_examples=300, deadline=None)
@given(st.lists(valid_packets | damaged(), min_size=1, max_size=20), st.integers(0, 8))  # both paths: <= 4 and more
def test_batch_parse_equals_per_packet_parse(datagrams: list[bytes], overlong: int) -> None:
    stride = 80
    buffer = np.zeros((len(datagrams), stride), np.uint8)
    lengths = np.zeros(len(datagrams), np.int64)
    for i, d in enumerate(datagrams):
        buffer[i, : min(len(d), stride)] = np.frombuffer(d[:stride], np.uint8)
        lengths[i] = len(d)
    batch = parse_batch(buffer, lengths)
    for i, d in enumerate(datagrams):
        want = _reference(d) if len(d) <= stride else (False,) + (0,) * 7
        got = (batch.valid[i],)
        if batch.valid[i]:
            got += (batch.payload_type[i], batch.sequence[i], batch.timestamp[i], batch.ssrc[i], batch.marker[i],
                    batch.payload_offset[i], batch.payload_length[i])
        else:
            got += (0, 0, 0, 0, False, 0, 0)
        assert tuple(int(x) for x in got) == tuple(int(x) for x in want), d.hex()


def test_batch_marks_datagrams_longer_than_the_row_invalid() -> None:
    packet = build_packet(8, 1, 2, 3, bytes(100))
    buffer = np.zeros((2, 64), np.uint8)
    buffer[0, :64] = np.frombuffer(packet[:64], np.uint8)
    buffer[1, :12] = np.frombuffer(packet[:12], np.uint8)
    batch = parse_batch(buffer, np.array([len(packet), 12]))
    assert batch.valid.tolist() == [False, True]
    assert batch.payload_length[1] == 0


def test_batch_count_limits_the_rows() -> None:
    buffer = np.zeros((4, 32), np.uint8)
    buffer[0, :12] = np.frombuffer(build_packet(0, 5, 6, 7), np.uint8)
    batch = parse_batch(buffer, np.array([12, 0, 0, 0]), count=1)
    assert len(batch.valid) == 1 and batch.sequence[0] == 5
