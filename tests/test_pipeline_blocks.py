"""Block steps (the worker's mode at scale) record exactly what frame steps record.

Real arena, real pipeline, real files. The same calls are fed twice, once advanced frame
by frame (`tick(block=1)`) and once in blocks of 5 frames, with legs written in uneven
chunks so that blocks are often incomplete and wait for the next tick: every file must
be byte for byte the same and every job must end the same way (cause, samples). The
calls cover what a block changes: DTMF digits muted across block edges, silence ends
decided inside a block, a size limit, separate (stereo) mode, an initial-silence job,
and stops at positions that are not frame multiples.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import soundfile as sf

from wholecall.protocol import Cause, PauseJob, StartJob
from wholecall.shm import Arena
from wholecall.shm import layout as L
from wholecall.sim.loadgen import load_programs
from wholecall.worker.pipeline import Pipeline, default_open_sink

RATE = 8000
JOBS = 12


def messages(tmp, progs) -> list[StartJob]:
    msgs = []
    for j in range(JOBS):
        mode = "separate" if j == 3 else "mixed"
        msgs.append(StartJob(
            job_id=j + 1, channel=j, slot_in=2 * j, slot_out=2 * j + 1, start_pos=0, path=str(tmp / f"j{j}.wav"),
            file_format="alaw" if j % 2 else "s16bit", rate=RATE, max_bytes=40_000 if j == 4 else 0,
            ms_max_silence=1500 if j % 4 == 1 else 0, ms_initial_silence=3000 if j == 7 else 0,
            dtmf_elim=j != 9, mode=mode, cipher=None))
    return msgs


#: `late`: these jobs start at what their legs hold in the tick where job LATE_WITH is stopped.
LATE = range(8, JOBS)
LATE_WITH = 7
YOUNG = 500  # samples the youngest late job records: fewer than its DTMF look-ahead holds


def record(tmp, block: int, drain: bool = False, parts: bool = False, batched: bool = False, late: bool = False
           ) -> tuple[dict, dict[int, bytes], list]:
    """`batched`: the jobs are attached five at a time (`Pipeline.attach_many`, as the
    worker attaches what its openers made), growing the pipeline inside a batch. `late`:
    the jobs of LATE start in the tick where job LATE_WITH is stopped (one of them is stopped
    while its DTMF delay line is still filling); batched, they are attached in one batch
    inside that tick (at a `between`, as the worker attaches mid-tick) once LATE_WITH's row
    was freed there (not reusable before the next tick), beside rows freed earlier, and the
    pipeline must grow. `drain`: every stop is followed at once by `Pipeline.drain` (as the worker does),
    which must end the job there, before any further tick. `parts`: the ticks run in parts
    of 2 jobs, and stops wait for the first gap between two parts (as the worker applies
    stops read during a tick), where they are applied and drained."""
    progs = load_programs()[0]  # espeak-ng speech, pauses and DTMF strings on either leg
    rng = np.random.default_rng(5)
    prog = rng.integers(progs.count, size=JOBS)
    phase = rng.integers(progs.length, size=JOBS)
    arena = Arena.create(2 * JOBS, 1 << 14)
    pipe = Pipeline(arena, default_open_sink(), capacity=4, flush_samples=4000, max_block=5)
    msgs = messages(tmp, progs)
    queued: list[tuple[int, Cause, int]] = []
    inside: list[int] = []  # jobs stopped and ended inside a tick

    held: list[int] = []  # stopped inside a flush loop before their own flush: ended at a later serve point

    def between_parts() -> None:
        for job_id, cause, end in queued:
            assert pipe.stop(job_id, cause, end)
        pending = pipe._unflushed  # inside a part's flush loop: these rows' flushes are still ahead
        ahead = {pipe.jobs[r].msg.job_id for r in pending[0][pending[1]:] if r in pipe.jobs} if pending else set()
        pipe.drain(now, block=block)
        for job_id in [j for j, _, _ in queued] + held:
            if job_id in ahead:
                assert job_id in pipe.by_id, "a job whose flush is under way must not be drained under it"
                continue
            assert job_id not in pipe.by_id, "a stop applied between parts must end its job there"
            inside.append(job_id)
        held[:] = [j for j in [j for j, _, _ in queued] + held if j in ahead]
        queued.clear()

    if parts:
        pipe.part_rows = 2
        pipe.between_parts = between_parts
        pipe.serve_every_flushes = 1  # and inside every flush loop, after each flush
    pending: list[StartJob] = []  # late jobs to attach at the next `between`
    grew: list[tuple[int, int]] = []  # (rows before, after) of the mid-tick batch

    def between() -> None:
        if pending and pipe._released:
            assert pipe._in_tick
            before = pipe._cap
            pipe.attach_many([(m, pipe.open_writer(m)[0], None, -1) for m in pending])
            grew.append((before, pipe._cap))
            pending.clear()

    pipe.between = between
    # Stops at odd positions (not frame multiples); the rest are aborted at the end.
    stop_at = {2: 47_123, 6: 61_001, 10: 80_000 + 37}
    written = np.zeros(JOBS, np.int64)
    try:
        first = [m for j, m in enumerate(msgs) if not (late and j in LATE)]
        for m in msgs:
            arena.job[m.slot_in] = arena.job[m.slot_out] = m.job_id
        for m in first if not batched else []:
            assert pipe.start(m) == ""
        for lo in range(0, len(first) if batched else 0, 5):
            opened = [(m, pipe.open_writer(m)[0]) for m in first[lo:lo + 5]]
            pipe.attach_many([(m, w, None, -1) for m, w in opened])
        now = 100.0
        for _ in range(110):  # 11 s of audio on average, in uneven chunks
            late_now = False
            for j in range(JOBS):
                n = int(rng.integers(0, 1700))
                idx = (phase[j] + written[j] + np.arange(n)) % progs.length
                for leg in (0, 1):
                    s = 2 * j + leg
                    arena.data[s, (written[j] + np.arange(n)) & (arena.capacity - 1)] = progs.audio[prog[j], leg, idx]
                    arena.write_pos[s] = written[j] + n
                written[j] += n
                if j in stop_at and written[j] >= stop_at[j] and (j + 1) in pipe.by_id:
                    late_now = late_now or (late and j + 1 == LATE_WITH)
                    if parts:
                        queued.append((j + 1, Cause.HANGUP, stop_at.pop(j)))
                        continue
                    pipe.stop(j + 1, Cause.HANGUP, stop_at.pop(j))
                    if drain:
                        pipe.drain(now, block=block)
                        assert (j + 1) not in pipe.by_id, "a drained stop must end its job"
            if late_now:
                for j in LATE:
                    msgs[j] = dataclasses.replace(msgs[j], start_pos=int(written[j]))
                stop_at[JOBS - 1] = int(written[JOBS - 1]) + YOUNG  # its delay line still filling
                if batched:
                    pending.extend(msgs[j] for j in LATE)
                else:
                    for j in LATE:
                        assert pipe.start(msgs[j]) == ""
            pipe.tick(now, block=block)
            assert not pending, "the late batch was not attached inside the tick"
            now += 0.1
        for m in msgs:  # as the controller stops a call: at what its legs hold now
            if m.job_id in pipe.by_id and parts:
                queued.append((m.job_id, Cause.ABORTED, int(written[m.job_id - 1])))
                continue
            pipe.stop(m.job_id, Cause.ABORTED, int(written[m.job_id - 1]))
        if drain:
            pipe.drain(now, block=block)
            assert not pipe.jobs, "a drain pass ends every stopped job whose audio is in the rings"
        for _ in range(50):
            if not pipe.jobs:
                break
            pipe.tick(now, block=block)
        assert not pipe.jobs
        if parts:
            assert not queued and not held and len(inside) >= 4, inside
        if late and batched:
            assert len(grew) == 1 and grew[0][1] > grew[0][0], grew  # the pipeline grew inside the tick
        ends = {e.job_id: (e.cause, e.samples, e.bytes) for e in pipe.ended}
        files = {m.job_id: open(m.path, "rb").read() for m in msgs}
        # The pipeline takes the bank's events and reports them per job, as leg positions.
        return ends, files, sorted((d.job_id, *map(str, x)) for d in pipe.digits for x in d.digits)
    finally:
        pipe.close()
        arena.close()


def test_block_steps_record_the_same_files_as_frame_steps(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ends1, files1, digits1 = record(tmp_path / "a", 1)
    ends5, files5, digits5 = record(tmp_path / "b", 5)
    assert len(digits1) >= 5 and digits5 == digits1
    causes = sorted(c.name for c, _, _ in ends1.values())
    # The scenario must exercise what it claims to: silence and size ends, stops, aborts.
    assert {"SILENCE", "SIZE", "HANGUP", "ABORTED"} <= set(causes), causes
    assert ends5 == ends1
    for job_id, data in files1.items():
        assert files5[job_id] == data, f"job {job_id}: the block-stepped file differs"
    got, rate = sf.read(str(tmp_path / "b" / "j2.wav"), dtype="int16")
    assert rate == RATE and len(got) == 47_123  # a stop inside a frame ends the file there


def test_jobs_attached_in_batches_record_the_same_files_as_jobs_started_one_by_one(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "batch").mkdir()
    one = record(tmp_path / "one", 5)
    batch = record(tmp_path / "batch", 5, batched=True)
    assert one[0] == batch[0] and one[2] == batch[2] and one[2]  # causes, lengths; the digits heard
    for job_id, data in one[1].items():
        assert batch[1][job_id] == data, f"job {job_id}"


def test_a_batch_attached_inside_a_tick_records_what_the_same_jobs_started_between_ticks_record(tmp_path):
    """The worker attaches what its openers made at the serve points inside a tick, where
    rows freed by that tick's endings wait for reuse and the arrays may have to grow under
    the tick's feet; a job stopped a few frames after such an attach ends while its DTMF
    delay line is still young. None of it may change a byte."""
    (tmp_path / "one").mkdir()
    (tmp_path / "batch").mkdir()
    one = record(tmp_path / "one", 5, late=True)
    batch = record(tmp_path / "batch", 5, parts=True, batched=True, late=True)
    assert one[0] == batch[0] and one[2] == batch[2]
    assert one[0][JOBS][:2] == (Cause.HANGUP, YOUNG), one[0][JOBS]  # the young job's end
    assert {one[0][j + 1][0].name for j in LATE} >= {"HANGUP", "ABORTED"}
    for job_id, data in one[1].items():
        assert batch[1][job_id] == data, f"job {job_id}"


def test_a_batch_with_a_job_the_worker_cannot_run_attaches_none_of_it(tmp_path):
    arena = Arena.create(8, 1 << 14)
    pipe = Pipeline(arena, default_open_sink(), capacity=2)
    try:
        msgs = messages(tmp_path, None)[8:11]  # the second has no DTMF elimination
        msgs = [dataclasses.replace(m, job_id=i + 1, slot_in=2 * i, slot_out=2 * i + 1) for i, m in enumerate(msgs)]
        msgs[2] = dataclasses.replace(msgs[2], ms_max_silence=2**61)
        writers = [pipe.open_writer(m)[0] for m in msgs[:2]]
        free = list(pipe._free_rows)
        with pytest.raises(ValueError, match="milliseconds_max_silence"):
            pipe.attach_many([(m, w, None, -1) for m, w in zip(msgs, [*writers, writers[0]])])
        assert pipe._free_rows == free and not pipe.jobs and not pipe.by_id
        bank = pipe.dtmf
        bank._n[:] = 7  # rows a previous job left behind: the batch must reset both legs of each
        bank._elim[:] = True
        pipe.attach_many([(m, w, None, -1) for m, w in zip(msgs, writers)])
        assert sorted(pipe.by_id) == [1, 2]
        for job_id, job in pipe.by_id.items():
            legs = [2 * job.row, 2 * job.row + 1]
            assert (bank._n[legs] == 0).all() and (bank._elim[legs] == job.msg.dtmf_elim).all(), job_id
            assert arena.durable[job.msg.slot_in, :, L.D_JOB].max() == job_id  # its durable record, published
    finally:
        pipe.close()
        arena.close()


@pytest.mark.parametrize("block", [1, 5])
@pytest.mark.parametrize("how", ["drain", "parts"])
def test_a_stop_ended_early_records_the_same_files_as_one_left_to_the_tick(tmp_path, block, how):
    """stop() latency: the worker ends a stopped job in a pass over its rows alone, without
    waiting for the next tick (`drain`), and at scale applies the stops read during a tick
    between two of its parts (`parts`, 20,000 channels): either way the files and results
    must be exactly those of stops left to the ticks."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ends_t, files_t, digits_t = record(tmp_path / "a", block)
    ends_e, files_e, digits_e = record(tmp_path / "b", block, **{how: True})
    assert ends_e == ends_t and digits_e == digits_t
    for job_id, data in files_t.items():
        assert files_e[job_id] == data, f"job {job_id}: the file stopped early ({how}) differs"


