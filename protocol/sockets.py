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


# pyzmq's compiled socket methods, called without its Python layer (`zmq.sugar`): every
# message of every call crosses two I/O threads (the controller's and a worker's), and
# the layer's multipart loops, flag enums and the exception that ends a non-blocking
# drain cost more than the sends themselves (measured per message: send 18-21 -> 10 us,
# a drain of one 22-26 -> 17-18 us).
_RAW = zmq.backend.Socket
_SNDMORE, _NOBLOCK, _RCVMORE = int(zmq.SNDMORE), int(zmq.NOBLOCK), int(zmq.RCVMORE)
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)


def send_frames(sock: zmq.Socket, *frames: bytes) -> None:
    """Send one multipart message of at least one frame (raises zmq.ZMQError as
    `send_multipart` does). A plain `zmq.Socket`'s methods: a subclass's overrides
    (zmq.asyncio, zmq.green) are bypassed, so these helpers are for plain sockets only."""
    for f in frames[:-1]:
        _RAW.send(sock, f, _SNDMORE)
    _RAW.send(sock, frames[-1], 0)


def recv_ready(sock: zmq.Socket) -> list[bytes] | None:
    """The next multipart message if one has arrived, else None: never waits, never
    raises zmq.Again (a message's parts arrive together, so POLLIN means all of them)."""
    if not int(_RAW.get(sock, _EVENTS)) & _POLLIN:
        return None
    parts = [_RAW.recv(sock, _NOBLOCK)]
    while _RAW.get(sock, _RCVMORE):
        parts.append(_RAW.recv(sock, _NOBLOCK))
    return parts


def send(sock: zmq.Socket, msg: Message, peer: bytes | None = None) -> None:
    if peer is None:
        send_frames(sock, encode(msg))
    else:
        send_frames(sock, peer, encode(msg))


def recv(sock: zmq.Socket, timeout_ms: int) -> list[bytes] | None:
    """One multipart message, or None if nothing arrived within `timeout_ms`."""
    if sock.poll(timeout_ms, zmq.POLLIN):
        return recv_ready(sock)
    return None
