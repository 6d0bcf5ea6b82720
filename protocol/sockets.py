"""ZeroMQ plumbing shared by both ends: endpoints, socket options, bounded receives.

The controller binds one ROUTER; each worker connects a DEALER whose identity is its
index. ROUTER_MANDATORY is set because a ROUTER otherwise drops messages to a peer it
does not know (yet) without a word; high-water marks are explicit; every receive
is bounded by a poll so a lost message becomes a timeout, never a hang.
"""

from __future__ import annotations

import os

import zmq

from .messages import Message, encode

#: Control messages only (audio never crosses ZeroMQ), so a deep queue is cheap.
HWM = 100_000


def control_endpoint(run_dir: str) -> str:
    """The controller's ROUTER endpoint inside an owner-only (0700) run directory.

    Start messages may carry cipher keys: ipc:// in a 0700 directory keeps them off the
    network and away from other local users.
    """
    st = os.stat(run_dir)
    if st.st_mode & 0o077:
        raise PermissionError(f"run directory {run_dir} must be owner-only (mode {oct(st.st_mode & 0o777)})")
    return f"ipc://{os.path.join(run_dir, 'control.sock')}"


def worker_identity(index: int) -> bytes:
    return b"w%d" % index


#: The ZAP domain of the controller's ROUTER: with it set, libzmq asks the context's ZAP
#: handler (inproc://zeromq.zap.01) before accepting a connection.
ZAP_DOMAIN = b"wholecall"


def zap_peer_pid(request: list[bytes]) -> int | None:
    """The connecting process's pid from a ZAP request, or None.

    For ipc:// libzmq reads the peer's credentials (SO_PEERCRED) and gives them in the
    request's address frame as ``<host>:<uid>:<gid>:<pid>``.
    """
    try:
        return int(request[3].rsplit(b":", 1)[1])
    except (IndexError, ValueError):
        return None


def zap_reply(request: list[bytes], ok: bool) -> list[bytes]:
    """The ZAP reply (RFC 27) accepting or refusing `request`."""
    version = request[0] if request else b"1.0"
    request_id = request[1] if len(request) > 1 else b""
    return [version, request_id, b"200" if ok else b"400", b"OK" if ok else b"not a worker of this controller",
            b"", b""]


def router(ctx: zmq.Context, endpoint: str, zap: bool = False) -> zmq.Socket:
    """The controller's socket. With `zap`, every connection is first put to the
    context's ZAP handler, which the caller must run (see `zap_peer_pid`)."""
    sock = ctx.socket(zmq.ROUTER)
    if zap:
        sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.setsockopt(zmq.RCVHWM, HWM)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    return sock


def dealer(ctx: zmq.Context, endpoint: str, index: int) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, worker_identity(index))
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.setsockopt(zmq.RCVHWM, HWM)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.connect(endpoint)
    return sock


def send(sock: zmq.Socket, msg: Message, peer: bytes | None = None) -> None:
    frames = [encode(msg)] if peer is None else [peer, encode(msg)]
    sock.send_multipart(frames)


def recv(sock: zmq.Socket, timeout_ms: int) -> list[bytes] | None:
    """One multipart message, or None if nothing arrived within `timeout_ms`."""
    if sock.poll(timeout_ms, zmq.POLLIN):
        return sock.recv_multipart()
    return None
