"""`wholecall stress --churn`: the soak. Calls come and go for a long time; nothing may pile up.

A recorder in production never sees the clean ramp-then-stop of `wholecall stress`: calls
start and end all day, and whatever one call leaves behind (a descriptor, a ring slot, a
thread, a few kilobytes in a dict) adds up until the service falls over at 3 a.m. This
run keeps `--channels` calls recording at all times for `--seconds`: every call records
a random length (`--call-seconds MIN MAX`, drawn per cohort of calls that started
together), ends by `stop()` or by hang-up (alternating cohorts, so both clean-up paths
run), its channel is closed, its file is checked and removed, and a new call takes its
place. Every `--sample-s` it records, for the controller (this process), each worker and
each load generator: anonymous memory, open descriptors, threads; and the arena's ring
slots in use.

It passes when nothing was lost (no ring overrun, no lost sample, every file decodes to
the length its legs received, the spot checks match the exact mix), every call ended
with the cause it was given (ABORTED for stop, HANGUP for hang-up), and the resources
are flat: over the steady part of the run (after the first calls have been replaced)
the second half's peak of each figure is within a small allowance of the first half's
peak (a leak grows, so its second half is higher), and once every call has ended no
ring slot is in use and the controller holds no more descriptors than before the first
call. The harness keeps no per-call state after a call is checked, so its own memory,
which is the controller's process, stays flat when the recorder's does.

Resident memory is the figure operators see, but the allocator's (pymalloc arenas,
glibc heaps) keeps a high-water mark that garbage bursts push up and fragmentation keeps
there, so it also moves when nothing leaks. Two figures that only objects move are
judged as well: the objects the controller process holds (`gc.get_objects()`, the same
half-peaks rule), and the objects the cyclic collector had to free per call. The second
is how the soak first showed a real fault: each call was a reference cycle, ~44 objects
freed only by rare full collections, and the megabytes of dead calls between them
ratcheted resident memory up (about 9 MiB over 30 min at 1,000 channels). A finished
call must be freed by reference counting alone.
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
import queue
import shutil
import sys
import threading
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from wholecall.controller.config import Config
from wholecall.formats.codecs import CALL_RATE as RATE
from wholecall.formats.codecs import FRAME
from wholecall.shm.arena import SHM_DIR
from wholecall.shm.layout import Layout

from .arena_mount import private_arena_dir
from .loadgen import LoadGenerators, Programs, load_programs
from .stress import machine, proc_anon, proc_cpu, raise_nofile, spot_check, system_cpu, verify_file

log = logging.getLogger("wholecall.churn")

#: Allowed growth of a figure from the first half's peak to the second half's: memory
#: (the larger of the two), descriptors, threads. Allocator noise stays well inside.
MEMORY_SLACK = (8 << 20, 0.05)
FD_SLACK = 8
THREAD_SLACK = 4
#: Objects (gc-tracked) the controller process may gain from the first half's peak to the
#: second's: calls in flight vary by a few dozen (~50 objects each) and the samples list grows.
OBJECT_SLACK = (5000, 0.02)
#: Objects the cyclic collector may free per finished call, on average over the steady part:
#: a call that forms a reference cycle leaves dozens (see the module's docstring).
CYCLE_GARBAGE_PER_CALL = 1.0


@dataclass
class ChurnConfig:
    """One soak (see `--help` for each field's meaning)."""

    channels: int = 1000
    seconds: float = 1800.0
    call_min_s: float = 5.0
    call_max_s: float = 30.0
    workers: int = 0
    loadgens: int = 1
    file_format: str = "alaw"
    max_silence_ms: int = 5000
    start_rate: float = 200.0
    threads: int = 32
    block_ms: float = 100.0
    sample_s: float = 10.0
    spot_every: int = 500  # one content check per this many calls
    out: str = "wholecall-churn"
    keep: bool = False
    quiet: bool = False
    programs: int = 16


@dataclass
class _Call:
    index: int
    channel: object
    program: int
    path: str = ""
    hang_up: bool = False
    phase: int = 0
    stored: int = 0


@dataclass
class _Tally:
    """Everything the run remembers about finished calls: counts, never lists that grow."""

    started: int = 0
    start_failed: int = 0
    ended: int = 0
    causes: dict = field(default_factory=dict)
    wrong_cause: int = 0
    overruns: int = 0
    lost_samples: int = 0
    verified: int = 0
    invalid: int = 0
    short_samples: int = 0
    spot_checked: int = 0
    spot_failed: int = 0
    samples_recorded: int = 0
    problems: list = field(default_factory=list)

    def problem(self, text: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(text)


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def threads_of(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


# The verification pool's copy of the programs (loaded once per pool process).
_PROGRAMS: Programs | None = None


def _pool_init(programs_path: str) -> None:
    global _PROGRAMS
    _PROGRAMS = Programs.load(programs_path)


def _check(path: str, expected: int, file_format: str, spot: tuple[int, int] | None, keep: bool) -> dict:
    """Pool side: decode and length-check one file, optionally compare it with the exact mix, then remove it."""
    r = verify_file(path, expected, file_format, RATE)
    if r["ok"] and spot is not None and _PROGRAMS is not None:
        r["spot"] = spot_check(path, _PROGRAMS, spot[0], spot[1], expected, file_format)
    if not keep:
        with contextlib.suppress(OSError):
            os.unlink(path)
    return r


class Soak:
    """Drives one churn run; `execute()` returns the report."""

    def __init__(self, cfg: ChurnConfig) -> None:
        self.cfg = cfg
        self.lock = threading.Lock()
        self.tally = _Tally()
        self.live: dict[int, _Call] = {}  # calls between channel creation and their check
        self.starting = 0
        self.fed_q: queue.Queue[_Call] = queue.Queue()
        self._io_stop = threading.Event()
        self.lg_lag_ms = 0.0
        self.samples: list[dict] = []
        self.cycle_garbage = 0  # objects the cyclic collector freed in this process during the run

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "stop":
            self.cycle_garbage += info["collected"]

    # -- the run ------------------------------------------------------------------------------

    def execute(self) -> dict:
        from wholecall.controller import Controller

        cfg = self.cfg
        self.rng = np.random.default_rng(2026)
        progs, progs_path = load_programs(count=cfg.programs)
        self.programs = progs
        run_dir = os.path.join(cfg.out, f"churn-{cfg.channels}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        # A replacement call is created only after its predecessor's channel is closed,
        # but stops, checks and starts overlap: room for the calls in flight.
        total = cfg.channels + max(16, cfg.channels // 10)
        settings = {"workers": cfg.workers, "recordings_dir": run_dir, "max_channels": total}
        ccfg = Config(**settings)
        lay = Layout(2 * total, ccfg.ring_samples)
        nofile = raise_nofile()
        report: dict = {"command": "wholecall stress --churn", "config": asdict(cfg), "machine": machine(),
                        "rlimit_nofile": nofile[0]}
        arena_mount = contextlib.ExitStack()
        settings["arena_dir"] = arena_mount.enter_context(private_arena_dir(lay.total)) or SHM_DIR
        try:
            ctl = Controller(**settings)
        except BaseException:
            arena_mount.close()
            raise
        lg = None
        pool = cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                      initializer=_pool_init, initargs=(progs_path,))
        self.pool = pool
        gc.callbacks.append(self._on_gc)
        try:
            ctl.start()
            self.ctl = ctl
            self.arena = ctl.arena
            lg = LoadGenerators(cfg.loadgens, ctl.arena.path, progs_path, cfg.block_ms, priority=ccfg.worker_priority)
            self.lg = lg
            self.starters = cf.ThreadPoolExecutor(cfg.threads, thread_name_prefix="churn-start")
            self.stoppers = cf.ThreadPoolExecutor(max(4, cfg.threads // 4), thread_name_prefix="churn-stop")
            io = threading.Thread(target=self._io_loop, name="churn-io", daemon=True)
            io.start()
            # Every helper thread and the pool's process exist before the baseline sample,
            # so the harness's own start-up does not read as growth.
            pool.submit(int, 0).result()
            for ex, n in ((self.starters, cfg.threads), (self.stoppers, max(4, cfg.threads // 4))):
                list(ex.map(time.sleep, [0.05] * n))
            time.sleep(0.5)
            base = self._sample(0.0)
            t0 = self.t0 = time.monotonic()
            deadline = t0 + cfg.seconds
            next_sample = t0 + cfg.sample_s
            budget = 0.0
            last = t0
            index = 0
            while True:
                now = time.monotonic()
                budget = min(budget + (now - last) * cfg.start_rate, cfg.start_rate)
                last = now
                with self.lock:
                    want = cfg.channels - len(self.live) if now < deadline else 0
                while want > 0 and budget >= 1:
                    self._begin(index)
                    index += 1
                    want -= 1
                    budget -= 1
                if now >= next_sample:
                    s = self._sample(now - t0)
                    next_sample += cfg.sample_s
                    if not cfg.quiet:
                        self._progress(s)
                with self.lock:
                    idle = not self.live
                if now >= deadline and idle:
                    break
                if now > deadline + cfg.call_max_s + 120:
                    self.tally.problem(f"{len(self.live)} calls still running {now - deadline:.0f} s after the end")
                    break
                if not all(lg.alive()):
                    self.tally.problem("a load generator died")
                    break
                time.sleep(0.01)
            self.starters.shutdown(wait=True)
            self.stoppers.shutdown(wait=True)
            self._io_stop.set()
            io.join(10)
            pool.shutdown(wait=True)
            time.sleep(0.5)  # closed channels' last messages
            end = self._sample(time.monotonic() - t0)
            restarts = ctl.supervisor.restarts
            wall = time.monotonic() - t0
            workers_cpu = sum(s for s in end["workers_cpu"]) - sum(base["workers_cpu"])
        finally:
            gc.callbacks.remove(self._on_gc)
            if lg is not None:
                lg.close()
            pool.shutdown(wait=True, cancel_futures=True)
            ctl.close()
            arena_mount.close()
        t = self.tally
        report["run"] = {"wall_s": round(wall, 1), "calls": t.started, "start_failures": t.start_failed,
                         "ended": t.ended, "causes": t.causes, "wrong_cause": t.wrong_cause,
                         "worker_restarts": restarts, "loadgen_max_lag_ms": round(self.lg_lag_ms, 1),
                         "channel_seconds": round(t.samples_recorded / RATE),
                         "worker_us_per_channel_second": round(1e6 * workers_cpu / max(1.0, t.samples_recorded / RATE), 1)}
        report["loss"] = {"overruns": t.overruns, "lost_samples": t.lost_samples, "short_samples": t.short_samples}
        report["files"] = {"verified": t.verified, "invalid": t.invalid, "spot_checked": t.spot_checked,
                           "spot_failed": t.spot_failed}
        report["resources"] = self._flatness(base, end)
        report["samples"] = self.samples
        failures = []
        if t.start_failed:
            failures.append(f"{t.start_failed} start() calls failed")
        if t.wrong_cause:
            failures.append(f"{t.wrong_cause} calls ended with another cause than the one they were given")
        if t.overruns or t.lost_samples or t.short_samples:
            failures.append(f"audio lost: {t.overruns} overrun, {t.lost_samples} lost in takeovers, "
                            f"{t.short_samples} missing from files")
        if t.invalid or t.spot_failed:
            failures.append(f"{t.invalid} invalid files, {t.spot_failed} failed the content check")
        if t.verified + t.invalid != t.ended:
            failures.append(f"{t.ended} calls ended but {t.verified + t.invalid} files were checked")
        if restarts:
            failures.append(f"{restarts} worker restarts")
        failures.extend(report["resources"]["failures"])
        failures.extend(t.problems)
        report["failures"] = failures
        report["ok"] = not failures
        if not cfg.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            report["recordings_dir"] = run_dir
        return report

    # -- calls --------------------------------------------------------------------------------

    def _begin(self, index: int) -> None:
        ch = self.ctl.incoming_call()
        ch.answer()
        call = _Call(index, ch, int(self.rng.integers(self.programs.count)))
        with self.lock:
            self.live[index] = call
        self.starters.submit(self._start, call)

    def _start(self, call: _Call) -> None:
        cfg = self.cfg
        name = f"{call.index // 1000:04d}/call-{call.index:07d}.wav"
        rec = call.channel.WholeCallRecorder
        try:
            ok = rec.start(name, file_format=cfg.file_format, rate=RATE, milliseconds_max_silence=cfg.max_silence_ms,
                           dtmf_elim=True, recording_mode="mixed")
            why = "" if ok else f"start() returned False (cause {rec.cause().name})"
        except Exception as e:  # noqa: BLE001 - counted, the soak goes on
            ok, why = False, f"start raised {type(e).__name__}: {e}"
        if ok:
            with self.lock:
                self.tally.started += 1
            self.fed_q.put(call)
            return
        with self.lock:
            self.tally.start_failed += 1
            self.tally.problem(f"call {call.index}: {why}")
        self._forget(call)

    def _end(self, call: _Call, overruns: int) -> None:
        """Stopper thread: end the recording the cohort's way, close the channel, queue the file check."""
        rec = call.channel.WholeCallRecorder
        want = "HANGUP" if call.hang_up else "ABORTED"
        try:
            if call.hang_up:
                call.channel.hang_up()
            else:
                rec.stop()
        except Exception as e:  # noqa: BLE001
            self.tally.problem(f"call {call.index}: ending raised {type(e).__name__}: {e}")
        res = rec.last_result
        cause = res.cause.name if res is not None else "NONE"
        with self.lock:
            t = self.tally
            t.ended += 1
            t.causes[cause] = t.causes.get(cause, 0) + 1
            t.overruns += overruns
            t.samples_recorded += call.stored
            if cause != want:
                t.wrong_cause += 1
                t.problem(f"call {call.index}: cause {cause}, want {want} {res.error if res else ''}".strip())
            if res is not None:
                t.lost_samples += res.lost_samples
        spot = None
        if self.cfg.spot_every and call.index % self.cfg.spot_every == 0:
            spot = (call.program, call.phase)
        if res is not None and res.path:
            fut = self.pool.submit(_check, res.path, call.stored, self.cfg.file_format, spot, self.cfg.keep)
            fut.add_done_callback(lambda f, c=call: self._checked(c, f))
        else:
            with self.lock:
                self.tally.invalid += 1
                self.tally.problem(f"call {call.index}: no file")
        self._forget(call)

    def _checked(self, call: _Call, fut: cf.Future) -> None:
        try:
            r = fut.result()
        except Exception as e:  # noqa: BLE001 - a pool failure is a failed check
            r = {"ok": False, "frames": 0, "problem": f"check failed: {e}"}
        with self.lock:
            t = self.tally
            if r["ok"]:
                t.verified += 1
            else:
                t.invalid += 1
                t.problem(f"call {call.index}: {r['problem']}")
            short = call.stored - r["frames"]
            if short > FRAME:
                t.short_samples += short
            s = r.get("spot")
            if s is not None:
                t.spot_checked += 1
                if not s["ok"]:
                    t.spot_failed += 1
                    t.problem(f"call {call.index}: content SNR {s['snr_db']} dB under {s['floor_db']} dB")

    def _forget(self, call: _Call) -> None:
        with contextlib.suppress(Exception):
            call.channel.close()
        with self.lock:
            self.live.pop(call.index, None)

    def _io_loop(self) -> None:
        """Hands started calls to the load generators in cohorts of one random length; ends the fed ones."""
        cfg = self.cfg
        rng = np.random.default_rng(4733)  # this thread's own: Generators are not thread-safe
        cohort_id = 0
        pending: list[_Call] = []
        feeding: dict[int, _Call] = {}
        window_end = 0.0
        while not self._io_stop.is_set():
            now = time.monotonic()
            try:
                while True:
                    pending.append(self.fed_q.get_nowait())
            except queue.Empty:
                pass
            if pending and now >= window_end:
                cohort_id += 1
                phase = int(rng.integers(self.programs.length))
                seconds = float(rng.uniform(cfg.call_min_s, cfg.call_max_s))
                for c in pending:
                    c.phase, c.hang_up = phase, cohort_id % 2 == 0
                    feeding[c.index] = c
                slots = [s for c in pending for s in (c.channel.inbound.slot, c.channel.outbound.slot)]
                self.lg.feed(cohort_id, [c.index for c in pending], slots, [c.program for c in pending], phase,
                             round(seconds * RATE))
                pending = []
                window_end = now + cfg.block_ms / 1000
            elif not pending:
                window_end = now + cfg.block_ms / 1000
            for _, msg in self.lg.poll(5):
                self.lg_lag_ms = max(self.lg_lag_ms, msg.get("lag_ms", 0.0))
                if msg["t"] != "done":
                    continue
                st, ov = msg["stored"], msg["overruns"]
                for j, idx in enumerate(msg["channels"]):
                    call = feeding.pop(idx)
                    call.stored = max(st[2 * j], st[2 * j + 1])
                    self.stoppers.submit(self._end, call, ov[2 * j] + ov[2 * j + 1])

    # -- resources ----------------------------------------------------------------------------

    def _sample(self, elapsed: float) -> dict:
        sup = self.ctl.supervisor
        wpids = [w.proc.pid for w in sup.workers]
        me = os.getpid()
        with self.lock:
            live = len(self.live)
        s = {"t": round(elapsed, 1), "calls": live, "ended": self.tally.ended,
             "slots_used": self.arena.slots - self.arena.free_slots,
             "controller_anon": proc_anon(me), "controller_fds": open_fds(me), "controller_threads": threads_of(me),
             "workers_anon": [proc_anon(p) for p in wpids], "workers_fds": [open_fds(p) for p in wpids],
             "workers_threads": [threads_of(p) for p in wpids],
             "loadgens_anon": [proc_anon(p) for p in self.lg.pids],
             "workers_cpu": [proc_cpu(p) for p in wpids], "system": system_cpu(),
             "overruns_so_far": self.tally.overruns,
             "controller_objects": len(gc.get_objects()), "cycle_garbage": self.cycle_garbage}
        self.samples.append(s)
        return s

    def _progress(self, s: dict) -> None:
        t = self.tally
        line = (f"[{s['t']:7.1f}s] calls {s['calls']:5d}  ended {t.ended:7d}  checked {t.verified + t.invalid:7d}"
                f"  slots {s['slots_used']:5d}  controller {s['controller_anon'] >> 20} MiB {s['controller_fds']} fds"
                f"  workers {'/'.join(str(a >> 20) for a in s['workers_anon'])} MiB"
                f" {'/'.join(str(f) for f in s['workers_fds'])} fds  overruns {t.overruns}")
        print(line, file=sys.stderr, flush=True)

    def _flatness(self, base: dict, end: dict) -> dict:
        """Peaks of each figure over the two halves of the steady part, and the idle end against the start."""
        cfg = self.cfg
        warm = min(cfg.seconds / 2, cfg.channels / cfg.start_rate + cfg.call_max_s)
        steady = [s for s in self.samples if warm <= s["t"] <= cfg.seconds]
        failures: list[str] = []
        figures: dict[str, dict] = {}
        if len(steady) < 4:
            return {"steady_samples": len(steady), "figures": figures, "failures": failures,
                    "note": "too short for a flatness verdict (fewer than 4 steady samples)"}
        half = len(steady) // 2
        first, second = steady[:half], steady[half:]

        def series(key: str) -> list[tuple[str, list[int], list[int]]]:
            if isinstance(steady[0][key], list):
                n = min(len(s[key]) for s in steady)
                return [(f"{key}[{i}]", [s[key][i] for s in first], [s[key][i] for s in second]) for i in range(n)]
            return [(key, [s[key] for s in first], [s[key] for s in second])]

        for key, slack in (("controller_anon", MEMORY_SLACK), ("workers_anon", MEMORY_SLACK),
                           ("loadgens_anon", MEMORY_SLACK), ("controller_objects", OBJECT_SLACK),
                           ("controller_fds", FD_SLACK), ("workers_fds", FD_SLACK),
                           ("controller_threads", THREAD_SLACK), ("workers_threads", THREAD_SLACK)):
            if key not in steady[0]:
                continue  # a report from before the figure was sampled
            for name, a, b in series(key):
                pa, pb = max(a), max(b)
                allow = slack if isinstance(slack, int) else max(slack[0], math.ceil(slack[1] * pa))
                figures[name] = {"first_half_peak": pa, "second_half_peak": pb, "growth": pb - pa, "allowed": allow}
                if pb - pa > allow:
                    failures.append(f"{name} grew from {pa} to {pb} (allowed {allow})")
        if "cycle_garbage" in steady[0] and "ended" in steady[0]:
            calls = steady[-1]["ended"] - steady[0]["ended"]
            freed = steady[-1]["cycle_garbage"] - steady[0]["cycle_garbage"]
            per_call = freed / max(1, calls)
            figures["cycle_garbage_per_call"] = {"calls": calls, "objects": freed, "per_call": round(per_call, 2),
                                                 "allowed": CYCLE_GARBAGE_PER_CALL}
            if calls and per_call > CYCLE_GARBAGE_PER_CALL:
                failures.append(f"the cyclic collector freed {per_call:.1f} objects per call ({freed} for {calls} "
                                f"calls, allowed {CYCLE_GARBAGE_PER_CALL}): finished calls are reference cycles")
        idle = {"slots_used": end["slots_used"], "controller_fds": end["controller_fds"],
                "controller_fds_before": base["controller_fds"],
                "controller_threads": end["controller_threads"], "controller_threads_before": base["controller_threads"]}
        if end["slots_used"]:
            failures.append(f"{end['slots_used']} ring slots still in use after every call ended")
        if end["controller_fds"] > base["controller_fds"] + FD_SLACK:
            failures.append(f"controller holds {end['controller_fds']} descriptors after the run, "
                            f"{base['controller_fds']} before it")
        return {"steady_from_s": round(warm, 1), "steady_samples": len(steady), "figures": figures, "idle": idle,
                "failures": failures}


def run_churn(cfg: ChurnConfig) -> dict:
    os.makedirs(cfg.out, exist_ok=True)
    return Soak(cfg).execute()


def summary(rep: dict) -> str:
    r, loss, files, res = rep["run"], rep["loss"], rep["files"], rep["resources"]
    lines = [f"churn: {r['calls']} calls in {r['wall_s']} s, {r['channel_seconds']} channel-seconds, causes {r['causes']}",
             f"  lost: overruns {loss['overruns']}, takeover {loss['lost_samples']}, missing {loss['short_samples']}",
             f"  files: {files['verified']} valid, {files['invalid']} invalid, spot checks {files['spot_checked']} "
             f"({files['spot_failed']} failed)",
             f"  worker CPU {r['worker_us_per_channel_second']} us per channel-second, restarts {r['worker_restarts']}"]
    for name, f in res.get("figures", {}).items():
        if "per_call" in f:
            lines.append(f"  {name}: {f['per_call']} ({f['objects']} objects for {f['calls']} calls, "
                         f"allowed {f['allowed']})")
            continue
        lines.append(f"  {name}: peak {f['first_half_peak']} -> {f['second_half_peak']} (growth {f['growth']}, "
                     f"allowed {f['allowed']})")
    if "idle" in res:
        lines.append(f"  idle end: slots in use {res['idle']['slots_used']}, controller descriptors "
                     f"{res['idle']['controller_fds_before']} -> {res['idle']['controller_fds']}")
    lines.append("PASS" if rep["ok"] else "FAIL: " + "; ".join(rep["failures"][:8]))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    d = ChurnConfig()
    p = argparse.ArgumentParser(prog="wholecall stress --churn", description=__doc__.split("\n\n")[0])
    p.add_argument("--channels", type=int, default=d.channels, help="calls recording at all times (default %(default)s)")
    p.add_argument("--seconds", type=float, default=d.seconds, help="length of the soak (default %(default)s)")
    p.add_argument("--call-seconds", type=float, nargs=2, default=(d.call_min_s, d.call_max_s), metavar=("MIN", "MAX"),
                   help="each call records a random length in this range (default %(default)s)")
    p.add_argument("--workers", type=int, default=d.workers, help="worker processes (0 = one per CPU)")
    p.add_argument("--format", dest="file_format", default=d.file_format, help="file_format (default %(default)s)")
    p.add_argument("--start-rate", type=float, default=d.start_rate, help="new calls per second at most (default %(default)s)")
    p.add_argument("--sample-s", type=float, default=d.sample_s, help="resource sample period (default %(default)s)")
    p.add_argument("--spot-every", type=int, default=d.spot_every, help="one content check per N calls (0 = none)")
    p.add_argument("--out", default=d.out, help="output directory (default %(default)s)")
    p.add_argument("--report", default=None, help="JSON report path (default OUT/churn-report.json)")
    p.add_argument("--keep", action="store_true", help="keep the recordings (default: removed once checked)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    lo, hi = a.call_seconds
    if a.channels < 1 or a.seconds <= 0 or a.start_rate <= 0 or a.sample_s <= 0 or not 0 < lo <= hi:
        print("wholecall stress --churn: --channels, --seconds, --start-rate, --sample-s must be positive "
              "and --call-seconds MIN MAX with 0 < MIN <= MAX", file=sys.stderr)
        return 2
    cfg = ChurnConfig(channels=a.channels, seconds=a.seconds, call_min_s=lo, call_max_s=hi, workers=a.workers,
                      file_format=a.file_format, start_rate=a.start_rate, sample_s=a.sample_s,
                      spot_every=a.spot_every, out=a.out, keep=a.keep, quiet=a.quiet)
    try:
        report = run_churn(cfg)
    except (RuntimeError, TimeoutError) as e:
        print(f"wholecall stress --churn: {e}", file=sys.stderr)
        return 2
    path = a.report or os.path.join(cfg.out, "churn-report.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2, default=str)
    print(summary(report))
    print(f"report: {path}")
    return 0 if report["ok"] else 1
