"""Pause and resume (an extension of the spec): no audio of a paused span reaches the
file, in any format, mode or rate; the pause is exact to the sample even while audio
flows and the worker is reading; paused time counts toward neither silence limit."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import numpy as np
import pytest
import soundfile as sf

from tests.codecs.codectools import oki_decode_model
from tests.conftest import feed, tone
from wholecall.controller import Cause, Error
from wholecall.formats.codecs import FORMATS
from wholecall.formats.wav import read_info
from wholecall.worker.codecs.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from wholecall.worker.codecs.pcm import u8_decode, u8_encode

PRE, SECRET, POST = 8000, 4000, 8000  # samples: 1 s of speech-like tone, 0.5 s paused, 1 s more
SECRET_HZ = 1000.0


def decode(path: str, file_format: str) -> np.ndarray:
    """The file's samples as int16, (frames, channels)."""
    if file_format == "oki":
        info = read_info(path)
        with open(path, "rb") as f:
            f.seek(info.data_offset)
            data = f.read(info.data_size)
        return oki_decode_model(data).reshape(-1, 1)
    data, _ = sf.read(path, dtype="int16", always_2d=True)
    return data


def silence_of(file_format: str) -> int:
    """What digital silence decodes to in `file_format`."""
    zero = np.zeros(1, np.int16)
    if file_format == "alaw":
        return int(alaw_decode(alaw_encode(zero))[0])
    if file_format == "ulaw":
        return int(ulaw_decode(ulaw_encode(zero))[0])
    return 0


def level_at(x: np.ndarray, hz: float, rate: int) -> float:
    """Amplitude of the `hz` component of `x` (a single-bin DFT, normalised)."""
    t = np.arange(len(x)) / rate
    return float(2 * abs(np.dot(x.astype(np.float64), np.exp(-2j * np.pi * hz * t))) / max(1, len(x)))


def record_with_secret(ctl, name: str, mode: str, **start) -> tuple:
    """Record PRE samples, pause at the boundary, a SECRET_HZ tone that starts exactly at
    the request, resume, POST samples. Returns (result, the inbound signal's parts)."""
    ch = ctl.incoming_call()
    ch.answer()
    rec = ch.WholeCallRecorder
    pre, secret, post = tone(440, PRE / 8000, 6000), tone(SECRET_HZ, SECRET / 8000, 8000), tone(440, POST / 8000, 6000)
    assert rec.start(name, **start)
    feed(ch, pre, np.zeros(PRE, np.int16))
    assert rec.pause(mode) is True
    assert rec.paused == mode
    feed(ch, secret, np.zeros(SECRET, np.int16))
    assert rec.resume() is True
    feed(ch, post, np.zeros(POST, np.int16))
    assert rec.stop()
    ch.close()
    return rec.last_result, pre, post


@pytest.mark.parametrize("mode", ["silence", "skip"])
def test_a_tone_that_starts_at_the_pause_is_in_no_format(make_controller, mode):
    ctl = make_controller(workers=2)
    cases = [(f, 8000, "mixed") for f in FORMATS] + [("s16bit", 11025, "mixed"), ("alaw", 6000, "mixed"),
                                                     ("alaw", 8000, "separate"), ("s16bit", 8000, "separate")]
    results = {}
    threads = []

    def one(case):
        f, rate, rmode = case
        results[case] = record_with_secret(ctl, f"{f}-{rate}-{rmode}.wav", mode, file_format=f, rate=rate,
                                           recording_mode=rmode)

    for case in cases:
        t = threading.Thread(target=one, args=(case,))
        t.start()
        threads.append(t)
    for t in threads:
        t.join(60)
    assert set(results) == set(cases)
    for (f, rate, rmode), (res, pre, post) in results.items():
        what = f"{f} {rate} Hz {rmode} ({mode})"
        assert res.cause is Cause.ABORTED, what
        x = decode(res.path, f)
        side = json.load(open(res.sidecar))
        [span] = side["paused"]
        assert span["mode"] == mode and span["offset_s"] == PRE / 8000 and span["call_seconds"] == SECRET / 8000, what
        scale = rate / 8000
        n_expected = PRE + POST + (SECRET if mode == "silence" else 0)
        assert abs(len(x) - n_expected * scale) <= 2 + (505 if f == "ima" else 0), (what, len(x))
        exact = rate == 8000 and f in ("alaw", "ulaw", "s16bit", "u8bit")
        if exact:
            # Sample for sample: the audio before and after, and nothing (or silence) between.
            ref = {"alaw": lambda s: alaw_decode(alaw_encode(s)), "ulaw": lambda s: ulaw_decode(ulaw_encode(s)),
                   "s16bit": lambda s: s, "u8bit": lambda s: u8_decode(u8_encode(s))}[f]
            leg = x[:, 0]
            np.testing.assert_array_equal(leg[:PRE], ref(pre), err_msg=what)
            if mode == "silence":
                assert (leg[PRE:PRE + SECRET] == silence_of(f)).all(), what
                np.testing.assert_array_equal(leg[PRE + SECRET:], ref(post), err_msg=what)
            else:
                np.testing.assert_array_equal(leg[PRE:], ref(post), err_msg=what)
        # Every format: no trace of the secret tone anywhere in the file.
        mono = x[:, 0].astype(np.float64)
        assert level_at(mono, SECRET_HZ, rate) < 8000 * 0.01, what
        if mode == "silence":
            a, b = int(PRE * scale) + 40, int((PRE + SECRET) * scale) - 40
            assert np.sqrt(np.mean(mono[a:b] ** 2)) < 60, what  # ADPCM settles to near zero, others exactly


