"""What a transient recording costs (`worker.descriptors`): kept vs reopened per write.

Writes `--files` A-law recordings the way the pipeline does (one `write_codes` of one
second per file per flush, header refreshed every 5 s, then close), once with every
file keeping its descriptor and once with none kept (every write reopens the file,
checks its inode and closes it). Reports CPU (process time: user + system) per flush,
which is per channel-second at the default 1 s flush, and the difference.

    python bench/descriptors.py --files 2000 --seconds 10 --dir /path/on/the/recordings/disk
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

import numpy as np

from wholecall.worker.descriptors import Descriptors
from wholecall.worker.pipeline import HEADER_REFRESH_SAMPLES
from wholecall.worker.sink import FileSink
from wholecall.worker.wavfile import WavWriter

RATE = 8000


def run(files: int, seconds: int, where: str, budget: int | None) -> dict:
    d = tempfile.mkdtemp(prefix="bench-descriptors-", dir=where)
    desc = Descriptors(budget)
    codes = np.random.default_rng(1).integers(0, 256, RATE).astype(np.uint8)
    try:
        writers = [WavWriter(FileSink(os.path.join(d, f"{i}.wav"), descriptors=desc), "alaw", RATE,
                             refresh_samples=HEADER_REFRESH_SAMPLES) for i in range(files)]
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(seconds):
            for w in writers:
                w.write_codes(codes)
        c1, t1 = time.process_time(), time.perf_counter()
        for w in writers:
            w.close()
        c2 = time.process_time()
        flushes = files * seconds
        return {"budget": budget, "files": files, "seconds": seconds, "flushes": flushes,
                "cpu_us_per_flush": round(1e6 * (c1 - c0) / flushes, 2),
                "wall_us_per_flush": round(1e6 * (t1 - t0) / flushes, 2),
                "close_cpu_us_per_file": round(1e6 * (c2 - c1) / files, 2), "reopens": desc.reopens}
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--dir", default=".", help="where to write (the recordings' file system)")
    p.add_argument("--rounds", type=int, default=3, help="A/B pairs (kept, transient), alternated")
    a = p.parse_args()
    results = []
    for _ in range(a.rounds):
        for budget in (None, 0):
            results.append(run(a.files, a.seconds, a.dir, budget))
            print(json.dumps(results[-1]), flush=True)
    kept = sorted(r["cpu_us_per_flush"] for r in results if r["budget"] is None)
    trans = sorted(r["cpu_us_per_flush"] for r in results if r["budget"] == 0)
    print(json.dumps({"kept_cpu_us_per_flush_median": kept[len(kept) // 2],
                      "transient_cpu_us_per_flush_median": trans[len(trans) // 2],
                      "extra_us_per_channel_second_when_transient": round(trans[len(trans) // 2]
                                                                          - kept[len(kept) // 2], 2)}))


if __name__ == "__main__":
    main()
