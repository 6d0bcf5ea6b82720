"""Fixtures for the conformance suite: one real controller (2 pinned workers) per test
module, a fresh answered call per test, unique file names, and a spy on what the
controller sends to its workers.

Tests in a module run one after another (xdist `--dist loadfile`), so sharing the
controller is safe; tests that kill or freeze workers make their own controllers.
"""

from __future__ import annotations

import itertools
import re

import pytest

from wholecall.protocol import StartJob


def make_controller(root: str, **kw):
    from wholecall.controller import Controller

    kw.setdefault("workers", 2)
    kw.setdefault("max_channels", 128)
    kw.setdefault("ring_ms", 4096)
    return Controller(recordings_dir=root, **kw).start()


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """The module's controller; closed (every channel hung up, workers stopped) at the end."""
    ctl = make_controller(str(tmp_path_factory.mktemp("rec")))
    yield ctl
    ctl.close()


@pytest.fixture
def rec_dir(service) -> str:
    return service.config.recordings_dir


@pytest.fixture
def call(service):
    """An ANSWERED call on the module's controller; closed after the test."""
    ch = service.incoming_call()
    ch.answer()
    yield ch
    ch.close()


@pytest.fixture
def other_call(service):
    """A second ANSWERED call (for bridges and conferences)."""
    ch = service.incoming_call()
    ch.answer()
    yield ch
    ch.close()


_counter = itertools.count()


@pytest.fixture
def name(request):
    """`name()` -> a file name no other test uses (the recorder refuses existing files)."""
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)[:80]

    def make(ext: str = ".wav") -> str:
        return f"{base}-{next(_counter)}{ext}"

    return make


@pytest.fixture
def sent(service, monkeypatch):
    """The StartJob messages the controller sends to its workers during the test."""
    starts: list[StartJob] = []
    sup = service.supervisor
    real = sup.send

    def spy(worker_index, msg):
        if isinstance(msg, StartJob):
            starts.append(msg)
        real(worker_index, msg)

    monkeypatch.setattr(sup, "send", spy)
    return starts
