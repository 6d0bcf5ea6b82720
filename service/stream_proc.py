"""The streamed-media ingest process: Twilio Media Streams and L16 over WebSocket, Asterisk
AudioSocket over TCP in; the legs' shm rings out.

One asyncio process, started by `wholecall serve` as ``python -P -m wholecall.service.stream_proc``.
It attaches the controller's arena by path and is the only writer of the rings of the legs
of its calls (the SPSC rule); audio never crosses ZeroMQ or HTTP. `wholecall serve
--stream-procs N` runs N of them, each on its own ports (service.streams says why). WebSockets
and AudioSocket are served by plain `asyncio.Protocol`s (`WebSocketProtocol` over the
`websockets` library's sans-I/O server, adapted by `ingest.websocket`; `AudioSocketProtocol`):
a read costs one `data_received` call that queues whole messages, no task wake-up per message.

Why a tick: a connection's protocol only appends what it received to one list. Every
`tick_s` the whole list is worked through in arrival order: each Twilio message is parsed (a `media` message in
Twilio's own layout by one regular expression, `ingest.twilio.fast_media`; anything else by
`json`), every media payload of the tick is base64-decoded and mu-law-decoded as one batch
(`ingest.twilio.decode_payloads`), sorted by leg and timestamp so that a leg's messages of
the tick land with one write when they are contiguous, audio is placed in its leg's playout core
(`ingest.jitter.JitterBuffer`: by timestamp for Twilio, by arrival order for L16 and
AudioSocket, which carry none), and each leg's released window lands in its ring with one
write. Both legs of a call are released by the same `now`, so they stay aligned.

Bad input (invalid JSON, an unknown event, bad base64, an oversized frame, a UUID or URL no
call has, a protocol violation) closes that one connection with a logged reason and a
counted error; the call it belonged to is hung up (the service is told, cause HANGUP, the
reason kept as the call's ``hangup_reason``). Nothing raised by one connection's input
reaches the loop serving the others.

Control channel (ZeroMQ PAIR, msgpack maps, ``req`` echoed in the one reply):

- ``{"op": "add", "call", "kind": "twilio"|"websocket"|"audiosocket", "legs": {"inbound":
  {"slot"}, "outbound": {"slot"}}, "token", "uuids": {"inbound", "outbound"}, "channels",
  "rate"}`` -> ``{"ok": true}``
- ``{"op": "remove", "call", "flush"}`` -> ``{"ok": true, "media": {...}}`` (pending input is
  worked through, the legs released, the connections closed; the slots are not written again)
- ``{"op": "stats", "call"}`` -> ``{"ok": true, "media": {...}, "ingest": {...}}``
- ``{"op": "stop"}`` -> the process exits.

Events (no ``req``): ``{"op": "hello", "pid", "websocket_port", "audiosocket_port"}``,
``{"op": "digit", "call", "leg", "digit", "position", "volume"}``, ``{"op": "hangup", "call",
"reason"}``, ``{"op": "media_timeout", "call", "idle_s"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import sys
import time
import uuid
from collections.abc import Callable

import msgpack
import numpy as np
import zmq
import zmq.asyncio

from wholecall.ingest import twilio
from wholecall.ingest import websocket as wsp
from wholecall.ingest.audiosocket import (
    AUDIO_RATES,
    KIND_DTMF,
    KIND_ERROR,
    KIND_HANGUP,
    KIND_UUID,
    AudioSocketError,
    FrameReader,
    parse_digit,
    parse_uuid,
)
from wholecall.ingest.jitter import JitterBuffer
from wholecall.ingest.l16stream import L16Error, L16Stream
from wholecall.protocol import logline
from wholecall.shm import Arena, LegWriter

log = logging.getLogger("wholecall.streams")

LEGS = ("inbound", "outbound")
RATE = 8000
MAX_MESSAGE = 64 * 1024
"""Largest WebSocket message accepted (a 20 ms Twilio message is ~300 bytes); larger closes with 1009."""
MAX_AHEAD_S = 2.0
"""Arrival-order audio further than this ahead of the call clock is dropped (a sender faster than real time)."""
TEXT, BINARY, FRAME, CLOSE, FAIL = range(5)
"""Kinds of queued input."""
AS_RATES = tuple(sorted(AUDIO_RATES.values()))
_ZEROS = np.zeros(8 * RATE, np.int16)
_ZEROS.flags.writeable = False


class OutLeg:
    """One leg of a streamed call: its playout core and its ring, and what happened to its audio."""

    __slots__ = ("end", "jitter", "last_media", "messages", "name", "resyncs", "too_early", "writer")

    def __init__(self, name: str, writer: LegWriter, jitter: JitterBuffer) -> None:
        self.name = name
        self.writer = writer
        self.jitter = jitter
        self.end: int | None = None
        """One past the last position audio was placed at (arrival order continues here)."""
        self.messages = 0
        self.resyncs = 0
        self.too_early = 0
        self.last_media = 0.0

    def arrival(self, samples: np.ndarray, clock: int, now: float) -> None:
        """Place audio that has no timestamp where the leg's previous audio ended (see `where`)."""
        pos = self.where(len(samples), clock)
        if pos is not None:
            self.land(pos, samples, now)

    def where(self, n: int, clock: int) -> int | None:
        """Where `n` samples without a timestamp go, None when they are dropped.

        The first audio lands at the call clock of its arrival; audio that would land in
        a span already released (the sender paused longer than the re-order window) lands
        at the clock instead (a resync: the pause is silence); audio more than
        `MAX_AHEAD_S` ahead of the clock is dropped and counted.
        """
        pos = self.end
        if pos is None or pos < self.jitter.released:
            if pos is not None:
                self.resyncs += 1
            return clock
        if pos > clock + MAX_AHEAD_S * RATE:
            self.too_early += n
            return None
        return pos

    def land(self, pos: int, samples: np.ndarray, now: float) -> None:
        self.messages += 1
        self.last_media = now
        self.jitter.place(pos, samples)
        self.end = pos + len(samples)

    def put(self, chunks: list) -> None:
        """Released chunks into the ring at their positions in one non-blocking write."""
        if not chunks:
            return
        w = self.writer
        at = w.position
        parts: list[np.ndarray] = []
        if chunks[0][0] > at:
            parts.append(_zeros(chunks[0][0] - at))
        for pos, data in chunks:
            n = data if isinstance(data, int) else len(data)
            if pos + n <= at:
                continue
            cut = max(0, at - pos)
            parts.append(_zeros(n - cut) if isinstance(data, int) else data[cut:])
        if parts:
            pcm = parts[0] if len(parts) == 1 else np.concatenate(parts)
            if len(pcm):
                w.write(pcm, block=False)

    def counters(self) -> dict:
        c = self.jitter.counters()
        return {"messages": self.messages, "received": c.received, "late": c.late, "resyncs": self.resyncs,
                "too_early_samples": self.too_early, "position": self.writer.position,
                "ring_overruns": self.writer.overruns}


