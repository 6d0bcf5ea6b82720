"""`wholecall stress --media rtp`: real RTP over loopback into a real `wholecall serve`.

The load generator is this process: it starts `wholecall serve`, creates the calls and
starts their recordings through the HTTP API, then sends one 20 ms PCMA packet per leg
per 20 ms with `sendmmsg` in batches (`ingest.recvmmsg.BatchSender`), and at the end hangs
every call up and checks every file. Reported: packets sent, received by the ingest, lost,
late, dropped by the kernel (RcvbufErrors), ring overruns, and the ingest's CPU per packet
(from /proc, so its receive, parse, playout and ring writes are all included).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np

from wholecall.ingest.recvmmsg import BatchSender, ip4, udp_counters

FRAME = 160
PACKET = 12 + FRAME
BATCH = 1024


def _api(base: str, method: str, path: str, body: object = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _busy_s() -> float:
    """CPU seconds the whole machine spent busy (all CPUs), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def verdict(name: str, checks: dict[str, bool]) -> bool:
    """Print one line after the report: OK, or FAILED naming every check that failed (the
    JSON alone left a reader to work out whether the run passed)."""
    failed = [what for what, good in checks.items() if not good]
    print(f"{name}: " + ("OK" if not failed else "FAILED: " + "; ".join(failed)))
    return not failed


