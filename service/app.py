"""The service process: the Controller, the ingest processes, and the HTTP/JSON API over them.

Issue 22's contract, verbatim: routes, field names and status codes are what acceptance
tests use. The API maps onto the Python API one to one (`CallChannel`,
`WholeCallRecorder.start/stop/wait_until_finished`), and the Python exceptions become
``{"error": <class name>, "detail": <its message>}``: `Hangup` -> 409, `Error` -> 409 when
already recording, else 422; an unknown call -> 404.

Media: N ingest processes (`--ingest-procs`), each owning a contiguous sub-range of the RTP
ports and the rings of the legs it was given (one producer per ring); a call's two legs go
to the one with the fewest calls, and every later message about the call goes there.

Threads: the aiohttp event loop never blocks. Every Controller call that can wait
(start, stop, hang-up, close) runs on `self.pool`; waits on a recording's end are polled
from the loop, so a thousand `?wait=` requests hold no thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import hashlib
import hmac
import itertools
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import zmq
import zmq.asyncio
from aiohttp import ClientError, ClientPayloadError, ClientSession, ClientTimeout, web
from yarl import URL

from wholecall.controller import AESCBCCipher, CallChannel, Controller, Error, Hangup
from wholecall.controller.controller import make_run_dir, sweep_run_dirs
from wholecall.controller.errors import Unavailable
from wholecall.controller.recorder import JobResult
from wholecall.controller.states import RecorderState
from wholecall.ingest.payload import PayloadError, PayloadTypes
from wholecall.ingest.srtp import SrtpError, parse_sdes

from .config import ServeConfig, ingest_count, port_shards, stream_count
from .ingest_totals import merge_replies
from .logs import CALL_NAMES, announce
from .metrics import CONTENT_TYPE, INGEST_TOTALS_TIMEOUT_S, Metrics
from .openapi import document
from .streams import STREAM_MEDIA, StreamBackend, await_hellos, create_stream_call, legs_view, send_within

log = logging.getLogger("wholecall.service")

START_ARGS = ("filename", "file_format", "rate", "max_bytes", "milliseconds_max_silence",
              "milliseconds_initial_silence", "dtmf_elim", "recording_mode", "cipher", "min_seconds")
CALL_ID = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")
WEBHOOK_DELAYS = (0.5, 1, 2, 4, 8, 16)
"""Seconds between webhook attempts (after the first); then the event is given up and logged."""
SERVE_RUN_PREFIX = "wholecall-serve-"
"""Prefix of the service's run directory (control sockets) in $TMPDIR."""
HUNG_UP_KEEP_S = 600.0
HEALTH_ASK_S = 2.0
"""How long /healthz waits for each ingest process (the probes allow 3 s; they run at once)."""
RETIRE_TRIES = 20
RETIRE_RETRY_S = 5.0
"""A media process that did not answer a call's add or remove is asked again this often and
this many times (each try waits up to 10 s: about 5 minutes) before the call's ring slots are
given up for lost."""
"""A hung-up call stays readable (GET) this long, then it is forgotten."""
POLL_S = 0.05
"""How often a waiting request looks at its recorder."""


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail


def _error(status: int, error: str, detail: str) -> web.Response:
    return web.json_response({"error": error, "detail": detail}, status=status)


@dataclass(eq=False)
class IngestShard:
    """One ingest process: its control socket, its port sub-range and the calls it serves."""

    index: int
    low: int
    high: int
    sock: zmq.asyncio.Socket
    hello: asyncio.Future
    proc: subprocess.Popen | None = None
    calls: int = 0


@dataclass(eq=False)
class CallEntry:
    id: str
    channel: CallChannel
    ports: dict[str, int]
    srtp: bool
    shard: int = 0
    digits: list[dict] = field(default_factory=list)
    webhook: str | None = None
    watched: int = 0
    """Webhooks still to deliver for this call's recordings: it is not forgotten before."""
    starts: int = 0
    ends: dict[int, asyncio.Future] = field(default_factory=dict)
    """Start number -> the future its recording's end resolves (`WholeCallRecorder.on_end`)."""
    gen: int = 0
    """The number of the add that gave it media: removes name it, so that a late one for an
    earlier call of the same id leaves this one alone."""
    hung_up: bool = False
    hangup_reason: str = ""
    media: dict = field(default_factory=dict)
    stream: dict = field(default_factory=dict)
    """Streamed media (service/streams.py): its kind and URL or UUIDs; empty for RTP."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    start_lock: threading.Lock = field(default_factory=threading.Lock)
    """Held by an API thread from setting the recorder's per-recording attributes to its start()."""