def _zeros(n: int) -> np.ndarray:
    return _ZEROS[:n] if n <= len(_ZEROS) else np.zeros(n, np.int16)


class StreamCall:
    """A call whose media arrives over WebSocket or AudioSocket connections."""

    def __init__(self, cid: str, kind: str, t0: float, legs: dict[str, OutLeg], token: str,
                 uuids: dict[uuid.UUID, str], channels: int, rate: int, window: float = 0.2) -> None:
        self.id = cid
        self.kind = kind
        self.t0 = t0
        self.legs = legs
        self.token = token
        self.uuids = uuids
        self.channels = channels
        self.rate = rate
        self.attached: dict[str, Conn] = {}
        self.metadata: dict = {}
        self.timeline = twilio.Timeline(round(window * RATE))
        self.errors: list[str] = []
        self.connections = 0
        self.ended = False
        self.timed_out = False
        self.digits: list[tuple[str, str, int]] = []
        self.gen = 0  # the service's number for the add that made it (`remove`)

    def clock(self, now: float) -> int:
        return max(0, math.floor((now - self.t0) * RATE))

    def last_media(self) -> float:
        return max([self.t0] + [leg.last_media for leg in self.legs.values()])

    def media(self) -> dict:
        out: dict = {name: leg.counters() for name, leg in self.legs.items()}
        out["stream"] = {"kind": self.kind, "metadata": self.metadata, "connections": self.connections,
                         "errors": list(self.errors), "timeline_resyncs": self.timeline.resyncs}
        return out


class Conn:
    """One WebSocket or AudioSocket connection feeding a call: `leg` None means both legs."""

    __slots__ = ("call", "dead", "l16", "leg", "peer", "started", "transport", "ws")

    def __init__(self, call: StreamCall, leg: str | None, peer: str) -> None:
        self.call = call
        self.leg = leg
        self.ws: WebSocketProtocol | None = None
        self.transport: asyncio.Transport | None = None
        self.started = False
        self.dead = False
        self.l16: L16Stream | None = None
        self.peer = peer

    def describe(self) -> str:
        what = {"twilio": "Twilio stream", "websocket": "L16 WebSocket", "audiosocket": "AudioSocket"}[self.call.kind]
        return f"{what} {self.leg or 'both legs'} from {self.peer}"


