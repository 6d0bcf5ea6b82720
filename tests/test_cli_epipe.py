"""Every `wholecall` command that prints on stdout ends quietly when its reader has gone
(`wholecall info F | head -1`): exit 141 as the shell reports a SIGPIPE death, nothing on
stderr (no BrokenPipeError traceback, no "Exception ignored"), real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from wholecall.formats import encrypted as cf
from wholecall.formats import wav

KEY, IV = bytes(range(32)), bytes(range(16))


def _closed_stdout(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `wholecall ARGS` with stdout a pipe whose read end is already closed."""
    r, w = os.pipe()
    os.close(r)
    try:
        full = {k: v for k, v in os.environ.items() if not k.startswith("WHOLECALL_")}
        full.update(env or {})
        return subprocess.run([sys.executable, "-m", "wholecall.cli", *args], stdout=w, stderr=subprocess.PIPE,
                              env=full, timeout=60)
    finally:
        os.close(w)


@pytest.fixture
def files(tmp_path) -> dict[str, str]:
    plain = wav.header(wav.get_codec("alaw"), 1, 8000, 8000, 8000) + bytes(8000)
    (tmp_path / "r.wav").write_bytes(plain)
    # A sidecar bigger than a pipe's buffer: the write itself fails, not only the last flush.
    (tmp_path / "r.wav.json").write_text(json.dumps({"digits": [{"digit": "1", "offset": i} for i in range(9000)]}))
    enc = cf.CbcEncryptor(KEY, IV)
    (tmp_path / "r.wav.enc").write_bytes(enc.update(plain) + enc.finalize())
    return {"wav": str(tmp_path / "r.wav"), "enc": str(tmp_path / "r.wav.enc")}


@pytest.mark.parametrize("cmd", ["info", "repair", "help", "decrypt-check", "decrypt-stdout", "recover"])
def test_a_reader_that_went_away_ends_the_command_quietly(files, cmd) -> None:
    args = {"info": ["info", files["wav"]], "repair": ["repair", files["wav"]], "help": ["--help"],
            "recover": ["recover", os.path.dirname(files["wav"])],
            "decrypt-check": ["decrypt", "--check", files["enc"]],
            "decrypt-stdout": ["decrypt", files["enc"], "-o", "-"]}[cmd]
    p = _closed_stdout(args, env={"WHOLECALL_KEY": KEY.hex(), "WHOLECALL_IV": IV.hex()})
    assert p.stderr == b""
    assert p.returncode == 141
