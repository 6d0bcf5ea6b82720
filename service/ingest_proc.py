"""The media ingest process: RTP/SRTP over UDP in, the legs' shm rings out.

One process, started by `wholecall serve` as ``python -P -m wholecall.service.ingest_proc``.
It attaches the controller's arena by path and is the only writer of the rings of the legs
it serves (the SPSC rule): the service's own `CallChannel` writers of those slots are never
used. It never waits on the controller or a worker: ring writes are non-blocking (a full
ring counts overruns), control messages are sent with NOBLOCK and dropped if the service
does not read them.

Why one loop over all sockets: a leg's socket holds about one packet per 20 ms, so a
receive call per socket costs its Python overhead per packet (bench/RESULTS-ingest.md).
Here every ready socket of an epoll round is drained into one shared buffer by a compiled
loop (`fastpath.drain`), the common packets of the batch are placed by another
(`fastpath.place`, on the `LegTable` columns the legs' jitter cores share) and only the
rest (new streams, loss, re-ordering, events, SRTP, garbage) goes through the Python path
packet by packet. Every `tick_s` every leg's due audio is released into its ring by one
compiled loop (`fastpath.release`); both legs of a call, released by the same `now`,
stay at the same ring position. The service may run several of these processes, each
with its own port sub-range and legs (one producer per ring still).

Control channel (ZeroMQ PAIR, msgpack maps; every request carries ``req`` and gets one
reply with the same ``req``):

- ``{"op": "add", "call", "legs": {"inbound": {"slot", "srtp"}, "outbound": {...}},
  "payload_types", "host", "ports": [low, high]}`` -> ``{"ok": true, "ports": {leg: port}}``
- ``{"op": "remove", "call", "flush": bool}`` -> ``{"ok": true, "media": {...}}`` (the
  legs are released up to now, window included, when `flush`; the sockets are closed and
  nothing is written to the slots afterwards)
- ``{"op": "stats", "call"}`` -> ``{"ok": true, "media": {...}}``
- ``{"op": "totals"}`` -> ``{"ok": true, "legs": {leg name: {counter: n}}, "inodes": {leg
  name: [socket inode]}, "ingest": {...}}`` (every leg ever served, for metrics: `ingest_totals`)
- ``{"op": "stop"}`` -> the process exits.

Events (no ``req``): ``{"op": "hello", "pid"}``, ``{"op": "digit", "call", "leg", "digit",
"position", "volume"}``, ``{"op": "media_timeout", "call", "idle_s"}``.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import socket
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import msgpack
import numpy as np
import zmq

from wholecall.ingest import fastpath
from wholecall.ingest.g711 import ALAW_TO_INT16, ULAW_TO_INT16
from wholecall.ingest.jitter import DEFAULT_MAX_AHEAD, JitterBuffer
from wholecall.ingest.legtable import LegTable
from wholecall.ingest.payload import PayloadTypes
from wholecall.ingest.recvmmsg import (
    MSG_DONTWAIT,
    MSG_TRUNC,
    BatchReceiver,
    set_receive_buffer,
    socket_drops,
    stamp_arrivals,
    udp_counters,
)
from wholecall.ingest.rtp import HEADER_SIZE, RTP_VERSION, parse_batch
from wholecall.ingest.srtp import SrtpError, SrtpReceiver, SrtpReplay
from wholecall.protocol import logline
from wholecall.shm import Arena, LegWriter

from .ingest_totals import LegTotals

log = logging.getLogger("wholecall.ingest")

LEGS = ("inbound", "outbound")
BATCH_ROWS = 1024
"""Datagrams one drain can hold (all ready sockets together)."""
ROW_BYTES = 4096
"""Largest datagram kept whole; longer ones are counted as malformed. RFC 3551 4.2: a receiver
SHOULD accept up to 200 ms of audio per packet: 3,200 bytes of L16 at 8 kHz, plus header, CSRCs,
extensions and an SRTP tag (2,048 dropped L16 packets of 130 ms and more)."""
FRAME_BYTES = 160
"""A 20 ms G.711 payload: the size decoded batch-wise."""
RCVBUF_BYTES = 1 << 20
"""SO_RCVBUF asked per leg socket: ~6 s of 20 ms G.711 at the kernel's per-packet overhead."""
_ZEROS = np.zeros(8 * 8000, np.int16)
_ZEROS.flags.writeable = False


