"""AudioSocket framing: the higher-rate audio kinds 0x11-0x18 are frames like 0x10, each with
a size limit of 500 ms at its rate; anything else is refused by name."""

from __future__ import annotations

import pytest

from wholecall.ingest.audiosocket import AUDIO_RATES, AudioSocketError, FrameReader, frame, max_payload


def test_every_audio_kind_is_read_and_its_rate_known() -> None:
    assert AUDIO_RATES == {0x10: 8000, 0x11: 12000, 0x12: 16000, 0x13: 24000, 0x14: 32000, 0x15: 44100,
                           0x16: 48000, 0x17: 96000, 0x18: 192000}
    r = FrameReader()
    wire = b"".join(frame(k, b"\x01\x00" * (rate // 50)) for k, rate in AUDIO_RATES.items())  # 20 ms each
    got = r.feed(wire[:1000]) + r.feed(wire[1000:])  # split mid-frame
    assert [(k, len(p)) for k, p in got] == [(k, 2 * (rate // 50)) for k, rate in AUDIO_RATES.items()]
    assert r.pending == 0


@pytest.mark.parametrize("kind, limit", [(0x10, 8000), (0x12, 16000), (0x16, 48000), (0x03, 8000)])
def test_a_frame_over_its_kinds_limit_is_refused(kind: int, limit: int) -> None:
    assert max_payload(kind) == limit
    FrameReader().feed(frame(kind, bytes(limit)))
    with pytest.raises(AudioSocketError, match=f"frame of {limit + 1} bytes exceeds {limit}"):
        FrameReader().feed(frame(kind, bytes(limit + 1)))


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(AudioSocketError, match="unknown frame kind 0x19"):
        FrameReader().feed(frame(0x19, b"\x00\x00"))


def test_the_frames_before_a_violation_come_with_its_error() -> None:
    """A reviewer's find: one read of ten audio frames then an unknown kind lost the ten
    (the reader raised and dropped what it had read), and a UUID in the same read as a bad
    frame left its call running until the media timeout."""
    good = [frame(0x01, bytes(16))] + [frame(0x10, bytes([k]) * 320) for k in range(10)]
    with pytest.raises(AudioSocketError, match="unknown frame kind 0x42") as e:
        FrameReader().feed(b"".join(good) + frame(0x42, b"\x00"))
    assert [(k, p[:1]) for k, p in e.value.frames] == [(0x01, b"\x00")] + [(0x10, bytes([k])) for k in range(10)]