@pytest.mark.parametrize("limit", ["silence", "size"])
def test_a_stop_read_late_does_not_override_a_limit_reached_before_its_end(tmp_path, limit):
    """A worker behind its producers reads a hang-up whose end position lies past the point
    where the recording's silence (or size) limit was reached: the limit ends it, with the
    file and cause it gets when the audio arrives in real time (the stop's cause had won)."""
    n = 3 * RATE
    tone = (6000 * np.sin(2 * np.pi * 440 * np.arange(n) / RATE)).astype(np.int16)
    legs = np.zeros((2, n), np.int16)
    legs[0, :RATE] = tone[:RATE]  # 1 s of tone, then silence
    if limit == "size":
        legs[0] = tone  # loud throughout: only the size limit can end it early

    def run(name: str, late_stop: bool) -> tuple:
        arena = Arena.create(2, 1 << 15)
        pipe = Pipeline(arena, default_open_sink(), capacity=1, flush_samples=4000, max_block=5)
        msg = StartJob(job_id=1, channel=0, slot_in=0, slot_out=1, start_pos=0, path=str(tmp_path / name),
                       file_format="s16bit", rate=RATE, max_bytes=44 + 2 * 12_000 if limit == "size" else 0,
                       ms_max_silence=500 if limit == "silence" else 0, ms_initial_silence=0, dtmf_elim=True,
                       mode="mixed", cipher=None)
        try:
            arena.job[0] = arena.job[1] = 1
            assert pipe.start(msg) == ""
            step = n if late_stop else 800  # all of it at once, or 100 ms a tick
            for t in range(0, n, step):
                for leg in (0, 1):
                    arena.data[leg, (t + np.arange(step)) & (arena.capacity - 1)] = legs[leg, t:t + step]
                    arena.write_pos[leg] = t + step
                if late_stop:
                    assert pipe.stop(1, Cause.HANGUP, n)  # read before the worker saw any of it
                pipe.tick(100.0 + t / RATE, block=5)
            for k in range(50):
                if not pipe.jobs:
                    break
                if k == 0 and not late_stop:
                    pipe.stop(1, Cause.HANGUP, n)  # in real time the limit has ended it by now
                pipe.tick(200.0 + k, block=5)
            (end,) = pipe.ended
            return end.cause, end.samples, (tmp_path / name).read_bytes()
        finally:
            pipe.close()
            arena.close()

    real_time = run("rt.wav", late_stop=False)
    late = run("late.wav", late_stop=True)
    assert real_time[0] is (Cause.SILENCE if limit == "silence" else Cause.SIZE)
    assert late[:2] == real_time[:2] and late[2] == real_time[2]
    assert real_time[1] < n


