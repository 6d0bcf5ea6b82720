"""`wholecall stress --media rtp` end to end, small: every packet sent is received, every file valid."""

from __future__ import annotations

import json
import subprocess
import sys

from serve_helpers import free_udp_range


def test_rtp_stress_smoke(tmp_path) -> None:
    low, high = free_udp_range(40)
    out = tmp_path / "report.json"
    r = subprocess.run([sys.executable, "-m", "wholecall.cli", "stress", "--media", "rtp", "--calls", "4",
                        "--seconds", "2", "--workers", "1", "--rtp-ports", f"{low}-{high}", "--json", str(out)],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(out.read_text())
    assert report["packets_sent"] == report["packets_received"] == 4 * 2 * 100
    assert report["files_bad"] == report["ring_overruns"] == report["socket_drops"] == 0
    assert r.stdout.rstrip().endswith("wholecall stress --media rtp: OK")  # a verdict after the JSON


def test_twilio_stress_smoke(tmp_path) -> None:
    out = tmp_path / "report.json"
    r = subprocess.run([sys.executable, "-m", "wholecall.cli", "stress", "--media", "twilio", "--calls", "4",
                        "--seconds", "2", "--workers", "1", "--json", str(out)],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(out.read_text())
    assert report["messages_sent"] == report["messages_received"] == 4 * 2 * 100
    assert report["files_bad"] == report["ring_overruns"] == report["late"] == report["not_hung_up_by_stop"] == 0
    assert r.stdout.rstrip().endswith("wholecall stress --media twilio: OK")