@dataclass(eq=False)
class Leg:
    """One leg's endpoint: its socket, its playout core, its ring and what was dropped."""

    call: Call
    name: str
    index: int
    sock: socket.socket
    writer: LegWriter
    jitter: JitterBuffer
    srtp: SrtpReceiver | None
    rcvbuf: int
    table: LegTable
    source: tuple[int, int] | None = None
    foreign: int = 0
    bad_version: int = 0
    too_short: int = 0
    malformed: int = 0
    unknown_pt: int = 0
    srtp_replay: int = 0
    srtp_failed: int = 0

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    @property
    def packets(self) -> int:
        """Datagrams received on this leg's socket (both paths count in the table)."""
        return int(self.table.packets[self.index])

    @property
    def last_media(self) -> float:
        return float(self.table.last_media[self.index])

    def set_source(self, src: tuple[int, int]) -> None:
        """The first source seen: later packets from any other are foreign; the fast path checks it too."""
        self.source = src
        self.table.src_ip[self.index] = src[0]
        self.table.src_port[self.index] = src[1]

    def put(self, chunks: list[tuple[int, np.ndarray | int]]) -> None:
        """Write released chunks at their positions (audio, gaps as silence) in one non-blocking write.

        The chunks of one release are contiguous; the ring's clock normally equals their
        start. If the worker moved the leg on (it skips a leg that fell behind), what lies
        before its clock is dropped; if an overrun left the ring behind, silence fills up.
        One write per leg per tick: the writer's cost is per call, not per sample.
        """
        if not chunks:
            return
        w = self.writer
        at = w.position
        parts: list[np.ndarray] = []
        start = chunks[0][0]
        if start > at:
            parts.append(_zeros(start - at))
        for pos, data in chunks:
            n = data if isinstance(data, int) else len(data)
            if pos + n <= at:
                continue
            cut = max(0, at - pos)
            parts.append(_zeros(n - cut) if isinstance(data, int) else data[cut:])
        if not parts:
            return
        pcm = parts[0] if len(parts) == 1 else np.concatenate(parts)
        if len(pcm):
            w.write(pcm, block=False)

    def counters(self) -> dict:
        c = self.jitter.counters()
        try:
            kernel = socket_drops(self.sock).drops
        except (LookupError, OSError):
            kernel = -1
        return {
            "port": self.port,
            "source": None if self.source is None else f"{socket.inet_ntoa(self.source[0].to_bytes(4, 'big'))}:{self.source[1]}",
            "packets": self.packets,
            "received": c.received, "lost": c.lost, "reordered": c.reordered, "duplicates": c.duplicates,
            "late": c.late, "ssrc_changes": c.ssrc_changes, "resyncs": c.resyncs, "undecodable": c.bad,
            "foreign_source": self.foreign, "bad_version": self.bad_version, "too_short": self.too_short,
            "malformed": self.malformed, "unknown_payload_type": self.unknown_pt,
            "srtp_replayed": self.srtp_replay, "srtp_rejected": self.srtp_failed,
            "position": self.writer.position, "ring_overruns": self.writer.overruns,
            "kernel_drops": kernel, "rcvbuf_bytes": self.rcvbuf,
        }


def _zeros(n: int) -> np.ndarray:
    return _ZEROS[:n] if n <= len(_ZEROS) else np.zeros(n, np.int16)


@dataclass(eq=False)
class Call:
    id: str
    created: float
    legs: list[Leg] = field(default_factory=list)
    timed_out: bool = False
    gen: int = 0
    """The service's number for the add that made it: a remove naming another is not for it."""

    def last_media(self) -> float:
        return max([self.created] + [leg.last_media for leg in self.legs])

    def media(self) -> dict:
        return {leg.name: leg.counters() for leg in self.legs}


