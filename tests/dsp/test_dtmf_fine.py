"""The compiled fine analysis and edge walk (`worker/dtmf_fine.py`, issue 25) decide what
the numpy code they replaced decided (`dtmf_reference.NumpyAnalysisBank`), on the
stress run's clip library: every output sample, mute bit and digit equal; the window
levels equal to float32 rounding (the compiled analysis projects by sub-blocks, the
numpy one each window whole: the same sums, grouped otherwise)."""

from __future__ import annotations

import numba as nb
import numpy as np
import pytest
from dtmf_reference import NumpyAnalysisBank
from test_dtmf_runs import _bank_pair, _library_legs, _random_calls

from wholecall.worker import dtmf_fine
from wholecall.worker.dtmf import DtmfBank


@pytest.mark.parametrize("max_block", [5, 1])
def test_compiled_analysis_and_edges_decide_what_numpy_decided_on_the_stress_library(max_block: int) -> None:
    """Both banks get the same legs in the same calls (random subsets and block sizes,
    some legs not eliminating); after every call the outputs, the digits and every mute
    bit are equal, and each call's window verdicts too."""
    legs = 600
    x = _library_legs(legs, 30.0, seed=7)
    new, ref = _bank_pair(NumpyAnalysisBank, legs, max_block, elim_every=5)
    digits = windows = 0
    for pick, b, blk in _random_calls(x, max_block, seed=8):
        hot = np.flatnonzero(new._hot > 0)
        if len(hot):  # the verdicts on the windows of every hot row, before the call
            n = np.maximum(new._n[hot] - 1, 0)
            a, r = new._windows(hot, n, b + 3), ref._windows(hot, n, b + 3)
            assert np.array_equal(a[0], r[0]) and np.array_equal(a[1], r[1])
            for fa, fr in zip(a[3:], r[3:]):  # the levels
                np.testing.assert_allclose(fa, fr, rtol=2e-4, atol=1e-2)
            # The phase advances the runs sum (valid windows'): where two sub-bins of a
            # bin are within rounding of each other either may be the strongest, and a
            # tone advances by its own frequency whichever one looks at it.
            v = a[0]
            np.testing.assert_allclose(np.angle(a[2][v]), np.angle(r[2][v]), atol=2e-3)
            windows += a[0].size
        assert np.array_equal(new.process(pick, blk), ref.process(pick, blk))
        ev = new.pop_events()
        assert ev == ref.pop_events()
        digits += len(ev)
        assert np.array_equal(new._mask, ref._mask)
        assert np.array_equal(new._active, ref._active) and np.array_equal(new._rd, ref._rd)
    assert np.array_equal(new.flush(np.arange(legs)), ref.flush(np.arange(legs)))
    assert new.pop_events() == ref.pop_events()
    assert digits >= 100, digits
    assert windows >= 10_000, windows


def test_the_compiled_kernels_are_loaded_once_for_both_sample_types() -> None:
    """`DtmfBank()` loads them for the types it calls them with (`warm_up`): a tick then
    never stalls every leg on numba's compiler, whether the bank holds int16 or float32."""
    for t in (np.int16, np.float32):
        x = _library_legs(64, 6.0, seed=9).astype(t)
        bank = DtmfBank(capacity=64, sample_type=t, max_block=5)
        compiled = (len(dtmf_fine.fine_windows.signatures), len(dtmf_fine.edges.signatures))
        bank.reset(np.arange(64), np.ones(64, bool))
        for k in range(0, x.shape[1], 5):
            bank.process(np.arange(64), x[:, k:k + 5])
        bank.flush(np.arange(64))
        assert len(bank.pop_events()) > 0
        assert (len(dtmf_fine.fine_windows.signatures), len(dtmf_fine.edges.signatures)) == compiled
        held = {sig[0].dtype for k in (dtmf_fine.fine_windows, dtmf_fine.edges) for sig in k.signatures}
        assert nb.from_dtype(np.dtype(t)) in held  # the bank loaded its own type before its first tick
