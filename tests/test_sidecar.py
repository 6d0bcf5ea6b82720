"""The metadata sidecar: written after the file is final, valid against the documented
schema, with digits and paused spans at their offsets in the file; min_seconds;
audio_detected; `wholecall info`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import feed, sidecar_problems, tone
from wholecall.controller import AESCBCCipher, Cause, Error
from wholecall.controller.cipher import new_iv, new_key
from wholecall.controller.media import dtmf_tone
from wholecall.controller.sidecar import sha256_file


def test_sidecar_describes_the_final_file(make_controller, tmp_path):
    ctl = make_controller(workers=1)
    ch = ctl.incoming_call()
    ch.answer()
    rec = ch.WholeCallRecorder
    assert rec.start("s.wav", file_format="ulaw", dtmf_elim=True)
    feed(ch, tone(440, 0.5, 6000), np.zeros(4000, np.int16))
    digit = np.concatenate([dtmf_tone("5", 100), np.zeros(1200, np.int16)])
    feed(ch, digit, np.zeros(len(digit), np.int16))
    assert rec.pause("skip")
    feed(ch, np.concatenate([dtmf_tone("9", 100), np.zeros(800, np.int16)]), None)  # keyed while paused
    assert rec.resume()
    feed(ch, tone(440, 0.5, 6000), np.zeros(4000, np.int16))
    assert rec.stop()
    res = rec.last_result
    side = json.load(open(res.path + ".json"))
    assert res.sidecar == res.path + ".json"
    assert side["sha256"] == sha256_file(res.path) and side["bytes"] == os.path.getsize(res.path) == res.bytes
    assert side["format"] == "ulaw" and side["rate"] == 8000 and side["mode"] == "mixed"
    assert side["samples"] == res.samples and side["cause"] == "ABORTED" and side["audio_detected"] is True
    assert side["start"].endswith("Z") and side["start"] <= side["end"]
    # The in-band 5 at 0.5 s into the file (its muted onset); the 9 keyed while paused is not listed.
    assert [d["digit"] for d in side["digits"]] == ["5"]
    assert side["digits"][0]["source"] == "inband" and side["digits"][0]["leg"] == "inbound"
    assert abs(side["digits"][0]["offset_s"] - 0.5) < 0.03
    [span] = side["paused"]
    assert span["mode"] == "skip" and span["file_seconds"] == 0 and span["offset_s"] == 0.5 + len(digit) / 8000
    assert side["encryption"] is None and side["media"] is None
    assert not sidecar_problems(os.path.dirname(res.path))
    # wholecall info: the sidecar beside the file's own facts, and when they disagree.
    info = subprocess.run([sys.executable, "-m", "wholecall.cli.main", "info", res.path], capture_output=True, text=True)
    assert info.returncode == 0, info.stderr
    out = json.loads(info.stdout)
    assert out["sidecar"]["sha256"] == side["sha256"] and out["file"]["sha256"] == side["sha256"]
    assert out["disagreements"] == []
    with open(res.path, "ab") as f:
        f.write(b"\0\0")
    info = subprocess.run([sys.executable, "-m", "wholecall.cli.main", "info", res.path], capture_output=True, text=True)
    assert info.returncode == 1
    assert {d["field"] for d in json.loads(info.stdout)["disagreements"]} >= {"sha256", "bytes"}


@pytest.mark.parametrize("file_format", ["alaw", "ulaw"])
def test_a_digit_in_a_g711_recordings_first_flush_is_placed_in_the_file(make_controller, file_format):
    """A G.711 recording fed in real time writes its flushes (here every 200 ms) on the
    worker's plain path, which once left the file's origin to its last flush: a digit
    keyed before that got no offset at all."""
    ctl = make_controller(workers=1, flush_ms=200)
    ch = ctl.incoming_call()
    ch.answer()
    rec = ch.WholeCallRecorder
    assert rec.start("long.wav", file_format=file_format, dtmf_elim=True)
    digit = np.concatenate([dtmf_tone("5", 100), np.zeros(1200, np.int16)])
    inbound = np.concatenate([tone(440, 0.5, 6000), digit, tone(440, 1.0, 6000)])
    for i in range(0, len(inbound), 800):  # 100 ms at a time, in real time
        feed(ch, inbound[i:i + 800], np.zeros(len(inbound[i:i + 800]), np.int16))
        time.sleep(0.1)
    assert rec.stop()
    res = rec.last_result
    assert res.samples == len(inbound)
    side = json.load(open(res.path + ".json"))
    assert [d["digit"] for d in side["digits"]] == ["5"]
    assert side["digits"][0]["offset_s"] is not None and abs(side["digits"][0]["offset_s"] - 0.5) < 0.03


def test_a_digit_read_past_the_files_end_has_no_offset_in_it():
    """A job ended by max_bytes or a silence limit: the worker read (and heard a digit in)
    audio past the file's last sample, and `end_pos` is how far it read. Such a digit is
    listed without an offset, not at one past the end of the file."""
    from wholecall.controller import sidecar as sc

    notes = sc.JobNotes(start_pos=0, start_t=0.0, min_seconds=0.0, digits=(["5", "inbound", 4000],
                                                                          ["7", "inbound", 21000]))
    doc = sc.build(path="/x/a.wav", notes=notes, end_t=1.0, channel=1, job_id=1, cause="SIZE", error="",
                   file_format="alaw", rate=8000, mode="mixed", nbytes=58 + 20000, samples=20000, duration_s=2.5,
                   sha256="", origin=0, end_pos=24000, audio_detected=True, lost_samples=0, cipher=None)
    assert [(d["digit"], d["offset_s"]) for d in doc["digits"]] == [("5", 0.5), ("7", None)]


def test_min_seconds_discards_and_audio_detected(make_controller):
    ctl = make_controller(workers=1)
    ch = ctl.incoming_call()
    ch.answer()
    rec = ch.WholeCallRecorder
    rec.min_seconds = 1.0
    assert rec.start("short.wav")
    feed(ch, np.zeros(4000, np.int16), np.zeros(4000, np.int16))
    assert rec.stop()
    res = rec.last_result
    assert res.discarded and res.cause is Cause.ABORTED and rec.cause() is Cause.ABORTED
    assert not os.path.exists(res.path) and not os.path.exists(res.path + ".json") and res.sidecar == ""
    assert res.audio_detected is False
    # Long enough: kept; silence only: audio_detected false, in the result and the sidecar.
    rec.min_seconds = 0.25
    assert rec.start("quiet.wav", recording_mode="separate")
    feed(ch, np.zeros(4000, np.int16), np.zeros(4000, np.int16))
    assert rec.stop()
    res = rec.last_result
    assert not res.discarded and os.path.exists(res.path)
    assert res.audio_detected is False and json.load(open(res.sidecar))["audio_detected"] is False
    rec.min_seconds = 0
    with pytest.raises(Error, match="min_seconds must be a non-negative number"):
        rec.min_seconds = -1
        rec.start("bad.wav")
    rec.min_seconds = 0
    assert rec.start("loud.wav", recording_mode="separate")
    feed(ch, np.zeros(4000, np.int16), tone(300, 0.5, 3000))
    assert rec.stop()
    assert rec.last_result.audio_detected is True and json.load(open(rec.last_result.sidecar))["audio_detected"]


def test_encrypted_sidecar_names_the_key_never_holds_it(make_controller):
    ctl = make_controller(workers=1)
    ch = ctl.incoming_call()
    ch.answer()
    rec = ch.WholeCallRecorder
    key, iv = new_key(), new_iv()
    assert rec.start("e.wav", cipher=AESCBCCipher(key, iv))
    feed(ch, tone(440, 0.3, 6000), None)
    assert rec.stop()
    text = open(rec.last_result.sidecar).read()
    side = json.loads(text)
    assert side["encryption"]["scheme"] == "aes-cbc" and len(side["encryption"]["key_fingerprint"]) == 32
    assert key.lower() not in text.lower() and iv.lower() not in text.lower()
    assert side["sha256"] == sha256_file(rec.last_result.path)


def test_digits_heard_again_after_a_takeover_are_listed_once():
    """`heard_once`: resumed at 10,000, the new worker confirmed again a 5 whose onset was
    past that point (the same onset) and the rest of a 7 that began before it (an onset
    just after it); a real second 7 later and the other leg's 7 stay."""
    from wholecall.controller import sidecar as sc

    old = [["3", "inbound", 9000], ["7", "inbound", 9500], ["5", "inbound", 10600]]
    new = [["7", "inbound", 10000], ["7", "outbound", 10040], ["5", "inbound", 10600], ["7", "inbound", 12000]]
    assert sc.heard_once(old + new, (10000,)) == [old[0], old[1], new[1], old[2], new[3]]
    # Without a takeover at that point the same 7s are two presses.
    assert len(sc.heard_once(old + new, (4000,))) == 6