@pytest.mark.parametrize("case", ["heard", "silence", "paused"])
def test_a_file_filled_by_max_bytes_ends_the_same_however_its_audio_arrives(tmp_path, case):
    """Frames past the point where max_bytes fills the file are not recorded, so they are not
    judged either: a silent file whose call turns loud right after it is full did not hear
    audio ("heard"), and a silence limit that only the frames past it would reach does not
    end the job ("silence": 1 s limit, reached 50 ms after the file is full). In real time
    the job has ended before those frames arrive; read in one burst they were judged.
    ("paused": the same with the file filled by a silence-mode pause, 1.5-2.75 s, and loud
    audio after the resume: paused frames take the detector's other path.)"""
    n = 3 * RATE
    full_at = 19_600 if case == "silence" else 20_000
    legs = np.zeros((2, n), np.int16)
    rng = np.random.default_rng(9)
    if case in ("heard", "paused"):
        legs[0, full_at:] = rng.integers(-9000, 9000, n - full_at, dtype=np.int16)  # loud once the file is full
    else:
        legs[0, :12_000] = rng.integers(-9000, 9000, 12_000, dtype=np.int16)  # silent from 1.5 s: limit at 2.5 s

    def run(name: str, step: int) -> tuple:
        arena = Arena.create(2, 1 << 15)
        pipe = Pipeline(arena, default_open_sink(), capacity=1, flush_samples=4000, max_block=5)
        msg = StartJob(job_id=1, channel=0, slot_in=0, slot_out=1, start_pos=0, path=str(tmp_path / name),
                       file_format="s16bit", rate=RATE, max_bytes=44 + 2 * full_at,
                       ms_max_silence=1000 if case == "silence" else 0, ms_initial_silence=0, dtmf_elim=False,
                       mode="mixed", cipher=None)
        try:
            arena.job[0] = arena.job[1] = 1
            assert pipe.start(msg) == ""
            if case == "paused":
                assert pipe.pause(PauseJob(job_id=1, seq=1, pos=12_000, mode="silence"))
                assert pipe.pause(PauseJob(job_id=1, seq=2, pos=22_000, mode=""))
            for k, t in enumerate(range(0, n, step)):
                for leg in (0, 1):
                    arena.data[leg, (t + np.arange(step)) & (arena.capacity - 1)] = legs[leg, t:t + step]
                    arena.write_pos[leg] = t + step
                pipe.tick(100.0 + k * 0.1, block=5)
                if not pipe.jobs:
                    break
            for k in range(100):  # a burst takes several ticks to be read
                if not pipe.jobs:
                    break
                pipe.tick(200.0 + k * 0.1, block=5)
            (end,) = pipe.ended
            return end.cause, end.samples, end.heard, (tmp_path / name).read_bytes()
        finally:
            pipe.close()
            arena.close()

    real_time = run("rt.wav", 800)
    burst = run("burst.wav", n)
    assert real_time[:3] == (Cause.SIZE, full_at, case == "silence")
    assert burst[:3] == real_time[:3] and burst[3] == real_time[3]


