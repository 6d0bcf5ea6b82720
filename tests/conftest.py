"""Shared fixtures: real controllers with real workers in per-test temp dirs, and a leak
check at the end of the session (no arena left in /dev/shm, no worker process left)."""

from __future__ import annotations

import os

import numpy as np
import pytest

RATE = 8000


def pytest_configure(config) -> None:
    """Compile the audio kernels once, before any test starts a worker. On a fresh clone
    numba's cache is cold, and the first workers would compile for 25 s of CPU (more with
    every test process at it) while the tests' own timeouts run."""
    if hasattr(config, "workerinput"):
        return  # an xdist worker: the session's main process has done it
    from wholecall.shm.batch import warm_up
    from wholecall.worker import dtmf_fine, kernels
    from wholecall.worker.warmup import load_kernels

    load_kernels()  # what a worker loads; then the float32 banks' of the DSP tests
    kernels.warm_up()
    dtmf_fine.warm_up()
    warm_up()


def tone(freq: float, seconds: float, amp: float = 8000.0, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return np.rint(amp * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def feed(channel, inbound: np.ndarray | None, outbound: np.ndarray | None, frame: int = 160) -> None:
    """Write both legs frame by frame, interleaved, as two real-time producers would."""
    n = max(len(inbound) if inbound is not None else 0, len(outbound) if outbound is not None else 0)
    for i in range(0, n, frame):
        if inbound is not None and i < len(inbound):
            channel.inbound.write(inbound[i:i + frame])
        if outbound is not None and i < len(outbound):
            channel.outbound.write(outbound[i:i + frame])


def _our_arenas() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith(f"wholecall-{os.getpid()}-")}


def _children() -> list[int]:
    me = str(os.getpid())
    kids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me and fields[0] != "Z":
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"worker" in f.read():
                    kids.append(int(pid))
    return kids


@pytest.fixture
def make_controller(tmp_path):
    """Factory for started controllers; every one is closed at the end of the test."""
    from wholecall.controller import Controller

    made = []

    def make(**kw):
        kw.setdefault("workers", 2)
        kw.setdefault("recordings_dir", str(tmp_path / "rec"))
        kw.setdefault("max_channels", 64)
        kw.setdefault("ring_ms", 4096)
        ctl = Controller(**kw).start()
        made.append(ctl)
        return ctl

    yield make
    for ctl in made:
        ctl.close()


@pytest.fixture
def ctl(make_controller):
    return make_controller()


@pytest.fixture
def answered(ctl):
    ch = ctl.incoming_call()
    ch.answer()
    return ch


def pytest_sessionfinish(session, exitstatus):
    leaks = _our_arenas()
    kids = _children()
    if leaks or kids:
        print(f"\nLEAK: arenas left in /dev/shm: {sorted(leaks)}; worker processes alive: {kids}")
        session.exitstatus = 1


SIDECAR_SCHEMA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "formats",
                              "sidecar.schema.json")


def sidecar_problems(directory: str) -> list[str]:
    """Every recording sidecar under `directory` that does not validate against
    formats/sidecar.schema.json, with the reason."""
    import json

    import jsonschema

    with open(SIDECAR_SCHEMA) as f:
        validator = jsonschema.Draft202012Validator(json.load(f))
    problems = []
    for root, _, files in os.walk(directory):
        for name in files:
            if not name.endswith(".json") or name.startswith("."):
                continue
            path = os.path.join(root, name)
            try:
                with open(path) as f:
                    doc = json.load(f)
            except (OSError, ValueError):
                continue
            if not isinstance(doc, dict) or doc.get("schema") != "wholecall-sidecar/1":
                continue
            for err in validator.iter_errors(doc):
                problems.append(f"{path}: {'/'.join(map(str, err.absolute_path))}: {err.message}")
    return problems


@pytest.fixture(scope="session", autouse=True)
def every_sidecar_validates(tmp_path_factory):
    """After the session (of this xdist worker): every sidecar any test left in its temp
    dirs validates against the documented schema."""
    yield
    problems = sidecar_problems(str(tmp_path_factory.getbasetemp()))
    assert not problems, "sidecars that do not validate:\n" + "\n".join(problems[:20])