class Ingest:
    """The loop: epoll over the leg sockets, a tick for the playout cores, a control socket."""

    def __init__(self, arena_path: str, endpoint: str, window: float, media_timeout: float, tick_s: float) -> None:
        self.arena = Arena.attach(arena_path)
        self.window = window
        self.media_timeout = media_timeout
        self.tick_s = tick_s
        self.ctx = zmq.Context()
        self.ctl = self.ctx.socket(zmq.PAIR)
        self.ctl.setsockopt(zmq.LINGER, 0)
        self.ctl.setsockopt(zmq.SNDHWM, 10000)
        self.ctl.connect(endpoint)
        self.epoll = select.epoll()  # the leg sockets
        self._ctl_fd = self.ctl.getsockopt(zmq.FD)
        self.calls: dict[str, Call] = {}
        self.by_fd: dict[int, Leg] = {}
        self.table = LegTable(64)
        self.legs: list[Leg | None] = []  # by Leg.index (the table row), for the batch's row -> leg map
        self._next_port: dict[tuple[int, int], int] = {}
        dummy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # Held open with stamps on for the process's life: the kernel turns arrival stamping
        # on for the machine only some time after the first socket asks (a deferred work
        # item), and a call's first packets must not arrive before that.
        stamp_arrivals(dummy)
        self.rx = BatchReceiver(dummy, BATCH_ROWS, ROW_BYTES)
        self._dummy = dummy
        self.row_leg = np.zeros(BATCH_ROWS, np.int64)
        self.slow_rows = np.zeros(BATCH_ROWS, np.int64)
        self.slow_epoch = np.zeros(64, np.int64)
        self.epoch = 0
        self.fd_leg = np.full(1024, -1, np.int64)  # fd -> table row
        self.out_slot = np.zeros(64, np.int64)
        self.out_w = np.zeros(64, np.int64)
        self.touched: set[Call] = set()  # calls whose legs went through the Python path since the last tick
        self.next_timeout_check = 0.0
        self.running = True
        self.stats = {"batches": 0, "packets": 0, "rounds": 0}
        self.totals = LegTotals()

    # -- control --------------------------------------------------------------------------

    def send(self, msg: dict) -> None:
        try:
            self.ctl.send(msgpack.packb(msg), zmq.NOBLOCK)
        except zmq.Again:
            log.warning("service not reading; dropped %s", msg.get("op"))

    def control(self) -> None:
        while True:
            try:
                raw = self.ctl.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            msg = msgpack.unpackb(raw)
            op = msg.get("op")
            req = msg.get("req")
            try:
                if op == "add":
                    reply = {"ok": True, "ports": self.add(msg)}
                elif op == "remove":
                    reply = {"ok": True, "media": self.remove(msg["call"], bool(msg.get("flush", True)),
                                                              msg.get("gen"))}
                elif op == "stats":
                    call = self.calls.get(msg["call"])
                    reply = {"ok": True, "media": call.media() if call else {}, "kernel": udp_counters(),
                             "ingest": dict(self.stats, cpu_s=time.process_time())}
                elif op == "totals":  # metrics: every leg ever served, by leg name
                    legs, inodes = self.totals.current(self.calls.values())
                    reply = {"ok": True, "legs": legs, "inodes": inodes,
                             "ingest": dict(self.stats, cpu_s=time.process_time(), calls=len(self.calls))}
                elif op == "stop":
                    self.running = False
                    reply = {"ok": True}
                else:
                    reply = {"ok": False, "error": "Error", "detail": f"unknown op {op!r}"}
            except (OSError, ValueError) as e:  # expected refusals (no free port, a known id): no traceback
                log.warning("control %s refused: %s", op, e)
                reply = {"ok": False, "error": type(e).__name__, "detail": str(e)}
            except Exception as e:  # one bad command must not take the media of every call down
                log.exception("control %s failed", op)
                reply = {"ok": False, "error": type(e).__name__, "detail": str(e)}
            if req is not None:
                reply["req"] = req
                self.send(reply)

    def add(self, msg: dict) -> dict[str, int]:
        cid = msg["call"]
        if cid in self.calls:
            raise ValueError(f"call {cid!r} already has media")
        now = time.monotonic()
        call = Call(cid, now, gen=int(msg.get("gen", 0)))
        pts = PayloadTypes(msg.get("payload_types") or {})
        host = msg["host"]
        low, high = msg["ports"]
        ports: dict[str, int] = {}
        try:
            for name in LEGS:
                spec = msg["legs"][name]
                srtp = SrtpReceiver(spec["srtp"]) if spec.get("srtp") else None
                sock = self._bind(host, low, high)
                stamp_arrivals(sock)
                granted = set_receive_buffer(sock, RCVBUF_BYTES)
                index = self.table.allocate()
                t = self.table
                leg = Leg(call, name, index, sock, LegWriter(self.arena, int(spec["slot"])),
                          JitterBuffer(now, pts, window=self.window, max_ahead=max(self.window, DEFAULT_MAX_AHEAD),
                                       table=t, index=index), srtp, granted, t)
                t.slot[index] = int(spec["slot"])
                t.fast_ok[index] = srtp is None
                t.active[index] = 1
                while len(self.legs) <= index:
                    self.legs.append(None)
                self.legs[index] = leg
                call.legs.append(leg)
                fd = sock.fileno()
                if fd >= len(self.fd_leg):
                    grown = np.full(2 * fd, -1, np.int64)
                    grown[:len(self.fd_leg)] = self.fd_leg
                    self.fd_leg = grown
                self.fd_leg[fd] = index
                if t.capacity > len(self.slow_epoch):
                    self.slow_epoch = np.zeros(t.capacity, np.int64)
                    self.out_slot = np.zeros(t.capacity, np.int64)
                    self.out_w = np.zeros(t.capacity, np.int64)
                self.by_fd[fd] = leg
                self.epoll.register(sock.fileno(), select.EPOLLIN)
                ports[name] = leg.port
        except BaseException:
            self._drop_legs(call)
            raise
        self.calls[cid] = call
        log.info("call %s: inbound :%d outbound :%d", cid, ports["inbound"], ports["outbound"], extra={"call": cid})
        return ports

    def _bind(self, host: str, low: int, high: int) -> socket.socket:
        """A UDP socket on the next free even port of [low, high] (odd ones are left for RTCP)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        first = low + (low & 1)
        span = (high - first) // 2 + 1
        if span <= 0:
            raise ValueError(f"RTP port range {low}-{high} has no even port")
        key = (low, high)
        start = self._next_port.get(key, 0)
        for k in range(span):
            port = first + 2 * ((start + k) % span)
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.bind((host, port))
            except OSError:
                sock.close()
                continue
            sock.setblocking(False)
            self._next_port[key] = (start + k + 1) % span
            return sock
        raise OSError(f"no free UDP port in {low}-{high} on {host}")

    def _drop_legs(self, call: Call) -> None:
        for leg in call.legs:
            fd = leg.sock.fileno()
            try:
                self.epoll.unregister(fd)
            except (OSError, ValueError):
                pass
            self.by_fd.pop(fd, None)
            if fd < len(self.fd_leg):
                self.fd_leg[fd] = -1
            leg.sock.close()
            self.legs[leg.index] = None
            self.table.free(leg.index)
        self.touched.discard(call)

    def remove(self, cid: str, flush: bool, gen: int | None = None) -> dict:
        """End call `cid`'s media; `gen`: only if its add was that one (a late retry of a
        remove for an earlier call of the same id leaves a new one alone)."""
        call = self.calls.get(cid)
        if call is None or (gen is not None and call.gen != gen):
            return {}
        del self.calls[cid]
        self.receive([leg.sock.fileno() for leg in call.legs])  # what already arrived still counts
        now = time.monotonic()
        for leg in call.legs:
            leg.put(leg.jitter.flush(now) if flush else leg.jitter.pull(now))
        self._digits(call)
        media = call.media()
        self.totals.retire(media)
        self._drop_legs(call)
        return media

    # -- media ----------------------------------------------------------------------------

    def receive(self, fds: Iterable[int] | None = None) -> int:
        """Drain the ready sockets (all when `fds` is None) into the shared buffer, batch by batch.

        The drain is compiled (`fastpath.drain`): one recvmmsg per ready socket with no
        Python between them; a socket that fills the buffer is resumed after the batch.
        """
        total = 0
        fd_list = list(self.by_fd if fds is None else fds)
        if not fd_list:
            return 0
        fda = np.array(fd_list, np.int64)
        fda = fda[fda < len(self.fd_leg)]
        legs = self.fd_leg[fda]
        fda = fda[legs >= 0]
        legs = legs[legs >= 0]
        rx = self.rx
        k = 0
        while k < len(fda):
            rx.begin()
            filled, k = fastpath.drain(fda, legs, k, rx._hdr_ptr, BATCH_ROWS, self.row_leg, MSG_DONTWAIT | MSG_TRUNC)
            rx.count = filled
            if not filled:
                break
            self._process(filled)
            total += filled
        return total

    def _process(self, n: int) -> None:
        """One batch: the compiled fast path first, then the Python path for the rows it left."""
        rx = self.rx
        t = self.table
        self.epoch += 1
        now = time.monotonic()
        self.stats["batches"] += 1
        self.stats["packets"] += n
        nslow = fastpath.place(
            rx.buffer, rx.lengths, rx.names, n, self.row_leg, now, self.epoch, self.slow_epoch, self.slow_rows,
            t.active, t.fast_ok, t.kind, t.src_ip, t.src_port, t.cur_ssrc, t.anchor, t.base_ts, t.max_ts, t.max_seq,
            t.end, t.released, t.call_t0, t.max_ahead, t.last_arrival, t.last_media, t.packets, t.stage,
            ALAW_TO_INT16, ULAW_TO_INT16)
        if nslow:
            picked = self.slow_rows[:nslow].copy()
            self._process_slow(picked, now, rx.arrivals(n, now)[picked].tolist())

    def _process_slow(self, picked: np.ndarray, now: float, arrivals: list[float]) -> None:
        """The rows the fast path left, packet by packet (in arrival order per leg), through `JitterBuffer.push`,
        each at its arrival (the kernel's stamp: where a new stream begins must not depend on
        when this tick drained it, or the legs of a call are up to a tick apart)."""
        rx = self.rx
        n = len(picked)
        buf = rx.buffer[picked]
        lengths = rx.lengths[picked].copy()
        legs = self.legs
        rows_leg = self.row_leg[picked].tolist()
        # SRTP rows are unprotected in place first (libsrtp, one packet at a time), so that
        # the parse below sees plain RTP for every row.
        srtp_bad: set[int] = set()
        for i in range(n):
            leg = legs[rows_leg[i]] if rows_leg[i] >= 0 else None
            if leg is not None and leg.srtp is not None:
                size = int(lengths[i])
                if HEADER_SIZE <= size <= ROW_BYTES and buf[i, 0] >> 6 == RTP_VERSION:
                    try:
                        plain = leg.srtp.unprotect(buf[i, :size].tobytes())
                    except SrtpReplay:
                        leg.srtp_replay += 1
                        srtp_bad.add(i)
                        continue
                    except SrtpError:
                        leg.srtp_failed += 1
                        srtp_bad.add(i)
                        continue
                    buf[i, :len(plain)] = np.frombuffer(plain, np.uint8)
                    lengths[i] = len(plain)
        batch = parse_batch(buf, lengths, n)
        ips = rx.source_ip4[picked].tolist()
        ports = rx.source_port[picked].tolist()
        valid = batch.valid.tolist()
        pts = batch.payload_type.tolist()
        seqs = batch.sequence.tolist()
        tss = batch.timestamp.tolist()
        ssrcs = batch.ssrc.tolist()
        marks = batch.marker.tolist()
        offs = batch.payload_offset.tolist()
        lens = batch.payload_length.tolist()
        # The common case, 20 ms of G.711 with a plain header, decoded for the whole batch
        # in one table lookup per law instead of one per packet.
        decoded: list[np.ndarray | None] = [None] * n
        plain = batch.valid & (batch.payload_offset == HEADER_SIZE) & (batch.payload_length == FRAME_BYTES)
        for pt, table in ((8, ALAW_TO_INT16), (0, ULAW_TO_INT16)):
            rows = np.flatnonzero(plain & (batch.payload_type == pt))
            if len(rows):
                samples = table[buf[rows, HEADER_SIZE:HEADER_SIZE + FRAME_BYTES]]
                for r, row in zip(rows.tolist(), samples):
                    decoded[r] = row
        t = self.table
        touched = self.touched
        for i in range(n):
            li = rows_leg[i]
            leg = legs[li] if li >= 0 else None
            if leg is None or i in srtp_bad:
                continue
            t.packets[li] += 1
            if not valid[i]:
                size = int(lengths[i])
                if size < HEADER_SIZE:
                    leg.too_short += 1
                elif buf[i, 0] >> 6 != RTP_VERSION:
                    leg.bad_version += 1
                else:
                    leg.malformed += 1
                continue
            fmt = leg.jitter.payload_types.get(pts[i])
            if fmt is None:
                leg.unknown_pt += 1
                continue
            src = (ips[i], ports[i])
            if leg.source is None:
                leg.set_source(src)
            elif src != leg.source:
                leg.foreign += 1
                continue
            t.last_media[li] = now
            off = offs[i]
            leg.jitter.push(ssrcs[i], seqs[i], tss[i], pts[i], buf[i, off:off + lens[i]], arrivals[i], marks[i],
                            decoded[i])
            touched.add(leg.call)

    def _digits(self, call: Call) -> None:
        for leg in call.legs:
            for d in leg.jitter.pop_digits():
                self.send({"op": "digit", "call": call.id, "leg": leg.name, "digit": d.digit,
                           "position": d.position, "volume": d.volume})

    def tick(self, now: float) -> None:
        """Release every leg's due audio into its ring (compiled; legs with parked audio in Python), report digits."""
        t = self.table
        a = self.arena
        nout = fastpath.release(now, t.size, t.active, t.parked, t.slot, t.call_t0, t.window, t.released, t.stage,
                                a.data, a.write_pos, a.read_pos, a.job, a.overruns, self.out_slot, self.out_w)
        if nout:  # publish after every sample is stored (aligned 8-byte stores, as LegBatchWriter does)
            a.write_pos[self.out_slot[:nout]] = self.out_w[:nout]
        for i in np.flatnonzero(t.parked[:t.size] & t.active[:t.size]).tolist():
            leg = self.legs[i]
            if leg is not None:
                leg.put(leg.jitter.pull(now))
        if self.touched:
            for call in self.touched:
                self._digits(call)
            self.touched.clear()
        if self.media_timeout > 0 and now >= self.next_timeout_check:
            self.next_timeout_check = now + min(0.2, self.media_timeout / 4)
            for call in self.calls.values():
                if not call.timed_out and now - call.last_media() >= self.media_timeout:
                    call.timed_out = True
                    self.send({"op": "media_timeout", "call": call.id, "idle_s": now - call.last_media()})

    def warm_up(self) -> None:
        """Compile the fast path's loops now (numba), not on the first packets: a call must not wait for it."""
        self.receive([])
        fastpath.drain(np.zeros(0, np.int64), np.zeros(0, np.int64), 0, self.rx._hdr_ptr, BATCH_ROWS, self.row_leg,
                       MSG_DONTWAIT | MSG_TRUNC)
        self._process(0)
        self.tick(time.monotonic())

    def run(self) -> None:
        """Between ticks wait for control messages only; at each tick drain every ready socket.

        Sweeping once per tick instead of on every readiness gives each receive call
        about tick/20 ms packets instead of one (bench/RESULTS-ingest.md: the per-call
        cost dominates); the re-order window is far longer than a tick, so nothing is late.
        """
        self.warm_up()
        self.send({"op": "hello", "pid": os.getpid()})
        next_tick = time.monotonic() + self.tick_s
        ctl_wait = select.epoll()
        ctl_wait.register(self._ctl_fd, select.EPOLLIN)
        try:
            while self.running:
                ctl_wait.poll(max(0.0, next_tick - time.monotonic()))
                self.control()
                now = time.monotonic()
                if now < next_tick:
                    continue
                events = self.epoll.poll(0, max(1, len(self.by_fd)))
                self.stats["rounds"] += 1
                if events:
                    self.receive([fd for fd, _ in events])
                self.tick(time.monotonic())
                next_tick += self.tick_s
                if next_tick < now:  # we fell behind (a long batch): no burst of catch-up ticks
                    next_tick = now + self.tick_s
        finally:
            ctl_wait.close()

    def close(self) -> None:
        for call in list(self.calls.values()):
            self._drop_legs(call)
        self.calls.clear()
        self.epoll.close()
        self.ctl.close(0)
        self.ctx.term()
        self.rx = None  # type: ignore[assignment]
        self._dummy.close()
        self.arena.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m wholecall.service.ingest_proc")
    p.add_argument("--arena", required=True, help="path of the controller's arena")
    p.add_argument("--control", required=True, help="ZeroMQ endpoint of the service (PAIR)")
    p.add_argument("--reorder-ms", type=float, default=200.0)
    p.add_argument("--media-timeout", type=float, default=30.0)
    p.add_argument("--tick-ms", type=float, default=40.0, help="how often the sockets are swept and the legs released")
    p.add_argument("--parent", type=int, default=0, help="exit when this process is gone")
    a = p.parse_args(argv)
    logline.configure()
    import signal

    # The service drains and then stops us over the control channel; a Ctrl-C on the
    # terminal (sent to the whole process group) must not kill the media first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: setattr(ingest, "running", False))
    ingest = Ingest(a.arena, a.control, a.reorder_ms / 1000.0, a.media_timeout, a.tick_ms / 1000.0)
    if a.parent:
        _die_with_parent(a.parent)
    profile = os.environ.get("WHOLECALL_INGEST_PROFILE")  # a path: where cProfile's stats go at exit
    try:
        if profile:
            import cProfile

            cProfile.runctx("ingest.run()", globals(), {"ingest": ingest}, profile)
        else:
            ingest.run()
    finally:
        ingest.close()
    return 0


def _die_with_parent(pid: int) -> None:
    """PR_SET_PDEATHSIG: a service killed with SIGKILL takes its ingest process with it."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != pid:
            os.kill(os.getpid(), signal.SIGTERM)
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
