"""Batch receive and send on real UDP sockets on 127.0.0.1 (ephemeral ports)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import numpy as np
import pytest

from wholecall.ingest.recvmmsg import BatchReceiver, BatchSender, ip4, set_receive_buffer, socket_drops, udp_counters
from wholecall.ingest.rtp import build_packet, parse_batch


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.bind(("127.0.0.1", 0))
        rx.setblocking(False)
        tx.bind(("127.0.0.1", 0))
        yield rx, tx
    finally:
        rx.close()
        tx.close()


def receive(receiver: BatchReceiver, want: int, timeout: float = 5.0) -> list[tuple[bytes, tuple[str, int]]]:
    """Poll until `want` datagrams came (a lost one fails the test instead of hanging it)."""
    got: list[tuple[bytes, tuple[str, int]]] = []
    deadline = time.monotonic() + timeout
    while len(got) < want:
        n = receiver.recv()
        for i in range(n):
            got.append((receiver.buffer[i, : min(receiver.lengths[i], receiver.size)].tobytes(), receiver.address(i)))
            host, port = got[-1][1]
            assert receiver.source_port[i] == port
            assert receiver.source_ip4[i] == (0 if ":" in host else ip4(host))
        if not n:
            assert time.monotonic() < deadline, f"only {len(got)} of {want} datagrams arrived"
            time.sleep(0.001)
    return got


def test_nothing_waiting_returns_zero(pair) -> None:
    rx, _ = pair
    assert BatchReceiver(rx, 4, 256).recv() == 0


def test_sendmmsg_to_recvmmsg_keeps_bytes_lengths_and_sources(pair) -> None:
    rx, tx = pair
    sender = BatchSender(tx, 64, 2048)
    receiver = BatchReceiver(rx, 16, 2048)  # smaller than the batch: takes several calls
    rng = np.random.default_rng(7)
    datagrams = [rng.integers(0, 256, size=rng.integers(0, 300), dtype=np.uint8).tobytes() for _ in range(64)]
    for i, d in enumerate(datagrams):
        sender.buffer[i, : len(d)] = np.frombuffer(d, np.uint8)
    host, port = rx.getsockname()
    assert sender.send([len(d) for d in datagrams], ip4(host), port) == 64
    got = receive(receiver, 64)
    assert [g[0] for g in got] == datagrams
    assert {g[1] for g in got} == {tx.getsockname()}


def test_a_datagram_longer_than_a_row_reports_its_real_length(pair) -> None:
    rx, tx = pair
    receiver = BatchReceiver(rx, 4, 64)
    tx.sendto(build_packet(8, 1, 160, 5, bytes(160)), rx.getsockname())
    tx.sendto(build_packet(8, 2, 320, 5, bytes(20)), rx.getsockname())
    lengths: list[int] = []
    deadline = time.monotonic() + 5
    while len(lengths) < 2:
        n = receiver.recv()
        lengths.extend(receiver.lengths[:n].tolist())
        assert time.monotonic() < deadline
    assert lengths == [172, 32]


def test_connected_sender_and_batch_parse_of_what_arrived(pair) -> None:
    rx, tx = pair
    tx.connect(rx.getsockname())
    sender = BatchSender(tx, 8, 256)
    packets = [build_packet(0, 65534 + i, i * 160, 0xABC, bytes([i]) * 160, marker=i == 0) for i in range(8)]
    for i, p in enumerate(packets):
        sender.buffer[i, : len(p)] = np.frombuffer(p, np.uint8)
    assert sender.send([len(p) for p in packets]) == 8
    receiver = BatchReceiver(rx, 8, 256)
    deadline = time.monotonic() + 5
    n = 0
    while n == 0:
        n = receiver.recv()
        assert time.monotonic() < deadline
    batch = parse_batch(receiver.buffer, receiver.lengths, n)
    assert batch.valid.all()
    assert batch.sequence.tolist() == [(65534 + i) & 0xFFFF for i in range(n)]
    assert batch.marker.tolist() == [True] + [False] * (n - 1)
    assert (batch.payload_length == 160).all()


def test_ipv6_source_address() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    rx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        try:
            rx.bind(("::1", 0))
            tx.bind(("::1", 0))
        except OSError:
            pytest.skip("no ::1")
        rx.setblocking(False)
        tx.sendto(b"hello", rx.getsockname()[:2])
        receiver = BatchReceiver(rx, 2, 64)
        got = receive(receiver, 1)
        assert got[0][0] == b"hello" and got[0][1] == tx.getsockname()[:2]
        assert receiver.source_ip4[0] == 0
    finally:
        rx.close()
        tx.close()


def test_a_full_receive_buffer_shows_as_kernel_drops(pair) -> None:
    rx, tx = pair
    granted = set_receive_buffer(rx, 4096)
    assert granted >= 4096
    before = udp_counters()
    sender = BatchSender(tx, 64, 256)
    host, port = rx.getsockname()
    for _ in range(20):
        sender.send([200] * 64, ip4(host), port)
    drops = socket_drops(rx)
    after = udp_counters()
    assert drops.drops > 0
    assert after["RcvbufErrors"] - before["RcvbufErrors"] >= drops.drops  # system-wide, others may add
    assert after["InErrors"] - before["InErrors"] >= drops.drops  # InErrors includes RcvbufErrors


def test_bad_arguments() -> None:
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with pytest.raises(ValueError, match="is not SOCK_DGRAM"):
            BatchReceiver(tcp)
    finally:
        tcp.close()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with pytest.raises(ValueError, match="3 datagrams, the batch holds 2"):
            BatchSender(udp, 2, 64).send([1, 1, 1], 1, 1)
        with pytest.raises(ValueError, match="datagram lengths must be 0..64"):
            BatchSender(udp, 2, 64).send([65], 1, 1)
    finally:
        udp.close()


def test_each_datagram_comes_with_its_own_arrival_however_late_it_is_read(pair) -> None:
    """Two datagrams 50 ms apart, read together 100 ms after the second: each has the
    kernel's arrival stamp, on the caller's clock; without stamping, the read's time."""
    from wholecall.ingest.recvmmsg import stamp_arrivals

    rx, tx = pair
    stamp_arrivals(rx)
    receiver = BatchReceiver(rx, 8, 256)
    dest = rx.getsockname()
    # The kernel turns stamping on for the machine a moment after the first socket asks
    # (the ingest asks at its start-up): what arrives before is dated when it is read.
    deadline = time.monotonic() + 5
    while True:
        tx.sendto(b"warm", dest)
        time.sleep(0.02)
        assert receiver.recv() == 1
        now = time.monotonic()
        if receiver.arrivals(1, now)[0] < now - 0.01 or time.monotonic() > deadline:
            break
    for _ in range(2):  # the second reuses rows whose control lengths the kernel rewrote
        tx.sendto(b"first", dest)
        time.sleep(0.05)
        tx.sendto(b"second", dest)
        time.sleep(0.1)
        assert receiver.recv() == 2
        now = time.monotonic()
        first, second = receiver.arrivals(2, now).tolist()
        assert 0.1 <= now - second < 1.0 and second - first >= 0.045, (now, first, second)
    plain = BatchReceiver(tx, 4, 256)  # tx has no stamps: what came is dated `now`
    rx.sendto(b"back", tx.getsockname())
    time.sleep(0.05)
    assert plain.recv() == 1
    assert plain.arrivals(1, 123.0).tolist() == [123.0]
