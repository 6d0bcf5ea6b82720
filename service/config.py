"""`wholecall serve` settings: flags, the optional TOML file (same keys), and their checks.

Flags win over the file; the file wins over the defaults. A key may be written as the flag
is (``rtp-ports``) or with underscores (``rtp_ports``).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import tomllib
from dataclasses import dataclass
from typing import Any

from wholecall.controller.config import usable_cpus


class ConfigError(ValueError):
    """A setting that cannot be used; the message names it."""


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    """HTTP listen address."""
    port: int = 8080
    """HTTP listen port (0: any free port, printed at start-up)."""
    recordings_dir: str = "recordings"
    workers: int = 0
    """Worker processes; 0 means one per CPU."""
    rtp_address: str = ""
    """Address the RTP sockets bind to and the API hands out; empty means the listen host."""
    rtp_low: int = 20000
    rtp_high: int = 39999
    token: str = ""
    """Bearer token every request must carry; empty means none (loopback only)."""
    token_file: str = ""
    """Where the token was read from (its permissions are checked at start-up)."""
    media_timeout: float = 30.0
    """Seconds without media on both legs after which a call is hung up (0: never)."""
    reorder_ms: float = 200.0
    """RTP re-order window in ms."""
    max_calls: int = 1024
    """Calls that can exist at once (each holds two 8 s rings in /dev/shm)."""
    log_format: str = "text"
    """Log lines on stderr: text, or json (one object per line, `protocol.logline`)."""
    log_level: str = "INFO"
    """Lowest level logged (DEBUG, INFO, WARNING, ERROR); $WHOLECALL_LOG when not set."""
    ops_host: str = ""
    """Listen address of the operations port (GET /healthz and /metrics without the token,
    for probes and Prometheus); empty: no such port."""
    ops_port: int = 0
    worker_priority: int = 10
    """Workers run at nice -this (needs CAP_SYS_NICE or RLIMIT_NICE); 0 leaves the priority
    alone, for containers where neither is in effect (Config.worker_priority)."""
    arena_dir: str = "/dev/shm"
    """tmpfs (or hugetlbfs) directory of the ring arena: the huge-page mount of
    deploy/run-wholecall-arena.mount, or a Kubernetes emptyDir of medium HugePages."""
    websocket_listen: str = ""
    """HOST:PORT of the WebSocket media server (Twilio, L16); empty: the listen host, any free port."""
    websocket_url: str = ""
    """Public base URL handed out for WebSocket media (e.g. wss://rec.example.com behind a TLS proxy)."""
    audiosocket_listen: str = ""
    """HOST:PORT of the AudioSocket server; empty: the listen host, any free port."""
    ingest_procs: int = 0
    """RTP ingest processes (legs sharded across them by port sub-range); 0 sizes it for the CPUs."""
    sync_on_stop: bool = False
    """A recording's file and sidecar fsynced before its stop is answered (Config.sync_on_stop);
    off, the controller's syncer makes the sidecar durable milliseconds later."""
    handshake_timeout: float = 10.0
    """Seconds a WebSocket or AudioSocket connection has to name its call (the HTTP upgrade,
    the UUID frame) before it is closed: connections that never do would otherwise hold a
    descriptor and memory of the stream process until the peer gives up."""
    stream_procs: int = 0
    """Stream ingest processes (Twilio, L16 WebSocket, AudioSocket), each with its own WebSocket
    and AudioSocket port; 0 sizes it for the CPUs (`stream_count`)."""

    @property
    def rtp_host(self) -> str:
        return self.rtp_address or self.host


DEFAULTS = {
    "listen": "127.0.0.1:8080", "recordings_dir": "recordings", "workers": 0, "rtp_address": "",
    "rtp_ports": "20000-39999", "token_file": "", "media_timeout": 30.0, "reorder_ms": 200.0, "max_calls": 1024,
    "log_format": "text", "log_level": "", "ops_listen": "",
    "arena_dir": "/dev/shm", "worker_priority": 10,
    "websocket_listen": "", "websocket_url": "", "audiosocket_listen": "",
    "ingest_procs": 0, "stream_procs": 0, "sync_on_stop": False, "handshake_timeout": 10.0,
}
#: The longest RTP re-order window: audio waits that long before the rings; the legs' rings hold 8 s.
MAX_REORDER_MS = 5000.0
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wholecall serve",
                                description="Run the recorder as a service: HTTP/JSON API, workers, RTP ingest.")
    p.add_argument("--config", help="TOML file with the same keys as the flags (flags win)")
    p.add_argument("--listen", help="HTTP HOST:PORT (default 127.0.0.1:8080)")
    p.add_argument("--recordings-dir", help="root of every recording (default ./recordings)")
    p.add_argument("--workers", type=int, help="worker processes (default one per CPU)")
    p.add_argument("--rtp-address", help="address of the RTP endpoints (default the listen host)")
    p.add_argument("--rtp-ports", help="UDP port range LOW-HIGH for RTP (default 20000-39999)")
    p.add_argument("--token-file", help="file holding the bearer token the API requires")
    p.add_argument("--media-timeout", type=float, help="hang up after this many seconds without media (default 30)")
    p.add_argument("--reorder-ms", type=float, help="RTP re-order window in ms (default 200)")
    p.add_argument("--max-calls", type=int, help="calls that can exist at once (default 1024)")
    p.add_argument("--log-format", help="text or json: one JSON object per line on stderr (default text)")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (default $WHOLECALL_LOG, else INFO)")
    p.add_argument("--worker-priority", type=int, help="workers run at nice -N (default 10; 0: unchanged)")
    p.add_argument("--arena-dir", help="tmpfs or hugetlbfs directory for the ring arena (default /dev/shm)")
    p.add_argument("--ops-listen", help="HOST:PORT serving only /healthz and /metrics, without the token "
                                        "(probes, Prometheus; default none)")
    p.add_argument("--websocket-listen", help="HOST:PORT for Twilio/L16 WebSocket media (default: listen host, any port)")
    p.add_argument("--websocket-url", help="public base URL of the WebSocket media server, e.g. wss://host (TLS proxy)")
    p.add_argument("--audiosocket-listen", help="HOST:PORT for Asterisk AudioSocket (default: listen host, any port)")
    p.add_argument("--handshake-timeout", type=float,
                   help="seconds a WebSocket/AudioSocket connection has to name its call before it is closed "
                        "(default 10)")
    p.add_argument("--ingest-procs", type=int,
                   help="RTP ingest processes, each owning a sub-range of the ports (default: sized for the CPUs)")
    p.add_argument("--stream-procs", type=int,
                   help="stream ingest processes (Twilio, L16 WebSocket, AudioSocket), each with its own ports: "
                        "PORT+k of --websocket-listen/--audiosocket-listen (default: sized for the CPUs)")
    p.add_argument("--sync-on-stop", action="store_const", const=True,
                   help="answer a stop only once the file and its sidecar are fsynced (slower under load; "
                        "default: the sidecar fsynced by a background syncer milliseconds later)")
    return p


