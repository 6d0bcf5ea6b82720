"""The worker's per-sample inner loops, compiled (numba).

Why compiled: at 10,000 channels the batched numpy pipeline spent most of its time
moving the same samples through memory once per operation: gather a block from the
rings, copy it into the DTMF delay line, convert it to float32 for the prescreen, take
the delayed frames out again, mix, clip, measure energy, scatter into staging, encode.
Each pass is cheap per sample but there were a dozen of them, each a separate trip to
memory for ~30 MB per tick. These kernels do each chain in one pass, row by row, while
the row is in cache. Decisions that touch a few numbers per frame are compiled too where
numpy's per-call cost dominated (`silence_frames` here, the DTMF runs in `dtmf_runs.py`);
flushes stay in Python.

Every kernel here keeps the numbers exactly what the numpy code computed, except the
float32 sums (energies, prescreen projections), whose rounding depends on the order of
the additions; they only feed threshold tests with wide margins.

Each row's block is 1,600 bytes somewhere in a multi-gigabyte arena, so the hardware
prefetcher has nothing to follow from one row to the next: both kernels ask for the
memory of the row `AHEAD` rows on while they work on this one (`_prefetch`).

`nogil`: the worker's command thread (starts, stops) runs while a kernel works.
`cache`: compiled once per machine into __pycache__, not at every worker start.
"""

from __future__ import annotations

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from wholecall.formats.codecs import FRAME  # samples per frame (20 ms): the worker's unit of work

_jit = nb.njit(cache=True, nogil=True, fastmath={"reassoc"})
AHEAD = 4  # rows (jobs) ahead whose memory the kernels ask the cache for
LINE = 64  # bytes per cache line


