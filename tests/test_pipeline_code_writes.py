"""A flush of G.711 recordings is written in one compiled loop of pwrite(2)
(`kernels.pwrite_rows`), the writers told afterwards (`WavWriter.codes_written`).

Real arena, real pipeline, real files: the files must be byte for byte what one
`write_codes` per recording makes, for files holding their descriptor and transient ones
(reopened per write, the descriptor budget spent) alike, and decode sample for sample to
the mix G.711-encoded (the tables tests/codecs checks against the standard for every
input). A write that fails (a full file system) ends its
job alone with ERROR, its file a valid WAV of what was written; the others go on.
"""

from __future__ import annotations

import numpy as np
import soundfile as sf

from tests.test_finalise_failures import small_tmpfs
from wholecall.protocol import Cause, StartJob
from wholecall.shm import Arena
from wholecall.worker import kernels
from wholecall.worker.codecs import g711
from wholecall.worker.crypto import open_sink
from wholecall.worker.descriptors import Descriptors
from wholecall.worker.pipeline import Pipeline
from wholecall.worker.sink import FileSink
from wholecall.worker.wavfile import WavWriter

RATE = 8000
FLUSH = 4000  # samples per flush: a 3 s call is several
JOBS = 6
SECONDS = 3


def legs(seed: int) -> np.ndarray:
    """Both legs of every job, loud enough that their sum clips now and then."""
    rng = np.random.default_rng(seed)
    return rng.integers(-24000, 24000, (JOBS, 2, SECONDS * RATE), dtype=np.int16)


def record(tmp, audio: np.ndarray, transient: set[int], full_dir=None, serve_log: list | None = None
           ) -> tuple[dict, dict]:
    """Record JOBS calls (A-law and mu-law, in turn) fed `audio`; jobs in `transient`
    hold no descriptor; job 1's file is in `full_dir` when given. With `serve_log`, the
    flush loops serve every 2 flushes, and what they write and serve is logged there.
    Returns the ends and the files' bytes by job id."""
    no_budget = Descriptors(0)

    def sinks(path, cipher, mode):
        if any(path.endswith(f"/j{j}.wav") for j in transient):
            return FileSink(path, mode, descriptors=no_budget)
        return open_sink(path, cipher, mode)

    arena = Arena.create(2 * JOBS, 1 << 14)
    pipe = Pipeline(arena, sinks, capacity=JOBS, flush_samples=FLUSH, max_block=5)
    paths = {}
    if serve_log is not None:
        pipe.serve_every_flushes = 2
        write_rows, serve = pipe._write_codes_rows, pipe._serve_flushes

        def logged_write(rows):
            serve_log.append(("write", len(rows)))
            write_rows(rows)

        def logged_serve(seq, i):
            serve_log.append(("serve", i))
            serve(seq, i)

        pipe._write_codes_rows, pipe._serve_flushes = logged_write, logged_serve
    try:
        for j in range(1, JOBS + 1):
            where = full_dir if (j == 1 and full_dir is not None) else tmp
            paths[j] = str(where / f"j{j}.wav")
            msg = StartJob(job_id=j, channel=j, slot_in=2 * j - 2, slot_out=2 * j - 1, start_pos=0, path=paths[j],
                           file_format="alaw" if j % 2 else "ulaw", rate=RATE, max_bytes=0, ms_max_silence=0,
                           ms_initial_silence=0, dtmf_elim=False, mode="mixed", cipher=None)
            arena.job[msg.slot_in] = arena.job[msg.slot_out] = j
            assert pipe.start(msg) == ""
        now = 100.0
        for t in range(0, SECONDS * RATE, 800):  # 100 ms ticks
            for j in range(JOBS):
                for leg in (0, 1):
                    s = 2 * j + leg
                    arena.data[s, (t + np.arange(800)) & (arena.capacity - 1)] = audio[j, leg, t:t + 800]
                    arena.write_pos[s] = t + 800
            pipe.tick(now, block=5)
            now += 0.1
        for j in range(1, JOBS + 1):
            if j in pipe.by_id:
                pipe.stop(j, Cause.HANGUP, SECONDS * RATE)
        for _ in range(20):
            if not pipe.jobs:
                break
            pipe.tick(now, block=5)
            now += 0.1
        assert not pipe.jobs
        ends = {e.job_id: e for e in pipe.ended}
        files = {j: open(p, "rb").read() for j, p in paths.items()}
        return ends, files
    finally:
        pipe.close()
        arena.close()