def load(argv: list[str]) -> ServeConfig:
    a = parser().parse_args(argv)
    values: dict[str, Any] = dict(DEFAULTS)
    if a.config:
        try:
            with open(a.config, "rb") as f:
                data = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"config file {a.config}: {e}") from None
        for key, value in data.items():
            k = key.replace("-", "_")
            if k not in DEFAULTS:
                raise ConfigError(f"config file {a.config}: unknown key {key!r} (known: {', '.join(sorted(DEFAULTS))})")
            values[k] = value
    for k in DEFAULTS:
        v = getattr(a, k, None)
        if v is not None:
            values[k] = v
    return build(values)


def _host_port(text: str, key: str = "listen") -> tuple[str, int]:
    host, sep, port = str(text).rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{key} {text!r} is not HOST:PORT")
    host = host.strip("[]")
    try:
        p = int(port)
    except ValueError:
        raise ConfigError(f"{key} {text!r}: port {port!r} is not a number") from None
    if not 0 <= p <= 65535:
        raise ConfigError(f"{key} {text!r}: port {p} is outside 0-65535")
    return host, p


def _range(text: str) -> tuple[int, int]:
    low, sep, high = str(text).partition("-")
    try:
        lo, hi = int(low), int(high)
    except ValueError:
        raise ConfigError(f"rtp_ports {text!r} is not LOW-HIGH") from None
    if not sep or not 1024 <= lo < hi <= 65535:
        raise ConfigError(f"rtp_ports {text!r} must be LOW-HIGH with 1024 <= LOW < HIGH <= 65535")
    return lo, hi


