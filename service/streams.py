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

STREAM_MEDIA = ("twilio", "websocket", "audiosocket")
FIELDS = {"twilio": {"media", "id"}, "websocket": {"media", "id", "channels", "encoding", "rate"},
          "audiosocket": {"media", "id"}}


class StreamBackend:
    """The stream ingest process and its control channel (request/reply plus events)."""

    def __init__(self, service: Any, api_error: type[Exception], entry_type: type) -> None:
        """`api_error` and `entry_type` are the service's ApiError and CallEntry (passed in, as
        this module sits below app.py)."""
        self.s = service
        self.api_error = api_error
        self.entry_type = entry_type
        self.sock: zmq.asyncio.Socket | None = None
        self.proc: subprocess.Popen | None = None
        self.websocket_port = 0
        self.audiosocket_port = 0
        self._reqs = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self._hello: asyncio.Future | None = None

    async def start(self, arena_path: str) -> None:
        s = self.s
        cfg = s.cfg
        loop = asyncio.get_running_loop()
        endpoint = f"ipc://{os.path.join(s.run_dir, 'streams')}"
        sock = s.zctx.socket(zmq.PAIR)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(endpoint)
        self.sock = sock
        self._hello = loop.create_future()
        s._spawn(self._read())
        cmd = [sys.executable, "-P", "-m", "wholecall.service.stream_proc", "--arena", arena_path,
               "--control", endpoint, "--reorder-ms", str(cfg.reorder_ms), "--media-timeout", str(cfg.media_timeout),
               "--websocket", cfg.websocket_listen or f"{cfg.host}:0",
               "--audiosocket", cfg.audiosocket_listen or f"{cfg.host}:0", "--parent", str(os.getpid())]
        self.proc = await loop.run_in_executor(
            s.pool, lambda: subprocess.Popen(cmd, cwd=s.run_dir, stdin=subprocess.DEVNULL, close_fds=True))
        hello = await asyncio.wait_for(self._hello, 30)
        self.websocket_port = hello["websocket_port"]
        self.audiosocket_port = hello["audiosocket_port"]
        announce(self.s.cfg.log_format, f"wholecall serve: streams: WebSocket {self.ws_base()}  AudioSocket "
                 f"{self.audiosocket_host()}:{self.audiosocket_port}", "streams_listening",
                 websocket=self.ws_base(), audiosocket=f"{self.audiosocket_host()}:{self.audiosocket_port}")

    def ws_base(self) -> str:
        cfg = self.s.cfg
        if cfg.websocket_url:
            return cfg.websocket_url.rstrip("/")
        host = (cfg.websocket_listen.rpartition(":")[0] if cfg.websocket_listen else "") or cfg.host
        if host in ("0.0.0.0", "::", "[::]"):
            host = cfg.rtp_host if cfg.rtp_host not in ("0.0.0.0", "::") else "127.0.0.1"
        return f"ws://{host}:{self.websocket_port}"

    def audiosocket_host(self) -> str:
        cfg = self.s.cfg
        host = (cfg.audiosocket_listen.rpartition(":")[0] if cfg.audiosocket_listen else "") or cfg.host
        return cfg.rtp_host if host in ("0.0.0.0", "::", "[::]") else host.strip("[]")

    async def _read(self) -> None:
        assert self.sock is not None
        while True:
            try:
                raw = await self.sock.recv()
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
                if self._hello is not None and not self._hello.done():
                    self._hello.set_result(msg)
            elif entry is None:
                continue
            elif op == "digit":
                entry.digits.append({"digit": msg["digit"], "leg": msg["leg"], "position": msg["position"],
                                     "volume": msg["volume"]})
            elif op == "hangup" and not entry.hung_up:
                log.info("call %s: stream ended (%s): hanging up", entry.id, msg["reason"])
                self.s._spawn(self.s._hang_up(entry, msg["reason"]))
            elif op == "media_timeout" and not entry.hung_up:
                log.info("call %s: no media for %.1f s: hanging up", entry.id, msg["idle_s"])
                self.s._spawn(self.s._hang_up(entry, "media_timeout"))

    async def request(self, msg: dict, timeout: float = 10.0) -> dict:
        ApiError = self.api_error
        if self.sock is None:
            raise ApiError(503, "Unavailable", "the stream ingest is not running")
        req = next(self._reqs)
        fut = asyncio.get_running_loop().create_future()
        self._waiting[req] = fut
        msg["req"] = req
        await self.sock.send(msgpack.packb(msg))
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            self._waiting.pop(req, None)
            raise ApiError(503, "Unavailable", f"the stream ingest did not answer {msg['op']} in {timeout:.0f} s") from None

    async def counters(self) -> dict:
        """The stream process's totals (messages, connections, errors, refused connections)."""
        try:
            return (await self.request({"op": "stats", "call": ""}, 2.0)).get("ingest", {})
        except Exception as e:  # noqa: BLE001  (a health check reports, it does not fail)
            return {"error": str(e)}

    def alive(self) -> bool:
        return self.proc is None or self.proc.poll() is None

    async def close(self) -> None:
        if self.sock is not None and self.proc is not None and self.proc.poll() is None:
            try:
                await self.sock.send(msgpack.packb({"op": "stop", "req": 0}))
            except zmq.ZMQError:
                pass
        if self.proc is not None:
            try:
                await asyncio.get_running_loop().run_in_executor(None, self.proc.wait, 3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.sock is not None:
            self.sock.close(0)


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
        extra["audiosocket"] = {"host": backend.audiosocket_host(), "port": backend.audiosocket_port,
                                "uuid": uuids["inbound"], "uuid_outbound": uuids["outbound"]}
    else:
        extra["websocket"] = f"{backend.ws_base()}/v1/media/{token}"
        if media == "websocket" and settings["channels"] == 1:
            extra["websocket_outbound"] = f"{backend.ws_base()}/v1/media/{token}/outbound"
    entry = CallEntry(cid, ch, {}, False)
    entry.stream = {"media": media, **extra}
    s.calls[cid] = entry
    try:
        reply = await backend.request({
            "op": "add", "call": cid, "kind": media, "token": token, "uuids": uuids, **settings,
            "legs": {"inbound": {"slot": ch.inbound.slot}, "outbound": {"slot": ch.outbound.slot}},
        })
    except BaseException:
        s.calls.pop(cid, None)
        await s.call_blocking(ch.close)
        raise
    if not reply.get("ok"):
        s.calls.pop(cid, None)
        await s.call_blocking(ch.close)
        raise ApiError(503, reply.get("error", "Error"), reply.get("detail", "the stream ingest refused the call"))
    log.info("call %s created as Channel(%d), %s stream", cid, ch.id, media)
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
