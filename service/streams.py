"""The service's side of streamed media: the stream ingest process and the calls it serves.

`POST /v1/calls` with ``media`` ``twilio``, ``websocket`` or ``audiosocket`` comes here
(`create_stream_call`): the body is checked, a channel is made, and the stream process
(`service.stream_proc`) is told which ring slots the call's legs write to and which URL
token or AudioSocket UUIDs identify it. The reply adds, to the fields of an RTP call, where
the platform streams to: ``websocket`` (and ``websocket_outbound`` for a mono L16 call) or
``audiosocket: {host, port, uuid, uuid_outbound}``.

Why URL tokens and UUIDs are random (128 bits): a platform such as Twilio cannot send the
API's bearer token on its stream, so the URL itself is the credential for one call.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import secrets
import subprocess
import sys
import uuid
from typing import Any

import msgpack
import zmq
import zmq.asyncio
from aiohttp import web

from .logs import announce

log = logging.getLogger("wholecall.service")


async def send_within(sock: zmq.asyncio.Socket, data: bytes, timeout: float) -> bool:
    """Send on a child's PAIR socket, giving up after `timeout` s (False): such a send blocks
    for as long as the peer is gone, and a child killed with the service's process group (a
    SIGTERM to the group) would hold its shutdown for ever."""
    try:
        await asyncio.wait_for(sock.send(data), timeout)
    except (TimeoutError, zmq.ZMQError):
        return False
    return True


STREAM_MEDIA = ("twilio", "websocket", "audiosocket")
FIELDS = {"twilio": {"media", "id"}, "websocket": {"media", "id", "channels", "encoding", "rate"},
          "audiosocket": {"media", "id"}}


class StreamProc:
    """One stream ingest process: its control socket, its ports and how many calls it serves."""

    def __init__(self, index: int, sock: zmq.asyncio.Socket, hello: asyncio.Future) -> None:
        self.index = index
        self.sock = sock
        self.hello = hello
        self.proc: subprocess.Popen | None = None
        self.websocket_port = 0
        self.audiosocket_port = 0
        self.calls = 0
        self.dead = False
        """It exited while the service runs: no new calls, its calls were hung up."""

    def alive(self) -> bool:
        return not self.dead and (self.proc is None or self.proc.poll() is None)


class StreamBackend:
    """The stream ingest processes and their control channels (request/reply plus events).

    Why one port per process (and not one shared port): a WebSocket URL or an AudioSocket
    UUID belongs to one call, and the process that owns the call's rings must be the one
    that reads its connection (the SPSC rule: one producer per ring). With a port per
    process the address the API hands out names that process, and the kernel delivers the
    connection there; nothing is handed on. The alternatives cost more and break more:
    SO_REUSEPORT spreads connections by a hash of the peer's address, so half of them (with
    two processes) land in the wrong process and must be passed on (the request read with
    MSG_PEEK for the URL or the UUID frame, the socket sent over a Unix socket with
    SCM_RIGHTS to the owner), which adds a mesh between the processes, a failure mode when
    the owner is busy or gone, and a stage every connection pays; a single acceptor in
    front is one more process on the media path whose death stops every stream. The cost of
    ports: a fixed ``--websocket-listen HOST:PORT`` takes PORT..PORT+N-1 (the same for
    AudioSocket), and a TLS proxy in front needs one route per process (``{proc}`` in
    ``--websocket-url``).

    A new call goes to the live process serving the fewest calls (as RTP calls do). A
    process that exits hangs up only its own calls (their files end final, cause HANGUP,
    ``hangup_reason`` ``stream_ingest_exited``); the other processes' calls go on and new
    calls avoid it. When none is left the service stops, as it does when an RTP ingest
    process exits (the process supervisor restarts it).
    """

    def __init__(self, service: Any, api_error: type[Exception], entry_type: type) -> None:
        """`api_error` and `entry_type` are the service's ApiError and CallEntry (passed in, as
        this module sits below app.py)."""
        self.s = service
        self.api_error = api_error
        self.entry_type = entry_type
        self.procs: list[StreamProc] = []
        self._reqs = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}

    async def start(self, arena_path: str, count: int) -> None:
        s = self.s
        cfg = s.cfg
        loop = asyncio.get_running_loop()
        for k in range(count):
            endpoint = f"ipc://{os.path.join(s.run_dir, f'streams-{k}')}"
            sock = s.zctx.socket(zmq.PAIR)
            sock.setsockopt(zmq.LINGER, 0)
            sock.bind(endpoint)
            sp = StreamProc(k, sock, loop.create_future())
            self.procs.append(sp)
            s._spawn(self._read(sp))
            cmd = [sys.executable, "-P", "-m", "wholecall.service.stream_proc", "--arena", arena_path,
                   "--control", endpoint, "--reorder-ms", str(cfg.reorder_ms), "--media-timeout", str(cfg.media_timeout),
                   "--websocket", _nth(cfg.websocket_listen or f"{cfg.host}:0", k),
                   "--audiosocket", _nth(cfg.audiosocket_listen or f"{cfg.host}:0", k), "--parent", str(os.getpid()),
                   "--handshake-timeout", str(cfg.handshake_timeout)]
            sp.proc = await loop.run_in_executor(
                s.pool, lambda cmd=cmd: subprocess.Popen(cmd, cwd=s.run_dir, stdin=subprocess.DEVNULL, close_fds=True))
        hellos = await await_hellos("stream process", [(sp.hello, sp.proc) for sp in self.procs], 30)
        for sp, hello in zip(self.procs, hellos):
            sp.websocket_port = hello["websocket_port"]
            sp.audiosocket_port = hello["audiosocket_port"]
        announce(self.s.cfg.log_format, "wholecall serve: streams: " + ", ".join(
            f"WebSocket {self.ws_base(sp)} AudioSocket {self.audiosocket_host()}:{sp.audiosocket_port}"
            for sp in self.procs), "streams_listening", websocket=[self.ws_base(sp) for sp in self.procs],
            audiosocket=[f"{self.audiosocket_host()}:{sp.audiosocket_port}" for sp in self.procs])

    @property
    def pids(self) -> list[int]:
        return [sp.proc.pid for sp in self.procs if sp.proc is not None and not sp.dead]

    def ws_base(self, sp: StreamProc) -> str:
        cfg = self.s.cfg
        if cfg.websocket_url:
            return cfg.websocket_url.replace("{proc}", str(sp.index)).rstrip("/")
        host = (cfg.websocket_listen.rpartition(":")[0] if cfg.websocket_listen else "") or cfg.host
        if host in ("0.0.0.0", "::", "[::]"):
            host = cfg.rtp_host if cfg.rtp_host not in ("0.0.0.0", "::") else "127.0.0.1"
        return f"ws://{host}:{sp.websocket_port}"

    def audiosocket_host(self) -> str:
        cfg = self.s.cfg
        host = (cfg.audiosocket_listen.rpartition(":")[0] if cfg.audiosocket_listen else "") or cfg.host
        return cfg.rtp_host if host in ("0.0.0.0", "::", "[::]") else host.strip("[]")

    def pick(self) -> StreamProc:
        """The process for a new call: the live one serving the fewest calls."""
        live = [sp for sp in self.procs if sp.alive()]
        if not live:
            raise self.api_error(503, "Unavailable", "no stream ingest process is running")
        return min(live, key=lambda sp: (sp.calls, sp.index))

    async def _read(self, sp: StreamProc) -> None:
        while True:
            try:
                raw = await sp.sock.recv()
            except (zmq.ZMQError, asyncio.CancelledError):
                return
            msg = msgpack.unpackb(raw)
            req = msg.pop("req", None)
            if req is not None:
                fut = self._waiting.pop(req, None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
                continue
            op = msg.get("op")
            entry = self.s.calls.get(msg.get("call", ""))
            if op == "hello":
                if not sp.hello.done():
                    sp.hello.set_result(msg)
            elif entry is None or not entry.stream or entry.shard != sp.index:
                continue
            elif op == "digit":
                entry.digits.append({"digit": msg["digit"], "leg": msg["leg"], "position": msg["position"],
                                     "volume": msg["volume"]})
            elif op == "hangup" and not entry.hung_up:
                log.info("call %s: stream ended (%s): hanging up", entry.id, msg["reason"], extra={"call": entry.id})
                self.s._spawn(self.s._hang_up(entry, msg["reason"]))
            elif op == "media_timeout" and not entry.hung_up:
                log.info("call %s: no media for %.1f s: hanging up", entry.id, msg["idle_s"], extra={"call": entry.id})
                self.s._spawn(self.s._hang_up(entry, "media_timeout"))

    async def request(self, msg: dict, timeout: float = 10.0, sp: StreamProc | None = None) -> dict:
        """One request to `sp`, else to the process serving ``msg["call"]``."""
        ApiError = self.api_error
        if sp is None:
            entry = self.s.calls.get(msg.get("call", ""))
            if entry is None or not self.procs:
                raise ApiError(503, "Unavailable", "the stream ingest is not running")
            sp = self.procs[entry.shard]
        if not sp.alive():
            raise ApiError(503, "Unavailable", f"stream ingest process {sp.index} is not running")
        req = next(self._reqs)
        fut = asyncio.get_running_loop().create_future()
        self._waiting[req] = fut
        msg["req"] = req
        try:
            if not await send_within(sp.sock, msgpack.packb(msg), timeout):
                raise TimeoutError
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise ApiError(503, "Unavailable", f"the stream ingest did not answer {msg['op']} in {timeout:.0f} s") from None
        finally:
            self._waiting.pop(req, None)

    async def counters(self) -> dict:
        """The stream processes' totals summed (messages, connections, errors, refused
        connections, CPU seconds), with ``processes`` (live) and ``dead``."""
        async def one(sp: StreamProc) -> dict:
            try:
                return (await self.request({"op": "stats", "call": ""}, 2.0, sp)).get("ingest", {})
            except Exception as e:  # noqa: BLE001  (a health check reports, it does not fail)
                return {"error": str(e)} if sp.alive() else {}
        replies = await asyncio.gather(*(one(sp) for sp in self.procs))
        out: dict = {}
        for r in replies:
            for key, value in r.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    out[key] = out.get(key, 0) + value
                elif key == "error":
                    out.setdefault("error", value)
        out["processes"] = sum(1 for sp in self.procs if sp.alive())
        out["dead"] = sum(1 for sp in self.procs if sp.dead)
        return out

    def alive(self) -> bool:
        """Whether any process is left to serve streamed calls."""
        return any(sp.alive() for sp in self.procs) or not self.procs

    def reap(self) -> list[StreamProc]:
        """Processes found exited since the last look (marked dead; their calls are the caller's to hang up)."""
        out = []
        for sp in self.procs:
            if not sp.dead and sp.proc is not None and sp.proc.poll() is not None:
                sp.dead = True
                out.append(sp)
        return out

    async def close(self) -> None:
        for sp in self.procs:
            if sp.proc is not None and sp.proc.poll() is None:
                await send_within(sp.sock, msgpack.packb({"op": "stop", "req": 0}), 1.0)
        for sp in self.procs:
            if sp.proc is not None:
                try:
                    await asyncio.get_running_loop().run_in_executor(None, sp.proc.wait, 3)
                except subprocess.TimeoutExpired:
                    sp.proc.kill()
                    sp.proc.wait()
            sp.sock.close(0)


async def await_hellos(what: str, procs: list[tuple[asyncio.Future, subprocess.Popen | None]],
                       timeout: float) -> list[dict]:
    """The hello of every child process, in order; RuntimeError naming the first that exits
    first, says it failed (a port in use: {"op": "hello", "error": ...}) or is not heard of in
    `timeout` s. Waiting for the hellos alone held start-up 30 s for a child that had died at
    once, then said nothing of why (a reviewer's find)."""
    gathered = asyncio.gather(*(hello for hello, _ in procs))
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        while not gathered.done():
            for k, (hello, proc) in enumerate(procs):
                if hello.done() and hello.result().get("error"):
                    raise RuntimeError(f"{what} {k}: {hello.result()['error']}")
                if not hello.done() and proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"{what} {k} exited with status {proc.returncode} before it was ready "
                                       "(its output above says why)")
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"{what}: not ready in {timeout:.0f} s")
            await asyncio.wait({gathered}, timeout=0.1)
        for k, msg in enumerate(gathered.result()):
            if msg.get("error"):
                raise RuntimeError(f"{what} {k}: {msg['error']}")
        return list(gathered.result())
    finally:
        if not gathered.done():
            gathered.cancel()


