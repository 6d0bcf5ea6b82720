"""Zero-loss worker failover, with real workers and real signals (issue 21: 1, 2, 3, 6).

Known random audio is written to both legs of several calls at real time; a worker is
killed (SIGKILL) or frozen (SIGSTOP) mid-recording; every sample of every file is then
compared with what was written: nothing missing, nothing wrong, causes as requested.
"""

from __future__ import annotations

import io
import os
import signal
import threading
import time

import numpy as np
import soundfile as sf

from wholecall.controller import AESCBCCipher, Cause, Controller, new_iv, new_key
from wholecall.formats import encrypted as cf
from wholecall.worker.codecs.g711 import alaw_decode, alaw_encode

RATE = 8000
FRAME = 160


def _mix_alaw(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return alaw_decode(alaw_encode(np.clip(a.astype(np.int32) + b, -32768, 32767).astype(np.int16)))


def _calls(ctl, specs):
    """Answered channels recording as `specs` says: (channel, spec, (inbound, outbound))."""
    rng = np.random.default_rng(21)
    out = []
    for i, spec in enumerate(specs):
        ch = ctl.incoming_call()
        ch.answer()
        assert ch.WholeCallRecorder.start(f"call{i}.wav", dtmf_elim=False, **spec)
        out.append((ch, spec, (rng.integers(-12000, 12000, 0, dtype=np.int16),) * 2))
    return out


def _play(calls, seconds: float, at: float, action) -> None:
    """Write `seconds` of known random audio to both legs of every call at real time,
    running `action()` once `at` seconds have been written."""
    rng = np.random.default_rng(7)
    n = int(seconds * RATE)
    for k, (ch, spec, _) in enumerate(calls):
        legs = (rng.integers(-12000, 12000, n, dtype=np.int16), rng.integers(-12000, 12000, n, dtype=np.int16))
        calls[k] = (ch, spec, legs)
    t0 = time.monotonic()
    done = False
    for i in range(0, n, FRAME):
        for ch, _, (a, b) in calls:
            ch.inbound.write(a[i:i + FRAME])
            ch.outbound.write(b[i:i + FRAME])
        if not done and i >= at * RATE:
            action()
            done = True
        delay = t0 + (i + FRAME) / RATE - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def _kill_while_fed(feeds, kill_at: float, pid: int) -> None:
    """Write each (channel, inbound audio) pair's audio at real time, a frame at a time, the
    outbound legs silent, and SIGKILL `pid` once `kill_at` seconds have been written."""
    silence = np.zeros(FRAME, np.int16)
    t0 = time.monotonic()
    for i in range(0, max(len(a) for _, a in feeds), FRAME):
        for ch, a in feeds:
            ch.inbound.write(a[i:i + FRAME])
            ch.outbound.write(silence)
        if i == int(kill_at * RATE) // FRAME * FRAME:
            os.kill(pid, signal.SIGKILL)
        delay = t0 + (i + FRAME) / RATE - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def _contents(rec, spec, key=None, iv=None) -> np.ndarray:
    path = rec.last_result.path
    if spec.get("cipher") is not None:
        fd = os.open(path, os.O_RDONLY)
        try:
            plain = b"".join(cf.iter_decrypt(fd, key=key, iv=iv))
        finally:
            os.close(fd)
        data, _ = sf.read(io.BytesIO(plain), dtype="int16")
    else:
        data, _ = sf.read(path, dtype="int16")
    return data


def _check_exact(calls, key=None, iv=None):
    for ch, spec, (a, b) in calls:
        rec = ch.WholeCallRecorder
        r = rec.last_result
        assert r.error == "" and r.lost_samples == 0, r
        data = _contents(rec, spec, key, iv)
        if spec.get("recording_mode") == "separate":
            assert data.shape == (len(a), 2), (spec, data.shape)
            assert np.array_equal(data[:, 0], a) and np.array_equal(data[:, 1], b), spec
        else:
            want = _mix_alaw(a, b)
            assert len(data) == len(want), (spec, len(data), len(want))
            assert np.array_equal(data, want), spec


def _victim(ctl, ch) -> int:
    return ch.WholeCallRecorder._worker  # before any takeover: the worker the job was placed on


def test_kill9_mid_recording_loses_no_sample_and_keeps_causes(make_controller):
    ctl = make_controller(workers=2)
    key, iv = new_key(256), new_iv()
    sep = {"file_format": "s16bit", "recording_mode": "separate"}
    specs = [sep, sep, sep, sep, {"file_format": "alaw"},
             {**sep, "cipher": AESCBCCipher(key, iv)}]
    calls = _calls(ctl, specs)
    victim = _victim(ctl, calls[0][0])
    on_victim = sum(_victim(ctl, ch) == victim for ch, _, _ in calls)
    pid = ctl.supervisor.workers[victim].proc.pid
    _play(calls, 5.0, 2.6, lambda: os.kill(pid, signal.SIGKILL))
    for k, (ch, _, _) in enumerate(calls):
        if k % 2:
            assert ch.WholeCallRecorder.stop()
        else:
            ch.hang_up()
    for k, (ch, _, _) in enumerate(calls):
        assert ch.WholeCallRecorder.cause() is (Cause.ABORTED if k % 2 else Cause.HANGUP)
    _check_exact(calls, cf.parse_aes_key(key), cf.parse_iv(iv))
    stats = ctl.stats()
    assert stats["restarts"] == 1 and stats["takeovers"] == on_victim >= 1


def test_sigstop_longer_than_the_stall_timeout_loses_nothing(make_controller):
    """A worker frozen (SIGSTOP) for longer than `stall_timeout_s` is killed and its jobs
    are taken over; the rings (4 s here) still hold what it had not written."""
    ctl = make_controller(workers=2, stall_timeout_s=1.0)
    sep = {"file_format": "s16bit", "recording_mode": "separate"}
    calls = _calls(ctl, [sep, sep, {"file_format": "alaw"}, sep])
    victim = _victim(ctl, calls[0][0])
    pid = ctl.supervisor.workers[victim].proc.pid
    _play(calls, 5.0, 1.7, lambda: os.kill(pid, signal.SIGSTOP))
    for ch, _, _ in calls:
        ch.hang_up()
        assert ch.WholeCallRecorder.cause() is Cause.HANGUP
    _check_exact(calls)
    assert ctl.stats()["restarts"] == 1


def test_slow_worker_is_degraded_not_killed(make_controller):
    """Overload is not death: a worker paused for less than the stall timeout shows as
    lag in stats() and keeps its jobs."""
    ctl = make_controller(workers=1, stall_timeout_s=5.0)
    ch = ctl.incoming_call()
    ch.answer()
    assert ch.WholeCallRecorder.start("slow.wav")
    pid = ctl.supervisor.workers[0].proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(1.5)
        w = ctl.stats()["workers"][0]
        assert w["degraded"] and w["lag_s"] >= 1.0 and w["alive"]
    finally:
        os.kill(pid, signal.SIGCONT)
    assert ch.WholeCallRecorder.stop() and ch.WholeCallRecorder.cause() is Cause.ABORTED
    assert ctl.stats()["restarts"] == 0 and ctl.supervisor.workers[0].proc.pid == pid


def test_hangup_burst_after_kill9_restarts_the_worker_once(make_controller):
    ctl = make_controller(workers=1)
    chans = []
    for i in range(15):
        ch = ctl.incoming_call()
        ch.answer()
        assert ch.WholeCallRecorder.start(f"burst{i}.wav")
        chans.append(ch)
    tone = (8000 * np.sin(np.arange(4000) * 0.3)).astype(np.int16)
    for ch in chans:
        ch.inbound.write(tone)
        ch.outbound.write(tone)
    os.kill(ctl.supervisor.workers[0].proc.pid, signal.SIGKILL)
    t0 = time.monotonic()
    for ch in chans:
        ch.hang_up(wait=False)
    assert time.monotonic() - t0 < 0.02
    for ch in chans:
        assert ch.WholeCallRecorder._wait_end(20) is Cause.HANGUP  # the call is IDLE: the API would raise Hangup
        assert ch.WholeCallRecorder.last_result.samples == 4000
    time.sleep(0.5)
    assert ctl.supervisor.restarts == 1


def test_controller_started_in_a_thread_that_exits_keeps_recording(tmp_path):
    box = {}

    def make():
        box["ctl"] = Controller(workers=1, recordings_dir=str(tmp_path / "rec"), max_channels=8,
                                ring_ms=4096).start()

    t = threading.Thread(target=make)
    t.start()
    t.join()
    ctl = box["ctl"]
    try:
        pid = ctl.supervisor.workers[0].proc.pid
        ch = ctl.incoming_call()
        ch.answer()
        assert ch.WholeCallRecorder.start("thread.wav")
        time.sleep(1.0)  # PR_SET_PDEATHSIG would have fired when the thread ended
        x = (8000 * np.sin(np.arange(8000) * 0.2)).astype(np.int16)
        ch.inbound.write(x)
        ch.outbound.write(x)
        assert ch.WholeCallRecorder.stop() and ch.WholeCallRecorder.cause() is Cause.ABORTED
        assert ch.WholeCallRecorder.last_result.samples == 8000
        assert ctl.supervisor.workers[0].proc.pid == pid and ctl.stats()["restarts"] == 0
    finally:
        ctl.close()


CONTROLLER = r"""
import sys, time, numpy as np
from wholecall.controller import Controller
ctl = Controller(workers=1, recordings_dir=sys.argv[1], max_channels=8, ring_ms=4096).start()
ch = ctl.incoming_call(); ch.answer()
assert ch.WholeCallRecorder.start("orphan.wav", file_format="s16bit")
x = (8000 * np.sin(np.arange(12000) * 0.2)).astype(np.int16)
ch.inbound.write(x); ch.outbound.write(np.zeros(12000, np.int16))
time.sleep(0.5)
print(ctl.supervisor.workers[0].proc.pid, ctl._run_dir, ch.WholeCallRecorder._path, flush=True)
time.sleep(60)
"""


def test_controller_death_finalises_files_and_its_run_dir_is_swept(tmp_path, make_controller):
    import subprocess
    import sys

    from wholecall.formats.wav import read_info

    proc = subprocess.Popen([sys.executable, "-c", CONTROLLER, str(tmp_path / "rec")], stdout=subprocess.PIPE,
                            text=True)
    try:
        worker, run_dir, path = proc.stdout.readline().split()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 10 and os.path.exists(f"/proc/{worker}") and \
                "Z" not in open(f"/proc/{worker}/stat").read().rsplit(")", 1)[1].split()[0]:
            time.sleep(0.01)
        took = time.monotonic() - t0
    finally:
        proc.kill()
    # Not a timing check (about a second on a quiet machine; the suite shares the CPUs):
    # the worker must notice on its own that the controller is gone.
    assert took < 10, f"the worker outlived its controller by {took:.2f} s"
    info = read_info(path)
    assert info.data_offset + info.data_size == os.path.getsize(path)  # final header
    assert info.data_size // 2 == 12000
    # The next controller sweeps the dead one's run directory (any controller on the
    # machine may have done it already: the sweep is by dead owner pid, not by parent).
    make_controller(workers=1)
    assert not os.path.exists(run_dir)


def test_silence_causes_survive_a_takeover(make_controller):
    """The silence detector's state travels with the job: the same audio recorded on the
    killed worker and on the survivor ends the same way (SILENCE) with the same file,
    for a max-silence job and for an initial-silence job that hears audio after the kill."""
    ctl = make_controller(workers=2)
    rng = np.random.default_rng(3)
    loud = lambda s: rng.integers(-9000, 9000, int(s * RATE), dtype=np.int16)  # noqa: E731
    quiet = lambda s: np.zeros(int(s * RATE), np.int16)  # noqa: E731
    a = np.concatenate([loud(2.5), quiet(1.0), loud(0.6), quiet(2.5)])  # max silence 2 s: ends in the last gap
    b = np.concatenate([quiet(3.2), loud(1.0), quiet(2.3)])  # initial silence 5 s: heard after the kill
    pairs = []
    for name, audio, kw in (("max", a, {"milliseconds_max_silence": 2000}),
                            ("initial", b, {"milliseconds_initial_silence": 5000, "milliseconds_max_silence": 2000})):
        chans = []
        for side in range(2):
            ch = ctl.incoming_call()
            ch.answer()
            assert ch.WholeCallRecorder.start(f"{name}{side}.wav", file_format="s16bit", dtmf_elim=False, **kw)
            chans.append(ch)
        pairs.append((chans, audio))
    on = {ch.WholeCallRecorder._worker for chans, _ in pairs for ch in chans}
    assert on == {0, 1}
    pid = ctl.supervisor.workers[0].proc.pid
    n = max(len(a), len(b))
    t0 = time.monotonic()
    for i in range(0, n, FRAME):
        for chans, audio in pairs:
            for ch in chans:
                ch.inbound.write(audio[i:i + FRAME] if i < len(audio) else quiet(FRAME / RATE))
                ch.outbound.write(quiet(FRAME / RATE))
        if i == int(2.8 * RATE) // FRAME * FRAME:
            os.kill(pid, signal.SIGKILL)
        delay = t0 + (i + FRAME) / RATE - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    for chans, _ in pairs:
        results = []
        for ch in chans:
            assert ch.WholeCallRecorder._wait_end(10) is Cause.SILENCE
            results.append(sf.read(ch.WholeCallRecorder.last_result.path, dtype="int16")[0])
        assert len(results[0]) > 0 and np.array_equal(results[0], results[1])
    assert ctl.stats()["restarts"] == 1


def test_a_separate_recordings_audio_detected_survives_a_takeover(make_controller):
    """A separate-mode (stereo) job has no silence detector: whether it heard audio is its
    own flag, which the durable record must carry, or a call loud before the kill and quiet
    after it would end as if nothing had been said (audio_detected False)."""
    ctl = make_controller(workers=2)
    rng = np.random.default_rng(5)
    inbound = np.zeros(5 * RATE, np.int16)
    inbound[RATE // 2:3 * RATE // 2] = rng.integers(-9000, 9000, RATE, dtype=np.int16)  # 0.5-1.5 s, then quiet
    chans = []
    for side in range(2):
        ch = ctl.incoming_call()
        ch.answer()
        assert ch.WholeCallRecorder.start(f"sep{side}.wav", file_format="s16bit", recording_mode="separate",
                                          dtmf_elim=False)
        chans.append(ch)
    assert {ch.WholeCallRecorder._worker for ch in chans} == {0, 1}
    # Killed after the 2 s flush published the job's state.
    _kill_while_fed([(ch, inbound) for ch in chans], 2.8, ctl.supervisor.workers[0].proc.pid)
    for ch in chans:
        assert ch.WholeCallRecorder.stop()
        res = ch.WholeCallRecorder.last_result
        assert res.audio_detected is True, res
        data = sf.read(res.path, dtype="int16")[0]
        assert np.array_equal(data[:len(inbound), 0], inbound[:len(data)])
    assert ctl.stats()["restarts"] == 1 and ctl.stats()["takeovers"] == 1


def test_envelope_recording_moves_with_the_body_key_the_arena_holds(make_controller):
    """An envelope recording's body key is wrapped under the recipient's public key, which
    only the private key (never held by wholecall) unwraps; the worker keeps a copy in the
    arena while the job runs, so a survivor continues the file. Known random audio on both
    legs; the decrypted file holds every sample, in order, across the kill; the key's slot
    is zeroed once the job ends."""
    import io

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from wholecall.controller import EnvelopeCipher
    from wholecall.formats import encrypted as cf

    ctl = make_controller(workers=2)
    priv = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = priv.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    rng = np.random.default_rng(11)
    chans = []
    for i in range(2):  # one call on each worker: worker 0 dies, the other call is untouched
        ch = ctl.incoming_call()
        ch.answer()
        assert ch.WholeCallRecorder.start(f"env{i}.wav", file_format="s16bit", recording_mode="separate",
                                          dtmf_elim=False, cipher=EnvelopeCipher(pem))
        chans.append(ch)
    victim = next(ch for ch in chans if ch.WholeCallRecorder._worker == 0)
    audio = {id(ch): rng.integers(-20000, 20000, (2, 5 * RATE), dtype=np.int16) for ch in chans}
    assert ctl.arena.keys[victim.inbound.slot].any()
    t0 = time.monotonic()
    for k in range(0, 5 * RATE, FRAME):
        for ch in chans:
            ch.inbound.write(audio[id(ch)][0, k:k + FRAME])
            ch.outbound.write(audio[id(ch)][1, k:k + FRAME])
        if k == 2 * RATE:
            os.kill(ctl.supervisor.workers[0].proc.pid, signal.SIGKILL)
        delay = t0 + (k + FRAME) / RATE - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    time.sleep(0.5)
    for ch in chans:
        rec = ch.WholeCallRecorder
        assert rec.stop() and rec.last_result.cause is Cause.ABORTED, rec.last_result
        assert not os.path.exists(rec.last_result.path + ".wcpart")
        with open(rec.last_result.path, "rb") as f:
            plain = b"".join(cf.iter_decrypt(f.fileno(), private_key=priv))
        got, _ = sf.read(io.BytesIO(plain), dtype="int16")
        np.testing.assert_array_equal(got, audio[id(ch)].T)  # 0 missing, 0 wrong, across the kill
        assert not ctl.arena.keys[ch.inbound.slot].any()  # the key lived no longer than the job
    assert ctl.stats()["takeovers"] >= 1 and ctl.stats()["restarts"] == 1


def test_a_recording_that_held_back_its_leading_silence_keeps_its_origin_across_a_takeover(make_controller):
    """A job with milliseconds_initial_silence begins its file where audio is first heard,
    not at its start. A takeover's worker once took the job's start for the file's first
    sample, so every digit the sidecar placed was off by the silence held back (here 1 s).
    The same call on the survivor and on the killed worker must give the same file and the
    same sidecar."""
    import json

    from wholecall.controller.media import dtmf_tone

    ctl = make_controller(workers=2)
    rng = np.random.default_rng(11)
    speech = lambda s: rng.integers(-6000, 6000, int(s * RATE), dtype=np.int16)  # noqa: E731
    digit = np.concatenate([dtmf_tone("5", 100), np.zeros(1200, np.int16)])
    inbound = np.concatenate([np.zeros(RATE, np.int16), speech(0.5), digit, speech(3.0)])
    chans = []
    for side in range(2):
        ch = ctl.incoming_call()
        ch.answer()
        assert ch.WholeCallRecorder.start(f"held{side}.wav", file_format="s16bit", dtmf_elim=True,
                                          milliseconds_initial_silence=5000)
        chans.append(ch)
    assert {ch.WholeCallRecorder._worker for ch in chans} == {0, 1}
    # Killed after a flush published the job's state with audio in it.
    _kill_while_fed([(ch, inbound) for ch in chans], 3.4, ctl.supervisor.workers[0].proc.pid)
    files, sides = [], []
    for ch in chans:
        assert ch.WholeCallRecorder.stop()
        res = ch.WholeCallRecorder.last_result
        files.append(sf.read(res.path, dtype="int16")[0])
        sides.append(json.load(open(res.path + ".json")))
    assert ctl.stats()["takeovers"] == 1
    assert len(files[0]) > 0 and np.array_equal(files[0], files[1])
    offsets = [[(d["digit"], d["offset_s"]) for d in side["digits"]] for side in sides]
    assert offsets[0] == offsets[1], offsets
    [(name, offset)] = offsets[0]
    lead = len(inbound) - len(files[0])  # the silence held back (whole frames of it)
    assert name == "5" and offset is not None and abs(offset - (RATE + 0.5 * RATE - lead) / RATE) < 0.03, (offset, lead)


def test_digits_read_again_by_a_takeovers_worker_are_listed_once(make_controller):
    """A takeover's worker reads again, from the dead one's last durable position, audio
    the dead one had already analysed: a digit after that point was confirmed by both, and
    the rest of a tone running across it confirmed again (the sidecar listed such a digit
    twice). Ten digits keyed around the kill, in three phases so that the resume point
    falls inside a tone in some call: each call's sidecar lists the ten once, in order, 0.2 s
    apart, on the killed worker as on the survivor, whose files are the same sample for sample."""
    import json

    from wholecall.controller.media import dtmf_tone

    ctl = make_controller(workers=2)
    rng = np.random.default_rng(13)
    speech = lambda n: rng.integers(-6000, 6000, n, dtype=np.int16)  # noqa: E731
    keyed = np.concatenate([np.concatenate([dtmf_tone(k, 100), np.zeros(800, np.int16)]) for k in "1234567890"])
    chans = []
    for phase in (0, 560, 1120):  # 0, 70 and 140 ms later, twice: one call of each on each worker
        inbound = np.concatenate([speech(int(1.5 * RATE) + phase), keyed, speech(int(1.5 * RATE) - phase)])
        for side in range(2):
            ch = ctl.incoming_call()
            ch.answer()
            assert ch.WholeCallRecorder.start(f"keys{phase}-{side}.wav", file_format="alaw", dtmf_elim=True)
            chans.append((ch, inbound, (int(1.5 * RATE) + phase) / RATE))
    assert {ch.WholeCallRecorder._worker for ch, _, _ in chans} == {0, 1}
    # Killed once a flush (every 2 s) published a position among the digits.
    _kill_while_fed([(ch, inbound) for ch, inbound, _ in chans], 3.6, ctl.supervisor.workers[0].proc.pid)
    for ch, _, first in chans:
        assert ch.WholeCallRecorder.stop()
        res = ch.WholeCallRecorder.last_result
        digits = json.load(open(res.path + ".json"))["digits"]
        assert "".join(d["digit"] for d in digits) == "1234567890", (res.path, digits)
        offsets = np.array([d["offset_s"] for d in digits])
        assert np.all(np.abs(offsets - first - 0.2 * np.arange(10)) < 0.03), (res.path, offsets)
    assert ctl.stats()["takeovers"] == 3
    for k in range(0, 6, 2):  # and the same audio, digits muted, in both files of a phase
        x, y = (sf.read(chans[j][0].WholeCallRecorder.last_result.path, dtype="int16")[0] for j in (k, k + 1))
        assert len(x) == len(chans[k][1]) and np.array_equal(x, y)


def test_a_job_its_worker_ended_and_died_before_reporting_keeps_its_file_and_counts(make_controller):
    """A reviewer's find, a race: a worker finishes a job, releases its legs, and is killed
    before its JobEnded leaves. The controller then answers the job itself, and did so with
    0 samples: with min_seconds its complete file was deleted as too short. The state is made
    here as that worker leaves it (the file on disk, the legs released in the arena), then
    the worker is killed: the counts come from the file and the file stays."""
    ctl = make_controller(workers=1, flush_ms=200)
    ch = ctl.incoming_call()
    ch.answer()
    rec = ch.WholeCallRecorder
    rec.min_seconds = 1.0
    assert rec.start("done.wav", file_format="s16bit", dtmf_elim=False)
    rng = np.random.default_rng(8)
    a, b = (rng.integers(-9000, 9000, 3 * RATE, dtype=np.int16) for _ in range(2))
    ch.inbound.write(a)
    ch.outbound.write(b)
    path = os.path.join(ctl.config.recordings_dir, "done.wav")
    deadline = time.monotonic() + 10
    while os.path.getsize(path) < 44 + 2 * (3 * RATE - 1600) and time.monotonic() < deadline:
        time.sleep(0.05)  # all but what the worker holds back until more audio comes
    pid = ctl.supervisor.workers[0].proc.pid
    os.kill(pid, signal.SIGSTOP)
    slots = (ch.inbound.slot, ch.outbound.slot)
    ch.hang_up(wait=False)  # the stop the frozen worker "applied"
    for slot in slots:
        ctl.supervisor.arena.job[slot] = 0  # released, as the worker does right after finishing the file
    os.kill(pid, signal.SIGKILL)
    assert rec._wait_end(10) is Cause.HANGUP
    r = rec.last_result
    assert not r.discarded and os.path.exists(path), r
    data, _ = sf.read(path, dtype="int16")
    assert r.samples == len(data) >= 3 * RATE - 1600 and r.bytes == os.path.getsize(path), r
    assert np.array_equal(data, np.clip(a[:len(data)].astype(np.int32) + b[:len(data)], -32768, 32767))
