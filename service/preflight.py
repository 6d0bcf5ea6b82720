"""`wholecall serve`'s checks of the host before anything starts: settings that parse but
cannot work here are refused with one line naming them, instead of a service that says
healthy and then fails every call (a read-only recordings directory, an RTP address this
host does not own) or dies with a traceback (a listen port in use).

`check` raises `ConfigError` for what cannot work; `warnings` lists what works badly.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import stat
import tempfile

from wholecall.controller.config import Config, usable_cpus
from wholecall.controller.resources import make_dirs

from .config import ConfigError, ServeConfig


def check(cfg: ServeConfig) -> None:
    """Raise `ConfigError` for a setting this host cannot honour."""
    _recordings_writable(cfg.recordings_dir)
    _rtp_address(cfg)
    _listen_free("listen", cfg.host, cfg.port)
    if cfg.ops_host:
        _listen_free("ops_listen", cfg.ops_host, cfg.ops_port)


def warnings(cfg: ServeConfig) -> list[str]:
    """Settings that work, but not as the operator probably wants."""
    out = []
    even_ports = (cfg.rtp_high - (cfg.rtp_low + (cfg.rtp_low & 1))) // 2 + 1
    if even_ports // 2 < cfg.max_calls:
        out.append(f"rtp_ports {cfg.rtp_low}-{cfg.rtp_high} holds {even_ports // 2} calls (two even ports each), "
                   f"fewer than max_calls {cfg.max_calls}: calls past that get 503")
    if _wildcard(cfg.rtp_host) or _wildcard(_bound_address(cfg.rtp_host)):
        out.append(f"rtp_address is the wildcard {cfg.rtp_host!r} (by default the listen host): the API hands it to "
                   "callers as where to send RTP, which works only on this host; set --rtp-address to this host's "
                   "media address")
    cpus = usable_cpus()
    if cfg.workers > cpus:
        out.append(f"workers {cfg.workers} is more than the {cpus} CPUs this process may use: workers share CPUs "
                   "and their real-time ticks compete")
    if cfg.token_file:
        try:
            mode = os.stat(cfg.token_file).st_mode
        except OSError:
            mode = 0
        if mode & stat.S_IROTH:
            out.append(f"token_file {cfg.token_file} is readable by every user (mode {stat.S_IMODE(mode):04o}); "
                       "chmod o-r it")
    return out


def _recordings_writable(path: str) -> None:
    try:
        make_dirs(path, Config.dir_mode)  # private, as the controller makes it (os.makedirs left it 0755)
        fd, probe = tempfile.mkstemp(prefix=".wholecall-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"recordings_dir {path}: cannot write there: {e.strerror or e}") from None


def _rtp_address(cfg: ServeConfig) -> None:
    host = cfg.rtp_host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.bind((host, 0))
        except OSError as e:
            if e.errno in (errno.EADDRNOTAVAIL, errno.EINVAL) or isinstance(e, socket.gaierror):
                raise ConfigError(f"rtp_address {host} is not an address of this host ({e.strerror or e})") from None
            raise ConfigError(f"rtp_address {host}: cannot bind a UDP socket there: {e.strerror or e}") from None


def _bound_address(host: str) -> str:
    """The address a UDP socket bound to `host` gets ("" if it cannot bind): "0" is 0.0.0.0."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((host, 0))
            return str(s.getsockname()[0])
    except OSError:
        return ""


def _wildcard(text: str) -> bool:
    """Whether `text` is an unspecified address (IPv4, IPv6, or IPv4 mapped into IPv6)."""
    try:
        ip = ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_unspecified or (mapped is not None and mapped.is_unspecified)


def _listen_free(key: str, host: str, port: int) -> None:
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is no conflict
        try:
            s.bind((host, port))
        except OSError as e:
            what = "is in use" if e.errno == errno.EADDRINUSE else f"cannot be bound ({e.strerror or e})"
            raise ConfigError(f"{key} {host}:{port} {what}") from None
