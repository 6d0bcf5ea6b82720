"""Streamed media into `wholecall serve` over real sockets, out as files compared sample for
sample: Twilio Media Streams (placed by timestamp), L16 over WebSocket (by arrival order,
stereo exact, 16 kHz resampled), Asterisk AudioSocket; and bad input on each."""

from __future__ import annotations

import asyncio
import json
import os
import time

import numpy as np
import pytest
import soundfile as sf
from stream_clients import (
    as_frame,
    as_uuid,
    connected,
    dtmf,
    media,
    paced_tcp,
    paced_ws,
    start,
    stop,
    ulaw,
    ulaw_payload,
)

FRAME = 160


def recording(server, cid: str, name: str) -> None:
    status, body = server.api("POST", f"/v1/calls/{cid}/recording",
                              {"filename": name, "file_format": "s16bit", "recording_mode": "separate",
                               "dtmf_elim": False})
    assert status == 201, body


def ended(server, cid: str, timeout: float = 15.0) -> dict:
    """The call once the stream's end has hung it up and the file is final."""
    deadline = time.monotonic() + timeout
    while True:
        status, call = server.api("GET", f"/v1/calls/{cid}")
        assert status == 200, call
        if "hangup_reason" in call and call["recording"]["state"] == "IDLE":
            return call
        assert time.monotonic() < deadline, call
        time.sleep(0.1)


def create(server, **body: object) -> dict:
    status, call = server.api("POST", "/v1/calls", body)
    assert status == 201, call
    return call


def first_sound(leg: np.ndarray) -> int:
    return int(np.flatnonzero(leg)[0])


def test_twilio_both_tracks_by_timestamp_out_of_order_with_gap_and_dtmf(server) -> None:
    """Each track of the file = the mu-law decode of its payloads at 8 * timestamp (ms) from
    one shared anchor: messages sent out of order land at their place, a 100 ms hole in the
    timestamps is silence, the outbound track (starting at 40 ms) stays aligned; a dtmf
    message is a digit of the call; `stop` hangs up with a final file."""
    rng = np.random.default_rng(23)
    call = create(server, media="twilio")
    cid, url = call["id"], call["websocket"]
    assert url.startswith("ws://127.0.0.1:")
    recording(server, cid, "twilio.wav")
    n = 60
    expect_in = np.zeros(n * FRAME, np.int16)
    expect_out = np.zeros((n - 2) * FRAME, np.int16)
    slots: list[list[str | bytes]] = [[] for _ in range(n + 4)]
    slots[0] += [connected(), start(("inbound", "outbound"), caller="+15550001")]
    seq = 2
    for k in range(n):
        if 20 <= k < 25:  # 100 ms the sender never sent: silence at its place
            continue
        p = ulaw_payload(rng)
        expect_in[k * FRAME:(k + 1) * FRAME] = ulaw(p)
        slot = {30: 31, 31: 30, 43: 45, 45: 43}.get(k, k) + 1  # 31 before 30, 45 before 43
        slots[slot].append(media(seq, "inbound", k + 1, k * 20, p))
        seq += 1
    for k in range(2, n):  # the outbound track starts 40 ms into the stream
        p = ulaw_payload(rng)
        expect_out[(k - 2) * FRAME:(k - 1) * FRAME] = ulaw(p)
        slot = {50: 52, 52: 50}.get(k, k) + 1
        slots[slot].append(media(seq, "outbound", k - 1, k * 20, p))
        seq += 1
    slots[35].append(dtmf("inbound_track", "7"))
    slots[n + 3].append(stop())
    asyncio.run(paced_ws(url, slots))
    call = ended(server, cid)
    assert call["hangup_reason"] == "stop"
    assert call["recording"]["cause"] == "HANGUP"
    assert call["digits"] == "7" and call["digit_events"][0]["leg"] == "inbound"
    meta = call["media"]["stream"]["metadata"]
    assert meta["customParameters"] == {"caller": "+15550001"} and meta["streamSid"].startswith("MZ")
    assert call["media"]["inbound"]["late"] == 0 and call["media"]["outbound"]["late"] == 0
    x, rate = sf.read(os.path.join(server.recordings, "twilio.wav"), dtype="int16")
    assert rate == 8000 and x.shape[1] == 2
    s_in = first_sound(x[:, 0])
    np.testing.assert_array_equal(x[s_in:s_in + len(expect_in), 0], expect_in)
    assert not x[s_in + len(expect_in):, 0].any()
    s_out = s_in + 2 * 20 * 8  # both tracks on one timeline
    assert not x[:s_out, 1].any()
    np.testing.assert_array_equal(x[s_out:s_out + len(expect_out), 1], expect_out)
    assert not x[s_out + len(expect_out):, 1].any()


