"""Silence limits on real speech with natural pauses and line noise (issue 5).

SILENCE must fire within one 20 ms frame of `milliseconds_max_silence` after the last
speech, measured on the audio, and never during the shorter pauses inside speech.
"""

import time

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import feed
from tests.speech import line_noise, say
from wholecall.controller import Cause
from wholecall.worker.silence import dbfs_to_mean_square

FRAME = 160
LIMIT_MS = 1200


def conversation():
    """Sentences separated by pauses of 0.4-0.9 s (all shorter than the limit), over line noise."""
    parts = []
    for text, voice, pause in ([
        ("Good morning, I am calling about my order.", "en", 0.6),
        ("It was meant to arrive on Tuesday.", "en-us", 0.9),
        ("Can you tell me where it is?", "en", 0.4),
        ("Thanks.", "en-gb", 0.0),
    ]):
        parts.append(say(text, voice=voice, speed=165))
        if pause:
            parts.append(np.zeros(int(pause * 8000), np.int16))
    speech = np.concatenate(parts)
    return speech


def mix_frames_loud(inbound, outbound, threshold_dbfs):
    """Which 20 ms frames of the mix are loud, exactly as the worker judges them."""
    n = min(len(inbound), len(outbound)) // FRAME * FRAME
    mix = np.clip(inbound[:n].astype(np.float64) + outbound[:n], -32768, 32767).reshape(-1, FRAME)
    return (mix ** 2).mean(axis=1) > dbfs_to_mean_square(threshold_dbfs)


@pytest.mark.parametrize("noise_dbfs", [-60, -50])
def test_silence_fires_one_limit_after_the_last_speech(ctl, noise_dbfs):
    speech = conversation()
    tail = int((LIMIT_MS / 1000 + 1.0) * 8000)
    inbound = np.concatenate([speech, np.zeros(tail, np.int16)])
    inbound = np.clip(inbound.astype(np.int32) + line_noise(len(inbound), noise_dbfs, 1), -32768, 32767).astype(np.int16)
    outbound = line_noise(len(inbound), noise_dbfs - 3, 2)
    loud = mix_frames_loud(inbound, outbound, ctl.config.silence_dbfs)
    last = int(np.flatnonzero(loud)[-1])  # the last loud frame
    # Pauses inside the speech never reach the limit:
    runs = np.diff(np.flatnonzero(np.r_[True, loud[:last + 1], True])) - 1
    assert runs.max() * FRAME < LIMIT_MS * 8
    fire_at = (last + 1) * FRAME + LIMIT_MS * 8  # samples into the call where the limit is reached

    # The caller speaks again one frame before / one frame after the limit is reached:
    # the first call must go on, the second must have ended with SILENCE.
    again = say("Hello? Are you still there?", voice="en", speed=170)
    results = {}
    for label, upto in (("short", fire_at - FRAME), ("long", fire_at + FRAME)):
        ch = ctl.incoming_call()
        ch.answer()
        rec = ch.WholeCallRecorder
        assert rec.start(f"sil-{noise_dbfs}-{label}.wav", file_format="s16bit", milliseconds_max_silence=LIMIT_MS)
        feed(ch, np.concatenate([inbound[:upto], again]), np.concatenate([outbound[:upto], outbound[:len(again)]]))
        results[label] = (ch, rec)
    short_ch, short = results["short"]
    long_ch, long = results["long"]
    assert long.wait_until_finished(10) is Cause.SILENCE
    time.sleep(0.7)  # the worker has all of the short job's audio well within this (skew 0.5 s)
    assert short.state() is short.State.RECORDING, "fired before the limit"
    assert short.stop() and short.cause() is Cause.ABORTED
    # The silent tail is trimmed, keeping the configured hangover after the last loud frame.
    data, _ = sf.read(long.last_result.path, dtype="int16")
    keep = (last + 1) * FRAME + ctl.config.silence_hangover_ms * 8
    assert abs(len(data) - keep) <= FRAME
    expected = np.clip(inbound[:len(data)].astype(int) + outbound[:len(data)], -32768, 32767)
    assert np.array_equal(data, expected)
