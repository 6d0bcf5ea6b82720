"""The operations settings of `wholecall serve` (flags and TOML keys) and the JSON log line."""

from __future__ import annotations

import io
import json
import logging

import pytest

from wholecall.protocol import logline
from wholecall.service.config import ConfigError, load


def test_log_format_from_the_file_and_the_flag_wins(tmp_path) -> None:
    conf = tmp_path / "serve.toml"
    conf.write_text('log-format = "json"\nlog_level = "warning"\nops_listen = "127.0.0.1:9191"\nworker_priority = 0\n')
    cfg = load(["--config", str(conf)])
    assert (cfg.log_format, cfg.log_level, cfg.ops_host, cfg.ops_port, cfg.worker_priority) == \
        ("json", "WARNING", "127.0.0.1", 9191, 0)
    assert load(["--config", str(conf), "--log-format", "text"]).log_format == "text"
    assert load([]).log_format == "text" and load([]).ops_host == ""


def test_sync_on_stop_from_the_flag_or_the_file(tmp_path) -> None:
    assert load([]).sync_on_stop is False and load(["--sync-on-stop"]).sync_on_stop is True
    conf = tmp_path / "serve.toml"
    conf.write_text("sync-on-stop = true\n")
    assert load(["--config", str(conf)]).sync_on_stop is True
    conf.write_text('sync_on_stop = "yes"\n')
    with pytest.raises(ConfigError, match="sync_on_stop must be true or false, got 'yes'"):
        load(["--config", str(conf)])


@pytest.mark.parametrize("argv, message", [
    (["--log-format", "xml"], "log_format must be text or json, got 'xml'"),
    (["--log-level", "loud"], "log_level must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'LOUD'"),
    (["--ops-listen", "9090"], "ops_listen '9090' is not HOST:PORT"),
    (["--arena-dir", "/no/such/dir"], "arena_dir '/no/such/dir' is not a directory"),
    (["--worker-priority", "21"], "worker_priority must be an integer from 0 to 20, got 21"),
])
def test_bad_operations_settings_are_named(argv, message) -> None:
    with pytest.raises(ConfigError) as e:
        load(argv)
    assert str(e.value).startswith(message)


def test_a_json_line_carries_the_fields_and_stays_one_line() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logline.JsonLines())
    handler.addFilter(logline.Defaults(worker=3))
    log = logging.getLogger("wholecall.test.logline")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("Channel(%d) recorder %s -> %s", 7, "RECORDING", "STOPPING",
                    extra={"event": "recording_state", "channel": 7, "old": "RECORDING", "new": "STOPPING",
                           "recording": "a/b.wav"})
        try:
            raise ValueError("two\nlines")
        except ValueError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["event"] == "recording_state" and first["level"] == "warning"
    assert (first["channel"], first["old"], first["new"], first["recording"], first["worker"]) == \
        (7, "RECORDING", "STOPPING", "a/b.wav", 3)
    assert first["msg"] == "Channel(7) recorder RECORDING -> STOPPING"
    assert second["event"] == "log" and "ValueError: two\nlines" in second["exc"]


def test_stream_procs_flag_key_and_its_public_url(tmp_path) -> None:
    from wholecall.service.config import stream_count

    conf = tmp_path / "serve.toml"
    conf.write_text('stream-procs = 3\nwebsocket_url = "wss://rec.example.com/s{proc}"\n')
    cfg = load(["--config", str(conf)])
    assert cfg.stream_procs == 3 and stream_count(cfg) == 3
    assert load(["--config", str(conf), "--stream-procs", "2"]).stream_procs == 2
    assert stream_count(load(["--websocket-url", "wss://rec.example.com"])) == 1  # one address: one process
    assert stream_count(load([])) >= 1
    with pytest.raises(ConfigError, match=r"websocket_url 'wss://rec.example.com' must contain \{proc\} with stream_procs 2"):
        load(["--websocket-url", "wss://rec.example.com", "--stream-procs", "2"])
    with pytest.raises(ConfigError, match="stream_procs must be a non-negative integer, got -1"):
        load(["--stream-procs", "-1"])


def test_a_reorder_window_past_its_limit_is_refused_by_name() -> None:
    assert load(["--reorder-ms", "1500"]).reorder_ms == 1500  # past the jitter buffer's default max_ahead of 1 s
    with pytest.raises(ConfigError, match="reorder_ms must be at most 5000"):
        load(["--reorder-ms", "6000"])
    with pytest.raises(ConfigError, match="reorder_ms must be a non-negative number, got nan"):
        load(["--reorder-ms", "nan"])


def test_a_handshake_timeout_must_be_a_positive_number_of_seconds() -> None:
    assert load([]).handshake_timeout == 10.0
    assert load(["--handshake-timeout", "2.5"]).handshake_timeout == 2.5
    for bad in ("0", "-1", "nan", "4000"):
        with pytest.raises(ConfigError, match="handshake_timeout must be a number of seconds above 0"):
            load(["--handshake-timeout", bad])


def test_process_counts_follow_the_cpus_this_process_may_use_not_the_hosts() -> None:
    """A reviewer's find: in a 4-CPU cpuset of a 64-CPU host, 32 ingest and 8 stream processes
    (~180 and ~110 MB each) were started beside 4 workers. Run here under one CPU."""
    import subprocess
    import sys

    code = ("import os; os.sched_setaffinity(0, {0}); "
            "from wholecall.service.config import load, ingest_count, stream_count; "
            "c = load([]); print(ingest_count(c), stream_count(c))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1", "1"]