def test_l16_stereo_websocket_records_its_input_exactly(server) -> None:
    """2-channel 8 kHz L16: channel 0 is the inbound leg, channel 1 the outbound leg, equal to
    the input sample for sample; the metadata frame is kept; closing the socket hangs up."""
    rng = np.random.default_rng(7)
    call = create(server, media="websocket", channels=2, encoding="L16", rate=8000)
    cid = call["id"]
    assert "websocket_outbound" not in call
    recording(server, cid, "stereo.wav")
    pcm = rng.integers(-20000, 20000, (50 * FRAME, 2)).astype(np.int16)
    pcm[pcm == 0] = 1
    metadata = {"callId": "fs-123", "sampleRate": 8000, "channels": 2}
    slots: list[list[str | bytes]] = [[json.dumps(metadata)]]
    slots += [[pcm[k * FRAME:(k + 1) * FRAME].astype("<i2").tobytes()] for k in range(50)]
    asyncio.run(paced_ws(call["websocket"], slots))
    call = ended(server, cid)
    assert call["recording"]["cause"] == "HANGUP" and call["hangup_reason"] == "the connection closed"
    assert call["media"]["stream"]["metadata"] == {"both": metadata}
    x, _ = sf.read(os.path.join(server.recordings, "stereo.wav"), dtype="int16")
    s = first_sound(x[:, 0])
    assert first_sound(x[:, 1]) == s
    np.testing.assert_array_equal(x[s:s + len(pcm)], pcm)
    assert not x[s + len(pcm):].any()


def test_l16_16khz_mono_is_resampled_and_a_second_socket_feeds_the_outbound_leg(server) -> None:
    """16 kHz mono on the inbound socket and on the outbound socket: each leg is its input
    resampled to 8 kHz by soxr (compared with soxr's one-shot resampling of the whole input)."""
    soxr = pytest.importorskip("soxr")
    call = create(server, media="websocket", channels=1, rate=16000)
    cid = call["id"]
    recording(server, cid, "wide.wav")
    t = np.arange(16000) / 16000.0
    tones = {"inbound": (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16),
             "outbound": (6000 * np.sin(2 * np.pi * 1000 * t + 0.3)).astype(np.int16)}

    def slots(x: np.ndarray) -> list[list[str | bytes]]:
        return [[json.dumps({"leg": "x"})]] + [[x[k * 320:(k + 1) * 320].astype("<i2").tobytes()] for k in range(50)]

    async def both() -> None:
        await asyncio.gather(paced_ws(call["websocket"], slots(tones["inbound"])),
                             paced_ws(call["websocket_outbound"], slots(tones["outbound"])))
    asyncio.run(both())
    call = ended(server, cid)
    assert call["recording"]["cause"] == "HANGUP"
    x, _ = sf.read(os.path.join(server.recordings, "wide.wav"), dtype="int16")
    for column, leg in enumerate(("inbound", "outbound")):
        want = np.rint(soxr.resample(tones[leg].astype(np.float32) / 32768, 16000, 8000, quality="HQ") * 32768)
        got = x[:, column]
        s = first_sound(got)
        got = got[s:s + len(want)].astype(np.int64)
        assert len(got) == len(want) == 8000
        # The streamed resampler and the one-shot one agree away from the edges.
        assert np.max(np.abs(got[200:-200] - want[200:-200])) <= 2
        assert call["media"][leg]["resyncs"] == 0


