"""Fixtures for the DSP tests: cached espeak-ng speech, and a report of the measured
figures (detection rates, false detections per hour, residual, correlation) printed at
the end of the run, so the numbers behind each assertion are visible."""

from __future__ import annotations

import shutil

import pytest
from dtmftools import cached_speech

#: name -> printable value, filled by the tests, printed by pytest_terminal_summary.
REPORT: dict[str, str] = {}


@pytest.fixture(scope="session")
def report() -> dict[str, str]:
    return REPORT


@pytest.fixture(scope="session")
def speech(tmp_path_factory):
    """(samples at 8 kHz, voices) of an hour of espeak-ng speech, every language."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    cache = tmp_path_factory.getbasetemp() / "dsp-speech-cache"
    cache.mkdir(exist_ok=True)
    return cached_speech(str(cache), 60.0)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not REPORT:
        return
    tr = terminalreporter
    tr.section("DTMF bank: measured figures")
    width = max(len(k) for k in REPORT)
    for k, v in REPORT.items():
        tr.write_line(f"{k.ljust(width)}  {v}")
