"""The compiled fast path does what `JitterBuffer.push` does with the packets it takes, and leaves the rest.

A leg fed by `fastpath.place` (the Python core only for the rows it hands back) must
release the same samples, with the same counters, as a leg fed by `push` alone."""

from __future__ import annotations

import numpy as np

from wholecall.ingest import fastpath
from wholecall.ingest.g711 import ALAW_TO_INT16, ULAW_TO_INT16
from wholecall.ingest.jitter import JitterBuffer
from wholecall.ingest.legtable import LegTable
from wholecall.ingest.payload import PayloadTypes
from wholecall.ingest.rtp import build_packet

FRAME = 160
SRC = (0x7F000001, 40000)


def batch(packets: list[bytes], port: int = SRC[1]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    buf = np.zeros((len(packets), 2048), np.uint8)
    lengths = np.zeros(len(packets), np.uint32)
    names = np.zeros((len(packets), 128), np.uint8)
    for i, p in enumerate(packets):
        buf[i, :len(p)] = np.frombuffer(p, np.uint8)
        lengths[i] = len(p)
        names[i, :8] = [2, 0, port >> 8, port & 0xFF, 127, 0, 0, 1]
    return buf, lengths, names


def test_fast_path_equals_push_through_loss_reorder_duplicates_and_a_new_ssrc() -> None:
    rng = np.random.default_rng(3)
    payloads = rng.integers(0, 256, (80, FRAME), np.uint8)
    order = list(range(80))
    del order[10]  # lost
    order[20], order[21] = order[21], order[20]  # re-ordered
    order.insert(40, 30)  # a duplicate
    packets = []
    for k in order:
        ssrc = 0xAA if k < 60 else 0xBB  # a new stream at 60
        packets.append((k, build_packet(8, (65500 + k) & 0xFFFF, (2**32 - 30 * FRAME + k * FRAME) & 0xFFFFFFFF,
                                        ssrc, payloads[k].tobytes())))
    pts = PayloadTypes()
    table = LegTable(2)
    fast_leg = table.allocate()
    fast = JitterBuffer(0.0, pts, table=table, index=fast_leg)
    table.active[fast_leg] = table.fast_ok[fast_leg] = 1
    table.src_ip[fast_leg], table.src_port[fast_leg] = SRC
    ref = JitterBuffer(0.0, pts)
    slow_epoch = np.zeros(table.capacity, np.int64)
    slow_rows = np.zeros(4, np.int64)
    taken = 0
    out_fast: list = []
    out_ref: list = []
    for step in range(0, len(packets), 4):  # 4 packets a batch, 80 ms apart
        now = 0.1 + step * 0.02
        group = packets[step:step + 4]
        buf, lengths, names = batch([p for _, p in group])
        row_leg = np.full(len(group), fast_leg, np.int64)
        t = table
        nslow = fastpath.place(buf, lengths, names, len(group), row_leg, now, step + 1, slow_epoch, slow_rows,
                               t.active, t.fast_ok, t.kind, t.src_ip, t.src_port, t.cur_ssrc, t.anchor, t.base_ts,
                               t.max_ts, t.max_seq, t.end, t.released, t.call_t0, t.max_ahead, t.last_arrival,
                               t.last_media, t.packets, t.stage, ALAW_TO_INT16, ULAW_TO_INT16)
        taken += len(group) - nslow
        for i in slow_rows[:nslow].tolist():
            p = group[i][1]
            fast.push(int.from_bytes(p[8:12], "big"), int.from_bytes(p[2:4], "big"), int.from_bytes(p[4:8], "big"),
                      8, p[12:], now)
        for _, p in group:
            ref.push(int.from_bytes(p[8:12], "big"), int.from_bytes(p[2:4], "big"), int.from_bytes(p[4:8], "big"),
                     8, p[12:], now)
        out_fast += fast.pull(now)
        out_ref += ref.pull(now)
    out_fast += fast.flush(2.0)
    out_ref += ref.flush(2.0)

    def samples(chunks: list) -> np.ndarray:
        return np.concatenate([np.zeros(c, np.int16) if isinstance(c, int) else c for _, c in chunks])

    assert taken > len(packets) // 2  # the fast path did most of the work ...
    np.testing.assert_array_equal(samples(out_fast), samples(out_ref))  # ... and changed nothing
    assert fast.counters() == ref.counters()
    assert (ref.counters().lost, ref.counters().duplicates, ref.counters().ssrc_changes) == (1, 1, 1)


def test_foreign_source_and_unknown_payload_type_are_left_to_python() -> None:
    table = LegTable(1)
    leg = table.allocate()
    jb = JitterBuffer(0.0, PayloadTypes(), table=table, index=leg)
    table.active[leg] = table.fast_ok[leg] = 1
    table.src_ip[leg], table.src_port[leg] = SRC
    jb.push(0xAA, 1, 0, 8, b"\xd5" * FRAME, 0.0)  # the stream exists: the next packet would be fast
    packets = [build_packet(8, 2, FRAME, 0xAA, b"\xd5" * FRAME), build_packet(97, 3, 2 * FRAME, 0xAA, b"\xd5" * FRAME)]
    for port, expect in ((SRC[1] + 2, [0, 1]), (SRC[1], [1])):
        buf, lengths, names = batch(packets, port)
        slow = np.zeros(2, np.int64)
        t = table
        n = fastpath.place(buf, lengths, names, 2, np.full(2, leg, np.int64), 0.05, port, np.zeros(1, np.int64), slow,
                           t.active, t.fast_ok, t.kind, t.src_ip, t.src_port, t.cur_ssrc, t.anchor, t.base_ts, t.max_ts,
                           t.max_seq, t.end, t.released, t.call_t0, t.max_ahead, t.last_arrival, t.last_media,
                           t.packets, t.stage, ALAW_TO_INT16, ULAW_TO_INT16)
        assert slow[:n].tolist() == expect


def test_packets_the_fast_path_takes_end_a_late_run_so_a_second_spike_moves_nothing() -> None:
    """Two identical delay spikes, each delivering its held packets in one batch that is all
    late and the rest in the next (as 120 ms packets do): the fast path took the in-place
    packets after the first but left the stream marked late since then, so the second
    spike's first late packet re-anchored the leg at once, 260 ms late for the rest of the
    call (a reviewer's find)."""
    payloads = np.random.default_rng(5).integers(0, 256, (140, FRAME), np.uint8)
    table = LegTable(1)
    leg = table.allocate()
    jb = JitterBuffer(0.0, PayloadTypes(), window=0.2, table=table, index=leg)
    table.active[leg] = table.fast_ok[leg] = 1
    table.src_ip[leg], table.src_port[leg] = SRC
    arrivals: list[tuple[float, list[int]]] = []
    for k in range(140):
        if 30 <= k < 50 or 80 <= k < 100:
            continue
        if k in (50, 100):  # the held packets: first those already released, then the rest
            arrivals += [(k * 0.02, list(range(k - 20, k - 10))), (k * 0.02, list(range(k - 10, k)))]
        arrivals.append((k * 0.02, [k]))
    slow_epoch = np.zeros(table.capacity, np.int64)
    out: list = []
    t = table
    for epoch, (now, ks) in enumerate(arrivals, 1):
        out += jb.pull(now)  # the ingest's tick releases whether packets come or not
        packets = [build_packet(8, k, k * FRAME, 0xAA, payloads[k].tobytes()) for k in ks]
        buf, lengths, names = batch(packets)
        slow = np.zeros(len(ks), np.int64)
        n = fastpath.place(buf, lengths, names, len(ks), np.full(len(ks), leg, np.int64), now, epoch, slow_epoch,
                           slow, t.active, t.fast_ok, t.kind, t.src_ip, t.src_port, t.cur_ssrc, t.anchor, t.base_ts,
                           t.max_ts, t.max_seq, t.end, t.released, t.call_t0, t.max_ahead, t.last_arrival,
                           t.last_media, t.packets, t.stage, ALAW_TO_INT16, ULAW_TO_INT16)
        for i in slow[:n].tolist():
            p = packets[i]
            jb.push(0xAA, int.from_bytes(p[2:4], "big"), int.from_bytes(p[4:8], "big"), 8, p[12:], now)
        out += jb.pull(now)
    out += jb.flush(140 * 0.02)
    got = np.concatenate([np.zeros(c, np.int16) if isinstance(c, int) else c for _, c in out]).reshape(-1, FRAME)
    for k in list(range(40, 80)) + list(range(90, 140)):  # all but the released part of each spike
        np.testing.assert_array_equal(got[k], ALAW_TO_INT16[payloads[k]], err_msg=str(k))
    assert jb.counters().resyncs == 0
