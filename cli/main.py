"""The `wholecall` command: demo, serve, info, repair, decrypt, recover, stress."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time

from wholecall.protocol import logline


def demo(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="wholecall demo", description="Record one simulated call with real workers.")
    p.add_argument("--seconds", type=float, default=4.0, help="length of the simulated call")
    p.add_argument("--workers", type=int, default=1, help="worker processes (one call needs one)")
    p.add_argument("--dir", default="recordings", help="recordings directory")
    p.add_argument("--format", default="alaw", help="file_format of the recording")
    a = p.parse_args(argv)
    if not 0 < a.seconds <= 3600:
        p.error(f"--seconds must be more than 0 and at most 3600, got {a.seconds:g}")
    if a.workers < 1:
        p.error(f"--workers must be at least 1, got {a.workers}")
    from wholecall.controller import Controller
    from wholecall.sim.signals import speech_like

    caller = speech_like(a.seconds, 120, 1)
    agent = speech_like(a.seconds, 210, 2)
    name = time.strftime("demo-%Y%m%d-%H%M%S") + f"-{os.getpid()}.wav"
    from wholecall.controller import Error
    from wholecall.controller.config import Config

    # One call: one channel's two rings (256 KiB, not the 256 MiB arena of 1,024 channels
    # that would ask for huge pages), and the workers' raised priority only where it is
    # allowed (a user without CAP_SYS_NICE would get a warning per worker for nothing a
    # single call needs): nothing to warn a newcomer about.
    priority = Config.worker_priority if may_raise_priority(Config.worker_priority) else 0
    try:
        ctl = Controller(workers=a.workers, recordings_dir=a.dir, max_channels=1, worker_priority=priority)
        ctl.start()
    except OSError as e:
        print(f"wholecall demo: cannot use {e.filename or a.dir} as the recordings directory: {e.strerror or e}; "
              f"pass --dir a writable directory", file=sys.stderr)
        return 1
    except (ValueError, Error) as e:
        print(f"wholecall demo: cannot start the recorder: {e}", file=sys.stderr)
        return 1
    with ctl:
        ch = ctl.incoming_call()
        ch.ring()
        ch.answer()
        rec = ch.WholeCallRecorder
        t0 = time.perf_counter()
        try:
            started = rec.start(name, file_format=a.format)
        except Error as e:  # a bad --format, a full disk: the message says what to change
            print(f"wholecall demo: {e}", file=sys.stderr)
            return 1
        if not started:
            res = rec.last_result
            print(f"wholecall demo: the recording did not start: {res.error if res else rec.cause().name}",
                  file=sys.stderr)
            return 1
        print(f"recording started in {1000 * (time.perf_counter() - t0):.1f} ms on "
              f"{ctl.config.workers} pinned worker{'s' if ctl.config.workers != 1 else ''}; "
              f"feeding {a.seconds:.1f} s of call audio at real time")
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


def may_raise_priority(steps: int) -> bool:
    """Whether this process may lower its nice value by `steps` (root, CAP_SYS_NICE, or RLIMIT_NICE)."""
    if os.geteuid() == 0:
        return True
    try:
        with open("/proc/self/status") as f:
            caps = next(line for line in f if line.startswith("CapEff:"))
        if int(caps.split()[1], 16) >> 23 & 1:  # CAP_SYS_NICE
            return True
    except (OSError, StopIteration, ValueError):
        pass
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NICE)
    return soft == resource.RLIM_INFINITY or 20 - soft <= -steps  # workers set nice -steps


def repair(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="wholecall repair", description="Fix the header of a WAV left by a crash.")
    p.add_argument("files", nargs="+")
    a = p.parse_args(argv)
    from wholecall.formats.wav import repair as repair_file

    rc = 0
    for f in a.files:
        try:
            done = repair_file(f)
        except (OSError, ValueError) as e:
            print(f"{f}: cannot repair: {e}", file=sys.stderr)
            rc = 1
        else:
            print(f"{f}: {done}")  # outside the try: a closed stdout is not this file's failure
    return rc


def decrypt(argv: list[str]) -> int:
    from wholecall.cli.decrypt import decrypt_command

    return decrypt_command(argv)


def recover(argv: list[str]) -> int:
    from wholecall.cli.recover import recover_command

    return recover_command(argv)


def stress(argv: list[str]) -> int:
    if "--churn" in argv:
        from wholecall.sim.churn import main as churn_main

        return churn_main([a for a in argv if a != "--churn"])
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

    from wholecall.service import preflight
    from wholecall.service.app import serve as run
    from wholecall.service.config import ConfigError, load

    try:
        cfg = load(argv)
        preflight.check(cfg)
    except ConfigError as e:
        print(f"wholecall serve: {e}", file=sys.stderr)
        return 2
    from wholecall.service.logs import setup

    setup(cfg.log_format, cfg.log_level)
    import logging

    for warning in preflight.warnings(cfg):
        logging.getLogger("wholecall.service").warning("%s", warning)
    return asyncio.run(run(cfg))


def info(argv: list[str]) -> int:
    from wholecall.cli.info import info_command

    return info_command(argv)


COMMANDS = {"info": info, "demo": demo, "serve": serve, "repair": repair, "decrypt": decrypt, "recover": recover,
            "stress": stress}


def main(argv: list[str] | None = None) -> int:
    """Run one command; a reader of stdout that went away ends it quietly (`_stdout_gone`)."""
    try:
        rc = _run(sys.argv[1:] if argv is None else argv)
        sys.stdout.flush()  # here, not at interpreter exit, where EPIPE prints "Exception ignored"
        return rc
    except BrokenPipeError:
        if not _stdout_closed():
            raise  # another pipe or socket: a real error, with its traceback
        return _stdout_gone()


def _stdout_closed() -> bool:
    """Whether stdout is a pipe (or socket) whose reader has gone: poll(2) reports POLLERR."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), 0)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (OSError, ValueError):
        return False


def _stdout_gone() -> int:
    """`wholecall info F | head -1`: the reader took what it wanted. coreutils die of SIGPIPE
    there, silently; Python ignores SIGPIPE, so the write raised EPIPE instead, and was
    unwound like Ctrl-C (every `finally` ran: workers stopped, arenas removed). Restoring
    SIGPIPE's default instead would kill a command with workers without any cleanup.
    Exit as the shell reports a SIGPIPE death (128 + 13), with nothing on stderr: stdout
    is pointed at /dev/null so that the interpreter's own last flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    return 128 + signal.SIGPIPE


def _run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: wholecall {demo,serve,info,repair,decrypt,recover,stress} [options]\n"
              "  demo     record one simulated call with real workers (the quick start)\n"
              "  serve    run the recorder as a service: HTTP/JSON API, workers, RTP ingest\n"
              "  info     print a recording's metadata sidecar with the file's own facts\n"
              "  repair   fix the header of a WAV left by a crashed worker\n"
              "  decrypt  decrypt an encrypted recording (keys from files or environment)\n"
              "  recover  turn the encrypted .wcpart left by a killed worker into a recording\n"
              "  stress   record many channels at real time and report CPU, losses and latency",
              file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    logline.configure()
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
