"""SILENCE: milliseconds_initial_silence and milliseconds_max_silence, measured on the
recorded audio (never on the wall clock), with the trimmed-tail and pre-roll rules,
against real workers.

Known audio: tone bursts at -15 dBFS, then digital silence or low noise. Lengths are
checked in samples to +-1 frame (20 ms). Producers write faster than real time unless
a test says otherwise. The decision is taken on the audio after the DTMF look-ahead
(a fixed delay line, `DELAY`), so a limit is met once limit + look-ahead has been written.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from conformance_helpers import (
    DELAY,
    FRAME,
    HANGOVER,
    PREROLL_MAX,
    TAIL_MAX,
    alaw_exact,
    feed,
    feed_both,
    is_digital_silence,
    loud_span,
    noise,
    read,
    silence,
    tone,
    wait_for,
)
from conftest import make_controller

from wholecall.controller import Cause, RecorderState
from wholecall.formats.wav import read_info

LOOKAHEAD = DELAY + FRAME  # audio to write past a limit so the delayed decision surely sees it


def _ended(rec, timeout: float = 5.0) -> Cause:
    cause = rec.wait_until_finished(timeout)
    assert cause is not Cause.TIMEOUT, "the job did not end"
    return cause


def test_max_silence_ends_with_silence_and_trims_the_tail(call, name):
    """record(): "the amount of silence (in milliseconds) after which to stop recording.
    Default is 0 seconds (no limit)."
    start(): "the amount of silence after which to stop recording. Default is 0 seconds (no limit)."
    Cause: "record has stopped due to a silence timeout."
    start(): "This could be that the maximum file size (max_bytes) has been reached; the
    silence timeout (milliseconds_max_silence) has been triggered or the initial silence
    timeout (milliseconds_initial_silence) has been triggered."

    Decided: the silent tail is trimmed, keeping the 200 ms hangover (at most 250 ms).
    """
    rec = call.WholeCallRecorder
    x = tone(440, 1.0)
    assert rec.start(name(), milliseconds_max_silence=1000)
    feed_both(call, np.concatenate([x, silence(1.5)]))
    assert _ended(rec) is Cause.SILENCE
    data, _ = read(rec.last_result.path)
    assert abs(len(data) - (len(x) + HANGOVER)) <= FRAME
    assert np.array_equal(data[:len(x)], alaw_exact(x))  # the burst, whole
    tail = data[len(x):]
    assert len(tail) <= TAIL_MAX and is_digital_silence(tail)


def test_max_silence_is_measured_on_audio_not_wall_clock(call, name):
    """record(): "the amount of silence (in milliseconds) after which to stop recording.
    Default is 0 seconds (no limit)."
    Cause: "record has stopped due to a silence timeout."

    Wall-clock time without audio is not silence; audio delivered in a burst is timed
    by its samples: the job ends once limit (+ the fixed look-ahead) of silence was written.
    """
    rec = call.WholeCallRecorder
    limit_ms = 500
    assert rec.start(name(), milliseconds_max_silence=limit_ms)
    feed_both(call, tone(440, 0.4))
    time.sleep(0.8)  # longer than the limit, but no audio at all
    assert rec.state() is RecorderState.RECORDING
    feed_both(call, silence(limit_ms / 1000 - FRAME / 8000))  # one frame short of the limit
    time.sleep(0.3)
    assert rec.state() is RecorderState.RECORDING and rec.cause() is Cause.NONE
    feed_both(call, silence((FRAME + LOOKAHEAD) / 8000))
    assert _ended(rec) is Cause.SILENCE
    data, _ = read(rec.last_result.path)
    assert abs(len(data) - (3200 + HANGOVER)) <= FRAME


def test_paced_and_burst_producers_give_the_same_file(call, other_call, name):
    """record(): "the amount of silence (in milliseconds) after which to stop recording.
    Default is 0 seconds (no limit)."

    One call fed at real time, one fed all at once: same cause, same file.
    """
    audio = np.concatenate([tone(700, 0.3), silence(0.2), tone(500, 0.3), silence(0.5)])
    results = []
    for ch, paced in ((call, True), (other_call, False)):
        rec = ch.WholeCallRecorder
        assert rec.start(name(), milliseconds_max_silence=400)
        t0 = time.monotonic()
        for i in range(0, len(audio), FRAME):
            feed_both(ch, audio[i:i + FRAME])
            if paced:
                delay = t0 + (i + FRAME) / 8000 - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        assert _ended(rec) is Cause.SILENCE
        results.append(read(rec.last_result.path)[0])
    assert np.array_equal(results[0], results[1])
    assert abs(len(results[0]) - (6400 + HANGOVER)) <= FRAME


def test_max_silence_counts_only_after_audio_was_heard(call, name):
    """start(): "the amount of silence after which to stop recording. Default is 0 seconds (no limit)."

    Decided (DESIGN): milliseconds_max_silence starts counting once audio has been
    heard; leading silence is the business of milliseconds_initial_silence.
    """
    rec = call.WholeCallRecorder
    assert rec.start(name(), milliseconds_max_silence=300)
    feed_both(call, silence(1.0))
    time.sleep(0.3)
    assert rec.state() is RecorderState.RECORDING
    feed_both(call, np.concatenate([tone(440, 0.2), silence(0.5)]))
    assert _ended(rec) is Cause.SILENCE
    data, _ = read(rec.last_result.path)
    assert abs(len(data) - (8000 + 1600 + HANGOVER)) <= FRAME  # leading silence kept: no initial limit


def test_initial_silence_without_audio_ends_with_an_empty_valid_wav(call, name):
    """record(): "the amount of silence (in milliseconds) to wait for audio before starting
    the recording. Default is 0 seconds (no limit)."
    Cause: "record has stopped due to a silence timeout."

    Decided: no audio within the limit ends the job with SILENCE; the file is a valid
    WAV (here with no samples).
    """
    rec = call.WholeCallRecorder
    assert rec.start(name(), milliseconds_initial_silence=600)
    feed_both(call, silence(0.6 + LOOKAHEAD / 8000))
    assert _ended(rec) is Cause.SILENCE
    path = rec.last_result.path
    info = read_info(path)
    assert info.data_size == 0 and info.file_size == info.data_offset
    data, rate = read(path)
    assert len(data) == 0 and rate == 8000


def test_initial_silence_is_measured_on_audio_not_wall_clock(call, name):
    """start(): "the amount of silence (in milliseconds) to wait for audio before starting
    the recording. Default is 0 seconds (no limit)."
    """
    rec = call.WholeCallRecorder
    assert rec.start(name(), milliseconds_initial_silence=500)
    time.sleep(0.8)  # no audio: no time has passed for the call
    assert rec.state() is RecorderState.RECORDING
    feed_both(call, silence(0.4))
    time.sleep(0.2)
    assert rec.state() is RecorderState.RECORDING
    x = tone(440, 0.5)
    feed_both(call, x)
    assert rec.stop()
    assert rec.cause() is Cause.ABORTED
    data, _ = read(rec.last_result.path)
    lead = len(data) - len(x)
    assert 0 < lead <= PREROLL_MAX and is_digital_silence(data[:lead])
    assert np.array_equal(data[lead:], alaw_exact(x))


@pytest.mark.parametrize("lead_s", [1.0, 0.1])
def test_initial_silence_drops_leading_silence_with_a_short_preroll(call, name, lead_s):
    """record(): "the amount of silence (in milliseconds) to wait for audio before starting
    the recording. Default is 0 seconds (no limit)."

    Decided: the file starts when audio is first heard, with at most 250 ms of what came
    before (the pre-roll); the audio itself is complete.
    """
    rec = call.WholeCallRecorder
    x = tone(600, 0.5)
    assert rec.start(name(), milliseconds_initial_silence=3000)
    feed_both(call, np.concatenate([silence(lead_s), x]))
    assert rec.stop() and rec.cause() is Cause.ABORTED
    data, _ = read(rec.last_result.path)
    lead = len(data) - len(x)
    assert 0 <= lead <= min(PREROLL_MAX, int(lead_s * 8000))
    assert is_digital_silence(data[:lead])
    assert np.array_equal(data[lead:], alaw_exact(x))
    if lead_s * 8000 <= PREROLL_MAX:
        assert lead == int(lead_s * 8000)  # shorter than the pre-roll: all of it kept


def test_initial_then_max_silence(call, name):
    """start(): "This could be that the maximum file size (max_bytes) has been reached; the
    silence timeout (milliseconds_max_silence) has been triggered or the initial silence
    timeout (milliseconds_initial_silence) has been triggered."
    record(): "This could be that the maximum file size (max_bytes) has been reached; the
    silence timeout (milliseconds_max_silence) has been triggered or the initial silence
    timeout (milliseconds_initial_silence) has been triggered."

    Both limits on one job: leading silence cut to the pre-roll, the burst whole, the
    tail cut to the hangover.
    """
    rec = call.WholeCallRecorder
    x = tone(440, 1.0)
    assert rec.start(name(), milliseconds_initial_silence=3000, milliseconds_max_silence=1000)
    feed_both(call, np.concatenate([silence(1.0), x, silence(1.5)]))
    assert _ended(rec) is Cause.SILENCE
    data, _ = read(rec.last_result.path)
    first, last = loud_span(data)
    assert first <= PREROLL_MAX and is_digital_silence(data[:first])
    assert np.array_equal(data[first - 1:first - 1 + len(x)], alaw_exact(x))  # sin(0) = 0
    assert abs(len(data) - (first - 1 + len(x) + HANGOVER)) <= FRAME


def test_initial_silence_timeout_before_audio_even_with_max_silence(call, name):
    """Cause: "record has stopped due to a silence timeout."
    record(): "This could be that the maximum file size (max_bytes) has been reached; the
    silence timeout (milliseconds_max_silence) has been triggered or the initial silence
    timeout (milliseconds_initial_silence) has been triggered."
    """
    rec = call.WholeCallRecorder
    assert rec.start(name(), milliseconds_initial_silence=400, milliseconds_max_silence=100)
    feed_both(call, silence(0.6))
    assert _ended(rec) is Cause.SILENCE
    assert rec.last_result.samples == 0


def test_zero_means_no_silence_limits(call, name):
    """record(): "To turn off the termination conditions, max_bytes=0 means no limit;
    milliseconds_max_silence=0 means no silence timeout and milliseconds_initial_silence=0
    means no initial silence timeout."
    start(): "To turn off the termination conditions, max_bytes=0 means no limit;
    milliseconds_max_silence=0 means no silence timeout and milliseconds_initial_silence=0
    means no initial silence timeout."
    record(): "The recording will continue until one of the termination conditions applies."
    start(): "The recording will continue until one of the termination conditions applies."
    """
    rec = call.WholeCallRecorder
    audio = np.concatenate([silence(2.0), tone(440, 0.2), silence(2.0)])
    assert rec.start(name(), max_bytes=0, milliseconds_max_silence=0, milliseconds_initial_silence=0)
    feed_both(call, audio)
    time.sleep(0.3)
    assert rec.state() is RecorderState.RECORDING
    assert rec.stop() and rec.cause() is Cause.ABORTED
    data, _ = read(rec.last_result.path)
    assert len(data) == len(audio)


def test_low_noise_is_silence_and_speech_level_noise_is_not(call, other_call, name):
    """record(): "the amount of silence (in milliseconds) after which to stop recording.
    Default is 0 seconds (no limit)."

    Decided: silence is a level, not digital zero: a 20 ms frame below the Controller's
    silence_dbfs (default -45 dBFS) is silent. Line noise at -60 dBFS ends the job;
    noise at -40 dBFS (quiet speech level) does not. The kept tail is the noise as recorded.
    """
    x = tone(440, 0.6)
    rec = call.WholeCallRecorder
    assert rec.start(name(), milliseconds_max_silence=500)
    hiss = noise(1.0, -60, seed=1)
    feed_both(call, np.concatenate([x, hiss]))
    assert _ended(rec) is Cause.SILENCE
    data, _ = read(rec.last_result.path)
    assert abs(len(data) - (len(x) + HANGOVER)) <= FRAME
    assert np.array_equal(data[len(x):], alaw_exact(hiss)[:len(data) - len(x)])

    rec2 = other_call.WholeCallRecorder
    assert rec2.start(name(), milliseconds_max_silence=500)
    feed_both(other_call, np.concatenate([x, noise(1.5, -40, seed=2)]))
    time.sleep(0.3)
    assert rec2.state() is RecorderState.RECORDING
    assert rec2.stop() and rec2.cause() is Cause.ABORTED
    assert rec2.last_result.samples == len(x) + 12000


@pytest.fixture(scope="module")
def quiet_service(tmp_path_factory):
    """A controller configured with a higher silence threshold and a shorter hangover."""
    ctl = make_controller(str(tmp_path_factory.mktemp("quiet")), workers=1, silence_dbfs=-30.0,
                          silence_hangover_ms=100)
    yield ctl
    ctl.close()


def test_silence_threshold_and_hangover_are_controller_settings(quiet_service, name):
    """start(): "the amount of silence after which to stop recording. Default is 0 seconds (no limit)."

    Decided: what counts as silence is `Config.silence_dbfs` and the kept tail is
    `Config.silence_hangover_ms`, documented settings of the Controller, sent to the
    worker with each job (no constant inside the worker).
    """
    from wholecall.controller import Controller

    assert Controller().config.silence_dbfs == -45.0  # the documented default
    ch = quiet_service.incoming_call()
    ch.answer()
    try:
        rec = ch.WholeCallRecorder
        x = tone(440, 0.6)
        assert rec.start(name(), milliseconds_max_silence=500)
        feed_both(ch, np.concatenate([x, noise(1.0, -35, seed=3)]))  # not silent at -45, silent at -30
        assert _ended(rec) is Cause.SILENCE
        data, _ = read(rec.last_result.path)
        assert abs(len(data) - (len(x) + 800)) <= FRAME  # 100 ms hangover
    finally:
        ch.close()


def test_threshold_boundary(call, other_call, name):
    """record(): "the amount of silence (in milliseconds) after which to stop recording.
    Default is 0 seconds (no limit)."

    3 dB either side of the default -45 dBFS threshold.
    """
    x = tone(440, 0.4)
    below, above = call.WholeCallRecorder, other_call.WholeCallRecorder
    assert below.start(name(), milliseconds_max_silence=300)
    assert above.start(name(), milliseconds_max_silence=300)
    feed_both(call, np.concatenate([x, noise(0.6, -48, seed=4)]))
    feed_both(other_call, np.concatenate([x, noise(0.6, -42, seed=5)]))
    assert _ended(below) is Cause.SILENCE
    time.sleep(0.2)
    assert above.state() is RecorderState.RECORDING
    assert above.stop() and above.cause() is Cause.ABORTED


def test_silence_on_either_leg_counts_for_the_mix(call, name):
    """record(): "The default is mixed, which records a single channel containing a mix of
    both sides of the conversation."
    Cause: "record has stopped due to a silence timeout."

    In mixed mode silence is silence of the mix: one side talking keeps the job going.
    """
    rec = call.WholeCallRecorder
    assert rec.start(name(), milliseconds_max_silence=400)
    talk = np.concatenate([tone(440, 0.4), silence(0.6), tone(440, 0.4)])
    other = np.concatenate([silence(0.4), tone(880, 0.6), silence(0.4)])
    feed(call, talk, other)
    time.sleep(0.2)
    assert rec.state() is RecorderState.RECORDING
    feed_both(call, silence(0.6))
    assert _ended(rec) is Cause.SILENCE
    assert abs(rec.last_result.samples - (len(talk) + HANGOVER)) <= FRAME
    assert wait_for(lambda: rec.state() is RecorderState.IDLE)


@pytest.mark.parametrize("file_format", ["alaw", "ulaw", "oki", "ima", "s16bit", "u8bit"])
@pytest.mark.parametrize("rate", [6000, 8000, 11025])
def test_silence_trimming_holds_for_every_format_and_rate(call, name, file_format, rate):
    """record(): "This could be that the maximum file size (max_bytes) has been reached; the
    silence timeout (milliseconds_max_silence) has been triggered or the initial silence
    timeout (milliseconds_initial_silence) has been triggered."
    start(): "the amount of silence after which to stop recording. Default is 0 seconds (no limit)."

    Pre-roll and tail are decided on the call's 8 kHz audio and carried to the file's
    rate: to one frame (at the file's rate), or half an IMA block.
    """
    from wholecall.formats.codecs import CODECS

    rec = call.WholeCallRecorder
    assert rec.start(name(), file_format=file_format, rate=rate, milliseconds_initial_silence=2000,
                     milliseconds_max_silence=500)
    feed_both(call, np.concatenate([silence(1.0), tone(440, 1.0), silence(1.0)]))
    assert _ended(rec) is Cause.SILENCE
    expected = (1920 + 8000 + HANGOVER) * rate / 8000
    slack = max(FRAME * rate / 8000, CODECS[file_format].unit_frames / 2 + 1)
    assert abs(rec.last_result.samples - expected) <= slack
