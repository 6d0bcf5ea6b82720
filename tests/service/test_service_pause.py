"""Pause and resume over HTTP (an extension of the spec), and the sidecar of a recording
made over RTP: call id, RFC 4733 digits, per-leg media figures."""

from __future__ import annotations

import json
import os
import socket
import time

import numpy as np

from wholecall.ingest.rtp import build_packet
from wholecall.ingest.telephone_event import build_event
from wholecall.worker.codecs.g711 import alaw_encode

FRAME = 160


def tone(freq: float, n: int, start: int) -> np.ndarray:
    t = (start + np.arange(n)) / 8000
    return np.rint(6000 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def level_at(x: np.ndarray, hz: float) -> float:
    t = np.arange(len(x)) / 8000
    return float(2 * abs(np.dot(x.astype(np.float64), np.exp(-2j * np.pi * hz * t))) / max(1, len(x)))


def test_pause_over_http_keeps_the_secret_out_and_the_sidecar_has_the_call(server) -> None:
    import soundfile as sf

    cid, port_in, port_out = server.create_call(rtp={"payload_types": {"101": "telephone-event/8000"}})
    status, body = server.api("POST", f"/v1/calls/{cid}/recording/pause", {})
    assert status == 422 and "cannot pause" in body["detail"]  # nothing is recording yet
    status, body = server.api("POST", f"/v1/calls/{cid}/recording",
                              {"filename": "paused.wav", "file_format": "s16bit", "dtmf_elim": False})
    assert status == 201, body
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    seq = [0]

    def send(freq: float, packets: int, port: int = port_in) -> None:
        t0 = time.monotonic()
        for k in range(packets):
            s = seq[0]
            seq[0] += 1
            sock.sendto(build_packet(8, s, s * FRAME, 0x4444, alaw_encode(tone(freq, FRAME, s * FRAME)).tobytes()),
                        ("127.0.0.1", port))
            delay = t0 + (k + 1) * 0.02 - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    send(440, 40)
    time.sleep(0.8)  # past the 400 ms playout window: all of it is in the rings
    status, body = server.api("POST", f"/v1/calls/{cid}/recording/pause", {"mode": "bogus"})
    assert status == 422 and "mode must be" in body["detail"]
    status, body = server.api("POST", f"/v1/calls/{cid}/recording/pause")
    assert status == 200 and body == {"paused": "silence", "changed": True}
    assert server.api("GET", f"/v1/calls/{cid}/recording")[1]["paused"] == "silence"
    send(1000, 25)  # the secret
    # An RFC 4733 digit keyed while paused, on the outbound leg: not in the sidecar either.
    sock.sendto(build_packet(101, 500, 9000, 0x5555, build_event(9, 800, end=True), marker=True),
                ("127.0.0.1", port_out))
    time.sleep(0.8)
    status, body = server.api("POST", f"/v1/calls/{cid}/recording/resume")
    assert status == 200 and body == {"paused": "", "changed": True}
    assert server.api("POST", f"/v1/calls/{cid}/recording/resume")[1] == {"paused": "", "changed": False}
    send(440, 40)
    time.sleep(0.8)
    status, rec = server.api("DELETE", f"/v1/calls/{cid}/recording")
    assert status == 200 and rec["cause"] == "ABORTED" and rec["sidecar"] == "paused.wav.json", rec
    assert rec["discarded"] is False and rec["audio_detected"] is True
    path = os.path.join(server.recordings, "paused.wav")
    x, _ = sf.read(path, dtype="int16")
    assert level_at(x, 1000) < 60  # the secret's tone at 6000 would read ~6000
    assert np.sqrt(np.mean(x.astype(np.float64) ** 2)) > 1000  # the audio around it is there
    side = json.load(open(path + ".json"))
    assert side["call_id"] == cid
    [span] = side["paused"]
    assert span["mode"] == "silence" and span["call_seconds"] > 0.5
    a = round(span["offset_s"] * 8000)
    assert not x[a:a + round(span["call_seconds"] * 8000)].any()
    assert side["digits"] == []
    assert side["media"]["inbound"]["packets"] >= 105 and side["media"]["inbound"]["lost"] == 0
    server.api("DELETE", f"/v1/calls/{cid}")
    sock.close()
