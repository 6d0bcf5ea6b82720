"""`wholecall demo` on a fresh machine: one call's worth of resources, no warning; a real
problem (too few descriptors, an unusable directory) says so once, with what to do."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import soundfile as sf


def demo(cwd: str, *args: str, env: dict | None = None, nofile: int = 0) -> subprocess.CompletedProcess:
    def limit() -> None:
        if nofile:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    return subprocess.run([sys.executable, "-m", "wholecall.cli", "demo", "--seconds", "0.4", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120, preexec_fn=limit,
                          env=dict(os.environ, **(env or {})))


def test_demo_is_silent_and_reserves_one_call(tmp_path) -> None:
    r = demo(str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert "cause: HANGUP" in r.stdout
    [name] = [n for n in os.listdir(tmp_path / "recordings") if n.endswith(".wav")]
    assert sorted(os.listdir(tmp_path / "recordings")) == [name, name + ".json"]  # the file and its sidecar
    assert sf.info(str(tmp_path / "recordings" / name)).frames == 3200
    # With INFO logging the controller says what it reserved: one channel's two rings, one worker.
    r = demo(str(tmp_path), env={"WHOLECALL_LOG": "INFO"})
    assert r.returncode == 0, r.stderr
    up = [line for line in r.stderr.splitlines() if "controller up" in line]
    assert len(up) == 1 and "1 workers" in up[0] and "(2 slots x 65536 samples)" in up[0], r.stderr
    assert "WARNING" not in r.stderr


def test_real_problems_warn_once_with_what_to_do(tmp_path) -> None:
    r = demo(str(tmp_path), nofile=60)
    assert r.returncode == 0, r.stderr
    warnings = r.stderr.strip().splitlines()
    assert len(warnings) == 1, r.stderr
    assert "RLIMIT_NOFILE" in warnings[0] and "LimitNOFILE=" in warnings[0]
    (tmp_path / "taken").write_text("not a directory")
    r = demo(str(tmp_path), "--dir", "taken")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "wholecall demo: cannot use taken as the recordings directory: File exists; pass --dir a writable directory"]
    r = demo(str(tmp_path), "--format", "mp3")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "file_format" in r.stderr
