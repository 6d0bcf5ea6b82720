"""CPU cost of the DTMF bank (detector + eliminator + delay line) per leg-second.

Every leg is one bank row fed one 20 ms frame per call, as the worker does. The legs
carry real speech (espeak-ng, several voices and languages, each leg at its own offset
and level, silent half of the time as in a conversation) over a low noise floor; in
the "keying" rows 2 % of the legs also key ten digits (100 ms on, 100 ms off, all at
once), so the prescreen, the fine analysis, the digit runs and the muting all run.
Only `DtmfBank.process` is timed (time.process_time), with single-threaded BLAS; each
row is the cheapest of `--repeat` runs, as load from other processes only adds.

    OPENBLAS_NUM_THREADS=1 python bench/dsp.py            # 1,000 and 10,000 legs
    python bench/dsp.py --legs 1000 --seconds 10 --repeat 5
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads BLAS
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import io
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from wholecall.worker.dtmf import FRAME, HIGH_HZ, LOW_HZ, DtmfBank, dbm0_mean_square

RATE = 8000
_TEXTS = [
    ("en-us", "Thank you for calling. Please hold while I look up your account, it will only take a moment."),
    ("en-gb+f3", "Could you confirm the first line of your address and your date of birth, please? Lovely."),
    ("de+m3", "Guten Tag, bitte nennen Sie Ihre Kundennummer und das Geburtsdatum. Vielen Dank."),
    ("fr-fr+f2", "Bonjour, pour des raisons de qualité cet appel peut être enregistré. Merci de patienter."),
    ("es+m7", "Buenas tardes, por favor indique su número de cliente y el motivo de su llamada."),
    ("it+f4", "Buongiorno, la sua chiamata è importante per noi, resti in linea per favore."),
]


def speech(seconds: float) -> np.ndarray:
    """About `seconds` of espeak-ng speech at 8 kHz, active level -15 dBm0."""
    import soundfile as sf
    import soxr

    parts: list[np.ndarray] = []
    total = 0
    i = 0
    while total < seconds * RATE:
        voice, text = _TEXTS[i % len(_TEXTS)]
        wav = subprocess.run(["espeak-ng", "-v", voice, "-s", str(140 + 20 * (i % 4)), "--stdout", text],
                             capture_output=True, check=True).stdout
        x, sr = sf.read(io.BytesIO(wav), dtype="float32")
        x = soxr.resample(x, sr, RATE)
        parts.append(x)
        total += len(x)
        i += 1
    s = np.concatenate(parts).astype(np.float64)
    fr = s[: len(s) // FRAME * FRAME].reshape(-1, FRAME)
    e = (fr**2).mean(axis=1)
    active = e > e.max() * 1e-4
    s *= np.sqrt(dbm0_mean_square(-15.0) / e[active].mean())
    return s.astype(np.float32)


def run(legs: int, seconds: float, corpus: np.ndarray, keying: float = 0.02, seed: int = 0) -> dict[str, float]:
    """Feed `legs` rows for `seconds`; CPU seconds spent in DtmfBank.process and counts."""
    rng = np.random.default_rng(seed)
    nframes = int(seconds * RATE) // FRAME
    rows = np.arange(legs)
    offset = rng.integers(0, len(corpus) - FRAME, legs)
    gain = (10 ** (rng.uniform(-10, 6, legs) / 20)).astype(np.float32)
    # half the time each leg listens (silent but for the noise floor), 3 s turns
    phase = rng.integers(0, 2, legs)
    noise = np.float32(np.sqrt(dbm0_mean_square(-65.0)))
    # a few legs key in ten digits: 100 ms tones 100 ms apart, in seconds 1 .. 3
    keyers = rng.choice(legs, round(legs * keying), replace=False)
    t = np.arange(int(0.1 * RATE)) / RATE
    amp = np.sqrt(2 * dbm0_mean_square(-10.0))
    bank = DtmfBank(capacity=legs)
    bank.reset(rows, np.ones(legs, dtype=bool))
    cpu = 0.0
    ar = np.arange(FRAME)
    for k in range(nframes):
        pos = (offset[:, None] + k * FRAME + ar) % len(corpus)
        frames = corpus[pos] * gain[:, None]
        talking = ((k * FRAME // (3 * RATE)) + phase) % 2 == 0
        frames[~talking] = 0.0
        frames += noise * rng.standard_normal((legs, FRAME), dtype=np.float32)
        start = k * FRAME - RATE
        if len(keyers) and start >= 0 and start % (2 * len(t)) < len(t) and start < 2 * RATE:
            j = (start // (2 * len(t))) % 16
            f_lo, f_hi = LOW_HZ[j // 4], HIGH_HZ[j % 4]
            seg = t[(start % (2 * len(t))):][:FRAME]
            if len(seg) == FRAME:
                frames[keyers] = (amp * (np.sin(2 * np.pi * f_lo * seg) + np.sin(2 * np.pi * f_hi * seg))).astype(np.float32)
        t0 = time.process_time()
        bank.process(rows, frames)
        cpu += time.process_time() - t0
    events = bank.pop_events()
    leg_seconds = legs * nframes * FRAME / RATE
    return {"us_per_leg_second": cpu / leg_seconds * 1e6, "cpu_s": cpu, "leg_seconds": leg_seconds,
            "events": len(events), "expected_events": len(keyers) * 10}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--legs", type=int, nargs="*", default=[1000, 10000])
    ap.add_argument("--seconds", type=float, default=6.0, help="audio per leg")
    ap.add_argument("--keying", type=float, nargs="*", default=[0.0, 0.02],
                    help="share of legs that key 10 digits (in seconds 1..3)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs per row; the table shows the cheapest (other load on the machine only adds)")
    args = ap.parse_args()
    corpus = speech(60.0)
    print(f"DTMF bank (worker/dtmf.py), {args.seconds:g} s of audio per leg, look-ahead "
          f"{DtmfBank.lookahead_frames * 20} ms, single-threaded BLAS\n")
    print("| legs | legs keying digits | CPU µs per leg-second | CPU s | leg-seconds | digits found / keyed |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for legs in args.legs:
        for keying in args.keying:
            r = min((run(legs, args.seconds, corpus, keying, seed=i) for i in range(args.repeat)),
                    key=lambda x: x["us_per_leg_second"])
            print(f"| {legs:,} | {keying:.0%} | {r['us_per_leg_second']:.1f} | {r['cpu_s']:.2f} "
                  f"| {r['leg_seconds']:,.0f} | {r['events']} / {r['expected_events']} |")


if __name__ == "__main__":
    main()
