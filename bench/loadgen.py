"""CPU of the stress load generator's writes, per channel-second: `sim.loadgen.Cohort.step`
(`LegBatchWriter.write_rows`: each block straight from its source rows into the rings, one
compiled pass) against the way it wrote before (issue 25): gather the block with a fancy
index into a temporary, then `LegBatchWriter.write` scatters it into the rings; and, as the
floor, a plain slice copy of a ready block into the same rings (`memcpy`).

The set-up of a `wholecall stress` run without the processes: one arena with the
product's ring (8,192 ms) on a private huge-page tmpfs when root (as stress mounts it),
every leg recorded, cohorts of `--cohort` calls (the ramp at 1,000 starts/s hands over
~100 per 100 ms block), a clip library of the stress default's size (16 programs x 2 legs
x 40 s). Between blocks a "worker" catches every read position up (not timed). Pure CPU
(`time.process_time()`), the two ways alternated round by round in one process, best
round of each; the foreign CPU share of the machine over the run is printed because the
machine is shared.

    python bench/loadgen.py [--channels 10000] [--cohort 100] [--seconds 5] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from wholecall.shm import Arena
from wholecall.shm import layout as L
from wholecall.shm.arena import SHM_DIR, huge_pages
from wholecall.shm.batch import warm_up
from wholecall.sim.arena_mount import private_arena_dir
from wholecall.sim.loadgen import Cohort

RATE = 8000


def busy_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def cohorts(arena: Arena, channels: int, size: int, sources: np.ndarray, length: int, block: int,
            seconds: float, rng: np.random.Generator) -> list[Cohort]:
    out: list[Cohort] = []
    for c0 in range(0, channels, size):
        ch = list(range(c0, min(channels, c0 + size)))
        msg = {"cohort": len(out), "channels": ch, "slots": [s for c in ch for s in (2 * c, 2 * c + 1)],
               "programs": rng.integers(0, sources.shape[0] // 2, len(ch)).tolist(),
               "phase": int(rng.integers(length)), "samples": round(seconds * RATE)}
        out.append(Cohort(arena, msg, sources, length, block, 0.0))
    return out


def copy_twice(c: Cohort) -> None:
    """The step before issue 25: a fancy-index gather into a temporary, then `write` scatters it."""
    n = min(c.block, c.total - c.fed)
    start = (c.phase + c.fed) % c._length
    c.writer.write(c._sources[c.rows, start:start + n])
    c.fed += n


def one_pass(c: Cohort) -> None:
    c.step(0.0)


_READY: dict[tuple[int, int], np.ndarray] = {}


def memcpy_floor(c: Cohort) -> None:
    """Not a producer: a ready block copied with plain slices into the cohort's rings (its
    slots are consecutive here), no gather and no bookkeeping: what moving the bytes costs."""
    n = min(c.block, c.total - c.fed)
    data = c.writer.arena.data
    s0, s1 = int(c.writer.slots[0]), int(c.writer.slots[-1]) + 1
    blk = _READY.get((s1 - s0, n))
    if blk is None:  # any audio will do: rows of the library, tiled to the cohort's legs
        blk = _READY[(s1 - s0, n)] = np.resize(c._sources[:, :n], (s1 - s0, n))
    col = int(c.writer.arena.write_pos[s0]) & (data.shape[1] - 1)
    first = min(n, data.shape[1] - col)
    data[s0:s1, col:col + first] = blk[:, :first]
    data[s0:s1, :n - first] = blk[:, first:]
    c.writer.arena.write_pos[s0:s1] += n
    c.fed += n


def feed(arena: Arena, cs: list[Cohort], step) -> float:
    """Feed every cohort to its end, block by block; CPU seconds spent in the writes."""
    spent = 0.0
    while not cs[0].finished:
        t = time.process_time()
        for c in cs:
            step(c)
        spent += time.process_time() - t
        arena.read_pos[:] = arena.write_pos  # the worker keeps up (not timed)
    return spent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--channels", type=int, default=10000)
    p.add_argument("--cohort", type=int, default=100, help="calls per cohort (default %(default)s)")
    p.add_argument("--seconds", type=float, default=5.0, help="audio per round (default %(default)s)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--block-ms", type=float, default=100.0)
    p.add_argument("--ring-ms", type=int, default=8192)
    a = p.parse_args()
    rng = np.random.default_rng(1)
    block = int(a.block_ms * RATE / 1000)
    length = 40 * RATE
    flat = rng.integers(-3000, 3000, (32, length), dtype=np.int16)
    sources = np.concatenate([flat, flat[:, :block]], axis=1)
    warm_up()
    ways = {"copy_twice": copy_twice, "write_rows": one_pass, "memcpy": memcpy_floor}
    best = dict.fromkeys(ways, float("inf"))
    b0, t0 = busy_jiffies()
    c0 = time.process_time()
    slots, cap = 2 * a.channels, a.ring_ms * RATE // 1000
    with private_arena_dir(L.Layout(slots, cap).total) as d, Arena.create(slots, cap, d or SHM_DIR) as arena:
        pages = "2 MiB" if huge_pages(d or SHM_DIR) else "4 KiB"
        arena.data[:] = 0  # every page mapped, as after the first lap of a long run
        arena.job[:] = 1
        for _ in range(a.rounds):
            for name, step in ways.items():
                cs = cohorts(arena, a.channels, a.cohort, sources, length, block, a.seconds, rng)
                best[name] = min(best[name], feed(arena, cs, step))
    b1, t1 = busy_jiffies()
    ours = time.process_time() - c0
    hz = os.sysconf("SC_CLK_TCK")
    foreign = max(0.0, (b1 - b0) / hz - ours) / ((t1 - t0) / hz)
    ch_s = a.channels * a.seconds
    print(f"{a.channels} channels, cohorts of {a.cohort}, {a.block_ms:g} ms blocks, {a.seconds:g} s per round, "
          f"best of {a.rounds}; arena on {pages} pages (as stress mounts it); foreign CPU share {foreign:.2f}")
    for name, s in best.items():
        print(f"  {name:10s} {1e6 * s / ch_s:6.2f} us CPU per channel-second")
    print(f"  copy_twice / write_rows {best['copy_twice'] / best['write_rows']:.2f}x; "
          f"write_rows / memcpy {best['write_rows'] / best['memcpy']:.2f}x")


if __name__ == "__main__":
    main()
