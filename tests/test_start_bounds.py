"""Issue 21 item 4: every integer argument is bounded where it is checked, and a start
that fails its checks changes nothing (the recorder stays IDLE, the legs stay unarmed)."""

from __future__ import annotations

import sys
import time

import pytest

from wholecall.controller import Error
from wholecall.controller.args import MAX_TIMEOUT_S, check_start, check_timeout
from wholecall.formats.wav import RIFF_LIMIT
from wholecall.protocol.limits import INT64_MAX, MAX_BYTES, MAX_SILENCE_MS, SAMPLES_PER_MS

ABSURD = [
    ({"milliseconds_max_silence": sys.maxsize}, "milliseconds_max_silence"),
    ({"milliseconds_initial_silence": 2**61}, "milliseconds_initial_silence"),
    ({"max_bytes": 2**64}, "max_bytes"),
    ({"max_bytes": RIFF_LIMIT + 1}, "max_bytes"),
]


def test_bounds_are_the_representable_ones():
    assert MAX_BYTES == RIFF_LIMIT
    assert MAX_SILENCE_MS * SAMPLES_PER_MS <= INT64_MAX < (MAX_SILENCE_MS + 1) * SAMPLES_PER_MS


@pytest.mark.parametrize("kw,name", ABSURD)
def test_unrepresentable_limits_raise_error_naming_the_argument(tmp_path, kw, name):
    value = next(iter(kw.values()))
    with pytest.raises(Error, match=rf"^{name} must be at most \d+ .*got {value}$"):
        check_start(str(tmp_path), "a.wav", **kw)


def test_the_largest_bounds_are_accepted(tmp_path):
    args = check_start(str(tmp_path), "a.wav", max_bytes=MAX_BYTES, milliseconds_max_silence=MAX_SILENCE_MS,
                       milliseconds_initial_silence=MAX_SILENCE_MS)
    assert (args.max_bytes, args.ms_max_silence, args.ms_initial_silence) == (MAX_BYTES, MAX_SILENCE_MS,
                                                                              MAX_SILENCE_MS)


@pytest.mark.parametrize("value", [10**400, 1e300, 2.0**62])
def test_a_timeout_no_lock_can_wait_is_an_error(value):
    with pytest.raises(Error, match="seconds_timeout must be at most"):
        check_timeout("seconds_timeout", value, allow_zero=False)
    assert check_timeout("seconds_timeout", MAX_TIMEOUT_S, allow_zero=False) == MAX_TIMEOUT_S
    assert check_timeout("seconds_timeout", float("inf"), allow_zero=False) is None


def test_a_filename_msgpack_cannot_carry_is_an_error(tmp_path):
    with pytest.raises(Error, match="filename .* is not valid UTF-8"):
        check_start(str(tmp_path), "\udc80.wav")


def test_a_refused_start_changes_nothing_and_the_channel_still_records(ctl, answered):
    rec = answered.WholeCallRecorder
    a = ctl.arena
    for kw, name in ABSURD + [({"filename": "\udc80.wav"}, "filename")]:
        kw = {"filename": "x.wav", **kw}
        with pytest.raises(Error, match=name):
            rec.start(**kw)
        assert rec.state() is rec.State.IDLE and rec.cause() is rec.Cause.NONE
        assert a.job[answered.inbound.slot] == 0 and a.job[answered.outbound.slot] == 0
        assert not ctl._jobs
    with pytest.raises(Error, match="seconds_timeout"):
        rec.record("y.wav", seconds_timeout=10**400)
    assert rec.state() is rec.State.IDLE
    t = time.monotonic()
    assert rec.start("ok.wav", max_bytes=MAX_BYTES, milliseconds_max_silence=MAX_SILENCE_MS)
    assert rec.stop() and rec.cause() is rec.Cause.ABORTED
    assert time.monotonic() - t < 5
    answered.hang_up()


def test_a_str_enum_for_format_and_mode_is_sent_as_the_plain_string():
    import enum

    from wholecall.controller.args import check_start
    from wholecall.protocol import decode, encode

    class Fmt(str, enum.Enum):  # noqa: UP042 - the mixin, whose str() is "Fmt.ALAW", not the value
        ALAW = "alaw"

    class Mode(str, enum.Enum):  # noqa: UP042 - as above
        MIXED = "mixed"

    opts = check_start("/tmp", "x.wav", Fmt.ALAW, 8000, 0, 0, 0, True, Mode.MIXED, None)
    msg = decode(encode(opts.start_job(1, 1, 0, 1, 0)))
    assert (msg.file_format, msg.mode) == ("alaw", "mixed")
    assert type(msg.file_format) is str and type(opts.file_format) is str
