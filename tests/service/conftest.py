"""Fixtures of the service tests (helpers in serve_helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from serve_helpers import Server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A shared server with a wide re-order window, so a loaded test machine cannot make packets late."""
    srv = Server(str(tmp_path_factory.mktemp("serve")), "--reorder-ms", "400")
    yield srv
    assert srv.terminate() == 0, srv.output()