class Service:
    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg
        #: The recordings directory as the recorder resolves names in it (symlinks followed).
        self.root_real = os.path.realpath(cfg.recordings_dir)
        self.ctl: Controller | None = None
        self.calls: dict[str, CallEntry] = {}
        self.ready = False
        self.draining = False
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="wholecall-api")
        # Its control sockets, in a directory this process holds locked: one a SIGKILLed serve
        # left is removed by the next one's start (`sweep_run_dirs`), however its PID reads.
        sweep_run_dirs(prefix=SERVE_RUN_PREFIX)
        self.run_dir, self._run_lock = make_run_dir(SERVE_RUN_PREFIX)
        self.zctx = zmq.asyncio.Context()
        self.shards: list[IngestShard] = []
        self.streams: StreamBackend | None = None
        #: The stream ingest's message and error totals as of the last scrape (service/metrics.py).
        self.websocket_stats: dict[str, int] = {}
        self._reqs = itertools.count(1)
        self.adds = itertools.count(1)  # numbers every add to a media process (`CallEntry.gen`)
        self._waiting: dict[int, asyncio.Future] = {}
        self._tasks: set[asyncio.Task] = set()
        self.webhooks_sent = 0
        self.webhooks_failed = 0
        self.http: ClientSession | None = None
        self.stopped = asyncio.Event()
        self.startup_error: BaseException | None = None
        self.metrics = Metrics(self)

    # -- process tree -----------------------------------------------------------------------

    async def start_backend(self) -> None:
        """Workers, arena, ingest: /healthz says 503 until every one has said hello."""
        loop = asyncio.get_running_loop()
        try:
            self.ctl = Controller(workers=self.cfg.workers, recordings_dir=self.cfg.recordings_dir,
                                  max_channels=self.cfg.max_calls, arena_dir=self.cfg.arena_dir,
                                  worker_priority=self.cfg.worker_priority, sync_on_stop=self.cfg.sync_on_stop)
            await loop.run_in_executor(self.pool, self.ctl.start)
            assert self.ctl.arena is not None
            for k, (low, high) in enumerate(port_shards(self.cfg.rtp_low, self.cfg.rtp_high, ingest_count(self.cfg))):
                endpoint = f"ipc://{os.path.join(self.run_dir, f'ingest-{k}')}"
                sock = self.zctx.socket(zmq.PAIR)
                sock.setsockopt(zmq.LINGER, 0)
                sock.bind(endpoint)
                shard = IngestShard(k, low, high, sock, loop.create_future())
                self.shards.append(shard)
                self._spawn(self._read_ingest(shard))
                cmd = [sys.executable, "-P", "-m", "wholecall.service.ingest_proc", "--arena", self.ctl.arena.path,
                       "--control", endpoint, "--reorder-ms", str(self.cfg.reorder_ms),
                       "--media-timeout", str(self.cfg.media_timeout), "--parent", str(os.getpid())]
                shard.proc = await loop.run_in_executor(
                    self.pool, lambda cmd=cmd: subprocess.Popen(cmd, cwd=self.run_dir, stdin=subprocess.DEVNULL,
                                                                close_fds=True))
            await await_hellos("ingest process", [(sh.hello, sh.proc) for sh in self.shards], 60)
            self.streams = StreamBackend(self, ApiError, CallEntry)
            await self.streams.start(self.ctl.arena.path, stream_count(self.cfg))
            self.http = ClientSession(timeout=ClientTimeout(total=5))
            self._spawn(self._watch_ingest())
            self.ready = True
            log.info("service ready: %d workers, ingest pids %s", self.ctl.config.workers, self.ingest_pids)
        except (RuntimeError, OSError, Error) as e:  # expected failures: said in one line, no traceback
            log.error("start-up failed: %s", e)
            self.startup_error = e
            self.stopped.set()
        except BaseException as e:
            log.exception("start-up failed")
            self.startup_error = e
            self.stopped.set()

    def _spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @property
    def ingest_pids(self) -> list[int]:
        return [sh.proc.pid for sh in self.shards if sh.proc is not None]

    async def _watch_ingest(self) -> None:
        while not self.draining:
            await asyncio.sleep(0.5)
            if self.streams is not None and not self.draining:
                for sp in self.streams.reap():
                    self._stream_proc_exited(sp)
                if not self.streams.alive():
                    log.error("no stream ingest process is left; shutting down")
                    self.ready = False
                    self.stopped.set()
                    return
            for sh in self.shards:
                if sh.proc is not None and sh.proc.poll() is not None and not self.draining:
                    log.error("ingest process %d exited with %s; shutting down", sh.index, sh.proc.returncode)
                    self.ready = False
                    self.stopped.set()
                    return

    def _stream_proc_exited(self, sp: Any) -> None:
        """A stream process exited: only its calls end (their rings get no more audio; each
        file ends final, cause HANGUP); the other processes' calls go on."""
        mine = [e for e in self.calls.values() if e.stream and e.shard == sp.index and not e.hung_up]
        log.error("stream ingest process %d (pid %d) exited with %s; hanging up its %d calls", sp.index,
                  sp.proc.pid, sp.proc.returncode, len(mine))
        for e in mine:
            self._spawn(self._hang_up(e, "stream_ingest_exited"))

    async def _read_ingest(self, shard: IngestShard) -> None:
        while True:
            try:
                raw = await shard.sock.recv()
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
            if op == "hello":
                if not shard.hello.done():
                    shard.hello.set_result(msg)
            elif op == "digit":
                entry = self.calls.get(msg["call"])
                if entry is not None:
                    entry.digits.append({"digit": msg["digit"], "leg": msg["leg"], "position": msg["position"],
                                         "volume": msg["volume"]})
            elif op == "media_timeout":
                entry = self.calls.get(msg["call"])
                if entry is not None and not entry.hung_up:
                    log.info("call %s: no media for %.1f s: hanging up", entry.id, msg["idle_s"], extra={"call": entry.id})
                    self._spawn(self._hang_up(entry, "media_timeout"))

    def pick_shard(self) -> IngestShard:
        """The ingest process for a new call: the one serving the fewest calls."""
        return min(self.shards, key=lambda sh: (sh.calls, sh.index))

    async def ingest(self, msg: dict, timeout: float = 10.0, shard: IngestShard | None = None) -> dict:
        """One request to an ingest process: `shard`, else the one serving ``msg["call"]``."""
        if shard is None:
            entry = self.calls.get(msg.get("call", ""))
            if entry is not None and entry.stream and self.streams is not None:  # a streamed call's media process
                return await self.streams.request(msg, timeout)
            if self.shards:
                shard = self.shards[entry.shard if entry is not None else 0]
        if shard is None or (shard.proc is not None and shard.proc.poll() is not None):
            raise ApiError(503, "Unavailable", "the media ingest is not running")
        req = next(self._reqs)
        fut = asyncio.get_running_loop().create_future()
        self._waiting[req] = fut
        msg["req"] = req
        try:
            # Bounded too: a PAIR socket whose peer is gone (an ingest killed with the whole
            # process group on SIGTERM) blocks a send for ever, and the drain with it.
            if not await send_within(shard.sock, msgpack.packb(msg), timeout):
                raise TimeoutError
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise ApiError(503, "Unavailable", f"the media ingest did not answer {msg['op']} in {timeout:.0f} s") from None
        finally:
            self._waiting.pop(req, None)

    async def retire(self, cid: str, channel: CallChannel, remove: Callable[[], Awaitable[Any]],
                     alive: Callable[[], bool]) -> None:
        """Close `channel` (its ring slots back to the arena) only once its media process has
        let go of `cid`, or is gone: a process that missed its deadline for an add or a remove
        may still do it, and then writes the call's legs into slots a later call was given (a
        call recorded another call's audio so, a reviewer's find). Meanwhile the slots stay
        taken; a process that never answers costs two slots, never another call's audio."""
        for _ in range(RETIRE_TRIES):
            try:
                reply = await remove()
                if reply.get("ok", True) is not False:  # a remove that failed there is asked again
                    break
                await asyncio.sleep(RETIRE_RETRY_S)
            except ApiError:
                if not alive():
                    break
                await asyncio.sleep(RETIRE_RETRY_S)
        else:
            log.error("call %s: its media process never let go of it; its ring slots stay taken", cid,
                      extra={"call": cid})
            return
        await self.call_blocking(channel.close)
        CALL_NAMES.names.pop(channel.id, None)

    async def call_blocking(self, fn: Any, *args: Any, **kw: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, lambda: fn(*args, **kw))

    async def drain(self) -> None:
        """SIGTERM/SIGINT: no new calls, every running recording stopped (ABORTED), then everything down."""
        if self.draining:
            return
        self.draining = True
        log.info("draining: %d calls", len(self.calls))
        running = [e for e in self.calls.values()
                   if not e.hung_up and e.channel.WholeCallRecorder.state() is RecorderState.RECORDING]
        await asyncio.gather(*(self._stop_quietly(e) for e in running))
        for e in list(self.calls.values()):
            if not e.hung_up:
                try:
                    e.media = (await self.ingest({"op": "remove", "call": e.id, "flush": False, "gen": e.gen},
                                                 2.0)).get("media", {})
                except ApiError:
                    pass
        await self._fire_pending_webhooks(deadline=time.monotonic() + 2.0)
        self.stopped.set()

    async def _stop_quietly(self, e: CallEntry) -> None:
        try:
            await self.call_blocking(e.channel.WholeCallRecorder.stop)
        except (Error, Hangup) as exc:
            log.warning("call %s: stop during drain: %s", e.id, exc, extra={"call": e.id})

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        for sh in self.shards:
            if sh.proc is not None and sh.proc.poll() is None:
                await send_within(sh.sock, msgpack.packb({"op": "stop", "req": 0}), 1.0)
        for sh in self.shards:
            if sh.proc is not None:
                try:
                    await asyncio.get_running_loop().run_in_executor(None, sh.proc.wait, 3)
                except subprocess.TimeoutExpired:
                    sh.proc.kill()
                    sh.proc.wait()
        if self.streams is not None:
            await self.streams.close()
        if self.ctl is not None:
            await self.call_blocking(self.ctl.close)
        for sh in self.shards:
            sh.sock.close(0)
        self.zctx.term()
        if self.http is not None:
            await self.http.close()
        self.pool.shutdown(wait=False)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        os.close(self._run_lock)

    # -- webhooks -----------------------------------------------------------------------------

    def _forget(self, e: CallEntry) -> None:
        if self.calls.get(e.id) is e and not e.watched:
            del self.calls[e.id]
            CALL_NAMES.names.pop(e.channel.id, None)

    def recording_ended(self, entry: CallEntry, start: int, loop: asyncio.AbstractEventLoop,
                        result: JobResult) -> None:
        """`WholeCallRecorder.on_end` of the recording `entry` started as number `start`
        (a finisher thread): its result goes to the future its webhook waits on, if any."""
        def resolve() -> None:
            fut = entry.ends.pop(start, None)
            if fut is not None and not fut.done():
                fut.set_result(result)
        if not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing waits
                loop.call_soon_threadsafe(resolve)

    def _watch_recording(self, entry: CallEntry, url: str, ended: asyncio.Future, filename: str) -> None:
        entry.watched += 1
        self._spawn(self._await_end_and_notify(entry, url, ended, filename)).set_name(f"webhook-{entry.id}")

    async def _await_end_and_notify(self, entry: CallEntry, url: str, ended: asyncio.Future, filename: str) -> None:
        """Wait for this recording's own end (not a state that a next start may hide) and tell `url`."""
        try:
            result = await ended
            await self._notify(entry, url, result, filename)
        finally:
            entry.watched -= 1
            if entry.hung_up and not entry.watched:  # its forgetting was put off for this webhook
                asyncio.get_running_loop().call_later(HUNG_UP_KEEP_S, self._forget, entry)

    async def _fire_pending_webhooks(self, deadline: float) -> None:
        pending = [t for t in self._tasks if t.get_name().startswith("webhook")]
        if pending:
            await asyncio.wait(pending, timeout=max(0.0, deadline - time.monotonic()))

    async def _notify(self, entry: CallEntry, url: str, res: JobResult, filename: str) -> None:
        digest = ""
        if res.path and not res.discarded and os.path.exists(res.path):
            digest = await self.call_blocking(_sha256, res.path)
        body = {"call": entry.id, "cause": res.cause.value, "filename": filename,
                "seconds": res.duration_s, "bytes": res.bytes, "sha256": digest}
        assert self.http is not None
        about = {"call": entry.id}
        attempt = 0
        try:
            for attempt, delay in enumerate((0.0,) + WEBHOOK_DELAYS):
                if delay:
                    await asyncio.sleep(delay)
                try:
                    async with self.http.post(url, json=body) as r:
                        if r.status < 300:
                            self.webhooks_sent += 1
                            return
                        why = f"HTTP {r.status}"
                except (TimeoutError, ClientError, OSError) as e:  # refused, timeout, DNS: "try again later"
                    why = f"{type(e).__name__}: {e}"
                log.warning("webhook %s for call %s, attempt %d: %s", url, entry.id, attempt + 1, why, extra=about)
        except asyncio.CancelledError:  # the service stops: the event is lost, and says so
            self.webhooks_failed += 1
            log.error("webhook %s for call %s given up after %d attempts: the service is stopping", url, entry.id,
                      attempt + 1, extra=about)
            raise
        self.webhooks_failed += 1
        log.error("webhook %s for call %s given up after %d attempts", url, entry.id, len(WEBHOOK_DELAYS) + 1,
                  extra=about)

    # -- sidecars -------------------------------------------------------------------------------

    def sidecar_extra(self, e: CallEntry, loop: asyncio.AbstractEventLoop) -> dict:
        """What the service adds to a recording's sidecar (called on a controller finisher
        thread, never on the event loop): the call id, RFC 4733 digits, per-leg media
        figures (the last ones the ingest gave, asked for now if the call is still up)."""
        media = e.media
        if not media and not e.hung_up and self.shards and not loop.is_closed():
            try:
                reply = asyncio.run_coroutine_threadsafe(self.ingest({"op": "stats", "call": e.id}, 2.0),
                                                         loop).result(3.0)
                media = reply.get("media", {})
            except Exception as exc:  # noqa: BLE001 - the sidecar is written without them
                log.warning("call %s: no media figures for the sidecar: %s", e.id, exc, extra={"call": e.id})
                media = {}
        legs = {k: _leg_media(v) for k, v in (media or {}).items() if k in ("inbound", "outbound") and isinstance(v, dict)}
        digits = [{"digit": d["digit"], "leg": d["leg"], "position": d["position"]} for d in list(e.digits)]
        return {"call_id": e.id, "media": legs or None, "digits": digits}

    # -- calls ----------------------------------------------------------------------------------

    def entry(self, request: web.Request) -> CallEntry:
        cid = request.match_info["id"]
        e = self.calls.get(cid)
        if e is None:
            raise ApiError(404, "NotFound", f"no call {cid!r}")
        return e

    def recording_view(self, e: CallEntry, cause: str | None = None) -> dict:
        rec = e.channel.WholeCallRecorder
        state = rec.state()
        res = rec.last_result
        done = state is not RecorderState.RECORDING and res is not None
        seconds, nbytes = (res.duration_s, res.bytes) if done else rec.progress()  # running: so far
        path = rec.path
        return {
            "state": state.value,
            "cause": cause or rec.cause().value,
            # The recorder's own: a failed start's view names its file, not the last one that ran.
            "filename": os.path.relpath(path, self.root_real) if path else None,
            "seconds": round(seconds, 3) if not done else seconds,
            "bytes": nbytes,
            "paused": rec.paused,
            **({"discarded": res.discarded, "audio_detected": res.audio_detected,
                "sidecar": os.path.relpath(res.sidecar, self.root_real) if res.sidecar else None}
               if done else {}),
            **({"error": res.error} if done and res.error else {}),
        }

    def call_view(self, e: CallEntry) -> dict:
        host = self.cfg.rtp_host
        return {
            "id": e.id,
            "state": e.channel.state().value,
            "legs": legs_view(e) if e.stream else {name: {"rtp": {"host": host, "port": port}} for name, port in e.ports.items()},
            "recording": self.recording_view(e),
            "digits": "".join(d["digit"] for d in e.digits),
            "digit_events": e.digits,
            **({"hangup_reason": e.hangup_reason} if e.hung_up else {}),
        }

    async def _remove_from(self, e: CallEntry) -> dict:
        """Remove `e` from the very process that served it (not by looking its id up: once
        forgotten, or its id reused, that finds another)."""
        msg = {"op": "remove", "call": e.id, "flush": False, "gen": e.gen}
        if e.stream:
            if self.streams is None:
                return {}
            return await self.streams.request(msg, sp=self.streams.procs[e.shard])
        return await self.ingest(msg, shard=self.shards[e.shard])

    def _media_alive(self, e: CallEntry) -> bool:
        """Whether the process that writes `e`'s legs is still running."""
        if e.stream:
            return self.streams is not None and self.streams.procs[e.shard].alive()
        proc = self.shards[e.shard].proc if self.shards else None
        return proc is not None and proc.poll() is None

    async def _hang_up(self, e: CallEntry, reason: str) -> dict:
        async with e.lock:
            if not e.hung_up:
                e.hung_up = True
                e.hangup_reason = reason
                retire = False
                try:
                    # The last window of audio into the rings first, then the hang-up places the
                    # end after it; the ingest writes nothing to these slots afterwards, so the
                    # channel may give them back.
                    reply = await self.ingest({"op": "remove", "call": e.id, "flush": True, "gen": e.gen})
                    e.media = reply.get("media", {})
                except ApiError as exc:
                    retire = self._media_alive(e)
                    if retire:
                        raise
                    log.warning("call %s: %s", e.id, exc.detail, extra={"call": e.id})  # its process is gone: nothing to flush
                finally:
                    if e.stream and self.streams is not None:
                        self.streams.procs[e.shard].calls -= 1
                    else:
                        self.shards[e.shard].calls -= 1
                    if retire:  # the call ends now; its slots once its media process lets go
                        await self.call_blocking(e.channel.hang_up)
                        self._spawn(self.retire(e.id, e.channel, lambda: self._remove_from(e),
                                                lambda: self._media_alive(e)))
                    else:
                        await self.call_blocking(e.channel.close)
                    asyncio.get_running_loop().call_later(HUNG_UP_KEEP_S, self._forget, e)
        return self.recording_view(e)


