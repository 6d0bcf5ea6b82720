"""Encryption cost per recorded channel-second, in µs of CPU (user + system of this process).

Simulates what a worker does to a sink for each recording: open it, write a
44-byte header, append one second of audio per write (DESIGN: one write per
file per second), refresh the header sizes every 5 s, cut a 1 s silent tail and
patch the sizes at the end, finish. The same pattern runs through a plain
`FileSink` and through each encrypted scheme; the difference is the encryption
cost. A channel-second is 8000 bytes of A-law or 16000 bytes of s16.

    python bench/crypto.py [--seconds 60] [--recordings 20] [--repeat 3] [--dir DIR]

Prints a markdown table. Fixed costs per recording (key wrap at open, fsync and
rename at finish) are amortised over `--seconds`; they are also shown per recording.
"""

from __future__ import annotations

import argparse
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Callable
from typing import Any

# `wholecall` is the installed package (pip install -e .): the repository root on sys.path would
# shadow it with the top-level facade folder.
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402

from wholecall.worker.crypto import open_sink  # noqa: E402

FORMATS = {"alaw": 8000, "s16": 16000}  # bytes per channel-second


def _schemes() -> dict[str, dict[str, Any] | None]:
    pub = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    pem = pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return {
        "plain": None,
        "aes-128-cbc": {"scheme": "aes-cbc", "key": os.urandom(16), "iv": os.urandom(16)},
        "aes-256-cbc": {"scheme": "aes-cbc", "key": os.urandom(32), "iv": os.urandom(16)},
        "envelope (RSA-2048, AES-256-GCM)": {"scheme": "envelope", "public_key": pem},
    }


def _one_run(directory: str, cipher: dict[str, Any] | None, per_second: int, seconds: int,
             recordings: int) -> tuple[float, float, float]:
    """CPU seconds spent in (open, recording, finish) over `recordings` recordings."""
    audio = os.urandom(per_second)
    t_open = t_rec = t_fin = 0.0
    clock: Callable[[], float] = time.process_time
    for r in range(recordings):
        path = os.path.join(directory, f"r{r}.wav")
        t0 = clock()
        sink = open_sink(path, cipher)
        t1 = clock()
        sink.pwrite(b"RIFF" + bytes(4) + b"WAVE" + bytes(32), 0)
        end = 44
        for s in range(seconds):
            sink.pwrite(audio, end)
            end += per_second
            if s % 5 == 4:
                sink.pwrite(struct.pack("<I", end - 8), 4)
                sink.pwrite(struct.pack("<I", end - 44), 40)
        end -= per_second
        sink.truncate(end)
        sink.pwrite(struct.pack("<I", end - 8), 4)
        sink.pwrite(struct.pack("<I", end - 44), 40)
        t2 = clock()
        sink.finish()
        t3 = clock()
        t_open += t1 - t0
        t_rec += t2 - t1
        t_fin += t3 - t2
    for name in os.listdir(directory):
        os.unlink(os.path.join(directory, name))
    return t_open, t_rec, t_fin


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=int, default=60, help="length of each recording in seconds")
    p.add_argument("--recordings", type=int, default=20, help="recordings per measurement")
    p.add_argument("--repeat", type=int, default=3, help="measurements per cell (the fastest is kept)")
    p.add_argument("--dir", default=None, help="where to write (default: a temp dir under the cwd)")
    args = p.parse_args(argv)
    directory = tempfile.mkdtemp(prefix="bench-crypto-", dir=args.dir or os.getcwd())
    try:
        schemes = _schemes()
        ch_s = args.seconds * args.recordings
        print(f"{args.recordings} recordings x {args.seconds} s per cell, best of {args.repeat}; "
              f"µs of CPU per channel-second unless noted\n")
        print("| format | scheme | open (µs/recording) | while recording | finish | total | "
              "encryption overhead vs plain |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for fmt, per_second in FORMATS.items():
            plain_total = None
            for name, cipher in schemes.items():
                runs = [_one_run(directory, cipher, per_second, args.seconds, args.recordings)
                        for _ in range(args.repeat)]
                t_open, t_rec, t_fin = min(runs, key=sum)
                total = (t_open + t_rec + t_fin) / ch_s * 1e6
                if plain_total is None:
                    plain_total = total
                print(f"| {fmt} | {name} | {t_open / args.recordings * 1e6:.0f} | {t_rec / ch_s * 1e6:.1f} | "
                      f"{t_fin / ch_s * 1e6:.1f} | {total:.1f} | "
                      f"{'—' if cipher is None else f'{total - plain_total:+.1f}'} |")
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