class StreamIngest:
    """The loop: a WebSocket server, an AudioSocket server, a control socket, a tick."""

    def __init__(self, arena_path: str, endpoint: str, window: float, media_timeout: float, tick_s: float,
                 ws_host: str, ws_port: int, as_host: str, as_port: int, handshake_timeout: float = 10.0) -> None:
        self.arena = Arena.attach(arena_path)
        self.handshake_timeout = handshake_timeout
        self.endpoint = endpoint
        self.window = window
        self.media_timeout = media_timeout
        self.tick_s = tick_s
        self.ws_addr = (ws_host, ws_port)
        self.as_addr = (as_host, as_port)
        self.calls: dict[str, StreamCall] = {}
        self.by_token: dict[str, StreamCall] = {}
        self.by_uuid: dict[uuid.UUID, StreamCall] = {}
        self.pending: list[tuple[Conn, int, object]] = []
        self._hangups: list[tuple[StreamCall, str]] = []
        self.stats = {"messages": 0, "ticks": 0, "errors": 0, "refused": 0, "connections": 0}
        self.websockets: set[WebSocketProtocol] = set()
        self.stopping = asyncio.Event()

    # -- control --------------------------------------------------------------------------

    def send(self, msg: dict) -> None:
        try:
            self.ctl.send(msgpack.packb(msg), zmq.NOBLOCK)
        except zmq.Again:
            log.warning("service not reading; dropped %s", msg.get("op"))

    async def control(self) -> None:
        while not self.stopping.is_set():
            try:
                raw = await self.ctl.recv()
            except (zmq.ZMQError, asyncio.CancelledError):
                return
            msg = msgpack.unpackb(raw)
            op, req = msg.get("op"), msg.get("req")
            try:
                if op == "add":
                    self.add(msg)
                    reply: dict = {"ok": True}
                elif op == "remove":
                    reply = {"ok": True, "media": self.remove(msg["call"], bool(msg.get("flush", True)),
                                                              msg.get("gen"))}
                elif op == "stats":
                    call = self.calls.get(msg["call"])
                    reply = {"ok": True, "media": call.media() if call else {},
                             "ingest": dict(self.stats, cpu_s=time.process_time())}
                elif op == "stop":
                    self.stopping.set()
                    reply = {"ok": True}
                else:
                    reply = {"ok": False, "error": "Error", "detail": f"unknown op {op!r}"}
            except Exception as e:  # one bad command must not take the media of every call down
                log.exception("control %s failed", op)
                reply = {"ok": False, "error": type(e).__name__, "detail": str(e)}
            if req is not None:
                reply["req"] = req
                self.send(reply)

    def add(self, msg: dict) -> None:
        cid = msg["call"]
        if cid in self.calls:
            raise ValueError(f"call {cid!r} already has media")
        kind = msg["kind"]
        if kind not in ("twilio", "websocket", "audiosocket"):
            raise ValueError(f"unknown stream kind {kind!r}")
        now = time.monotonic()
        legs = {name: OutLeg(name, LegWriter(self.arena, int(msg["legs"][name]["slot"])),
                             JitterBuffer(now, window=self.window, max_ahead=max(self.window, MAX_AHEAD_S)))
                for name in LEGS}
        uuids = {uuid.UUID(u): leg for leg, u in (msg.get("uuids") or {}).items()}
        call = StreamCall(cid, kind, now, legs, msg.get("token", ""), uuids, int(msg.get("channels", 1)),
                          int(msg.get("rate", RATE)), self.window)
        call.gen = int(msg.get("gen", 0))
        if kind == "websocket":
            L16Stream(call.channels, call.rate)  # the settings are checked before the call exists
        self.calls[cid] = call
        if call.token:
            self.by_token[call.token] = call
        for u in uuids:
            self.by_uuid[u] = call
        log.info("call %s: %s stream", cid, kind, extra={"call": cid})

    def remove(self, cid: str, flush: bool, gen: int | None = None) -> dict:
        """End call `cid`'s media; `gen`: only if its add was that one (see ingest_proc)."""
        call = self.calls.get(cid)
        if call is None or (gen is not None and call.gen != gen):
            return {}
        now = time.monotonic()
        self.process(now)  # what already arrived still counts
        del self.calls[cid]
        call.ended = True
        for conn in call.attached.values():
            self._flush_l16(conn, now)
        # Ended: everything received lands, also what a sender ahead of our clock placed past
        # it; both legs to the same horizon, so they stay aligned.
        ends = [leg.end for leg in call.legs.values() if leg.end is not None]
        horizon = max([call.clock(now)] + ends) if flush else call.clock(now) - round(self.window * RATE)
        for leg in call.legs.values():
            leg.put(leg.jitter.release_to(horizon))
        self._digits(call)
        for conn in list(call.attached.values()):
            conn.dead = True
            self._close(conn, 1000, "the call ended")
        self.by_token.pop(call.token, None)
        for u in call.uuids:
            self.by_uuid.pop(u, None)
        return call.media()

    # -- connections ----------------------------------------------------------------------

    def _refuse(self, what: str) -> None:
        self.stats["refused"] += 1
        self.stats["errors"] += 1
        log.warning("refused: %s", what)

    def attach(self, call: StreamCall, leg: str | None, peer: str) -> Conn | str:
        """A new connection for `leg` of `call`, or why it cannot have one."""
        key = leg or "both"
        if call.ended:
            return f"call {call.id} has ended"
        taken = set(call.attached)
        if key in taken or (key == "both" and taken) or ("both" in taken):
            return f"call {call.id} already has a connection for {key}"
        conn = Conn(call, leg, peer)
        call.attached[key] = conn
        call.connections += 1
        self.stats["connections"] += 1
        return conn

    def route(self, path: str, peer: str) -> Conn | tuple[int, str]:
        """The connection a WebSocket opening request for `path` gets, or (HTTP status, why not)."""
        parts = path.split("/")
        if len(parts) not in (4, 5) or parts[:3] != ["", "v1", "media"]:
            self._refuse(f"WebSocket from {peer}: no call has the URL {path}")
            return 404, "no call has this stream URL"
        call = self.by_token.get(parts[3])
        if call is None or call.kind == "audiosocket":
            self._refuse(f"WebSocket from {peer}: no call has the URL {path}")
            return 404, "no call has this stream URL"
        which = parts[4] if len(parts) == 5 else None
        if which is not None and (which != "outbound" or call.kind != "websocket" or call.channels != 1):
            self._refuse(f"WebSocket from {peer}: call {call.id} has no stream at {path}")
            return 404, "this call has no such stream"
        leg = "outbound" if which else ("inbound" if call.kind == "websocket" and call.channels == 1 else None)
        conn = self.attach(call, leg, peer)
        if isinstance(conn, str):
            self._refuse(f"WebSocket from {peer}: {conn}")
            return 409, conn
        return conn

    def _close(self, conn: Conn, code: int, reason: str) -> None:
        if conn.ws is not None:
            conn.ws.close(code, reason)
        if conn.transport is not None and not conn.transport.is_closing():
            conn.transport.close()

    def fail(self, conn: Conn, reason: str, code: int = 1008) -> None:
        """Bad input: this connection closes, the error is counted and logged, the call ends."""
        if conn.dead:
            return
        conn.dead = True
        call = conn.call
        self.stats["errors"] += 1
        call.errors.append(reason)
        log.warning("call %s: %s closed: %s", call.id, conn.describe(), reason, extra={"call": call.id})
        self._close(conn, code, reason)
        self.end_call(call, f"protocol_error: {reason}")

    def end_call(self, call: StreamCall, reason: str) -> None:
        if not call.ended:
            call.ended = True
            self._hangups.append((call, reason))

    # -- the tick -------------------------------------------------------------------------

    def process(self, now: float) -> None:
        """Work through everything received since the last tick, in arrival order."""
        if not self.pending:
            return
        items = self.pending.copy()  # the handlers hold `pending.append`: the list object stays
        self.pending.clear()
        self.stats["messages"] += len(items)
        media: list[tuple[Conn, OutLeg, int, bytes]] = []
        for conn, kind, data in items:
            call = conn.call
            if kind == CLOSE:
                if self.calls.get(call.id) is call:  # not removed yet: what soxr still holds lands
                    self._flush_l16(conn, now)
                conn.dead = True
                if not any(not c.dead for c in call.attached.values()):  # the call's last connection
                    self.end_call(call, str(data))
                continue
            if conn.dead or call.ended:
                continue
            try:
                if kind == TEXT:
                    if call.kind == "twilio":
                        self._twilio(conn, data, media, now)  # type: ignore[arg-type]
                    else:
                        self._metadata(conn, data)  # type: ignore[arg-type]
                elif kind == BINARY:
                    self._binary(conn, data, now)  # type: ignore[arg-type]
                elif kind == FRAME:
                    self._frame(conn, data, now)  # type: ignore[arg-type]
                elif kind == FAIL:
                    reason, code = data  # type: ignore[misc]
                    self.fail(conn, reason, code)
            except (twilio.StreamError, AudioSocketError, L16Error) as e:
                self.fail(conn, str(e), 1007)
            except Exception as e:  # a bug must cost one call, not the process
                log.exception("call %s: unexpected error", call.id, extra={"call": call.id})
                self.fail(conn, f"internal error: {type(e).__name__}: {e}", 1011)
        if media:
            self._place_twilio(media, now)
        hangups, self._hangups = self._hangups, []
        for call, reason in hangups:
            self._digits(call)
            self.send({"op": "hangup", "call": call.id, "reason": reason})

    def _twilio(self, conn: Conn, text: bytes, media: list, now: float) -> None:
        fast = twilio.fast_media(text)
        if fast is not None and conn.started:
            media.append((conn, conn.call.legs[fast[0]], fast[1], fast[2]))
            return
        ev = twilio.parse(text)
        name = ev[0]
        call = conn.call
        if name == "media":
            if not conn.started:
                raise twilio.StreamError("media before the start message")
            media.append((conn, call.legs[ev[1]], ev[2], ev[3]))
        elif name == "start":
            if conn.started:
                raise twilio.StreamError("a second start message")
            conn.started = True
            start = ev[1]
            call.metadata = {"streamSid": start.stream_sid, "callSid": start.call_sid, "tracks": list(start.tracks),
                             "customParameters": start.custom_parameters}
        elif name == "dtmf":
            leg = call.legs[ev[1]]
            call.digits.append((leg.name, ev[2], leg.end if leg.end is not None else call.clock(now)))
        elif name == "stop":
            self.end_call(call, "stop")
            self._close(conn, 1000, "stop")
        # connected and mark carry nothing to record

    def _place_twilio(self, media: list[tuple[Conn, OutLeg, int, str]], now: float) -> None:
        samples, lengths, errors = twilio.decode_payloads([m[3] for m in media])
        off = 0
        clocks: dict[StreamCall, int] = {}
        failed: set[Conn] = set()
        for i, (conn, leg, ts, _) in enumerate(media):
            n = lengths[i]
            if errors and i in errors:
                failed.add(conn)
                self.fail(conn, errors[i], 1007)
                continue
            if not n or (failed and conn in failed):  # nothing after a bad payload of its connection
                off += n
                continue
            call = conn.call
            clock = clocks.get(call)
            if clock is None:
                clock = clocks[call] = call.clock(now)
            covered = max((lg.end for lg in call.legs.values() if lg.end is not None), default=0)
            pos = call.timeline.position(ts, clock, leg.jitter.released, covered)
            if pos is None:  # far ahead of the clock, and not for long yet: dropped and counted
                leg.too_early += n
                off += n
                continue
            leg.jitter.place(pos, samples[off:off + n])
            off += n
            leg.messages += 1
            leg.last_media = now
            end = pos + n
            if leg.end is None or end > leg.end:
                leg.end = end

    def _metadata(self, conn: Conn, text: str) -> None:
        try:
            value = json.loads(text)
        except ValueError as e:
            raise L16Error(f"invalid JSON in a text frame: {e}") from None
        if not isinstance(value, dict):
            raise L16Error(f"a text frame must be a JSON object, got {type(value).__name__}")
        if not conn.started:
            conn.started = True
            conn.call.metadata[conn.leg or "both"] = value

    def _binary(self, conn: Conn, data: bytes, now: float) -> None:
        call = conn.call
        if call.kind != "websocket":
            raise twilio.StreamError("a binary frame on a Twilio stream (it sends JSON text only)")
        if not conn.started:
            raise L16Error("binary audio before the JSON metadata text frame")
        if conn.l16 is None:
            conn.l16 = L16Stream(call.channels if conn.leg is None else 1, call.rate)
        self._l16_audio(conn, conn.l16.feed(data), call.clock(now), now)

    def _flush_l16(self, conn: Conn, now: float) -> None:
        """What a connection's resampler still holds lands after its audio (its stream ends)."""
        if conn.l16 is not None and not conn.dead:
            self._l16_audio(conn, conn.l16.flush(), conn.call.clock(now), now)
            conn.l16 = None

    def _l16_audio(self, conn: Conn, channels: list[np.ndarray], clock: int, now: float) -> None:
        legs = conn.call.legs
        targets = [legs["inbound"], legs["outbound"]] if conn.leg is None else [legs[conn.leg]]
        if len(targets) == 2 and len(channels[0]):
            # Stereo: both channels of a frame land at one place, the inbound leg's.
            pos = targets[0].where(len(channels[0]), clock)
            if pos is not None:
                targets[0].land(pos, channels[0], now)
                targets[1].land(pos, channels[1], now)
        elif len(channels[0]):
            targets[0].arrival(channels[0], clock, now)

    def _frame(self, conn: Conn, frame: tuple[int, bytes], now: float) -> None:
        kind, payload = frame
        call = conn.call
        leg = call.legs[conn.leg or "inbound"]
        rate = AUDIO_RATES.get(kind)
        if rate is not None:
            if len(payload) % 2:
                raise AudioSocketError(f"audio frame of {len(payload)} bytes is not whole 16-bit samples")
            clock = call.clock(now)
            if conn.l16 is not None and conn.l16.rate != rate:  # the sender changed rate: what soxr holds first
                self._l16_audio(conn, conn.l16.flush(), clock, now)
                conn.l16 = None
            if rate == RATE:
                leg.arrival(np.frombuffer(payload, "<i2").astype(np.int16), clock, now)
            else:  # 0x11-0x18: resampled to the call rate by the same soxr stream as 16 kHz L16
                if conn.l16 is None:
                    conn.l16 = L16Stream(1, rate, AS_RATES)
                self._l16_audio(conn, conn.l16.feed(payload), clock, now)
        elif kind == KIND_DTMF:
            call.digits.append((leg.name, parse_digit(payload), leg.end if leg.end is not None else call.clock(now)))
        elif kind == KIND_HANGUP:
            self._flush_l16(conn, now)
            self.end_call(call, "hangup")
            self._close(conn, 1000, "hangup")
        elif kind == KIND_ERROR:
            raise AudioSocketError(f"the peer sent an error frame (code {payload.hex() or 'none'})")
        elif kind == KIND_UUID:
            raise AudioSocketError("a second UUID frame")

    def _digits(self, call: StreamCall) -> None:
        for leg, digit, position in call.digits:
            self.send({"op": "digit", "call": call.id, "leg": leg, "digit": digit, "position": position,
                       "volume": None})
        call.digits.clear()

    def release(self, now: float) -> None:
        for call in self.calls.values():
            for leg in call.legs.values():
                chunks = leg.jitter.pull(now)
                if chunks:
                    leg.put(chunks)
            if call.digits:
                self._digits(call)
            if not call.timed_out and self.media_timeout > 0 and now - call.last_media() >= self.media_timeout:
                call.timed_out = True
                self.send({"op": "media_timeout", "call": call.id, "idle_s": now - call.last_media()})

    async def ticker(self) -> None:
        next_tick = time.monotonic() + self.tick_s
        while not self.stopping.is_set():
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
            now = time.monotonic()
            self.process(now)
            self.release(now)
            self.stats["ticks"] += 1
            next_tick += self.tick_s
            if next_tick < now:
                next_tick = now + self.tick_s

    # -- the process ----------------------------------------------------------------------

    async def run(self) -> None:
        self.zctx = zmq.asyncio.Context()
        self.ctl = self.zctx.socket(zmq.PAIR)
        self.ctl.setsockopt(zmq.LINGER, 0)
        self.ctl.setsockopt(zmq.SNDHWM, 10000)
        self.ctl.connect(self.endpoint)
        loop = asyncio.get_running_loop()
        try:
            what, addr = "AudioSocket", self.as_addr
            server = await loop.create_server(lambda: AudioSocketProtocol(self), addr[0], addr[1],
                                              reuse_address=True, backlog=1024)
            what, addr = "WebSocket", self.ws_addr
            ws_server = await loop.create_server(lambda: WebSocketProtocol(self), addr[0], addr[1],
                                                 reuse_address=True, backlog=1024)
        except OSError as e:  # said to the service, which names it and stops: no traceback
            self.send({"op": "hello", "pid": os.getpid(),
                       "error": f"cannot listen for {what} on {addr[0]}:{addr[1]}: {e.strerror or e}"})
            await asyncio.sleep(0.2)  # the message out before the socket closes
            self.ctl.close(0)
            self.zctx.term()
            raise SystemExit(1) from None
        ws_port = ws_server.sockets[0].getsockname()[1]
        as_port = server.sockets[0].getsockname()[1]
        log.info("streams: WebSocket :%d, AudioSocket :%d", ws_port, as_port)
        self.send({"op": "hello", "pid": os.getpid(), "websocket_port": ws_port, "audiosocket_port": as_port})
        tasks = [loop.create_task(self.control()), loop.create_task(self.ticker())]
        try:
            await self.stopping.wait()
        finally:
            for t in tasks:
                t.cancel()
            server.close()
            ws_server.close()
            for call in list(self.calls.values()):
                for conn in call.attached.values():
                    self._close(conn, 1001, "the recorder is stopping")
            await asyncio.sleep(0.05)  # the close frames out
            for proto in list(self.websockets):
                proto.abort()
            self.ctl.close(0)
            self.zctx.term()
            self.arena.close()


