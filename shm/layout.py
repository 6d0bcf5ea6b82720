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
           |  32 owner_pid u64 controller pid (for people: sweep = flock) |
           |  40 created_ns u64 CLOCK_REALTIME at creation                |
           | 1024 workers  [MAX_WORKERS] x 64-byte record, one cache line |
           |      each, WORKER-owned (worker i writes record i only):     |
           |        +0 pid  +8 ticks (grows)  +16 progress_ns            |
           |        (CLOCK_MONOTONIC of the last progress)  +24 jobs      |
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
           | gate       i64[slots]   CONTROLLER-owned, by the job's       |
           |            INBOUND slot: pause/resume fence (see below)      |
           +-- page aligned ----------------------------------------------+
           | durable    i64[slots][2][8]  WORKER-owned, indexed by the    |
           |            job's INBOUND slot: where the job's file ends,    |
           |            two copies written alternately (see below)        |
           +-- page aligned ----------------------------------------------+
           | keys       u8[slots][32]  WORKER-owned, by the job's INBOUND  |
           |            slot: an envelope job's body key (see below)      |
           +-- page aligned ----------------------------------------------+
           | data       i16[slots][capacity]  ring samples                |
           +--------------------------------------------------------------+

Positions are sample-clock counters of the leg (8 kHz samples since the slot was
allocated); sample ``p`` lives at ``data[slot, p & (capacity - 1)]``. Producer and
consumer counters sit on separate pages so a producer storing its position never
invalidates the cache line the worker is reading positions from.

Liveness and failover. A worker stores its tick counter and a CLOCK_MONOTONIC stamp in
its ``workers`` record whenever it makes progress (every loop turn and every serve
point inside a long tick); the controller judges liveness from that alone. After every
flush a worker publishes, per job, a *durable record*: the leg position up to which the
job's audio is in its file (``D_RESUME``), how many 8 kHz input samples that file holds
(``D_SAMPLES``) and the silence detector's state at that point. One record of a job
(128 bytes, two cache lines)::

    copy k (k = 0, 1) at i64 index 8k:
      +0 seq       0 while being written; else increasing (the newer copy wins)
      +1 job       job id the copy describes (a copy of another job is ignored)
      +2 resume    leg position of the first sample NOT in the file
      +3 samples   input (8 kHz) samples in the file up to ``resume``
      +4 audio     samples the silence detector had counted up to ``resume``
      +5 run       silent samples since the last loud frame, at ``resume``
      +6 loud_end  file position just after the last loud frame
      +7 flags     bit 0: audio has been heard; bits 1..55: origin + 1, the leg position
                   of the file's first sample (0: nothing written yet). A recording that
                   held back its leading silence began later than its start, and a
                   takeover's worker cannot tell where from the file alone.
                   Bits 56..59: the cause the worker is ending the job with (0 while it
                   records; `protocol.cause_code`), stored in the newest copy before it
                   finalises the file: a takeover's worker that finds the final file
                   already named (its worker died finishing) ends the job with it.

A copy is written seq := 0, fields, seq := previous max + 1 (x86 stores stay in program
order), alternating copies, so a worker killed mid-write leaves the older copy valid.

Envelope keys. An envelope recording's intermediate is encrypted under a random body
key that only the recipient's private key (never held by wholecall) unwraps from the
file. So that a surviving worker can continue such a recording after a failover, the
worker that opened it stores the body key in ``keys`` for the job's inbound slot while
the job runs, and zeroes it when the job ends. The arena is a 0600 file of the service's
user, which can already read that key from the worker's memory: the key stays inside
the trust domain that holds it anyway, and never reaches a disk (the arena is a tmpfs).

Pause gate. A pause or resume takes effect at the leg position of the moment it is
asked for (`WholeCallRecorder.pause`), but the worker hears of it later, over the
socket, and must not have read past that position in the meantime. The controller
stores ``GATE_HOLD`` in the job's gate word, passes a full barrier (a lock), reads the
legs' write positions (``p``), then stores ``gate_word(seq, p)`` and sends the request
with the same ``seq`` and ``p``. The worker loads the write positions *before* the gate
word each tick: HOLD means "do not advance this job now"; a word whose ``seq`` the worker
has not applied yet limits the job to ``p``. A worker that saw neither loaded its
positions before the controller stored HOLD, so before it read ``p``: they are ``<= p``.
Either way no sample at or after ``p`` is read before the request is applied.

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
VERSION = 6  # 2: worker records and per-job durable records; 3: pause gate; 4: envelope keys; 5: durable origin;
# 6: the ending cause in the durable flags
PAGE = 4096
HEADER_BYTES = PAGE

OFF_MAGIC = 0
OFF_VERSION = 8
OFF_SLOTS = 16
OFF_CAPACITY = 24
OFF_OWNER_PID = 32
OFF_CREATED_NS = 40

OFF_WORKERS = 1024
WORKER_RECORD_WORDS = 8  # 64 bytes: one cache line per worker
MAX_WORKERS = (HEADER_BYTES - OFF_WORKERS) // (WORKER_RECORD_WORDS * 8)
# Word indices of a worker record.
W_PID, W_TICKS, W_PROGRESS_NS, W_JOBS = 0, 1, 2, 3

# Word indices of one copy of a durable record (module docstring).
D_SEQ, D_JOB, D_RESUME, D_SAMPLES, D_AUDIO, D_RUN, D_LOUD_END, D_FLAGS = range(8)
#: Bytes of one envelope body key (AES-256) in the ``keys`` region.
KEY_BYTES = 32
DURABLE_COPIES = 2
DURABLE_WORDS = 8
D_HEARD = 1
D_ORIGIN_SHIFT = 1  # (flags >> D_ORIGIN_SHIFT) & D_ORIGIN_MASK is origin + 1 (module docstring)
D_ORIGIN_MASK = (1 << 55) - 1  # 2**55 samples at 8 kHz: over 100,000 years
D_END_SHIFT = 56  # (flags >> D_END_SHIFT) & D_END_MASK: the cause the job is ending with, 0: none yet
D_END_MASK = 0xF

#: Gate word: "hold every job reading this slot" (a request is being made).
GATE_HOLD = -1
#: Gate word layout: bits 48..62 the request's sequence number (mod 2**15), bits 0..47
#: the leg position (2**48 samples at 8 kHz: over a thousand years).
GATE_SEQ_SHIFT = 48
GATE_POS_MASK = (1 << GATE_SEQ_SHIFT) - 1
GATE_SEQ_MASK = (1 << 15) - 1


def gate_word(seq: int, pos: int) -> int:
    """The gate word of request `seq` (from 1) at leg position `pos`."""
    if not 0 <= pos <= GATE_POS_MASK:
        raise ValueError(f"gate position {pos} outside 0 .. {GATE_POS_MASK}")
    return ((seq & GATE_SEQ_MASK) << GATE_SEQ_SHIFT) | pos


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
    def gate(self) -> int:
        return self.job + self.counters_bytes

    @property
    def durable(self) -> int:
        return self.gate + self.counters_bytes

    @property
    def durable_bytes(self) -> int:
        return _page_align(self.slots * DURABLE_COPIES * DURABLE_WORDS * COUNTER_BYTES)

    @property
    def keys(self) -> int:
        return self.durable + self.durable_bytes

    @property
    def keys_bytes(self) -> int:
        return _page_align(self.slots * KEY_BYTES)

    @property
    def data(self) -> int:
        return self.keys + self.keys_bytes

    @property
    def total(self) -> int:
        return self.data + _page_align(self.slots * self.capacity * SAMPLE_BYTES)