@intrinsic
def _prefetch(typingctx, arr, i, j, k):
    """Ask the cache for the line holding arr[i], arr[i, j] or arr[i, j, k] (by its number
    of dimensions): a prefetch hint (x86 prefetcht0), which, unlike a load, never stalls
    the loop and never faults, so an index past the end (a ring's last block) is harmless."""
    sig = types.void(arr, i, j, k)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        idx = list(args[1:1 + aryty.ndim])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, idx, wraparound=False)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            "llvm.prefetch.p0i8")
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])  # read, keep, data
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _stream_frame(typingctx, dst, row, src, start):
    """dst[row, :FRAME] = src[start:start + FRAME] with non-temporal (streaming) stores:
    the delay line is read again only a tick later, long out of cache, so a store that
    first reads the line in (an ordinary one) moves its bytes twice. `dst` rows must be
    16-byte aligned (FRAME samples of 2 or 4 bytes: every row is, when row 0 is)."""
    sig = types.void(dst, row, src, start)

    def codegen(context, builder, signature, args):
        dty, _, sty, _ = signature.args
        darr = context.make_array(dty)(context, builder, args[0])
        sarr = context.make_array(sty)(context, builder, args[2])
        zero = context.get_constant(types.intp, 0)
        dptr = cgutils.get_item_pointer(context, builder, dty, darr, [args[1], zero], wraparound=False)
        sptr = cgutils.get_item_pointer(context, builder, sty, sarr, [args[3]], wraparound=False)
        elt = context.get_value_type(dty.dtype)
        lanes = 16 // context.get_abi_sizeof(elt)
        vec = ir.VectorType(elt, lanes)
        nt = builder.module.add_metadata([ir.IntType(32)(1)])
        for k in range(FRAME // lanes):
            off = ir.IntType(64)(k * lanes)
            v = builder.load(builder.bitcast(builder.gep(sptr, [off]), vec.as_pointer()), align=1)
            st = builder.store(v, builder.bitcast(builder.gep(dptr, [off]), vec.as_pointer()), align=16)
            st.set_metadata("nontemporal", nt)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _store_fence(typingctx):
    """sfence: streaming stores are weakly ordered; after it they are visible as any store."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                            "llvm.x86.sse.sfence")
        builder.call(fn, [])
        return context.get_dummy_value()

    return sig, codegen


@_jit
def frames_in(ring, base, pos, avail, wrap_mask, b, dst, dst_slot, c_pre_t, bound, pre_min, twist, purity, fired):
    """Copy `b` frames per row from a ring into the delay-line slots `dst_slot` (row-major,
    `b` per row) of `dst`, and run the DTMF prescreen on each frame (`fired`, rows x b).

    Row r reads samples pos[r] .. pos[r] + b * FRAME of the ring starting at base[r]
    (index taken modulo `wrap_mask + 1`); samples at or past pos[r] + avail[r] are not
    written yet and read as silence.

    Prescreen (see dtmf.py): a frame fires when, over its first `c_pre_t.shape[1]`
    samples (projected on the rows of `c_pre_t`), one low and one high DTMF bin are loud enough (`pre_min`), within `twist`
    of each other and hold `purity` of the energy (per sample). A frame whose energy
    times `bound` is below `pre_min` cannot fire and is not projected.
    """
    m = base.shape[0]
    nb2, pre_n = c_pre_t.shape
    nbin = nb2 // 2
    p = np.empty(nb2, np.float32)
    x = np.empty(pre_n, np.float32)
    step_r = LINE // ring.itemsize
    for r in range(m):
        if r + AHEAD < m:  # the ring block of a row ahead: in cache when it comes (its slots are streamed)
            ra = r + AHEAD
            src0 = base[ra] + (pos[ra] & wrap_mask)
            for i in range(0, b * FRAME, step_r):
                _prefetch(ring, src0 + i, 0, 0)
        for k in range(b):
            s0 = pos[r] + k * FRAME
            lim = avail[r] - k * FRAME
            col = s0 & wrap_mask
            e = np.float32(0.0)
            if lim >= FRAME and col + FRAME <= wrap_mask + 1:
                # The whole frame in one piece: streamed to the delay line (`_stream_frame`);
                # the prescreen reads the ring, in cache after the copy's loads.
                src = base[r] + col
                _stream_frame(dst, dst_slot[r * b + k], ring, src)
                # Through a view: `ring[src + i]` may be negative as far as numba knows, and
                # its wrap-around select per sample kept the loop from vectorising.
                seg = ring[src:src + pre_n]
                for i in range(pre_n):
                    v = np.float32(seg[i])
                    x[i] = v
                    e += v * v
            else:
                out = dst[dst_slot[r * b + k]]
                for i in range(FRAME):
                    if i < lim:
                        out[i] = ring[base[r] + ((s0 + i) & wrap_mask)]
                    else:
                        out[i] = 0
                for i in range(pre_n):
                    v = np.float32(out[i])
                    x[i] = v
                    e += v * v
            f = False
            if e * bound > pre_min:
                _project8(x, c_pre_t, p)
                lo = np.float32(0.0)
                hi = np.float32(0.0)
                for q in range(nbin):
                    w = p[q] * p[q] + p[q + nbin] * p[q + nbin]
                    if q < nbin // 2:
                        lo = max(lo, w)
                    else:
                        hi = max(hi, w)
                weak = min(lo, hi)
                strong = max(lo, hi)
                f = weak > pre_min and strong < weak * twist and weak + strong > e * purity
            fired[r, k] = f
    _store_fence()


#: pwrite(2) itself, called from compiled code (resolved in the C library at link time,
#: so the kernel below caches like the others). Its off_t is 64 bits on the 64-bit Linux
#: the workers run on.
_pwrite = types.ExternalFunction("pwrite", types.intp(types.int32, types.voidptr, types.uintp, types.int64))


@_jit
def pwrite_rows(fds, stage, rows, n, offsets, wrote):
    """wrote[i] = pwrite(fds[i], the first `n` bytes of stage[rows[i]], n, offsets[i]):
    what the system call returned (short, or -1 on an error), -1 without a call where
    fds[i] < 0. `stage` must be C-contiguous (each row's bytes in one piece).

    Why compiled: a flush of 10,000 G.711 recordings is 10,000 writes every 2 s, and the
    Python around each (the writer's checks, the sink's loop, os.pwrite's argument
    handling) was ~2 us of the ~15 a write took (the system call copying 16 kB into the
    page cache is the rest). The caller accounts each
    recording's write and takes any row not written whole through the writer again
    (pwrite is positional: writing the same bytes at the same offset twice is harmless),
    which also raises the error with its errno.
    """
    for i in range(rows.shape[0]):
        if fds[i] < 0:
            wrote[i] = -1
        else:
            wrote[i] = _pwrite(np.int32(fds[i]), stage[rows[i]].ctypes.data, n, offsets[i])


@_jit
def delay_slots(rows, n0, depth, b, lookahead, slot_in, slot_out):
    """The DTMF delay line's slots (`DtmfBank._advance`): row r's frame f sits in slot
    rows[r] * depth + f % depth. slot_in (row-major, `b` per row): the frames n0[r] ..
    n0[r] + b - 1 arriving now; slot_out (rows x b): those received `lookahead` frames
    before them, which leave now (for a young row, slots of its initial silence)."""
    for r in range(rows.shape[0]):
        first = rows[r] * depth
        for k in range(b):
            slot_in[r * b + k] = first + (n0[r] + k) % depth
            f = n0[r] - lookahead + k
            slot_out[r, k] = first + f % depth


@_jit
def _project8(x, c, p):
    """p[q] = x . c[q] for every row of `c` (a multiple of 8 rows: the DTMF prescreen's
    16, cos and sin of 8 tones). Eight dot products at a time, each sample loaded once
    for eight multiply-adds: 46 against 81-88 ns for 16 x 80 on this machine's CPU, one
    at a time (the reductions' tails and the loads were the cost)."""
    n = x.shape[0]
    for q in range(0, c.shape[0], 8):
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.float32(0.0)
        for i in range(n):
            v = x[i]
            a0 += v * c[q, i]
            a1 += v * c[q + 1, i]
            a2 += v * c[q + 2, i]
            a3 += v * c[q + 3, i]
            a4 += v * c[q + 4, i]
            a5 += v * c[q + 5, i]
            a6 += v * c[q + 6, i]
            a7 += v * c[q + 7, i]
        p[q] = a0
        p[q + 1] = a1
        p[q + 2] = a2
        p[q + 3] = a3
        p[q + 4] = a4
        p[q + 5] = a5
        p[q + 6] = a6
        p[q + 7] = a7


@_jit
def mix_frames(src, mute, s_in, s_out, m_in, m_out, rows, first, table_of, tables, stage_t, stage_c, energy):
    """Mix the two legs' `b` frames of each job j with saturation into staging planes
    first[j] .. first[j] + b - 1 of job row rows[j], and measure each mixed frame's
    mean square (`energy`, jobs x b, float32) for the silence detector.

    Leg frames are rows of `src` (frames x FRAME, int16): s_in[j, k] / s_out[j, k]
    (jobs x b). Where m_in[j] / m_out[j] is set, samples whose `mute` is True count as
    silence (DTMF removed). A job row whose table_of[row] is t > 0 is staged as codes,
    tables[t - 1][sample as uint16], into `stage_c` (G.711 encoded here, once); any
    other as int16 into `stage_t` (both: job rows x planes x FRAME).
    """
    m = s_in.shape[0]
    b = s_in.shape[1]
    # A frame's table indices (see the G.711 loop), as uint16: the vectorised loop stores
    # a quarter of the bytes int64 indices take (-1.7 us per channel-second at 10,000).
    idx = np.empty(FRAME, np.uint16)
    for j in range(m):
        if j + AHEAD < m:  # a job ahead's frames and staging: in cache when it comes
            ja = j + AHEAD
            for k in range(b):
                for i in range(0, FRAME, LINE // src.itemsize):
                    _prefetch(src, s_in[ja, k], i, 0)
                    _prefetch(src, s_out[ja, k], i, 0)
                for i in range(0, FRAME, LINE):
                    _prefetch(stage_c, rows[ja], first[ja] + k, i)
        row = rows[j]
        t = table_of[row]
        muted = m_in[j] or m_out[j]
        for k in range(b):
            x = src[s_in[j, k]]
            y = src[s_out[j, k]]
            if muted:  # rare (a digit was keyed): the general loop
                mx = mute[s_in[j, k]]
                my = mute[s_out[j, k]]
                mix = np.empty(FRAME, np.int32)
                for i in range(FRAME):
                    a = 0 if (m_in[j] and mx[i]) else np.int32(x[i])
                    c = 0 if (m_out[j] and my[i]) else np.int32(y[i])
                    mix[i] = min(max(a + c, -32768), 32767)
                energy[j, k] = _stage(mix, t, tables, stage_t[row, first[j] + k], stage_c[row, first[j] + k])
                continue
            s = np.float32(0.0)
            if t > 0:
                code = tables[t - 1]
                dst_c = stage_c[row, first[j] + k]
                # Two loops: the mix and its energy vectorise once the table lookup (a
                # scalar load per sample) is out of the loop (-3 us per channel-second).
                for i in range(FRAME):
                    v = min(max(np.int32(x[i]) + np.int32(y[i]), -32768), 32767)
                    f = np.float32(v)
                    s += f * f
                    idx[i] = v & 0xFFFF
                for i in range(FRAME):
                    dst_c[i] = code[idx[i]]
            else:
                dst_t = stage_t[row, first[j] + k]
                for i in range(FRAME):
                    v = min(max(np.int32(x[i]) + np.int32(y[i]), -32768), 32767)
                    f = np.float32(v)
                    s += f * f
                    dst_t[i] = v
            energy[j, k] = s / np.float32(FRAME)


@_jit
def _stage(mix, t, tables, dst_t, dst_c):
    """One mixed frame into staging (codes when t > 0); returns its mean square."""
    s = np.float32(0.0)
    for i in range(FRAME):
        f = np.float32(mix[i])
        s += f * f
        if t > 0:
            dst_c[i] = tables[t - 1, mix[i] & 0xFFFF]
        else:
            dst_t[i] = mix[i]
    return s / np.float32(FRAME)


@_jit
def silence_frames(sel, energy, fill, n, preroll, threshold, heard, initial_limit, max_limit, emitted, last_loud_end,
                   run, audio, trim_leading, skip, room, done, taken):
    """The silence detector (`SilenceTracker.step_energy`) over each job's B mixed frames
    in order, for jobs `sel` whose frames' mean squares are `energy` (jobs x B) and whose
    staging held fill[j] samples before them; a job stops taking frames at the one that
    reaches a limit (`done`), and before one that starts where its file is full (staged
    past `skip` reaching room[j], the input samples max_bytes leaves: not recorded, so
    neither heard nor counted toward a silence limit, however many frames a tick brought).
    taken[j]: frames job j took. A job's first loud frame sets its `skip` (leading silence
    dropped, `preroll` kept) when it trims leading silence.

    Compiled because it is a few scalar decisions per frame: in numpy it was B rounds of a
    dozen array operations over all jobs, ~1.4 us per channel-second at 10,000 channels.
    """
    m, b = energy.shape
    for j in range(m):
        r = sel[j]
        t = 0
        for k in range(b):
            at = fill[j] + k * n
            h = heard[r]
            if (h or not trim_leading[r]) and at - skip[r] >= room[j]:
                break  # the file is full (leading silence still held back is not in it yet)
            loud = energy[j, k] > threshold[r]
            trims = initial_limit[r] > 0
            first = loud and not h
            waiting = trims and not h and not first  # leading silence, held back
            if waiting:
                e = 0
            elif first and trims:
                e = min(at, preroll) + n
            else:
                e = emitted[r] + n
            emitted[r] = e
            hn = h or loud
            heard[r] = hn
            if loud:
                last_loud_end[r] = e
            rn = 0 if loud else run[r] + n
            run[r] = rn
            au = audio[r] + n
            audio[r] = au
            t += 1
            if first and trim_leading[r]:
                skip[r] = max(0, at - preroll)
            if (not hn and initial_limit[r] > 0 and au >= initial_limit[r]) or \
                    (hn and max_limit[r] > 0 and rn >= max_limit[r]):
                done[r] = True
                break
        taken[j] = t


def warm_up(sample_types: tuple[type, ...] = (np.int16, np.float32)) -> None:
    """Load (or compile) every kernel for the delay-line types in `sample_types`: the
    worker's `Pipeline` uses int16 only; float32 banks (the DSP tests', the bench's) add it.

    The first call of a kernel in a process costs ~0.5 s even from the cache (numba's
    own start-up); a worker pays it here, before it says hello, not in its first tick
    with calls running (a 0.5 s stall of every leg).
    """
    ring = np.zeros(2 * FRAME, np.int16)
    one = np.zeros(1, np.int64)
    fired = np.zeros((1, 1), np.bool_)
    for dtype in sample_types:
        frames_in(ring.astype(dtype), one, one, one, 2 * FRAME - 1, 1, np.zeros((1, FRAME), dtype), one,
                  np.zeros((16, 80), np.float32), np.float32(1), np.float32(1), np.float32(1), np.float32(1), fired)
    delay_slots(one, one, 10, 1, 5, np.zeros(1, np.int64), np.zeros((1, 1), np.int64))
    pwrite_rows(one - 1, np.zeros((1, 1, FRAME), np.uint8), one, FRAME, one, one.copy())  # no fd: no call
    src = np.zeros((2, FRAME), np.int16)
    mute = np.zeros((2, FRAME), np.bool_)
    s_in = np.zeros((1, 1), np.int64)
    flag = np.zeros(1, np.bool_)
    mix_frames(src, mute, s_in, s_in + 1, flag, flag, one, one, np.zeros(1, np.int8), np.zeros((1, 65536), np.uint8),
               np.zeros((1, 1, FRAME), np.int16), np.zeros((1, 1, FRAME), np.uint8), np.zeros((1, 1), np.float32))
    # The legs' slots as the pipeline passes them: columns of a (jobs, 2, b) array. Two
    # jobs and two frames, or numpy flags the columns contiguous and numba types them so.
    so = np.zeros((2, 2, 2), np.int64)
    mk = np.zeros((2, 2), np.bool_)
    two = np.zeros(2, np.int64)
    mix_frames(src, mute, so[:, 0], so[:, 1], mk[:, 0], mk[:, 1], two, two, np.zeros(1, np.int8),
               np.zeros((1, 65536), np.uint8), np.zeros((2, 1, FRAME), np.int16), np.zeros((2, 1, FRAME), np.uint8),
               np.zeros((2, 2), np.float32))
    f64 = np.zeros(2)
    i64 = np.zeros(2, np.int64)
    b2 = np.zeros(2, np.bool_)
    silence_frames(two, np.zeros((2, 2), np.float32), i64, FRAME, FRAME, f64, b2, i64, i64, i64, i64, i64, i64, b2,
                   i64, i64, b2, i64)
