"""Encode throughput per codec and per rate, in channel-seconds of audio per CPU-second.

Three measurements on the same speech (espeak-ng, 8 kHz; a noise-modulated
tone if espeak-ng is missing), fed in blocks of `--block-ms` as the pipeline
does (it flushes each job to its writer once a second):

  1. the streaming encoder alone, 8 kHz mono (what a codec costs);
  2. the resampler alone, 8 kHz -> each rate, mono;
  3. the whole `WavWriter.write()` path per codec x rate: resample, encode,
     append and header refresh through an in-memory sink (no disk I/O, so the
     number is the writer's CPU, not the filesystem's).

CPU is `time.process_time()` (user + system of this process); each cell is
the best of `--repeat` runs. Prints markdown tables.

    python bench/codecs.py [--seconds 20] [--block-ms 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable

import numpy as np

# `wholecall` is the installed package (pip install -e .): the repository root on sys.path would
# shadow it with the top-level facade folder.
import soundfile as sf
import soxr

from wholecall.formats.codecs import FORMATS, RATES
from wholecall.worker.codecs import make_encoder, oki
from wholecall.worker.resample import StreamResampler
from wholecall.worker.wavfile import WavWriter


class MemorySink:
    """A Sink that keeps the file in memory (the benchmark measures the writer, not the disk)."""

    path = "<memory>"

    def __init__(self) -> None:
        self.buf = bytearray()

    def pwrite(self, data: bytes, offset: int) -> None:
        end = offset + len(data)
        if end > len(self.buf):
            self.buf.extend(bytes(end - len(self.buf)))
        self.buf[offset:end] = data

    def truncate(self, size: int) -> None:
        del self.buf[size:]

    def size(self) -> int:
        return len(self.buf)

    def finish(self) -> int:
        return len(self.buf)

    def discard(self) -> None:
        self.buf = bytearray()


def speech(seconds: float) -> np.ndarray:
    """`seconds` of 8 kHz int16 speech (espeak-ng, repeated as needed)."""
    if shutil.which("espeak-ng"):
        with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
            text = "Whole call recording keeps both sides of the conversation. Please hold the line."
            subprocess.run(["espeak-ng", "-w", tmp.name, text], check=True, capture_output=True)
            x, rate = sf.read(tmp.name, dtype="float32")
        x = soxr.resample(x, rate, 8000)
        x = x / np.max(np.abs(x)) * 0.7
    else:  # pragma: no cover - fallback for machines without espeak-ng
        t = np.arange(8000 * 3) / 8000
        x = 0.5 * np.sin(2 * np.pi * 440 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    pcm = np.clip(np.rint(x * 32768), -32768, 32767).astype(np.int16)
    return np.resize(pcm, int(seconds * 8000))


def best_cpu(run: Callable[[], None], repeat: int) -> float:
    """Least CPU seconds of `repeat` runs of `run`."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        run()
        best = min(best, time.process_time() - t0)
    return max(best, 1e-9)


def blocks(x: np.ndarray, block: int) -> list[np.ndarray]:
    return [x[i : i + block] for i in range(0, len(x), block)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="audio per run, seconds (mono)")
    ap.add_argument("--block-ms", type=int, default=1000, help="block size per write() in ms of 8 kHz input")
    ap.add_argument("--repeat", type=int, default=3, help="runs per cell; the best is kept")
    args = ap.parse_args()

    x = speech(args.seconds)
    block = args.block_ms * 8
    parts = blocks(x, block)
    parts_2d = [p.reshape(-1, 1) for p in parts]
    seconds = len(x) / 8000

    print(f"Speech, {seconds:.0f} s mono per run, {args.block_ms} ms blocks, best of {args.repeat}; "
          f"channel-seconds per CPU-second (higher is better) and CPU µs per channel-second.\n")  # fmt: skip

    print("Encoder alone, 8 kHz mono:\n")
    print("| codec | ch-s / CPU-s | µs / ch-s |")
    print("| --- | ---: | ---: |")
    for name in FORMATS:

        def run_encoder(name: str = name) -> None:
            enc = make_encoder(name, 1)
            for p in parts_2d:
                enc.encode(p)
            enc.flush()

        cpu = best_cpu(run_encoder, args.repeat)
        print(f"| {name} | {seconds / cpu:,.0f} | {cpu / seconds * 1e6:,.1f} |")

    def run_oki_reference() -> None:
        enc = oki.PyOkiEncoder(1)
        for p in parts_2d:
            enc.encode(p)
        enc.flush()

    cpu = best_cpu(run_oki_reference, args.repeat)
    print(f"| oki (Python reference, not used) | {seconds / cpu:,.0f} | {cpu / seconds * 1e6:,.1f} |")

    print("\nResampler alone (soxr HQ, streaming), 8 kHz mono in:\n")
    print("| rate | ch-s / CPU-s | µs / ch-s |")
    print("| --- | ---: | ---: |")
    for rate in RATES:

        def run_resampler(rate: int = rate) -> None:
            r = StreamResampler(rate, 1)
            for p in parts_2d:
                r.process(p)
            r.flush()

        cpu = best_cpu(run_resampler, args.repeat)
        print(f"| {rate} | {seconds / cpu:,.0f} | {cpu / seconds * 1e6:,.1f} |")

    print("\nWhole `WavWriter.write()` path (resample + encode + append + header refresh), ch-s / CPU-s:\n")
    print("| codec | " + " | ".join(f"{r} Hz" for r in RATES) + " |")
    print("| --- |" + " ---: |" * len(RATES))
    for name in FORMATS:
        cells = []
        for rate in RATES:

            def run_writer(name: str = name, rate: int = rate) -> None:
                w = WavWriter(MemorySink(), name, rate)
                for p in parts:
                    w.write(p)
                w.close()

            cpu = best_cpu(run_writer, args.repeat)
            cells.append(f"{seconds / cpu:,.0f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
