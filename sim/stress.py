"""`wholecall stress`: how many calls can one box record?

Runs the real thing end to end: a `Controller` with its pinned workers, load generator
processes (`controller.loadgen`) feeding both legs of every call at real-time pace, and
recordings started and stopped through the public API from many threads. Then it checks
every file and reports what it cost:

- CPU per recorded channel-second for the workers (all stages; the per-stage split
  comes from sampling the workers with py-spy when `--profile` is given), the load
  generators and the controller process (which also runs this harness);
- ring overruns and lost samples (must be zero), files decoded with soundfile and
  length-checked against what the load generators wrote (+-1 frame), a spot check of
  content against the mix the recording must contain;
- start()/stop() latency percentiles: over the ramp (`--start-rate`, 1,000 per second by
  default), during its last tenth (>= 90 % of the calls running, starts still arriving at
  the ramp's rate), and for *probe* calls: once all `--channels` calls record, a few more
  are started at `--probe-rate` (a steady call centre's turnover), so their start() is
  timed with all N recordings running, apart from the ramp's own load; each probe records
  for `--probe-seconds` (by default as long as lets the last one end before the first ramp
  call does), so the probes are also stopped at `--probe-rate` with all N recording
  (`stop_steady`); `stop` is every call's, `stop_burst` the ramp calls' end-of-run burst;
- memory per channel (rings from the arena layout, worker and controller buffers as
  measured), and the arena sized from the channel count;
- with `--baseline`, the same recordings made the way a user would without wholecall
  (one sox, ffmpeg or GStreamer (gst-launch-1.0) process per call mixing the two legs, fed through pipes at real
  time in 20 ms frames) and the CPU ratio to ours;
- with `--find-max`, short runs at growing channel counts up to the largest that loses
  nothing and keeps every worker under 90 % of its core.

Each call: answered channel, `start(file_format=..., rate=8000, dtmf_elim=True,
recording_mode="mixed", milliseconds_max_silence=...)`; once the worker confirms, the
load generator feeds it `--seconds` of conversation starting at leg position 0, so the
file must hold exactly the samples the legs received; then `stop()`. Exit status 0
only if nothing was lost and every file is valid.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import gc
import json
import logging
import math
import multiprocessing
import os
import platform
import queue
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from wholecall.controller.config import Config
from wholecall.controller.procenv import raise_current_thread, raise_threads
from wholecall.controller.recorder import StartTrace, StopTrace
from wholecall.formats.codecs import CALL_RATE as RATE
from wholecall.formats.codecs import FRAME
from wholecall.shm.arena import SHM_DIR, huge_pages
from wholecall.shm.layout import Layout

from .arena_mount import private_arena_dir
from .loadgen import LoadGenerators, Programs, load_programs
from .topdir import spread_subdirectories

log = logging.getLogger("wholecall.stress")

#: A worker busier than this (fraction of its core) is not sustainable: no headroom for bursts.
CPU_LIMIT = 0.90
#: Content check floor per format: SNR (dB) of a decoded file against the exact mix
#: (DTMF spans left out). Well under what each codec achieves on speech, far above the
#: ~0 dB of a misaligned, garbled or wrongly mixed file.
SNR_FLOOR_DB = {"alaw": 20.0, "ulaw": 20.0, "s16bit": 50.0, "u8bit": 15.0, "ima": 8.0, "oki": 6.0}
#: Probes start this long after the ramp's last start() returned.
PROBE_SETTLE_S = 1.0
#: By default the last probe is stopped this long before the first ramp call ends.
PROBE_STOP_MARGIN_S = 2.0
FIND_MAX_LEVELS = [500, 1000, 2000, 5000, 10000, 15000, 20000, 30000]


@dataclass
class StressConfig:
    """One stress run (see `--help` for each field's meaning)."""

    channels: int = 1000
    seconds: float = 60.0
    workers: int = 0
    loadgens: int = 1
    file_format: str = "alaw"
    rate: int = 8000
    max_silence_ms: int = 5000
    ring_ms: int = Config.ring_ms  # the product's default: measure what users run
    start_rate: float = 1000.0
    threads: int = 64
    block_ms: float = 100.0
    out: str = "wholecall-stress"
    keep: bool = False
    profile: bool = False
    spot_checks: int = 8
    quiet: bool = False
    programs: int = 16
    tick_ms: float = 0.0  # 0: the Controller's default
    scale_jobs: int = 0  # 0: the Controller's default (jobs per worker from which it ticks in blocks)
    arena_dir: str = ""  # "": a private tmpfs with 2 MiB pages when root (as deploy/ mounts one), else /dev/shm
    probes: int = -1  # extra calls started once all `channels` record (-1: channels // 50, 10..200)
    probe_rate: float = 20.0  # their start() rate, per second
    probe_seconds: float = 0.0  # audio fed to each probe (0: the last one ends before the first ramp call)
    kill_worker_at: float = 0.0  # > 0: SIGKILL worker 0 this many seconds into the run (failover test)
    #: nice -N for this process (the application that embeds the controller: its API threads
    #: and the controller's; `procenv.raise_threads` says why); -1: the workers' level; 0: as
    #: it is. Not the default: at 20,000 channels the application then took the CPU the
    #: workers needed during the ramp and the rings overran (411 M samples, BENCHMARKS.md).
    app_priority: int = 0
    #: The controller's Config.gc_freeze_s: what README recommends to an application at this
    #: scale, and this harness is one (its own per-call records are acyclic too); 0: the
    #: collector left alone, to see its raw cost.
    gc_freeze_s: float = 5.0


@dataclass
class Call:
    """One channel of the run and what happened to it."""

    index: int
    channel: object
    name: str
    program: int = 0
    phase: int = 0
    started: bool = False
    start_ms: float = math.nan
    running_at_start: int = 0
    stored: tuple[int, int] = (0, 0)
    overruns: tuple[int, int] = (0, 0)
    stop_ms: float = math.nan
    stop_steady: bool = False  # stop() called with every ramp call still recording
    stop_hops_ms: dict | None = None  # the recorder's StopTrace, per hop
    path: str = ""
    cause: str = ""
    lost: int = 0  # samples the rings overwrote before a worker takeover (JobResult.lost_samples)
    error: str = ""
    fed: bool = False
    stopped: bool = False
    t_begin: float = math.nan  # monotonic time start() was called
    t_end: float = math.nan  # ... and returned
    probe: bool = False  # started after the ramp, with all the run's channels recording
    hops_ms: dict | None = None  # the recorder's StartTrace, per hop


# -- small measurement helpers ------------------------------------------------------------------


def probe_count(cfg: StressConfig) -> int:
    """Probe calls of a run: `cfg.probes`, or by default one per 50 channels (10 to 200)."""
    if cfg.probes >= 0:
        return cfg.probes
    return min(200, max(10, cfg.channels // 50))


def raise_nofile() -> tuple[int, int]:
    """Lift the soft open-files limit to the hard one (workers inherit it): one file per recording."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as e:
            log.warning("cannot raise RLIMIT_NOFILE to %d: %s", hard, e)
    return soft, hard


_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int, kernel_only: bool = False) -> float:
    """CPU seconds (user + system, or system alone) a live process has used; nan if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[12]) + (0 if kernel_only else int(fields[11]))) / _TCK
    except (OSError, IndexError, ValueError):
        return math.nan


def proc_anon(pid: int) -> int:
    """Private anonymous resident memory of a process in bytes (its own buffers, not the shm arena)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def system_cpu() -> tuple[float, float, float]:
    """Busy, total and stolen CPU seconds of the whole machine so far (all CPUs), from /proc/stat.

    Steal is time the hypervisor gave our vCPUs to someone else: on a shared VM it makes
    every figure of a run worse without any process here using the CPU.
    """
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return math.nan, math.nan, math.nan
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    total = sum(v[:8])
    steal = v[7] if len(v) > 7 else 0
    return (total - idle) / _TCK, total / _TCK, steal / _TCK


def self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def percentiles(values: list[float]) -> dict:
    v = np.asarray([x for x in values if not math.isnan(x)], float)
    if not len(v):
        return {"n": 0}
    p = np.percentile(v, [50, 90, 99])
    return {"n": len(v), "p50": round(float(p[0]), 3), "p90": round(float(p[1]), 3),
            "p99": round(float(p[2]), 3), "max": round(float(v.max()), 3)}


def start_hops(calls: list[Call]) -> dict:
    """Percentiles of each hop of start() (see `StartTrace.hops_ms`) over these calls."""
    traced = [c.hops_ms for c in calls if c.hops_ms]
    return {hop: percentiles([h[hop] for h in traced]) for hop in StartTrace.HOPS} if traced else {}


def stop_hops(calls: list[Call]) -> dict:
    """Percentiles of each hop of stop() (see `StopTrace.hops_ms`) over these calls."""
    traced = [c.stop_hops_ms for c in calls if c.stop_hops_ms]
    return {hop: percentiles([h[hop] for h in traced]) for hop in StopTrace.HOPS} if traced else {}


def probe_seconds(cfg: StressConfig, t_start: float, probe_t0: float, probes: int) -> float:
    """How long each probe records: `cfg.probe_seconds`, or by default as long as lets the
    last probe (started `probes / probe_rate` after `probe_t0`) be stopped
    `PROBE_STOP_MARGIN_S` before the first ramp call ends (`cfg.seconds` after `t_start`),
    at least 1 s and at most `cfg.seconds`."""
    if cfg.probe_seconds > 0:
        return cfg.probe_seconds
    room = t_start + cfg.seconds - (probe_t0 + probes / cfg.probe_rate) - PROBE_STOP_MARGIN_S
    return max(1.0, min(cfg.seconds, room))


def machine() -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    return {"cpus": len(os.sched_getaffinity(0)), "cpu_model": model, "python": platform.python_version(),
            "numpy": np.__version__, "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}


# -- file verification (runs in a process pool, after the load) ----------------------------------


def decode(path: str, file_format: str, rate: int) -> tuple[np.ndarray, int, str]:
    """A recording as int16 (frames, channels), its rate and libsndfile's subtype name.

    libsndfile refuses OKI ADPCM inside a WAV, so for "oki" the header is parsed by
    `worker.wavfile.read_info` and the data chunk decoded by libsndfile as raw VOX.
    """
    import soundfile as sf

    if file_format != "oki":
        info = sf.info(path)
        data, sr = sf.read(path, dtype="int16", always_2d=True)
        return data, sr, info.subtype
    import io

    from wholecall.formats.wav import read_info

    info = read_info(path)
    with open(path, "rb") as f:
        f.seek(info.data_offset)
        raw = f.read(min(info.data_size, info.file_size - info.data_offset))
    data, _ = sf.read(io.BytesIO(raw), dtype="int16", always_2d=True, format="RAW", subtype="VOX_ADPCM",
                      samplerate=info.rate, channels=1)
    return data, info.rate, "VOX_ADPCM"


def verify_file(path: str, expected: int, file_format: str, rate: int) -> dict:
    """Decode one recording completely; check its format and length (+-1 frame) against `expected`."""
    try:
        data, sr, subtype = decode(path, file_format, rate)
    except Exception as e:  # noqa: BLE001 - any decoder failure makes the file invalid
        return {"ok": False, "frames": 0, "problem": f"cannot decode: {e}"}
    want_sub = {"alaw": "ALAW", "ulaw": "ULAW", "s16bit": "PCM_16", "u8bit": "PCM_U8", "ima": "IMA_ADPCM",
                "oki": "VOX_ADPCM"}.get(file_format)
    frames = len(data)
    exp = expected * rate // RATE
    tol = FRAME * rate // RATE + (1017 if file_format == "ima" else 0)  # IMA pads its last block
    problems = []
    if sr != rate:
        problems.append(f"rate {sr}, want {rate}")
    if data.shape[1] != 1:
        problems.append(f"{data.shape[1]} channels, want 1 (mixed)")
    if want_sub and subtype != want_sub:
        problems.append(f"subtype {subtype}, want {want_sub}")
    if abs(frames - exp) > tol:
        problems.append(f"{frames} frames, want {exp} +-{tol}")
    if frames and not np.any(data):
        problems.append("all samples are zero")
    return {"ok": not problems, "frames": frames, "problem": "; ".join(problems)}


def spot_check(path: str, programs: Programs, program: int, phase: int, expected: int, file_format: str) -> dict:
    """Compare one file with the exact mix of what its legs received (SNR outside DTMF spans)."""
    data, _, _ = decode(path, file_format, RATE)
    got = data[:, 0].astype(np.float64)
    legs = programs.span(program, phase, expected).astype(np.int32)
    want = np.clip(legs[0] + legs[1], -32768, 32767).astype(np.float64)
    n = min(len(got), len(want))
    dtmf = programs.dtmf_span(program, phase, expected)[:n]
    keep = ~dtmf
    err = got[:n][keep] - want[:n][keep]
    snr = 10 * math.log10(max(1e-9, float(np.sum(want[:n][keep] ** 2))) / max(1e-9, float(np.sum(err ** 2))))
    # DTMF elimination at scale: tone energy left in the file over what the legs carried there.
    residue = None
    if dtmf.any():
        e_in = float(np.sum(want[:n][dtmf] ** 2))
        residue = round(10 * math.log10(max(1e-9, float(np.sum(got[:n][dtmf] ** 2))) / max(1e-9, e_in)), 1)
    floor = SNR_FLOOR_DB.get(file_format, 6.0)
    side = sidecar_digits(path, dtmf)
    return {"path": path, "snr_db": round(snr, 1), "floor_db": floor, "ok": snr >= floor and not side["unplaced"],
            "dtmf_residue_db": residue, "sidecar_digits": side}


def _spot_line(spots: list[dict]) -> str:
    """The content checks in the printed summary, with what their sidecars said of the digits."""
    side = [s.get("sidecar_digits", {}) for s in spots]
    return (f"  content checks {len(spots)}, failed {sum(1 for s in spots if not s['ok'])}; their sidecars list "
            f"{sum(d.get('listed', 0) for d in side)} digits, {sum(d.get('unplaced', 0) for d in side)} without an "
            f"offset, {sum(d.get('in_dtmf', 0) for d in side)} within 100 ms of the legs' DTMF")


def sidecar_digits(path: str, dtmf: np.ndarray) -> dict:
    """The sidecar's in-band digits against the DTMF the legs carried (`dtmf`, per sample of
    the file). A stress call records from its first sample with nothing paused or trimmed,
    so every digit heard is in the file and must have an offset there (`unplaced` counts
    those without: a G.711 file's origin was once wrong, and its digits had none). Where
    the offsets fall is counted, not judged (`in_dtmf`: within 100 ms of DTMF the legs
    carried), since speech can be taken for a digit now and then."""
    try:
        with open(path + ".json") as f:
            listed = [d for d in json.load(f).get("digits", ()) if d.get("source") == "inband"]
    except FileNotFoundError:
        return {"listed": 0, "unplaced": 0, "in_dtmf": 0, "sidecar": False}
    near = RATE // 10
    placed = [round(d["offset_s"] * RATE) for d in listed if d.get("offset_s") is not None]
    in_dtmf = sum(1 for i in placed if dtmf[max(0, i - near):i + near].any())
    return {"listed": len(listed), "unplaced": len(listed) - len(placed), "in_dtmf": in_dtmf, "sidecar": True}


# -- one run --------------------------------------------------------------------------------------


def worker_backlog_ms(arena: object) -> float:
    """How far the workers trail the producers on the worst recorded leg, in ms of audio.

    A ring overruns when this reaches the ring's length, so it shows a stalled worker
    long before audio is lost.
    """
    rec = arena.job != 0
    if not rec.any():
        return 0.0
    return float((arena.write_pos[rec] - arena.read_pos[rec]).max()) * 1000 / RATE


class Sampler:
    """CPU and memory of every process involved, sampled over time (for the steady-state window)."""

    def __init__(self, workers: Callable[[], list[int]], loadgens: list[int]) -> None:
        self._worker_pids = workers  # asked at every sample: a dead worker is replaced
        self.loadgens = loadgens
        self.samples: list[dict] = []
        self._seen: dict[int, tuple[int, float]] = {}  # worker index -> (pid, its last CPU reading)
        self._carry: dict[int, float] = {}  # worker index -> CPU of the processes it replaced

    def _workers_cpu(self, pids: list[int]) -> list[float]:
        """CPU seconds per worker slot, summed over every process that held the slot."""
        out = []
        for i, pid in enumerate(pids):
            cpu = proc_cpu(pid)
            old = self._seen.get(i)
            if old is not None and old[0] != pid:
                self._carry[i] = self._carry.get(i, 0.0) + old[1]
                old = None
            if math.isnan(cpu):  # gone, not replaced yet: it used what it had used
                cpu = old[1] if old is not None else 0.0
            self._seen[i] = (pid, cpu)
            out.append(self._carry.get(i, 0.0) + cpu)
        return out

    def take(self, recording: int, arena: object | None = None, backlog: float = 0.0) -> dict:
        """One sample; with the arena, also the overruns so far."""
        overruns = int(arena.overruns.sum()) if arena is not None else 0
        pids = self._worker_pids()
        s = {"t": time.monotonic(), "recording": recording, "overruns": overruns, "backlog_ms": backlog,
             "workers": self._workers_cpu(pids), "loadgens": [proc_cpu(p) for p in self.loadgens],
             "controller": self_cpu(), "worker_anon": [proc_anon(p) for p in pids],
             "worker_pids": pids, "worker_kernel": [proc_cpu(p, kernel_only=True) for p in pids],
             "system": system_cpu()}
        self.samples.append(s)
        return s


#: A full collection at least this long has the tracked objects counted by type (once a run).
CENSUS_PAUSE_MS = 100.0


class GcPauses:
    """The cyclic collector's pauses in this process (the controller's, and the harness's
    beside it): a full collection over hundreds of thousands of objects holds the GIL, so
    every controller thread (its I/O, the finishers, the API) stops for it. The CPU time
    of the collecting thread is kept beside the wall time: the difference is time the
    collector held the GIL while the thread waited for a CPU (a saturated box, a thread
    at normal priority beside workers at nice -10)."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float, float]] = []  # (generation, wall ms, CPU ms)
        self.census: dict = {}
        self._t0 = self._c0 = 0.0

    def _cb(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0, self._c0 = time.perf_counter(), time.thread_time()
            return
        ms = 1e3 * (time.perf_counter() - self._t0)
        self.pauses.append((info["generation"], ms, 1e3 * (time.thread_time() - self._c0)))
        if info["generation"] == 2 and ms >= CENSUS_PAUSE_MS and not self.census:
            # Once: what the long pause walked (the tracked objects by type), for the fix.
            objs = gc.get_objects()
            counts: dict[str, int] = {}
            for o in objs:
                k = f"{type(o).__module__}.{type(o).__qualname__}"
                counts[k] = counts.get(k, 0) + 1
            top = sorted(counts.items(), key=lambda kv: -kv[1])[:12]
            self.census = {"tracked": len(objs), "pause_ms": round(ms, 1), "top": dict(top)}

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._cb)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._cb)

    def summary(self) -> dict:
        out: dict = {}
        for g in (0, 1, 2):
            ms = [(d, c) for gen, d, c in self.pauses if gen == g]
            if ms:
                longest = max(ms)
                out[f"gen{g}"] = {"collections": len(ms), "max_ms": round(longest[0], 1),
                                  "max_cpu_ms": round(longest[1], 1), "total_ms": round(sum(d for d, _ in ms), 1),
                                  "total_cpu_ms": round(sum(c for _, c in ms), 1)}
        if self.census:
            out["census"] = self.census
        return out


