"""`wholecall serve --stream-procs 2`: streamed calls are spread over two stream processes,
each on its own WebSocket and AudioSocket port; /metrics and /healthz sum both; and one of
them dying (kill -9) hangs up only its own calls, with final files, while the other's calls
record on, sample for sample."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import urllib.request

import numpy as np
import soundfile as sf
from prometheus_client.parser import text_string_to_metric_families
from serve_helpers import Server
from stream_clients import as_frame, as_uuid, connected, media, paced_tcp, paced_ws, start, stop, ulaw, ulaw_payload

FRAME = 160


def _ws_messages(srv: Server) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/metrics", timeout=30) as r:
        fams = text_string_to_metric_families(r.read().decode())
        return sum(x.value for f in fams for x in f.samples if x.name == "wholecall_websocket_messages_total")


def _port(url: str) -> int:
    return int(url.split(":")[2].split("/")[0])


def _ended(srv: Server, cid: str, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        _, call = srv.api("GET", f"/v1/calls/{cid}")
        if "hangup_reason" in call and call["recording"]["state"] == "IDLE":
            return call
        assert time.monotonic() < deadline, call
        time.sleep(0.1)


def _twilio_slots(rng: np.random.Generator, n: int, with_stop: bool) -> tuple[list[list[str | bytes]], np.ndarray]:
    slots: list[list[str | bytes]] = [[connected(), start(("inbound",))]]
    pcm = []
    for k in range(n):
        p = ulaw_payload(rng)
        pcm.append(ulaw(p))
        slots.append([media(k + 2, "inbound", k + 1, 20 * k, p)])
    if with_stop:
        slots.append([stop()])
    return slots, np.concatenate(pcm)


def _record(srv: Server, cid: str) -> None:
    status, body = srv.api("POST", f"/v1/calls/{cid}/recording",
                           {"filename": f"{cid}.wav", "file_format": "s16bit", "recording_mode": "separate"})
    assert status == 201, body


def _inbound_equals(srv: Server, cid: str, want: np.ndarray) -> None:
    x, _ = sf.read(os.path.join(srv.recordings, f"{cid}.wav"), dtype="int16")
    got = x[:, 0]
    s = int(np.flatnonzero(got)[0])
    np.testing.assert_array_equal(got[s:s + len(want)], want)
    assert not got[s + len(want):].any()


def test_two_stream_processes_share_calls_sum_their_counters_and_one_dying_ends_only_its_calls(tmp_path) -> None:
    srv = Server(str(tmp_path), "--stream-procs", "2", "--ingest-procs", "1", "--reorder-ms", "400")
    rng = np.random.default_rng(31)
    try:
        _, health = srv.api("GET", "/healthz")
        pids = health["streams_pids"]
        assert len(pids) == 2 and len(set(pids)) == 2 and health["streams"]["processes"] == 2

        # Least loaded first: the calls alternate, so each process has two, on its own port.
        calls = [srv.api("POST", "/v1/calls", {"media": "twilio", "id": f"tw{i}"})[1] for i in range(4)]
        ports = [_port(c["websocket"]) for c in calls]
        assert ports[0] != ports[1] and ports[2] == ports[0] and ports[3] == ports[1], ports
        as_call = srv.api("POST", "/v1/calls", {"media": "audiosocket", "id": "as0"})[1]
        as_call2 = srv.api("POST", "/v1/calls", {"media": "audiosocket", "id": "as1"})[1]
        assert as_call["audiosocket"]["port"] != as_call2["audiosocket"]["port"]
        for c in calls + [as_call, as_call2]:
            _record(srv, c["id"])

        # Phase 1: one call on each process streams and stops; AudioSocket calls on both.
        m0 = _ws_messages(srv)
        n = 20
        s0, pcm0 = _twilio_slots(rng, n, True)
        s1, pcm1 = _twilio_slots(rng, n, True)
        as_pcm = {}
        as_slots = []
        for c in (as_call, as_call2):
            x = rng.integers(-20000, 20000, n * FRAME).astype(np.int16)
            x[x == 0] = 5
            as_pcm[c["id"]] = x
            as_slots.append([[as_uuid(c["audiosocket"]["uuid"])]]
                            + [[as_frame(0x10, x[k * FRAME:(k + 1) * FRAME].tobytes())] for k in range(n)]
                            + [[as_frame(0x00)]])

        async def phase1() -> None:
            await asyncio.gather(paced_ws(calls[0]["websocket"], s0), paced_ws(calls[1]["websocket"], s1),
                                 *(paced_tcp(c["audiosocket"]["host"], c["audiosocket"]["port"], sl)
                                   for c, sl in zip((as_call, as_call2), as_slots)))
        asyncio.run(phase1())
        for c, want in ((calls[0], pcm0), (calls[1], pcm1)):
            call = _ended(srv, c["id"])
            assert call["hangup_reason"] == "stop" and call["recording"]["cause"] == "HANGUP"
            _inbound_equals(srv, c["id"], want)
        for c in (as_call, as_call2):
            assert _ended(srv, c["id"])["hangup_reason"] == "hangup"
            _inbound_equals(srv, c["id"], as_pcm[c["id"]])
        # Both processes' messages are in the sum (each process alone saw half of them).
        assert _ws_messages(srv) - m0 >= 2 * (n + 3) + 2 * (n + 2)
        _, health = srv.api("GET", "/healthz")
        assert health["streams"]["messages"] >= 2 * (n + 3) + 2 * (n + 2)

        # Phase 2: calls 2 (process 0) and 3 (process 1) stream; process 1 is killed midway.
        victim_pid = pids[1]
        n = 50
        s2, pcm2 = _twilio_slots(rng, n, True)
        s3, _ = _twilio_slots(rng, n, True)

        async def phase2() -> None:
            async def kill_later() -> None:
                await asyncio.sleep(0.5)
                os.kill(victim_pid, signal.SIGKILL)
            await asyncio.gather(paced_ws(calls[2]["websocket"], s2), paced_ws(calls[3]["websocket"], s3),
                                 kill_later())
        asyncio.run(phase2())
        victim = _ended(srv, calls[3]["id"])
        assert victim["hangup_reason"] == "stream_ingest_exited" and victim["recording"]["cause"] == "HANGUP"
        sf.info(os.path.join(srv.recordings, f"{calls[3]['id']}.wav"))  # final and readable
        survivor = _ended(srv, calls[2]["id"])
        assert survivor["hangup_reason"] == "stop" and survivor["recording"]["cause"] == "HANGUP"
        _inbound_equals(srv, calls[2]["id"], pcm2)
        assert "stream ingest process 1" in srv.output()

        # The service goes on with one process: healthy, new calls land on the live one.
        status, health = srv.api("GET", "/healthz")
        assert status == 200 and health["streams"]["processes"] == 1 and health["streams"]["dead"] == 1
        assert health["streams_pids"] == [pids[0]]
        for i in range(2):
            status, c = srv.api("POST", "/v1/calls", {"media": "twilio", "id": f"late{i}"})
            assert status == 201 and _port(c["websocket"]) == ports[0], c
    finally:
        assert srv.terminate() == 0, srv.output()
