"""recording_mode: 'mixed' (one channel, the sum) and 'separate' (two channels,
inbound left, outbound right, sample-aligned; limits ignored), against real workers."""

from __future__ import annotations

import numpy as np
import pytest
from conformance_helpers import alaw_exact, feed, mix, read, silence, tone

from wholecall.controller import Cause, RecorderState
from wholecall.formats.codecs import CODECS
from wholecall.formats.wav import read_info


def _noise(n: int, seed: int, scale: float = 3000) -> np.ndarray:
    return np.rint(np.random.default_rng(seed).standard_normal(n) * scale).astype(np.int16)


def test_mixed_is_one_channel_with_both_sides(call, name):
    """record(): "The default is mixed, which records a single channel containing a mix of both
    sides of the conversation."
    start(): "The default is mixed, which records a single channel containing a mix of both
    sides of the conversation."
    record(): "The optional argument recording_mode is either mixed or separate."
    """
    a, b = _noise(8000, 1), _noise(8000, 2)
    rec = call.WholeCallRecorder
    assert rec.start(name(), recording_mode="mixed")
    feed(call, a, b)
    assert rec.stop()
    assert read_info(rec.last_result.path).channels == 1
    data, _ = read(rec.last_result.path)
    assert np.array_equal(data, alaw_exact(mix(a, b)))


@pytest.mark.parametrize("file_format", ["alaw", "ulaw", "u8bit", "s16bit"])
def test_separate_is_two_aligned_channels_inbound_left(call, name, file_format):
    """record(): "separate records each side of the conversation to a separate audio channel in the WAV file."
    start(): "separate records each side of the conversation to a separate audio channel in the WAV file."
    start(): "The optional argument recording_mode is either mixed or separate."
    record(): "When recording separate channels file_format must be one of alaw, ulaw, u8bit and
    s16bit , and max_bytes, milliseconds_max_silence and milliseconds_initial_silence are ignored."

    Decided: channel 1 (left) is the inbound leg, channel 2 (right) the outbound leg,
    sample-aligned: sample n of each channel is the same instant of the call.
    """
    a, b = _noise(8000, 3), _noise(8000, 4)
    b[:1234] = 0  # the far end starts talking later: the offset must survive
    rec = call.WholeCallRecorder
    assert rec.start(name(), file_format=file_format, recording_mode="separate")
    feed(call, a, b)
    assert rec.stop() and rec.cause() is Cause.ABORTED
    info = read_info(rec.last_result.path)
    assert (info.channels, info.format_tag) == (2, CODECS[file_format].format_tag)
    data, _ = read(rec.last_result.path)
    assert data.shape == (8000, 2)
    if file_format == "s16bit":
        expect_a, expect_b = a, b
    else:  # lossy 8-bit codecs: compare against the leg itself, to the codec's error
        expect_a, expect_b = a.astype(int), b.astype(int)
    if file_format == "alaw":
        assert np.array_equal(data[:, 0], alaw_exact(a)) and np.array_equal(data[:, 1], alaw_exact(b))
    else:
        tol = 0 if file_format == "s16bit" else 1200  # u8bit: 256 steps; ulaw: well inside
        assert np.abs(data[:, 0].astype(int) - expect_a).max() <= tol
        assert np.abs(data[:, 1].astype(int) - expect_b).max() <= tol
    # Alignment, independently of the codec: the cross-correlation peaks at lag 0.
    for ch, leg in ((0, a), (1, b)):
        c = np.correlate(data[:, ch].astype(float), leg.astype(float), "full")
        assert int(np.argmax(c)) - (len(leg) - 1) == 0


def test_separate_ignores_size_and_silence_limits(call, sent, name):
    """record(): "When recording separate channels file_format must be one of alaw, ulaw, u8bit and
    s16bit , and max_bytes, milliseconds_max_silence and milliseconds_initial_silence are ignored."
    start(): "When recording separate channels file_format must be one of alaw, ulaw, u8bit and
    s16bit , and max_bytes, milliseconds_max_silence and milliseconds_initial_silence are ignored."
    """
    rec = call.WholeCallRecorder
    assert rec.start(name(), recording_mode="separate", max_bytes=100, milliseconds_max_silence=100,
                     milliseconds_initial_silence=100)
    audio = np.concatenate([silence(1.0), tone(440, 0.5), silence(1.0)])
    feed(call, audio, audio)
    assert rec.state() is RecorderState.RECORDING
    assert rec.stop() and rec.cause() is Cause.ABORTED
    assert rec.last_result.samples == len(audio)  # leading and trailing silence kept
    assert rec.last_result.bytes == 58 + 2 * len(audio)  # far above max_bytes
    assert (sent[-1].max_bytes, sent[-1].ms_max_silence, sent[-1].ms_initial_silence) == (0, 0, 0)


@pytest.mark.parametrize("rate", [6000, 11025])
def test_separate_at_other_rates(call, name, rate):
    """start(): "separate records each side of the conversation to a separate audio channel in the WAV file."
    start(): "The default is 8000, other options are 6000, 11000 and 11025."
    """
    rec = call.WholeCallRecorder
    assert rec.start(name(), rate=rate, recording_mode="separate")
    feed(call, tone(500, 0.5), tone(1500, 0.5))
    assert rec.stop()
    from conformance_helpers import has_tone

    data, file_rate = read(rec.last_result.path)
    assert file_rate == rate and data.shape[1] == 2
    assert has_tone(data[:, 0], 500, rate) and not has_tone(data[:, 0], 1500, rate)
    assert has_tone(data[:, 1], 1500, rate) and not has_tone(data[:, 1], 500, rate)


def test_separate_record_ends_with_hangup(call, name):
    """record(): "separate records each side of the conversation to a separate audio channel in the WAV file."
    Cause: "record ended due to a call hangup."
    """
    rec = call.WholeCallRecorder
    assert rec.start(name(), recording_mode="separate")
    feed(call, tone(500, 0.3), None)
    call.hang_up()
    assert rec.cause() is Cause.HANGUP
    data, _ = read(rec.last_result.path)
    assert data.shape == (2400, 2)
