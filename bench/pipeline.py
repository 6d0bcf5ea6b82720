"""Worker pipeline cost per recorded channel-second, in one process, no sockets.

Feeds N mixed A-law jobs from the arena the way real-time producers would (both legs
advance 100 ms per tick), runs the real `Pipeline.tick`, and reports CPU µs per
channel-second, with a per-stage split from cProfile when --profile is given.

    OPENBLAS_NUM_THREADS=1 python bench/pipeline.py --channels 1000 --seconds 10
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# `wholecall` is the installed package (pip install -e .): the repository root on sys.path would
# shadow it with the top-level facade folder.

import numpy as np  # noqa: E402

from wholecall.protocol import Cause, StartJob  # noqa: E402
from wholecall.shm import Arena  # noqa: E402
from wholecall.worker.pipeline import Pipeline, default_open_sink  # noqa: E402


def run(channels: int, seconds: float, tick_ms: float, dtmf: bool, profile: bool, fmt: str,
        library: bool = False, block: int = 5, paced: bool = False, huge: bool = True,
        flush_ms: float = 1000, part_rows: int = 0) -> dict:
    tick = int(8 * tick_ms)
    cap = 1 << 16  # 8.2 s rings, as the controller makes them by default
    import contextlib

    from wholecall.shm import layout
    from wholecall.sim.arena_mount import private_arena_dir

    mounts = contextlib.ExitStack()  # the stress run's arena: a private tmpfs with 2 MiB pages when root
    where = mounts.enter_context(private_arena_dir(layout.Layout(2 * channels, cap).total)) if huge else None
    arena = Arena.create(2 * channels, cap, where) if where else Arena.create(2 * channels, cap)
    out = tempfile.mkdtemp(prefix="wholecall-bench-")
    pipe = Pipeline(arena, default_open_sink(), capacity=channels, tick_s=tick_ms / 1000, max_block=max(1, block),
                    flush_samples=int(8 * flush_ms))
    if part_rows:  # the worker's ticks in parts (stops served between them; none here)
        pipe.part_rows = part_rows
        pipe.between_parts = lambda: None
    from wholecall.sim.signals import speech_like

    clip = speech_like(8.0, 140, 3)  # voiced, syllabic, with pauses: what the detector sees on calls
    rng = np.random.default_rng(1)
    if library:
        # The stress run's clips (espeak-ng speech, silence, DTMF): each job its own program
        # and phase, and its legs at unrelated ring positions, as real producers leave them.
        from wholecall.sim.loadgen import load_programs

        progs = load_programs()[0]
        prog = rng.integers(progs.count, size=channels)
        phase = rng.integers(progs.length, size=channels)
        offset = rng.integers(cap, size=2 * channels)
    try:
        for c in range(channels):
            start = int(offset[2 * c]) if library else 0
            msg = StartJob(job_id=c + 1, channel=c, slot_in=2 * c, slot_out=2 * c + 1, start_pos=start,
                           path=os.path.join(out, f"c{c}.wav"), file_format=fmt, rate=8000, max_bytes=0,
                           ms_max_silence=5000, ms_initial_silence=0, dtmf_elim=dtmf, mode="mixed", cipher=None)
            arena.job[2 * c] = arena.job[2 * c + 1] = c + 1
            if library:
                arena.write_pos[2 * c] = arena.write_pos[2 * c + 1] = start
            err = pipe.start(msg)
            assert not err, err
        slots = np.arange(2 * channels)
        ar = np.arange(tick)
        ticks = int(seconds * 1000 / tick_ms)
        prof = None
        if profile:
            import cProfile

            prof = cProfile.Profile()
        t_cpu = 0.0
        t_start = time.monotonic()
        for i in range(ticks):
            if paced:  # one tick per tick_ms of wall time, as a worker fed in real time runs
                delay = t_start + i * tick_ms / 1000 - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            # Producers (not timed): every leg advances one tick of audio.
            if library:
                w = arena.write_pos[slots]
                t = (phase[:, None] + i * tick + ar) % progs.length
                src = progs.audio[prog[:, None, None], np.arange(2)[None, :, None], t[:, None, :]]
                arena.data[slots[:, None], (w[:, None] + ar) & (cap - 1)] = src.reshape(2 * channels, tick)
                arena.write_pos[slots] = w + tick
            else:
                w = int(arena.write_pos[0])
                cols = (w + ar) & (cap - 1)
                src = clip[(i * tick + ar) % len(clip)]
                arena.data[:, cols] = src
                arena.write_pos[slots] = w + tick
            c0 = time.process_time()
            if prof:
                prof.enable()
            pipe.tick(block=block)
            if prof:
                prof.disable()
            t_cpu += time.process_time() - c0
        pipe.abort_all(Cause.ABORTED)
        c0 = time.process_time()
        while pipe.jobs:
            pipe.tick(block=block)
        t_end = time.process_time() - c0
        result = {
            "channels": channels, "seconds": seconds, "tick_ms": tick_ms, "dtmf": dtmf, "format": fmt,
            "cpu_s": t_cpu, "us_per_channel_second": 1e6 * t_cpu / (channels * seconds),
            "finalise_ms_per_job": 1e3 * t_end / channels,
        }
        if prof:
            import io
            import pstats

            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(18)
            result["profile"] = s.getvalue()
        return result
    finally:
        import shutil

        shutil.rmtree(out, ignore_errors=True)  # first: nothing below may leave the recordings behind
        pipe.close()
        del pipe
        try:
            arena.close()
        finally:
            mounts.close()  # the private tmpfs is unmounted even if the arena refuses to close


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--channels", type=int, nargs="+", default=[1000])
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--tick-ms", type=float, default=100)
    p.add_argument("--no-dtmf", action="store_true")
    p.add_argument("--format", default="alaw")
    p.add_argument("--block", type=int, default=5,
                   help="frames per pipeline step (the worker's choice at scale: 5, one 100 ms tick)")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--paced", action="store_true",
                   help="tick at real time (sleep between ticks), as workers fed by real producers do")
    p.add_argument("--library", action="store_true",
                   help="feed the stress run's clip library, each job at its own program, phase and ring offset")
    p.add_argument("--small-pages", action="store_true", help="the arena in /dev/shm (4 KiB pages), not a 2 MiB-page tmpfs")
    p.add_argument("--flush-ms", type=float, default=2000, help="audio staged per job between file writes")
    p.add_argument("--part-rows", type=int, default=0, help="tick in parts of this many jobs, as the worker does (0: whole)")
    a = p.parse_args()
    # A kill (SIGTERM) runs the `finally` clauses: the private tmpfs arena (2.6 GB of 2 MiB
    # pages at 10,000 channels) is unmounted, not left behind as two killed runs left it.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    print("| channels | tick ms | block | dtmf | µs CPU per channel-second |")
    print("| ---: | ---: | ---: | --- | ---: |")
    for n in a.channels:
        r = run(n, a.seconds, a.tick_ms, not a.no_dtmf, a.profile, a.format, a.library, a.block, a.paced, not a.small_pages,
                a.flush_ms, a.part_rows)
        print(f"| {n} | {a.tick_ms:g} | {a.block} | {r['dtmf']} | {r['us_per_channel_second']:.1f} |")
        if a.profile:
            print(r["profile"])


if __name__ == "__main__":
    main()
