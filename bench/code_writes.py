"""CPU of a flush of many G.711 recordings: one `WavWriter.write_codes` per file against
the pipeline's batch (`WavWriter.codes_target`, one compiled loop of pwrite(2) in
`kernels.pwrite_rows`, then `codes_written` per file).

Why: a flush of 10,000 recordings is 10,000 writes every 2 s, and the Python around each
write was part of its cost. The two ways run in alternating rounds on two sets of files
(the host's drift between rounds hits both), each round appending 16 kB (2 s of A-law)
to every file, with the pipeline's header refresh interval.

    python bench/code_writes.py --files 4000 --rounds 8 --dir /dev/shm/code-writes

Prints each round's CPU per write (µs) for both ways and their medians; the files are
removed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time

import numpy as np

from wholecall.worker import kernels
from wholecall.worker.crypto import open_sink
from wholecall.worker.pipeline import HEADER_REFRESH_SAMPLES
from wholecall.worker.wavfile import WavWriter

FLUSH = 16_000  # codes per write: 2 s of 8 kHz G.711, the worker's default flush


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=4000)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--dir", default="/dev/shm/code-writes")
    a = p.parse_args()
    os.makedirs(a.dir, exist_ok=False)
    kernels.warm_up()
    made: list[WavWriter] = []
    try:
        def writers(tag: str) -> list[WavWriter]:
            ws = [WavWriter(open_sink(os.path.join(a.dir, f"{tag}{i}.wav"), None), "alaw", 8000,
                            refresh_samples=HEADER_REFRESH_SAMPLES) for i in range(a.files)]
            made.extend(ws)
            return ws

        one, batch = writers("one"), writers("batch")
        stage = np.random.default_rng(1).integers(0, 256, (a.files, FLUSH // 160, 160), dtype=np.uint8)
        rows = np.arange(a.files, dtype=np.int64)
        times: dict[str, list[float]] = {"write_codes": [], "batched": []}
        for _ in range(a.rounds):
            t = time.process_time()
            for i, w in enumerate(one):
                w.write_codes(stage[i].reshape(-1))
            times["write_codes"].append(time.process_time() - t)
            t = time.process_time()
            targets = [w.codes_target(FLUSH) for w in batch]
            fds = np.fromiter((x[0] for x in targets), np.int64, a.files)
            offsets = np.fromiter((x[1] for x in targets), np.int64, a.files)
            wrote = np.empty(a.files, np.int64)
            kernels.pwrite_rows(fds, stage, rows, FLUSH, offsets, wrote)
            for w, n in zip(batch, wrote.tolist()):
                assert n == FLUSH, f"a short write ({n}): is {a.dir} full?"
                w.codes_written(n)
            times["batched"].append(time.process_time() - t)
        for way, ts in times.items():
            per = [1e6 * x / a.files for x in ts]
            print(f"{way:12s} us per write: {' '.join(f'{x:.1f}' for x in per)}  median {statistics.median(per):.1f}")
    finally:
        for w in made:
            w.close()
        shutil.rmtree(a.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
