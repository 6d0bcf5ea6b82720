"""The ingest hot loop compiled: drain many UDP sockets, place a batch's common packets, release every leg.

Why (issue 22, BENCHMARKS.md "RTP through wholecall serve"): in Python one ingest process
spent 11.2 us per packet, of which the playout core's `push` was ~4 us, the per-socket
receive call and the per-leg release and ring write most of the rest. Here those three
are numba loops over arrays:

* `drain` calls `recvmmsg` (a ctypes function pointer, called from compiled code with no
  Python in between) on every ready socket of a sweep, filling one shared batch buffer;
* `place` takes each row whose packet is the common case, the next sequence number of
  its leg's current stream, plain 12-byte header, G.711, from the leg's known source,
  landing inside the staging ring, and does exactly what `JitterBuffer.push` would do with
  it on the `LegTable` columns; every other row is handed back to the Python path, and so
  is every later row of that leg in the same batch, so a leg's packets keep their order;
* `release` moves every leg's due audio (``[released, clock - window)``) from its stage
  into its shm ring with `LegWriter.write(block=False)`'s rules, returning the new write
  positions for the caller to publish after the data (the SPSC ring's ordering rule).
"""

from __future__ import annotations

import ctypes
import ctypes.util

import numba as nb
import numpy as np

from .legtable import STAGE, STAGE_MASK

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
# The same libc function through a prototype of plain integers (pointers as uint64, the
# same ABI on x86-64), which numba can call from nopython code.
_RECVMMSG = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_uint64, ctypes.c_uint, ctypes.c_int,
                             ctypes.c_uint64)(ctypes.cast(_libc.recvmmsg, ctypes.c_void_p).value)
MMSGHDR_BYTES = 64
HEADER = 12
RATE = 8000


@nb.njit  # not cached: the function pointer is a dynamic global
def drain(fds: np.ndarray, legs: np.ndarray, start: int, hdr_ptr: int, capacity: int, row_leg: np.ndarray,
          flags: int) -> tuple[int, int]:
    """recvmmsg on ``fds[start:]`` in turn into rows 0.. of the batch; returns (rows filled, next fd index).

    A socket that fills the buffer is resumed first by the next call (the index stays on it).
    Errors (EAGAIN, an ICMP error queued on the socket) read as no datagrams.
    """
    filled = 0
    k = start
    while k < len(fds) and filled < capacity:
        room = capacity - filled
        got = _RECVMMSG(fds[k], hdr_ptr + filled * MMSGHDR_BYTES, room, flags, 0)
        if got > 0:
            row_leg[filled:filled + got] = legs[k]
            filled += got
            if got == room:
                break
        k += 1
    return filled, k


@nb.njit(inline="always")
def _unwrap(value: int, reference: int, bits: int) -> int:
    size = np.int64(1) << bits
    delta = (value - reference) & (size - 1)
    if delta >= size >> 1:
        delta -= size
    return reference + delta


