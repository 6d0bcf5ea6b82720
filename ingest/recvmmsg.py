"""Batch UDP receive and send (Linux `recvmmsg`/`sendmmsg` through ctypes) into one numpy buffer.

Why: CPython's `socket.recvfrom` costs ~1.8 us per datagram and allocates a bytes object
and an address tuple for each; a plain receive loop lost 17.5 % of 200,000 packets/s here
(issue 22). One `recvmmsg` call fills up to `capacity` rows of a preallocated
``(capacity, size)`` uint8 array and the kernel writes each datagram's length and source
address into preallocated headers, so the per-packet cost is the kernel's copy plus a
share of one ctypes call, and the numpy batch parser (`rtp.parse_batch`) reads the result
in place. Every ctypes structure is built once, in `__init__`; `recv` and `send` only
rewrite a few header fields through numpy views of the same memory.

Also here: sizing SO_RCVBUF and reading the kernel's UDP drop counters, because a receiver
that falls behind loses packets in the kernel silently unless someone looks.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
import time
from dataclasses import dataclass

import numpy as np

MSG_DONTWAIT = 0x40
MSG_TRUNC = 0x20  # with it, a datagram longer than its row reports its real length
SO_RCVBUFFORCE = 33  # like SO_RCVBUF but past net.core.rmem_max; needs CAP_NET_ADMIN
SOCKADDR_SIZE = 128  # sizeof(struct sockaddr_storage)
#: SO_TIMESTAMPNS (which CPython does not name): the kernel stamps each datagram with its
#: arrival (CLOCK_REALTIME, a struct timespec) in an SCM_TIMESTAMPNS control message.
SO_TIMESTAMPNS = SCM_TIMESTAMPNS = 35
CONTROL_BYTES = 32  # CMSG_SPACE(sizeof(struct timespec)): a 16-byte cmsghdr and the timespec

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


# struct iovec, struct msghdr and struct mmsghdr of 64-bit Linux as numpy dtypes: the headers
# live in numpy arrays, so a whole batch's fields are read and written as array columns.
if ctypes.sizeof(ctypes.c_void_p) != 8:
    raise ImportError("wholecall.ingest.recvmmsg needs a 64-bit Linux")
_IOVEC = np.dtype({"names": ["iov_base", "iov_len"], "formats": ["<u8", "<u8"], "offsets": [0, 8], "itemsize": 16})
_MMSGHDR = np.dtype(
    {
        "names": ["msg_name", "msg_namelen", "msg_iov", "msg_iovlen", "msg_control", "msg_controllen", "msg_flags", "msg_len"],
        "formats": ["<u8", "<u4", "<u8", "<u8", "<u8", "<u8", "<i4", "<u4"],
        "offsets": [0, 8, 16, 24, 32, 40, 48, 56],
        "itemsize": 64,
    }
)

_recvmmsg = _libc.recvmmsg
_recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
_recvmmsg.restype = ctypes.c_int
_sendmmsg = _libc.sendmmsg
_sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
_sendmmsg.restype = ctypes.c_int


class _Batch:
    """A (capacity, size) buffer with one iovec, one sockaddr slot and one mmsghdr per row."""

    def __init__(self, sock: socket.socket, capacity: int, size: int) -> None:
        if capacity < 1 or size < 1:
            raise ValueError(f"capacity {capacity} and size {size} must be >= 1")
        if sock.type != socket.SOCK_DGRAM:
            raise ValueError(f"socket type {sock.type!r} is not SOCK_DGRAM")
        self.sock = sock
        self.fd = sock.fileno()
        self.capacity = capacity
        self.size = size
        self.buffer = np.zeros((capacity, size), dtype=np.uint8)
        """Datagram i lives in row i (its first ``lengths[i]`` bytes)."""
        self.names = np.zeros((capacity, SOCKADDR_SIZE), dtype=np.uint8)
        iov = self._iov = np.zeros(capacity, dtype=_IOVEC)
        hdr = self._hdr = np.zeros(capacity, dtype=_MMSGHDR)
        rows = self.buffer.ctypes.data + size * np.arange(capacity, dtype=np.uint64)
        iov["iov_base"] = rows
        iov["iov_len"] = size
        self._iov_len = iov["iov_len"]
        msg = hdr
        self._name_ptrs = self.names.ctypes.data + SOCKADDR_SIZE * np.arange(capacity, dtype=np.uint64)
        msg["msg_name"] = self._name_ptrs
        msg["msg_namelen"] = SOCKADDR_SIZE
        msg["msg_iov"] = iov.ctypes.data + _IOVEC.itemsize * np.arange(capacity, dtype=np.uint64)
        msg["msg_iovlen"] = 1
        self._msg_name = msg["msg_name"]
        self._namelen = msg["msg_namelen"]
        self._flags = msg["msg_flags"]
        self._msg_len = hdr["msg_len"]
        self._hdr_ptr = hdr.ctypes.data

    def address(self, i: int) -> tuple[str, int]:
        """Source (recv) or destination (send) of datagram i as (host, port), IPv4 or IPv6."""
        name = self.names[i]
        family = int(name[0]) | int(name[1]) << 8
        port = int(name[2]) << 8 | int(name[3])
        if family == socket.AF_INET:
            return socket.inet_ntop(socket.AF_INET, name[4:8].tobytes()), port
        if family == socket.AF_INET6:
            return socket.inet_ntop(socket.AF_INET6, name[8:24].tobytes()), port
        raise ValueError(f"datagram {i} has address family {family}, not IPv4 or IPv6")


def stamp_arrivals(sock: socket.socket) -> None:
    """Have the kernel stamp each datagram `sock` receives with its arrival (`BatchReceiver.arrivals`)."""
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)


def _check(result: int) -> int:
    if result >= 0:
        return result
    err = ctypes.get_errno()
    if err in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
        return 0
    raise OSError(err, os.strerror(err))


class BatchReceiver(_Batch):
    """`recvmmsg` on one UDP socket into a preallocated buffer; `recv` never blocks.

    After ``n = recv()``, rows ``buffer[:n]`` hold the datagrams, ``lengths[:n]`` their sizes
    (larger than `size` for a datagram that did not fit, whose row holds its first `size`
    bytes), `source_ip4`/`source_port` their IPv4 sources (0 for IPv6: use `address`), and
    `arrivals` when each came, for sockets with `stamp_arrivals` on. Everything is
    overwritten by the next `recv`.
    """

    def __init__(self, sock: socket.socket, capacity: int = 64, size: int = 2048) -> None:
        super().__init__(sock, capacity, size)
        self.lengths: np.ndarray = self._msg_len
        """uint32 view of the kernel's msg_len fields."""
        self.count = 0
        """Datagrams the last `recv` returned."""
        self.control = np.zeros((capacity, CONTROL_BYTES), np.uint8)
        hdr = self._hdr
        hdr["msg_control"] = self.control.ctypes.data + CONTROL_BYTES * np.arange(capacity, dtype=np.uint64)
        hdr["msg_controllen"] = CONTROL_BYTES
        self._controllen = hdr["msg_controllen"]

    def _rearm(self) -> None:
        """The kernel overwrote the used rows' address and control lengths with what it wrote."""
        if self.count:
            self._namelen[: self.count] = SOCKADDR_SIZE
            self._controllen[: self.count] = CONTROL_BYTES

    def arrivals(self, n: int, now: float, clock: float | None = None) -> np.ndarray:
        """When datagrams ``0..n-1`` arrived, on the clock `now` was read from (any: the
        kernel's wall-clock stamps are moved onto it through one `time.time()` read beside
        `now`, or `clock` if given); `now` for a datagram without a stamp, and never later.

        Why: a receiver that drains its sockets once per tick sees a whole tick's datagrams
        at once; where a stream begins on the call clock must not depend on when it was
        drained (the two legs of a call would be up to a tick apart)."""
        wall = time.time() if clock is None else clock
        ctl = self.control[:n]
        words = ctl.view(np.int64)  # [cmsg_len, level | type << 32, tv_sec, tv_nsec]
        level = ctl[:, 8:12].view(np.int32)[:, 0]
        kind = ctl[:, 12:16].view(np.int32)[:, 0]
        ok = (self._controllen[:n] >= CONTROL_BYTES) & (level == socket.SOL_SOCKET) & (kind == SCM_TIMESTAMPNS)
        stamped = words[:, 2] + words[:, 3] * 1e-9
        return np.where(ok, np.minimum(now, now - (wall - stamped)), now)

    def recv(self) -> int:
        """Receive what is waiting, up to `capacity` datagrams; 0 when nothing is."""
        self._rearm()
        n = self.count = _check(_recvmmsg(self.fd, self._hdr_ptr, self.capacity, MSG_DONTWAIT | MSG_TRUNC, None))
        return n

    def recv_from(self, fd: int, start: int) -> int:
        """Receive what `fd` has waiting into rows ``start..capacity-1``; return how many came.

        For a receiver that drains many sockets (one per leg) into this one buffer before
        parsing the whole batch once: call `begin` first, then `recv_from` per ready socket
        with `start` the rows already filled; `count` then covers every row filled.
        """
        room = self.capacity - start
        if room <= 0:
            return 0
        n = _check(_recvmmsg(fd, self._hdr_ptr + start * _MMSGHDR.itemsize, room, MSG_DONTWAIT | MSG_TRUNC, None))
        self.count = start + n
        return n

    def begin(self) -> None:
        """Start a multi-socket drain: rows filled by the previous one get their address and control slots back."""
        self._rearm()
        self.count = 0

    @property
    def source_ip4(self) -> np.ndarray:
        """IPv4 sources of the last batch as host-order integers (127.0.0.1 == 0x7F000001), 0 for IPv6.

        Computed on demand: a receiver that trusts its sources pays nothing for them.
        """
        names = self.names[: self.count]
        ipv4 = names[:, 0] == socket.AF_INET  # the family is host order: low byte first on x86
        return np.where(ipv4, names[:, 4:8].view(">u4")[:, 0], 0).astype(np.uint32)

    @property
    def source_port(self) -> np.ndarray:
        """Source ports of the last batch."""
        return self.names[: self.count, 2:4].view(">u2")[:, 0].astype(np.uint16)