def test_a_pause_read_past_the_files_end_is_not_placed_past_it():
    """As for digits: a job ended by max_bytes was read up to `end_pos`, past its file's
    last sample. A silence-mode pause that ran into that end spans only the silence the
    file holds; one asked after the end has no offset and no length in it."""
    from wholecall.controller import sidecar as sc

    notes = sc.JobNotes(start_pos=0, start_t=0.0, min_seconds=0.0,
                        pauses=(sc.PauseSpan("silence", 16000, 0.0, 22000, 0.5), sc.PauseSpan("silence", 23000, 0.6)))
    doc = sc.build(path="/x/a.wav", notes=notes, end_t=1.0, channel=1, job_id=1, cause="SIZE", error="",
                   file_format="alaw", rate=8000, mode="mixed", nbytes=58 + 20000, samples=20000, duration_s=2.5,
                   sha256="", origin=0, end_pos=24000, audio_detected=True, lost_samples=0, cipher=None)
    assert [(p["offset_s"], p["call_seconds"], p["file_seconds"]) for p in doc["paused"]] == [(2.0, 0.5, 0.5),
                                                                                          (None, 0.0, 0.0)]


def test_a_sidecar_never_overwrites_a_file_of_its_name(make_controller):
    """A recording named like another's sidecar (`x.wav.json` beside `x.wav`): the sidecar
    once replaced it, a finished recording or one still running (its audio then went to an
    unlinked inode). start() refuses a name whose sidecar name is taken; a sidecar whose
    name was taken meanwhile is not written, and the result says why."""
    ctl = make_controller(workers=1)
    first, second = ctl.incoming_call(), ctl.incoming_call()
    first.answer()
    second.answer()
    running = first.WholeCallRecorder
    assert second.WholeCallRecorder.start("x.wav", file_format="s16bit")
    assert running.start("x.wav.json", file_format="s16bit")  # its sidecar's name, free until it ends
    feed(second, tone(440, 0.2, 6000), np.zeros(1600, np.int16))
    feed(first, tone(440, 0.5, 6000), np.zeros(4000, np.int16))
    assert second.WholeCallRecorder.stop()
    res = second.WholeCallRecorder.last_result
    assert res.sidecar == "" and "x.wav.json already exists" in res.error
    feed(first, tone(440, 0.5, 6000), np.zeros(4000, np.int16))
    assert running.stop()
    kept = running.last_result
    assert kept.error == "" and os.path.getsize(kept.path) == kept.bytes
    assert open(kept.path, "rb").read(4) == b"RIFF" and kept.samples == 8000
    # A name whose sidecar's name is taken is refused.
    with open(os.path.join(os.path.dirname(kept.path), "z.wav.json"), "x") as f:
        f.write("notes")
    with pytest.raises(Error, match=r"z.wav.json already exists where the recording's sidecar would go"):
        second.WholeCallRecorder.start("z.wav")
    assert not [n for n in os.listdir(os.path.dirname(kept.path)) if n.endswith(".tmp")]


