"""The shared-memory ring arena: creation and unlinking (controller), attaching (workers,
producers), slot allocation, and the producer side of each leg ring.

Ownership: the controller creates the arena and is the only process that unlinks it
(also on an exception or at interpreter exit); workers and load generators only attach
and close. The controller holds a lock on the arena file as long as it has it open, which
is how another controller's start-up sweep tells a live arena from a dead one's, across
PID namespaces (`shm/owner.py`). Positions and data are exposed as numpy views so the worker can act on all
legs at once. See ``shm/layout.py`` for the byte layout and the memory-ordering argument.
"""

from __future__ import annotations

import atexit
import errno
import mmap
import os
import platform
import secrets
import struct
import threading
import time
import weakref
from collections.abc import Sequence

import numpy as np

from . import layout as L
from .owner import LOCKED_SUFFIX, create_claimed, legacy_owner_gone, sweep_unowned

SHM_DIR = "/dev/shm"
NAME_PREFIX = "wholecall-"


def check_memory_model() -> None:
    """Refuse CPUs whose memory model makes plain stores unsafe for publication."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "i386"):
        raise RuntimeError(
            f"shm rings rely on x86 total store order; {platform.machine()} needs release/acquire "
            "ordering that this build does not provide"
        )


def check_room(nbytes: int, directory: str = SHM_DIR) -> None:
    """Refuse an arena that cannot fit in the shared-memory filesystem, saying by how much."""
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    if nbytes > free:
        raise OSError(
            errno.ENOSPC,
            f"the arena needs {nbytes / 2**20:.0f} MiB but {directory} has {free / 2**20:.0f} MiB free: "
            "lower max_channels (wholecall serve: --max-calls) or ring_ms, or enlarge " + directory,
        )


def mount_of(directory: str) -> tuple[str, list[str]]:
    """The file-system type and super-block options of the mount holding `directory`
    (("", []) if /proc/self/mountinfo cannot be read)."""
    best, found = "", ("", [])  # type: tuple[str, tuple[str, list[str]]]
    target = os.path.realpath(directory)
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                point = left.split()[4].replace("\\040", " ")
                fields = right.split()
                inside = target == point or target.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best) and len(fields) >= 3:
                    best, found = point, (fields[0], fields[2].split(","))
    except OSError:
        pass
    return found


def huge_pages(directory: str = SHM_DIR) -> bool:
    """Whether files in `directory` get 2 MiB pages: a tmpfs mounted with huge=always or
    huge=within_size (`deploy/run-wholecall-arena.mount` makes one).

    It matters for speed: the workers gather every leg's new audio from all over the
    arena each tick, and with 4 KiB pages nearly every 1.6 KB read is a TLB miss whose
    page walk misses the cache too (a 2.6 GB arena has 5 MB of page tables).
    `bench/pipeline.py --library` at 5,000 channels with 8 s rings: 117-119 us per
    channel-second on 4 KiB pages, 96-97 on 2 MiB pages (the same as 1 s rings).
    """
    fstype, opts = mount_of(directory)
    return fstype == "hugetlbfs" or (fstype == "tmpfs" and ("huge=always" in opts or "huge=within_size" in opts))


def sweep_stale(directory: str = SHM_DIR) -> list[str]:
    """Unlink the arenas no controller holds any more (one killed with SIGKILL, an earlier
    incarnation of a restarted container's service); returns their names.

    Ownership is the creator's lock (`shm.owner`), not the PID in the name: a controller in
    another PID namespace sharing `directory` is invisible to `kill(pid, 0)` here, and a
    dead one's number may belong to anyone now (PID 1 in every container).
    """
    removed: list[str] = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return removed
    for name in names:
        if not name.startswith(NAME_PREFIX):
            continue
        if not name.endswith(LOCKED_SUFFIX) and not legacy_owner_gone(name[len(NAME_PREFIX):]):
            continue  # an earlier version's, which takes no lock: by its PID, as that version did
        if sweep_unowned(os.path.join(directory, name), os.unlink):
            removed.append(name)
    return removed


class Arena:
    """A mapped arena. Use `Arena.create` (owner) or `Arena.attach` (everyone else)."""

    def __init__(self, path: str, mm: mmap.mmap, layout: L.Layout, owner: bool) -> None:
        #: Where the arena lives; what other processes pass to `attach`.
        self.path = path
        self.name = os.path.basename(path)
        self.layout = layout
        self.owner = owner
        #: The owner's: unlinks the arena, then closes the descriptor that holds its lock
        #: (`shm.owner`); run once, by `close` or when the arena is dropped unclosed.
        self._finalizer: weakref.finalize | None = None
        self._mm: mmap.mmap | None = mm
        n, cap = layout.slots, layout.capacity
        buf = memoryview(mm)
        self._buf = buf
        self.write_pos = np.frombuffer(buf, np.int64, n, layout.write_pos)
        self.overruns = np.frombuffer(buf, np.int64, n, layout.overruns)
        self.read_pos = np.frombuffer(buf, np.int64, n, layout.read_pos)
        self.job = np.frombuffer(buf, np.int64, n, layout.job)
        #: Pause gate words by the job's inbound slot (`layout`, "Pause gate").
        self.gate = np.frombuffer(buf, np.int64, n, layout.gate)
        #: Worker liveness records (`layout.W_*` columns), one row per worker index.
        self.workers = np.frombuffer(buf, np.int64, L.MAX_WORKERS * L.WORKER_RECORD_WORDS,
                                     L.OFF_WORKERS).reshape(L.MAX_WORKERS, L.WORKER_RECORD_WORDS)
        #: Envelope body keys by the job's inbound slot (`layout`, "Envelope keys").
        self.keys = np.frombuffer(buf, np.uint8, n * L.KEY_BYTES, layout.keys).reshape(n, L.KEY_BYTES)
        #: Per-job durable records by inbound slot: (slots, copies, `layout.D_*` words).
        self.durable = np.frombuffer(buf, np.int64, n * L.DURABLE_COPIES * L.DURABLE_WORDS,
                                     layout.durable).reshape(n, L.DURABLE_COPIES, L.DURABLE_WORDS)
        self.data = np.frombuffer(buf, np.int16, n * cap, layout.data).reshape(n, cap)
        self._free: list[int] = list(range(n - 1, -1, -1)) if owner else []
        self._lock = threading.Lock()
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------

    @classmethod
    def create(cls, slots: int, capacity: int, directory: str = SHM_DIR) -> Arena:
        """Create and map a new arena owned by this process (unlinked by `close`).

        `directory` must be on a tmpfs (memory, not disk); one mounted with 2 MiB pages
        makes the workers faster (see `huge_pages`). A hugetlbfs works too: Kubernetes
        gives a pod huge pages as an emptyDir of medium HugePages, which is one; its files
        are sized in whole huge pages, and its free space is what the reservation finds.
        """
        check_memory_model()
        if not os.path.isdir(directory):
            raise ValueError(f"arena directory {directory!r} does not exist")
        fstype = mount_of(directory)[0]
        if fstype not in ("tmpfs", "hugetlbfs", ""):
            raise ValueError(f"arena directory {directory!r} is on {fstype}, not tmpfs: the rings would be on disk "
                             "(a hugetlbfs works too)")
        sweep_stale(directory)
        lay = L.Layout(slots, capacity)
        size = lay.total
        if fstype == "hugetlbfs":  # statvfs there counts no free blocks without a size= option
            page = os.statvfs(directory).f_bsize
            size = -(-size // page) * page
        else:
            check_room(lay.total, directory)
        path, fd = _create_claimed(directory)
        try:
            os.ftruncate(fd, size)
            # Reserve every page now. A sparse arena that outgrows /dev/shm later kills
            # whichever producer or worker touches the missing page (SIGBUS) mid-call;
            # this fails here instead. It is also cheaper: allocating pages in one call
            # costs a fraction of faulting them in one by one during the rings' first
            # lap (measured on the project VM, 1 GiB: 0.94 s against 3.8 s).
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as e:
                raise OSError(e.errno, f"cannot reserve the {size / 2**20:.0f} MiB arena in {directory}: "
                                       f"{os.strerror(e.errno or 0)}") from None
            mm = mmap.mmap(fd, size)
        except BaseException:
            os.unlink(path)
            os.close(fd)
            raise
        struct.pack_into("<8sIIQQQQ", mm, 0, L.MAGIC, 0, 0, slots, capacity, os.getpid(), time.time_ns())
        # Version last: an attacher that sees it knows the header is complete.
        struct.pack_into("<I", mm, L.OFF_VERSION, L.VERSION)
        arena = cls(path, mm, lay, owner=True)
        # Belt and braces: an interpreter exiting with the arena still open unlinks it
        # (its lock goes with the process).
        atexit.register(_unlink_quietly, path)
        arena._finalizer = weakref.finalize(arena, _release, path, fd)
        return arena

    @classmethod
    def attach(cls, ref: str) -> Arena:
        """Map an existing arena, by its `path` (or its name, for one in /dev/shm); raises
        ValueError if it is not a ready wholecall arena."""
        path = ref if os.path.isabs(ref) else os.path.join(SHM_DIR, ref)
        name = os.path.basename(path)
        if (not os.path.isabs(ref) and "/" in ref) or ".." in ref.split("/") or not name.startswith(NAME_PREFIX):
            raise ValueError(f"not a wholecall arena: {ref!r}")
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if size < L.HEADER_BYTES:
                raise ValueError(f"arena {name} is truncated ({size} bytes)")
            mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        magic, version, _, slots, capacity, _, _ = struct.unpack_from("<8sIIQQQQ", mm, 0)
        if magic != L.MAGIC or version != L.VERSION:
            mm.close()
            raise ValueError(f"arena {name} has magic {magic!r} version {version}, want {L.MAGIC!r} v{L.VERSION}")
        lay = L.Layout(slots, capacity)
        if size < lay.total:
            mm.close()
            raise ValueError(f"arena {name} is {size} bytes, its header says {lay.total}")
        return cls(path, mm, lay, owner=False)

    def close(self) -> None:
        """Let go of the mapping; the owner also unlinks the arena. Idempotent."""
        if self._closed:
            return
        self._closed = True
        # numpy views pin the buffer: drop them before closing the mmap.
        del self.write_pos, self.overruns, self.read_pos, self.job, self.gate, self.data, self.workers, self.durable
        del self.keys
        self._buf.release()
        assert self._mm is not None
        self._mm.close()
        self._mm = None
        if self.owner:
            _unlink_quietly(self.path)
        if self._finalizer is not None:
            self._finalizer()  # the lock goes after the unlink: a sweep never finds it unlocked

    def __enter__(self) -> Arena:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- slots (owner only) ------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return self.layout.capacity

    @property
    def slots(self) -> int:
        return self.layout.slots

    def allocate(self, count: int = 2) -> list[int]:
        """Take `count` free slots; their counters restart at zero. Raises RuntimeError if full."""
        if not self.owner:
            raise RuntimeError("only the arena owner allocates slots")
        with self._lock:
            if len(self._free) < count:
                raise RuntimeError(f"arena {self.name} full: {self.slots} slots, {len(self._free)} free")
            got = [self._free.pop() for _ in range(count)]
        for s in got:
            self.job[s] = 0
            self.gate[s] = 0
            self.write_pos[s] = 0
            self.read_pos[s] = 0
            self.overruns[s] = 0
            self.durable[s] = 0
            self.keys[s] = 0
        return got

    def release(self, slots: Sequence[int]) -> None:
        if not self.owner:
            raise RuntimeError("only the arena owner frees slots")
        with self._lock:
            for s in slots:
                self.job[s] = 0
                self._free.append(s)

    @property
    def free_slots(self) -> int:
        return len(self._free)

    def arm(self, slots: list[int], job_id: int) -> int:
        """Hand `slots` to the consumer that will run `job_id`; returns the position it starts at.

        With `rewind`, the only places (besides the consumer itself) that store `read_pos`;
        this one only while the slots have no consumer (`job == 0`): the start is the furthest producer position
        of the slots, `read_pos` is set there first and `job` last, so a producer that sees
        the job also sees where its consumer reads (the producer respects `read_pos` only
        for armed slots). The caller holds the in-process producers' locks, if any, so
        that every sample written after this returns is kept for the consumer.
        """
        if not self.owner:
            raise RuntimeError("only the arena owner arms slots")
        if job_id <= 0:
            raise ValueError(f"job_id must be positive, got {job_id}")
        busy = [s for s in slots if self.job[s]]
        if busy:
            raise RuntimeError(f"slots {busy} are already armed (jobs {[int(self.job[s]) for s in busy]})")
        start = max(int(self.write_pos[s]) for s in slots)
        for s in slots:
            self.read_pos[s] = start
            self.gate[s] = 0  # no pause request of an earlier job applies to this one
        for s in slots:
            self.job[s] = job_id
        return start

    def rewind(self, slots: list[int], job_id: int, position: int) -> bool:
        """Failover: the consumer of `job_id` died; keep everything from `position` on (its
        last durable point, behind where it had read) for the consumer that takes over.
        False (nothing changed) if the slots are no longer armed for `job_id`."""
        if any(self.job[s] != job_id for s in slots):
            return False
        for s in slots:
            self.read_pos[s] = position
        return True

    def disarm(self, slots: Sequence[int], job_id: int) -> None:
        """Take `slots` back from `job_id` (a no-op for slots armed for another job since)."""
        for s in slots:
            if self.job[s] == job_id:
                self.job[s] = 0


def _create_claimed(directory: str) -> tuple[str, int]:
    """A new empty arena file in `directory`, locked by this process: (path, descriptor)
    (`shm.owner.create_claimed`: made again if another controller's sweep takes it first)."""
    def create() -> tuple[str, int]:
        path = os.path.join(directory, f"{NAME_PREFIX}{os.getpid()}-{secrets.token_hex(4)}{LOCKED_SUFFIX}")
        return path, os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    return create_claimed(create)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _release(path: str, fd: int) -> None:
    """Unlink an owner's arena, then let go of its lock (`Arena._finalizer`)."""
    _unlink_quietly(path)
    try:
        os.close(fd)
    except OSError:
        pass


class LegWriter:
    """The producer side of one leg ring: the only writer of its slot's write position.

    In-process callers may share a LegWriter between threads (a prompt player and the
    RTP thread); a lock keeps it single-producer.
    """

    # Two per call, for every call of the process: slots instead of a per-instance dict
    # (bench/call_memory.py: -40 B a writer).
    __slots__ = ("arena", "slot", "_poll", "_lock")

    def __init__(self, arena: Arena, slot: int, poll_s: float = 0.0005) -> None:
        if not 0 <= slot < arena.slots:
            raise ValueError(f"slot {slot} outside arena of {arena.slots} slots")
        self.arena = arena
        self.slot = slot
        self._poll = poll_s
        self._lock = threading.Lock()

    @property
    def position(self) -> int:
        """The leg's sample clock: samples written (or skipped) since the slot was allocated."""
        return int(self.arena.write_pos[self.slot])

    @property
    def overruns(self) -> int:
        return int(self.arena.overruns[self.slot])

    def write(self, pcm: np.ndarray, block: bool = True, timeout: float | None = None) -> int:
        """Append int16 samples at the leg's clock; returns how many were stored.

        While the leg is not being recorded the ring is simply overwritten (nobody
        reads it) and the clock advances. While it is recorded, a full ring makes the
        call wait for the worker (``block=True``, optionally bounded by ``timeout``) or
        drops what does not fit and counts it in ``overruns`` (``block=False``).
        If the worker has already moved past this leg's clock (the leg fell silent
        for longer than the worker's skew allowance and was filled with silence), the
        clock first jumps forward to the worker's position, so new audio lands at the
        present moment of the call instead of in the past.
        """
        pcm = np.asarray(pcm)
        if pcm.dtype != np.int16:
            raise TypeError(f"leg audio must be int16, got {pcm.dtype}")
        if pcm.ndim != 1:
            raise ValueError(f"leg audio must be 1-D (mono 8 kHz), got shape {pcm.shape}")
        a = self.arena
        s = self.slot
        cap = a.capacity
        mask = cap - 1
        deadline = None if timeout is None else time.monotonic() + timeout
        n = len(pcm)
        done = 0
        with self._lock:
            while done < n:
                w = int(a.write_pos[s])
                if a.job[s]:
                    r = int(a.read_pos[s])
                    if w < r:
                        # The worker recorded the gap as silence; zero it in the ring too, so
                        # a replacement worker that re-reads this span (failover) reads the
                        # same silence, not a lap-old sample.
                        self._zero(w, min(r, w + cap))
                        w = r
                    room = cap - (w - r)
                    if room <= 0:
                        if not block or (deadline is not None and time.monotonic() >= deadline):
                            a.overruns[s] += n - done
                            a.write_pos[s] = w
                            return done
                        time.sleep(self._poll)
                        continue
                    chunk = min(room, n - done)
                else:
                    chunk = min(cap, n - done)
                start = w & mask
                first = min(chunk, cap - start)
                a.data[s, start:start + first] = pcm[done:done + first]
                if first < chunk:
                    a.data[s, :chunk - first] = pcm[done + first:done + chunk]
                # Publish: data above first, then one aligned 8-byte store of the position.
                a.write_pos[s] = w + chunk
                done += chunk
        return done

    def _zero(self, start: int, end: int) -> None:
        a, s, cap = self.arena, self.slot, self.arena.capacity
        lo, n = start & (cap - 1), end - start
        first = min(n, cap - lo)
        a.data[s, lo:lo + first] = 0
        if first < n:
            a.data[s, :n - first] = 0

    def skip(self, samples: int) -> None:
        """Advance the clock over a gap (e.g. lost packets): the worker records silence there."""
        if samples < 0:
            raise ValueError(f"cannot skip a negative number of samples: {samples}")
        self.write(np.zeros(samples, np.int16))


class LegReader:
    """The consumer side of one leg ring, one leg at a time.

    The worker reads all its legs at once through the arena's arrays; this class is for
    tools and tests that follow a single leg. It resumes from the shared read position,
    so a reader that dies and is replaced continues where the last one stopped.
    """

    def __init__(self, arena: Arena, slot: int) -> None:
        if not 0 <= slot < arena.slots:
            raise ValueError(f"slot {slot} outside arena of {arena.slots} slots")
        self.arena = arena
        self.slot = slot

    def available(self) -> int:
        a = self.arena
        return int(a.write_pos[self.slot]) - int(a.read_pos[self.slot])

    def read(self, limit: int) -> np.ndarray:
        """Up to `limit` samples from the read position; advances it once."""
        a = self.arena
        s = self.slot
        r = int(a.read_pos[s])
        n = max(0, min(limit, int(a.write_pos[s]) - r))
        cap = a.capacity
        idx = (r + np.arange(n)) & (cap - 1)
        out = a.data[s, idx].copy()
        a.read_pos[s] = r + n
        return out