def test_audiosocket_inbound_and_outbound_by_uuid_digits_and_hangup(server) -> None:
    rng = np.random.default_rng(11)
    call = create(server, media="audiosocket")
    cid, a = call["id"], call["audiosocket"]
    assert set(a) == {"host", "port", "uuid", "uuid_outbound"}
    recording(server, cid, "audiosocket.wav")
    pcm = {leg: rng.integers(-30000, 30000, 40 * FRAME).astype(np.int16) for leg in ("in", "out")}
    for x in pcm.values():
        x[x == 0] = 3

    def slots(uid: str, x: np.ndarray, hang_up: bool) -> list[list[bytes]]:
        s: list[list[bytes]] = [[as_uuid(uid)]]
        s += [[as_frame(0x10, x[k * FRAME:(k + 1) * FRAME].astype("<i2").tobytes())] for k in range(40)]
        if hang_up:
            s[20].append(as_frame(0x03, b"4"))
            s.append([as_frame(0x00)])
        return s

    async def both() -> tuple[bytes, bytes]:
        out = asyncio.create_task(paced_tcp(a["host"], a["port"], slots(a["uuid_outbound"], pcm["out"], False)))
        await asyncio.sleep(0.1)
        inbound = await paced_tcp(a["host"], a["port"], slots(a["uuid"], pcm["in"], True))
        return inbound, await out
    inbound, outbound = asyncio.run(both())
    assert inbound == b"" and outbound == b""  # the server closed both after the hang-up frame
    call = ended(server, cid)
    assert call["hangup_reason"] == "hangup" and call["recording"]["cause"] == "HANGUP"
    assert call["digits"] == "4" and call["digit_events"][0]["leg"] == "inbound"
    x, _ = sf.read(os.path.join(server.recordings, "audiosocket.wav"), dtype="int16")
    for column, leg in enumerate(("in", "out")):
        s = first_sound(x[:, column])
        np.testing.assert_array_equal(x[s:s + len(pcm[leg]), column], pcm[leg])


def test_audiosocket_higher_rate_kinds_are_resampled_by_the_projects_soxr_stream(server) -> None:
    """0x12 (16 kHz) on the inbound leg and 0x16 (48 kHz) on the outbound leg, 20 ms frames:
    each leg equals, sample for sample, the same soxr stream (the L16 path's settings) fed the
    same frames and flushed at the end."""
    soxr = pytest.importorskip("soxr")
    call = create(server, media="audiosocket")
    cid, a = call["id"], call["audiosocket"]
    recording(server, cid, "as-wide.wav")
    rng = np.random.default_rng(23)
    kinds = {"in": (0x12, 16000), "out": (0x16, 48000)}
    frames = {}
    for leg, (_, rate) in kinds.items():
        t = np.arange(rate) / rate
        x = 9000 * np.sin(2 * np.pi * (300 if leg == "in" else 1100) * t) + rng.normal(0, 300, rate)
        x = np.clip(x, -32768, 32767).astype(np.int16)
        step = rate // 50
        frames[leg] = [x[k:k + step] for k in range(0, len(x), step)]

    def expect(leg: str) -> np.ndarray:
        rs = soxr.ResampleStream(kinds[leg][1], 8000, 1, dtype="float32", quality="HQ")
        parts = [rs.resample_chunk(f.astype(np.float32).reshape(-1, 1) / 32768.0) for f in frames[leg]]
        parts.append(rs.resample_chunk(np.zeros((0, 1), np.float32), last=True))
        y = np.concatenate([np.asarray(p).reshape(-1) for p in parts])
        return np.clip(np.rint(y * 32768.0), -32768, 32767).astype(np.int16)

    def slots(uid: str, leg: str) -> list[list[bytes]]:
        kind = kinds[leg][0]
        return [[as_uuid(uid)]] + [[as_frame(kind, f.astype("<i2").tobytes())] for f in frames[leg]]

    async def both() -> None:
        # The outbound connection just closes; the inbound one ends with a hang-up frame a
        # little later: each resampler's tail lands either way.
        await asyncio.gather(paced_tcp(a["host"], a["port"], slots(a["uuid"], "in") + [[], [], [as_frame(0x00)]]),
                             paced_tcp(a["host"], a["port"], slots(a["uuid_outbound"], "out"), wait=False))
    asyncio.run(both())
    call = ended(server, cid)
    assert call["recording"]["cause"] == "HANGUP", call
    x, _ = sf.read(os.path.join(server.recordings, "as-wide.wav"), dtype="int16")
    for column, leg in enumerate(("in", "out")):
        want = expect(leg)
        assert abs(len(want) - 8000) < 50
        got = x[:, column]
        s = first_sound(got)
        np.testing.assert_array_equal(got[s:s + len(want)], want)
        assert not got[s + len(want):].any()
        assert call["media"]["inbound" if leg == "in" else "outbound"]["resyncs"] == 0


