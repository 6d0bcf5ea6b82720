"""The `wholecall` command: demo, repair, decrypt, stress."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time

import numpy as np


def speech_like(seconds: float, f0: float, seed: int, rate: int = 8000) -> np.ndarray:
    """Voiced, syllable-paced audio with pauses: a stand-in for speech that needs no TTS."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    pitch = f0 * (1 + 0.08 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6)))
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 12))
    syllables = np.clip(np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6)), 0, None) ** 2
    phrases = (np.sin(2 * np.pi * 0.25 * t + rng.uniform(0, 6)) > -0.3).astype(float)
    x = voice * syllables * phrases + 0.01 * rng.standard_normal(n)
    return np.clip(np.rint(x / np.max(np.abs(x)) * 12000), -32768, 32767).astype(np.int16)


def demo(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="wholecall demo", description="Record one simulated call with real workers.")
    p.add_argument("--seconds", type=float, default=4.0, help="length of the simulated call")
    p.add_argument("--workers", type=int, default=0, help="worker processes (0 = one per CPU)")
    p.add_argument("--dir", default="recordings", help="recordings directory")
    p.add_argument("--format", default="alaw", help="file_format of the recording")
    a = p.parse_args(argv)
    from controller import Controller

    caller = speech_like(a.seconds, 120, 1)
    agent = speech_like(a.seconds, 210, 2)
    name = time.strftime("demo-%Y%m%d-%H%M%S") + f"-{os.getpid()}.wav"
    with Controller(workers=a.workers, recordings_dir=a.dir) as ctl:
        ch = ctl.incoming_call()
        ch.ring()
        ch.answer()
        rec = ch.WholeCallRecorder
        t0 = time.perf_counter()
        if not rec.start(name, file_format=a.format):
            print(f"recording did not start: {rec.cause().name}", file=sys.stderr)
            return 1
        print(f"recording started in {1000 * (time.perf_counter() - t0):.1f} ms on "
              f"{ctl.config.workers} pinned workers; feeding {a.seconds:.1f} s of call audio at real time")
        frame = 160
        start = time.monotonic()
        for i in range(0, len(caller), frame):
            ch.inbound.write(caller[i:i + frame])
            ch.outbound.write(agent[i:i + frame])
            delay = start + (i + frame) / 8000 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        ch.hang_up()
        res = rec.last_result
    print(f"cause: {rec.cause().name}")
    print(f"file: {res.path}  ({res.bytes} bytes, {res.duration_s:.2f} s of audio, {a.format} 8000 Hz mono)")
    return 0 if rec.cause().name == "HANGUP" else 1


def repair(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="wholecall repair", description="Fix the header of a WAV left by a crash.")
    p.add_argument("files", nargs="+")
    a = p.parse_args(argv)
    from worker.wavfile import repair as repair_file

    rc = 0
    for f in a.files:
        try:
            print(f"{f}: {repair_file(f)}")
        except (OSError, ValueError) as e:
            print(f"{f}: cannot repair: {e}", file=sys.stderr)
            rc = 1
    return rc


def decrypt(argv: list[str]) -> int:
    from controller.cipher import decrypt_command

    return decrypt_command(argv)


def recover(argv: list[str]) -> int:
    from controller.decrypt_cli import recover_command

    return recover_command(argv)


def stress(argv: list[str]) -> int:
    from controller.stress import main as stress_main

    return stress_main(argv)


COMMANDS = {"demo": demo, "repair": repair, "decrypt": decrypt, "recover": recover, "stress": stress}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: wholecall {demo,repair,decrypt,recover,stress} [options]\n"
              "  demo     record one simulated call with real workers (the quick start)\n"
              "  repair   fix the header of a WAV left by a crashed worker\n"
              "  decrypt  decrypt an encrypted recording (keys from files or environment)\n"
              "  recover  turn the encrypted .wcpart left by a killed worker into a recording\n"
              "  stress   record many channels at real time and report CPU, losses and latency",
              file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    logging.basicConfig(level=os.environ.get("WHOLECALL_LOG", "WARNING"),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (kill, timeout, a CI job cancelled) would end Python without running a
        # single `finally`: the workers would then go with their parent, but a stress run's
        # private tmpfs arena stayed mounted with gigabytes in it. As an exception it
        # unwinds like Ctrl-C: workers stopped, files finalised, arena unmounted.
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    return COMMANDS[argv[0]](argv[1:])


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