def _leg_media(counters: dict) -> dict:
    """The sidecar's per-leg figures from the ingest's counters (concealment is not counted there)."""
    return {"packets": counters.get("packets"), "lost": counters.get("lost"), "late": counters.get("late"),
            "concealed_samples": counters.get("concealed_samples")}


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _object_or_absent(body: dict, key: str) -> object:
    """`body[key]`, {} when absent or null: `or {}` let 0, false, "" and [] pass as "absent"."""
    value = body.get(key)
    return {} if value is None else value


def _webhook_problem(url: object) -> str:
    """Why `url` cannot take a webhook ("" if it can): checked when the recording starts, not
    found out by 31 s of retries once it ends."""
    if not isinstance(url, str) or not re.match(r"^https?://", url):
        return f"webhook must be an http:// or https:// URL, got {url!r}"
    try:
        u = URL(url)
        port = u.port
    except ValueError as e:
        return f"webhook {url!r} is not a usable URL: {e}"
    if not u.host:
        return f"webhook {url!r} has no host"
    if port is not None and not 0 < port < 65536:
        return f"webhook {url!r}: port {port} is out of range"
    return ""


async def _body(request: web.Request) -> dict:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except (ConnectionResetError, ClientPayloadError) as e:  # the client went away mid-body: nothing to answer
        raise web.HTTPBadRequest(text=f"request body incomplete: {e}") from None
    except ValueError as e:
        raise ApiError(422, "Error", f"request body is not valid JSON: {e}") from None
    except RecursionError:
        raise ApiError(422, "Error", "request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise ApiError(422, "Error", f"request body must be a JSON object, got {type(body).__name__}")
    return body


def _exception(exc: BaseException) -> ApiError:
    """The Python API's exceptions as the HTTP contract wants them."""
    if isinstance(exc, Hangup):
        return ApiError(409, "Hangup", str(exc))
    if isinstance(exc, Error):
        text = str(exc)
        return ApiError(409 if "already RECORDING" in text else 422, "Error", text)
    raise exc


# -- routes --------------------------------------------------------------------------------------

routes = web.RouteTableDef()


def svc(request: web.Request) -> Service:
    return request.app["service"]


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    s = svc(request)
    stats = s.ctl.stats() if s.ctl is not None and s.ctl.supervisor is not None else {"workers": []}
    body = {"status": "ok" if s.ready and not s.draining else ("draining" if s.draining else "starting"),
            "workers": stats["workers"], "calls": len([e for e in s.calls.values() if not e.hung_up]),
            "ingest_pid": s.ingest_pids[0] if s.ingest_pids else None, "ingest_pids": s.ingest_pids,
            "streams_pid": s.streams.pids[0] if s.streams and s.streams.pids else None,
            "streams_pids": s.streams.pids if s.streams else []}
    problems = []
    if s.ready and not s.draining:
        # Up is not enough: a service whose media processes do not answer, or that has no
        # worker left, fails every call while it would say ok (a reviewer's find).
        if not any(w["alive"] for w in stats["workers"]):
            problems.append("no worker is alive")

        async def ask(shard: IngestShard) -> str:
            try:  # bounded as a whole: the send and the reply each have the timeout of their own
                await asyncio.wait_for(s.ingest({"op": "stats", "call": ""}, HEALTH_ASK_S, shard=shard), HEALTH_ASK_S)
                return ""
            except ApiError as e:
                return f"ingest {shard.index}: {e.detail}"
            except TimeoutError:
                return f"ingest {shard.index}: did not answer in {HEALTH_ASK_S:g} s"
        async def streams() -> dict | None:
            return await s.streams.counters() if s.streams is not None else None
        answers, counters = await asyncio.gather(asyncio.gather(*(ask(sh) for sh in s.shards)), streams())
        problems += [p for p in answers if p]
        if counters is not None:
            body["streams"] = counters
            if "error" in counters:
                problems.append(f"a stream process: {counters['error']}")
    if problems:
        body["status"] = "degraded"
        body["problems"] = problems
    return web.json_response(body, status=200 if s.ready and not s.draining and not problems else 503)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    s = svc(request)
    totals = None
    if s.shards and not s.draining:
        async def ask(shard: IngestShard) -> dict:
            try:
                return await s.ingest({"op": "totals"}, INGEST_TOTALS_TIMEOUT_S, shard=shard)
            except ApiError:
                return {}  # the families say so: wholecall_ingest_up 0
        totals = merge_replies(list(await asyncio.gather(*(ask(sh) for sh in s.shards))))
    if s.streams is not None and not s.draining:
        # The stream ingest's totals (Twilio, L16 WebSocket, AudioSocket): messages and
        # failed messages or connections feed the wholecall_websocket_* families.
        st = await s.streams.counters()
        s.websocket_stats = {"messages": st.get("messages", 0), "errors": st.get("errors", 0) + st.get("refused", 0)}
    return web.Response(body=s.metrics.render(totals), headers={"Content-Type": CONTENT_TYPE})


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(document())


@routes.post("/v1/calls")
async def create_call(request: web.Request) -> web.Response:
    s = svc(request)
    if s.draining or not s.ready:
        raise ApiError(503, "Unavailable", "the service is " + ("shutting down" if s.draining else "starting"))
    body = await _body(request)
    streamed = body.get("media") in STREAM_MEDIA
    unknown = set(body) - {"media", "id", "rtp"}
    if unknown and not streamed:
        raise ApiError(422, "Error", f"unknown field(s): {', '.join(sorted(unknown))}")
    if body.get("media") != "rtp" and not streamed:
        raise ApiError(422, "Error", f"media must be \"rtp\", \"twilio\", \"websocket\" or \"audiosocket\", "
                                     f"got {body.get('media')!r}")
    cid = body.get("id")
    if cid is None:
        cid = uuid.uuid4().hex
    if not isinstance(cid, str) or not CALL_ID.match(cid) or cid in (".", ".."):
        raise ApiError(422, "Error", f"id must be 1-128 characters of A-Z a-z 0-9 . _ : @ -, and not . or .. "
                                     f"(a URL path cannot name those), got {cid!r}")
    if cid in s.calls:
        raise ApiError(409, "Conflict", f"call {cid!r} already exists")
    if streamed:
        return await create_stream_call(s, body, cid)
    rtp = _object_or_absent(body, "rtp")
    if not isinstance(rtp, dict) or set(rtp) - {"payload_types", "srtp"}:
        raise ApiError(422, "Error", "rtp must be an object with payload_types and srtp only")
    pts = _object_or_absent(rtp, "payload_types")
    if not isinstance(pts, dict):
        raise ApiError(422, "Error", "rtp.payload_types must be an object of \"PT\": \"NAME/RATE\"")
    try:
        PayloadTypes(pts)
    except PayloadError as e:
        raise ApiError(422, "PayloadError", str(e)) from None
    srtp = _object_or_absent(rtp, "srtp")
    if not isinstance(srtp, dict) or set(srtp) - {"inbound", "outbound"}:
        raise ApiError(422, "Error", "rtp.srtp must be an object with inbound and/or outbound")
    for leg, params in srtp.items():
        if not isinstance(params, dict):
            raise ApiError(422, "SrtpError", f"rtp.srtp.{leg} must be an object with suite and key")
        try:
            parse_sdes(params)
        except SrtpError as e:
            raise ApiError(422, "SrtpError", f"rtp.srtp.{leg}: {e}") from None
    assert s.ctl is not None

    def new_channel() -> CallChannel:
        ch = s.ctl.incoming_call()
        CALL_NAMES.names[ch.id] = cid  # the call id on the channel's log lines
        ch.ring()
        ch.answer()
        return ch

    try:
        ch = await s.call_blocking(new_channel)
    except Error as e:
        raise ApiError(503, "Error", str(e)) from None
    if cid in s.calls:  # raced with a twin request while the channel was made
        await s.call_blocking(ch.close)
        CALL_NAMES.names.pop(ch.id, None)
        raise ApiError(409, "Conflict", f"call {cid!r} already exists")
    shard = s.pick_shard()
    placeholder = CallEntry(cid, ch, {}, bool(srtp), shard.index, gen=next(s.adds))
    s.calls[cid] = placeholder
    shard.calls += 1
    try:
        reply = await s.ingest({
            "op": "add", "call": cid, "gen": placeholder.gen, "payload_types": {str(k): v for k, v in pts.items()},
            "host": s.cfg.rtp_host, "ports": [shard.low, shard.high],
            "legs": {"inbound": {"slot": ch.inbound.slot, "srtp": srtp.get("inbound")},
                     "outbound": {"slot": ch.outbound.slot, "srtp": srtp.get("outbound")}},
        }, shard=shard)
    except ApiError:
        # No answer in time: the ingest may still add the call, so its slots wait for a remove.
        s.calls.pop(cid, None)
        shard.calls -= 1
        s._spawn(s.retire(cid, ch, lambda: s._remove_from(placeholder), lambda: s._media_alive(placeholder)))
        raise
    except BaseException:
        s.calls.pop(cid, None)
        shard.calls -= 1
        await s.call_blocking(ch.close)
        CALL_NAMES.names.pop(ch.id, None)
        raise
    if not reply.get("ok"):
        s.calls.pop(cid, None)
        shard.calls -= 1
        await s.call_blocking(ch.close)
        CALL_NAMES.names.pop(ch.id, None)
        raise ApiError(503, reply.get("error", "Error"), reply.get("detail", "the ingest refused the call"))
    placeholder.ports = dict(reply["ports"])
    log.info("call %s created as Channel(%d), RTP %s", cid, ch.id, placeholder.ports,
             extra={"event": "call_created", "call": cid, "channel": ch.id, "new": ch.state().value})
    view = s.call_view(placeholder)
    return web.json_response({k: view[k] for k in ("id", "state", "legs")}, status=201)


@routes.get("/v1/calls/{id}")
async def get_call(request: web.Request) -> web.Response:
    s = svc(request)
    e = s.entry(request)
    view = s.call_view(e)
    if e.hung_up:
        view["media"] = e.media
    else:
        reply = await s.ingest({"op": "stats", "call": e.id})
        view["media"] = reply.get("media", {})
        view["kernel"] = {k: v for k, v in reply.get("kernel", {}).items() if k in ("InErrors", "RcvbufErrors", "InDatagrams")}
    return web.json_response(view)


@routes.delete("/v1/calls/{id}")
async def delete_call(request: web.Request) -> web.Response:
    s = svc(request)
    e = s.entry(request)
    result = await s._hang_up(e, "api")
    return web.json_response({"id": e.id, "state": e.channel.state().value, "recording": result})


@routes.post("/v1/calls/{id}/recording")
async def start_recording(request: web.Request) -> web.Response:
    s = svc(request)
    e = s.entry(request)
    if s.draining:
        raise ApiError(503, "Unavailable", "the service is shutting down")
    body = await _body(request)
    unknown = set(body) - set(START_ARGS) - {"webhook"}
    if unknown:
        raise ApiError(422, "Error", f"unknown argument(s): {', '.join(sorted(unknown))}")
    webhook = body.pop("webhook", None)
    if webhook is not None and _webhook_problem(webhook):
        raise ApiError(422, "Error", _webhook_problem(webhook))
    if "filename" not in body:
        raise ApiError(422, "Error", "filename is required")
    rec = e.channel.WholeCallRecorder
    loop = asyncio.get_running_loop()
    e.starts += 1
    number = e.starts
    ended: asyncio.Future = loop.create_future()
    e.ends[number] = ended

    def start() -> bool:
        rec.wait_until_finished(0)  # the spec's Hangup / Error on the call come before argument errors
        args = dict(body)
        c = args.get("cipher")
        if c is not None:
            if not isinstance(c, dict) or set(c) != {"key", "iv"}:
                raise Error("cipher must be {\"key\": hex, \"iv\": hex} or null")
            args["cipher"] = AESCBCCipher(c["key"], c["iv"])
        # The recorder's attributes and the start that takes them, one request at a time: two
        # at once on one call could give the one that starts the other's webhook.
        with e.start_lock:
            rec.min_seconds = args.pop("min_seconds", 0)  # an extension: an attribute, the spec's start() unchanged
            rec.sidecar_source = functools.partial(s.sidecar_extra, e, loop)  # read when the recording ends
            rec.on_end = functools.partial(s.recording_ended, e, number, loop)  # taken by start()
            return rec.start(**args)

    try:
        ok = await s.call_blocking(start)
    except Unavailable as exc:  # not the request's fault: a failed start, as the metric's help says
        e.ends.pop(number, None)
        s.metrics.started(rec, False)
        raise ApiError(503, "Unavailable", str(exc)) from None
    except (Error, Hangup) as exc:
        e.ends.pop(number, None)
        raise _exception(exc) from None
    s.metrics.started(rec, ok)
    if not ok:
        e.ends.pop(number, None)
        res = rec.last_result
        raise ApiError(500, "Error", res.error if res and res.error else "the recording did not start")
    e.webhook = webhook
    if webhook:
        s._watch_recording(e, webhook, ended, body["filename"])
    else:
        e.ends.pop(number, None)
    return web.json_response({"state": rec.state().value, "filename": body["filename"]}, status=201)


@routes.get("/v1/calls/{id}/recording")
async def get_recording(request: web.Request) -> web.Response:
    s = svc(request)
    e = s.entry(request)
    rec = e.channel.WholeCallRecorder
    wait = request.query.get("wait")
    if wait is None:
        return web.json_response(s.recording_view(e))
    try:
        seconds = float(wait)
    except ValueError:
        raise ApiError(422, "Error", f"wait must be a number of seconds, got {wait!r}") from None
    if not seconds >= 0:
        raise ApiError(422, "Error", f"wait must be non-negative, got {wait!r}")
    try:
        await s.call_blocking(rec.wait_until_finished, 0)  # Hangup / Error exactly as the Python API
    except (Error, Hangup) as exc:
        raise _exception(exc) from None
    deadline = time.monotonic() + seconds
    while rec.state() is RecorderState.RECORDING:
        left = deadline - time.monotonic()
        if left <= 0:
            return web.json_response(s.recording_view(e, cause="TIMEOUT"))
        await asyncio.sleep(min(POLL_S, left))
    return web.json_response(s.recording_view(e))


@routes.delete("/v1/calls/{id}/recording")
async def stop_recording(request: web.Request) -> web.Response:
    s = svc(request)
    e = s.entry(request)
    rec = e.channel.WholeCallRecorder
    try:
        ok = await s.call_blocking(rec.stop)
    except (Error, Hangup) as exc:
        raise _exception(exc) from None
    if not ok:
        raise ApiError(504, "Error", "the recording did not end within the stop timeout; it ends later (ABORTED)")
    return web.json_response(s.recording_view(e))


async def _pause_or_resume(request: web.Request, mode: str) -> web.Response:
    """Extension of the spec: `WholeCallRecorder.pause(mode)` / `resume()` (mode "")."""
    s = svc(request)
    e = s.entry(request)
    rec = e.channel.WholeCallRecorder
    try:
        changed = await s.call_blocking(rec.pause, mode) if mode else await s.call_blocking(rec.resume)
    except (Error, Hangup) as exc:
        raise _exception(exc) from None
    return web.json_response({"paused": rec.paused, "changed": changed})


@routes.post("/v1/calls/{id}/recording/pause")
async def pause_recording(request: web.Request) -> web.Response:
    body = await _body(request)
    unknown = set(body) - {"mode"}
    if unknown:
        raise ApiError(422, "Error", f"unknown field(s): {', '.join(sorted(unknown))}")
    mode = body.get("mode", "silence")
    if mode not in ("silence", "skip"):
        raise ApiError(422, "Error", f"mode must be 'silence' or 'skip'; got {mode!r}")
    return await _pause_or_resume(request, mode)


@routes.post("/v1/calls/{id}/recording/resume")
async def resume_recording(request: web.Request) -> web.Response:
    return await _pause_or_resume(request, "")


@web.middleware
async def errors_and_auth(request: web.Request, handler: Any) -> web.StreamResponse:
    s = svc(request)
    if s.cfg.token:
        given = request.headers.get("Authorization", "")
        # surrogateescape: a header that is not UTF-8 (aiohttp decodes it so) is simply wrong, not a 500
        if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), f"Bearer {s.cfg.token}".encode()):
            return web.json_response({"error": "Unauthorized", "detail": "missing or wrong bearer token"},
                                     status=401, headers={"WWW-Authenticate": "Bearer"})
    try:
        return await handler(request)
    except ApiError as e:
        return _error(e.status, e.error, e.detail)
    except web.HTTPException as e:
        if e.status >= 400:
            return _error(e.status, e.reason.replace(" ", ""), e.text or e.reason)
        raise