def test_a_block_larger_than_the_pipeline_was_built_for_is_refused(tmp_path):
    arena = Arena.create(2, 1 << 12)
    pipe = Pipeline(arena, default_open_sink(), capacity=1, max_block=3)
    try:
        with pytest.raises(ValueError, match="block must be 1 .. 3"):
            pipe.tick(block=5)
    finally:
        pipe.close()
        arena.close()


# The batched G.711 flush (through `write_codes`: a FileSink subclass is not written directly;
# tests/test_pipeline_code_writes.py fills a real file system under the direct writes) and the general one.
@pytest.mark.parametrize("file_format", ["alaw", "s16bit"])
def test_a_failing_disk_ends_the_job_with_error_and_a_valid_file(tmp_path, file_format):
    """The disk fills after 2 s of audio: the job ends ERROR, naming the write, and the
    file holds what was written before, with a header that says so."""
    from wholecall.worker.sink import FileSink

    class FillingSink(FileSink):
        def pwrite(self, data, offset):
            if offset + len(memoryview(data)) > 60 + 2 * 16000:
                raise OSError(28, "No space left on device")
            super().pwrite(data, offset)

    arena = Arena.create(2, 1 << 14)
    pipe = Pipeline(arena, lambda path, cipher, mode: FillingSink(path, mode), capacity=1, flush_samples=4000,
                    max_block=5)
    path = tmp_path / "full.wav"
    msg = StartJob(job_id=1, channel=0, slot_in=0, slot_out=1, start_pos=0, path=str(path), file_format=file_format,
                   rate=RATE, max_bytes=0, ms_max_silence=0, ms_initial_silence=0, dtmf_elim=True, mode="mixed",
                   cipher=None)
    tone = (8000 * np.sin(2 * np.pi * 440 * np.arange(800) / RATE)).astype(np.int16)
    try:
        arena.job[0] = arena.job[1] = 1
        assert pipe.start(msg) == ""
        for t in range(100):  # 8 s at 100 ms per tick
            if not pipe.jobs:
                break
            for s in (0, 1):
                arena.data[s, (800 * t + np.arange(800)) & (arena.capacity - 1)] = tone
                arena.write_pos[s] = 800 * (t + 1)
            pipe.tick(t * 0.1, block=5)
        assert not pipe.jobs
        (end,) = pipe.ended
        assert end.cause is Cause.ERROR and "write failed" in end.error and "No space" in end.error
        info = sf.info(str(path))
        width = 1 if file_format == "alaw" else 2
        assert info.frames == end.samples and 0 < info.frames * width <= 2 * 16000
    finally:
        pipe.close()
        arena.close()