def test_flushes_written_in_one_compiled_loop_are_the_files_write_codes_makes(tmp_path, monkeypatch):
    audio = legs(1)
    (tmp_path / "fast").mkdir()
    (tmp_path / "slow").mkdir()
    calls = []
    real = kernels.pwrite_rows

    def counted(fds, *a):
        calls.append(int((fds >= 0).sum()))
        return real(fds, *a)

    monkeypatch.setattr(kernels, "pwrite_rows", counted)
    ends, files = record(tmp_path / "fast", audio, transient={3, 4})
    # Every flush of the four files holding their descriptor went through the loop, but the
    # last (the stop's, with the DTMF look-ahead: the end's own path).
    assert sum(calls) == 4 * (SECONDS * RATE // FLUSH - 1), calls
    monkeypatch.setattr(WavWriter, "codes_target", lambda self, n: (-1, 0))  # one write_codes each
    ends_ref, files_ref = record(tmp_path / "slow", audio, transient=set())
    assert {j: (e.cause, e.samples, e.bytes, e.origin) for j, e in ends.items()} == \
        {j: (e.cause, e.samples, e.bytes, e.origin) for j, e in ends_ref.items()}
    # origin: the leg position of each file's first sample (the sidecar places digits by it).
    assert all((e.cause, e.samples, e.origin) == (Cause.HANGUP, SECONDS * RATE, 0) for e in ends.values()), ends
    for j in files:
        assert files[j] == files_ref[j], f"job {j}"
    for j in range(1, JOBS + 1):
        got, rate = sf.read(tmp_path / "fast" / f"j{j}.wav", dtype="int16")  # decoded by libsndfile
        assert rate == RATE
        np.testing.assert_array_equal(got, g711_mix(audio[j - 1], j), err_msg=f"job {j}")


def test_rows_the_loop_did_not_write_whole_are_written_again_through_their_writers(tmp_path, monkeypatch):
    """A short write (half of it, as on a file system filling up) and a failed one (-1)
    are written again whole by `write_codes` at the same offset: the files are the same."""
    audio = legs(4)
    real = kernels.pwrite_rows

    def half_or_none(fds, stage, rows, n, offsets, wrote):
        real(fds, stage, rows, n // 2, offsets, wrote)
        wrote[::2] = -1  # as if these calls had failed (EINTR, EIO) before writing anything

    monkeypatch.setattr(kernels, "pwrite_rows", half_or_none)
    (tmp_path / "a").mkdir()
    ends, files = record(tmp_path / "a", audio, transient=set())
    monkeypatch.setattr(kernels, "pwrite_rows", real)
    (tmp_path / "b").mkdir()
    ends_ref, files_ref = record(tmp_path / "b", audio, transient=set())
    assert {j: (e.cause, e.samples, e.bytes, e.origin) for j, e in ends.items()} == \
        {j: (e.cause, e.samples, e.bytes, e.origin) for j, e in ends_ref.items()}
    assert files == files_ref


def test_a_writer_told_of_direct_writes_keeps_its_header_as_write_codes_does(tmp_path):
    """`codes_written` refreshes the header when due, as `write_codes` does: compared after
    every write, header included (a file must be readable at every moment)."""
    import os

    a = WavWriter(FileSink(str(tmp_path / "a.wav")), "alaw", RATE, refresh_samples=3000)
    b = WavWriter(FileSink(str(tmp_path / "b.wav")), "alaw", RATE, refresh_samples=3000)
    codes = np.random.default_rng(5).integers(0, 256, 20_000, dtype=np.uint8)
    for lo in range(0, len(codes), 1000):
        chunk = codes[lo:lo + 1000]
        a.write_codes(chunk)
        fd, offset = b.codes_target(len(chunk))
        assert fd >= 0 and os.pwrite(fd, chunk, offset) == len(chunk)
        b.codes_written(len(chunk))
        assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes(), lo
        assert (a.input_samples, a.room, b.sink.size()) == (b.input_samples, b.room, a.sink.size())
    assert b.codes_target(b.room + 1) == (-1, 0)  # what does not fit goes through write_codes
    a.close()
    b.close()
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes()


def test_a_flush_loop_serves_before_the_same_rows_and_writes_the_stretches_between(tmp_path):
    """Serve points (where the worker attaches starts and applies stops mid-tick) fall
    before every second flush here, as they did when each row was written alone; the
    rows between two of them are written together."""
    log: list = []
    ends, _ = record(tmp_path, legs(3), transient=set(), serve_log=log)
    assert all(e.cause is Cause.HANGUP for e in ends.values())
    loops = " ".join(f"{k[0]}{v}" for k, v in log)  # e.g. "w1 s1 w2 s3 w2 s5 w1" for one loop of six rows
    assert loops.count("w1 s1 w2 s3 w2 s5 w1") == SECONDS * RATE // FLUSH - 1, loops


def g711_mix(both: np.ndarray, job_id: int) -> np.ndarray:
    """The legs mixed with saturation, through the job's G.711 law and back."""
    mix = np.clip(both.astype(np.int32).sum(axis=0), -32768, 32767).astype(np.int16)
    if job_id % 2:
        return g711.alaw_decode(g711.alaw_encode(mix))
    return g711.ulaw_decode(g711.ulaw_encode(mix))


def test_a_flush_the_file_system_cannot_take_ends_that_job_alone_with_error(tmp_path):
    audio = legs(2)
    with small_tmpfs(tmp_path / "small", "12k") as small:  # three pages: the fourth flush does not fit
        ends, files = record(tmp_path, audio, transient=set(), full_dir=small)
        bad = ends[1]
        assert bad.cause is Cause.ERROR and "No space left on device" in bad.error, bad
        info = sf.info(str(small / "j1.wav"))
        # What the failed write got onto the disk before ENOSPC is cut off: the file is what
        # its recording says it is.
        assert (small / "j1.wav").stat().st_size == bad.bytes
        got, _ = sf.read(small / "j1.wav", dtype="int16")
        assert info.frames == len(got) and 0 < len(got) < SECONDS * RATE and len(got) % FLUSH == 0
        np.testing.assert_array_equal(got, g711_mix(audio[0], 1)[:len(got)])
    for j in range(2, JOBS + 1):
        assert ends[j].cause is Cause.HANGUP and ends[j].samples == SECONDS * RATE, ends[j]
