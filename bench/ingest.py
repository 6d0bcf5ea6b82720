"""Receive-side CPU of RTP ingest per packet: recvmmsg + batch header parse + jitter push + pull.

Real UDP on 127.0.0.1, PCMA 20 ms packets, `--legs` legs each sending its share of
`--packets`; virtual time (each tick is 20 ms of call clock passed as `now`), so the
measurement is pure CPU and runs faster than real time. Per tick the sender (untimed)
sends one packet per leg with `sendmmsg`; every `--sweep` ticks the receiver (timed) drains
the sockets, parses the batch, pushes every packet into its leg's JitterBuffer, then pulls
every leg once.

Two layouts of sockets:
  * ``--layout port``: one socket per leg, as the API hands out one RTP port per leg; a
    sweep calls recvmmsg on every socket, so a batch holds only `--sweep` packets;
  * ``--layout shared``: all legs to one socket (demultiplexed by SSRC), batches of 64: the
    best case for batching.

Caveat: on loopback the kernel's receive path (softirq, queueing) runs in the sender's
system call, so it is not in these numbers; what is measured is the receiver's own
syscalls and Python/numpy work. CPU is `time.process_time()` of the timed phases.

    python bench/ingest.py [--legs 2000] [--packets 100000] [--layout port|shared] [--sweep 1]
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path

import numpy as np

try:
    from wholecall.ingest.jitter import JitterBuffer
    from wholecall.ingest.recvmmsg import BatchReceiver, BatchSender, ip4, set_receive_buffer, socket_drops
    from wholecall.ingest.rtp import build_packet, parse_batch
except ImportError:  # before the package mapping lands: import the folder as `ingest`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from ingest.jitter import JitterBuffer  # type: ignore[no-redef]
    from ingest.recvmmsg import BatchReceiver, BatchSender, ip4, set_receive_buffer, socket_drops  # type: ignore[no-redef]
    from ingest.rtp import build_packet, parse_batch  # type: ignore[no-redef]

FRAME = 160
PT_PCMA = 8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--legs", type=int, default=2000)
    ap.add_argument("--packets", type=int, default=100_000)
    ap.add_argument("--layout", choices=["port", "shared"], default="port")
    ap.add_argument("--sweep", type=int, default=1, help="ticks (20 ms) between receive sweeps")
    args = ap.parse_args()
    legs, ticks = args.legs, -(-args.packets // args.legs)

    receivers: list[socket.socket] = []
    for _ in range(legs if args.layout == "port" else 1):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        set_receive_buffer(s, (1 << 16) * args.sweep if args.layout == "port" else 64 << 20)
        receivers.append(s)
    batch_rows = 64
    rx = [BatchReceiver(s, batch_rows, 2048) for s in receivers]
    tx_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx_sock.bind(("127.0.0.1", 0))
    tx = BatchSender(tx_sock, 64, 256)
    ports = np.array([s.getsockname()[1] for s in receivers], dtype=np.uint16)
    dest_port = ports if args.layout == "port" else np.full(legs, ports[0], dtype=np.uint16)
    host = ip4("127.0.0.1")
    payload = bytes(range(256))[:FRAME]
    jbs = [JitterBuffer(call_t0=0.0) for _ in range(legs)]
    by_ssrc = {1000 + i: jbs[i] for i in range(legs)}

    t_recv = t_parse = t_push = t_pull = 0.0
    received = batches = 0
    clock = time.process_time
    for tick in range(ticks + args.sweep + 10):  # a few extra ticks so the window drains
        now = tick * 0.02
        if tick < ticks:  # send one packet per leg (not timed)
            for start in range(0, legs, 64):
                n = min(64, legs - start)
                for j in range(n):
                    leg = start + j
                    packet = build_packet(PT_PCMA, tick, tick * FRAME, 1000 + leg, payload)
                    tx.buffer[j, : len(packet)] = np.frombuffer(packet, np.uint8)
                sent = tx.send([FRAME + 12] * n, host, dest_port[start:start + n])
                assert sent == n, f"sendmmsg took {sent} of {n}"
        if tick % args.sweep:
            continue
        for r in rx:
            while True:
                c0 = clock()
                n = r.recv()
                c1 = clock()
                t_recv += c1 - c0
                if not n:
                    break
                b = parse_batch(r.buffer, r.lengths, n)
                c2 = clock()
                t_parse += c2 - c1
                rows = np.flatnonzero(b.valid).tolist()
                ssrc, seq, ts, pt = b.ssrc.tolist(), b.sequence.tolist(), b.timestamp.tolist(), b.payload_type.tolist()
                off, ln, mk = b.payload_offset.tolist(), b.payload_length.tolist(), b.marker.tolist()
                buf = r.buffer
                for i in rows:
                    jb = by_ssrc.get(ssrc[i])
                    if jb is not None:
                        jb.push(ssrc[i], seq[i], ts[i], pt[i], buf[i, off[i]:off[i] + ln[i]], now, mk[i])
                t_push += clock() - c2
                received += n
                batches += 1
                if n < r.capacity:  # a short batch means the queue was drained: save the empty call
                    break
        c3 = clock()
        for jb in jbs:
            jb.pull(now)
        t_pull += clock() - c3

    drops = sum(socket_drops(s).drops for s in receivers)
    late = sum(jb.late for jb in jbs)
    lost = sum(jb.counters().lost for jb in jbs)
    total = t_recv + t_parse + t_push + t_pull
    us = 1e6 / max(received, 1)
    print(f"layout={args.layout} legs={legs} sweep={args.sweep} ticks={ticks} packets={received} "
          f"batches={batches} ({received / max(batches, 1):.1f} packets/batch) kernel drops={drops} lost={lost} late={late}")
    print(f"us/packet: recvmmsg {t_recv * us:.2f}  parse {t_parse * us:.2f}  push {t_push * us:.2f}  "
          f"pull {t_pull * us:.2f}  total {total * us:.2f}  -> {received / total:,.0f} packets per CPU-second")
    for s in receivers + [tx_sock]:
        s.close()


if __name__ == "__main__":
    main()