_WARM_UP_PROBE = """
import json
import sys
from pathlib import Path
from wholecall.worker import dtmf_fine, dtmf_runs, kernels, pipeline
from tests.test_pipeline_blocks import record

pipeline.warm_up()  # what a worker loads before it says hello, and nothing else
jit = [kernels.frames_in, kernels.mix_frames, kernels.delay_slots, kernels.silence_frames, kernels.pwrite_rows,
       dtmf_fine.fine_windows,
       dtmf_fine.edges, dtmf_runs.digit_runs, dtmf_runs.set_mutes]
before = [len(k.signatures) for k in jit]
for block in (1, 5):
    (Path(sys.argv[1]) / str(block)).mkdir()
    record(Path(sys.argv[1]) / str(block), block)
print(json.dumps([before, [len(k.signatures) for k in jit]]))
"""


def test_the_warm_up_covers_every_kernel_signature_the_pipeline_calls(tmp_path):
    """A signature the warm-up misses is compiled (or loaded) in the middle of a tick: a
    stall of every leg of the worker of up to seconds. Both step sizes, every path. In a
    process of its own: this one has loaded other signatures (the DSP tests' float32)."""
    import json
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", _WARM_UP_PROBE, str(tmp_path)], cwd=root, capture_output=True,
                       text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    before, after = json.loads(r.stdout.strip().splitlines()[-1])
    assert after == before, "kernel signatures loaded by the ticks, not by the warm-up"