def _errors(server) -> int:
    status, health = server.api("GET", "/healthz")
    assert status == 200
    return health["streams"]["errors"]


def _ws_metric(server, name: str) -> float:
    """One wholecall_websocket_* counter from /metrics, parsed with prometheus-client's parser."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=30) as r:
        text = r.read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


@pytest.mark.parametrize("bad, why, code", [
    ("{not json", "invalid JSON", 1007),
    (json.dumps({"event": "party"}), "unknown event 'party'", 1007),
    (json.dumps({"event": "media", "media": {"track": "inbound", "timestamp": "60", "payload": "@@@@"}}),
     "not base64", 1007),
    ("x" * 70000, "WebSocket error", 1009),
], ids=["json", "event", "base64", "size"])
def test_bad_twilio_input_closes_that_stream_and_hangs_its_call_up_with_a_final_file(server, bad, why, code) -> None:
    tag = str(code) + why.split()[0]
    rng = np.random.default_rng(5)
    victim = create(server, media="twilio")
    bystander = create(server, media="twilio")
    recording(server, victim["id"], f"victim-{tag}.wav")
    recording(server, bystander["id"], f"bystander-{tag}.wav")
    errors0 = _errors(server)
    metric0 = _ws_metric(server, "wholecall_websocket_errors_total")
    good = [[connected(), start(("inbound",))]] + [[media(k, "inbound", k, 20 * k, ulaw_payload(rng))] for k in range(15)]

    async def run() -> tuple[dict, dict]:
        return await asyncio.gather(paced_ws(victim["websocket"], good + [[bad]] + good[1:4], close=False),
                                    paced_ws(bystander["websocket"], good + [[stop()]]))
    closed, _ = asyncio.run(run())
    assert closed["code"] == code, closed
    call = ended(server, victim["id"])
    assert call["hangup_reason"].startswith("protocol_error: ") and why in call["hangup_reason"], call
    assert call["recording"]["cause"] == "HANGUP"
    assert why in call["media"]["stream"]["errors"][0]
    assert _errors(server) == errors0 + 1
    assert _ws_metric(server, "wholecall_websocket_errors_total") == metric0 + 1
    assert _ws_metric(server, "wholecall_websocket_messages_total") >= 2 * 15
    assert why in server.output()
    x, _ = sf.read(os.path.join(server.recordings, f"victim-{tag}.wav"), dtype="int16")
    assert np.count_nonzero(x[:, 0]) > 14 * FRAME  # what came before the bad message is kept
    other = ended(server, bystander["id"])
    assert other["hangup_reason"] == "stop" and other["media"]["inbound"]["messages"] == 15


def test_bad_audiosocket_and_websocket_connections_are_refused_and_counted(server) -> None:
    import aiohttp

    call = create(server, media="audiosocket")
    a = call["audiosocket"]
    recording(server, call["id"], "as-bad.wav")
    errors0 = _errors(server)
    unknown = "00000000-0000-4000-8000-000000000000"
    assert asyncio.run(paced_tcp(a["host"], a["port"], [[as_uuid(unknown)]])) == b""
    assert asyncio.run(paced_tcp(a["host"], a["port"], [[as_frame(0x10, b"\x00" * 320)]])) == b""

    async def bad_url() -> int:
        async with aiohttp.ClientSession() as s:
            base = call["audiosocket"]["host"]
            try:
                async with s.ws_connect(f"ws://{base}:{_ws_port(server)}/v1/media/nosuchtoken"):
                    return 101
            except aiohttp.WSServerHandshakeError as e:
                return e.status
    assert asyncio.run(bad_url()) == 404
    assert _errors(server) == errors0 + 3
    assert f"no call has the UUID {unknown}" in server.output()
    # The call was untouched by strangers; a protocol violation on its own socket ends it.
    frames = [[as_uuid(a["uuid"])], [as_frame(0x10, b"\x01\x02" * 160)], [as_frame(0x42, b"??")]]
    assert asyncio.run(paced_tcp(a["host"], a["port"], frames)) == b""
    ended_call = ended(server, call["id"])
    assert ended_call["hangup_reason"] == "protocol_error: unknown frame kind 0x42"
    assert ended_call["recording"]["cause"] == "HANGUP"
    sf.info(os.path.join(server.recordings, "as-bad.wav"))
    assert server.api("GET", "/healthz")[0] == 200


def test_connections_that_never_name_their_call_are_closed_after_the_handshake_timeout(tmp_path) -> None:
    """A peer that connects and says nothing, or sends half an opening request, is closed
    once --handshake-timeout has passed and counted refused; a connection that did name
    its call is not touched by it."""
    import socket

    from serve_helpers import Server

    srv = Server(str(tmp_path), "--handshake-timeout", "1")
    try:
        call = create(srv, media="audiosocket")
        host, as_port = call["audiosocket"]["host"], call["audiosocket"]["port"]
        ws_port = _ws_port(srv)
        refused0 = srv.api("GET", "/healthz")[1]["streams"]["refused"]
        silent_ws = socket.create_connection((host, ws_port))
        half_ws = socket.create_connection((host, ws_port))
        half_ws.sendall(b"GET /v1/media/x HTTP/1.1\r\nHost: a\r\n")  # never the blank line
        silent_as = socket.create_connection((host, as_port))
        named = socket.create_connection((host, as_port))
        named.sendall(as_uuid(call["audiosocket"]["uuid"]))
        t0 = time.monotonic()
        for s in (silent_ws, half_ws, silent_as):
            s.settimeout(10)
            try:
                assert s.recv(1) == b""
            except ConnectionResetError:
                pass
            s.close()
        assert time.monotonic() - t0 < 8  # closed by the 1 s timeout, not by the 10 s default
        health = srv.api("GET", "/healthz")[1]
        assert health["streams"]["refused"] == refused0 + 3
        out = srv.output()
        assert "no opening request in 1 s; closed" in out and "no UUID frame in 1 s; closed" in out
        named.settimeout(0.5)
        with pytest.raises(TimeoutError):
            named.recv(1)  # still open: it named its call
        assert srv.api("GET", f"/v1/calls/{call['id']}")[1]["state"] != "IDLE"
        named.close()
    finally:
        assert srv.terminate() == 0, srv.output()


def _ws_port(server) -> int:
    call = create(server, media="twilio")
    server.api("DELETE", f"/v1/calls/{call['id']}")
    return int(call["websocket"].split(":")[2].split("/")[0])


def test_stream_create_errors_name_the_field(server) -> None:
    for body, text in (({"media": "websocket", "channels": 3}, "channels must be 1 or 2"),
                       ({"media": "websocket", "rate": 44100}, "rate must be 8000 or 16000"),
                       ({"media": "websocket", "encoding": "PCMU"}, "encoding must be"),
                       ({"media": "twilio", "rtp": {}}, "unknown field(s) for media twilio: rtp"),
                       ({"media": "fax"}, "media must be")):
        status, err = server.api("POST", "/v1/calls", body)
        assert status == 422 and text in err["detail"], err


def test_raw_rfc6455_client_random_masks_fragments_and_a_ping_between_them(server) -> None:
    """Frames written by hand from RFC 6455: every frame with its own random mask, one media
    message in three fragments with a ping between them (answered by a pong with its
    payload), the rest whole; `stop` is answered by a close frame; the file is exact."""
    import base64
    import socket
    import struct
    from urllib.parse import urlparse

    from stream_clients import ws_frame as client_frame

    rng = np.random.default_rng(41)
    call = create(server, media="twilio")
    cid = call["id"]
    recording(server, cid, "raw.wav")
    u = urlparse(call["websocket"])
    s = socket.create_connection((u.hostname, u.port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET {u.path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    reply = b""
    while b"\r\n\r\n" not in reply:
        reply += s.recv(4096)
    assert reply.startswith(b"HTTP/1.1 101 ")
    head, _, rest = reply.partition(b"\r\n\r\n")
    s.sendall(client_frame(1, connected().encode()) + client_frame(1, start(("inbound",)).encode()))
    payloads = [ulaw_payload(rng) for _ in range(30)]
    for k, p in enumerate(payloads):
        text = media(k + 2, "inbound", k + 1, 20 * k, p).encode()
        if k == 10:
            a, b = len(text) // 3, 2 * len(text) // 3
            s.sendall(client_frame(1, text[:a], fin=False) + client_frame(9, b"are you there")
                      + client_frame(0, text[a:b], fin=False) + client_frame(0, text[b:]))
        else:
            s.sendall(client_frame(1, text))
        time.sleep(0.02)
    s.sendall(client_frame(1, stop().encode()))
    got = rest
    while chunk := s.recv(4096):  # the server closes the socket a while after its close frame
        got += chunk
    s.close()
    pong = b"\x8a\x0dare you there"
    assert got.startswith(pong), got[:40]  # the pong, unmasked (a server never masks)
    close = got[len(pong):]
    assert close[0] == 0x88 and struct.unpack("!H", close[2:4])[0] == 1000 and close[4:2 + close[1]] == b"stop"
    call = ended(server, cid)
    assert call["hangup_reason"] == "stop" and call["media"]["inbound"]["messages"] == 30
    x, _ = sf.read(os.path.join(server.recordings, "raw.wav"), dtype="int16")
    want = np.concatenate([ulaw(p) for p in payloads])
    st = first_sound(x[:, 0])
    np.testing.assert_array_equal(x[st:st + len(want), 0], want)


def test_a_peer_that_never_reads_is_pushed_back_not_buffered(server) -> None:
    """A reviewer's find: a Twilio peer sending pings and never reading the pongs grew the
    stream process (shared by every streamed call) by 180 MB in 15 s. It is read no more
    while it does not read: its sends block, the process stays as it was."""
    import base64
    import socket
    from urllib.parse import urlparse

    from stream_clients import ws_frame as client_frame

    def rss_kb(pid: int) -> int:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))

    call = create(server, media="twilio")
    u = urlparse(call["websocket"])
    pids = []
    for d in os.listdir("/proc"):  # the service's stream processes
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read()
        except (OSError, ValueError):
            continue
        if ppid == server.proc.pid and b"stream_proc" in cmd:
            pids.append(int(d))
    assert pids
    s = socket.create_connection((u.hostname, u.port), timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET {u.path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    s.sendall(client_frame(1, connected().encode()) + client_frame(1, start(("inbound",)).encode()))
    before = {p: rss_kb(p) for p in pids}
    pings = client_frame(9, b"p" * 125) * 1000
    s.settimeout(2.0)
    sent = 0
    with pytest.raises(socket.timeout):
        while sent < 200 << 20:  # 200 MB of pings unanswered: pushed back long before
            s.sendall(pings)
            sent += len(pings)
    s.close()
    grown = max(rss_kb(p) - before[p] for p in pids)
    assert grown < 32 << 10, f"the stream process grew by {grown} kB"
    assert server.api("DELETE", f"/v1/calls/{call['id']}")[0] == 200
