"""What an operator's probes and signals meet: /healthz says degraded when the service
cannot take calls, SIGHUP drains like SIGTERM, and a start refused for the disk is a 503
counted as a failed start. Real `serve` processes; each was a reviewer's find."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from serve_helpers import Server
from test_service_ops import scrape, value


def test_healthz_is_503_while_an_ingest_process_does_not_answer(tmp_path) -> None:
    srv = Server(str(tmp_path))
    try:
        pid = srv.api("GET", "/healthz")[1]["ingest_pids"][0]
        os.kill(pid, signal.SIGSTOP)
        try:
            status, body = srv.api("GET", "/healthz")
        finally:
            os.kill(pid, signal.SIGCONT)
        assert status == 503 and body["status"] == "degraded", body
        assert any(p.startswith("ingest 0:") and "did not answer" in p for p in body["problems"]), body
        status, body = srv.api("GET", "/healthz")
        assert status == 200 and body["status"] == "ok" and "problems" not in body
    finally:
        assert srv.terminate() == 0, srv.output()


def test_sighup_drains_like_sigterm(tmp_path) -> None:
    """Its default action killed serve at once: no sidecar for the running recording, the
    arena left in /dev/shm (a terminal closing on `wholecall serve &`)."""
    srv = Server(str(tmp_path))
    cid, _, _ = srv.create_call()
    assert srv.api("POST", f"/v1/calls/{cid}/recording", {"filename": "hup.wav"})[0] == 201
    time.sleep(0.3)
    srv.proc.send_signal(signal.SIGHUP)
    assert srv.proc.wait(20) == 0, srv.output()
    srv.terminate()
    with open(os.path.join(srv.recordings, "hup.wav.json")) as f:
        assert json.load(f)["cause"] == "ABORTED"


def test_a_start_refused_for_the_disk_is_a_counted_503(tmp_path) -> None:
    """A recordings disk below the free-space watermark (64 MiB; a 1 MiB tmpfs here) is not
    the request's fault: 503 and a failed start in the metric operators alert on (it was a
    422, uncounted, and named a setting serve does not have)."""
    rec = tmp_path / "small"
    rec.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(rec)], check=True, capture_output=True)
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
        pytest.skip(f"cannot mount a tmpfs here: {e}")
    try:
        srv = Server(str(tmp_path), "--recordings-dir", str(rec))
        try:
            cid, _, _ = srv.create_call()
            before = value(scrape(srv.port), "wholecall_recording_start_failures_total")
            status, body = srv.api("POST", f"/v1/calls/{cid}/recording", {"filename": "full.wav"})
            assert status == 503 and body["error"] == "Unavailable" and "free some space" in body["detail"], body
            assert value(scrape(srv.port), "wholecall_recording_start_failures_total") == before + 1
        finally:
            assert srv.terminate() == 0, srv.output()
    finally:
        subprocess.run(["umount", "-l", str(rec)], check=False)


def test_a_killed_serves_run_directory_is_swept_by_the_next_start(tmp_path) -> None:
    """`wholecall-serve-*` directories (control sockets) of a SIGKILLed serve stayed in
    $TMPDIR for ever (a reviewer's find): the service holds its own locked, and the next
    start removes any no process holds."""
    import glob
    import shutil
    import sys
    import tempfile

    from serve_helpers import free_tcp_port, free_udp_range

    short = tempfile.mkdtemp(prefix="wcs-", dir="/tmp")  # ipc socket paths must stay under 108 bytes
    env = dict(os.environ, TMPDIR=short)

    def start() -> subprocess.Popen:
        low, high = free_udp_range()
        port = free_tcp_port()
        proc = subprocess.Popen([sys.executable, "-m", "wholecall.cli", "serve", "--listen", f"127.0.0.1:{port}",
                                 "--recordings-dir", str(tmp_path / "rec"), "--workers", "1", "--max-calls", "4",
                                 "--rtp-ports", f"{low}-{high}"], env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not glob.glob(os.path.join(short, "wholecall-serve-*")) and time.monotonic() < deadline:
            time.sleep(0.1)
        return proc

    first = start()
    left = glob.glob(os.path.join(short, "wholecall-serve-*"))
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    time.sleep(1.0)
    assert all(os.path.isdir(d) for d in left) and left
    second = start()
    try:
        deadline = time.monotonic() + 30
        while any(os.path.exists(d) for d in left) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(os.path.exists(d) for d in left)
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
        assert not glob.glob(os.path.join(short, "wholecall-serve-*"))  # its own removed at its exit
    finally:
        if second.poll() is None:
            os.killpg(second.pid, signal.SIGKILL)
        shutil.rmtree(short, ignore_errors=True)