def test_growing_past_capacity_publishes_progress_while_it_copies(tmp_path):
    """A takeover can land thousands of jobs on a survivor at once; the staging copy of a
    grown pipeline must publish progress as it goes, or the supervisor takes the busy
    worker for a stalled one (seen at 10,000 channels: a second, needless restart)."""
    import wholecall.worker.pipeline as pl

    arena = Arena.create(2 * 8, 1 << 12)
    pipe = Pipeline(arena, default_open_sink(), capacity=2)
    beats = []
    pipe.progress = lambda: beats.append(1)
    old_rows = pl._GROW_ROWS
    pl._GROW_ROWS = 1  # one row per slice, so this small pipeline shows the slicing
    try:
        for j in range(3):
            m = StartJob(job_id=j + 1, channel=j, slot_in=2 * j, slot_out=2 * j + 1, start_pos=0,
                         path=str(tmp_path / f"g{j}.wav"), file_format="alaw", rate=RATE, max_bytes=0,
                         ms_max_silence=0, ms_initial_silence=0, dtmf_elim=True, mode="mixed", cipher=None)
            arena.job[m.slot_in] = arena.job[m.slot_out] = m.job_id
            assert pipe.start(m) == ""
        # Growth 2 -> 4 rows: 3 staging arrays x 2 old rows, plus the silence and DTMF state.
        assert len(beats) >= 3 * 2 + 2
    finally:
        pl._GROW_ROWS = old_rows
        pipe.close()
        arena.close()


@pytest.mark.parametrize("block", [1, 5])
def test_a_stop_drains_a_backlog_longer_than_a_tick_in_one_call(tmp_path, block):
    """A worker that fell behind (its producer caught up in a burst) holds more of a job's
    audio than one pass takes (`max_frames`): stop() must still end the job in one drain
    call, not one tick per 500 ms of backlog, and the file must be the ticks' own."""
    progs = load_programs()[0]
    files = []
    for how in ("drain", "ticks"):
        d = tmp_path / how
        d.mkdir()
        arena = Arena.create(4, 1 << 16)
        pipe = Pipeline(arena, default_open_sink(), capacity=4, flush_samples=16_000, max_block=5)
        try:
            msgs = messages(d, progs)[:2]
            for m in msgs:
                arena.job[m.slot_in] = arena.job[m.slot_out] = m.job_id
                assert pipe.start(m) == ""
            pipe.tick(100.0, block=block)
            n = 4 * RATE + 77  # 4 s: eight passes' worth
            for s in range(4):
                arena.data[s, :n] = progs.audio[s % progs.count, s % 2, 1000:1000 + n]
                arena.write_pos[s] = n
            for m in msgs:
                assert pipe.stop(m.job_id, Cause.HANGUP, n)
            if how == "drain":
                pipe.drain(100.5, block=block)
                assert not pipe.jobs, "one drain call ends every stopped job, whatever its backlog"
            else:
                for k in range(40):
                    pipe.tick(100.6 + k / 10, block=block)
                assert not pipe.jobs
            files.append([open(m.path, "rb").read() for m in msgs])
            assert len(files[-1][1]) > 4 * RATE  # the whole backlog is in the file
        finally:
            pipe.close()
            arena.close()
    assert files[0] == files[1]


