"""Starts served in the middle of a tick: jobs that grow the pipeline's tables mid-step
must not disturb the jobs the tick is advancing.

Real arena, real pipeline, real files. The pipeline's `between` hook, which the worker
points at its command handling, starts a new job at every serve point, so the per-row
tables (and the DTMF bank's) are reallocated at each kind of point: between frame steps,
after the bank inside a step, and between flushes. Every leg carries a known signal, so
each file must hold exactly the mix of its legs from its start to its end.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from wholecall.protocol import Cause, StartJob
from wholecall.shm import Arena
from wholecall.worker.codecs import g711
from wholecall.worker.pipeline import Pipeline, default_open_sink

RATE = 8000
SLOTS = 64


def leg_signal(slot: int, start: int, n: int) -> np.ndarray:
    """Sample p of leg `slot`: a deterministic, DTMF-free pattern (no tone survives a mix)."""
    p = np.arange(start, start + n, dtype=np.int64)
    return (((p * (7 + 2 * slot)) % 2001) - 1000).astype(np.int16) * (1 + slot % 3)


def start_msg(job_id: int, path: str, slot: int, pos: int, file_format: str = "s16bit") -> StartJob:
    return StartJob(job_id=job_id, channel=job_id, slot_in=slot, slot_out=slot + 1, start_pos=pos, path=path,
                    file_format=file_format, rate=RATE, max_bytes=0, ms_max_silence=0, ms_initial_silence=0,
                    dtmf_elim=True, mode="mixed", cipher=None)


# A-law: flushes on the plain path (`_flush_codes`), written in stretches between serve points.
@pytest.mark.parametrize("flush_samples,block,file_format",
                         [(800, 1, "s16bit"), (8000, 1, "s16bit"), (8000, 5, "s16bit"), (800, 1, "alaw"),
                          (8000, 5, "alaw")])
def test_jobs_started_at_every_serve_point_leave_running_jobs_bit_exact(tmp_path, monkeypatch, flush_samples,
                                                                        block, file_format):
    import wholecall.worker.pipeline
    monkeypatch.setattr(wholecall.worker.pipeline, "SERVE_EVERY_FLUSHES", 2)  # serve between flushes of this few jobs too
    arena = Arena.create(SLOTS, 1 << 15)
    pipe = Pipeline(arena, default_open_sink(), capacity=2, flush_samples=flush_samples, max_frames_per_tick=5)
    written = [0] * SLOTS
    jobs: dict[int, tuple[int, int, str]] = {}  # job_id -> (slot, start_pos, path)

    def begin(slot: int) -> None:
        job_id = len(jobs) + 1
        path = str(tmp_path / f"job{job_id}.wav")
        pos = written[slot]
        assert pipe.start(start_msg(job_id, path, slot, pos, file_format)) == ""
        jobs[job_id] = (slot, pos, path)

    def serve() -> None:
        if 2 * (len(jobs) + 1) < SLOTS:
            begin(2 * len(jobs))

    try:
        begin(0)
        begin(2)
        pipe.between = serve
        for _ in range(60):  # 60 ticks of 100 ms, both legs of every slot fed before each
            for s in range(SLOTS):
                arena.data[s, (written[s] + np.arange(800)) & (arena.capacity - 1)] = leg_signal(s, written[s], 800)
                written[s] += 800
                arena.write_pos[s] = written[s]
            pipe.tick(block=block)
        assert len(jobs) > 20 and pipe._cap >= 16, "the tables never grew mid-tick"
        pipe.between = None
        for job_id, (slot, _, _) in jobs.items():
            pipe.stop(job_id, Cause.ABORTED, written[slot])
        for _ in range(50):
            if not pipe.jobs:
                break
            pipe.tick(block=block)
        assert not pipe.jobs
        ends = {e.job_id: e for e in pipe.ended}
        for job_id, (slot, pos, path) in jobs.items():
            assert ends[job_id].cause is Cause.ABORTED and ends[job_id].origin == pos
            got, rate = sf.read(path, dtype="int16")
            n = written[slot] - pos
            mix = leg_signal(slot, pos, n).astype(np.int32) + leg_signal(slot + 1, pos, n)
            want = np.clip(mix, -32768, 32767).astype(np.int16)
            if file_format == "alaw":
                want = g711.alaw_decode(g711.alaw_encode(want))
            assert rate == RATE and len(got) == n, (job_id, len(got), n)
            assert np.array_equal(got, want), f"job {job_id} (started at {pos}) differs from its legs' mix"
    finally:
        pipe.close()
        arena.close()
