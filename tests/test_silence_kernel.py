"""The compiled silence pass (`kernels.silence_frames`) decides exactly as the numpy
detector (`SilenceTracker.step_energy`) stepped frame by frame, as the pipeline did
before it: same state, same frames taken, same leading-silence cut, same ends."""

from __future__ import annotations

import numpy as np
import pytest

from wholecall.worker import kernels
from wholecall.worker.dtmf import FRAME
from wholecall.worker.silence import PREROLL_SAMPLES, SilenceTracker


def reference(sil: SilenceTracker, sel, energy, fill, trim, skip, done) -> np.ndarray:
    """The pipeline's former loop over the block's frames."""
    m, b = energy.shape
    taken = np.zeros(m, np.int64)
    going = np.arange(m)
    for k in range(b):
        at, before = sel[going], fill[going] + k * FRAME
        first, ended = sil.step_energy(at, energy[going, k], FRAME, before)
        taken[going] += 1
        lead = first & trim[at]
        skip[at[lead]] = np.maximum(0, before[lead] - PREROLL_SAMPLES)
        done[at[ended]] = True
        going = np.flatnonzero(~done[sel])
        if not len(going):
            break
    return taken


@pytest.mark.parametrize("seed", range(6))
def test_the_compiled_silence_pass_matches_the_numpy_detector(seed):
    rng = np.random.default_rng(seed)
    rows, m, b = 64, 40, 5
    a, c = SilenceTracker(rows), SilenceTracker(rows)
    for r in range(rows):
        init = int(rng.choice([0, 800, 4000]))
        mx = int(rng.choice([0, 1600, 8000]))
        for t in (a, c):
            t.reset(r, -45.0, init, mx)
    trim = rng.random(rows) < 0.5
    skip_a, skip_c = np.zeros(rows, np.int64), np.zeros(rows, np.int64)
    done_a, done_c = np.zeros(rows, bool), np.zeros(rows, bool)
    for _ in range(60):  # 60 blocks: limits are reached, jobs end, heard turns on
        live = np.flatnonzero(~done_a)
        if not len(live):
            break
        sel = np.sort(rng.choice(live, size=min(m, len(live)), replace=False)).astype(np.int64)
        loud = rng.random((len(sel), b)) < 0.3
        energy = np.where(loud, 1e6, 10.0).astype(np.float32)
        f = rng.integers(0, 30, len(sel)) * FRAME  # staging fill before the block: any frame count
        want = reference(a, sel, energy, f, trim, skip_a, done_a)
        got = np.zeros(len(sel), np.int64)
        kernels.silence_frames(sel, energy, f, FRAME, PREROLL_SAMPLES, c.threshold, c.heard, c.initial_limit,
                               c.max_limit, c.emitted, c.last_loud_end, c.run, c.audio, trim, skip_c,
                               np.full(len(sel), 1 << 40, np.int64), done_c, got)  # no file is full here
        assert (got == want).all()
        for name in ("heard", "audio", "run", "emitted", "last_loud_end"):
            assert (getattr(a, name) == getattr(c, name)).all(), name
        assert (skip_a == skip_c).all() and (done_a == done_c).all()
    assert done_a.any() and a.heard.any() and (skip_a > 0).any()  # the run reached what it checks
