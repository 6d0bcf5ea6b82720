"""The batched producer: delivers exactly what one LegWriter per leg would, and is fast when legs are in step."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wholecall.shm import Arena, LegBatchWriter, LegReader, LegWriter

CAP = 1024
LEGS = 6

# One step of a scenario: a batch write of n samples, or something the consumer or
# controller does between writes (a worker reads, a recording starts or ends, the worker
# records a silent leg's gap and moves past the producer).
write_op = st.tuples(st.just("write"), st.integers(0, 2600), st.integers(0, 2**32 - 1))
read_op = st.tuples(st.just("read"), st.integers(0, LEGS - 1), st.integers(0, 1500))
job_op = st.tuples(st.just("job"), st.integers(0, LEGS - 1), st.booleans())
jump_op = st.tuples(st.just("jump"), st.integers(0, LEGS - 1), st.integers(1, 900))
steps = st.lists(st.one_of(write_op, write_op, read_op, job_op, jump_op), min_size=1, max_size=25)


def _state(a: Arena) -> tuple:
    return (a.write_pos.copy(), a.read_pos.copy(), a.overruns.copy(), a.job.copy(), a.data.copy())


@settings(max_examples=150, deadline=None)
@given(steps, st.permutations(range(LEGS)), st.integers(1, LEGS))
def test_batch_delivers_exactly_what_leg_writers_would(ops, order, k):
    slots = np.array(order[:k])
    with Arena.create(LEGS, CAP) as one, Arena.create(LEGS, CAP) as batch:
        singles = [LegWriter(one, int(s)) for s in slots]
        bw = LegBatchWriter(batch, slots)
        for op in ops:
            if op[0] == "write":
                _, n, seed = op
                block = np.random.default_rng(seed).integers(-32768, 32767, (k, n), dtype=np.int16, endpoint=True)
                want = [w.write(block[i], block=False) for i, w in enumerate(singles)]
                got = bw.write(block)
                assert list(got) == want
            else:
                for a in (one, batch):
                    _, leg, v = op
                    if op[0] == "read":
                        LegReader(a, leg).read(v)
                    elif op[0] == "job":
                        if v and not a.job[leg]:
                            a.read_pos[leg] = a.write_pos[leg]  # as CallChannel._arm does
                        a.job[leg] = int(v)
                    else:
                        a.read_pos[leg] = a.write_pos[leg] + v
            for x, y in zip(_state(one), _state(batch)):
                assert np.array_equal(x, y)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, CAP - 1), min_size=LEGS, max_size=LEGS), st.integers(1, 900))
def test_legs_at_any_mix_of_columns_read_back_in_order(starts, n):
    """Each leg at its own ring column (grouped, wrapping and fancy paths alike): the reader sees the block."""
    with Arena.create(LEGS, CAP) as a:
        for leg, p in enumerate(starts):
            a.write_pos[leg] = a.read_pos[leg] = 5 * CAP + p
            a.job[leg] = 1
        block = np.arange(LEGS * n, dtype=np.int16).reshape(LEGS, n)
        assert list(LegBatchWriter(a, np.arange(LEGS)).write(block)) == [n] * LEGS
        for leg in range(LEGS):
            assert np.array_equal(LegReader(a, leg).read(CAP), block[leg])


def test_full_ring_drops_and_counts_per_leg_never_blocks():
    with Arena.create(3, CAP) as a:
        a.job[:] = 1
        a.write_pos[1] = 1000  # leg 1: the worker is 1000 samples behind, 24 free
        bw = LegBatchWriter(a, np.array([0, 1, 2]))
        stored = bw.write(np.ones((3, 100), np.int16))
        assert list(stored) == [100, 24, 100]
        assert list(bw.overruns) == [0, 76, 0]
        assert list(bw.positions) == [100, 1024, 100]


def test_rejects_shared_slots_bad_shapes_and_dtypes():
    with Arena.create(4, CAP) as a:
        with pytest.raises(ValueError, match="distinct"):
            LegBatchWriter(a, np.array([1, 1]))
        with pytest.raises(ValueError, match="slot 4 outside arena of 4 slots"):
            LegBatchWriter(a, np.array([0, 4]))
        bw = LegBatchWriter(a, np.array([0, 1]))
        with pytest.raises(ValueError, match=r"shape \(2, samples\)"):
            bw.write(np.zeros((3, 10), np.int16))
        with pytest.raises(TypeError, match="int16"):
            bw.write(np.zeros((2, 10), np.float32))
