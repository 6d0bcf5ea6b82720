"""Byte layout of the ring arena: every offset, computed in one place.

One POSIX shared-memory object per controller (``/dev/shm/wholecall-<pid>-<token>``)
holds one single-producer/single-consumer ring per call leg. Everything a worker
needs per tick is a contiguous numpy array indexed by slot (leg), so it reads every
leg's position with one vector load and gathers audio with one fancy index::

    0      +--------------------------------------------------------------+
           | header (one page)                                            |
           |   0 magic   u64  b"WHCLRING"                                 |
           |   8 version u32  written LAST by the creator: "arena ready"  |
           |  12 (pad)  u32                                               |
           |  16 slots   u64  number of rings (legs)                      |
           |  24 capacity u64 samples per ring, a power of two            |
           |  32 owner_pid u64 controller pid (stale-arena sweep)         |
           |  40 created_ns u64 CLOCK_REALTIME at creation                |
    P      +--------------------------------------------------------------+
           | write_pos  i64[slots]   PRODUCER-owned, monotonically grows  |
           +-- page aligned ----------------------------------------------+
           | overruns   i64[slots]   PRODUCER-owned: samples dropped      |
           +-- page aligned ----------------------------------------------+
           | read_pos   i64[slots]   CONSUMER-owned (worker), grows       |
           +-- page aligned ----------------------------------------------+
           | job        i64[slots]   CONTROLLER-owned: id of the job that |
           |                         records this leg, 0 = not recording  |
           +-- page aligned ----------------------------------------------+
           | data       i16[slots][capacity]  ring samples                |
           +--------------------------------------------------------------+

Positions are sample-clock counters of the leg (8 kHz samples since the slot was
allocated); sample ``p`` lives at ``data[slot, p & (capacity - 1)]``. Producer and
consumer counters sit on separate pages so a producer storing its position never
invalidates the cache line the worker is reading positions from.

Memory ordering. A producer copies samples into ``data`` and then stores its new
``write_pos[slot]`` with one aligned 8-byte store; the consumer loads ``write_pos``
and only then reads ``data``. On x86-64 (total store order) stores become visible in
program order and loads are not reordered with older loads, so a consumer that sees
position ``p`` also sees every sample before ``p``. The consumer's vector load of many
positions is not atomic as a whole, but each aligned 8-byte element is, which is all
that is needed: each leg is judged on its own position. ``read_pos`` flows back the
same way (worker reads data, then stores the position; a producer loads the position
before overwriting). On weakly ordered CPUs (ARM) the stores need release and the
loads acquire semantics; wholecall refuses to create an arena there (see
``arena.check_memory_model``) rather than corrupt audio quietly.
"""

from __future__ import annotations

from dataclasses import dataclass

MAGIC = b"WHCLRING"
VERSION = 1
PAGE = 4096
HEADER_BYTES = PAGE

OFF_MAGIC = 0
OFF_VERSION = 8
OFF_SLOTS = 16
OFF_CAPACITY = 24
OFF_OWNER_PID = 32
OFF_CREATED_NS = 40

SAMPLE_BYTES = 2  # int16
COUNTER_BYTES = 8  # int64


def _page_align(n: int) -> int:
    return (n + PAGE - 1) // PAGE * PAGE


@dataclass(frozen=True)
class Layout:
    """Offsets of each region for an arena of ``slots`` rings of ``capacity`` samples."""

    slots: int
    capacity: int

    def __post_init__(self) -> None:
        if self.slots <= 0:
            raise ValueError(f"arena slots must be positive, got {self.slots}")
        if self.capacity < 1024 or self.capacity & (self.capacity - 1):
            raise ValueError(f"ring capacity must be a power of two >= 1024 samples, got {self.capacity}")

    @property
    def counters_bytes(self) -> int:
        return _page_align(self.slots * COUNTER_BYTES)

    @property
    def write_pos(self) -> int:
        return HEADER_BYTES

    @property
    def overruns(self) -> int:
        return self.write_pos + self.counters_bytes

    @property
    def read_pos(self) -> int:
        return self.overruns + self.counters_bytes

    @property
    def job(self) -> int:
        return self.read_pos + self.counters_bytes

    @property
    def data(self) -> int:
        return self.job + self.counters_bytes

    @property
    def total(self) -> int:
        return self.data + _page_align(self.slots * self.capacity * SAMPLE_BYTES)
