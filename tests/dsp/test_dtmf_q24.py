"""The DTMF receiver requirements, one generated test per criterion, all 16 digits.

Figures (see worker/dtmf.py for the sources): ITU-T Q.24 table 4 (AT&T/ANSI column)
and ETSI ES 201 235-3:
  operate      frequency within +-(1.5 % + 2 Hz); 0 .. -25 dBm0 per tone; twist +4 / -8 dB;
               tone >= 40 ms; interruption <= 10 ms bridged; pause >= 40 ms recognised;
               93 ms per digit; noise 12 dB below the weaker tone.
  non-operate  frequency off by >= 3.5 % (either tone); <= -55 dBm0; tone <= 23 ms / 20 ms.

Every signal runs through the real bank (one row each, all rows in one bank). For
"detect" criteria every digit must come out exactly once, every tone sample must be
muted, and the muting may reach at most 10 ms beyond the tone on either side; for
"reject" criteria no digit may be reported and the audio must come out bit-exact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
from dtmftools import DIGITS, clip16, operate_deviation, run_bank, tone, white

from wholecall.worker.codecs.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode

GUARD_MAX = 80  # samples (10 ms): the most the muting may exceed a tone on either side
FLOOR_DBM0 = -70.0  # background noise under every signal (makes muted samples visible)
REPEATS = 4  # random phases / frame alignments / signs per digit


@dataclass
class Case:
    signal: np.ndarray
    spans: list[tuple[int, int]]  # tone sample ranges
    expect: str  # digits that must be reported, in order ("" = none)


@dataclass
class Criterion:
    name: str
    detect: bool
    build: Callable[[str, int, np.random.Generator], Case]
    cases: list[Case] = field(default_factory=list)


def _place(parts: list[np.ndarray], rng: np.random.Generator, floor_dbm0: float = FLOOR_DBM0,
           noise: float | None = None, clip: bool = False) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Tones (and silences: arrays of zeros flagged by dtype int8) after a random lead-in."""
    lead = int(rng.integers(600, 1000))  # random frame alignment
    total = lead + sum(len(p) for p in parts) + 1600
    x = white(total, floor_dbm0 if noise is None else noise, rng)
    spans = []
    pos = lead
    for p in parts:
        if p.dtype != np.int8:
            x[pos:pos + len(p)] += p
            spans.append((pos, pos + len(p)))
        pos += len(p)
    return (clip16(x) if clip else x), spans


def _simple(ms: float = 60.0, dbm0: float = -10.0, twist: float = 0.0, rel=(0.0, 0.0), hz=(0.0, 0.0),
            noise_below_weaker: float | None = None, clip: bool = False, codec: str | None = None) -> Callable:
    def build(d: str, k: int, rng: np.random.Generator) -> Case:
        ph = tuple(rng.uniform(0, 2 * np.pi, 2))
        r, h = rel(d, k) if callable(rel) else (rel, hz)
        t = tone(d, ms, dbm0, twist, r, h, ph)
        noise = None if noise_below_weaker is None else min(dbm0, dbm0 + twist) - noise_below_weaker
        if codec is not None and noise is None:
            noise = -50.0  # above the codec's smallest step, so only muting makes zeros
        x, spans = _place([t], rng, noise=noise, clip=clip)
        if codec is not None:  # the leg arrived as G.711
            enc, dec = {"alaw": (alaw_encode, alaw_decode), "ulaw": (ulaw_encode, ulaw_decode)}[codec]
            x = dec(enc(np.rint(clip16(x)).astype(np.int16))).astype(np.float64)
        return Case(x, spans, d)
    return build


def _operate_dev(d: str, k: int):
    return operate_deviation(d, (-1, 1)[k & 1], (-1, 1)[(k >> 1) & 1])


def _off(which: str):
    def dev(d: str, k: int):
        s = (-1, 1)[k & 1] * 0.035
        return ((s, 0.0) if which == "low" else (0.0, s) if which == "high" else (s, -s)), (0.0, 0.0)
    return dev


def _twist_corner(d: str, k: int, rng: np.random.Generator) -> Case:
    """40 ms, weaker tone at -25 dBm0, twist +4 or -8 dB, +-(1.5 % + 2 Hz), noise 12 dB down."""
    twist = (4.0, -8.0)[k & 1]
    low = -25.0 - min(0.0, twist)
    r, h = _operate_dev(d, k >> 1)
    t = tone(d, 40, low, twist, r, h, tuple(rng.uniform(0, 2 * np.pi, 2)))
    x, spans = _place([t], rng, noise=-25.0 - 12.0)
    return Case(x, spans, d)


def _interrupted(d: str, k: int, rng: np.random.Generator) -> Case:
    ph = tuple(rng.uniform(0, 2 * np.pi, 2))
    a = tone(d, 50, -10, 0, phase=ph)
    b = tone(d, 50, -10, 0, phase=tuple(rng.uniform(0, 2 * np.pi, 2)))
    x, spans = _place([a, np.zeros(80, np.int8), b], rng)
    return Case(x, [(spans[0][0], spans[1][1])], d)  # one digit: the break is muted with it


def _paused(d: str, k: int, rng: np.random.Generator) -> Case:
    a = tone(d, 50, -10, 0, phase=tuple(rng.uniform(0, 2 * np.pi, 2)))
    b = tone(d, 50, -10, 0, phase=tuple(rng.uniform(0, 2 * np.pi, 2)))
    x, spans = _place([a, np.zeros(320, np.int8), b], rng)
    return Case(x, spans, d + d)