class BatchSender(_Batch):
    """`sendmmsg` from a preallocated buffer: fill rows of `buffer`, then `send` them in one call."""

    def send(
        self,
        lengths: np.ndarray | list[int],
        ip4: np.ndarray | int | None = None,
        port: np.ndarray | int | None = None,
    ) -> int:
        """Send rows ``0..len(lengths)-1``; return how many the kernel took (fewer when its buffer is full).

        Destinations: IPv4 host-order integers and ports, per row or one for all; None for a
        connected socket.
        """
        n = len(lengths)
        if n > self.capacity:
            raise ValueError(f"{n} datagrams, the batch holds {self.capacity}")
        lens = np.asarray(lengths)
        if n and (lens.min() < 0 or lens.max() > self.size):
            raise ValueError(f"datagram lengths must be 0..{self.size}")
        self._iov_len[:n] = lens
        if ip4 is None:
            self._msg_name[:n] = 0
            self._namelen[:n] = 0
        else:
            names = self.names[:n]
            names[:, 0] = socket.AF_INET & 0xFF
            names[:, 1] = socket.AF_INET >> 8
            ports = np.empty(n, dtype=">u2")
            ports[:] = port
            hosts = np.empty(n, dtype=">u4")
            hosts[:] = ip4
            names[:, 2:4] = ports.view(np.uint8).reshape(n, 2)
            names[:, 4:8] = hosts.view(np.uint8).reshape(n, 4)
            self._msg_name[:n] = self._name_ptrs[:n]
            self._namelen[:n] = 16
        return _check(_sendmmsg(self.fd, self._hdr_ptr, n, MSG_DONTWAIT)) if n else 0


