"""G.711 tables against Python's audioop (or a scalar G.711 formula written here), L16, and the
payload-type map's validation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from wholecall.ingest.g711 import ALAW_TO_INT16, ULAW_TO_INT16, decode_alaw, decode_ulaw
from wholecall.ingest.payload import CN, L16, PCMA, PCMU, TELEPHONE_EVENT, Kind, PayloadError, PayloadTypes, decode_l16
from wholecall.ingest.telephone_event import build_event, parse_event

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import audioop
    except ImportError:  # Python 3.13 without audioop-lts
        audioop = None


def alaw_reference(code: int) -> int:
    """G.711 table 1a read as a formula, one code at a time."""
    a = code ^ 0x55
    seg, step = (a >> 4) & 7, a & 15
    mag = step * 16 + 8 if seg == 0 else (step * 16 + 264) * 2 ** (seg - 1)
    return mag if a & 0x80 else -mag


def ulaw_reference(code: int) -> int:
    """G.711 table 2a read as a formula, one code at a time."""
    u = 255 - code
    seg, step = (u >> 4) & 7, u & 15
    mag = (step * 8 + 132) * 2**seg - 132
    return -mag if u & 0x80 else mag


@pytest.mark.parametrize("law", ["alaw", "ulaw"])
def test_tables_match_references(law: str) -> None:
    table = ALAW_TO_INT16 if law == "alaw" else ULAW_TO_INT16
    formula = alaw_reference if law == "alaw" else ulaw_reference
    assert table.dtype == np.int16 and table.shape == (256,)
    assert [int(v) for v in table] == [formula(c) for c in range(256)]
    if audioop is not None:
        decode = audioop.alaw2lin if law == "alaw" else audioop.ulaw2lin
        theirs = np.frombuffer(decode(bytes(range(256)), 2), "<i2")
        np.testing.assert_array_equal(table, theirs)


def test_known_values() -> None:
    assert decode_alaw(b"\xd5\x55\x2a\xaa").tolist() == [8, -8, -32256, 32256]
    assert decode_ulaw(b"\xff\x7f\x00\x80").tolist() == [0, 0, -32124, 32124]
    assert not ALAW_TO_INT16.flags.writeable


def test_l16_is_network_order() -> None:
    assert decode_l16(b"\x01\x02\xff\xfe").tolist() == [0x0102, -2]
    assert decode_l16(np.frombuffer(b"\x80\x00", np.uint8)).tolist() == [-32768]
    with pytest.raises(PayloadError, match="L16 payload of 3 bytes is not a whole number of samples"):
        decode_l16(b"\x00\x00\x00")


def test_map_has_static_types_and_the_given_dynamic_ones() -> None:
    types = PayloadTypes({"96": "L16/8000", "101": "telephone-event/8000"})
    assert types[0] is PCMU and types[8] is PCMA and types[13] is CN
    assert types[96] is L16 and types[101] is TELEPHONE_EVENT and types[101].kind is Kind.EVENT
    assert types.get(97) is None and 97 not in types
    with pytest.raises(PayloadError, match=r"payload type 97 is not in this call's map \(known: 0 PCMU, 8 PCMA, 13 CN, 96 L16, 101 telephone-event\)"):
        types[97]
    assert PayloadTypes({"8": "PCMA/8000", 97: "l16/8000/1"})[97] is L16


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"96": "opus/48000/2"}, 'encoding "opus/48000/2" is not supported (supported: PCMU, PCMA, L16, telephone-event, CN)'),
        ({"96": "L16/16000"}, 'encoding "L16/16000" runs at 16000 Hz, only 8000 Hz is supported'),
        ({"96": "L16/8000/2"}, 'encoding "L16/8000/2" has 2 channels, only mono is supported'),
        ({"96": "L16"}, 'encoding "L16" is not NAME/RATE or NAME/RATE/CHANNELS'),
        ({"96": "L16/x"}, 'encoding "L16/x" has a rate or channel count that is not a number'),
        ({"x": "L16/8000"}, 'payload type "x" is not a number'),
        ({"8": "PCMU/8000"}, 'payload type 8 is statically PCMA, cannot be "PCMU/8000"'),
        ({"34": "L16/8000"}, "payload type 34 is neither static (0, 8, 13) nor dynamic (96..127)"),
        ({"128": "L16/8000"}, "payload type 128 is neither static (0, 8, 13) nor dynamic (96..127)"),
        ({"96": 5}, "payload type 96: encoding must be a string, got int"),
    ],
)
def test_bad_maps_are_rejected_with_a_clear_error(mapping: dict, message: str) -> None:
    with pytest.raises(PayloadError) as info:
        PayloadTypes(mapping)
    assert str(info.value) == message


def test_telephone_event_payload() -> None:
    ev = parse_event(bytes([11, 0x80 | 10, 0x03, 0x20]))
    assert (ev.event, ev.end, ev.volume, ev.duration, ev.digit) == (11, True, 10, 800, "#")
    assert parse_event(build_event(16, 5)).digit is None
    assert [parse_event(build_event(c, 0)).digit for c in range(16)] == list("0123456789*#ABCD")
    with pytest.raises(PayloadError, match="telephone-event payload too short: 3 bytes, needs 4"):
        parse_event(b"\x00\x00\x00")
