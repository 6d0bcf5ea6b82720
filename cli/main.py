"""The `wholecall` command: demo, repair, decrypt, stress."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time


def demo(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="wholecall demo", description="Record one simulated call with real workers.")
    p.add_argument("--seconds", type=float, default=4.0, help="length of the simulated call")
    p.add_argument("--workers", type=int, default=0, help="worker processes (0 = one per CPU)")
    p.add_argument("--dir", default="recordings", help="recordings directory")
    p.add_argument("--format", default="alaw", help="file_format of the recording")
    a = p.parse_args(argv)
    from wholecall.controller import Controller
    from wholecall.sim.signals import speech_like

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
    from wholecall.formats.wav import repair as repair_file

    rc = 0
    for f in a.files:
        try:
            print(f"{f}: {repair_file(f)}")
        except (OSError, ValueError) as e:
            print(f"{f}: cannot repair: {e}", file=sys.stderr)
            rc = 1
    return rc


def decrypt(argv: list[str]) -> int:
    from wholecall.cli.decrypt import decrypt_command

    return decrypt_command(argv)


def recover(argv: list[str]) -> int:
    from wholecall.cli.decrypt import recover_command

    return recover_command(argv)


def stress(argv: list[str]) -> int:
    if "--media" in argv:
        i = argv.index("--media")
        media = argv[i + 1] if i + 1 < len(argv) else ""
        rest = argv[:i] + argv[i + 2:]
        if media == "rtp":
            from wholecall.sim.rtp_stress import main as rtp_main

            return rtp_main(rest)
        if media == "twilio":
            from wholecall.sim.twilio_stress import main as twilio_main

            return twilio_main(rest)
        if media != "legs":
            print(f"wholecall stress: --media must be legs, rtp or twilio, got {media!r}", file=sys.stderr)
            return 2
        argv = rest
    from wholecall.sim.stress import main as stress_main

    return stress_main(argv)


def serve(argv: list[str]) -> int:
    import asyncio

    from wholecall.service.app import serve as run
    from wholecall.service.config import ConfigError, load

    try:
        cfg = load(argv)
    except ConfigError as e:
        print(f"wholecall serve: {e}", file=sys.stderr)
        return 2
    return asyncio.run(run(cfg))


COMMANDS = {"demo": demo, "serve": serve, "repair": repair, "decrypt": decrypt, "recover": recover, "stress": stress}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: wholecall {demo,serve,repair,decrypt,recover,stress} [options]\n"
              "  demo     record one simulated call with real workers (the quick start)\n"
              "  serve    run the recorder as a service: HTTP/JSON API, workers, RTP ingest\n"
              "  repair   fix the header of a WAV left by a crashed worker\n"
              "  decrypt  decrypt an encrypted recording (keys from files or environment)\n"
              "  recover  turn the encrypted .wcpart left by a killed worker into a recording\n"
              "  stress   record many channels at real time and report CPU, losses and latency",
              file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    logging.basicConfig(level=os.environ.get("WHOLECALL_LOG", "WARNING"),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if threading.current_thread() is threading.main_thread() and argv[0] != "serve":  # serve drains itself
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
