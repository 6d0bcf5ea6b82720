"""The batched producer: delivers exactly what one LegWriter per leg would, and is fast when legs are in step;
`write_rows` (blocks straight from source rows, compiled) stores exactly what `write` stores."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wholecall.shm import Arena, LegBatchWriter, LegReader, LegWriter

CAP = 1024
LEGS = 6
# A clip library for `write_rows`: more rows than legs (legs share rows), longer than any write.
SOURCES = np.random.default_rng(99).integers(-32768, 32767, (LEGS + 3, 3000), dtype=np.int16, endpoint=True)

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
    """Three producers in three arenas, driven alike: one LegWriter per leg, `write`, `write_rows`."""
    slots = np.array(order[:k])
    with Arena.create(LEGS, CAP) as one, Arena.create(LEGS, CAP) as batch, Arena.create(LEGS, CAP) as direct:
        singles = [LegWriter(one, int(s)) for s in slots]
        bw = LegBatchWriter(batch, slots)
        dw = LegBatchWriter(direct, slots)
        for op in ops:
            if op[0] == "write":
                _, n, seed = op
                rng = np.random.default_rng(seed)
                rows = rng.integers(0, SOURCES.shape[0], k)
                start = int(rng.integers(0, SOURCES.shape[1] - n + 1))
                block = SOURCES[rows, start:start + n]
                want = [w.write(block[i], block=False) for i, w in enumerate(singles)]
                assert list(bw.write(block)) == want
                assert list(dw.write_rows(SOURCES, rows, start, n)) == want
            else:
                for a in (one, batch, direct):
                    _, leg, v = op
                    if op[0] == "read":
                        LegReader(a, leg).read(v)
                    elif op[0] == "job":
                        if v and not a.job[leg]:
                            a.read_pos[leg] = a.write_pos[leg]  # as CallChannel._arm does
                        a.job[leg] = int(v)
                    else:
                        a.read_pos[leg] = a.write_pos[leg] + v
            for x, y, z in zip(_state(one), _state(batch), _state(direct)):
                assert np.array_equal(x, y)
                assert np.array_equal(x, z)


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


def _twins(legs: int = 4):
    """Two arenas in the same state, for `write` against `write_rows`."""
    return Arena.create(legs, CAP), Arena.create(legs, CAP)


def _same(a: Arena, b: Arena) -> None:
    for x, y in zip(_state(a), _state(b)):
        assert np.array_equal(x, y)


def test_write_rows_stores_what_write_stores_in_each_named_case():
    """Leg 0 wraps at the ring end, leg 1 was overtaken by the worker (jump, gap zeroed), leg 2's
    recorded ring is nearly full (overrun counted), leg 3 is unrecorded; then a block longer
    than the rings (recorded legs keep what fits, the unrecorded one its last CAP samples)."""
    a, b = _twins()
    with a, b:
        for x in (a, b):
            x.data[:] = 7  # stale audio, so a gap that is not zeroed shows
            x.job[:3] = 1
            x.write_pos[0] = x.read_pos[0] = 3 * CAP - 50  # 50 samples before the ring end
            x.write_pos[1], x.read_pos[1] = 2 * CAP + 10, 2 * CAP + 300  # worker 290 samples ahead
            x.write_pos[2], x.read_pos[2] = CAP + 1000, CAP  # 24 free
            x.write_pos[3] = 5 * CAP + 900
        wa, wb = LegBatchWriter(a, np.arange(4)), LegBatchWriter(b, np.arange(4))
        rows = np.array([3, 0, 3, 8])
        n, start = 100, 1200
        got = wb.write_rows(SOURCES, rows, start, n)
        assert list(got) == list(wa.write(SOURCES[rows, start:start + n])) == [n, n, 24, n]
        _same(a, b)
        assert list(b.overruns) == [0, 0, n - 24, 0]
        assert list(b.write_pos) == [3 * CAP + 50, 2 * CAP + 400, 2 * CAP, 5 * CAP + 1000]
        # Leg 1: the gap (ring columns 10..300) is silence, the audio starts at the worker's position.
        assert not b.data[1, 10:300].any() and (b.data[1, :10] == 7).all()
        assert np.array_equal(LegReader(b, 1).read(CAP), SOURCES[0, start:start + n])
        # Leg 0 reads back across the wrap, in order.
        assert np.array_equal(LegReader(b, 0).read(CAP), SOURCES[3, start:start + n])
        for leg in (0, 1):
            LegReader(a, leg).read(CAP)
        # Longer than the ring: legs 0 and 1 were just read empty, leg 2 is still full.
        n, start = 1500, 1400
        got = wb.write_rows(SOURCES, rows, start, n)
        assert list(got) == list(wa.write(SOURCES[rows, start:start + n])) == [CAP, CAP, 0, n]
        _same(a, b)
        assert list(b.overruns) == [n - CAP, n - CAP, 100 - 24 + n, 0]
        assert np.array_equal(b.data[3, np.arange(5 * CAP + 1000 + n - CAP, 5 * CAP + 1000 + n) % CAP],
                              SOURCES[8, start + n - CAP:start + n])


def test_write_rows_takes_any_int16_source_layout_and_keeps_rings_in_step():
    """A strided (non-contiguous) source, legs sharing rows, many blocks in a row, reader keeping up."""
    a, b = _twins()
    src = SOURCES[:, ::2]
    with a, b:
        for x in (a, b):
            x.job[:] = 1
        rows = np.array([5, 5, 1, 2])
        wa, wb = LegBatchWriter(a, np.arange(4)), LegBatchWriter(b, np.arange(4))
        for start in range(0, 1400, 300):
            assert list(wb.write_rows(src, rows, start, 300)) == list(wa.write(src[rows, start:start + 300]))
            _same(a, b)
            for x in (a, b):
                for leg in range(4):
                    LegReader(x, leg).read(200)


def test_write_rows_rejects_bad_arguments_and_stores_nothing():
    a, b = _twins(2)
    with a, b:
        bw = LegBatchWriter(a, np.array([0, 1]))
        with pytest.raises(ValueError, match=r"row 9 of leg 1 outside sources of 9 rows"):
            bw.write_rows(SOURCES, np.array([0, 9]), 0, 100)
        with pytest.raises(ValueError, match=r"row -1 of leg 0 outside sources of 9 rows"):
            bw.write_rows(SOURCES, np.array([-1, 0]), 0, 100)
        with pytest.raises(ValueError, match=r"samples \[2950, 3050\) outside sources of 3000 samples"):
            bw.write_rows(SOURCES, np.array([0, 1]), 2950, 100)
        with pytest.raises(ValueError, match=r"rows must have shape \(2,\)"):
            bw.write_rows(SOURCES, np.array([0, 1, 2]), 0, 100)
        with pytest.raises(TypeError, match="int16"):
            bw.write_rows(SOURCES.astype(np.int32), np.array([0, 1]), 0, 100)
        with pytest.raises(TypeError, match="rows must be integers"):
            bw.write_rows(SOURCES, np.array([0.0, 1.0]), 0, 100)
        _same(a, b)  # untouched: nothing half done
        assert list(bw.write_rows(SOURCES, np.array([0, 1]), 5, 0)) == [0, 0]
