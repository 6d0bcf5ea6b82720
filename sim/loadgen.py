"""Load generator: feeds thousands of call legs at real-time pace, in blocks, from other processes.

`wholecall stress` needs producers that behave like a media server relaying RTP for
thousands of calls, without costing more CPU than the recorder they load. One load
generator process attaches the ring arena by name and feeds every leg assigned to it
with `shm.LegBatchWriter`: one compiled write per *cohort* (the calls whose feeding
began on the same command, so their legs advance in step) per block of `block_ms` of
audio, straight from each leg's source row into its ring (`write_rows`). A leg is never
waited for: a full ring drops audio and counts an overrun, as a real-time source must.

Audio comes from a small library of conversations ("programs"), each a pair of tracks
(caller on the inbound leg, agent on the outbound leg) built from espeak-ng speech,
comfort-noise pauses and DTMF digit strings keyed by the caller. A call plays one
program from a phase chosen per cohort, so the recorder sees realistic turn-taking,
silences shorter than the stress run's `milliseconds_max_silence`, and DTMF for the
eliminator. The library is built once and cached under `cache_dir()`; without
espeak-ng (or soxr) the speech is `wholecall.sim.signals.speech_like`.

Control, never audio, travels over one ZeroMQ PAIR socket per load generator
(msgpack maps; the loadgen connects, `LoadGenerators` binds):

    stress -> loadgen  {"t": "feed", "cohort", "channels", "slots" (in, out per channel),
                        "programs", "phase", "samples"}     feed these calls `samples` each
                       {"t": "quit"}
    loadgen -> stress  {"t": "ready", "pid"}
                       {"t": "done", "cohort", "channels", "stored" (per leg),
                        "overruns" (per leg), "lag_ms"}      a cohort was fed to the end
                       {"t": "stats", "legs", "fed", "overruns", "lag_ms", "cpu_s"}  twice a second
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import wave
from dataclasses import dataclass

import msgpack
import numpy as np
import zmq

from wholecall.controller.procenv import media_env
from wholecall.formats.codecs import CALL_RATE as RATE
from wholecall.shm import Arena, LegBatchWriter
from wholecall.shm.batch import warm_up

log = logging.getLogger("wholecall.loadgen")

#: Bumped whenever the way programs are built changes, so stale caches are not reused.
LIBRARY_VERSION = 1
#: Comfort noise in pauses: telephone line noise, well under the -45 dBFS silence threshold.
NOISE_DBFS = -66.0
#: Longest pause in a program (both legs quiet at once), in seconds.
MAX_PAUSE_S = 0.8

SENTENCES = [
    "Thank you for calling. My name is Alex, how can I help you today?",
    "Hi, I am calling about the bill I received last week. It looks too high.",
    "I can help with that. Could you give me your account number, please?",
    "Sure, just a moment. I will key it in on the phone.",
    "Thank you. I can see two charges for the same service in March.",
    "That is right, I was only expecting one of them.",
    "I have removed the second charge, and you will see the refund within five days.",
    "Great, thanks. While I have you, can I change my address as well?",
    "Of course. What is the new street address and the postcode?",
    "It is twenty seven Station Road, and the postcode is the same as before.",
    "Done. Is there anything else I can help you with today?",
    "No, that is everything. Thanks for your help, goodbye.",
]
VOICES = [("en-us", 160), ("en-gb+f3", 170), ("en-us+m3", 150), ("en-gb-x-rp+f2", 165)]


def cache_dir() -> str:
    """Where the clip library is cached: $WHOLECALL_CACHE, else ~/.cache/wholecall, else a temp dir."""
    d = os.environ.get("WHOLECALL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "wholecall")
    try:
        os.makedirs(d, mode=0o700, exist_ok=True)
        return d
    except OSError:
        return tempfile.gettempdir()


# -- the clip library ---------------------------------------------------------------------------


def _espeak(text: str, voice: str, speed: int) -> np.ndarray:
    """One utterance from espeak-ng, resampled to 8 kHz int16 (raises if a tool is missing)."""
    import soxr

    with tempfile.TemporaryDirectory(prefix="wholecall-tts-") as d:
        path = os.path.join(d, "u.wav")
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", path, text], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        with wave.open(path) as w:
            rate, raw = w.getframerate(), w.readframes(w.getnframes())
    x = np.frombuffer(raw, np.int16).astype(np.float32) / 32768
    return soxr.resample(x, rate, RATE)


def speech_clips() -> tuple[list[np.ndarray], str]:
    """Utterances as float arrays at peak 1.0, and where they came from ("espeak-ng" or "synthetic")."""
    clips: list[np.ndarray] = []
    source = "espeak-ng"
    if shutil.which("espeak-ng"):
        try:
            for i, text in enumerate(SENTENCES):
                voice, speed = VOICES[i % len(VOICES)]
                x = _espeak(text, voice, speed)
                nz = np.flatnonzero(np.abs(x) > 1e-3)
                if len(nz):
                    x = x[nz[0]:nz[-1] + 1]  # espeak pads with silence: pauses are ours to place
                clips.append(x / max(1e-6, float(np.abs(x).max())))
        except (OSError, subprocess.SubprocessError, ImportError, wave.Error) as e:
            log.warning("espeak-ng speech unavailable (%s): using synthetic speech", e)
            clips = []
    if not clips:
        from .signals import speech_like

        source = "synthetic"
        for i in range(len(SENTENCES)):
            x = speech_like(2.0 + (i % 4) * 0.7, 110 + 25 * (i % 5), seed=i).astype(np.float32)
            clips.append(x / max(1.0, float(np.abs(x).max())))
    return clips, source


@dataclass(frozen=True)
class Programs:
    """The conversations load generators play: ``audio[p, 0]`` is program p's caller (inbound)
    track, ``audio[p, 1]`` its agent (outbound) track, both ``length`` samples and looped.
    ``dtmf[p]`` marks samples where a DTMF tone sounds on either leg (widened by 20 ms), so a
    verifier can leave them out when it compares a recording with the mix it expects."""

    audio: np.ndarray  # int16 (P, 2, length)
    dtmf: np.ndarray  # bool (P, length)
    source: str  # "espeak-ng" or "synthetic"

    @property
    def count(self) -> int:
        return int(self.audio.shape[0])

    @property
    def length(self) -> int:
        return int(self.audio.shape[2])

    def span(self, program: int, phase: int, samples: int) -> np.ndarray:
        """Both legs of `program` from `phase` for `samples` (wrapping), int16 (2, samples)."""
        idx = (phase + np.arange(samples)) % self.length
        return self.audio[program][:, idx]

    def dtmf_span(self, program: int, phase: int, samples: int) -> np.ndarray:
        return self.dtmf[program][(phase + np.arange(samples)) % self.length]

    def save(self, path: str) -> None:
        tmp = path + f".{os.getpid()}.tmp.npz"
        np.savez(tmp, audio=self.audio, dtmf=self.dtmf, source=np.array(self.source))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> Programs:
        with np.load(path) as z:
            return cls(z["audio"], z["dtmf"], str(z["source"]))


def build_programs(count: int = 16, seconds: float = 40.0, seed: int = 7) -> Programs:
    """`count` two-party conversations of `seconds` each: turns of speech, short pauses, DTMF."""
    from wholecall.controller.media import dtmf_tone

    rng = np.random.default_rng(seed)
    clips, source = speech_clips()
    length = int(seconds * RATE)
    noise_amp = 32768 * 10 ** (NOISE_DBFS / 20)
    audio = np.zeros((count, 2, length), np.int16)
    dtmf = np.zeros((count, length), bool)
    widen = RATE // 50
    for p in range(count):
        tracks = rng.standard_normal((2, length)) * noise_amp
        gains = 32767 * 10 ** (rng.uniform(-12, -4, 2) / 20)  # each party's peak level
        t = 0
        speaker = 1  # the agent opens the call
        while t < length:
            if speaker == 0 and rng.random() < 0.3:
                digits = "".join(rng.choice(list("0123456789*#"), int(rng.integers(3, 7))))
                for d in digits:
                    if t >= length:  # the last gap ran past the end: the call is full
                        break
                    tone_ms, gap_ms = int(rng.integers(60, 120)), int(rng.integers(60, 120))
                    tone = dtmf_tone(d, tone_ms, float(rng.uniform(-14, -8))).astype(np.float64)
                    end = min(length, t + len(tone))
                    tracks[0, t:end] += tone[:end - t]
                    dtmf[p, max(0, t - widen):min(length, end + widen)] = True
                    t = end + gap_ms * RATE // 1000
            else:
                x = clips[int(rng.integers(len(clips)))]
                end = min(length, t + len(x))
                tracks[speaker, t:end] += x[:end - t] * gains[speaker]
                t = end
            t += int(rng.uniform(0.15, MAX_PAUSE_S) * RATE)
            speaker = 1 - speaker
        audio[p] = np.clip(np.rint(tracks), -32768, 32767).astype(np.int16)
    return Programs(audio, dtmf, source)


def load_programs(count: int = 16, seconds: float = 40.0, seed: int = 7, directory: str | None = None
                  ) -> tuple[Programs, str]:
    """The cached library (built on first use); returns it and its file, which load generators load."""
    key = hashlib.sha256(repr((LIBRARY_VERSION, count, seconds, seed, SENTENCES, VOICES,
                                bool(shutil.which("espeak-ng")))).encode()).hexdigest()[:16]
    path = os.path.join(directory or cache_dir(), f"programs-{key}.npz")
    if os.path.exists(path):
        try:
            return Programs.load(path), path
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is rebuilt
    progs = build_programs(count, seconds, seed)
    progs.save(path)
    return progs, path


# -- the load generator process ---------------------------------------------------------------


class Cohort:
    """Calls whose feeding began together: their legs advance in step, one batch write per block."""

    def __init__(self, arena: Arena, msg: dict, sources: np.ndarray, length: int, block: int, now: float) -> None:
        self.id = int(msg["cohort"])
        self.channels = list(msg["channels"])
        slots = np.asarray(msg["slots"], np.int64)
        self.writer = LegBatchWriter(arena, slots)
        progs = np.asarray(msg["programs"], np.int64)
        self.rows = np.stack([2 * progs, 2 * progs + 1], axis=1).reshape(-1)  # source row per leg
        self.phase = int(msg["phase"]) % length
        self.total = int(msg["samples"])
        self.fed = 0
        self.block = block
        self.t0 = now
        self.lag = 0.0
        self._sources = sources
        self._length = length

    @property
    def next_due(self) -> float:
        """A block is written once its audio has "arrived" (as RTP would): at the end of its span."""
        return self.t0 + (self.fed + min(self.block, self.total - self.fed)) / RATE

    @property
    def finished(self) -> bool:
        return self.fed >= self.total

    def step(self, now: float) -> int:
        """Write the next block to every leg; returns samples written per leg."""
        n = min(self.block, self.total - self.fed)
        self.lag = max(self.lag, now - self.next_due)
        start = (self.phase + self.fed) % self._length
        # Sources are stored with one block of wrap-around, so a block is always a plain span
        # of its row; it goes from there straight into the ring (one pass, no temporary).
        self.writer.write_rows(self._sources, self.rows, start, n)
        self.fed += n
        return n


def run(arena_name: str, endpoint: str, programs_path: str, block_ms: float, priority: int = 0) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the stress command, which tells us
    if priority:
        # The producers stand in for RTP ingest, part of the real-time media path: they run
        # at the workers' priority, or a saturated box starves them (measured: 5.6 s late).
        try:
            os.setpriority(os.PRIO_PROCESS, 0, -priority)
        except OSError as e:
            log.warning("load generator: cannot raise priority to nice -%d: %s", priority, e)
    arena = Arena.attach(arena_name)
    warm_up()  # numba's start-up now, not in the first block (~0.5 s late for every leg)
    progs = Programs.load(programs_path)
    block = max(160, int(block_ms * RATE / 1000))
    flat = progs.audio.reshape(2 * progs.count, progs.length)
    sources = np.concatenate([flat, flat[:, :block]], axis=1)  # wrap-extended: blocks are slices
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PAIR)
    sock.setsockopt(zmq.LINGER, 2000)
    sock.connect(endpoint)

    def send(msg: dict) -> None:
        sock.send(msgpack.packb(msg, use_bin_type=True))

    send({"t": "ready", "pid": os.getpid()})
    cohorts: dict[int, Cohort] = {}
    origin = time.monotonic()
    block_s = block / RATE
    fed = 0
    lag_max = 0.0
    next_stats = time.monotonic()
    parent = os.getppid()
    try:
        while True:
            now = time.monotonic()
            due = min((c.next_due for c in cohorts.values()), default=now + 0.1)
            # Round up: waking a fraction of a millisecond early would spin on poll(0) until due.
            wait_ms = max(0, math.ceil((min(due, next_stats) - now) * 1000))
            if sock.poll(wait_ms, zmq.POLLIN):
                while sock.poll(0, zmq.POLLIN):
                    msg = msgpack.unpackb(sock.recv(), raw=False)
                    if msg["t"] == "quit":
                        return 0
                    if msg["t"] == "feed":
                        # Every cohort's clock starts on the block grid, so all blocks fall due
                        # together: one wake-up per block for the whole process, not one per cohort.
                        now = time.monotonic()
                        t0 = origin + math.ceil((now - origin) / block_s) * block_s
                        c = Cohort(arena, msg, sources, progs.length, block, t0)
                        cohorts[c.id] = c
            now = time.monotonic()
            for c in list(cohorts.values()):
                burst = 0
                while not c.finished and c.next_due <= now and burst < 20:
                    fed += c.step(now) * len(c.writer)
                    burst += 1
                if c.finished:
                    del cohorts[c.id]
                    lag_max = max(lag_max, c.lag)
                    send({"t": "done", "cohort": c.id, "channels": c.channels,
                          "stored": c.writer.positions.tolist(), "overruns": c.writer.overruns.tolist(),
                          "lag_ms": 1000 * c.lag})
            if now >= next_stats:
                lag = max([lag_max] + [c.lag for c in cohorts.values()])
                t = os.times()
                send({"t": "stats", "legs": sum(len(c.writer) for c in cohorts.values()), "fed": fed,
                      "overruns": int(sum(int(c.writer.overruns.sum()) for c in cohorts.values())),
                      "lag_ms": 1000 * lag, "cpu_s": t.user + t.system})
                next_stats = now + 0.5
                if os.getppid() != parent:
                    return 1  # the stress command is gone
    finally:
        sock.close()
        ctx.term()
        cohorts.clear()
        arena.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m wholecall.sim.loadgen", description="wholecall load generator")
    p.add_argument("--arena", required=True, help="ring arena: its path (or its name in /dev/shm)")
    p.add_argument("--endpoint", required=True, help="ZeroMQ endpoint of the stress command (PAIR)")
    p.add_argument("--programs", required=True, help="clip library file from load_programs()")
    p.add_argument("--block-ms", type=float, default=100.0, help="audio per batch write, in ms")
    p.add_argument("--priority", type=int, default=0, help="run at nice -PRIORITY (0: unchanged)")
    a = p.parse_args(argv)
    logging.basicConfig(level=os.environ.get("WHOLECALL_LOG", "WARNING"), stream=sys.stderr,
                        format="%(asctime)s loadgen %(levelname)s %(message)s")
    return run(a.arena, a.endpoint, a.programs, a.block_ms, a.priority)


# -- the stress command's side ----------------------------------------------------------------


class LoadGenerators:
    """Spawns load generator processes and talks to them. Not thread-safe: one thread uses it."""

    def __init__(self, count: int, arena_name: str, programs_path: str, block_ms: float = 100.0,
                 cpus: set[int] | None = None, priority: int = 0) -> None:
        self.ctx = zmq.Context()
        self._dir = tempfile.mkdtemp(prefix="wholecall-loadgen-")
        self.socks: list[zmq.Socket] = []
        self.procs: list[subprocess.Popen] = []
        self.pids: list[int] = []
        self.legs = [0] * count  # legs being fed, per load generator (for placement)
        env = media_env()
        self.poller = zmq.Poller()
        try:
            for i in range(count):
                s = self.ctx.socket(zmq.PAIR)
                s.setsockopt(zmq.LINGER, 0)
                ep = f"ipc://{os.path.join(self._dir, f'lg{i}.sock')}"
                s.bind(ep)
                self.socks.append(s)
                self.poller.register(s, zmq.POLLIN)
                cmd = [sys.executable, "-P", "-m", "wholecall.sim.loadgen", "--arena", arena_name, "--endpoint", ep,
                       "--programs", programs_path, "--block-ms", str(block_ms), "--priority", str(priority)]
                self.procs.append(subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, close_fds=True))
            for i, s in enumerate(self.socks):
                if not s.poll(30_000):
                    raise TimeoutError(f"load generator {i} did not report ready within 30 s")
                self.pids.append(int(msgpack.unpackb(s.recv(), raw=False)["pid"]))
        except BaseException:
            self.close()
            raise

    def feed(self, cohort: int, channels: list[int], slots: list[int], programs: list[int], phase: int,
             samples: int) -> int:
        """Hand a cohort to the least busy load generator; returns its index."""
        i = min(range(len(self.socks)), key=lambda j: self.legs[j])
        self.legs[i] += len(slots)
        self.socks[i].send(msgpack.packb({"t": "feed", "cohort": cohort, "channels": channels, "slots": slots,
                                          "programs": programs, "phase": phase, "samples": samples},
                                         use_bin_type=True))
        return i

    def poll(self, timeout_ms: int) -> list[tuple[int, dict]]:
        """Messages from the load generators as (index, message); [] after `timeout_ms`."""
        out = []
        for s, _ in self.poller.poll(timeout_ms):
            i = self.socks.index(s)
            while s.poll(0, zmq.POLLIN):
                msg = msgpack.unpackb(s.recv(), raw=False)
                if msg.get("t") == "done":
                    self.legs[i] -= len(msg["stored"])
                out.append((i, msg))
        return out

    def alive(self) -> list[bool]:
        return [p.poll() is None for p in self.procs]

    def close(self) -> None:
        """Tell every load generator to quit; kill what does not. Idempotent."""
        for s, p in zip(self.socks, self.procs):
            if p.poll() is None:
                try:
                    s.send(msgpack.packb({"t": "quit"}), zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for s in self.socks:
            s.close(linger=0)
        self.socks = []
        self.procs = []
        self.ctx.term()
        shutil.rmtree(self._dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