def ip4(host: str) -> int:
    """Dotted IPv4 -> host-order integer, as `BatchReceiver.source_ip4` holds it."""
    return int.from_bytes(socket.inet_aton(host), "big")


def set_receive_buffer(sock: socket.socket, size: int) -> int:
    """Ask for a receive buffer of `size` bytes; return what the kernel granted (as it reports it, doubled).

    SO_RCVBUFFORCE goes past net.core.rmem_max when we may (root, CAP_NET_ADMIN); otherwise
    SO_RCVBUF is capped by rmem_max, which the caller should compare against what it asked.
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


def udp_counters(path: str = "/proc/net/snmp") -> dict[str, int]:
    """The kernel's IPv4 UDP counters (InDatagrams, InErrors, RcvbufErrors, ...), system-wide.

    RcvbufErrors counts datagrams dropped because a socket's buffer was full; InErrors
    includes those and checksum and other errors.
    """
    with open(path) as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    if len(rows) != 2:
        raise ValueError(f"{path} has no Udp: header and value lines")
    return {name: int(value) for name, value in zip(rows[0][1:], rows[1][1:], strict=True)}


@dataclass(frozen=True, slots=True)
class SocketDrops:
    """One socket's queue and drop count as /proc/net/udp shows them."""

    drops: int
    """Datagrams the kernel dropped for this socket (its receive buffer was full)."""
    rx_queue: int
    """Bytes waiting in the receive queue now."""


def socket_drops(sock: socket.socket) -> SocketDrops:
    """This socket's kernel drops: the per-socket counterpart of RcvbufErrors, found by inode."""
    inode = os.fstat(sock.fileno()).st_ino
    path = "/proc/net/udp6" if sock.family == socket.AF_INET6 else "/proc/net/udp"
    with open(path) as f:
        next(f)
        for line in f:
            fields = line.split()
            if int(fields[9]) == inode:
                return SocketDrops(drops=int(fields[12]), rx_queue=int(fields[4].split(":")[1], 16))
    raise LookupError(f"socket with inode {inode} not found in {path}")