def ingest_count(cfg: ServeConfig) -> int:
    """Ingest processes to run: the configured count, or one per two CPUs (each packet also costs the workers)."""
    return cfg.ingest_procs or max(1, usable_cpus() // 2)


def stream_count(cfg: ServeConfig) -> int:
    """Stream ingest processes to run: the configured count, else one per CPU, at most 8.

    Why per CPU and not per two (as RTP ingest): an idle stream process costs ~40 MB and
    nothing else (its loop ticks 20 times a second), and one process is one core at most, so
    on a 2-core machine one process would cap streamed media at one core while the other
    sits idle (measured: 1,000 Twilio calls saturate one process, BENCHMARKS.md). 1 when a
    `websocket_url` without ``{proc}`` must name them all (one public address reaches one port)."""
    if cfg.stream_procs:
        return cfg.stream_procs
    if cfg.websocket_url and "{proc}" not in cfg.websocket_url:
        return 1
    return max(1, min(8, usable_cpus()))


def port_shards(low: int, high: int, n: int) -> list[tuple[int, int]]:
    """[low, high] cut into `n` contiguous sub-ranges, each starting on an even port (RTP's; RTCP gets the odd).

    Why sub-ranges: each ingest process binds only its own ports, so a port names the one
    process (and ring producer) that owns the leg.
    """
    first = low + (low & 1)
    evens = (high - first) // 2 + 1
    if n < 1 or evens < n:
        raise ConfigError(f"rtp_ports {low}-{high} has {max(0, evens)} even ports, fewer than {n} ingest processes")
    out = []
    for k in range(n):
        a = first + 2 * (evens * k // n)
        b = first + 2 * (evens * (k + 1) // n) - 1 if k < n - 1 else high
        out.append((a, b))
    return out


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build(values: dict[str, Any]) -> ServeConfig:
    host, port = _host_port(values["listen"])
    low, high = _range(values["rtp_ports"])
    token = ""
    if values["token_file"]:
        try:
            with open(values["token_file"]) as f:
                token = f.read().strip()
        except OSError as e:
            raise ConfigError(f"token_file {values['token_file']}: {e.strerror or e}") from None
        if len(token) < 16:
            raise ConfigError(f"token_file {values['token_file']}: the token must be at least 16 characters")
    if not is_loopback(host) and not token:
        raise ConfigError(f"refusing to listen on {host}, which is not a loopback address, without --token-file")
    for name in ("workers", "max_calls", "ingest_procs", "stream_procs"):
        v = values[name]
        if isinstance(v, bool) or not isinstance(v, int) or v < 0 or (name == "max_calls" and v < 1):
            raise ConfigError(f"{name} must be a {'positive' if name == 'max_calls' else 'non-negative'} integer, got {v!r}")
    for name in ("media_timeout", "reorder_ms"):
        v = values[name]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
            raise ConfigError(f"{name} must be a non-negative number, got {v!r}")
    ht = values["handshake_timeout"]
    if isinstance(ht, bool) or not isinstance(ht, (int, float)) or not 0 < ht <= 3600:
        raise ConfigError(f"handshake_timeout must be a number of seconds above 0 and at most 3600, got {ht!r}")
    if values["reorder_ms"] > MAX_REORDER_MS:
        raise ConfigError(f"reorder_ms must be at most {MAX_REORDER_MS:.0f} (the legs' audio reaches the recorder that "
                          f"much late), got {values['reorder_ms']!r}")
    log_format = str(values["log_format"]).lower()
    if log_format not in ("text", "json"):
        raise ConfigError(f"log_format must be text or json, got {values['log_format']!r}")
    log_level = str(values["log_level"] or os.environ.get("WHOLECALL_LOG") or "INFO").upper()
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    wp = values["worker_priority"]
    if isinstance(wp, bool) or not isinstance(wp, int) or not 0 <= wp <= 20:
        raise ConfigError(f"worker_priority must be an integer from 0 to 20, got {wp!r}")
    if not os.path.isdir(str(values["arena_dir"])):
        raise ConfigError(f"arena_dir {values['arena_dir']!r} is not a directory (mount the arena's tmpfs first)")
    if not isinstance(values["sync_on_stop"], bool):
        raise ConfigError(f"sync_on_stop must be true or false, got {values['sync_on_stop']!r}")
    ops_host, ops_port = _host_port(values["ops_listen"], "ops_listen") if values["ops_listen"] else ("", 0)
    port_shards(low, high, values["ingest_procs"] or 1)
    return ServeConfig(
        host=host, port=port, recordings_dir=os.path.abspath(str(values["recordings_dir"])),
        workers=values["workers"], rtp_address=str(values["rtp_address"]).strip("[]"), rtp_low=low, rtp_high=high, token=token,
        token_file=str(values["token_file"] or ""),
        media_timeout=float(values["media_timeout"]), reorder_ms=float(values["reorder_ms"]),
        max_calls=values["max_calls"], log_format=log_format, log_level=log_level,
        ops_host=ops_host, ops_port=ops_port, arena_dir=str(values["arena_dir"]),
        worker_priority=wp, **_stream_settings(values),
        ingest_procs=values["ingest_procs"], stream_procs=values["stream_procs"],
        sync_on_stop=values["sync_on_stop"], handshake_timeout=float(ht),
    )


def _stream_settings(values: dict[str, Any]) -> dict[str, str]:
    out = {}
    for name in ("websocket_listen", "audiosocket_listen"):
        v = str(values[name] or "")
        if v:
            _host_port(v)  # checked like listen
        out[name] = v
    url = str(values["websocket_url"] or "")
    if url and not url.startswith(("ws://", "wss://")):
        raise ConfigError(f"websocket_url must start with ws:// or wss://, got {url!r}")
    n = values["stream_procs"]
    if url and n > 1 and "{proc}" not in url:
        raise ConfigError(f"websocket_url {url!r} must contain {{proc}} with stream_procs {n}: each stream process "
                          "has its own port, so the proxy needs one address per process (e.g. wss://rec.example.com/s{proc})")
    out["websocket_url"] = url
    return out