class WebSocketProtocol(asyncio.Protocol):
    """One WebSocket connection (RFC 6455, the `websockets` library's sans-I/O server through
    `ingest.websocket`): the opening request's URL picks the call and leg; whole messages are
    queued for the tick; pings, the close handshake and protocol errors are the library's.

    Why a protocol and not a handler task: `data_received` is called by the loop for each
    read, so a message costs no future, no queue and no task wake-up.
    """

    CLOSE_WAIT_S = 1.0
    """After our close frame, how long the peer has to answer with its own before the socket closes."""

    def __init__(self, owner: StreamIngest) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.ws = wsp.ServerConnection(MAX_MESSAGE)
        self.conn: Conn | None = None
        self.failed = False
        self._timer: asyncio.TimerHandle | None = None
        self._opening_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.owner.websockets.add(self)
        self._opening_timer = _opening_deadline(self.owner, transport, lambda: self.conn is None and not self.failed,
                                                f"WebSocket from {self.peer}: no opening request")

    def pause_writing(self) -> None:
        """The peer does not read what we send (pongs to its pings, say): read nothing more
        from it until it does, so what it sends waits in its own socket, not in this
        process's memory, which every streamed call shares (a peer pinging without reading
        grew it by 180 MB in 15 s)."""
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.failed and not self.transport.is_closing():
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        if conn is None:
            self._opening(data)
            return
        ws = self.ws
        messages = ws.receive(data)
        if messages:
            append = self.owner.pending.append
            for op, payload in messages:
                append((conn, TEXT if op == wsp.TEXT else BINARY, payload))
        if ws.error is not None and not self.failed:  # the library sent the close; the tick counts it
            self.failed = True
            code, reason = ws.error
            self.owner.pending.append((conn, FAIL, (f"WebSocket error: {reason}", code)))
        self._flush()

    def _opening(self, data: bytes) -> None:
        got = self.ws.opening(data)
        if got is None:
            self._flush()
            return
        if self._opening_timer is not None:
            self._opening_timer.cancel()
        if isinstance(got, wsp.Refusal):
            self.owner._refuse(f"WebSocket from {self.peer}: handshake refused ({got.status}): {got.reason}")
        else:
            conn = self.owner.route(got, self.peer)
            if isinstance(conn, tuple):
                self.ws.refuse(*conn)
            else:
                self.ws.accept()
                conn.ws = self
                self.conn = conn
                log.info("call %s: %s connected", conn.call.id, conn.describe(), extra={"call": conn.call.id})
        self._flush()

    def _flush(self) -> None:
        """What the library has to send goes out; its end-of-stream closes the socket."""
        data, eof = self.ws.out()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if data:
            transport.write(data)
        if eof:
            transport.close()

    def close(self, code: int, reason: str) -> None:
        """Our side closes: the close frame now, the socket when the peer answers (or after CLOSE_WAIT_S)."""
        transport = self.transport
        if transport is None or transport.is_closing() or not self.ws.open:
            return
        self.ws.close(code, reason)
        self._flush()
        self._timer = asyncio.get_running_loop().call_later(self.CLOSE_WAIT_S, transport.close)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.websockets.discard(self)
        for timer in (self._timer, self._opening_timer):
            if timer is not None:
                timer.cancel()
        if self.conn is not None:
            reason = "the connection closed"
            code = self.ws.peer_code
            if code not in (None, 1000, 1001, 1005):
                reason = f"the connection closed with code {code}"
            elif exc is not None:
                reason += f": {exc}"
            self.owner.pending.append((self.conn, CLOSE, reason))


