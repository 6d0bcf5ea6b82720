"""`wholecall stress --media twilio`: Twilio Media Streams over loopback into a real `wholecall serve`.

The load generator is this process: it starts `wholecall serve`, creates the calls with
``{"media": "twilio"}`` and starts their recordings through the HTTP API, opens one
WebSocket per call to the URL the API returned (the handshake done by hand over a plain
socket), sends ``connected`` and ``start``, then every 20 ms one ``media`` message per
track (inbound and outbound: 100 messages/s per call), and at the end ``stop`` on every
socket, which hangs each call up. Then every call is checked: hung up by its stream, cause
HANGUP, every message received, none late, the file valid and as long as the stream.

Why the generator is cheap: every stream of a tick carries the same two messages, so the
frames are built once per tick (client frames are masked with the all-zero key, which
RFC 6455 allows and which makes masking a no-op) and written to each socket with one
`send`. The stream process must still parse, decode and place every message of every call.
Reported: messages sent and received, late, ring overruns, bad files, and the stream
process's CPU per message (from /proc: its WebSocket reads, JSON, base64, mu-law, playout
and ring writes all included).
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlparse

import numpy as np

from .rtp_stress import _api, _busy_s, _cpu_s, _free_port, check_media_args, verdict

TICK_S = 0.02
SID = "MZ" + "0" * 32


def _frame(text: str) -> bytes:
    """One masked client text frame with the zero masking key."""
    data = text.encode()
    n = len(data)
    if n < 126:
        head = struct.pack("!BB", 0x81, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x81, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
    return head + b"\x00\x00\x00\x00" + data


def _connect(url: str) -> socket.socket:
    u = urlparse(url)
    s = socket.create_connection((u.hostname, u.port), timeout=30)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    reply = b""
    while b"\r\n\r\n" not in reply:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError(f"{url}: closed during the handshake")
        reply += chunk
    if not reply.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(f"{url}: {reply.splitlines()[0].decode(errors='replace')}")
    s.setblocking(False)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 << 10)
    return s


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="wholecall stress --media twilio")
    p.add_argument("--calls", type=int, default=100, help="concurrent streamed calls (two tracks each)")
    p.add_argument("--seconds", type=float, default=20.0, help="how long every call streams")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--stream-procs", type=int, default=0, help="stream ingest processes (default: serve's)")
    p.add_argument("--dir", default="", help="recordings directory (default: a temporary one, removed)")
    p.add_argument("--json", help="write the report here too")
    a = p.parse_args(argv)
    check_media_args(p, a)
    n = a.calls
    tmp = tempfile.mkdtemp(prefix="wholecall-twilio-stress-")
    rec_dir = a.dir or os.path.join(tmp, "recordings")
    port = _free_port()
    cmd = [sys.executable, "-m", "wholecall.cli", "serve", "--listen", f"127.0.0.1:{port}", "--recordings-dir",
           rec_dir, "--rtp-ports", "20000-20100", "--max-calls", str(n + 8), "--media-timeout", "0"]
    if a.workers:
        cmd += ["--workers", str(a.workers)]
    if a.stream_procs:
        cmd += ["--stream-procs", str(a.stream_procs)]
    log = open(os.path.join(tmp, "serve.log"), "w")  # noqa: SIM115  (the server's output for its lifetime)
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    socks: list[socket.socket] = []
    failed = True
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                status, health = _api(base, "GET", "/healthz")
                if status == 200:
                    break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                print("the server did not come up; see", log.name, file=sys.stderr)
                return 1
            time.sleep(0.2)
        streams_pids = health["streams_pids"]
        ingest_pids = health["ingest_pids"]
        worker_pids = [w["pid"] for w in health["workers"]]

        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            def setup(i: int) -> socket.socket:
                status, call = _api(base, "POST", "/v1/calls", {"media": "twilio", "id": f"t{i}"})
                if status != 201:
                    raise RuntimeError(f"create t{i}: {status} {call}")
                status, r = _api(base, "POST", f"/v1/calls/t{i}/recording", {"filename": f"t{i}.wav"})
                if status != 201:
                    raise RuntimeError(f"start t{i}: {status} {r}")
                s = _connect(call["websocket"])
                s.setblocking(True)
                s.sendall(_frame(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
                          + _frame(json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": SID, "start": {
                              "streamSid": SID, "callSid": f"CA{i}", "tracks": ["inbound", "outbound"],
                              "customParameters": {}, "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                                                      "channels": 1}}})))
                s.setblocking(False)
                return s
            socks = list(pool.map(setup, range(n)))
        setup_s = time.monotonic() - t0

        # A quiet mu-law tone (never the zero code), the same 20 ms for every message.
        payload = base64.b64encode((np.arange(160) % 16 + 0xD0).astype(np.uint8).tobytes()).decode()
        ticks = int(a.seconds / TICK_S)
        load0 = os.getloadavg()[0]
        cpus0 = [_cpu_s(p) for p in streams_pids]
        wcpu0 = sum(_cpu_s(w) for w in worker_pids)
        ocpu0 = sum(_cpu_s(p) for p in ingest_pids) + _cpu_s(server.pid)
        busy0 = _busy_s()
        me0 = time.process_time()
        backlog: dict[int, bytes] = {}
        sent = 0
        late_ticks = 0
        stalled = 0
        t_start = time.monotonic()
        for k in range(ticks):
            at = t_start + k * TICK_S
            delay = at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -TICK_S:
                late_ticks += 1
            data = b"".join(_frame(
                f'{{"event":"media","sequenceNumber":"{2 * k + j + 2}","streamSid":"{SID}","media":{{"track":"{track}",'
                f'"chunk":"{k + 1}","timestamp":"{20 * k}","payload":"{payload}"}}}}')
                for j, track in enumerate(("inbound", "outbound")))
            for i, s in enumerate(socks):
                out = backlog.pop(i, b"") + data if backlog else data
                try:
                    done = s.send(out)
                except BlockingIOError:
                    done = 0
                if done < len(out):  # the server is not reading fast enough: keep the rest, count it
                    backlog[i] = out[done:]
                    stalled += 1
            sent += 2 * n
        for _ in range(500):  # what the kernel would not take yet
            if not backlog:
                break
            for i in list(backlog):
                try:
                    done = socks[i].send(backlog[i])
                except BlockingIOError:
                    done = 0
                backlog[i] = backlog[i][done:]
                if not backlog[i]:
                    del backlog[i]
            time.sleep(0.01)
        send_s = time.monotonic() - t_start
        gen_cpu = time.process_time() - me0
        time.sleep(0.5)
        cpus1 = [_cpu_s(p) for p in streams_pids]
        wcpu1 = sum(_cpu_s(w) for w in worker_pids)
        ocpu1 = sum(_cpu_s(p) for p in ingest_pids) + _cpu_s(server.pid)
        busy1 = _busy_s()
        span = time.monotonic() - t_start
        # Everything else the machine did meanwhile (other people's work), as a share of all CPUs.
        ours = sum(cpus1) - sum(cpus0) + (wcpu1 - wcpu0) + (ocpu1 - ocpu0) + (time.process_time() - me0)
        foreign = max(0.0, (busy1 - busy0) - ours) / (span * (os.cpu_count() or 1))
        load1 = os.getloadavg()[0]
        stop = _frame(json.dumps({"event": "stop", "streamSid": SID, "stop": {"callSid": "CA"}}))
        for s in socks:
            s.setblocking(True)
            s.sendall(stop)

        received = late = overruns = bad = not_hung_up = 0
        deadline = time.monotonic() + 60

        def finish(i: int) -> dict:
            while True:
                _, call = _api(base, "GET", f"/v1/calls/t{i}")
                if ("hangup_reason" in call and call["recording"]["state"] == "IDLE") or time.monotonic() > deadline:
                    return call
                time.sleep(0.2)
        import soundfile as sf

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            for i, call in enumerate(pool.map(finish, range(n))):
                if call.get("hangup_reason") != "stop":
                    not_hung_up += 1
                m = call.get("media", {})
                for leg in ("inbound", "outbound"):
                    received += m.get(leg, {}).get("messages", 0)
                    late += m.get(leg, {}).get("late", 0)
                    overruns += m.get(leg, {}).get("ring_overruns", 0)
                try:
                    info = sf.info(os.path.join(rec_dir, f"t{i}.wav"))
                    if call["recording"]["cause"] != "HANGUP" or info.frames < 8000 * (a.seconds - 0.5):
                        bad += 1
                except (RuntimeError, OSError, KeyError):
                    bad += 1
        cpu = sum(cpus1) - sum(cpus0)
        report = {
            "calls": n, "seconds": round(send_s, 2), "setup_s": round(setup_s, 2),
            "messages_sent": sent, "messages_per_s": round(sent / send_s), "messages_received": received,
            "late": late, "ring_overruns": overruns, "files_bad": bad, "not_hung_up_by_stop": not_hung_up,
            "stream_procs": len(streams_pids), "streams_cpu_s": round(cpu, 2),
            "streams_cpu_pct": round(100 * cpu / send_s, 1),
            "streams_cpu_pct_per_proc": [round(100 * (c1 - c0) / send_s, 1) for c0, c1 in zip(cpus0, cpus1)],
            "streams_us_per_message": round(1e6 * cpu / max(1, received), 2),
            "workers_cpu_pct": round(100 * (wcpu1 - wcpu0) / send_s, 1),
            "generator_cpu_pct": round(100 * gen_cpu / send_s, 1), "generator_late_ticks": late_ticks,
            "send_stalls": stalled, "foreign_cpu_share": round(foreign, 3),
            "load_avg_1min": [round(load0, 2), round(load1, 2)],
        }
        print(json.dumps(report, indent=1))
        if a.json:
            with open(a.json, "w") as f:
                json.dump(report, f, indent=1)
        ok = verdict("wholecall stress --media twilio", {
            f"{sent - received} of {sent} messages not received": received == sent, f"{late} late": late == 0,
            f"{overruns} ring overruns": overruns == 0, f"{bad} of {n} files bad": bad == 0,
            f"{not_hung_up} calls not hung up": not_hung_up == 0})
        failed = not ok
        return 0 if ok else 1
    finally:
        for s in socks:
            s.close()
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
        log.close()
        if not a.dir and not failed:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        elif failed:
            print(f"kept {tmp} (serve.log) for a look", file=sys.stderr)