def _velocity(d: str, k: int, rng: np.random.Generator) -> Case:
    """All 16 digits at Q.24's fastest rate: 40 ms on, 53 ms off (93 ms per digit)."""
    seq = DIGITS[DIGITS.index(d):] + DIGITS[:DIGITS.index(d)]
    parts: list[np.ndarray] = []
    for c in seq:
        parts += [tone(c, 40, -10, 0, phase=tuple(rng.uniform(0, 2 * np.pi, 2))), np.zeros(424, np.int8)]
    x, spans = _place(parts[:-1], rng)
    return Case(x, spans, seq)


CRITERIA = [
    Criterion("level -3 dBm0/tone (max before clipping)", True, _simple(dbm0=-3.0)),
    Criterion("level 0 dBm0/tone, clipped by the channel", True, _simple(dbm0=0.0, clip=True)),
    Criterion("level -25 dBm0/tone (Q.24 min)", True, _simple(dbm0=-25.0)),
    Criterion("freq +-(1.5 % + 2 Hz) both tones", True, _simple(rel=_operate_dev)),
    Criterion("freq +-(1.5 % + 2 Hz) at -25 dBm0", True, _simple(dbm0=-25.0, rel=_operate_dev)),
    Criterion("twist +4 dB, low tone -25 dBm0", True, _simple(dbm0=-25.0, twist=4.0)),
    Criterion("twist -8 dB, high tone -25 dBm0", True, _simple(dbm0=-17.0, twist=-8.0)),
    Criterion("duration 40 ms", True, _simple(ms=40.0)),
    Criterion("noise 12 dB below tones at -25 dBm0", True, _simple(dbm0=-25.0, noise_below_weaker=12.0)),
    Criterion("corner: 40 ms, -25 dBm0, twist, +-(1.5%+2Hz), noise", True, _twist_corner),
    Criterion("G.711 A-law leg, -25 dBm0, +-(1.5 % + 2 Hz)", True, _simple(dbm0=-25.0, rel=_operate_dev, codec="alaw")),
    Criterion("G.711 mu-law leg, -25 dBm0, +-(1.5 % + 2 Hz)", True, _simple(dbm0=-25.0, rel=_operate_dev, codec="ulaw")),
    Criterion("interruption 10 ms (one digit)", True, _interrupted),
    Criterion("pause 40 ms (two digits)", True, _paused),
    Criterion("93 ms/digit, 16 digits in a row", True, _velocity),
    Criterion("freq +-3.5 % low tone", False, _simple(rel=_off("low"))),
    Criterion("freq +-3.5 % high tone", False, _simple(rel=_off("high"))),
    Criterion("freq +-3.5 % both tones", False, _simple(rel=_off("both"))),
    Criterion("duration 23 ms (Q.24)", False, _simple(ms=23.0)),
    Criterion("duration 20 ms (ES 201 235-3)", False, _simple(ms=20.0)),
    Criterion("level -55 dBm0/tone (Q.24 non-operate)", False, _simple(dbm0=-55.0)),
]


@pytest.fixture(scope="module")
def battery():
    """Build every case of every criterion and run them all through one bank."""
    rng = np.random.default_rng(24)
    signals = []
    owners = []
    for ci, c in enumerate(CRITERIA):
        c.cases = []
        for d in DIGITS:
            for k in range(REPEATS if c.build is not _velocity else 1):
                case = c.build(d, k, rng)
                c.cases.append(case)
                signals.append(case.signal)
                owners.append((ci, len(c.cases) - 1))
    run = run_bank(signals)
    assert run.onsets_cut == 0
    results: dict[str, dict] = {c.name: {"ok": 0, "n": 0, "pre": [], "post": [], "leaks": 0, "touched": 0}
                                for c in CRITERIA}
    for row, (ci, j) in enumerate(owners):
        c = CRITERIA[ci]
        case = c.cases[j]
        y = run.out[row, : len(case.signal)]
        x = case.signal.astype(np.float32)
        r = results[c.name]
        r["n"] += 1
        r["ok"] += run.digits(row) == (case.expect if c.detect else "")
        if c.detect:
            muted = y == 0
            for a, b in case.spans:
                r["leaks"] += int((~muted[a:b]).sum())
                i = a
                while i > 0 and muted[i - 1]:
                    i -= 1
                e = b
                while e < len(y) and muted[e]:
                    e += 1
                r["pre"].append(a - i)
                r["post"].append(e - b)
        else:
            r["touched"] += int((y != x).sum())
    return results


def _line(name: str, r: dict, detect: bool) -> str:
    rate = r["ok"] / r["n"]
    if detect:
        return (f"{'detected' if detect else 'rejected'} {rate:6.1%} of {r['n']:3d}; tone samples left "
                f"{r['leaks']}; guard before/after max {max(r['pre'])}/{max(r['post'])} samples "
                f"(mean {np.mean(r['pre']):.0f}/{np.mean(r['post']):.0f})")
    return f"rejected {rate:6.1%} of {r['n']:3d}; samples changed {r['touched']}"


@pytest.mark.parametrize("crit", CRITERIA, ids=[c.name for c in CRITERIA])
def test_criterion(battery, report, crit):
    r = battery[crit.name]
    report[("Q.24 operate: " if crit.detect else "Q.24 non-operate: ") + crit.name] = _line(crit.name, r, crit.detect)
    assert r["ok"] == r["n"], f"{crit.name}: {r['n'] - r['ok']} of {r['n']} cases wrong"
    if crit.detect:
        assert r["leaks"] == 0, "tone samples left in the output"
        assert max(r["pre"]) <= GUARD_MAX and max(r["post"]) <= GUARD_MAX
    else:
        assert r["touched"] == 0, "audio changed although nothing was detected"