def _nth(listen: str, k: int) -> str:
    """HOST:PORT of process `k`: PORT+k, or any free port when PORT is 0."""
    host, _, port = listen.rpartition(":")
    p = int(port)
    return f"{host}:{p + k if p else 0}"


def check_body(body: dict, ApiError: Any) -> dict:
    """The stream settings of a create request, checked; raises ApiError naming what is wrong."""
    media = body["media"]
    unknown = set(body) - FIELDS[media]
    if unknown:
        raise ApiError(422, "Error", f"unknown field(s) for media {media}: {', '.join(sorted(unknown))}")
    out = {"channels": 1, "rate": 8000}
    if media == "websocket":
        channels, encoding, rate = body.get("channels", 1), body.get("encoding", "L16"), body.get("rate", 8000)
        if channels not in (1, 2) or isinstance(channels, bool):
            raise ApiError(422, "Error", f"channels must be 1 or 2, got {channels!r}")
        if encoding != "L16":
            raise ApiError(422, "Error", f"encoding must be \"L16\", got {encoding!r}")
        if rate not in (8000, 16000) or isinstance(rate, bool):
            raise ApiError(422, "Error", f"rate must be 8000 or 16000, got {rate!r}")
        out = {"channels": channels, "rate": rate}
    return out


async def create_stream_call(s: Any, body: dict, cid: str) -> web.Response:
    """POST /v1/calls for streamed media (the common checks of the body are done by the caller)."""
    backend: StreamBackend | None = s.streams
    if backend is None:
        raise web.HTTPServiceUnavailable(text="the stream ingest is not running")
    ApiError, CallEntry = backend.api_error, backend.entry_type
    media = body["media"]
    settings = check_body(body, ApiError)
    sp = backend.pick()
    assert s.ctl is not None

    def new_channel() -> Any:
        ch = s.ctl.incoming_call()
        ch.ring()
        ch.answer()
        return ch

    from wholecall.controller import Error

    try:
        ch = await s.call_blocking(new_channel)
    except Error as e:
        raise ApiError(503, "Error", str(e)) from None
    if cid in s.calls:
        await s.call_blocking(ch.close)
        raise ApiError(409, "Conflict", f"call {cid!r} already exists")
    token = secrets.token_urlsafe(16) if media != "audiosocket" else ""
    uuids = {"inbound": str(uuid.uuid4()), "outbound": str(uuid.uuid4())} if media == "audiosocket" else {}
    extra: dict[str, Any] = {}
    if media == "audiosocket":
        extra["audiosocket"] = {"host": backend.audiosocket_host(), "port": sp.audiosocket_port,
                                "uuid": uuids["inbound"], "uuid_outbound": uuids["outbound"]}
    else:
        extra["websocket"] = f"{backend.ws_base(sp)}/v1/media/{token}"
        if media == "websocket" and settings["channels"] == 1:
            extra["websocket_outbound"] = f"{backend.ws_base(sp)}/v1/media/{token}/outbound"
    entry = CallEntry(cid, ch, {}, False, shard=sp.index, gen=next(s.adds))
    entry.stream = {"media": media, **extra}
    s.calls[cid] = entry
    sp.calls += 1
    try:
        reply = await backend.request({
            "op": "add", "call": cid, "gen": entry.gen, "kind": media, "token": token, "uuids": uuids, **settings,
            "legs": {"inbound": {"slot": ch.inbound.slot}, "outbound": {"slot": ch.outbound.slot}},
        }, sp=sp)
    except ApiError:
        # No answer in time: it may still add the call, so its slots wait for a remove (`Service.retire`).
        s.calls.pop(cid, None)
        sp.calls -= 1
        s._spawn(s.retire(cid, ch, lambda: s._remove_from(entry), lambda: s._media_alive(entry)))
        raise
    except BaseException:
        s.calls.pop(cid, None)
        sp.calls -= 1
        await s.call_blocking(ch.close)
        raise
    if not reply.get("ok"):
        s.calls.pop(cid, None)
        sp.calls -= 1
        await s.call_blocking(ch.close)
        raise ApiError(503, reply.get("error", "Error"), reply.get("detail", "the stream ingest refused the call"))
    log.info("call %s created as Channel(%d), %s stream on stream process %d", cid, ch.id, media, sp.index, extra={"call": cid})
    view = s.call_view(entry)
    return web.json_response({"id": view["id"], "state": view["state"], "legs": view["legs"], **extra}, status=201)


def legs_view(entry: Any) -> dict:
    """What GET shows per leg of a streamed call: where its audio comes from."""
    media = entry.stream["media"]
    if media == "audiosocket":
        a = entry.stream["audiosocket"]
        return {"inbound": {"audiosocket": {"uuid": a["uuid"]}}, "outbound": {"audiosocket": {"uuid": a["uuid_outbound"]}}}
    url = entry.stream["websocket"]
    return {"inbound": {media: url}, "outbound": {media: entry.stream.get("websocket_outbound", url)}}
