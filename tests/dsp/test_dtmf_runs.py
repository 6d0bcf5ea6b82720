"""The compiled digit runs and mutes (`worker/dtmf_runs.py`, issue 25) decide exactly
what the numpy code they replaced decided (`dtmf_reference.ReferenceBank`), on the
stress run's clip library: callers keying digit strings into speech and silence on
either leg, so that many rows end one digit and confirm the next in one call."""

from __future__ import annotations

import numpy as np
import pytest
from dtmf_reference import ReferenceBank

from wholecall.worker import dtmf_runs
from wholecall.worker.dtmf import FRAME, DtmfBank


def _library_legs(legs: int, seconds: float, seed: int) -> np.ndarray:
    """(legs, frames, FRAME) int16: library programs' legs at random phases."""
    from wholecall.sim.loadgen import load_programs

    progs = load_programs()[0]
    rng = np.random.default_rng(seed)
    prog = rng.integers(progs.count, size=legs)
    leg = rng.integers(2, size=legs)
    phase = rng.integers(progs.length, size=legs)
    nfr = int(seconds * 50)
    idx = (phase[:, None] + np.arange(nfr * FRAME)) % progs.length
    return progs.audio[prog[:, None], leg[:, None], idx].reshape(legs, nfr, FRAME)


def _bank_pair(ref_class: type, legs: int, max_block: int, elim_every: int) -> tuple[DtmfBank, DtmfBank]:
    """A compiled bank and a reference one, every `elim_every`-th leg not eliminating."""
    new = DtmfBank(capacity=legs, sample_type=np.int16, max_block=max_block)
    ref = ref_class(capacity=legs, sample_type=np.int16, max_block=max_block)
    elim = np.arange(legs) % elim_every != 0
    for bank in (new, ref):
        bank.reset(np.arange(legs), elim)
    return new, ref


def _random_calls(x: np.ndarray, max_block: int, seed: int):
    """The calls a worker's banks get, at random: each a random ~80 % of the legs with audio
    left, in random order, advanced by a random block of 1 .. max_block frames (draining
    jobs make odd sizes). Yields (legs, block, frames) until every leg is through `x`."""
    rng = np.random.default_rng(seed)
    nfr = x.shape[1]
    pos = np.zeros(len(x), np.int64)
    while (pos < nfr).any():
        b = int(rng.integers(1, max_block + 1))
        live = np.flatnonzero(pos + b <= nfr)
        if not len(live):
            b, live = 1, np.flatnonzero(pos < nfr)
        pick = rng.permutation(live[rng.random(len(live)) < 0.8])
        if not len(pick):
            continue
        yield pick, b, x[pick[:, None], pos[pick][:, None] + np.arange(b)]
        pos[pick] += b


def _state(bank: DtmfBank) -> tuple:
    return (bank._mask, bank._masked, bank._rd, bank._rv, bank._rg, bank._ra, bank._rb, bank._racc, bank._rpur,
            bank._active, bank._done, bank._hot, bank._due, bank.onsets_cut)


@pytest.mark.parametrize("max_block", [5, 1])
def test_compiled_runs_and_mutes_equal_the_numpy_reference_on_the_stress_library(max_block: int) -> None:
    """Both banks get the same legs in the same calls (random subsets, random block
    sizes as the worker's draining jobs make them, some legs not eliminating); after
    every call the outputs, the digits, every mute bit and the run state are equal."""
    legs = 600
    x = _library_legs(legs, 30.0, seed=3)
    new, ref = _bank_pair(ReferenceBank, legs, max_block, elim_every=7)
    digits = together = 0
    real = DtmfBank._apply_edges

    for pick, _, blk in _random_calls(x, max_block, seed=4):
        seen = []
        DtmfBank._apply_edges = lambda self, rows, n, ev, seen=seen: (seen.append(ev), real(self, rows, n, ev))[1]
        try:
            out = new.process(pick, blk)
        finally:
            DtmfBank._apply_edges = real
        assert np.array_equal(out, ref.process(pick, blk))
        for ev in seen:
            both = np.concatenate([ev[1], ev[6]])
            together += len(both) - len(np.unique(both))
        ev_new, ev_ref = new.pop_events(), ref.pop_events()
        assert ev_new == ev_ref
        digits += len(ev_new)
        for a, r in zip(_state(new), _state(ref)):
            assert np.array_equal(a, r)
    assert np.array_equal(new.flush(np.arange(legs)), ref.flush(np.arange(legs)))
    assert new.pop_events() == ref.pop_events()
    # The load exercised what matters: many digits, and a stop and a confirmation of one
    # row in one call (their mutes must follow window order).
    assert digits >= 100, digits
    assert together >= 1 or max_block == 1, together


def test_a_bank_at_work_compiles_nothing_after_its_warm_up() -> None:
    """`DtmfBank()` loads the kernels for the types it calls them with (`warm_up`): a
    tick then never stalls every leg on numba's compiler."""
    x = _library_legs(64, 10.0, seed=5)
    bank = DtmfBank(capacity=64, sample_type=np.int16, max_block=5)
    compiled = (len(dtmf_runs.digit_runs.signatures), len(dtmf_runs.set_mutes.signatures))
    bank.reset(np.arange(64), np.ones(64, bool))
    for k in range(0, x.shape[1], 5):
        bank.process(np.arange(64), x[:, k:k + 5])
    bank.flush(np.arange(64))
    assert len(bank.pop_events()) > 0
    assert (len(dtmf_runs.digit_runs.signatures), len(dtmf_runs.set_mutes.signatures)) == compiled == (1, 1)
