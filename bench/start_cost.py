"""What one start() and one stop() cost, per thread and per process (the stress ramp's budget).

Two measurements, both outside `wholecall stress` so nothing else competes:

1. Controller process: N answered channels started, then stopped, one after another
   from one thread; CPU per call of every thread of this process (the API thread, the
   supervisor's I/O thread, ZeroMQ's own I/O thread), from /proc/self/task/*/stat, and
   the worker processes' (less their background ticking, approximately).
   With `--threads T`, also the same starts from T API threads at once (as the stress
   ramp makes them): starts per second and the process's user and system CPU per start.
2. Worker: `Pipeline.start` for N jobs in-process, on a disk directory and on tmpfs
   (file creation cost differs by two orders of magnitude on some machines), with the
   slowest individual starts (the per-row tables grow by doubling); then the pipeline
   side alone (`attach_many`, files already open) one job at a time and in batches of
   16 and 64, as the worker attaches what its openers made since the last serve point;
   and what ending a job costs the worker's loop (`stop` + `drain`), one by one and 16
   at a time.

    OPENBLAS_NUM_THREADS=1 python bench/start_cost.py --channels 2000 --dir /tmp
    OPENBLAS_NUM_THREADS=1 python bench/start_cost.py --channels 6000 --threads 64 --dir /root

The directory matters on ext4 without a journal: within minutes of thousands of deletions
nearby, creating a file costs ~1 ms (`bench/file_creates.py`, BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import os
import shutil
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TCK = os.sysconf("SC_CLK_TCK")


def stat_cpu(stat: str) -> float:
    """User + system CPU seconds from the text of a /proc/<pid>[/task/<tid>]/stat file."""
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TCK


def threads_cpu() -> dict[str, float]:
    """CPU seconds per thread of this process, named by Python thread name where there is one."""
    import threading

    names = {t.native_id: t.name for t in threading.enumerate()}
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                s = f.read()
        except OSError:
            continue
        name = names.get(int(tid)) or s[s.index("(") + 1:s.rindex(")")]
        out[f"{name}[{tid}]"] = stat_cpu(s)
    return out


def per_thread(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    return {k: round(1e6 * (v - before.get(k, 0.0)) / n) for k, v in after.items() if v - before.get(k, 0.0) > 0.005}


@contextlib.contextmanager
def answered_calls(n: int, base: str):
    """A Controller (2 workers) recording into a new directory under `base`, and `n` answered
    channels; the directory is removed afterwards."""
    from wholecall.controller import Controller

    d = tempfile.mkdtemp(prefix="startcost-", dir=base)
    try:
        with Controller(workers=2, recordings_dir=d, max_channels=n, ring_ms=2048) as ctl:
            chans = []
            for _ in range(n):
                ch = ctl.incoming_call()
                ch.answer()
                chans.append(ch)
            yield ctl, chans
    finally:
        shutil.rmtree(d, ignore_errors=True)


def process_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        return stat_cpu(f.read())


def controller_costs(n: int, base: str) -> dict:
    """Per call, one after another: each controller thread's CPU, and the workers' (their
    processes' CPU less what they spend ticking without calls and with every call idle,
    measured for a second each: an approximation, reported as such)."""
    with answered_calls(n, base) as (ctl, chans):
        pids = [w.proc.pid for w in ctl.supervisor.workers]

        def workers() -> float:
            return sum(process_cpu(p) for p in pids)

        w0 = workers()
        time.sleep(1.0)
        idle = workers() - w0
        a, t0, wa = threads_cpu(), time.perf_counter(), workers()
        for i, ch in enumerate(chans):
            assert ch.WholeCallRecorder.start(f"{i // 1000:03d}/c{i}.wav", milliseconds_max_silence=5000)
        t1 = time.perf_counter()
        b, wb = threads_cpu(), workers()
        time.sleep(1.0)
        busy = workers() - wb
        b2, t2, wb2 = threads_cpu(), time.perf_counter(), workers()
        for ch in chans:
            ch.WholeCallRecorder.stop()
        t3 = time.perf_counter()
        c, wc = threads_cpu(), workers()
    background = (idle + busy) / 2  # per second: the calls grow from none to all, then shrink
    return {"start_us_per_thread": per_thread(a, b, n), "stop_us_per_thread": per_thread(b2, c, n),
            "start_wall_ms": round(1e3 * (t1 - t0) / n, 3),
            "workers_us_per_start": round(1e6 * (wb - wa - background * (t1 - t0)) / n),
            "workers_us_per_stop": round(1e6 * (wc - wb2 - background * (t3 - t2)) / n)}


def concurrent_starts(n: int, base: str, threads: int) -> dict:
    """`n` starts from `threads` API threads at once: rate, and the process's CPU per start."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    with answered_calls(n, base) as (_, chans):
        def start(i: int) -> None:
            assert chans[i].WholeCallRecorder.start(f"{i // 1000:03d}/c{i}.wav", milliseconds_max_silence=5000)

        with ThreadPoolExecutor(threads) as ex:
            gate = threading.Barrier(threads)  # every thread made before the clock starts
            list(ex.map(lambda _: gate.wait(), range(threads)))
            c0, t0 = os.times(), time.perf_counter()
            list(ex.map(start, range(n)))
            c1, t1 = os.times(), time.perf_counter()
            list(ex.map(lambda ch: ch.WholeCallRecorder.stop(), chans))
    return {"threads": threads, "starts_per_s": round(n / (t1 - t0)),
            "user_us_per_start": round(1e6 * (c1.user - c0.user) / n),
            "system_us_per_start": round(1e6 * (c1.system - c0.system) / n)}


