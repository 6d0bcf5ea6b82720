"""End to end with real processes: controller + 2 pinned workers, shm rings, ZeroMQ, WAV on disk."""

import os
import signal
import time

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import feed, tone
from wholecall.controller import Cause, Error, Hangup, RecorderState
from wholecall.controller.states import CallState
from wholecall.worker.codecs.g711 import alaw_decode, alaw_encode


def read_int16(path):
    data, rate = sf.read(path, dtype="int16")
    return data, rate


def test_mixed_alaw_call_holds_both_tones(answered):
    rec = answered.WholeCallRecorder
    a, b = tone(440, 2.0, 6000), tone(1000, 2.0, 6000)
    assert rec.start("call.wav") is True
    assert rec.state() is RecorderState.RECORDING and rec.cause() is Cause.NONE
    feed(answered, a, b)
    assert rec.stop() is True
    assert rec.cause() is Cause.ABORTED and rec.state() is RecorderState.IDLE
    data, rate = read_int16(rec.last_result.path)
    assert rate == 8000
    assert abs(len(data) - 16000) <= 160  # +-20 ms
    expected = alaw_decode(alaw_encode(np.clip(a.astype(np.int32) + b, -32768, 32767).astype(np.int16)))
    n = min(len(data), len(expected))
    assert np.array_equal(data[:n], expected[:n])  # bit-exact mix then G.711 A-law
    spectrum = np.abs(np.fft.rfft(data.astype(float)))
    freqs = np.fft.rfftfreq(len(data), 1 / 8000)
    for f in (440, 1000):
        assert spectrum[np.argmin(abs(freqs - f))] > 100 * np.median(spectrum)


def test_leg_with_no_audio_contributes_silence_and_does_not_stall(ctl, answered):
    rec = answered.WholeCallRecorder
    assert rec.start("one-leg.wav")
    start = answered.inbound.position
    a = tone(600, 1.0)
    feed(answered, a, None)
    time.sleep(1.0)  # twice the skew allowance: the worker must not wait for the silent leg
    consumed = int(ctl.arena.read_pos[answered.inbound.slot]) - start
    assert consumed >= 8000 - 160  # the worker read the talking leg while the other said nothing
    assert rec.stop()
    data, _ = read_int16(rec.last_result.path)
    assert abs(len(data) - 8000) <= 160
    assert np.abs(data[:7800].astype(int) - a[:7800]).max() < 300  # the tone, mixed with silence


def test_hang_up_ends_with_hangup_and_finalises_file(answered):
    rec = answered.WholeCallRecorder
    assert rec.start("hup.wav")
    feed(answered, tone(300, 0.5), tone(700, 0.5))
    answered.hang_up()
    assert answered.state() is CallState.IDLE
    assert rec.cause() is Cause.HANGUP
    data, _ = read_int16(rec.last_result.path)
    assert abs(len(data) - 4000) <= 160


def test_start_twice_is_an_error(answered):
    rec = answered.WholeCallRecorder
    assert rec.start("a.wav")
    with pytest.raises(Error, match="already RECORDING"):
        rec.start("b.wav")
    assert rec.stop()
    assert not os.path.exists(os.path.join(os.path.dirname(rec.last_result.path), "b.wav"))


def test_a_start_is_traced_hop_by_hop_on_one_clock_shared_with_the_worker(answered):
    """The worker's two readings fall between the controller's: one system-wide clock."""
    rec = answered.WholeCallRecorder
    assert rec.last_start_trace is None
    before = time.monotonic()
    assert rec.start("traced.wav")
    after = time.monotonic()
    tr = rec.last_start_trace
    stamps = [tr.called, tr.sent, tr.worker_received, tr.worker_opened, tr.worker_confirmed, tr.delivered,
              tr.returned]
    assert before <= stamps[0] and stamps[-1] <= after
    assert stamps == sorted(stamps), stamps
    hops = tr.hops_ms()
    assert list(hops) == list(tr.HOPS)
    assert sum(hops.values()) == pytest.approx(1000 * (tr.returned - tr.called))
    assert rec.stop()
    assert rec.last_start_trace is tr  # kept until the next start succeeds


def test_start_on_idle_call_raises_hangup(ctl):
    ch = ctl.channel()
    with pytest.raises(Hangup):
        ch.WholeCallRecorder.start("x.wav")
    ch.incoming()
    ch.answer()
    ch.hang_up()
    with pytest.raises(Hangup):
        ch.WholeCallRecorder.start("x.wav")


@pytest.mark.parametrize("ring", [False, True])
def test_start_on_unanswered_call_raises_error(ctl, ring):
    ch = ctl.incoming_call()
    if ring:
        ch.ring()
    with pytest.raises(Error, match="not ANSWERED"):
        ch.WholeCallRecorder.start("x.wav")
    assert not os.listdir(ctl.config.recordings_dir)


def test_audio_written_before_start_is_not_recorded(answered):
    rec = answered.WholeCallRecorder
    feed(answered, tone(500, 1.0), tone(500, 1.0))
    assert rec.start("late.wav")
    feed(answered, tone(900, 0.5), None)
    assert rec.stop()
    assert abs(rec.last_result.samples - 4000) <= 160