@pytest.mark.parametrize("mode, origin, want", [
    ("silence", 10_880, (0.0, 0.5, 0.14)),  # its last 1,120 samples are the file's first (the pre-roll)
    ("skip", 12_000, (0.0, 0.5, 0.0)),  # the cut is where the file begins
    ("silence", 14_080, (None, 0.5, 0.0)),  # over before the file began
])
def test_a_pause_in_held_back_leading_silence_is_placed_from_the_files_start(mode, origin, want):
    """A reviewer's find: with milliseconds_initial_silence, a pause 1.0-1.5 s into a quiet
    call and audio after it: the file begins 240 ms (1,920 samples) before the audio, in or
    after the pause, and the sidecar said no offset and 0.5 s of file for the pause."""
    from wholecall.controller import sidecar as sc

    notes = sc.JobNotes(start_pos=0, start_t=0.0, min_seconds=0.0, pauses=(sc.PauseSpan(mode, 8000, 0.0, 12_000, 0.5),))
    samples = 9_920
    doc = sc.build(path="/x/a.wav", notes=notes, end_t=3.0, channel=1, job_id=1, cause="ABORTED", error="",
                   file_format="s16bit", rate=8000, mode="mixed", nbytes=44 + 2 * samples, samples=samples,
                   duration_s=samples / 8000, sha256="", origin=origin, end_pos=origin + samples, audio_detected=True,
                   lost_samples=0, cipher=None)
    [span] = doc["paused"]
    assert (span["offset_s"], span["call_seconds"], span["file_seconds"]) == want


def test_a_running_recordings_progress_is_what_the_call_and_the_file_hold_so_far(make_controller):
    """`progress()` (the service shows it while a recording runs, where it once said 0 s and
    0 bytes until the end, a reviewer's find): the call's seconds since the start and the
    bytes the file holds so far; nothing when idle."""
    ctl = make_controller(workers=1, flush_ms=200)
    ch = ctl.incoming_call()
    ch.answer()
    rec = ch.WholeCallRecorder
    assert rec.progress() == (0.0, 0)
    assert rec.start("running.wav", file_format="s16bit", dtmf_elim=False)
    feed(ch, tone(440, 3.0, 6000), np.zeros(3 * 8000, np.int16))
    path = os.path.join(ctl.config.recordings_dir, "running.wav")
    deadline = time.monotonic() + 10
    while os.path.getsize(path) < 44 + 2 * 8000 and time.monotonic() < deadline:
        time.sleep(0.05)
    seconds, nbytes = rec.progress()
    assert seconds == 3.0 and 44 + 2 * 8000 <= nbytes <= os.path.getsize(path)
    assert rec.stop()
    assert rec.progress() == (0.0, 0)
