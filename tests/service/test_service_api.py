"""The HTTP contract of issue 22: status codes and error bodies, token auth, the config's
refusals, the media timeout, SIGTERM draining, webhooks."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import pytest
import soundfile as sf
from serve_helpers import Server, free_tcp_port

from wholecall.controller import Error
from wholecall.controller.args import check_start


def python_error(**kw: object) -> str:
    """The text the Python API raises for these start() arguments."""
    with pytest.raises(Error) as info:
        check_start("/tmp", **kw)
    return str(info.value)


def test_health_and_openapi(server) -> None:
    status, body = server.api("GET", "/healthz")
    assert status == 200 and body["status"] == "ok" and len(body["workers"]) == 1
    status, doc = server.api("GET", "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    assert {"/healthz", "/metrics", "/v1/calls", "/v1/calls/{id}", "/v1/calls/{id}/recording"} <= set(doc["paths"])
    schemas = doc["components"]["schemas"]
    assert {"channels", "encoding", "rate"} <= set(schemas["CallRequest"]["properties"])
    assert {"hangup_reason", "websocket", "websocket_outbound", "audiosocket"} <= set(schemas["Call"]["properties"])
    assert "error" in schemas["Recording"]["properties"]
    assert "503" in doc["paths"]["/v1/calls/{id}/recording"]["post"]["responses"]
    assert "504" in doc["paths"]["/v1/calls/{id}/recording"]["delete"]["responses"]


def test_error_contract(server) -> None:
    for method in ("GET", "DELETE"):
        assert server.api(method, "/v1/calls/nope") == (404, {"error": "NotFound", "detail": "no call 'nope'"})
        assert server.api(method, "/v1/calls/nope/recording")[0] == 404
    assert server.api("POST", "/v1/calls/nope/recording", {"filename": "x.wav"})[0] == 404

    assert server.api("POST", "/v1/calls", {"media": "webrtc"})[0] == 422
    status, body = server.api("POST", "/v1/calls", raw=b"{not json")
    assert status == 422 and body["error"] == "Error"
    status, body = server.api("POST", "/v1/calls", {"media": "rtp", "rtp": {"payload_types": {"96": "opus/48000/2"}}})
    assert status == 422 and body["error"] == "PayloadError" and "opus" in body["detail"]
    status, body = server.api("POST", "/v1/calls", {"media": "rtp", "rtp": {"srtp": {"inbound": {"suite": "X", "key": ""}}}})
    assert status == 422 and body["error"] == "SrtpError"

    cid, _, _ = server.create_call(id="contract-1")
    assert server.api("POST", "/v1/calls", {"media": "rtp", "id": "contract-1"})[0] == 409
    status, body = server.api("GET", f"/v1/calls/{cid}")
    assert status == 200 and body["state"] == "ANSWERED" and body["recording"]["state"] == "IDLE"
    assert body["recording"]["cause"] == "NONE"

    # Bad arguments: 422, the detail is the Python exception's text.
    status, body = server.api("POST", f"/v1/calls/{cid}/recording", {"filename": "a.wav", "file_format": "mp3"})
    assert (status, body) == (422, {"error": "Error", "detail": python_error(filename="a.wav", file_format="mp3")})
    status, body = server.api("POST", f"/v1/calls/{cid}/recording", {"filename": "a.wav", "max_bytes": -1})
    assert (status, body) == (422, {"error": "Error", "detail": python_error(filename="a.wav", max_bytes=-1)})
    status, body = server.api("POST", f"/v1/calls/{cid}/recording", {"filename": "../escape.wav"})
    assert status == 422 and "outside the recordings directory" in body["detail"]
    status, body = server.api("POST", f"/v1/calls/{cid}/recording", {"filename": "a.wav", "colour": "red"})
    assert status == 422 and "colour" in body["detail"]
    status, body = server.api("POST", f"/v1/calls/{cid}/recording", {"filename": "a.wav", "cipher": {"key": "zz", "iv": "00"}})
    assert status == 422 and body["detail"].startswith("cipher:")

    # Already recording: 409 Error; wait=0.1 on a running job: TIMEOUT, the job goes on.
    assert server.api("POST", f"/v1/calls/{cid}/recording", {"filename": "a.wav"})[0] == 201
    status, body = server.api("POST", f"/v1/calls/{cid}/recording", {"filename": "b.wav"})
    assert status == 409 and body["error"] == "Error" and "already RECORDING" in body["detail"]
    status, body = server.api("GET", f"/v1/calls/{cid}/recording?wait=0.1")
    assert status == 200 and body["cause"] == "TIMEOUT" and body["state"] == "RECORDING"
    assert server.api("GET", f"/v1/calls/{cid}/recording?wait=soon")[0] == 422

    # Hang up: HANGUP and a final file; afterwards the call is IDLE and the recorder raises Hangup (409).
    status, body = server.api("DELETE", f"/v1/calls/{cid}")
    assert status == 200 and body["recording"]["cause"] == "HANGUP" and body["recording"]["filename"] == "a.wav"
    assert body["recording"]["bytes"] == os.path.getsize(os.path.join(server.recordings, "a.wav"))
    status, body = server.api("POST", f"/v1/calls/{cid}/recording", {"filename": "c.wav"})
    assert status == 409 and body["error"] == "Hangup" and body["detail"].endswith("the call is IDLE (hung up)")
    assert server.api("DELETE", f"/v1/calls/{cid}/recording")[0] == 409
    assert server.api("GET", f"/v1/calls/{cid}")[1]["state"] == "IDLE"


def test_stop_and_wait(server) -> None:
    cid, _, _ = server.create_call()
    assert server.api("POST", f"/v1/calls/{cid}/recording", {"filename": "w.wav", "file_format": "ulaw"})[0] == 201
    waiter: dict = {}
    t = threading.Thread(target=lambda: waiter.update(r=server.api("GET", f"/v1/calls/{cid}/recording?wait=20")))
    t.start()
    time.sleep(0.5)
    status, body = server.api("DELETE", f"/v1/calls/{cid}/recording")
    assert status == 200 and body["cause"] == "ABORTED" and body["seconds"] > 0.05  # ends one window (400 ms) before the stop
    t.join(10)
    assert waiter["r"][0] == 200 and waiter["r"][1]["cause"] == "ABORTED"
    assert server.api("DELETE", f"/v1/calls/{cid}/recording")[0] == 200  # stop() when idle: True
    server.api("DELETE", f"/v1/calls/{cid}")


def test_non_loopback_without_token_is_refused(tmp_path) -> None:
    r = subprocess.run([sys.executable, "-m", "wholecall.cli", "serve", "--listen", "0.0.0.0:0",
                        "--recordings-dir", str(tmp_path)], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2 and "without --token-file" in r.stderr
    config = tmp_path / "serve.toml"
    config.write_text('listen = "0.0.0.0:0"\nrtp-ports = "30000-30010"\n')
    r = subprocess.run([sys.executable, "-m", "wholecall.cli", "serve", "--config", str(config)],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2 and "not a loopback address" in r.stderr


class _Hooks(BaseHTTPRequestHandler):
    received: ClassVar[list[dict]] = []
    fail_first = 1

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if _Hooks.fail_first > 0:  # the first attempt fails: the service must retry
            _Hooks.fail_first -= 1
            self.send_response(500)
        else:
            _Hooks.received.append(body)
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_token_media_timeout_webhook_and_sigterm_drain(tmp_path) -> None:
    """One server: bearer token, a 1.5 s media timeout, webhooks, and SIGTERM at the end."""
    hooks = HTTPServer(("127.0.0.1", free_tcp_port()), _Hooks)
    threading.Thread(target=hooks.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{hooks.server_address[1]}/hook"
    token = "s3cret-token-0123456789"
    srv = Server(str(tmp_path), "--media-timeout", "1.5", token=token)
    try:
        assert srv.api("GET", "/healthz", token="") == (401, {"error": "Unauthorized",
                                                              "detail": "missing or wrong bearer token"})
        assert srv.api("POST", "/v1/calls", {"media": "rtp"}, token="wrong-token-000000000")[0] == 401
        import socket

        with socket.create_connection(("127.0.0.1", srv.port)) as raw:  # a header that is not UTF-8: 401, not 500
            raw.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n"
                        b"Connection: close\r\n\r\n")
            assert raw.makefile("rb").readline().split()[1] == b"401"

        # No media on either leg: hung up after --media-timeout with HANGUP, the file is valid (silence).
        srv.create_call(id="quiet")
        assert srv.api("POST", "/v1/calls/quiet/recording", {"filename": "quiet.wav", "webhook": url})[0] == 201
        status, body = srv.api("GET", "/v1/calls/quiet/recording?wait=10")
        assert status == 409 or body["cause"] == "HANGUP"  # Hangup once the call is IDLE, as wait_until_finished
        status, call = srv.api("GET", "/v1/calls/quiet")
        assert call["state"] == "IDLE" and call["recording"]["cause"] == "HANGUP"
        assert call["hangup_reason"] == "media_timeout"
        info = sf.info(os.path.join(srv.recordings, "quiet.wav"))
        assert info.frames / 8000 == pytest.approx(1.5, abs=0.5)

        # SIGTERM with two recordings running: both end ABORTED with final files, exit 0.
        for cid in ("d1", "d2"):
            srv.create_call(id=cid)
            assert srv.api("POST", f"/v1/calls/{cid}/recording", {"filename": f"{cid}.wav", "webhook": url})[0] == 201
        time.sleep(0.5)
        t0 = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(15) == 0, srv.output()
        assert time.monotonic() - t0 < 8
    finally:
        srv.terminate()
        hooks.shutdown()
    by_call = {h["call"]: h for h in _Hooks.received}
    assert by_call["quiet"]["cause"] == "HANGUP"
    for cid in ("d1", "d2"):
        hook = by_call[cid]
        path = os.path.join(srv.recordings, f"{cid}.wav")
        assert hook["cause"] == "ABORTED" and hook["filename"] == f"{cid}.wav"
        assert hook["bytes"] == os.path.getsize(path)
        with open(path, "rb") as f:
            assert hook["sha256"] == hashlib.sha256(f.read()).hexdigest()
        assert sf.info(path).frames / 8000 == pytest.approx(hook["seconds"])


def test_sigterm_to_the_whole_process_group_drains_and_exits(tmp_path) -> None:
    """What systemd's KillMode=control-group and supervisord's stopasgroup do: every process
    of the service gets SIGTERM at once. The ingest process then exits first, and the drain's
    request to it once blocked for ever on a send to a peer that was gone (a reviewer's find:
    still running after 15 s). The recording still ends ABORTED with a final file."""
    srv = Server(str(tmp_path), group=True)
    try:
        srv.create_call(id="g")
        assert srv.api("POST", "/v1/calls/g/recording", {"filename": "g.wav"})[0] == 201
        time.sleep(0.5)
        t0 = time.monotonic()
        os.killpg(srv.proc.pid, signal.SIGTERM)
        assert srv.proc.wait(15) == 0, srv.output()
        assert time.monotonic() - t0 < 10
    finally:
        srv.terminate()
    with open(os.path.join(srv.recordings, "g.wav.json")) as f:
        assert json.load(f)["cause"] == "ABORTED"
    sf.info(os.path.join(srv.recordings, "g.wav"))


def test_malformed_requests_get_named_422s_not_500s(server) -> None:
    """A reviewer's finds: deeply nested JSON was a bare 500; rtp fields of the wrong type
    (0, false, "", []) were taken as absent; ids . and .. were accepted though no client can
    put them in a URL path; webhook URLs that can never be posted to were accepted and
    retried for 31 s."""
    status, body = server.api("POST", "/v1/calls", raw=b"[" * 100_000 + b"]" * 100_000)
    assert status == 422 and body["error"] == "Error", body
    for rtp in (0, False, "", [], "x"):
        status, body = server.api("POST", "/v1/calls", {"media": "rtp", "rtp": rtp})
        assert status == 422 and "rtp must be an object" in body["detail"], (rtp, body)
    for pts in ([], 0, "L16"):
        status, body = server.api("POST", "/v1/calls", {"media": "rtp", "rtp": {"payload_types": pts}})
        assert status == 422 and "payload_types must be an object" in body["detail"], (pts, body)
    status, body = server.api("POST", "/v1/calls", {"media": "rtp", "rtp": {"srtp": []}})
    assert status == 422 and "rtp.srtp must be an object" in body["detail"]
    assert server.api("POST", "/v1/calls", {"media": "rtp", "rtp": None})[0] == 201  # null: absent
    for cid in (".", ".."):
        status, body = server.api("POST", "/v1/calls", {"media": "rtp", "id": cid})
        assert status == 422 and "not . or .." in body["detail"], body
    call, _, _ = server.create_call()
    for url, why in (("http://", "has no host"), ("http://[bad", "not a usable URL"),
                     ("http://127.0.0.1:99999/x", "not a usable URL"), ("http://h:0/x", "out of range"),
                     ("ftp://h/x", "http:// or https://")):
        status, body = server.api("POST", f"/v1/calls/{call}/recording", {"filename": "hook.wav", "webhook": url})
        assert status == 422 and why in body["detail"], (url, body)
    assert server.api("GET", f"/v1/calls/{call}/recording")[1]["state"] == "IDLE"
    server.api("DELETE", f"/v1/calls/{call}")


class _ByPath(BaseHTTPRequestHandler):
    """A webhook receiver that files what it gets by the URL path it was posted to."""

    received: ClassVar[dict[str, list[dict]]] = {}

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _ByPath.received.setdefault(self.path, []).append(body)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_each_webhook_reports_its_own_recording_through_a_quick_restart(server) -> None:
    """Start with webhook A, stop, start again at once with webhook B, stop: A got b.wav's
    result and B nothing (a reviewer's find: the watcher polled state() every 100 ms and
    missed the short IDLE between the two, then read the newer result)."""
    hooks = HTTPServer(("127.0.0.1", free_tcp_port()), _ByPath)
    threading.Thread(target=hooks.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{hooks.server_address[1]}"
    try:
        cid, _, _ = server.create_call()
        for k in range(3):
            for leg in ("a", "b"):
                name = f"quick{k}{leg}.wav"
                assert server.api("POST", f"/v1/calls/{cid}/recording",
                                  {"filename": name, "webhook": f"{base}/{k}{leg}"})[0] == 201
                assert server.api("DELETE", f"/v1/calls/{cid}/recording")[0] == 200
        deadline = time.monotonic() + 10
        while len(_ByPath.received) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        server.api("DELETE", f"/v1/calls/{cid}")
    finally:
        hooks.shutdown()
    assert sorted(_ByPath.received) == [f"/{k}{leg}" for k in range(3) for leg in "ab"]
    for path, bodies in _ByPath.received.items():
        assert [b["filename"] for b in bodies] == [f"quick{path[1:]}.wav"], (path, bodies)
        assert bodies[0]["cause"] == "ABORTED" and bodies[0]["call"] == cid


def test_a_failed_start_is_named_by_its_own_file_and_counted_once(server) -> None:
    """A start whose file the worker cannot make (a 300-character name): 500, the view names
    that file (it showed the previous recording's), and it counts as a start failure only,
    not also as an ended recording and a finalising failure (a reviewer's finds)."""
    from test_service_ops import scrape, value

    cid, _, _ = server.create_call()
    assert server.api("POST", f"/v1/calls/{cid}/recording", {"filename": "good.wav"})[0] == 201
    assert server.api("DELETE", f"/v1/calls/{cid}/recording")[0] == 200
    before = scrape(server.port)
    long_name = "n" * 300 + ".wav"
    status, body = server.api("POST", f"/v1/calls/{cid}/recording", {"filename": long_name})
    assert status == 500 and "name too long" in body["detail"].lower(), body
    view = server.api("GET", f"/v1/calls/{cid}/recording")[1]
    assert (view["state"], view["cause"], view["filename"]) == ("ERROR", "ERROR", long_name)
    after = scrape(server.port)
    for name, labels, delta in (("wholecall_recording_start_failures_total", {}, 1),
                                ("wholecall_recordings_ended_total", {"cause": "ERROR"}, 0),
                                ("wholecall_recording_finalize_failures_total", {}, 0)):
        assert value(after, name, **labels) - value(before, name, **labels) == delta, name
    server.api("DELETE", f"/v1/calls/{cid}")


def test_a_call_the_ingest_added_too_late_is_removed_before_its_slots_are_reused(tmp_path) -> None:
    """An ingest that answers a call's add after the 10 s deadline (stalled: SIGSTOP here)
    still adds it when it catches up. The service had already given the call's ring slots
    back, so the orphan's legs wrote into a later call's rings (cross-talk) and its id was
    refused for ever ("already has media"), a reviewer's find. The slots now wait until the
    ingest has let go of the call."""
    srv = Server(str(tmp_path))
    try:
        pid = srv.api("GET", "/healthz")[1]["ingest_pids"][0]
        os.kill(pid, signal.SIGSTOP)
        try:
            status, body = srv.api("POST", "/v1/calls", {"media": "rtp", "id": "late"})
            assert status == 503 and "did not answer add" in body["detail"], body
        finally:
            os.kill(pid, signal.SIGCONT)
        deadline = time.monotonic() + 20
        while True:  # once the ingest has removed what it added late, the id is free again
            status, body = srv.api("POST", "/v1/calls", {"media": "rtp", "id": "late"})
            if status == 201 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert status == 201, body
        assert srv.api("DELETE", "/v1/calls/late")[0] == 200
    finally:
        assert srv.terminate() == 0, srv.output()


def test_a_late_retry_of_a_remove_leaves_a_new_call_of_the_same_id_alone(tmp_path) -> None:
    """The ingest stalls past both the add's deadline (10 s) and the first retried remove's
    (20 s); the client makes the id again once it is back; the next retry (5 s later) named
    the call by id only and removed the new, healthy call's media (a reviewer's find).
    Removes now name the add they undo."""
    srv = Server(str(tmp_path), "--ingest-procs", "1")
    try:
        pid = srv.api("GET", "/healthz")[1]["ingest_pids"][0]
        os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        try:
            assert srv.api("POST", "/v1/calls", {"media": "rtp", "id": "again"})[0] == 503
            time.sleep(max(0.0, t0 + 21.0 - time.monotonic()))
        finally:
            os.kill(pid, signal.SIGCONT)
        time.sleep(1.0)
        assert srv.api("POST", "/v1/calls", {"media": "rtp", "id": "again"})[0] == 201
        time.sleep(max(0.0, t0 + 28.0 - time.monotonic()))  # past the stale retry
        status, view = srv.api("GET", "/v1/calls/again")
        assert status == 200 and set(view["media"]) == {"inbound", "outbound"}, view
        assert srv.api("DELETE", "/v1/calls/again")[0] == 200
    finally:
        assert srv.terminate() == 0, srv.output()
