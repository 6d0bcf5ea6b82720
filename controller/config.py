"""Every tunable of a Controller, with units, in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

from .cpuquota import CGROUP_ROOT, SELF_CGROUP, quota_cpus


def usable_cpus(cgroup_root: str = CGROUP_ROOT, self_cgroup: str = SELF_CGROUP) -> int:
    """CPUs this process may use, not the host's: those it may run on (a container's
    cpuset, `taskset`), fewer if its cgroup's CPU quota allows less time than that
    (Kubernetes' CPU limit, `docker --cpus`: `controller.cpuquota`)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    quota = quota_cpus(cgroup_root, self_cgroup)
    return cpus if quota is None else min(cpus, quota)


@dataclass(frozen=True)
class Config:
    workers: int = 0
    """Worker processes; 0 means one per CPU this process may use (`usable_cpus`: its
    affinity, bounded by its cgroup's CPU quota)."""
    recordings_dir: str = "recordings"
    """Root of every recording; filenames are relative to it and may not leave it."""
    max_channels: int = 1024
    """Call channels that can exist at once (two ring slots each)."""
    ring_ms: int = 8192
    """Audio each leg ring holds, in ms (rounded up to a power-of-two sample count).
    A producer writing faster than real time blocks (or overruns) when it is full."""
    arena_dir: str = "/dev/shm"
    """tmpfs directory for the ring arena. One mounted with 2 MiB pages
    (`deploy/run-wholecall-arena.mount`: huge=within_size) cuts worker CPU at thousands of
    channels (the pipeline bench: -18 %; 10,000-channel stress: 131 -> 123 us per
    channel-second); /dev/shm has 4 KiB pages unless remounted."""
    silence_dbfs: float = -45.0
    """A 20 ms frame whose mean energy is below this (dB relative to full scale) is silence.
    -45 dBFS sits well above telephone line noise (-60..-50 dBFS) and below quiet speech
    (about -35 dBFS)."""
    silence_hangover_ms: int = 200
    """When a silence limit trims the silent tail, this much audio after the last loud
    frame is kept so word endings are not clipped (DESIGN allows up to 250 ms)."""
    tick_ms: float = 20.0
    """Worker tick: how often each worker advances all its jobs."""
    scale_tick_ms: float = 100.0
    """Worker tick once a worker holds `scale_jobs` jobs or more: each tick then covers a
    whole producer block of every job, so the fixed cost per frame step is paid for all
    jobs at once (stop/silence decisions are then up to this much later in wall-clock)."""
    scale_jobs: int = 256
    """Jobs per worker from which `scale_tick_ms` applies."""
    flush_ms: float = 2000.0
    """Audio a worker stages per job before writing it to the file. A killed worker loses
    nothing of it: its durable records trail by at most this much (plus the DTMF
    look-ahead), and the job's new owner reads that span again from the rings (8 s).
    2 s, not 1: a file write costs about the same for 16 kB as for 8 kB on ext4 (the
    append's inode and journal work dominates), so this halves the worker's file-write
    CPU (bench/pipeline.py --flush-ms, 30 s at 10,000 channels: 18.5 -> 8.8 us per
    channel-second in _flush_codes) for 8 kB more staging per G.711 channel."""
    skew_ms: float = 500.0
    """How long a recording waits for a leg that has fallen behind the other before
    recording the missing part as silence (a leg with nothing to say)."""
    heartbeat_ms: float = 250.0
    """Worker heartbeat interval (load figures for `Controller.stats()`; not used for liveness)."""
    stall_timeout_s: float = 2.0
    """A worker whose progress stamp in shared memory has not moved for this long (stopped,
    wedged; a merely slow worker still stamps at every serve point of its tick) is killed
    and its jobs are taken over. Keep it well inside `ring_ms` minus `flush_ms`: the
    takeover re-reads from the rings what the worker had not yet written. 0 disables it."""
    start_timeout_s: float = 10.0
    """`start()` returns False if the worker has not confirmed the job by then."""
    stop_timeout_s: float = 30.0
    """`stop()` returns False if the job has not ended by then."""
    min_free_bytes: int = 64 << 20
    """`start()` raises `Error` while the recordings filesystem has fewer bytes than this
    free (f_bavail, read at most once a second): 64 MiB is about 2 hours of one A-law
    call, or a few seconds of 1,000 calls, enough for the recordings already running to
    finish cleanly instead of all failing with ENOSPC. 0 turns the check off."""
    file_mode: int = 0o600
    """Permission bits of recording files (owner-only by default)."""
    dir_mode: int = 0o700
    """Permission bits of directories the controller creates for recordings."""
    sidecars: bool = True
    """Write `<file>.json` next to every finished recording (`controller.sidecar`): its
    facts, digits, paused spans and checksum. Off, the result still carries them."""
    sync_on_stop: bool = False
    """Make a recording's file and sidecar durable (fsynced, with their directory) before
    `stop()`, `record()` or `wait_until_finished()` return. Off, they return once both are
    final (complete and named, for every reader and across any process crash); the
    controller's syncer makes the sidecar durable right after, in batches, and the audio
    reaches the disk with the kernel's writeback (`controller.durability`): at 20,000
    calls the sidecar's fsyncs alone cost stop() a p99 of 56-235 ms, and fsyncing every
    ended recording's audio starved the workers. `Controller.wait_durable()` waits for
    the syncer."""
    finisher_threads: int = 2
    """Threads that hash finished recordings and write their sidecars (never the
    supervisor's I/O thread: a large file's sha256 takes tens of milliseconds)."""
    gc_freeze_s: float = 0.0
    """Every this many seconds, move the surviving objects of this process out of the
    cyclic collector's walks (`controller.heapfreeze`): at 20,000 calls a full collection
    otherwise holds the GIL for 190-700 ms of CPU, and every controller thread waits.
    Safe for the controller's own objects (a call is freed by reference counting alone);
    an application object frozen and later dropped inside a reference cycle is kept
    until `close()`. 0 (the default) leaves the collector alone."""
    pin_workers: bool = True
    """Pin worker i to CPU i mod the number of CPUs."""
    worker_priority: int = 10
    """Workers run this much above normal priority (nice -10): on a saturated box the
    real-time audio path must win over API threads and other jobs, or rings overrun.
    The controller's I/O thread (the one that relays commands and events) runs at the
    same level, so a worker's confirmation is not left waiting behind the workers.
    Needs CAP_SYS_NICE (root); without it workers log a warning and run at normal
    priority. 0 leaves the priority alone."""

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name != "silence_dbfs" and isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0:
                raise ValueError(f"{f.name} must not be negative, got {v}")
        if not isinstance(self.arena_dir, str) or not os.path.isdir(self.arena_dir):
            raise ValueError(f"arena_dir must be an existing directory (a tmpfs), got {self.arena_dir!r}")
        if self.workers == 0:
            object.__setattr__(self, "workers", usable_cpus())
        if self.worker_priority > 20:
            raise ValueError(f"worker_priority must be at most 20 (nice -20), got {self.worker_priority}")
        if self.max_channels < 1:
            raise ValueError(f"max_channels must be at least 1, got {self.max_channels}")
        if not -120.0 < self.silence_dbfs < 0.0:
            raise ValueError(f"silence_dbfs must be between -120 and 0 dBFS, got {self.silence_dbfs}")
        if self.silence_hangover_ms > 250:
            raise ValueError(f"silence_hangover_ms must be at most 250, got {self.silence_hangover_ms}")

    @property
    def ring_samples(self) -> int:
        n = max(1024, self.ring_ms * 8)
        return 1 << (n - 1).bit_length()
