"""The compiled loop behind `LegBatchWriter.write_rows`: a block goes from its source rows
straight into many leg rings, one pass over the samples (numba).

Why compiled. The load generator's audio is a small library of source rows; every leg
plays one of them. Through `LegBatchWriter.write` each block crossed memory twice: a
fancy-index gather of the legs' source rows into a temporary (k x n), then a fancy-index
scatter of that temporary into the rings, plus ~20 numpy operations of bookkeeping per
call (a stress run's cohorts hold ~100 calls, so ~100 such calls per 100 ms block). Here
one loop per leg reads its source row and stores into its ring while both are in cache.

The copies are loops over views (`out[i] = seg[i]`): numba's slice assignment
(`out[:] = seg`) checks the two for overlap and goes through a temporary, and an index
computed per sample with a wrap-around mask keeps LLVM from vectorising the loop.

Each leg's block is 1,600 bytes somewhere in a multi-gigabyte arena, read from a row
somewhere in a 20 MB library: nothing the hardware prefetcher can follow from one leg to
the next. The loop asks for the source and ring lines of the leg `AHEAD` legs on while it
copies this one: 3.0 -> 4.3 GB/s at 20,000 legs on 4 KiB pages (/dev/shm); on the 2 MiB
pages stress mounts the difference is within this shared machine's noise (+-10 %,
bench/loadgen.py), where the loop runs at about the speed of a plain memcpy anyway.

`cache`: compiled once per machine into __pycache__; `nogil`: a producer's other
threads run while it copies. Imported lazily by shm.batch: most users of shm never call
it, and numba costs ~0.3 s to import.
"""

from __future__ import annotations

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_jit = nb.njit(cache=True, nogil=True)
AHEAD = 4  # legs ahead whose lines the loop asks the cache for
LINE = 64  # bytes per cache line


def _prefetcher(write: int):
    """An intrinsic ``f(arr, i, j)`` that asks the cache for the line holding ``arr[i, j]``
    (x86 prefetcht0, or prefetchw to write it): a hint that never stalls and never faults,
    so an index past a row's end is harmless."""

    @intrinsic
    def prefetch(typingctx, arr, i, j):
        def codegen(context, builder, signature, args):
            ary = context.make_array(signature.args[0])(context, builder, args[0])
            ptr = cgutils.get_item_pointer(context, builder, signature.args[0], ary, list(args[1:]), wraparound=False)
            i8p = ir.IntType(8).as_pointer()
            i32 = ir.IntType(32)
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                                "llvm.prefetch.p0i8")
            builder.call(fn, [builder.bitcast(ptr, i8p), i32(write), i32(3), i32(1)])  # locality 3, data
            return context.get_dummy_value()

        return types.void(arr, i, j), codegen

    return prefetch


_prefetch_read = _prefetcher(0)
_prefetch_write = _prefetcher(1)


@_jit
def _put(data, slot, pos, mask, src, s0, count):
    """``src[s0:s0 + count]`` into ring ``slot`` from ring position ``pos``, wrapping at its end."""
    col = pos & mask
    first = min(count, mask + 1 - col)
    out = data[slot, col:col + first]
    seg = src[s0:s0 + first]
    for i in range(first):
        out[i] = seg[i]
    rest = count - first
    if rest > 0:
        out = data[slot, :rest]
        seg = src[s0 + first:s0 + count]
        for i in range(rest):
            out[i] = seg[i]


@_jit
def _zero(data, slot, pos, mask, count):
    """``count`` zeros into ring ``slot`` from ring position ``pos``, wrapping at its end."""
    col = pos & mask
    first = min(count, mask + 1 - col)
    out = data[slot, col:col + first]
    for i in range(first):
        out[i] = 0
    out = data[slot, :count - first]
    for i in range(count - first):
        out[i] = 0


@_jit
def store_rows(data, write_pos, read_pos, job, overruns, slots, sources, rows, start, n, new_pos, stored):
    """Store ``sources[rows[i], start:start + n]`` into ring ``slots[i]`` for every leg i,
    with the rules of `LegBatchWriter.write`; returns -1, or the first leg whose row is not
    a row of ``sources`` (then nothing at all is stored).

    Fills ``new_pos[i]`` (the position to publish) and ``stored[i]``; counts overruns.
    Does NOT publish positions: the caller stores them after this returns, so every
    sample is in memory before any position (a store inside this loop could be reordered
    by the compiler, a store after the call cannot).
    """
    k = slots.shape[0]
    nrows = sources.shape[0]
    for i in range(k):  # validate first: all or nothing
        if rows[i] < 0 or rows[i] >= nrows:
            return i
    cap = data.shape[1]
    mask = cap - 1
    skip_unrecorded = max(0, n - cap)  # a lapping writer keeps the last `cap` samples
    step_s = LINE // sources.itemsize
    step_d = LINE // data.itemsize
    ahead = min(n, cap)
    for i in range(k):
        if i + AHEAD < k:
            sa = slots[i + AHEAD]
            col = write_pos[sa] & mask
            for j in range(0, ahead, step_s):
                _prefetch_read(sources, rows[i + AHEAD], start + j)
            for j in range(0, ahead, step_d):
                _prefetch_write(data, sa, col + j)
        s = slots[i]
        w = write_pos[s]
        src = sources[rows[i]]
        lo = 0
        if job[s] != 0:
            r = read_pos[s]
            if w < r:
                # The worker moved past this leg and recorded the gap as silence: zero it in
                # the ring too (a replacement worker re-reading it reads silence), then jump.
                _zero(data, s, w, mask, min(r - w, cap))
                w = r
            keep = min(cap - (w - r), n)
            if keep < 0:
                keep = 0
            if keep < n:
                overruns[s] += n - keep
        else:
            keep = n
            lo = skip_unrecorded
        if keep > lo:
            _put(data, s, w + lo, mask, src, start + lo, keep - lo)
        new_pos[i] = w + keep
        stored[i] = keep
    return -1


def warm_up() -> None:
    """Load (or compile) `store_rows` for the types `LegBatchWriter.write_rows` passes,
    so a producer pays numba's start-up before it feeds audio, not in its first block."""
    data = np.zeros((1, 16), np.int16)
    one = np.zeros(1, np.int64)
    store_rows(data, one, one.copy(), one.copy(), one.copy(), one.copy(), np.zeros((1, 4), np.int16), one.copy(),
               0, 4, one.copy(), one.copy())