@nb.njit(cache=True)
def place(buf: np.ndarray, lengths: np.ndarray, names: np.ndarray, n: int, row_leg: np.ndarray, now: float,
          epoch: int, slow_epoch: np.ndarray, slow_rows: np.ndarray, active: np.ndarray, fast_ok: np.ndarray,
          kind: np.ndarray, src_ip: np.ndarray, src_port: np.ndarray, cur_ssrc: np.ndarray, anchor: np.ndarray,
          base_ts: np.ndarray, max_ts: np.ndarray, max_seq: np.ndarray, end: np.ndarray, released: np.ndarray,
          call_t0: np.ndarray, max_ahead: np.ndarray, last_arrival: np.ndarray, last_media: np.ndarray,
          packets: np.ndarray, stage: np.ndarray, alaw: np.ndarray, ulaw: np.ndarray) -> int:
    """Place rows 0..n-1 that are the fast case; write the others' row numbers to `slow_rows`, return how many."""
    stride = buf.shape[1]
    nslow = 0
    for i in range(n):
        leg = row_leg[i]
        ok = leg >= 0 and active[leg] != 0 and fast_ok[leg] != 0 and slow_epoch[leg] != epoch
        size = np.int64(lengths[i])
        k = 0
        if ok:
            # V=2, no padding, no extension, no CSRC: a 12-byte header, the rest is payload.
            ok = HEADER < size <= stride and buf[i, 0] == 0x80
        if ok:
            k = kind[leg, buf[i, 1] & 0x7F]
            ok = k != 0 and names[i, 0] == 2 and names[i, 1] == 0  # AF_INET, host order on x86
        if ok:
            ip = (np.int64(names[i, 4]) << 24) | (np.int64(names[i, 5]) << 16) | (np.int64(names[i, 6]) << 8) \
                | np.int64(names[i, 7])
            port = (np.int64(names[i, 2]) << 8) | np.int64(names[i, 3])
            ok = ip == src_ip[leg] and port == src_port[leg]
        ext_seq = ext_ts = pos = 0
        if ok:
            ssrc = (np.int64(buf[i, 8]) << 24) | (np.int64(buf[i, 9]) << 16) | (np.int64(buf[i, 10]) << 8) \
                | np.int64(buf[i, 11])
            ok = ssrc == cur_ssrc[leg]
        if ok:
            seq = (np.int64(buf[i, 2]) << 8) | np.int64(buf[i, 3])
            ext_seq = _unwrap(seq, max_seq[leg], 16)
            ok = ext_seq == max_seq[leg] + 1
        if ok:
            ts = (np.int64(buf[i, 4]) << 24) | (np.int64(buf[i, 5]) << 16) | (np.int64(buf[i, 6]) << 8) \
                | np.int64(buf[i, 7])
            ext_ts = _unwrap(ts, max_ts[leg], 32)
            ok = ext_ts > max_ts[leg]
        if ok:
            clock = max(np.int64(0), np.int64(np.floor((now - call_t0[leg]) * RATE)))
            pos = anchor[leg] + ext_ts - base_ts[leg]
            ok = released[leg] <= pos <= clock + max_ahead[leg] and pos + size - HEADER <= released[leg] + STAGE
        if not ok:
            if leg >= 0:
                slow_epoch[leg] = epoch
            slow_rows[nslow] = i
            nslow += 1
            continue
        packets[leg] += 1
        last_media[leg] = now
        last_arrival[leg] = now
        max_seq[leg] = ext_seq
        max_ts[leg] = ext_ts
        samples = size - HEADER
        if pos + samples > end[leg]:
            end[leg] = pos + samples
        table = alaw if k == 1 else ulaw
        for j in range(samples):
            stage[leg, (pos + j) & STAGE_MASK] = table[buf[i, HEADER + j]]
    return nslow


@nb.njit(cache=True)
def release(now: float, size: int, active: np.ndarray, parked: np.ndarray, slot: np.ndarray, call_t0: np.ndarray,
            window: np.ndarray, released: np.ndarray, stage: np.ndarray, data: np.ndarray, write_pos: np.ndarray,
            read_pos: np.ndarray, job: np.ndarray, overruns: np.ndarray, out_slot: np.ndarray,
            out_w: np.ndarray) -> int:
    """Release every active, unparked leg up to ``clock(now) - window`` into its ring; return rings written.

    Per leg the same as ``Leg.put(jitter.pull(now))``: audio before the ring's write
    position is dropped, a ring behind the release point is filled with silence first, and
    the ring write follows `LegWriter.write(block=False)` (a recorded ring the worker moved
    past jumps to the worker, zeroing the gap; a full one counts overruns). The new write
    positions are NOT stored: ``out_slot[:k]``, ``out_w[:k]`` are for the caller to publish
    after this returns, so every sample is stored before the position that covers it.
    """
    cap = data.shape[1]
    mask = cap - 1
    nout = 0
    for leg in range(size):
        if active[leg] == 0 or parked[leg] != 0 or slot[leg] < 0:
            continue
        clock = max(np.int64(0), np.int64(np.floor((now - call_t0[leg]) * RATE)))
        horizon = clock - window[leg]
        start = released[leg]
        if horizon <= start:
            continue
        s = slot[leg]
        at = write_pos[s]
        gap = start - at if start > at else 0
        first = min(max(start, at), horizon)  # first stage position that reaches the ring
        n = gap + horizon - first
        reach = start + STAGE
        w = at
        done = 0
        while done < n:
            if job[s] != 0:
                r = read_pos[s]
                if w < r:
                    for p in range(w, min(r, w + cap)):
                        data[s, p & mask] = 0
                    w = r
                room = cap - (w - r)
                if room <= 0:
                    overruns[s] += n - done
                    break
                chunk = min(room, n - done)
            else:
                chunk = min(cap, n - done)
            for q in range(done, done + chunk):
                v = np.int16(0)
                if q >= gap:
                    p = first + q - gap
                    if p < reach:
                        v = stage[leg, p & STAGE_MASK]
                data[s, (w + q - done) & mask] = v
            w += chunk
            done += chunk
        out_slot[nout] = s
        out_w[nout] = w
        nout += 1
        for p in range(start, min(horizon, reach)):
            stage[leg, p & STAGE_MASK] = 0
        released[leg] = horizon
    return nout
