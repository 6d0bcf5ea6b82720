"""The controller's memory per recording call: Python allocations (tracemalloc) made by
answering N calls and starting a recording on each, by allocation site.

Why: issue 25 holds the controller to ~10 kB per call at 20,000 calls. `wholecall stress`
reports the process's memory per channel (RSS: allocator slack, ZeroMQ and the arena's
bookkeeping included); this names the Python objects behind it, so a change can be
measured to the byte.

    OPENBLAS_NUM_THREADS=1 python bench/call_memory.py --calls 3000
"""

from __future__ import annotations

import argparse
import gc
import shutil
import tempfile
import tracemalloc

from wholecall.controller import Controller


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=3000)
    p.add_argument("--top", type=int, default=15, help="allocation sites to list")
    a = p.parse_args()
    n = a.calls
    d = tempfile.mkdtemp(prefix="callmem-", dir="/var/tmp")
    try:
        with Controller(workers=2, recordings_dir=d, max_channels=n, ring_ms=2048) as ctl:
            gc.collect()
            tracemalloc.start(1)
            before = tracemalloc.take_snapshot()
            chans = []
            for i in range(n):
                ch = ctl.incoming_call()
                ch.answer()
                chans.append(ch)
                assert ch.WholeCallRecorder.start(f"{i // 1000:03d}/c{i}.wav", milliseconds_max_silence=5000)
            gc.collect()
            stats = tracemalloc.take_snapshot().compare_to(before, "lineno")
            tracemalloc.stop()
            print(f"{n} calls recording: {sum(s.size_diff for s in stats) / n:.0f} B of Python allocations per call")
            for s in stats[:a.top]:
                print(f"  {s.size_diff / n:6.0f} B {s.count_diff / n:5.1f} objects  {s.traceback}")
            for ch in chans:
                ch.WholeCallRecorder.stop()
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
