"""DTMF detection and elimination for every recorded leg at once (issue 5, PCI DSS).

A recording must not contain the digits a caller keys in, so each leg (before mixing)
goes through `DtmfBank.process`: the bank delays the leg by a fixed look-ahead, detects
DTMF digits in the audio it holds, and replaces every sample of a detected tone by
silence before that audio leaves the delay line. The bank keeps thousands of legs as
rows of numpy arrays; one call advances any subset of rows by one 20 ms frame with a
fixed number of numpy operations (no Python loop over rows or samples).

Receiver requirements (ITU-T Q.24 table 4, AT&T/ANSI column, and ETSI ES 201 235-3;
each is a generated test in tests/dsp/test_dtmf_q24.py):

====================================  =========================  ==========================
criterion                             must detect (operate)      must not detect
====================================  =========================  ==========================
frequency deviation, each tone        <= 1.5 % + 2 Hz            >= 3.5 %
                                      (ES 201 235-3; Q.24 1.5 %)  (Q.24, ES 201 235-3)
level per tone                        0 .. -25 dBm0 (Q.24)       <= -55 dBm0 (Q.24)
twist, high tone minus low tone       +4 dB .. -8 dB (Q.24)      (not specified)
tone duration                         >= 40 ms                   <= 23 ms (Q.24),
                                                                 <= 20 ms (ES 201 235-3)
interruption inside one digit         <= 10 ms bridged (Q.24)
pause between digits                  >= 40 ms recognised (Q.24)
signalling velocity                   93 ms per digit (Q.24)
noise                                 white noise 12 dB below the weaker tone (the
                                      figure receiver data sheets are tested to)
====================================  =========================  ==========================

Measured edges (random phases and frame alignments, 64 tones per point): detected from
-34 dBm0 (not at -36); deviation of both tones accepted to 1.8 % (one tone: 2.0 %) and
rejected from 2.6 % (one tone: 2.8 %); twist accepted to +5 / -9 dB; duration: none
at 25 ms, half at 29 ms, all from 33 ms.

How it works, and why it is cheap:

1. *Prescreen, every row, every frame.* One matmul projects the first `PRE_N` samples
   of each frame on the 8 DTMF frequencies, one dot product gives their energy. A row
   whose frame has one strong low and one strong high bin holding `PRE_PURITY` of the
   energy becomes *hot*. Any tone of 40 ms or more covers a whole frame-aligned
   20 ms frame, so it always trips the prescreen; silence and nearly all speech
   (0.2 % of frames) stop here.
2. *Fine analysis, hot rows only, every other frame* (every frame while a digit is
   being confirmed; all due rows together, so it runs at most every other call when
   no digit is pending). 160-sample windows every
   40 samples (5 ms), trapezoid-weighted, projected (one matmul) on three sub-bins per
   DTMF bin so that a tone anywhere within the operate deviation loses < 0.4 dB. The
   window keeps the neighbouring bin of the group >= 20 dB and the other group >= 36 dB
   down. Each tone's frequency is *measured*: the phase advance between consecutive
   windows (lag 40 samples, unambiguous to +-100 Hz). A window is *valid* for a digit
   when both tones are >= `MIN_TONE_DBM0`, the twist is in range, the two tones hold
   `PURITY` of the window's energy, each beats the rest of its group by `REL_PEAK_DB`
   and deviates by less than `FREQ_TOL_WINDOW`.
3. *Digits.* `N_DET` valid windows of one digit (gaps of up to `GAP_MAX` windows
   bridged) whose run-averaged deviation is within `FREQ_TOL` and run-averaged purity
   at least `PURITY_RUN` confirm it. With purity 0.85 a window must be ~85 % tone, so a
   40 ms tone gives at least 4 (in silence 5-6) valid windows and a 23 ms tone at most
   2. The run average keeps out speech whose harmonics sit on a DTMF pair (a
   high-pitched Klatt voice did, at purity 0.84-0.88, before it was added).
4. *Elimination.* At confirmation both tones are fitted (amplitude and phase, at their
   measured frequencies) on the first valid window and extended backwards coherently;
   walking back in 10-sample segments, a segment whose projection on that prediction is
   more than half of it still carries the tone (refitted every 80 samples, and a single
   failing segment bridged). The mute starts one segment before the first segment
   that does not. From then on every new frame is muted whole; when the
   digit stops, the same walk forwards from the last valid window places its end and
   what follows is unmuted. Phase-locked, the walk follows a tone under speech 10 dB
   down (which may delay confirmation) and stops at loud speech right next to it.

Look-ahead: `LOOKAHEAD_FRAMES` = 5 frames, 100 ms of recorder delay. A digit is
confirmed about 35 ms after its first valid window (4 windows + frame granularity),
so its onset is still held even when speech over its start delays the first valid
window by ~60 ms; the end is placed at most ~45 ms after the tone stops. A digit whose
onset had already left the delay line counts in `onsets_cut` (0 in every test).

Guard (audio next to a tone that is muted as well): one 10-sample segment (1.25 ms)
plus under 1.25 ms of segment rounding, each side. Loud speech directly against the
tone can add a few segments (measured: mean 1.3 ms, at most 7 ms over 160 digits
keyed into speech, tests allow 10 ms; over 3,200 digits in a stress run: 99th
percentile 5 ms, worst 15 ms with speech right against a tone, 31 ms with speech
over it). Muted samples are exact zeros, not
comfort noise: the mixer and the silence detector see true silence, and a listener
hears a clean gap.

Limits: a digit keyed while speech runs under it at less than ~10 dB below the tones
is not reliably detected (purity), and speech that loud over a tone's edges can leave
a few ms of it: in a stress run with speech 10 dB under the whole tone, 9 % of such
digits were missed and 5 % kept part of an edge (0.5-20 ms). The standards ask for noise 12-15 dB
down, which is met with margin.

Levels are in int16 scale: 0 dBm0 is a sine of peak `DBM0_PEAK`, from G.711's
definition that the largest sine the codec passes is +3.17 dBm0 (mu-law) / +3.14 dBm0
(A-law); the 0.03 dB difference does not matter here.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from wholecall.formats.codecs import CALL_RATE as FS
from wholecall.formats.codecs import FRAME  # samples per frame (20 ms): the worker's unit of work

from . import dtmf_fine, dtmf_runs, kernels

SUB = 40  # sub-block and hop of the fine analysis (5 ms)
SEG = 10  # segment used to place a tone's edges (1.25 ms)
LOOKAHEAD_FRAMES = 5  # recorder delay added by the bank (100 ms)

#: ITU-T Q.23 frequencies; digit index = 4 * low index + high index.
LOW_HZ = (697.0, 770.0, 852.0, 941.0)
HIGH_HZ = (1209.0, 1336.0, 1477.0, 1633.0)
FREQS_HZ = np.array(LOW_HZ + HIGH_HZ)
DIGITS = "123A456B789C*0#D"

#: Peak amplitude (int16 scale) of a 0 dBm0 sine (G.711: max sine is +3.17 dBm0).
DBM0_PEAK = 32768.0 * 10 ** (-3.17 / 20)

# --- decision thresholds (see the module docstring for the standards they serve) ---
MIN_TONE_DBM0 = -35.0  # each tone must be at least this loud (operate down to -25)
TWIST_REVERSE_DB = 5.5  # high tone may exceed the low one by this much (Q.24: 4 dB)
TWIST_NORMAL_DB = 9.5  # low tone may exceed the high one by this much (Q.24: 8 dB)
PURITY = 0.85  # share of the window's (weighted) energy in the two tones
PURITY_RUN = 0.90  # ... and on average over the windows that confirm a digit
REL_PEAK_DB = 10.0  # each tone must beat the other bins of its group by this much
FREQ_TOL_WINDOW = 0.030  # per window: |deviation| / nominal (loose; noise and leakage)
FREQ_TOL = 0.025  # run average: between operate (1.5 % + 2 Hz) and non-operate (3.5 %)
N_DET = 4  # valid windows (5 ms apart) that confirm a digit
GAP_MAX = 7  # invalid windows bridged inside one digit (35 ms: 10 ms breaks survive)
FLUSH_MIN = 2  # at job end a digit cut short counts with this many valid windows
EVENTS_KEPT = 4096  # confirmed digits held for pop_events()

# --- prescreen (loose: it only decides where the fine analysis runs) ---
PRE_N = 80  # samples of each frame the prescreen looks at (wide bins: deviation-tolerant)
PRE_MIN_DBM0 = -38.0
PRE_PURITY = 0.60  # full-tone frames score >= 0.70 at the worst operate corner; speech 0.2 %
PRE_TWIST_DB = 12.0
HOT_FRAMES = 2  # frames a row stays hot after the prescreen last fired

_NW = 4  # sub-blocks per fine-analysis window
WIN = _NW * SUB  # fine-analysis window, 160 samples
_RAMP = 40
# Trapezoid (40-sample linear ramps): the neighbouring bin of the same group (>= 60 Hz
# away) is >= 20 dB down and the other group (>= 230 Hz away) >= 36 dB down, so an
# 8 dB twist is measured to +-0.4 dB; a stepped or rectangular window leaks -22 dB.
_WINDOW = np.minimum(1.0, np.minimum(np.arange(WIN) + 0.5, WIN - np.arange(WIN) - 0.5) / _RAMP)
_ROT = np.exp(-2j * np.pi * FREQS_HZ * SUB / FS).astype(np.complex64)  # one hop, nominal frequency
_ACCEPT_HZ = 0.015 * FREQS_HZ + 2.0  # operate limit of the deviation, per bin
_HZ_PER_RAD = FS / (2 * np.pi * SUB)  # phase advance per hop -> deviation in Hz


def dbm0_mean_square(dbm0: float) -> float:
    """Mean square (int16 scale) of a sine at `dbm0`."""
    return DBM0_PEAK**2 / 2 * 10 ** (dbm0 / 10)


def _projection(weights: np.ndarray, freqs: np.ndarray = FREQS_HZ) -> np.ndarray:
    """(n, 2 * len(freqs)) matrix: weighted cos / -sin at `freqs`, window-local time.

    Scaled so that re^2 + im^2 of a projection is the mean square of a sine at that
    frequency (a tone of amplitude A projects to A * sum(w) / 2).
    """
    m = np.arange(len(weights))[:, None]
    om = 2 * np.pi * np.asarray(freqs) / FS
    w = weights[:, None] * (np.sqrt(2.0) / weights.sum())
    return np.concatenate([w * np.cos(om * m), -w * np.sin(om * m)], axis=1).astype(np.float32)


_C_PRE = _projection(np.ones(PRE_N))
# Cauchy-Schwarz: no bin's power can exceed the frame's energy times its basis' squared
# norm. A frame whose energy times the largest of them is below PRE_MIN cannot fire the
# prescreen, so its projection is skipped (1 % over, for float32 rounding).
_PRE_BOUND = np.float32(1.01 * (_C_PRE[:, :8] ** 2 + _C_PRE[:, 8:] ** 2).sum(axis=0).max())
_C_PRE_T = np.ascontiguousarray(_C_PRE.T)  # what `kernels.frames_in` projects on
if _C_PRE_T.shape[0] % 8:  # `kernels._project8` takes the rows eight at a time, unchecked
    raise ImportError(f"the prescreen basis has {_C_PRE_T.shape[0]} rows, not a multiple of 8")
_PRE_TWIST = np.float32(10 ** (PRE_TWIST_DB / 10))
_PRE_PURITY_PER_SAMPLE = np.float32(PRE_PURITY / PRE_N)
_NO_WRAP = (1 << 62) - 1  # `kernels.frames_in`'s wrap mask for a block that is not a ring
# Fine analysis: each DTMF bin is measured at three sub-bins: nominal and 2/3 of the
# operate limit either side; the largest of the three is within 0.4 dB of a tone
# anywhere inside +-(1.5 % + 2 Hz), so levels, twist and purity need no guess of the
# deviation (the window alone loses 3 dB at 1633 Hz + 26.5 Hz). Sub-bins k, k + 8 and
# k + 16 belong to DTMF bin k.
_SUB_HZ = (2.0 / 3.0) * _ACCEPT_HZ
_FINE_HZ = np.concatenate([FREQS_HZ - _SUB_HZ, FREQS_HZ, FREQS_HZ + _SUB_HZ])  # 24
# Each window is projected on the 24 sub-bins (cos, -sin) as `_projection` scales them,
# by sub-blocks (`dtmf_fine.fine_windows`): the window is a trapezoid
# whose ramps are one sub-block each, so each sub-block's sums S0 = sum x e^{-jwu} and
# S1 = sum u x e^{-jwu} (u: time in the sub-block) give every window that covers it, at
# half the multiplications of projecting each window whole.
_U = np.arange(SUB)
assert (dtmf_fine.SUB, dtmf_fine.SEG, dtmf_fine.WIN) == (SUB, SEG, WIN)
assert _RAMP == SUB and WIN == 4 * SUB and np.allclose(_WINDOW[:SUB], (_U + 0.5) / SUB) \
    and np.allclose(_WINDOW[-SUB:], (SUB - 0.5 - _U) / SUB), "the window is not the trapezoid fine_windows needs"
_B0 = (np.sqrt(2.0) / _WINDOW.sum()) * np.exp(-2j * np.pi * _FINE_HZ[None, :] * _U[:, None] / FS)
_C_SUB = np.concatenate([_B0.real, _B0.imag, _U[:, None] * _B0.real, _U[:, None] * _B0.imag], axis=1).astype(
    np.float32)  # (40, 96): S0 (cos, -sin), S1 (u cos, -u sin)
_ROT_SUB = np.exp(-2j * np.pi * _FINE_HZ[None, :] * SUB * np.arange(1, 4)[:, None] / FS).astype(np.complex64)
_ROT24 = np.tile(_ROT, 3)  # phase advance is measured against the nominal frequency
_TOL_HZ = (FREQ_TOL_WINDOW * FREQS_HZ).astype(np.float32)
# Windowed mean square of a window from the energies of its 10-sample segments
# (w^2 averaged per segment; exact for steady signals).
_W2 = ((_WINDOW**2).reshape(-1, SEG).mean(axis=1) / (_WINDOW**2).sum()).astype(np.float32)
# The window verdict's limits as the float32 numbers it compares with.
_TWIST_REV = np.float32(10 ** (TWIST_REVERSE_DB / 10))
_TWIST_NORM = np.float32(10 ** (TWIST_NORMAL_DB / 10))
_PURITY32 = np.float32(PURITY)
_REL32 = np.float32(10 ** (REL_PEAK_DB / 10))
_HZ_PER_RAD32 = np.float32(_HZ_PER_RAD)


# Edge walk (see DtmfBank._edge).
_EDGE_REACH = 640  # at most this far beyond the valid windows (80 ms)
_EDGE_CHUNK = 80  # samples walked per refit of the tone
_WINDOW_FIT = (_WINDOW * 2 / _WINDOW.sum()).astype(np.float32)  # amplitude estimate weights
_NO_LIMIT = np.iinfo(np.int64).max  # `dtmf_fine.edges`: no sample is out of reach


@dataclass(frozen=True)
class DtmfEvent:
    """A confirmed digit on one row (leg), for logs and tests."""

    row: int
    digit: str
    start_sample: int  # first muted sample, counted from the row's reset (guard included)

    @property
    def start_frame(self) -> int:
        """Frame (of the leg, from its reset) in which the muting starts."""
        return self.start_sample // FRAME


class DtmfBank:
    """Delay line + DTMF detector + eliminator for many legs (one row per leg).

    The worker assigns rows; `reset` starts a leg, `process` advances a subset of rows
    by one frame each and returns each row's frame from `lookahead_frames` calls ago,
    tone samples zeroed; `flush` returns what is still held when a job ends.
    """

    lookahead_frames: int = LOOKAHEAD_FRAMES

    # Per-row state, all arrays indexed by row (see ensure_capacity for their meaning).
    _buf: np.ndarray
    _mask: np.ndarray
    _masked: np.ndarray
    _n: np.ndarray
    _elim: np.ndarray
    _hot: np.ndarray
    _due: np.ndarray
    _done: np.ndarray
    _rd: np.ndarray
    _rv: np.ndarray
    _rg: np.ndarray
    _ra: np.ndarray
    _rb: np.ndarray
    _racc: np.ndarray
    _rpur: np.ndarray
    _active: np.ndarray
    _flat: np.ndarray
    _mflat: np.ndarray
    _frames: np.ndarray

    def __init__(self, capacity: int = 64, sample_type: type = np.float32, max_block: int = 1) -> None:
        """`sample_type` is what `process` takes, holds and returns: float32 for any
        signal, or int16 for telephony samples (the worker's choice: half the bytes moved
        through the delay line, and the same numbers, since int16 values are exact in
        float32, so detection and output are identical).

        `max_block` is the most frames one `process` call may advance a row by. Blocks
        exist for cost: the bank's work is mostly a fixed cost per call, so a worker
        with thousands of legs that receives 100 ms per tick advances them 5 frames at
        once instead of in 5 calls. Each row holds `max_block - 1` more frames for it.
        """
        if max_block < 1:
            raise ValueError(f"max_block must be at least 1, not {max_block}")
        self.max_block = max_block
        # Slots per row: the held frames + the outgoing ones (a block's frames arrive
        # before its outgoing frames leave).
        self._depth = LOOKAHEAD_FRAMES + max_block
        self._b = 1  # frames per row of the call in progress
        self._type = np.dtype(sample_type)
        if self._type not in (np.dtype(np.float32), np.dtype(np.int16)):
            raise ValueError(f"sample_type must be float32 or int16, not {self._type}")
        # One frame as a single item: fancy indexing then moves whole frames with one
        # memcpy each (about twice as fast as row-wise indexing).
        self._item = np.dtype((np.void, FRAME * self._type.itemsize))
        self._cap = 0
        # Kept for pop_events(), as (rows, digit indices, start samples) per `_log` call
        # (no Python object per digit); bounded so that a caller that never pops does
        # not leak: at most the last EVENTS_KEPT digits.
        self._events: deque[tuple[np.ndarray, np.ndarray, np.ndarray]] = deque()
        self._n_events = 0
        #: Digits whose onset lay before the oldest sample still held when they were
        #: confirmed (their start could not be muted). Stays 0 in every test here.
        self.onsets_cut = 0
        self._tone_ms = np.float32(dbm0_mean_square(MIN_TONE_DBM0))
        self._pre_min = np.float32(dbm0_mean_square(PRE_MIN_DBM0))
        self.ensure_capacity(capacity)
        self.warm_up(self._type.type)  # numba's first calls, here and not in the first tick

    @staticmethod
    def warm_up(sample_type: type) -> None:
        """Load (or compile) the kernels a bank of `sample_type` calls."""
        dtmf_runs.warm_up()
        dtmf_fine.warm_up((sample_type,))

    # ------------------------------------------------------------------ state
    def ensure_capacity(self, rows: int) -> None:
        """Grow every state array to at least `rows` rows, keeping existing rows."""
        if rows <= self._cap:
            return
        new = max(rows, 2 * self._cap)
        d = self._depth

        def grow(name: str, shape: tuple[int, ...], dtype: type, fill: object = 0) -> None:
            arr: np.ndarray = np.full((new,) + shape, fill, dtype=dtype)
            old = getattr(self, name, None)
            if old is not None:
                arr[: len(old)] = old
            setattr(self, name, arr)

        # The delay line and its mute mask: row r's frame f sits in slot f % d, at flat
        # index r * d + f % d (one flat fancy index is much cheaper than two).
        grow("_buf", (d, FRAME), self._type)
        grow("_mask", (d, FRAME), np.bool_)
        grow("_masked", (), np.bool_)  # any mask bit set in the row's ring
        grow("_n", (), np.int64)  # frames received since reset
        grow("_elim", (), np.bool_, True)
        grow("_hot", (), np.int16)  # frames the row stays hot (fine analysis)
        grow("_due", (), np.int64)  # frame by which a hot row must be analysed
        grow("_done", (), np.int64, -1)  # end sample of the last analysed window
        grow("_rd", (), np.int16, -1)  # run digit (-1: no run)
        grow("_rv", (), np.int16)  # valid windows in the run
        grow("_rg", (), np.int16)  # invalid windows since the last valid one
        grow("_ra", (), np.int64)  # start sample of the run's first valid window
        grow("_rb", (), np.int64)  # end sample of the run's last valid window
        grow("_racc", (2,), np.complex128)  # summed phase advances (low, high tone)
        grow("_rpur", (), np.float32)  # summed purity of the run's valid windows
        grow("_active", (), np.bool_)  # run confirmed as a digit: muting
        self._flat = self._buf.reshape(new * d, FRAME)
        # `kernels.frames_in` streams frames into the slots with 16-byte stores.
        if self._flat.ctypes.data % 16:
            raise MemoryError("the delay line is not 16-byte aligned")
        self._mflat = self._mask.reshape(new * d, FRAME)
        self._frames = self._flat.view(self._item).reshape(new * d)
        self._cap = new

    def reset(self, rows: np.ndarray, eliminate: np.ndarray) -> None:
        """Start fresh legs in `rows`: no history, the delay line holds silence."""
        rows = np.asarray(rows, dtype=np.int64)
        self.ensure_capacity(int(rows.max(initial=-1)) + 1)
        self._buf[rows] = 0.0
        self._mask[rows] = False
        self._masked[rows] = False
        self._n[rows] = 0
        self._elim[rows] = np.asarray(eliminate, dtype=np.bool_)
        self._hot[rows] = 0
        self._due[rows] = 0
        self._done[rows] = -1
        self._end_runs(rows)

    def _end_runs(self, rows: np.ndarray) -> None:
        self._rd[rows] = -1
        self._rv[rows] = 0
        self._rg[rows] = 0
        self._racc[rows] = 0
        self._rpur[rows] = 0
        self._active[rows] = False

    def pop_events(self) -> list[DtmfEvent]:
        """Digits confirmed since the last call, in confirmation order (at most the last
        `EVENTS_KEPT`)."""
        rows, digits, start = self.pop_event_arrays()
        return [DtmfEvent(row=r, digit=DIGITS[d], start_sample=st)
                for r, d, st in zip(rows.tolist(), digits.tolist(), start.tolist())]

    def pop_event_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`pop_events` as arrays: rows, digits (indices into `DIGITS`) and start samples.

        For the worker, which turns a tick's digits into messages itself: a
        `DtmfEvent` per digit cost more than the rest of taking them.
        """
        ev = self._events
        if not ev:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        if len(ev) == 1:
            rows, digits, start = ev[0]
        else:
            rows, digits, start = (np.concatenate(a) for a in zip(*ev))
        ev.clear()
        self._n_events = 0
        return rows[-EVENTS_KEPT:], digits[-EVENTS_KEPT:], start[-EVENTS_KEPT:]

    # ------------------------------------------------------------------ per frame
    def process(self, rows: np.ndarray, frames: np.ndarray) -> np.ndarray:
        """Advance `rows` (unique) by one frame each, `frames` shaped (rows, FRAME), or by
        a block of B <= `max_block` frames each, shaped (rows, B, FRAME); return each
        row's frames from L frames ago, in the same shape, tone samples zeroed."""
        rows = np.asarray(rows, dtype=np.int64)
        frames = np.asarray(frames, dtype=self._type)
        single = frames.ndim == 2
        blk = frames[:, None, :] if single else frames
        m, b = blk.shape[:2]
        if blk.shape != (len(rows), b, FRAME) or not 1 <= b <= self.max_block:
            raise ValueError(f"frames must be (rows, {FRAME}) or (rows, 1..{self.max_block}, {FRAME}) "
                             f"for {len(rows)} rows, not {frames.shape}")
        # The block as a ring that never wraps, one row after the other.
        flat = np.ascontiguousarray(blk).reshape(-1)
        size = b * FRAME
        slots, masked = self._advance(rows, b, flat, np.arange(m, dtype=np.int64) * size, np.zeros(m, np.int64),
                                      np.full(m, size, np.int64), _NO_WRAP)
        out = self.read(slots, masked)
        return out[:, 0] if single else out

    def process_ring(self, rows: np.ndarray, ring: np.ndarray, base: np.ndarray, pos: np.ndarray,
                     avail: np.ndarray, capacity: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """`process` with each row's B frames read straight from a ring buffer: row i's
        frames are samples pos[i] .. pos[i] + B * FRAME (modulo `capacity`, a power of
        two) of the ring that starts at `base[i]` in the flat sample array `ring`;
        samples from pos[i] + avail[i] on are not written yet and read as silence.

        Saves the worker a gather of its legs into a block before the bank copies them
        into its delay line: the samples go from the ring to the delay line once. And
        the outgoing frames are not copied out: returns (slots, masked), each row's
        outgoing frames as slots of `frames` (rows x B) and whether the row may have
        muted samples (see `mute`); `read` copies them out. They stay valid until the
        next call.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if not 1 <= b <= self.max_block:
            raise ValueError(f"b must be 1 .. {self.max_block}, not {b}")
        if capacity & (capacity - 1):
            raise ValueError(f"capacity must be a power of two, not {capacity}")
        if ring.dtype != self._type:
            raise ValueError(f"ring holds {ring.dtype}, the bank {self._type}")
        return self._advance(rows, b, ring, base, pos, avail, capacity - 1)

    def read(self, slots: np.ndarray, masked: np.ndarray) -> np.ndarray:
        """The outgoing frames `process_ring` left in place: (rows, B, FRAME), muted
        samples zeroed. `masked` says which rows may have muted samples at all."""
        m, b = slots.shape
        out = self._frames.take(slots.reshape(-1)).view(self._type).reshape(m, b, FRAME)
        if masked.any():
            so = slots[masked]
            out[masked] = np.where(self._mflat[so], self._type.type(0), out[masked])
        return out

    @property
    def frames(self) -> np.ndarray:
        """The delay line, one frame per slot (slots x FRAME): where `process_ring`'s
        outgoing slots point. Valid until the next call that may grow the bank."""
        return self._flat

    @property
    def mute(self) -> np.ndarray:
        """The mute mask of `frames`, sample by sample (True: silence)."""
        return self._mflat

    def _advance(self, rows: np.ndarray, b: int, ring: np.ndarray, base: np.ndarray, pos: np.ndarray,
                 avail: np.ndarray, wrap_mask: int) -> tuple[np.ndarray, np.ndarray]:
        m = len(rows)
        self._b = b
        d = self._depth
        n0 = self._n[rows]
        n = n0 + (b - 1)  # the newest frame of each row once this call's frames are in
        # Where this call's frames go, and the frames received L frames ago that leave
        # (one compiled pass: the two int64 modulos over rows x B were most of this
        # method's own time).
        slot_in = np.empty(m * b, np.int64)
        slot_out = np.empty((m, b), np.int64)
        kernels.delay_slots(rows, n0, d, b, LOOKAHEAD_FRAMES, slot_in, slot_out)
        hot = self._heat(rows, self._take_in(ring, base, pos, avail, wrap_mask, b, slot_in))
        was = self._masked[rows]
        if was.any():
            # The slots just filled may still carry the mute of the frames they held.
            wr = rows[was]
            self._mflat[slot_in.reshape(m, b)[was].reshape(-1)] = False
            self._masked[wr] = self._mask[wr].any(axis=(1, 2))

        # A confirmed digit that is still on mutes each new frame whole (trimmed at its end).
        act = self._active[rows]
        if act.any():
            act &= self._elim[rows]
            self._mflat[slot_in.reshape(m, b)[act].reshape(-1)] = True
            self._masked[rows[act]] = True

        if hot.any():
            hr, hn = rows[hot], n[hot]
            if b > 1:
                # A block: every window ending in its frames is judged now. A row judged
                # through the end of the last block needs only those (B + 1 frames: one
                # more gives the first its phase advance); a row that just became hot
                # catches up on two frames before them (B + 3). Most hot rows stay hot
                # from block to block, and they are a quarter of the analysis cheaper.
                caught_up = self._done[hr] >= FRAME * (hn - b + 1)
                for sel, frames in ((caught_up, b + 1), (~caught_up, b + 3)):
                    if sel.all():
                        self._fine(hr, hn, frames)
                        break
                    if sel.any():
                        self._fine(hr[sel], hn[sel], frames)
            elif (hn >= self._due[hr]).any():
                # Every hot row is analysed at least every other frame; all of them
                # together, so the analysis (a fixed cost per call) runs at most every
                # other call.
                self._fine(hr, hn)
                # A run not yet confirmed is analysed every frame (the onset must still be
                # held when it is confirmed); everything else every other frame.
                self._due[hr] = hn + 2 - ((self._rd[hr] >= 0) & ~self._active[hr])

        self._n[rows] = n0 + b
        return slot_out, self._masked[rows]

    def flush(self, rows: np.ndarray) -> np.ndarray:
        """At job end: the L frames still held per row, eliminated; the rows are then free.

        Nothing follows, so a digit that is on ends with the audio, and a run cut short
        by the end of the job (at least `FLUSH_MIN` valid windows) is muted as a digit:
        when in doubt at the very end, privacy wins.
        """
        rows = np.asarray(rows, dtype=np.int64)
        d = self._depth
        L = LOOKAHEAD_FRAMES
        self._b = 1  # decided as at one frame after the last
        if len(rows):
            n_last = self._n[rows] - 1
            late = ((self._hot[rows] > 0) | (self._rd[rows] >= 0)) & (n_last >= 0)
            if late.any():  # windows not analysed yet (the analysis may have skipped a call)
                self._fine(rows[late], n_last[late])
            # Decide as if at a frame after the last one (it never comes): the frames
            # still maskable are then exactly the L held ones; walks stop at the end.
            n_next = n_last + 1
            end_of_audio = FRAME * n_next
            short = (~self._active[rows]) & (self._rd[rows] >= 0) & (self._rv[rows] >= FLUSH_MIN)
            if short.any():
                r = rows[short]
                self._confirm(r, n_next[short], self._rd[r], self._ra[r], self._racc[r], limit=end_of_audio[short])
                self._active[r] = True
            on = self._active[rows]
            if on.any():
                r = rows[on]
                self._finish(r, n_next[on], self._rd[r], self._rb[r], self._racc[r], limit=end_of_audio[on])
        f = self._n[rows][:, None] - L + np.arange(L)  # each row's held frames, oldest first
        slot = rows[:, None] * d + f % d
        held = np.where(self._mflat[slot], self._type.type(0), self._flat[slot])  # (rows, L, FRAME)
        self.reset(rows, self._elim[rows])
        return held

    # ------------------------------------------------------------------ prescreen
    def _take_in(self, ring: np.ndarray, base: np.ndarray, pos: np.ndarray, avail: np.ndarray, wrap_mask: int,
                 b: int, slot_in: np.ndarray) -> np.ndarray:
        """The new frames into the delay-line slots `slot_in`, prescreened: where it fired
        (rows x b). One compiled pass (`kernels.frames_in`); its own method so that a
        profile tells the ring read from the rest of the bank."""
        fired = np.empty((len(base), b), np.bool_)
        kernels.frames_in(ring, np.asarray(base, np.int64), np.asarray(pos, np.int64), np.asarray(avail, np.int64),
                          wrap_mask, b, self._flat, slot_in, _C_PRE_T, _PRE_BOUND, self._pre_min, _PRE_TWIST,
                          _PRE_PURITY_PER_SAMPLE, fired)
        return fired

    def _heat(self, rows: np.ndarray, fired: np.ndarray) -> np.ndarray:
        """Which rows need the fine analysis this call (bool per row of `rows`), from
        where the prescreen fired (rows x B; `kernels.frames_in` runs it).

        A row needs it when the prescreen fires in one of its frames, when it fired in
        the last frame before them (the frame after a firing one is analysed too: a
        tone's end), or while it has a digit run.
        """
        b = fired.shape[1]
        was = self._hot[rows]
        run = self._rd[rows] >= 0
        if b == 1:
            fired = fired[:, 0]
            any_fired = fired
            h = np.where(fired, np.int16(HOT_FRAMES), np.maximum(was, 1) - 1)
            if fired.any():
                trip = fired & (was == 0) & ~run  # cold -> hot: may wait one frame
                self._due[rows[trip]] = self._n[rows[trip]] + 1
        else:
            any_fired = fired.any(axis=1)
            since = np.argmax(fired[:, ::-1], axis=1)  # frames after the last firing one
            h = np.where(any_fired, np.maximum(HOT_FRAMES - since, 0), np.maximum(was - b, 0)).astype(np.int16)
        self._hot[rows] = h
        return any_fired | (was > 1) | run

    # ------------------------------------------------------------------ fine analysis
    def _fine(self, rows: np.ndarray, n: np.ndarray, frames: int = 4) -> None:
        """Windows ending in frames n-frames+2 .. n of hot rows, and the digit runs they make.

        Always the same windows (for one new frame: 12, plus one before them for the
        phase advance), so a row that just became hot catches up on the two frames
        before the one that tripped the prescreen; windows a row has already seen are
        skipped by the runs (`todo`).
        """
        valid, digit, adv, top, ew = self._windows(rows, n, frames)
        nwin = valid.shape[1] + 1
        # Window j (1 ..) ends at sample FRAME * (n - frames + 1) + SUB * (j + 4) of the leg.
        ends = (FRAME * (n - frames + 1) + SUB * (_NW + 1))[:, None] + SUB * np.arange(nwin - 1)
        todo = ends > self._done[rows][:, None]
        self._done[rows] = ends[:, -1]
        self._step_runs(rows, n, ends, todo, valid, digit, adv, top, ew)

    def _windows(self, rows: np.ndarray, n: np.ndarray, frames: int) -> tuple[np.ndarray, ...]:
        """The verdicts of the windows `_fine` judges: one compiled call
        (`dtmf_fine.fine_windows`; its own method so that the tests' numpy reference
        replaces just this)."""
        return dtmf_fine.fine_windows(self._flat, self._depth, np.asarray(rows, np.int64), np.asarray(n, np.int64),
                                      frames, _C_SUB, _ROT_SUB, _W2, self._tone_ms, _TWIST_REV, _TWIST_NORM, _PURITY32,
                                      _REL32, _TOL_HZ, _ROT24, _HZ_PER_RAD32)

    def _step_runs(self, rows: np.ndarray, n: np.ndarray, ends: np.ndarray, todo: np.ndarray, valid: np.ndarray,
                   digit: np.ndarray, adv: np.ndarray, top: np.ndarray, ew: np.ndarray) -> None:
        """The digit runs over the windows `_fine` judged, then the mutes they decide (its
        own method so that the tests' numpy reference can replace just this part)."""
        # The digit runs, window by window, in one compiled pass (`dtmf_runs.digit_runs`).
        ev = dtmf_runs.digit_runs(rows, ends, todo, valid, digit, adv, np.ascontiguousarray(top),
                                  np.ascontiguousarray(ew),
                                  self._rd, self._rv, self._rg, self._ra, self._rb, self._racc, self._rpur,
                                  self._active, WIN, N_DET, GAP_MAX, np.float32(PURITY_RUN), FREQ_TOL,
                                  _HZ_PER_RAD, FREQS_HZ)
        if len(ev[1]) or len(ev[6]):
            self._apply_edges(rows, n, ev)

    def _apply_edges(self, rows: np.ndarray, n: np.ndarray, ev: tuple) -> None:
        """Find the edges of the digits `digit_runs` ended and confirmed; mute in order.

        `ev` is what it returned: for the stops, then the confirmations, (window, row
        positions, digits, reference window start, phase sums). Edges depend only on the
        held audio, not on the mutes, so all of one direction are found in one `_edge`
        call (its cost is mostly per call); the mutes then follow window order, a stop
        before a confirmation at the same window, as the runs decided them. Digits are
        logged in window order.
        """
        e_j, e_pos, e_dig, e_ref, e_acc, c_j, c_pos, c_dig, c_ref, c_acc = ev
        at_end = self._edge(rows[e_pos], n[e_pos], e_dig, e_ref, e_acc, +1, None) if len(e_pos) else e_ref
        if len(c_pos):
            at_start = self._log(rows[c_pos], n[c_pos], c_dig,
                                 self._edge(rows[c_pos], n[c_pos], c_dig, c_ref, c_acc, -1, None))
        else:
            at_start = c_ref
        if not len(c_pos):
            self._set_mutes(rows[e_pos], n[e_pos], at_end, False)
        elif not len(e_pos):
            self._set_mutes(rows[c_pos], n[c_pos], at_start, True)
        else:
            order = np.argsort(np.concatenate([2 * e_j, 2 * c_j + 1]), kind="stable")
            pos = np.concatenate([e_pos, c_pos])[order]
            on = np.concatenate([np.zeros(len(e_pos), np.bool_), np.ones(len(c_pos), np.bool_)])[order]
            self._set_mutes(rows[pos], n[pos], np.concatenate([at_end, at_start])[order], on)

    # ------------------------------------------------------------------ edges and muting
    def _confirm(self, rows: np.ndarray, n: np.ndarray, digits: np.ndarray, first_start: np.ndarray,
                 acc: np.ndarray, limit: np.ndarray | None = None) -> None:
        """Runs that are now digits: log them, find the onsets, mute from there on.

        `first_start` is where each run's first valid window starts, `acc` its summed
        phase advances (low, high); the caller marks the rows active.
        """
        self._mute(rows, n, digits, self._edge(rows, n, digits, first_start, acc, -1, limit))

    def _mute(self, rows: np.ndarray, n: np.ndarray, digits: np.ndarray, start: np.ndarray) -> None:
        """Confirmed digits whose onsets are `start`: log them, mute from there on."""
        self._mask_on(rows, n, self._log(rows, n, digits, start))

    def _log(self, rows: np.ndarray, n: np.ndarray, digits: np.ndarray, start: np.ndarray) -> np.ndarray:
        """Log confirmed digits; returns their onsets, clipped to what is still held."""
        # First sample not yet released: this call's outgoing frames are still maskable.
        oldest = np.maximum(FRAME * (n - LOOKAHEAD_FRAMES - (self._b - 1)), 0)
        self.onsets_cut += int((start + SEG <= oldest).sum())  # the tone went on into released audio
        start = np.maximum(start, oldest)
        ev = self._events
        ev.append((np.array(rows, np.int64), np.array(digits, np.int64), np.array(start, np.int64)))
        self._n_events += len(rows)
        while self._n_events - len(ev[0][0]) >= EVENTS_KEPT:  # the oldest are no longer kept
            self._n_events -= len(ev.popleft()[0])
        return start

    def _mask_on(self, rows: np.ndarray, n: np.ndarray, start: np.ndarray) -> None:
        """Mute from `start` (clipped by `_log`) to the newest sample held."""
        self._set_mutes(rows, n, start, True)

    def _finish(self, rows: np.ndarray, n: np.ndarray, digits: np.ndarray, last_end: np.ndarray,
                acc: np.ndarray, limit: np.ndarray | None = None) -> None:
        """Digits that stopped: find where each tone ends and unmute what follows it.

        `last_end` is where each run's last valid window ends; the caller ends the runs.
        """
        self._unmute(rows, n, self._edge(rows, n, digits, last_end - WIN, acc, +1, limit))

    def _unmute(self, rows: np.ndarray, n: np.ndarray, end: np.ndarray) -> None:
        """Digits that stopped at `end`: unmute what follows."""
        self._set_mutes(rows, n, end, False)

    def _edge(self, rows: np.ndarray, n: np.ndarray, digits: np.ndarray, ref: np.ndarray, acc: np.ndarray,
              direction: int, limit: np.ndarray | None) -> np.ndarray:
        """First muted sample (direction < 0: onset) or first sample after the mute (end).

        Both tones (at the frequencies the run measured) are fitted on the valid window
        starting at `ref` and extended coherently, backwards for the onset, forwards for
        the end. Walking away from the window in 10-sample segments, a segment whose
        projection on that prediction exceeds half of it carries the tone; the walk
        ends at the first segment that does not (one that still leans towards the tone
        is let through if the next one carries it), and one more segment is muted as a
        guard. Being phase-locked, the test follows a tone under speech 10 dB down and
        stops at loud speech right next to it; the beat between the two tones, which
        makes plain energy dip by up to 9 dB over a segment, does not matter. The walk
        starts inside the valid window and refits the tone on the 160 samples just
        walked before each chunk of 80, so a slightly wrong frequency cannot drift off
        the tone (`dtmf_fine.edges`, one compiled call).
        """
        f = FREQS_HZ[np.stack([digits // 4, digits % 4 + 4], axis=1)]  # (m, 2) nominal
        f = f + np.angle(acc) * _HZ_PER_RAD  # measured deviation
        om = np.ascontiguousarray((2 * np.pi * f / FS).astype(np.float32))  # rad/sample
        lim = np.full(len(rows), _NO_LIMIT, np.int64) if limit is None else np.asarray(limit, np.int64)
        return dtmf_fine.edges(self._flat, self._depth, np.asarray(rows, np.int64), np.asarray(n, np.int64), om,
                               np.asarray(ref, np.int64), direction < 0, lim, _WINDOW_FIT, _EDGE_REACH,
                               _EDGE_CHUNK)

    def _set_mutes(self, rows: np.ndarray, n: np.ndarray, at: np.ndarray, on: np.ndarray | bool) -> None:
        """Mute (`on`) or unmute the samples of rows[e] from at[e] to the newest one held
        (frame n[e]), in the order given (a row may come twice), in rows that eliminate.

        One compiled pass (`dtmf_runs.set_mutes`): in numpy each direction of each window
        was a dozen operations on a few rows.
        """
        # Fresh writable arrays of the types `dtmf_runs.warm_up` compiled for (numba types
        # a read-only array apart, and would compile again in a tick).
        on = np.full(len(rows), on, np.bool_) if isinstance(on, bool) else np.array(on, np.bool_)
        dtmf_runs.set_mutes(self._mflat, self._masked, self._elim, self._depth, np.array(rows, np.int64),
                            np.array(n, np.int64), np.array(at, np.int64), on)