def test_pause_is_exact_while_audio_flows(make_controller):
    """A producer writes a position-coded ramp as fast as the rings take it while the
    worker reads; pauses and resumes land at arbitrary moments. Every paused span in the
    file is digital silence at exactly the sidecar's offsets, and everything else is the
    ramp without a sample missing or repeated."""
    ctl = make_controller(workers=1)
    ch = ctl.incoming_call()
    ch.answer()
    rec = ch.WholeCallRecorder
    assert rec.start("ramp.wav", file_format="s16bit", dtmf_elim=False)
    total = 8000 * 8
    stop = threading.Event()

    def produce():
        zero = np.zeros(160, np.int16)
        for p in range(0, total, 160):
            ramp = ((np.arange(p, p + 160) % 30000) + 1).astype(np.int16)
            ch.inbound.write(ramp)
            ch.outbound.write(zero)
            time.sleep(0.004)  # faster than real time, slow enough for pauses to land inside
        stop.set()

    t = threading.Thread(target=produce)
    t.start()
    rng = np.random.default_rng(7)
    pauses = 0
    while not stop.is_set() and pauses < 6:
        stop.wait(float(rng.uniform(0.01, 0.1)))
        assert rec.pause("silence")
        stop.wait(float(rng.uniform(0.0, 0.04)))
        assert rec.resume()
        pauses += 1
    t.join(60)
    assert rec.stop()
    res = rec.last_result
    x = sf.read(res.path, dtype="int16")[0].astype(np.int64)
    side = json.load(open(res.sidecar))
    assert len(side["paused"]) == pauses >= 3
    silent = np.zeros(len(x), bool)
    for s in side["paused"]:
        a = round(s["offset_s"] * 8000)
        n = round(s["call_seconds"] * 8000)
        silent[a:a + n] = True
    assert (x[silent] == 0).all()
    assert (x[~silent] != 0).all()  # nothing else is silence: not one sample of a span more
    # The ramp goes on through each silent span as if it had been recorded: exact positions.
    idx = np.flatnonzero(~silent)
    expected = (x[idx[0]] - 1 + (idx - idx[0])) % 30000 + 1
    np.testing.assert_array_equal(x[idx], expected)


def test_paused_time_counts_toward_no_silence_limit(make_controller):
    ctl = make_controller(workers=1)
    loud, quiet = tone(440, 0.5, 6000), np.zeros(16000, np.int16)
    # Control: without a pause, 2 s of silence ends the recording (max 500 ms).
    ch = ctl.incoming_call()
    ch.answer()
    rec = ch.WholeCallRecorder
    assert rec.start("control.wav", milliseconds_max_silence=500)
    feed(ch, loud, None)
    feed(ch, quiet, None)
    assert rec.wait_until_finished(10) is Cause.SILENCE
    # Paused: the same 2 s do not count; nor do they toward the initial silence.
    ch2 = ctl.incoming_call()
    ch2.answer()
    rec2 = ch2.WholeCallRecorder
    assert rec2.start("paused.wav", milliseconds_max_silence=500, milliseconds_initial_silence=400)
    assert rec2.pause("skip")
    feed(ch2, quiet, quiet)
    assert rec2.resume()
    feed(ch2, loud, np.zeros(len(loud), np.int16))
    assert rec2.pause()
    feed(ch2, quiet, quiet)
    assert rec2.resume()
    feed(ch2, loud, np.zeros(len(loud), np.int16))
    assert rec2.stop()
    assert rec2.cause() is Cause.ABORTED
    assert rec2.last_result.audio_detected is True


def test_pause_errors_and_idempotence(answered):
    rec = answered.WholeCallRecorder
    with pytest.raises(Error, match="cannot pause the whole call recorder: it is IDLE"):
        rec.pause()
    assert rec.start("e.wav")
    with pytest.raises(Error, match="mode must be 'silence' or 'skip'"):
        rec.pause("mute")
    assert rec.resume() is False
    assert rec.pause("skip") is True
    assert rec.pause("silence") is False and rec.paused == "skip"
    assert rec.stop()
    assert rec.paused == ""
    with pytest.raises(Error, match="cannot resume"):
        rec.resume()


def test_a_paused_job_stays_paused_across_a_worker_takeover(make_controller):
    """The worker recording a paused job is killed; the job's new worker gets its pause
    requests again: the secret written after the kill is still not in the file."""
    ctl = make_controller(workers=2)
    ch = ctl.incoming_call()
    ch.answer()
    rec = ch.WholeCallRecorder
    assert rec.start("taken.wav", file_format="s16bit", dtmf_elim=False)
    pre, secret, post = tone(440, 1.0, 6000), tone(SECRET_HZ, 1.0, 8000), tone(440, 1.0, 6000)
    feed(ch, pre, np.zeros(len(pre), np.int16))
    assert rec.pause("skip")
    feed(ch, secret[:4000], np.zeros(4000, np.int16))
    victim = rec._worker
    os.kill(ctl.supervisor.workers[victim].proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while ctl.stats()["restarts"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    feed(ch, secret[4000:], np.zeros(4000, np.int16))
    assert rec.resume()
    feed(ch, post, np.zeros(len(post), np.int16))
    assert rec.stop()
    x = sf.read(rec.last_result.path, dtype="int16")[0]
    assert level_at(x.astype(np.float64), SECRET_HZ, 8000) < 80
    np.testing.assert_array_equal(x[:len(pre)], pre)
    np.testing.assert_array_equal(x[-len(post):], post)
    assert len(x) == len(pre) + len(post)