class Run:
    """Drives one stress run; `execute()` returns the report (a JSON-able dict)."""

    def __init__(self, cfg: StressConfig) -> None:
        self.cfg = cfg
        self.lock = threading.Lock()
        self.calls: list[Call] = []
        self.recording = 0
        self.started = 0
        self.start_failed = 0
        self.stopped = 0
        self.fed_q: queue.Queue[Call] = queue.Queue()
        self.first_done: float | None = None
        self.ramp_end: float | None = None
        self.lg_stats: dict[int, dict] = {}
        self.lg_lag_ms = 0.0
        self.errors: list[str] = []
        self.spy: list[tuple[subprocess.Popen, str]] = []
        self.t_start = 0.0
        self.backlog_peak = 0.0  # since the last progress sample
        self.backlog_max = 0.0  # over the run
        self._io_stop = threading.Event()
        self.probes_skipped = 0  # probes not started: a ramp call had already ended
        self.probe_samples = 0  # audio fed to each probe (set when the probes begin)

    # -- phases ---------------------------------------------------------------------------

    def execute(self) -> dict:
        from wholecall.controller import Controller

        cfg = self.cfg
        rng = np.random.default_rng(12345)
        progs, progs_path = load_programs(count=cfg.programs)
        self.programs = progs
        run_dir = os.path.join(cfg.out, f"recordings-{cfg.channels}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        probes = probe_count(cfg)
        total = cfg.channels + probes
        settings = {"workers": cfg.workers, "recordings_dir": run_dir, "max_channels": total,
                    "ring_ms": cfg.ring_ms}
        if cfg.tick_ms:
            settings["tick_ms"] = cfg.tick_ms
        if cfg.scale_jobs:
            settings["scale_jobs"] = cfg.scale_jobs
        if cfg.gc_freeze_s:
            settings["gc_freeze_s"] = cfg.gc_freeze_s
        ccfg = Config(**settings)
        lay = Layout(2 * total, ccfg.ring_samples)
        nofile = raise_nofile()
        # A worker keeps one open file per recording while its limit allows; past it, files
        # are reopened for each write (`worker.descriptors`): slower, never refused.
        need = -(-total // ccfg.workers) + 256
        if nofile[0] < need:
            log.warning("RLIMIT_NOFILE is %d (hard limit %d); %d channels on %d workers would hold about %d: "
                        "some recordings are reopened for each write", nofile[0], nofile[1], total, ccfg.workers,
                        need)
        report: dict = {
            "command": "wholecall stress", "config": asdict(cfg), "machine": machine(),
            "clips": {"source": progs.source, "programs": progs.count, "seconds": progs.length / RATE},
            "rlimit_nofile": nofile[0],
        }
        arena_mount = contextlib.ExitStack()
        settings["arena_dir"] = cfg.arena_dir or arena_mount.enter_context(private_arena_dir(lay.total)) or SHM_DIR
        try:
            ccfg = Config(**settings)
            report["controller_config"] = {k: v for k, v in asdict(ccfg).items() if k != "recordings_dir"}
            arena_huge = huge_pages(ccfg.arena_dir)
            ctl = Controller(**settings)
        except BaseException:
            arena_mount.close()
            raise
        lg = None
        prio = ccfg.worker_priority if cfg.app_priority < 0 else cfg.app_priority
        if prio and os.getpriority(os.PRIO_PROCESS, 0) > -prio:
            try:
                raise_threads(prio)
            except OSError as e:
                log.warning("cannot raise this process to nice -%d (the workers' level): %s", prio, e)
                prio = 0
        report["app_priority"] = -os.getpriority(os.PRIO_PROCESS, 0)
        try:
            ctl.start()
            self.arena = ctl.arena
            worker_pids = [w.proc.pid for w in ctl.supervisor.workers]
            lg = LoadGenerators(cfg.loadgens, ctl.arena.path, progs_path, cfg.block_ms,
                                priority=ccfg.worker_priority)
            sup = ctl.supervisor  # kept: ctl.close() drops the attribute, not the handles
            self.sampler = Sampler(lambda: [w.proc.pid for w in sup.workers], lg.pids)
            anon_workers0 = sum(proc_anon(p) for p in worker_pids)
            anon_ctl0 = proc_anon(os.getpid())
            t0 = time.monotonic()
            for i in range(total):
                ch = ctl.incoming_call()
                ch.answer()
                self.calls.append(Call(i, ch, f"{i // 1000:03d}/call-{i:06d}.wav",
                                       program=int(rng.integers(progs.count)), probe=i >= cfg.channels))
            create_s = time.monotonic() - t0
            base = self.sampler.take(0, ctl.arena)
            starters = cf.ThreadPoolExecutor(cfg.threads, thread_name_prefix="start")
            stoppers = cf.ThreadPoolExecutor(max(4, cfg.threads // 4), thread_name_prefix="stop")
            self.stoppers = stoppers
            io = threading.Thread(target=self._io_loop, args=(lg, rng, ccfg.worker_priority), name="stress-io",
                                  daemon=True)
            io.start()
            t_start = self.t_start = time.monotonic()
            deadline = t_start + cfg.channels / cfg.start_rate * 3 + probes / cfg.probe_rate + cfg.seconds + 120
            probe_t0 = None  # when the first probe is due
            killed = None  # (pid, when) of the worker killed by --kill-worker-at
            # The ramp: start() calls handed out at the target rate, run by many threads.
            next_progress = t_start
            i = 0
            last = base
            while True:
                now = time.monotonic()
                while i < cfg.channels and t_start + i / cfg.start_rate <= now:
                    starters.submit(self._start, self.calls[i])
                    i += 1
                if self.ramp_end is None and self.started + self.start_failed == cfg.channels:
                    self.ramp_end = now
                    probe_t0 = now + PROBE_SETTLE_S
                    self.probe_samples = round(probe_seconds(cfg, t_start, probe_t0, probes) * RATE)
                    if cfg.profile:
                        # Sample the workers in the steady state: all calls recording, none ended yet.
                        window = max(1.0, min(20.0, cfg.seconds - 2.0))
                        self.spy = start_profiler(worker_pids, window, cfg.out)
                if probe_t0 is not None and i < total:
                    if self.first_done is not None:  # a ramp call ended: fewer than N record from now on
                        self.probes_skipped = total - i
                        i = total
                    while i < total and probe_t0 + (i - cfg.channels) / cfg.probe_rate <= now:
                        starters.submit(self._start, self.calls[i])
                        i += 1
                if cfg.kill_worker_at > 0 and killed is None and now - t_start >= cfg.kill_worker_at:
                    victim = ctl.supervisor.workers[0]
                    killed = (victim.proc.pid, now - t_start, victim.load)
                    os.kill(victim.proc.pid, signal.SIGKILL)
                    if not cfg.quiet:
                        print(f"[{now - t_start:6.1f}s] killed worker 0 (pid {victim.proc.pid}) holding {victim.load} calls",
                              flush=True)
                if now >= next_progress:
                    last = self._progress(ctl, last, now - t_start)
                    next_progress = now + 1.0
                if i >= total and self.stopped + self.start_failed >= total - self.probes_skipped:
                    break
                if now > deadline:
                    self.errors.append(f"run did not finish within {deadline - t_start:.0f} s")
                    break
                if not all(lg.alive()):
                    self.errors.append("a load generator died")
                    break
                time.sleep(min(0.005, max(0.0, t_start + i / cfg.start_rate - now)) if i < cfg.channels
                           else 0.005 if i < total and probe_t0 is not None else 0.05)
            starters.shutdown(wait=True)
            self._io_stop.set()
            io.join(10)
            stoppers.shutdown(wait=True)
            end = self.sampler.take(self.recording, ctl.arena)
            self._progress(ctl, last, time.monotonic() - t_start, final=True)
            restarts = ctl.supervisor.restarts
            takeovers = ctl.supervisor.takeovers
            anon_workers = max(sum(s["worker_anon"]) for s in self.sampler.samples)
            anon_ctl = proc_anon(os.getpid())
            lg_pids = list(lg.pids)
        finally:
            self._io_stop.set()  # (an interrupted run: the I/O thread polls the generators' sockets)
            io_thread = next((t for t in threading.enumerate() if t.name == "stress-io"), None)
            if io_thread is not None and io_thread is not threading.current_thread():
                io_thread.join(2)
            if lg is not None:
                lg.close()
            syncer = ctl.syncer  # kept: close() drops it after its last batch
            pending_at_close = syncer.snapshot()["pending"] if syncer is not None else 0
            t_close = time.monotonic()
            ctl.close()
            close_s = time.monotonic() - t_close
            arena_mount.close()
            if sys.exc_info()[0] is not None and not cfg.keep:  # interrupted: its half-made files go too
                shutil.rmtree(run_dir, ignore_errors=True)
        if syncer is not None:
            # Recordings are final when stop() returns; the controller's syncer fsyncs them
            # behind it (`controller.durability`). close() waits for the rest.
            report["durability"] = {**syncer.snapshot(), "pending_at_close": pending_at_close,
                                    "close_s": round(close_s, 2)}
        wall = time.monotonic() - t_start
        # -- figures ---------------------------------------------------------------------------
        ok_calls = [c for c in self.calls if c.started]
        report["run"] = {
            "channels_created_s": round(create_s, 2), "wall_s": round(wall, 2),
            "started": len(ok_calls), "start_failures": self.start_failed,
            "start_rate_achieved": round(self._achieved_rate(), 1), "worker_restarts": restarts,
            "loadgen_max_lag_ms": round(self.lg_lag_ms, 1), "worker_backlog_max_ms": round(self.backlog_max),
            "ring_ms": round(ccfg.ring_samples * 1000 / RATE), "errors": self.errors,
        }
        ramp = [c for c in self.calls if not c.probe]
        at_load = [c for c in ramp if c.running_at_start >= 0.9 * cfg.channels]
        # Probes whose start() began with every ramp call recording (a failed ramp start lowers that).
        steady = [c for c in self.calls if c.probe and c.running_at_start >= cfg.channels]
        steady_stops = [c for c in steady if c.stop_steady]
        report["latency_ms"] = {
            "start": percentiles([c.start_ms for c in ramp]),
            "start_at_load": percentiles([c.start_ms for c in at_load]),
            "start_steady": percentiles([c.start_ms for c in steady]),
            "stop": percentiles([c.stop_ms for c in self.calls]),
            # The ramp's calls all end together: the end-of-run burst, thousands of stop() at once.
            "stop_burst": percentiles([c.stop_ms for c in ramp]),
            # Probes stopped at --probe-rate while every ramp call records.
            "stop_steady": percentiles([c.stop_ms for c in steady_stops]),
            "stop_hops_steady": stop_hops(steady_stops),
            # The tail itself: its hops say which hop made each of the slowest stops slow.
            "stop_steady_slowest": [{"ms": round(c.stop_ms, 1), "hops": {k: round(v, 1) for k, v in
                                                                        (c.stop_hops_ms or {}).items()}}
                                    for c in sorted(steady_stops, key=lambda c: -c.stop_ms)[:5]],
            "start_hops": start_hops(ramp),
            "start_hops_at_load": start_hops(at_load),
            "start_hops_steady": start_hops(steady),
        }
        report["probes"] = {"planned": probes, "started": sum(1 for c in self.calls if c.probe and c.started),
                            "with_all_recording": len(steady), "skipped": self.probes_skipped,
                            "stopped_with_all_recording": len(steady_stops),
                            "seconds": round(self.probe_samples / RATE, 2), "rate_per_s": cfg.probe_rate}
        report["memory"] = {
            "ring_samples": ccfg.ring_samples, "ring_bytes_per_leg": ccfg.ring_samples * 2,
            "rings_bytes_per_channel": 2 * ccfg.ring_samples * 2,
            "arena_bytes": lay.total, "arena_bytes_per_channel": round(lay.total / total),
            "arena_dir": "private tmpfs" if ccfg.arena_dir != (cfg.arena_dir or SHM_DIR) else ccfg.arena_dir,
            "arena_huge_pages": arena_huge,
            "worker_anon_bytes_per_channel": round(max(0, anon_workers - anon_workers0) / max(1, len(ok_calls))),
            "controller_anon_bytes_per_channel": round(max(0, anon_ctl - anon_ctl0) / total),
        }
        self._cpu_figures(report, base, end, lg_pids)
        self._verify(report, run_dir)
        failures = []
        if self.start_failed:
            failures.append(f"{self.start_failed} start() calls failed")
        if report["overruns"]:
            failures.append(f"{report['overruns']} samples overran the rings")
        if report["lost_samples"]:
            failures.append(f"{report['lost_samples']} samples lost")
        if report["files"]["invalid"]:
            failures.append(f"{report['files']['invalid']} invalid files")
        if report["files"]["spot_failed"]:
            failures.append(f"{report['files']['spot_failed']} files failed the content check")
        report["failover"] = {"kill_worker_at_s": cfg.kill_worker_at or None,
                              "killed": None if killed is None else {"pid": killed[0], "at_s": round(killed[1], 1),
                                                                     "calls": killed[2]},
                              "takeovers": takeovers, "lost_samples": sum(c.lost for c in self.calls)}
        if restarts > (1 if killed is not None else 0):
            failures.append(f"{restarts} worker restarts")
        if report.get("durability", {}).get("failed"):
            failures.append(f"{report['durability']['failed']} sidecars could not be fsynced")
        failures.extend(self.errors)
        report["failures"] = failures
        report["ok"] = not failures
        if not cfg.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            report["recordings_dir"] = run_dir
        return report

    # -- API threads ----------------------------------------------------------------------------

    def _start(self, call: Call) -> None:
        cfg = self.cfg
        rec = call.channel.WholeCallRecorder
        with self.lock:
            call.running_at_start = self.recording
        t = call.t_begin = time.perf_counter()
        try:
            ok = rec.start(call.name, file_format=cfg.file_format, rate=cfg.rate,
                           milliseconds_max_silence=cfg.max_silence_ms, dtmf_elim=True, recording_mode="mixed")
        except Exception as e:  # noqa: BLE001 - reported, the run goes on
            ok = False
            call.error = f"start raised {type(e).__name__}: {e}"
        call.t_end = time.perf_counter()
        call.start_ms = 1000 * (call.t_end - t)
        if ok and rec.last_start_trace is not None:
            call.hops_ms = rec.last_start_trace.hops_ms()
        with self.lock:
            if ok:
                call.started = True
                self.started += 1
                self.recording += 1
            else:
                self.start_failed += 1
                call.error = call.error or f"start() returned False (cause {rec.cause().name})"
        if ok:
            self.fed_q.put(call)
        else:
            self._close(call)

    def _stop(self, call: Call) -> None:
        rec = call.channel.WholeCallRecorder
        call.stop_steady = self.first_done is None  # no ramp call has been fed to its end yet
        t = time.perf_counter()
        try:
            ok = rec.stop()
        except Exception as e:  # noqa: BLE001
            ok = False
            call.error = f"stop raised {type(e).__name__}: {e}"
        call.stop_ms = 1000 * (time.perf_counter() - t)
        if ok and rec.last_stop_trace is not None:
            call.stop_hops_ms = rec.last_stop_trace.hops_ms()
        res = rec.last_result
        if res is not None:
            call.path, call.cause, call.error = res.path, res.cause.name, call.error or res.error
            call.lost = res.lost_samples
        if not ok:
            call.error = call.error or "stop() timed out"
        self._close(call)
        with self.lock:
            self.recording -= 1
            self.stopped += 1
            call.stopped = True

    def _close(self, call: Call) -> None:
        try:
            call.channel.close()
        except Exception as e:  # noqa: BLE001
            call.error = call.error or f"close raised {e}"

    def _io_loop(self, lg: LoadGenerators, rng: np.random.Generator, priority: int = 0) -> None:
        """Hands started calls to the load generators in cohorts; stops calls they finished feeding.

        At the workers' level (`priority`): this is the harness's own machinery, not the
        application it stands in for. It wakes every 5 ms and reads the arena's backlog every
        50 ms with the GIL held; at normal priority, preempted by the workers there, it held up
        the controller's threads in the very latencies it measures (`procenv.raise_threads`)."""
        raise_current_thread(priority, "stress I/O")
        cfg = self.cfg
        samples = round(cfg.seconds * RATE)
        cohort_id = 0
        pending: list[Call] = []
        window_end = 0.0
        next_backlog = 0.0
        while not self._io_stop.is_set():
            now = time.monotonic()
            if now >= next_backlog:
                b = worker_backlog_ms(self.arena)
                self.backlog_peak = max(self.backlog_peak, b)
                self.backlog_max = max(self.backlog_max, b)
                next_backlog = now + 0.05
            try:
                while True:
                    pending.append(self.fed_q.get_nowait())
            except queue.Empty:
                pass
            # One cohort per block: calls started within it begin feeding together, in step.
            # Probes record for less (`probe_seconds`): a cohort is all ramp calls or all probes.
            if pending and (now >= window_end or len(pending) >= 4096):
                phase = int(rng.integers(self.programs.length))
                for kind in (False, True):
                    cohort = [c for c in pending if c.probe is kind]
                    if not cohort:
                        continue
                    cohort_id += 1
                    for c in cohort:
                        c.phase = phase
                        c.fed = True
                    slots = [s for c in cohort for s in (c.channel.inbound.slot, c.channel.outbound.slot)]
                    lg.feed(cohort_id, [c.index for c in cohort], slots, [c.program for c in cohort], phase,
                            self.probe_samples if kind else samples)
                pending = []
                window_end = now + cfg.block_ms / 1000
            elif not pending:
                window_end = now + cfg.block_ms / 1000
            for gen, msg in lg.poll(5):
                if msg["t"] == "done":
                    if self.first_done is None and not all(self.calls[i].probe for i in msg["channels"]):
                        self.first_done = time.monotonic()
                        self.sampler.take(self.recording, self.arena)
                    self.lg_lag_ms = max(self.lg_lag_ms, msg["lag_ms"])
                    st, ov = msg["stored"], msg["overruns"]
                    for j, idx in enumerate(msg["channels"]):
                        call = self.calls[idx]
                        call.stored = (st[2 * j], st[2 * j + 1])
                        call.overruns = (ov[2 * j], ov[2 * j + 1])
                        self.stoppers.submit(self._stop, call)
                elif msg["t"] == "stats":
                    self.lg_stats[gen] = msg
                    self.lg_lag_ms = max(self.lg_lag_ms, msg["lag_ms"])

    # -- reporting --------------------------------------------------------------------------------

    def _progress(self, ctl, last: dict, elapsed: float, final: bool = False) -> dict:
        s = self.sampler.take(self.recording, ctl.arena, self.backlog_peak)
        self.backlog_peak = 0.0
        dt = max(1e-6, s["t"] - last["t"])
        wk = " ".join(f"{100 * (a - b) / dt:3.0f}%" for a, b in zip(s["workers"], last["workers"]))
        lgc = sum(s["loadgens"]) - sum(last["loadgens"])
        line = (f"[{elapsed:6.1f}s] recording {self.recording:6d}/{self.cfg.channels}  started {self.started}"
                f"  stopped {self.stopped}  failed {self.start_failed}  overruns {s['overruns']}"
                f"  backlog {s['backlog_ms']:.0f} ms  | CPU workers {wk}  loadgen {100 * lgc / dt:3.0f}%"
                f"  controller {100 * (s['controller'] - last['controller']) / dt:3.0f}%"
                f"  | lag {self.lg_lag_ms:.0f} ms")
        if not self.cfg.quiet:
            end = "\n" if final or not sys.stderr.isatty() else ""
            sys.stderr.write(("\r" if sys.stderr.isatty() else "") + line + end)
            sys.stderr.flush()
        return s

    def _achieved_rate(self) -> float:
        """Ramp start() calls per second from the first call to the last return, all threads together."""
        done = [c for c in self.calls if not c.probe and not math.isnan(c.t_end)]
        if len(done) < 2:
            return 0.0
        return len(done) / max(1e-6, max(c.t_end for c in done) - min(c.t_begin for c in done))

    def _cpu_figures(self, report: dict, base: dict, end: dict, lg_pids: list[int]) -> None:
        total_samples = sum(max(c.stored) for c in self.calls if c.started)
        ch_s = total_samples / RATE
        def d(key: str) -> float:
            return sum(end[key]) - sum(base[key]) if isinstance(end[key], list) else end[key] - base[key]

        def us(cpu_s: float, chs: float) -> float | None:
            return round(1e6 * cpu_s / chs, 1) if chs > 0 else None

        cpu = {
            "recorded_channel_seconds": round(ch_s, 1),
            "worker_cpu_s": round(d("workers"), 2), "loadgen_cpu_s": round(d("loadgens"), 2),
            "controller_cpu_s": round(d("controller"), 2),
            "worker_us_per_channel_second": us(d("workers"), ch_s),
            "loadgen_us_per_channel_second": us(d("loadgens"), ch_s),
            "controller_us_per_channel_second": us(d("controller"), ch_s),
        }
        # Anything else busy on the machine (other users' tests, builds) skews every figure: say so.
        busy = end["system"][0] - base["system"][0]
        span = end["system"][1] - base["system"][1]
        ours = d("workers") + d("loadgens") + d("controller")
        steal = end["system"][2] - base["system"][2]
        cpu["machine_busy_share"] = round(busy / span, 3) if span > 0 else None
        # Foreign: busy time that is neither ours nor stolen by the hypervisor (steal is busy in /proc/stat).
        cpu["foreign_cpu_share"] = round(max(0.0, busy - ours - steal) / span, 3) if span > 0 else None
        cpu["steal_share"] = round(steal / span, 3) if span > 0 else None
        # Steady state: every call recording (after the ramp, before the first call ends).
        steady = [s for s in self.sampler.samples if s["recording"] >= 0.999 * self.cfg.channels]
        if len(steady) >= 2 and steady[-1]["t"] - steady[0]["t"] >= 1.0:
            a, b = steady[0], steady[-1]
            dt = b["t"] - a["t"]
            chs = b["recording"] * dt
            cpu["steady"] = {
                "window_s": round(dt, 1),
                "worker_core_utilisation": [round((y - x) / dt, 3) for x, y in zip(a["workers"], b["workers"])],
                "worker_us_per_channel_second": us(sum(b["workers"]) - sum(a["workers"]), chs),
                "loadgen_us_per_channel_second": us(sum(b["loadgens"]) - sum(a["loadgens"]), chs),
                "controller_us_per_channel_second": us(b["controller"] - a["controller"], chs),
            }
            if a["worker_pids"] == b["worker_pids"]:
                # The kernel's share (mostly the page cache's copy of each file write): it
                # moves with the host's memory more than with our code (BENCHMARKS.md).
                cpu["steady"]["worker_kernel_us_per_channel_second"] = us(
                    sum(b["worker_kernel"]) - sum(a["worker_kernel"]), chs)
            span = b["system"][1] - a["system"][1]
            if span > 0:
                ours = sum(b["workers"]) - sum(a["workers"]) + sum(b["loadgens"]) - sum(a["loadgens"]) \
                    + b["controller"] - a["controller"]
                stolen = b["system"][2] - a["system"][2]
                cpu["steady"]["foreign_cpu_share"] = round(
                    max(0.0, b["system"][0] - a["system"][0] - ours - stolen) / span, 3)
                cpu["steady"]["steal_share"] = round(stolen / span, 3)
        report["cpu"] = cpu
        # The run over time: elapsed s, calls recording, overruns so far, worst worker backlog (ms),
        # CPU % per worker since the last sample.
        series, prev = [], None
        for s in self.sampler.samples:
            if prev is not None and s["t"] - prev["t"] >= 0.5:
                dt = s["t"] - prev["t"]
                series.append([round(s["t"] - self.t_start, 1), s["recording"], s["overruns"], round(s["backlog_ms"]),
                               [None if math.isnan(b - a) else round(100 * (b - a) / dt)  # a worker replaced
                                for a, b in zip(prev["workers"], s["workers"])]])
                prev = s
            elif prev is None:
                prev = s
        report["timeline"] = series
        if self.spy:
            us = cpu.get("steady", {}).get("worker_us_per_channel_second") or cpu["worker_us_per_channel_second"]
            cpu["stages"] = collect_profile(self.spy, us)

    def _spot_sample(self, calls: list[Call]) -> list[Call]:
        """Files for the content check: spread over the run, half of them with DTMF in the call."""
        m = self.cfg.spot_checks
        if m <= 0 or not calls:
            return []
        has = [c for c in calls if self.programs.dtmf_span(c.program, c.phase, max(c.stored)).any()]
        pick = has[:: max(1, len(has) // max(1, m // 2))][: m // 2]
        rest = [c for c in calls if c not in pick]
        pick += rest[:: max(1, len(rest) // max(1, m - len(pick)))][: m - len(pick)]
        return pick

    def _verify(self, report: dict, run_dir: str) -> None:
        cfg = self.cfg
        overruns = sum(sum(c.overruns) for c in self.calls)
        causes: dict[str, int] = {}
        jobs = []
        problems: list[str] = []
        for c in self.calls:
            if not c.started:
                continue
            causes[c.cause or "NONE"] = causes.get(c.cause or "NONE", 0) + 1
            if c.cause != "ABORTED":
                problems.append(f"{c.name}: cause {c.cause or 'NONE'} {c.error}".strip())
            if not c.path:
                continue
            jobs.append(c)
        results: list[dict] = []
        if jobs:
            ctx = multiprocessing.get_context("spawn")
            with cf.ProcessPoolExecutor(max(1, min(len(os.sched_getaffinity(0)), 4)), mp_context=ctx) as pool:
                results = list(pool.map(verify_file, [c.path for c in jobs], [max(c.stored) for c in jobs],
                                        [cfg.file_format] * len(jobs), [cfg.rate] * len(jobs), chunksize=64))
        invalid = 0
        lost = overruns
        for c, r in zip(jobs, results):
            if not r["ok"]:
                invalid += 1
                problems.append(f"{c.name}: {r['problem']}")
            short = max(c.stored) * cfg.rate // RATE - r["frames"]
            if short > FRAME:
                lost += short
        spots = []
        if cfg.rate == RATE:
            for c in self._spot_sample([c for c, r in zip(jobs, results) if r["ok"]]):
                spots.append(spot_check(c.path, self.programs, c.program, c.phase, max(c.stored), cfg.file_format))
        for s in spots:
            if s["sidecar_digits"]["unplaced"]:
                problems.append(f"{s['path']}: {s['sidecar_digits']['unplaced']} digits of its sidecar have no offset")
            elif not s["ok"]:
                problems.append(f"{s['path']}: content SNR {s['snr_db']} dB under {s['floor_db']} dB")
        report["overruns"] = int(overruns)
        report["lost_samples"] = int(lost)
        report["files"] = {
            "expected": sum(1 for c in self.calls if c.started), "verified": len(results) - invalid,
            "invalid": invalid + sum(1 for c in self.calls if c.started and not c.path), "causes": causes,
            "spot_checks": spots, "spot_failed": sum(1 for s in spots if not s["ok"]),
            "problems": problems[:20],
        }


# -- baseline: one sox / ffmpeg / GStreamer process per call ---------------------------------------------

#: The program each baseline tool runs as (Debian packages: sox, ffmpeg, gstreamer1.0-tools with
#: gstreamer1.0-plugins-base for audiomixer/rawaudioparse and -good for alawenc/wavenc).
BASELINE_EXE = {"sox": "sox", "ffmpeg": "ffmpeg", "gstreamer": "gst-launch-1.0"}


def baseline_command(tool: str, fd_in: int, fd_out: int, path: str) -> list[str]:
    """How a user mixes a call's two legs to an A-law WAV without wholecall (inputs: raw s16 8 kHz pipes)."""
    if tool == "sox":
        raw = ["-t", "raw", "-r", "8000", "-e", "signed-integer", "-b", "16", "-c", "1"]
        return ["sox", "-V1", "-m", "-v", "1", *raw, f"/dev/fd/{fd_in}", "-v", "1", *raw, f"/dev/fd/{fd_out}",
                "-t", "wav", "-e", "a-law", "-b", "8", path]
    if tool == "ffmpeg":
        pcm = ["-f", "s16le", "-ar", "8000", "-ac", "1"]
        return ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", *pcm, "-i", f"pipe:{fd_in}", *pcm,
                "-i", f"pipe:{fd_out}", "-filter_complex", "amix=inputs=2:duration=longest:normalize=0",
                "-c:a", "pcm_alaw", "-ar", "8000", "-ac", "1", path]
    if tool == "gstreamer":
        raw = ["rawaudioparse", "use-sink-caps=false", "format=pcm", "pcm-format=s16le", "sample-rate=8000",
               "num-channels=1"]
        return ["gst-launch-1.0", "-q", "audiomixer", "name=mix", "!", "audio/x-raw,format=S16LE,rate=8000,channels=1",
                "!", "alawenc", "!", "wavenc", "!", "filesink", f"location={path}",
                "fdsrc", f"fd={fd_in}", "!", *raw, "!", "mix.", "fdsrc", f"fd={fd_out}", "!", *raw, "!", "mix."]
    raise ValueError(f"no baseline for tool {tool!r} (use {', '.join(BASELINE_EXE)})")


def run_baseline(tool: str, calls: int, seconds: float, programs: Programs, out: str, quiet: bool = False) -> dict:
    """`calls` processes of `tool`, each fed both legs through pipes in 20 ms frames at real time.

    CPU is the children's rusage (user + system) over the phase: process start-up,
    reading, mixing, encoding and writing; the feeding (this process) is not counted,
    just as the load generators are not counted in wholecall's worker figure.
    """
    exe = BASELINE_EXE.get(tool, tool)
    if not shutil.which(exe):
        return {"tool": tool, "skipped": f"{exe} not installed"}
    d = tempfile.mkdtemp(prefix=f"baseline-{tool}-", dir=out)
    rng = np.random.default_rng(99)
    samples = int(seconds * RATE)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    procs, writers, audio = [], [], []
    try:
        for k in range(calls):
            legs = programs.span(k % programs.count, int(rng.integers(programs.length)), samples)
            r_in, w_in = os.pipe()
            r_out, w_out = os.pipe()
            path = os.path.join(d, f"call-{k:05d}.wav")
            procs.append((subprocess.Popen(baseline_command(tool, r_in, r_out, path), pass_fds=(r_in, r_out),
                                           stdin=subprocess.DEVNULL), path))
            os.close(r_in)
            os.close(r_out)
            writers.append((w_in, w_out))
            audio.append((legs[0].tobytes(), legs[1].tobytes()))
        t0 = time.monotonic()
        frame_b = FRAME * 2
        nframes = samples // FRAME
        for j in range(nframes):
            due = t0 + (j + 1) * FRAME / RATE
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            a, b = j * frame_b, (j + 1) * frame_b
            for (w_in, w_out), (x_in, x_out) in zip(writers, audio):
                os.write(w_in, x_in[a:b])
                os.write(w_out, x_out[a:b])
            if not quiet and j % 50 == 0:
                sys.stderr.write(f"\rbaseline {tool}: {calls} calls, {j * FRAME / RATE:5.1f}/{seconds:g} s")
                sys.stderr.flush()
    finally:
        for w_in, w_out in writers:
            os.close(w_in)
            os.close(w_out)
        codes = [p.wait() for p, _ in procs]
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if not quiet:
        sys.stderr.write("\n")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    frames_ok = 0
    import soundfile as sf

    for _, path in procs:
        try:
            frames_ok += abs(sf.info(path).frames - samples) <= FRAME
        except Exception as e:  # noqa: BLE001 - an unreadable file is simply not ok
            log.warning("baseline %s: %s unreadable: %s", tool, path, e)
    shutil.rmtree(d, ignore_errors=True)
    ch_s = calls * nframes * FRAME / RATE
    return {"tool": tool, "calls": calls, "seconds": seconds, "cpu_s": round(cpu, 2),
            "us_per_channel_second": round(1e6 * cpu / ch_s, 1), "exit_failures": sum(1 for c in codes if c),
            "files_ok": frames_ok}


# -- py-spy stage split --------------------------------------------------------------------------------

#: (file name, function name or "*") -> stage, tried for the innermost frame of ours in a sample.
STAGES = [
    (("dtmf.py", "_take_in"), "ring read + DTMF prescreen"),
    (("dtmf.py", "*"), "dtmf"),
    (("silence.py", "*"), "silence"),
    (("resample.py", "*"), "resample"),
    (("g711.py", "*"), "encode"), (("ima.py", "*"), "encode"), (("oki.py", "*"), "encode"),
    (("pcm.py", "*"), "encode"), (("base.py", "*"), "encode"),
    (("sink.py", "__init__"), "file create"),
    (("sink.py", "*"), "file write"), (("cryptofile.py", "*"), "file write"), (("crypto.py", "*"), "file write"),
    (("wavfile.py", "*"), "wav writer"),
    (("pipeline.py", "tick"), "tick bookkeeping"),
    (("pipeline.py", "_alloc"), "job start/stop"),
    (("pipeline.py", "_step"), "tick bookkeeping"),
    (("pipeline.py", "_tick"), "tick bookkeeping"),
    (("pipeline.py", "_emit"), "mix + staging"),
    (("pipeline.py", "_flush_codes"), "encode"), (("pipeline.py", "_room"), "flush/finalise"),
    (("pipeline.py", "_flush_and_end"), "flush/finalise"), (("pipeline.py", "_flush"), "flush/finalise"),
    (("pipeline.py", "_finish"), "flush/finalise"), (("pipeline.py", "_append_delayed"), "flush/finalise"),
    (("pipeline.py", "fail_all"), "flush/finalise"), (("pipeline.py", "close"), "flush/finalise"),
    (("pipeline.py", "start"), "job start/stop"), (("pipeline.py", "_release"), "job start/stop"),
    (("pipeline.py", "stop"), "job start/stop"),
    (("main.py", "*"), "control loop (zmq, msgpack)"), (("messages.py", "*"), "control loop (zmq, msgpack)"),
    (("sockets.py", "*"), "control loop (zmq, msgpack)"),
]


def classify_stack(stack: str) -> str:
    """The stage a sampled worker stack belongs to: the innermost frame in worker/ or protocol/ decides."""
    frames = stack.split(";")
    for fr in reversed(frames):
        if "(" not in fr:
            continue
        func, loc = fr.rsplit(" (", 1)
        path = loc.split(":", 1)[0]
        if "/worker/" not in path and "/protocol/" not in path and not path.startswith(("worker/", "protocol/")):
            continue
        base = os.path.basename(path)
        for (fname, fn), stage in STAGES:
            if base == fname and (fn == "*" or func.strip() == fn or func.strip().endswith("." + fn)):
                return stage
        return f"other ({base}:{func.strip()})"
    return "other (outside worker code)"


def start_profiler(pids: list[int], seconds: float, out: str) -> list[tuple[subprocess.Popen, str]]:
    """py-spy record on each worker for `seconds` (raw collapsed stacks); [] if py-spy is missing."""
    exe = shutil.which("py-spy")
    if not exe:
        log.warning("--profile: py-spy is not installed (pip install py-spy); no per-stage split")
        return []
    runs = []
    for pid in pids:
        path = os.path.join(out, f"pyspy-{pid}.txt")
        cmd = [exe, "record", "--pid", str(pid), "--rate", "97", "--format", "raw", "--output", path,
               "--duration", str(max(1, int(seconds))), "--nonblocking"]
        runs.append((subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), path))
    return runs


def collect_profile(runs: list[tuple[subprocess.Popen, str]], us_per_channel_second: float | None) -> dict:
    """Per-stage share of the sampled worker stacks, and the µs per channel-second that share is."""
    counts: dict[str, int] = {}
    for p, path in runs:
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        try:
            with open(path) as f:
                for line in f:
                    stack, _, n = line.rstrip("\n").rpartition(" ")
                    if stack and n.isdigit():
                        stage = classify_stack(stack)
                        counts[stage] = counts.get(stage, 0) + int(n)
        except OSError:
            pass
    total = sum(counts.values())
    if not total:
        return {}
    out = {}
    for stage, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        share = n / total
        out[stage] = {"share": round(share, 3),
                      "us_per_channel_second": round(share * us_per_channel_second, 1) if us_per_channel_second else None}
    return out


# -- the command ---------------------------------------------------------------------------------------


def run_stress(cfg: StressConfig) -> dict:
    """One run at `cfg.channels`; the report dict (see the module docstring)."""
    os.makedirs(cfg.out, exist_ok=True)
    spread = spread_subdirectories(cfg.out)  # each run's recordings away from the blocks the last run freed
    with GcPauses() as gcp:
        report = Run(cfg).execute()
    report["out_topdir"] = spread
    report["controller_gc"] = gcp.summary()
    return report


def summary(report: dict) -> str:
    """A few human lines from a report."""
    cpu = report.get("cpu", {})
    st = cpu.get("steady", {})
    lat = report.get("latency_ms", {})
    f = report.get("files", {})
    lines = [
        (f"channels {report['config']['channels']} x {report['config']['seconds']:g} s, format "
         f"{report['config']['file_format']}: {'OK' if report.get('ok') else 'FAILED'}"),
        (f"  worker CPU {cpu.get('worker_us_per_channel_second')} us per channel-second overall, "
         f"{st.get('worker_us_per_channel_second')} steady (cores {st.get('worker_core_utilisation')}, "
         f"kernel {st.get('worker_kernel_us_per_channel_second')}); "
         f"loadgen {cpu.get('loadgen_us_per_channel_second')}, controller+harness {cpu.get('controller_us_per_channel_second')}"),
        (f"  failover: worker killed at {report['failover']['killed']['at_s']} s holding "
         f"{report['failover']['killed']['calls']} calls, {report['failover']['takeovers']} taken over, "
         f"{report['failover']['lost_samples']} samples lost to ring overruns before takeover\n"
         if report.get("failover", {}).get("killed") else "") +
        (f"  overruns {report.get('overruns')}, lost samples {report.get('lost_samples')}, files verified "
         f"{f.get('verified')}/{f.get('expected')}, causes {f.get('causes')}"),
        _spot_line(f.get("spot_checks") or []),
        (f"  start ms during the ramp p50 {lat.get('start', {}).get('p50')} p99 {lat.get('start', {}).get('p99')} "
         f"(its last tenth p50 {lat.get('start_at_load', {}).get('p50')} p99 {lat.get('start_at_load', {}).get('p99')}), "
         f"ramp rate {report.get('run', {}).get('start_rate_achieved')}/s; stop ms in the end-of-run burst p50 "
         f"{lat.get('stop_burst', {}).get('p50')} p99 {lat.get('stop_burst', {}).get('p99')}"),
        (f"  with all {report['config']['channels']} recording, probes at {report.get('probes', {}).get('rate_per_s')}/s: "
         f"start ms ({report.get('probes', {}).get('with_all_recording')}) p50 {lat.get('start_steady', {}).get('p50')} "
         f"p99 {lat.get('start_steady', {}).get('p99')}; stop ms ({report.get('probes', {}).get('stopped_with_all_recording')}) "
         f"p50 {lat.get('stop_steady', {}).get('p50')} p99 {lat.get('stop_steady', {}).get('p99')}"),
    ]
    for name, key, what in (("the ramp's last tenth", "start_hops_at_load", "start"),
                            ("probes", "start_hops_steady", "start"), ("probes", "stop_hops_steady", "stop")):
        if lat.get(key):
            lines.append(f"  {what} per hop, {name}, ms p50/p99: " + ", ".join(
                f"{hop} {v.get('p50')}/{v.get('p99')}" for hop, v in lat[key].items()))
    lines += [
        (f"  memory per channel: rings {report.get('memory', {}).get('rings_bytes_per_channel')} B, worker "
         f"{report.get('memory', {}).get('worker_anon_bytes_per_channel')} B, controller "
         f"{report.get('memory', {}).get('controller_anon_bytes_per_channel')} B; arena in "
         f"{report.get('memory', {}).get('arena_dir')}, "
         f"{'2 MiB' if report.get('memory', {}).get('arena_huge_pages') else '4 KiB'} pages"),
    ]
    if report.get("durability"):
        d = report["durability"]
        lines.append(f"  durability behind stop(): {d['synced']} sidecars fsynced, {d['failed']} failed, longest wait "
                     f"{d['max_lag_s']} s; {d['pending_at_close']} left at close(), which took {d['close_s']} s")
    if report.get("controller_gc"):
        lines.append("  controller process GC pauses: " + ", ".join(
            f"{g} {v['collections']} x, max {v['max_ms']} ms ({v.get('max_cpu_ms')} on CPU)"
            for g, v in report["controller_gc"].items()
            if g != "census"))
    for stage, v in cpu.get("stages", {}).items():
        lines.append(f"    {stage:34s} {100 * v['share']:5.1f} %  {v['us_per_channel_second']} us/ch-s")
    for b in report.get("baseline", []):
        if "skipped" in b:
            lines.append(f"  baseline {b['tool']}: skipped ({b['skipped']})")
        else:
            lines.append(f"  baseline {b['tool']}: {b['us_per_channel_second']} us per channel-second "
                         f"({b['calls']} calls x {b['seconds']:g} s), {b.get('ratio_to_wholecall_workers')}x wholecall's workers")
    foreign = max(cpu.get("foreign_cpu_share") or 0, st.get("foreign_cpu_share") or 0)
    if foreign > 0.05:
        lines.append(f"  WARNING: other processes used {100 * foreign:.0f} % of the machine's CPU during the run; "
                     "figures are skewed")
    steal = max(cpu.get("steal_share") or 0, st.get("steal_share") or 0)
    if steal > 0.02:
        lines.append(f"  WARNING: the hypervisor took {100 * steal:.0f} % of the machine's CPU (steal time) during "
                     "the run; figures are skewed")
    for fail in report.get("failures", []):
        lines.append(f"  FAILURE: {fail}")
    return "\n".join(lines)


def _sustainable(rep: dict) -> bool:
    util = rep.get("cpu", {}).get("steady", {}).get("worker_core_utilisation")
    return bool(rep.get("ok")) and util is not None and max(util) < CPU_LIMIT


def find_max(cfg: StressConfig, levels: list[int], refine: int = 2) -> dict:
    """Short runs at growing channel counts; the largest with zero loss and every worker < 90 % busy.

    After the first failing level, `refine` bisection steps (rounded to 250 channels)
    narrow the gap between the last good and the first bad count. A level whose calls
    would end before its ramp does is lengthened to ramp + 10 s.
    """
    runs = []
    best, worst = 0, None

    def attempt(n: int) -> bool:
        # Every call must outlive the ramp by 10 s, or there is no steady state to judge.
        secs = max(cfg.seconds, math.ceil(n / cfg.start_rate) + 10)
        c = StressConfig(**{**asdict(cfg), "channels": n, "seconds": secs, "profile": False})
        rep = run_stress(c)
        good = _sustainable(rep)
        if not cfg.quiet:
            print(summary(rep), flush=True)
        runs.append({"channels": n, "sustainable": good, "report": rep})
        return good

    for n in levels:
        if not attempt(n):
            worst = n
            break
        best = n
    for _ in range(refine if worst is not None else 0):
        mid = (best + worst) // 2 // 250 * 250
        if mid <= best or mid >= worst:
            break
        if attempt(mid):
            best = mid
        else:
            worst = mid
    return {"command": "wholecall stress --find-max", "max_channels": best, "first_unsustainable": worst,
            "cpu_limit": CPU_LIMIT, "levels": runs}


def build_parser() -> argparse.ArgumentParser:
    d = StressConfig()
    p = argparse.ArgumentParser(prog="wholecall stress", description=(
        "Record many channels at real time (mixed, dtmf_elim, max silence set) with load generators in other "
        "processes; report CPU per channel-second, losses, latency, memory; verify every file."))
    p.add_argument("--channels", type=int, default=d.channels, help="concurrent calls (default %(default)s)")
    p.add_argument("--seconds", type=float, default=d.seconds, help="audio fed to each call (default %(default)s)")
    p.add_argument("--workers", type=int, default=d.workers, help="worker processes (0 = one per CPU)")
    p.add_argument("--loadgens", type=int, default=d.loadgens, help="load generator processes (default %(default)s)")
    p.add_argument("--format", dest="file_format", default=d.file_format, help="file_format (default %(default)s)")
    p.add_argument("--max-silence-ms", type=int, default=d.max_silence_ms,
                   help="milliseconds_max_silence of every recording (default %(default)s)")
    p.add_argument("--ring-ms", type=int, default=d.ring_ms, help="ring per leg, ms (default %(default)s)")
    p.add_argument("--start-rate", type=float, default=d.start_rate, help="start() calls per second (default %(default)s)")
    p.add_argument("--threads", type=int, default=d.threads, help="API threads calling start() (default %(default)s)")
    p.add_argument("--block-ms", type=float, default=d.block_ms, help="audio per producer write (default %(default)s)")
    p.add_argument("--tick-ms", type=float, default=0.0, help="worker tick, ms (default: the Controller's)")
    p.add_argument("--arena-dir", default="",
                   help="tmpfs for the ring arena (default: a private one with 2 MiB pages when root, else "
                        "/dev/shm; /dev/shm measures 4 KiB pages)")
    p.add_argument("--scale-jobs", type=int, default=0,
                   help="jobs per worker from which workers tick every 100 ms in blocks (default: the Controller's)")
    p.add_argument("--probes", type=int, default=d.probes,
                   help="calls started after the ramp, with all --channels recording (default: channels/50, 10..200)")
    p.add_argument("--probe-rate", type=float, default=d.probe_rate,
                   help="their start() and stop() rate (default %(default)s/s)")
    p.add_argument("--probe-seconds", type=float, default=d.probe_seconds,
                   help="audio fed to each probe (default: the last probe is stopped before the first ramp call ends)")
    p.add_argument("--kill-worker-at", type=float, default=0.0, metavar="SECONDS",
                   help="SIGKILL worker 0 SECONDS into the run: its calls must be taken over without loss")
    p.add_argument("--app-priority", type=int, default=0, metavar="N",
                   help="run this process (the application: API threads, controller) at nice -N; -1: the "
                        "workers' level; default 0: leave it")
    p.add_argument("--gc-freeze-s", type=float, default=d.gc_freeze_s, metavar="SECONDS",
                   help="the controller freezes the surviving heap every SECONDS (Config.gc_freeze_s): full "
                        "collections then walk only what came since (default %(default)s; 0: off)")
    p.add_argument("--refine", type=int, default=2, help="bisection steps after --find-max's first failure")
    p.add_argument("--out", default=d.out, help="output directory (default %(default)s)")
    p.add_argument("--report", default=None, help="JSON report path (default OUT/stress-report.json)")
    p.add_argument("--keep", action="store_true", help="keep the recordings (default: removed once verified)")
    p.add_argument("--profile", action="store_true", help="sample the workers with py-spy: CPU split per stage")
    p.add_argument("--spot-checks", type=int, default=d.spot_checks, help="files compared with the exact mix")
    p.add_argument("--find-max", action="store_true", help="ramp the channel count to the largest sustainable")
    p.add_argument("--levels", type=int, nargs="+", default=FIND_MAX_LEVELS, help="channel counts for --find-max")
    p.add_argument("--baseline", type=int, nargs="?", const=100, default=0, metavar="CALLS",
                   help="also record CALLS calls with one sox, ffmpeg and GStreamer process per call (default 100)")
    p.add_argument("--baseline-seconds", type=float, default=None, help="length of baseline calls (default --seconds, max 60)")
    p.add_argument("--baseline-tools", default="sox,ffmpeg,gstreamer", help="comma-separated (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    return p


def argument_problem(a: argparse.Namespace) -> str:
    """What is wrong with the command line, named, before anything starts ("" if nothing):
    a run refused at its end (an unwritable report) or failing every start (an unknown
    format) wastes the minutes it took."""
    from wholecall.formats.codecs import FORMATS

    for name, value in (("--channels", a.channels), ("--seconds", a.seconds), ("--start-rate", a.start_rate),
                        ("--probe-rate", a.probe_rate), ("--threads", a.threads), ("--loadgens", a.loadgens)):
        if not value > 0:
            return f"{name} must be positive, got {value}"
    if a.workers < 0:
        return f"--workers must be 0 (one per CPU) or more, got {a.workers}"
    if a.max_silence_ms < 0:
        return f"--max-silence-ms must be 0 (off) or more, got {a.max_silence_ms}"
    if a.file_format not in FORMATS:
        return f"--format must be one of {', '.join(FORMATS)}, got {a.file_format!r}"
    if a.find_max and min(a.levels) < 1:
        return f"--levels must all be positive, got {min(a.levels)}"
    if a.report and not os.path.isdir(os.path.dirname(os.path.abspath(a.report))):
        return f"--report {a.report}: its directory does not exist"
    return ""


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    problem = argument_problem(a)
    if problem:
        print(f"wholecall stress: {problem}", file=sys.stderr)
        return 2
    cfg = StressConfig(channels=a.channels, seconds=a.seconds, workers=a.workers, loadgens=a.loadgens,
                       file_format=a.file_format, max_silence_ms=a.max_silence_ms, ring_ms=a.ring_ms,
                       start_rate=a.start_rate, threads=a.threads, block_ms=a.block_ms, out=a.out, keep=a.keep,
                       profile=a.profile, spot_checks=a.spot_checks, quiet=a.quiet, tick_ms=a.tick_ms,
                       scale_jobs=a.scale_jobs, arena_dir=a.arena_dir, probes=a.probes, probe_rate=a.probe_rate,
                       probe_seconds=a.probe_seconds,
                       kill_worker_at=a.kill_worker_at, app_priority=a.app_priority, gc_freeze_s=a.gc_freeze_s)
    os.makedirs(cfg.out, exist_ok=True)
    report_path = a.report or os.path.join(cfg.out, "stress-report.json")
    try:
        return _run(a, cfg, report_path)
    except KeyboardInterrupt:
        print("wholecall stress: interrupted (SIGINT): stopped, nothing reported", file=sys.stderr)
        return 130
    except SystemExit as e:  # SIGTERM (`cli.main`)
        print(f"wholecall stress: terminated: stopped, nothing reported (exit {e.code})", file=sys.stderr)
        return int(e.code) if isinstance(e.code, int) else 1


def _run(a: argparse.Namespace, cfg: StressConfig, report_path: str) -> int:
    if a.find_max:
        report = find_max(cfg, sorted(a.levels), a.refine)
        ok = report["max_channels"] > 0
        text = f"largest sustainable channel count: {report['max_channels']}"
    else:
        try:
            report = run_stress(cfg)
        except (RuntimeError, TimeoutError) as e:
            print(f"wholecall stress: {e}", file=sys.stderr)
            return 2
        if a.baseline:
            secs = a.baseline_seconds or min(cfg.seconds, 60.0)
            ours = report["cpu"].get("steady", {}).get("worker_us_per_channel_second") \
                or report["cpu"]["worker_us_per_channel_second"]
            cpu = report["cpu"]
            total = (cpu["worker_us_per_channel_second"] or 0) + (cpu["controller_us_per_channel_second"] or 0)
            progs, _ = load_programs(count=cfg.programs)
            report["baseline"] = []
            for tool in [t.strip() for t in a.baseline_tools.split(",") if t.strip()]:
                b = run_baseline(tool, min(a.baseline, 1000), secs, progs, cfg.out, cfg.quiet)
                if "us_per_channel_second" in b and ours:
                    b["ratio_to_wholecall_workers"] = round(b["us_per_channel_second"] / ours, 1)
                    b["ratio_to_wholecall_workers_and_controller"] = round(b["us_per_channel_second"] / total, 1)
                report["baseline"].append(b)
        ok = bool(report["ok"])
        text = summary(report)
    # Written aside and renamed: two runs sharing an --out leave one whole report, never a mix.
    part = f"{report_path}.{os.getpid()}.part"
    with open(part, "w") as f:
        json.dump(report, f, indent=2, default=str)
    os.replace(part, report_path)
    print(text)
    print(f"report: {report_path}")
    return 0 if ok else 1