def make_app(service: Service) -> web.Application:
    app = web.Application(middlewares=[errors_and_auth], client_max_size=1 << 20)
    app["service"] = service
    app.add_routes(routes)
    return app


def make_ops_app(service: Service) -> web.Application:
    """The operations port: /healthz and /metrics only, without the token (probes and
    Prometheus cannot easily carry one; neither route changes anything)."""
    app = web.Application(client_max_size=1024)
    app["service"] = service
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


async def serve(cfg: ServeConfig) -> int:
    service = Service(cfg)
    app = make_app(service)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, cfg.host, cfg.port, reuse_address=True)
    await site.start()
    bound = runner.addresses[0] if runner.addresses else (cfg.host, cfg.port)
    ops_runner = None
    if cfg.ops_host:
        ops_runner = web.AppRunner(make_ops_app(service), access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await ops_runner.setup()
        await web.TCPSite(ops_runner, cfg.ops_host, cfg.ops_port, reuse_address=True).start()
        ops = ops_runner.addresses[0]
        announce(cfg.log_format, f"wholecall serve: operations (healthz, metrics) on http://{ops[0]}:{ops[1]}",
                 "ops_listening")
    announce(cfg.log_format, f"wholecall serve: http://{bound[0]}:{bound[1]}  recordings in {cfg.recordings_dir}  "
             f"RTP on {cfg.rtp_host}:{cfg.rtp_low}-{cfg.rtp_high}", "listening")
    loop = asyncio.get_running_loop()
    signalled = asyncio.Event()
    # SIGHUP too (the terminal of a `wholecall serve &` closing): drained like the others,
    # where its default killed the service with no final sidecars and its arena left behind.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, signalled.set)
    backend = loop.create_task(service.start_backend())
    waiter = loop.create_task(signalled.wait())
    stopped = loop.create_task(service.stopped.wait())
    await asyncio.wait({waiter, stopped}, return_when=asyncio.FIRST_COMPLETED)
    rc = 0
    if signalled.is_set():
        await backend
        await service.drain()
    elif service.startup_error is not None:
        rc = 1  # the "start-up failed" line above says why
    else:
        rc = 1  # the ingest died
    await site.stop()
    await service.close()
    await runner.cleanup()
    if ops_runner is not None:
        await ops_runner.cleanup()
    announce(cfg.log_format, "wholecall serve: stopped", "stopped")
    return rc
