"""Issue 24 points 1 and 2: /metrics during a real RTP recording (parsed by
prometheus-client's own parser, the counters moving), and JSON log lines from the whole
process tree, with one line per state change of the call and of the recording."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from serve_helpers import Server, free_tcp_port

from wholecall.ingest.rtp import build_packet

FRAME = 160
TOKEN = "ops-token-0123456789abcdef"
DASHBOARD = os.path.join(os.path.dirname(__file__), "..", "..", "deploy", "grafana-dashboard.json")


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics as {(name, sorted labels): value}, through the official parser."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=")
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def send_audio(a: socket.socket, port_in: int, port_out: int, first: int, count: int) -> None:
    """`count` 20 ms A-law packets on each leg from socket `a`, paced at real time."""
    rng = np.random.default_rng(first)
    t0 = time.monotonic()
    for k in range(first, first + count):
        delay = t0 + (k - first) * 0.02 - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        payload = rng.integers(0, 256, FRAME, dtype=np.uint8).tobytes()
        if k != 7:  # one packet lost on the inbound leg
            a.sendto(build_packet(8, k, k * FRAME, 0xAAAA, payload), ("127.0.0.1", port_in))
        a.sendto(build_packet(8, k, k * FRAME, 0xBBBB, payload), ("127.0.0.1", port_out))


def test_metrics_move_during_an_rtp_recording_and_json_logs_parse(tmp_path) -> None:
    ops = free_tcp_port()
    srv = Server(str(tmp_path), "--log-format", "json", "--ops-listen", f"127.0.0.1:{ops}",
                 "--reorder-ms", "400", token=TOKEN)
    try:
        # The API port wants the token for /metrics too; the operations port serves it without.
        assert srv.api("GET", "/metrics", token="")[0] == 401
        before = scrape(ops)
        assert value(before, "wholecall_ready") == 1
        assert value(before, "wholecall_ingest_up") == 1
        assert value(before, "wholecall_websocket_messages_total") == 0  # registered before anything feeds it
        # The Grafana dashboard only asks for series that exist.
        names = {name for name, _ in before}
        with open(DASHBOARD) as f:
            wanted = set(re.findall(r"\bwholecall_[a-z_]+", f.read()))
        assert wanted <= names, wanted - names
        # The container's HEALTHCHECK: the operations port answers without a token, the API port not.
        check = [sys.executable, "-m", "wholecall.service.healthcheck"]
        assert subprocess.run(check + [f"http://127.0.0.1:{ops}/healthz"], timeout=30).returncode == 0
        r = subprocess.run(check + [f"http://127.0.0.1:{srv.port}/healthz"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 1 and "HTTP 401" in r.stderr

        cid, port_in, port_out = srv.create_call(id="metered")
        assert srv.api("POST", f"/v1/calls/{cid}/recording", {"filename": "m/metered.wav"})[0] == 201
        phone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        send_audio(phone, port_in, port_out, 0, 40)
        during1 = scrape(ops)
        send_audio(phone, port_in, port_out, 40, 40)
        phone.close()
        during2 = scrape(ops)
        for d in (during1, during2):
            assert value(d, "wholecall_calls_active") == 1
            assert value(d, "wholecall_recordings_active") == 1
            assert value(d, "wholecall_worker_jobs", worker="0", cpu="0") == 1
        # Counters move between two scrapes of one running recording.
        for leg in ("inbound", "outbound"):
            r1 = value(during1, "wholecall_rtp_packets_received_total", leg=leg)
            r2 = value(during2, "wholecall_rtp_packets_received_total", leg=leg)
            assert 0 < r1 < r2 <= 80, (leg, r1, r2)
            assert value(during2, "wholecall_rtp_datagrams_total", leg=leg) >= r2
        assert value(during1, "wholecall_rtp_packets_lost_total", leg="inbound") == 1
        assert value(during2, "wholecall_rtp_packets_lost_total", leg="outbound") == 0
        assert value(during2, "wholecall_worker_ticks_total", worker="0", cpu="0") > \
            value(during1, "wholecall_worker_ticks_total", worker="0", cpu="0")
        assert value(during2, "wholecall_worker_cpu_seconds_total", worker="0", cpu="0") > 0
        assert value(during2, "wholecall_recording_start_seconds_count") == 1
        assert value(during2, "wholecall_recording_start_seconds_sum") > 0
        assert value(during2, "wholecall_recordings_free_bytes") > 0

        time.sleep(0.6)  # past the re-order window
        status, body = srv.api("DELETE", f"/v1/calls/{cid}/recording")
        assert status == 200 and body["cause"] == "ABORTED"
        assert srv.api("DELETE", f"/v1/calls/{cid}")[0] == 200
        after = scrape(ops)
        assert value(after, "wholecall_recordings_active") == 0 and value(after, "wholecall_calls_active") == 0
        assert value(after, "wholecall_recordings_ended_total", cause="ABORTED") == 1
        assert value(after, "wholecall_recordings_ended_total", cause="HANGUP") == 0
        assert value(after, "wholecall_recording_bytes_total") == os.path.getsize(srv.recordings + "/m/metered.wav")
        # The call is gone from the ingest, its counters are not.
        assert value(after, "wholecall_rtp_packets_received_total", leg="outbound") == 80
        assert value(after, "wholecall_rtp_packets_received_total", leg="inbound") == 79
        assert value(after, "wholecall_rtp_packets_lost_total", leg="inbound") == 1
        assert value(after, "wholecall_rtp_rejected_total", leg="inbound", reason="foreign_source") == 0
        assert value(after, "wholecall_recording_finalize_failures_total") == 0
        # The ended recording is fsynced behind the answer, within moments.
        deadline = time.monotonic() + 10
        while value(after, "wholecall_sync_pending") and time.monotonic() < deadline:
            time.sleep(0.05)
            after = scrape(ops)
        assert value(after, "wholecall_sync_pending") == 0 and value(after, "wholecall_sync_lag_seconds") == 0
        assert value(after, "wholecall_sync_failures_total") == 0
    finally:
        assert srv.terminate() == 0

    with open(srv.log_path) as f:
        lines = f.read().splitlines()
    records = [json.loads(line) for line in lines]  # every line of every process is one JSON object
    for r in records:
        assert {"ts", "level", "event", "msg"} <= set(r), r
        assert r["ts"].endswith("Z") and r["level"] in ("debug", "info", "warning", "error", "critical")
    assert {"listening", "ops_listening", "stopped"} <= {r["event"] for r in records}
    calls = [(r["old"], r["new"]) for r in records if r["event"] == "call_state" and r.get("call") == "metered"]
    assert calls == [("CALL_INCOMING", "RING_INCOMING"), ("RING_INCOMING", "ANSWERED"), ("ANSWERED", "IDLE")]
    recs = [r for r in records if r["event"] == "recording_state" and r.get("call") == "metered"]
    assert [(r["old"], r["new"]) for r in recs] == [("IDLE", "STARTING"), ("STARTING", "RECORDING"),
                                                    ("RECORDING", "STOPPING"), ("STOPPING", "IDLE")]
    assert all(r["recording"] == "m/metered.wav" and r["worker"] == 0 and r["job"] > 0 for r in recs)
    assert recs[-1]["cause"] == "ABORTED"
    # No line per audio tick: 3.2 s of audio (160 ticks) and a handful of lines about the call.
    about = [r for r in records if r.get("call") == "metered" or "metered" in r["msg"]]
    assert len(about) < 20, about
    # Every line about the call carries its id, and the controller's lines about a worker its index.
    assert [r["msg"] for r in about if r.get("call") != "metered"] == []
    assert all("worker" in r for r in records if re.match(r"worker \d", r["msg"]))
