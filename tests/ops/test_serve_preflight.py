"""`wholecall serve` refuses, in one line naming the setting and before anything starts,
what this host cannot honour; and says what works badly. Real `serve` processes and real
sockets; each case was a reviewer's find (healthy then failing every call, a traceback, or
a 30 s hang)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from wholecall.service import preflight
from wholecall.service.config import ConfigError, load

SERVE = [sys.executable, "-m", "wholecall.cli", "serve"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(tmp_path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*SERVE, "--recordings-dir", str(tmp_path / "rec"), "--listen", f"127.0.0.1:{_free_port()}",
                           "--rtp-ports", "46000-46099", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=tmp_path, check=False)


def test_an_rtp_address_this_host_does_not_own_is_refused(tmp_path) -> None:
    r = _run(tmp_path, "--rtp-address", "192.0.2.10")
    assert r.returncode == 2 and "rtp_address 192.0.2.10 is not an address of this host" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_a_listen_port_in_use_is_named(tmp_path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run([*SERVE, "--recordings-dir", str(tmp_path / "rec"), "--listen", f"127.0.0.1:{port}"],
                           capture_output=True, text=True, timeout=60, check=False)
        assert r.returncode == 2 and f"listen 127.0.0.1:{port} is in use" in r.stderr, r.stderr
        r = _run(tmp_path, "--ops-listen", f"127.0.0.1:{port}")
        assert r.returncode == 2 and f"ops_listen 127.0.0.1:{port} is in use" in r.stderr, r.stderr
    assert not [n for n in os.listdir(tmp_path) if n.startswith("wholecall-serve-")]


def test_a_recordings_directory_that_cannot_be_written_is_refused(tmp_path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], check=True, capture_output=True)
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
        pytest.skip(f"cannot mount a read-only tmpfs here: {e}")
    try:
        with pytest.raises(ConfigError, match=f"recordings_dir {ro}: cannot write there: Read-only file system"):
            preflight.check(load(["--recordings-dir", str(ro), "--listen", "127.0.0.1:0"]))
        with pytest.raises(ConfigError, match="cannot write there: Read-only file system"):
            preflight.check(load(["--recordings-dir", str(ro / "sub"), "--listen", "127.0.0.1:0"]))
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)


def test_settings_that_work_badly_are_warned_about(tmp_path) -> None:
    token = tmp_path / "token"
    token.write_text("t" * 32)
    token.chmod(0o644)
    cfg = load(["--rtp-ports", "46000-46009", "--max-calls", "16", "--workers", str(os.cpu_count() * 3),
                "--token-file", str(token), "--listen", "127.0.0.1:0"])
    said = "\n".join(preflight.warnings(cfg))
    assert "rtp_ports 46000-46009 holds 2 calls" in said and "fewer than max_calls 16" in said
    assert "more than the" in said and "CPUs this process may use" in said
    assert "readable by every user (mode 0644)" in said
    token.chmod(0o600)
    assert not preflight.warnings(load(["--token-file", str(token), "--listen", "127.0.0.1:0"]))


def test_a_websocket_port_in_use_stops_start_up_at_once_and_says_why(tmp_path) -> None:
    """The stream process could not listen and died; serve waited 30 s for its hello and
    then said "start-up failed: " with nothing after it."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        t0 = time.monotonic()
        r = _run(tmp_path, "--websocket-listen", f"127.0.0.1:{port}", "--workers", "1")
    assert r.returncode == 1, r.stderr
    assert time.monotonic() - t0 < 25
    assert f"cannot listen for WebSocket on 127.0.0.1:{port}" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_the_recordings_directory_it_makes_is_private(tmp_path) -> None:
    """The check made a missing directory with os.makedirs' default mode before the
    controller could make it 0700: every user could list the recordings (a reviewer's find)."""
    root = tmp_path / "new" / "recordings"
    old = os.umask(0o022)
    try:
        preflight.check(load(["--recordings-dir", str(root), "--listen", "127.0.0.1:0"]))
    finally:
        os.umask(old)
    for d in (root, root.parent):
        assert oct(d.stat().st_mode & 0o777) == "0o700", d


def test_every_spelling_of_the_wildcard_is_warned_about_and_a_bracketed_ipv6_address_taken(tmp_path) -> None:
    """A wildcard RTP address (by default the listen host: 0.0.0.0) is what the API hands
    callers, which works only on this host: warned about, in every spelling ("0", "0x0",
    "::ffff:0.0.0.0"); "[::1]" was refused as not this host's (a reviewer's finds)."""
    for spelling in ("0.0.0.0", "0", "0x0", "::ffff:0.0.0.0", "::"):
        cfg = load(["--rtp-address", spelling, "--listen", "127.0.0.1:0", "--recordings-dir", str(tmp_path)])
        preflight.check(cfg)  # it binds: not refused
        assert any("rtp_address is the wildcard" in w for w in preflight.warnings(cfg)), spelling
    cfg = load(["--rtp-address", "[::1]", "--listen", "127.0.0.1:0"])
    assert cfg.rtp_host == "::1" and not any("wildcard" in w for w in preflight.warnings(cfg))
    try:
        preflight._rtp_address(cfg)
    except ConfigError as e:
        assert "cannot bind" in str(e) or "not an address" in str(e)  # a host without IPv6: said so