def worker_start_cost(n: int, base: str) -> dict:
    from wholecall.protocol import Cause, StartJob
    from wholecall.shm import Arena
    from wholecall.worker.pipeline import Pipeline, default_open_sink

    out = tempfile.mkdtemp(prefix="startcost-", dir=base)
    arena = Arena.create(2 * n, 16384)
    try:
        pipe = Pipeline(arena, default_open_sink(), tick_s=0.02)
        walls = []
        c0 = time.process_time()
        starts = []
        for i in range(n):
            msg = StartJob(job_id=i + 1, channel=i, slot_in=2 * i, slot_out=2 * i + 1, start_pos=0,
                           path=os.path.join(out, f"c{i}.wav"), file_format="alaw", rate=8000, max_bytes=0,
                           ms_max_silence=5000, ms_initial_silence=0, dtmf_elim=True, mode="mixed", cipher=None)
            starts.append(msg)
            t = time.perf_counter()
            err = pipe.start(msg)
            walls.append(time.perf_counter() - t)
            assert not err, err
        cpu = time.process_time() - c0
        ms = np.array(walls) * 1e3
        slow = np.argsort(ms)[-4:]
        pipe.abort_all(Cause.ABORTED)
        while pipe.jobs:
            pipe.tick()
        # The pipeline side alone (files already open), one by one and in the worker's
        # batches (`Pipeline.attach_many`: what the openers made since the last serve point).
        attach = {}
        for batch in (1, 16, 64):
            msgs = [dataclasses.replace(m, job_id=m.job_id + n * batch, path=f"{m.path[:-4]}-{batch}.wav")
                    for m in starts]
            writers = [pipe.open_writer(m)[0] for m in msgs]
            c1 = time.process_time()
            for lo in range(0, n, batch):
                pipe.attach_many([(m, w, None, -1) for m, w in zip(msgs[lo:lo + batch], writers[lo:lo + batch])])
            attach[batch] = round(1e6 * (time.process_time() - c1) / n, 1)
            pipe.abort_all(Cause.ABORTED)
            while pipe.jobs:
                pipe.tick()
        del pipe
        gc.collect()
        return {"dir": base, "cpu_us_per_start": round(1e6 * cpu / n), "wall_ms_p50": round(float(np.median(ms)), 3),
                "wall_ms_p99": round(float(np.percentile(ms, 99)), 3),
                "slowest_starts": {int(i) + 1: round(float(ms[i]), 1) for i in sorted(slow)},
                "attach_us_by_batch": attach}
    finally:
        shutil.rmtree(out, ignore_errors=True)  # first: a close() refused (views still held) must not leave the files
        arena.close()


def worker_stop_cost(n: int, base: str) -> dict:
    """What ending a job costs the worker's loop: `Pipeline.stop` then `drain` (the end of
    its audio, the DTMF look-ahead's last frames, the file's header, close), one job at a
    time as stops come one by one, and 16 at a time as in a burst. Each job has 0.5 s of
    audio (silence) in its rings; no file-system cost to speak of on tmpfs."""
    from wholecall.protocol import Cause, StartJob
    from wholecall.shm import Arena
    from wholecall.worker.pipeline import Pipeline, default_open_sink

    out = tempfile.mkdtemp(prefix="stopcost-", dir=base)
    arena = Arena.create(2 * n, 16384)
    try:
        pipe = Pipeline(arena, default_open_sink(), tick_s=0.1, capacity=n, max_block=5)
        result = {"dir": base}
        for batch in (1, 16):
            for i in range(n):
                msg = StartJob(job_id=i + 1 + n * batch, channel=i, slot_in=2 * i, slot_out=2 * i + 1, start_pos=0,
                               path=os.path.join(out, f"s{batch}-{i}.wav"), file_format="alaw", rate=8000,
                               max_bytes=0, ms_max_silence=5000, ms_initial_silence=0, dtmf_elim=True, mode="mixed",
                               cipher=None)
                arena.job[2 * i] = arena.job[2 * i + 1] = msg.job_id
                arena.write_pos[2 * i] = arena.write_pos[2 * i + 1] = 0
                assert not pipe.start(msg)
            now = 100.0
            for t in range(5):
                arena.write_pos[:] = (t + 1) * 800
                pipe.tick(now, block=5)
                now += 0.1
            c0 = time.process_time()
            for lo in range(0, n, batch):
                for i in range(lo, min(n, lo + batch)):
                    pipe.stop(i + 1 + n * batch, Cause.ABORTED, 4000)
                pipe.drain(now, block=5)
                pipe.ended.clear()
            result[f"us_per_stop_by_{batch}"] = round(1e6 * (time.process_time() - c0) / n, 1)
            assert not pipe.jobs
        del pipe
        gc.collect()
        return result
    finally:
        shutil.rmtree(out, ignore_errors=True)  # first: a close() refused (views still held) must not leave the files
        arena.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--channels", type=int, default=2000)
    p.add_argument("--dir", default=tempfile.gettempdir(), help="disk directory for recordings")
    p.add_argument("--threads", type=int, default=0, help="also measure starts from this many API threads at once")
    p.add_argument("--controller-only", action="store_true", help="skip the worker's Pipeline.start measurement")
    a = p.parse_args()
    print("controller process, per call:", controller_costs(a.channels, a.dir))
    if a.threads:
        print("controller process, concurrent starts:", concurrent_starts(a.channels, a.dir, a.threads))
    for base in () if a.controller_only else (a.dir, "/dev/shm"):
        print("worker Pipeline.start:", worker_start_cost(a.channels, base))
        print("worker Pipeline.stop + drain:", worker_stop_cost(a.channels, base))


if __name__ == "__main__":
    main()