class AudioSocketProtocol(asyncio.Protocol):
    """One AudioSocket TCP connection: the UUID frame picks the call and leg; frames are queued."""

    def __init__(self, owner: StreamIngest) -> None:
        self.owner = owner
        self.reader = FrameReader()
        self.conn: Conn | None = None
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self._opening_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self._opening_timer = _opening_deadline(self.owner, transport, lambda: self.conn is None,
                                                f"AudioSocket from {self.peer}: no UUID frame")

    def _refuse(self, why: str) -> None:
        self.owner._refuse(f"AudioSocket from {self.peer}: {why}")
        assert self.transport is not None
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        try:
            frames, error = self.reader.feed(data), ""
        except AudioSocketError as e:
            # The frames before the violation count (the UUID among them: the call then
            # ends with the reason, rather than running on until its media timeout).
            frames, error = e.frames, str(e)
        if not self._take(frames) or not error:
            return
        if self.conn is None:
            self._refuse(error)
        else:
            self._fail(error)

    def _take(self, frames: list[tuple[int, bytes]]) -> bool:
        """Queue whole frames for the loop; False once the connection was refused."""
        append = self.owner.pending.append
        for kind, payload in frames:
            if self.conn is None:
                if kind != KIND_UUID:
                    self._refuse(f"the first frame must be the UUID (0x01), got kind 0x{kind:02x}")
                    return False
                try:
                    u = parse_uuid(payload)
                except AudioSocketError as e:
                    self._refuse(str(e))
                    return False
                call = self.owner.by_uuid.get(u)
                if call is None:
                    self._refuse(f"no call has the UUID {u}")
                    return False
                conn = self.owner.attach(call, call.uuids[u], self.peer)
                if isinstance(conn, str):
                    self._refuse(conn)
                    return False
                conn.transport = self.transport
                conn.started = True
                self.conn = conn
                log.info("call %s: %s connected", call.id, conn.describe(), extra={"call": call.id})
                continue
            append((self.conn, FRAME, (kind, payload)))
        return True

    def _fail(self, reason: str) -> None:
        assert self.conn is not None and self.transport is not None
        self.owner.pending.append((self.conn, FAIL, (reason, 1008)))
        self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._opening_timer is not None:
            self._opening_timer.cancel()
        if self.conn is not None:
            self.owner.pending.append((self.conn, CLOSE, "the connection closed" + (f": {exc}" if exc else "")))