def check_media_args(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """Refuse, by name, counts a streamed-media run cannot mean (0 calls "passed": nothing
    sent, nothing missing)."""
    if a.calls < 1:
        p.error(f"--calls must be at least 1, got {a.calls}")
    if not a.seconds > 0:
        p.error(f"--seconds must be positive, got {a.seconds:g}")
    if a.workers < 0:
        p.error(f"--workers must be 0 (one per CPU) or more, got {a.workers}")
    if a.json and not os.path.isdir(os.path.dirname(os.path.abspath(a.json))):
        p.error(f"--json {a.json}: its directory does not exist")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="wholecall stress --media rtp")
    p.add_argument("--calls", type=int, default=100, help="concurrent calls (two RTP streams each)")
    p.add_argument("--seconds", type=float, default=20.0, help="how long every call sends")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--ingest-procs", type=int, default=0, help="ingest processes of the server (default: its own)")
    p.add_argument("--rtp-ports", default="", help="LOW-HIGH for the server (default: 20000-39999, wider for many calls)")
    p.add_argument("--dir", default="", help="recordings directory (default: a temporary one, removed)")
    p.add_argument("--json", help="write the report here too")
    a = p.parse_args(argv)
    check_media_args(p, a)
    n = a.calls
    tmp = tempfile.mkdtemp(prefix="wholecall-rtp-stress-")
    rec_dir = a.dir or os.path.join(tmp, "recordings")
    port = _free_port()
    # The server skips ports another process holds, so two runs can share one wide range; a
    # range cut to this run's size left a second run at once with nothing free (every call 503).
    ports = a.rtp_ports or f"20000-{min(65535, max(39999, 20000 + 8 * n + 100))}"
    cmd = [sys.executable, "-m", "wholecall.cli", "serve", "--listen", f"127.0.0.1:{port}", "--recordings-dir",
           rec_dir, "--rtp-ports", ports, "--max-calls", str(n + 8), "--media-timeout", "0"]
    if a.workers:
        cmd += ["--workers", str(a.workers)]
    if a.ingest_procs:
        cmd += ["--ingest-procs", str(a.ingest_procs)]
    log = open(os.path.join(tmp, "serve.log"), "w")  # noqa: SIM115  (the server's output for its lifetime)
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
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
        ingest_pids = health.get("ingest_pids") or [health["ingest_pid"]]
        worker_pids = [w["pid"] for w in health["workers"]]

        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            def setup(i: int) -> tuple[int, int]:
                status, call = _api(base, "POST", "/v1/calls", {"media": "rtp", "id": f"s{i}"})
                if status != 201:
                    raise RuntimeError(f"create s{i}: {status} {call}")
                status, r = _api(base, "POST", f"/v1/calls/s{i}/recording", {"filename": f"s{i}.wav"})
                if status != 201:
                    raise RuntimeError(f"start s{i}: {status} {r}")
                legs = call["legs"]
                return legs["inbound"]["rtp"]["port"], legs["outbound"]["rtp"]["port"]
            pairs = list(pool.map(setup, range(n)))
        setup_s = time.monotonic() - t0
        dest = np.array([p for pair in pairs for p in pair], dtype=np.uint16)
        legs = len(dest)

        # One packet per leg per 20 ms: a fixed payload (a quiet A-law tone), headers rewritten per tick.
        senders = []
        for start in range(0, legs, BATCH):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            rows = min(BATCH, legs - start)
            tx = BatchSender(s, rows, PACKET)
            buf = tx.buffer
            buf[:, 0] = 0x80
            buf[:, 1] = 8
            ssrc = (np.arange(start, start + rows, dtype=np.uint32) + 0x1000).astype(">u4")
            buf[:, 8:12] = ssrc.view(np.uint8).reshape(rows, 4)
            buf[:, 12:] = (np.arange(FRAME) % 16 + 0xD0).astype(np.uint8)
            senders.append((tx, dest[start:start + rows], rows))
        udp0 = udp_counters()
        cpu0 = sum(_cpu_s(p) for p in ingest_pids)
        wcpu0 = sum(_cpu_s(w) for w in worker_pids)
        scpu0 = _cpu_s(server.pid)
        busy0 = _busy_s()
        sent = 0
        short = 0
        ticks = int(a.seconds / 0.02)
        t_start = time.monotonic()
        me0 = time.process_time()
        late_ticks = 0
        for k in range(ticks):
            at = t_start + k * 0.02
            delay = at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -0.02:
                late_ticks += 1
            seq = np.array([k & 0xFFFF], ">u2").view(np.uint8)
            ts = np.array([(k * FRAME) & 0xFFFFFFFF], ">u4").view(np.uint8)
            for tx, dst, rows in senders:
                tx.buffer[:, 2:4] = seq
                tx.buffer[:, 4:8] = ts
                done = 0
                while done < rows:  # a full send buffer takes the rest on the next call
                    got = tx.send(np.full(rows - done, PACKET), ip4("127.0.0.1"), dst[done:]) if done == 0 else \
                        _send_rest(tx, rows, done, dst)
                    if got == 0:
                        short += 1
                        time.sleep(0.0005)
                    done += got
                sent += rows
        send_s = time.monotonic() - t_start
        gen_cpu = time.process_time() - me0
        time.sleep(0.5)
        cpu1 = sum(_cpu_s(p) for p in ingest_pids)
        wcpu1 = sum(_cpu_s(w) for w in worker_pids)
        scpu1 = _cpu_s(server.pid)
        busy1 = _busy_s()
        # Everything else the machine did meanwhile (other people's work), as a share of all CPUs.
        ours = (cpu1 - cpu0) + (wcpu1 - wcpu0) + (scpu1 - scpu0) + (time.process_time() - me0)
        foreign = max(0.0, (busy1 - busy0) - ours) / ((time.monotonic() - t_start) * (os.cpu_count() or 1))
        udp1 = udp_counters()

        received = lost = late = overruns = kdrops = 0
        unknown_drops = False
        results: list[dict] = []

        def finish(i: int) -> tuple[dict, dict]:
            _, call = _api(base, "GET", f"/v1/calls/s{i}")
            _, end = _api(base, "DELETE", f"/v1/calls/s{i}")
            return call, end
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            for call, end in pool.map(finish, range(n)):
                if "media" not in call or "recording" not in end:  # the service failed this call: a bad file
                    results.append({"cause": f"no answer: {call.get('detail') or end.get('detail')}"})
                    continue
                for m in call["media"].values():
                    received += m["received"]
                    lost += m["lost"]
                    late += m["late"]
                    overruns += m["ring_overruns"]
                    kdrops += max(0, m["kernel_drops"])
                    unknown_drops |= m["kernel_drops"] < 0
                results.append(end["recording"])
        import soundfile as sf

        bad = 0
        for i, r in enumerate(results):
            try:
                info = sf.info(os.path.join(rec_dir, f"s{i}.wav"))
                if r["cause"] != "HANGUP" or info.frames < 8000 * (a.seconds - 1):
                    bad += 1
            except (RuntimeError, OSError):  # soundfile's LibsndfileError is a RuntimeError
                bad += 1
        ingest_cpu = cpu1 - cpu0
        report = {
            "calls": n, "streams": legs, "seconds": round(send_s, 2), "setup_s": round(setup_s, 2),
            "packets_sent": sent, "packets_per_s": round(sent / send_s), "packets_received": received,
            "lost": lost, "late": late, "kernel_rcvbuf_errors": udp1["RcvbufErrors"] - udp0["RcvbufErrors"],
            "socket_drops": kdrops, "ring_overruns": overruns, "files_bad": bad,
            "ingest_cpu_s": round(ingest_cpu, 2), "ingest_cpu_pct": round(100 * ingest_cpu / send_s, 1),
            "ingest_us_per_packet": round(1e6 * ingest_cpu / max(1, received), 2),
            "workers_cpu_pct": round(100 * (wcpu1 - wcpu0) / send_s, 1),
            "generator_cpu_pct": round(100 * gen_cpu / send_s, 1), "generator_late_ticks": late_ticks,
            "ingest_procs": len(ingest_pids), "foreign_cpu_share": round(foreign, 3),
            "send_retries": short,
        }
        print(json.dumps(report, indent=1))
        if a.json:
            with open(a.json, "w") as f:
                json.dump(report, f, indent=1)
        # Our sockets' own drops decide; the machine-wide RcvbufErrors (any program's) only
        # where a socket's could not be read.
        drops_ok = kdrops == 0 and (not unknown_drops or report["kernel_rcvbuf_errors"] == 0)
        ok = verdict("wholecall stress --media rtp", {
            f"{sent - received} of {sent} packets not received": received == sent,
            f"{kdrops} dropped by the kernel on our sockets": drops_ok,
            f"{overruns} ring overruns": overruns == 0, f"{bad} of {n} files bad": bad == 0})
        return 0 if ok else 1
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
        log.close()
        if not a.dir:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


def _send_rest(tx: BatchSender, rows: int, done: int, dst: np.ndarray) -> int:
    """Send rows done..rows-1 (sendmmsg sends from row 0: move them there, then put row 0.. back)."""
    m = rows - done
    rest = tx.buffer[done:rows].copy()
    front = tx.buffer[:m].copy()
    tx.buffer[:m] = rest
    try:
        return tx.send(np.full(m, PACKET), ip4("127.0.0.1"), dst[done:])
    finally:
        tx.buffer[:m] = front