def test_a_behind_worker_ticks_in_more_parts_so_stops_wait_for_as_much_work(tmp_path):
    """Parts hold about `part_rows` blocks of work: when the jobs have five blocks each to
    catch up on, a tick serves stops five times as often (stop() waits for one part)."""
    progs = load_programs()[0]
    arena = Arena.create(2 * JOBS, 1 << 16)
    pipe = Pipeline(arena, default_open_sink(), capacity=JOBS, flush_samples=16_000, max_block=5)
    calls = []
    pipe.part_rows = 4
    pipe.between_parts = lambda: calls.append(1)
    try:
        msgs = [m for m in messages(tmp_path, progs) if m.mode == "mixed"]
        for m in msgs:
            arena.job[m.slot_in] = arena.job[m.slot_out] = m.job_id
            assert pipe.start(m) == ""
        written = 0
        for backlog_frames, parts in ((5, -(-len(msgs) // 4)), (25, len(msgs))):
            written += backlog_frames * 160
            for m in msgs:
                for s in (m.slot_in, m.slot_out):
                    arena.write_pos[s] = written
            calls.clear()
            pipe.tick(100.0 + written / RATE, block=5)
            assert len(calls) == parts - 1, (backlog_frames, len(calls))
    finally:
        pipe.close()
        arena.close()


def _flush_wave(tmp, inside: bool) -> tuple[dict[int, bytes], list[str]]:
    """Six G.711 calls whose flushes fall due in the same tick (they started together);
    two are stopped at 4,937 samples. `inside`: the stops are read during that tick's
    flush loop (the worker serves stops there, after every flush here), one before the
    loop reaches its job's flush, one after; otherwise before the tick (the reference)."""
    progs = load_programs()[0]
    arena = Arena.create(12, 1 << 14)
    pipe = Pipeline(arena, default_open_sink(), capacity=6, flush_samples=4000, max_block=5)
    msgs = [StartJob(job_id=j + 1, channel=j, slot_in=2 * j, slot_out=2 * j + 1, start_pos=0,
                     path=str(tmp / f"w{j}.wav"), file_format="alaw", rate=RATE, max_bytes=0, ms_max_silence=0,
                     ms_initial_silence=0, dtmf_elim=True, mode="mixed", cipher=None) for j in range(6)]
    seen: list[str] = []
    end = 4937
    try:
        for m in msgs:
            arena.job[m.slot_in] = arena.job[m.slot_out] = m.job_id
            assert pipe.start(m) == ""
        order: list[int] = []  # the job ids in the flush loop's order

        def serve() -> None:
            if pipe._unflushed is None:
                return
            seq, i = pipe._unflushed
            if i == 0:
                order[:] = [pipe.jobs[r].msg.job_id for r in seq]
            first, last = order[0], order[-1]
            if i == 0:  # before any flush: the last job's flush is ahead of the loop
                assert pipe.stop(last, Cause.HANGUP, end)
            elif i == 2:  # the first job was flushed: it drains here
                assert pipe.stop(first, Cause.HANGUP, end)
            pipe.drain(now, block=5)
            seen.append(f"{i}: first {'open' if first in pipe.by_id else 'ended'}, "
                        f"last {'open' if last in pipe.by_id else 'ended'}")

        pipe.part_rows = 10_000
        pipe.serve_every_flushes = 1
        if inside:
            pipe.between_parts = serve
        now = 100.0
        # Six blocks: the DTMF look-ahead holds five frames, so 4,000 samples (one flush each)
        # are staged in the sixth tick, all due there.
        for t in range(6):
            written = 800 * (t + 1) + (300 if t == 5 else 0)
            for m in msgs:
                for leg, s in enumerate((m.slot_in, m.slot_out)):
                    p = np.arange(written - (1100 if t == 5 else 800), written)
                    arena.data[s, p & (arena.capacity - 1)] = progs.audio[m.job_id, leg, p]
                    arena.write_pos[s] = written
            if t == 5 and not inside:
                for job_id in (1, 6):
                    assert pipe.stop(job_id, Cause.HANGUP, end)
                pipe.drain(now, block=5)
            pipe.tick(now, block=5)
            now += 0.1
        pipe.drain(now, block=5)  # as the worker does after every tick
        assert 1 not in pipe.by_id and 6 not in pipe.by_id
        assert not inside or order == [1, 2, 3, 4, 5, 6]
        for m in msgs:
            if m.job_id in pipe.by_id:
                pipe.stop(m.job_id, Cause.ABORTED, 5100)
        pipe.drain(now, block=5)
        assert not pipe.jobs
        return {m.job_id: open(m.path, "rb").read() for m in msgs}, seen
    finally:
        pipe.close()
        arena.close()


def test_stops_served_inside_a_flush_wave_end_their_jobs_as_stops_before_it(tmp_path):
    """Calls that started together flush in the same tick; a stop read meanwhile is served
    between two flushes (20,000 channels: one part's flushes took 20 ms). A job already
    flushed drains there; one whose flush is still ahead waits for it (its staging holds
    that flush). Both files must be exactly those of stops applied before the tick."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ref, _ = _flush_wave(tmp_path / "a", inside=False)
    got, seen = _flush_wave(tmp_path / "b", inside=True)
    assert seen[0] == "0: first open, last open"  # the last job's stop is held: its flush is ahead
    assert seen[2] == "2: first ended, last open"  # the first job, already flushed, ended in the loop
    for job_id, data in ref.items():
        assert got[job_id] == data, f"job {job_id}: a stop served inside the flush loop changed its file"
    got_audio, _ = sf.read(str(tmp_path / "b" / "w0.wav"), dtype="int16")
    assert len(got_audio) == 4937


def test_parts_cut_the_work_not_the_rows(tmp_path):
    """Calls that started together sit in neighbouring rows and catch up together: parts
    of equal row counts took 0.3 to 21 ms within one tick at 20,000 channels. The cuts
    fall at equal shares of the blocks to do."""
    arena = Arena.create(2 * JOBS, 1 << 16)
    pipe = Pipeline(arena, default_open_sink(), capacity=JOBS, flush_samples=16_000, max_block=5)
    pipe.part_rows = 6
    try:
        msgs = [m for m in messages(tmp_path, load_programs()[0]) if m.mode == "mixed"]
        for m in msgs:
            arena.job[m.slot_in] = arena.job[m.slot_out] = m.job_id
            assert pipe.start(m) == ""
        rows = np.array(sorted(pipe.jobs), np.int64)
        # The first three jobs have five blocks each to catch up on, the rest one.
        for k, m in enumerate(msgs):
            for s in (m.slot_in, m.slot_out):
                arena.write_pos[s] = (25 if k < 3 else 5) * 160
        bounds, plan = pipe._part_bounds(100.0, rows, 5)
        work = np.where(np.arange(len(rows)) < 3, 5, 1)
        assert plan.tolist() == work.tolist()
        per_part = [int(work[a:b].sum()) for a, b in zip(bounds, bounds[1:])]
        assert bounds[0] == 0 and bounds[-1] == len(rows) and sum(per_part) == 23
        assert len(per_part) == 4 and max(per_part) <= 6 + 5, per_part  # by rows: 5 + 5 + 5 + 1 + 1 + 1 in one part
    finally:
        pipe.close()
        arena.close()


def test_a_part_advances_its_jobs_by_the_blocks_planned_not_by_what_came_since(tmp_path):
    """Producers keep writing while a tick runs: the later parts of a tick found up to twice
    the blocks the parts were cut for (a part of 1,686 jobs took 25 ms at 20,000 channels,
    and stops waited for it). A running job advances by the blocks it had when the tick
    began; the rest waits for the next tick, which takes it."""
    progs = load_programs()[0]
    arena = Arena.create(2 * JOBS, 1 << 16)
    pipe = Pipeline(arena, default_open_sink(), capacity=JOBS, flush_samples=16_000, max_block=5)
    pipe.part_rows = 4
    try:
        msgs = [m for m in messages(tmp_path, progs) if m.mode == "mixed"]
        for m in msgs:
            arena.job[m.slot_in] = arena.job[m.slot_out] = m.job_id
            assert pipe.start(m) == ""

        def write(upto: int) -> None:
            for m in msgs:
                for s in (m.slot_in, m.slot_out):
                    arena.write_pos[s] = upto

        pipe.between_parts = lambda: write(3 * 800)  # two more blocks arrive after the first part
        write(800)
        pipe.tick(100.0, block=5)
        rows = np.array(sorted(pipe.jobs), np.int64)
        assert pipe.pos[rows].tolist() == [800] * len(rows)  # one block each, as planned
        pipe.between_parts = lambda: None
        pipe.tick(100.1, block=5)
        assert pipe.pos[rows].tolist() == [3 * 800] * len(rows)  # the next tick took the rest
    finally:
        pipe.close()
        arena.close()