def _opening_deadline(owner: StreamIngest, transport: asyncio.BaseTransport, waiting: Callable[[], bool],
                      what: str) -> asyncio.TimerHandle:
    """Close a connection still `waiting` to name its call after the handshake timeout: a
    peer that connects and says nothing (or too little, slowly) would otherwise hold a
    descriptor and a buffer of this process, which every streamed call shares, for as long
    as it likes."""
    def expire() -> None:
        if waiting() and not transport.is_closing():
            owner._refuse(f"{what} in {owner.handshake_timeout:g} s; closed")
            transport.abort()
    return asyncio.get_running_loop().call_later(owner.handshake_timeout, expire)


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m wholecall.service.stream_proc")
    p.add_argument("--arena", required=True, help="path of the controller's arena")
    p.add_argument("--control", required=True, help="ZeroMQ endpoint of the service (PAIR)")
    p.add_argument("--websocket", default="127.0.0.1:0", help="HOST:PORT the WebSocket server listens on")
    p.add_argument("--audiosocket", default="127.0.0.1:0", help="HOST:PORT the AudioSocket server listens on")
    p.add_argument("--reorder-ms", type=float, default=200.0)
    p.add_argument("--media-timeout", type=float, default=30.0)
    p.add_argument("--tick-ms", type=float, default=50.0, help="how often input is worked through and legs released")
    p.add_argument("--parent", type=int, default=0, help="exit when this process is gone")
    p.add_argument("--handshake-timeout", type=float, default=10.0,
                   help="seconds a connection has to name its call (WebSocket upgrade, AudioSocket UUID)")
    a = p.parse_args(argv)
    logline.configure()  # text or JSON lines, as every process of the service
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the service drains first, then stops us
    ws_host, ws_port = _host_port(a.websocket)
    as_host, as_port = _host_port(a.audiosocket)
    ingest = StreamIngest(a.arena, a.control, a.reorder_ms / 1000.0, a.media_timeout, a.tick_ms / 1000.0,
                          ws_host, ws_port, as_host, as_port, a.handshake_timeout)
    if a.parent:
        from wholecall.service.ingest_proc import _die_with_parent

        _die_with_parent(a.parent)

    async def go() -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, ingest.stopping.set)
        await ingest.run()

    profile = os.environ.get("WHOLECALL_STREAMS_PROFILE")  # a path: where cProfile's stats go at exit
    if profile:
        import cProfile

        cProfile.runctx("asyncio.run(go())", globals(), {"go": go, "asyncio": asyncio}, profile)
    else:
        asyncio.run(go())
    return 0


if __name__ == "__main__":
    sys.exit(main())