def test_killed_worker_is_replaced_and_its_job_goes_on(ctl, answered):
    rec = answered.WholeCallRecorder
    assert rec.start("killed.wav")
    feed(answered, tone(400, 0.5), None)
    victim = ctl.supervisor.workers[rec._worker]
    os.kill(victim.proc.pid, signal.SIGKILL)
    assert rec.wait_until_finished(1) is Cause.TIMEOUT  # taken over: still recording
    assert rec.state() is RecorderState.RECORDING
    assert rec.stop() and rec.cause() is Cause.ABORTED
    assert rec.last_result.samples == 4000
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not all(w.alive and w.ready for w in ctl.supervisor.workers):
        time.sleep(0.05)
    assert ctl.supervisor.restarts == 1
    assert rec.start("after.wav")  # the service goes on
    assert rec.stop()


def test_many_threads_record_at_once(ctl):
    import threading

    errors = []

    def call(i):
        try:
            ch = ctl.incoming_call()
            ch.answer()
            rec = ch.WholeCallRecorder
            assert rec.start(f"t{i}.wav")
            feed(ch, tone(300 + 50 * i, 0.4), tone(2000, 0.4))
            assert rec.stop()
            assert abs(rec.last_result.samples - 3200) <= 160
            ch.close()
        except Exception as e:  # collected for the assert below
            errors.append(e)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors


def test_controller_leaves_no_shared_memory_or_processes(make_controller):
    ctl = make_controller()
    name = ctl.arena.name
    pids = [w.proc.pid for w in ctl.supervisor.workers]
    ctl.close()
    assert not os.path.exists(f"/dev/shm/{name}")
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_exception_inside_with_block_still_cleans_up(tmp_path):
    from wholecall.controller import Controller

    with pytest.raises(ZeroDivisionError):
        with Controller(workers=1, recordings_dir=str(tmp_path)) as ctl:
            name = ctl.arena.name
            raise ZeroDivisionError  # an IVR bug inside the with-block
    assert not os.path.exists(f"/dev/shm/{name}")


@pytest.mark.skipif(os.geteuid() != 0, reason="raising a priority needs root (CAP_SYS_NICE)")
def test_workers_and_the_io_thread_run_at_the_worker_priority_and_the_callers_threads_do_not(make_controller):
    import threading

    from wholecall.controller.supervisor import zmq_io_threads

    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    others = set(zmq_io_threads())  # other tests' contexts in this process
    ctl = make_controller(workers=1, worker_priority=7)
    io = next(t for t in threading.enumerate() if t.name == "wholecall-io")
    deadline = time.monotonic() + 5
    while os.getpriority(os.PRIO_PROCESS, io.native_id) != -7 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert os.getpriority(os.PRIO_PROCESS, io.native_id) == -7
    ours = set(zmq_io_threads()) - others
    assert ours and all(os.getpriority(os.PRIO_PROCESS, t) == -7 for t in ours)
    assert os.getpriority(os.PRIO_PROCESS, ctl.supervisor.workers[0].proc.pid) == -7
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine


def test_a_controller_whose_arena_cannot_fit_says_so_and_starts_nothing(tmp_path):
    from wholecall.controller import Controller

    vfs = os.statvfs("/dev/shm")
    channels = vfs.f_bavail * vfs.f_frsize // (4 * 65536) + 100  # 8 s rings: 256 KiB per channel
    before = {n for n in os.listdir("/dev/shm") if n.startswith(f"wholecall-{os.getpid()}-")}
    ctl = Controller(workers=1, max_channels=channels, ring_ms=8192, recordings_dir=str(tmp_path / "rec"))
    with pytest.raises(OSError, match=r"lower max_channels \(wholecall serve: --max-calls\) or ring_ms"):
        ctl.start()
    assert ctl.supervisor is None and ctl.arena is None
    assert {n for n in os.listdir("/dev/shm") if n.startswith(f"wholecall-{os.getpid()}-")} == before


def test_arena_dir_must_be_an_existing_directory(tmp_path):
    from wholecall.controller import Controller

    with pytest.raises(ValueError, match="arena_dir must be an existing directory"):
        Controller(arena_dir=str(tmp_path / "nowhere"), recordings_dir=str(tmp_path / "rec"))


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_controller_records_through_an_arena_on_huge_pages(make_controller, tmp_path):
    """Config.arena_dir: the workers attach the arena by path, and the call is recorded."""
    from wholecall.sim.arena_mount import private_arena_dir

    with private_arena_dir(64 << 20) as d:
        if d is None:
            pytest.skip("this machine does not let us mount a tmpfs")
        ctl = make_controller(workers=1, max_channels=4, ring_ms=2048, arena_dir=d)
        assert os.path.dirname(ctl.arena.path) == d
        ch = ctl.incoming_call()
        ch.answer()
        rec = ch.WholeCallRecorder
        assert rec.start("huge.wav")
        x = (6000 * np.sin(2 * np.pi * 440 * np.arange(16000) / 8000)).astype(np.int16)
        for i in range(0, len(x), 800):
            ch.inbound.write(x[i:i + 800])
            ch.outbound.write(np.zeros(800, np.int16))
        time.sleep(0.5)
        rec.stop()
        assert rec.wait_until_finished(5) == Cause.ABORTED
        data, rate = sf.read(rec._path, dtype="int16")
        assert rate == 8000 and abs(len(data) - len(x)) <= 160
        ctl.close()
        assert os.listdir(d) == []
