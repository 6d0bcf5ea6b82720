"""Where does the controller's memory go in the soak? A short, fast churn under tracemalloc.

Runs `sim.churn.Soak` in this process (as `wholecall stress --churn` does) with short
calls, and at every resource sample also records: the traced Python heap (tracemalloc),
live objects by type (gc), the controller's and the harness's per-call structures, and
RssAnon. Snapshots are taken once N and 3N calls have ended; the top growing allocation
sites between them are printed, with the per-call figures.

    python bench/leak_probe.py --channels 200 --calls 6000 --call-seconds 0.5 1
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import gc
import json
import os
import sys
import tempfile
import time
import tracemalloc

from wholecall.sim.churn import ChurnConfig, Soak
from wholecall.sim.stress import proc_anon

#: Objects the cyclic collector freed, by generation (a per-call cycle shows as steady gen-2 garbage).
GC_FREED = [0, 0, 0]
GC_RUNS = [0, 0, 0]


def _on_gc(phase: str, info: dict) -> None:
    if phase == "stop":
        GC_FREED[info["generation"]] += info["collected"]
        GC_RUNS[info["generation"]] += 1


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                                                "uordblks", "fordblks", "keepcost")]


def glibc_heap() -> dict:
    """glibc malloc's own figures (all arenas): bytes handed out and bytes it holds free."""
    try:
        f = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return {}
    f.restype = _MallInfo2
    m = f()
    return {"malloc_in_use": m.uordblks + m.hblkhd, "malloc_free_held": m.fordblks}


def live_types() -> collections.Counter[str]:
    return collections.Counter(type(o).__qualname__ for o in gc.get_objects())


class ProbeSoak(Soak):
    def __init__(self, cfg: ChurnConfig, marks: tuple[int, int], frames: int) -> None:
        super().__init__(cfg)
        self.marks = list(marks)
        self.frames = frames
        self.snaps: list[tuple[int, tracemalloc.Snapshot, collections.Counter[str], dict]] = []
        self.probe: list[dict] = []

    def structures(self) -> dict:
        ctl = self.ctl
        sup = ctl.supervisor
        return {
            "ctl._channels": len(ctl._channels), "ctl._jobs": len(ctl._jobs),
            "sup.routes": len(sup.routes), "sup.lost": len(sup.lost), "sup.dropped": sum(sup.dropped.values()),
            "sup._outbox": len(sup._outbox),
            "worker.jobs": sum(len(w.jobs) for w in sup.workers), "worker.pending": sum(len(w.pending) for w in sup.workers),
            "arena.free": self.arena.free_slots,
            "soak.live": len(self.live), "soak.fed_q": self.fed_q.qsize(),
            "pool.pending": len(getattr(self.pool, "_pending_work_items", {})),
            "starters.q": self.starters._work_queue.qsize() if hasattr(self, "starters") else 0,
            "stoppers.q": self.stoppers._work_queue.qsize() if hasattr(self, "stoppers") else 0,
        }

    def _sample(self, elapsed: float) -> dict:
        s = super()._sample(elapsed)
        if not hasattr(self, "starters"):
            return s
        cur, peak = tracemalloc.get_traced_memory()
        row = {"t": s["t"], "ended": self.tally.ended, "anon": s["controller_anon"], "traced": cur,
               "gc_freed": list(GC_FREED), "gc_runs": list(GC_RUNS), **glibc_heap(),
               **self.structures()}
        self.probe.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        if self.marks and self.tally.ended >= self.marks[0] and tracemalloc.is_tracing():
            self.marks.pop(0)
            row["gc_collect_now"] = gc.collect()
            row["traced_after_collect"] = tracemalloc.get_traced_memory()[0]
            snap = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib._bootstrap>")])
            self.snaps.append((self.tally.ended, snap, live_types(), dict(row, anon=proc_anon(os.getpid()))))
        return s


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--channels", type=int, default=200)
    p.add_argument("--calls", type=int, default=6000, help="the second snapshot (the first at a third of it)")
    p.add_argument("--call-seconds", type=float, nargs=2, default=(0.5, 1.0))
    p.add_argument("--seconds", type=float, default=0, help="run length (default: long enough for --calls)")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--no-trace", action="store_true", help="RssAnon only (tracemalloc's own bookkeeping inflates it)")
    p.add_argument("--rows", default="", help="write the per-sample rows here (JSON)")
    a = p.parse_args(argv)
    gc.callbacks.append(_on_gc)
    if not a.no_trace:
        tracemalloc.start(a.frames)
    rate = a.channels / ((a.call_seconds[0] + a.call_seconds[1]) / 2 + 0.3)
    seconds = a.seconds or 1.3 * a.calls / rate + 10
    cfg = ChurnConfig(channels=a.channels, seconds=seconds, call_min_s=a.call_seconds[0],
                      call_max_s=a.call_seconds[1], workers=a.workers, start_rate=max(200.0, 2 * rate),
                      sample_s=2.0, spot_every=0, out=tempfile.mkdtemp(prefix="leak-probe-"), quiet=True)
    soak = ProbeSoak(cfg, (a.calls // 3, a.calls), a.frames)
    t0 = time.monotonic()
    rep = Soak.execute(soak)
    print(f"run: {rep['run']['calls']} calls in {time.monotonic() - t0:.0f} s; ok={rep['ok']} {rep['failures'][:3]}")
    if a.rows:
        with open(a.rows, "w") as f:
            json.dump({"config": rep["config"], "resources": rep["resources"], "rows": soak.probe}, f, indent=1)
    steady = [r for r in soak.probe if r["t"] >= 20 and r["soak.live"] > 0]
    if steady:
        q = len(steady) // 4
        print(f"RssAnon over the steady part: first {steady[0]['anon'] >> 10} KiB, max {max(r['anon'] for r in steady) >> 10}"
              f" KiB, last {steady[-1]['anon'] >> 10} KiB; first-quarter max {max(r['anon'] for r in steady[:q or 1]) >> 10}"
              f" KiB, last-quarter max {max(r['anon'] for r in steady[-(q or 1):]) >> 10} KiB")
    print(f"cyclic GC: runs by generation {GC_RUNS}, objects freed {GC_FREED} "
          f"({sum(GC_FREED) / max(1, rep['run']['ended']):.1f} per call)")
    if a.no_trace:
        return 0
    if len(soak.snaps) < 2:
        print("not enough calls for two snapshots")
        return 1
    (n1, s1, t1, r1), (n2, s2, t2, r2) = soak.snaps[:2]
    calls = n2 - n1
    print(f"between {n1} and {n2} ended calls ({calls}):")
    for k in ("anon", "traced_after_collect"):
        print(f"  {k}: {r1[k]} -> {r2[k]}  ({(r2[k] - r1[k]) / calls:+.1f} B/call)")
    skip = ("t", "ended", "anon", "traced", "traced_after_collect")
    print("  structures at the two marks:", {k: (r1[k], r2[k]) for k in r1 if k not in skip})
    grown = [(k, t2[k] - t1.get(k, 0)) for k in t2 if t2[k] - t1.get(k, 0) > 0]
    grown.sort(key=lambda kv: -kv[1])
    print("  live objects grown by type:", grown[:20])
    stats = s2.compare_to(s1, "traceback")
    print(f"  top {a.top} growing allocation sites:")
    for st in [st for st in stats if st.size_diff > 0][:a.top]:
        print(f"    {st.size_diff:+9d} B {st.count_diff:+6d} blocks  ({st.size_diff / calls:+.2f} B/call)")
        for line in st.traceback.format()[-2 * a.frames:]:
            print("        " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
