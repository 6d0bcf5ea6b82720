"""Helpers: `wholecall serve` as a real process tree on 127.0.0.1: free ports found at runtime, a
private recordings directory, SIGTERM (then SIGKILL) at the end so nothing is left."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_udp_range(size: int = 40) -> tuple[int, int]:
    """A range of UDP ports that are free now (other engineers' tests share this machine)."""
    for _ in range(200):
        low = random.randrange(42000, 60000, 2)
        socks = []
        try:
            for p in range(low, low + size):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return low, low + size - 1
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free UDP port range")


class Server:
    """One `wholecall serve` process; `api()` speaks its HTTP contract."""

    def __init__(self, tmp: str, *extra: str, token: str = "", timeout: float = 60.0, group: bool = False) -> None:
        self.port = free_tcp_port()
        self.rtp_low, self.rtp_high = free_udp_range()
        self.recordings = os.path.join(tmp, "recordings")
        self.token = token
        args = [sys.executable, "-m", "wholecall.cli", "serve", "--listen", f"127.0.0.1:{self.port}",
                "--recordings-dir", self.recordings, "--workers", "1", "--max-calls", "32",
                "--rtp-ports", f"{self.rtp_low}-{self.rtp_high}", *extra]
        if token:
            path = os.path.join(tmp, "token")
            with open(path, "w") as f:
                f.write(token + "\n")
            args += ["--token-file", path]
        self.log_path = os.path.join(tmp, "serve.log")
        self.log = open(self.log_path, "w")  # noqa: SIM115  (the server's output for its lifetime)
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, cwd=tmp,
                                     env=dict(os.environ, WHOLECALL_LOG="INFO"),
                                     start_new_session=group)  # `group`: a process group of its own to signal
        self.group = group
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}:\n{self.output()}")
            try:
                status, _ = self.api("GET", "/healthz")
                if status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"serve not healthy in {timeout} s:\n{self.output()}")
            time.sleep(0.1)

    def output(self) -> str:
        self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def api(self, method: str, path: str, body: object = None, token: str | None = None,
            raw: bytes | None = None, timeout: float = 30.0) -> tuple[int, dict]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        tok = self.token if token is None else token
        if tok:
            req.add_header("Authorization", f"Bearer {tok}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def create_call(self, **body: object) -> tuple[str, int, int]:
        status, call = self.api("POST", "/v1/calls", {"media": "rtp", **body})
        assert status == 201, call
        legs = call["legs"]
        return call["id"], legs["inbound"]["rtp"]["port"], legs["outbound"]["rtp"]["port"]

    def terminate(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.group:  # whatever of its group outlived it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()
        return self.proc.returncode
