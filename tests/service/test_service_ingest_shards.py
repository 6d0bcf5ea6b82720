"""`wholecall serve --ingest-procs 2`: calls are spread over both ingest processes, each
binding only its own port sub-range, and every call's file is still sample-exact."""

from __future__ import annotations

import os
import socket
import time

import numpy as np
import soundfile as sf
from serve_helpers import Server

from wholecall.ingest.g711 import decode_alaw
from wholecall.ingest.rtp import build_packet

FRAME = 160
PACKETS = 50


def test_two_ingest_processes_record_calls_on_both_sample_exact(tmp_path) -> None:
    srv = Server(str(tmp_path), "--ingest-procs", "2", "--reorder-ms", "400")
    try:
        _, health = srv.api("GET", "/healthz")
        assert len(health["ingest_pids"]) == 2 and len(set(health["ingest_pids"])) == 2
        middle = srv.rtp_low + (srv.rtp_high - srv.rtp_low + 1) // 2
        calls = [srv.create_call() for _ in range(4)]
        # Routed to the least loaded process: two calls on each, each in its process's half.
        halves = [port_in >= middle for _, port_in, _ in calls]
        assert sorted(halves) == [False, False, True, True], calls
        for _, port_in, port_out in calls:
            assert (port_in >= middle) == (port_out >= middle)
        for cid, _, _ in calls:
            status, body = srv.api("POST", f"/v1/calls/{cid}/recording",
                                   {"filename": f"{cid}.wav", "file_format": "s16bit", "recording_mode": "separate",
                                    "dtmf_elim": False})
            assert status == 201, body

        rng = np.random.default_rng(7)
        payloads = rng.integers(0, 256, (len(calls), 2, PACKETS, FRAME), dtype=np.uint8)
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        t0 = time.monotonic()
        for k in range(PACKETS):
            delay = t0 + 0.02 * k - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            for c, (_, port_in, port_out) in enumerate(calls):
                for leg, port in enumerate((port_in, port_out)):
                    pkt = build_packet(8, 100 + k, 8000 + k * FRAME, 0x10 + 2 * c + leg, payloads[c, leg, k].tobytes())
                    tx.sendto(pkt, ("127.0.0.1", port))
        tx.close()
        time.sleep(0.8)  # past the window
        for c, (cid, _, _) in enumerate(calls):
            status, body = srv.api("DELETE", f"/v1/calls/{cid}/recording")
            assert status == 200, body
            x, rate = sf.read(os.path.join(srv.recordings, f"{cid}.wav"), dtype="int16")
            assert rate == 8000 and x.shape[1] == 2
            for leg in range(2):
                expect = decode_alaw(payloads[c, leg].tobytes())
                got = x[:, leg]
                start = int(np.flatnonzero(got)[0])  # A-law never decodes to 0
                np.testing.assert_array_equal(got[start:start + len(expect)], expect)
                assert not got[start + len(expect):].any()
            _, call = srv.api("GET", f"/v1/calls/{cid}")
            assert call["media"]["inbound"]["received"] == call["media"]["outbound"]["received"] == PACKETS
            srv.api("DELETE", f"/v1/calls/{cid}")
        # /metrics sums both processes' counters (calls are retired into the totals).
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/metrics", timeout=30) as r:
            fams = list(text_string_to_metric_families(r.read().decode()))
        got = [x for f in fams for x in f.samples if x.name == "wholecall_rtp_packets_received_total"]
        assert sum(x.value for x in got) == 2 * len(calls) * PACKETS, got
    finally:
        assert srv.terminate() == 0, srv.output()
