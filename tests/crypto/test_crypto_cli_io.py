"""`wholecall decrypt` as an operator runs it, in a real process: key files in the forms
tools write them, output to devices, FIFOs and stdout, input from pipes."""

from __future__ import annotations

import pytest
from crypto_helpers import cbc_file, run_cli

from wholecall.formats import wav

KEY, IV = bytes(range(32)), bytes(range(16))
ENV = {"WHOLECALL_KEY": KEY.hex(), "WHOLECALL_IV": IV.hex()}
PLAIN = wav.header(wav.get_codec("alaw"), 1, 8000, 800, 800) + bytes(range(200)) * 4


@pytest.fixture
def enc(tmp_path) -> str:
    return cbc_file(str(tmp_path / "r.wav.enc"), PLAIN, KEY, IV)


@pytest.mark.parametrize("text", ["0x" + KEY.hex() + "\n", "0X" + KEY.hex().upper(),
                                  KEY.hex()[:60] + "\n" + KEY.hex()[60:] + "\n",  # xxd -p
                                  " ".join(KEY.hex()[i:i + 8] for i in range(0, 64, 8)) + "\r\n"],
                         ids=["0x", "0X-upper", "xxd-p", "spaced-crlf"])
def test_hex_key_files_in_the_forms_tools_write(tmp_path, enc, text) -> None:
    """A key file is hex text as WHOLECALL_KEY takes it (0x prefix too), wrapped or not."""
    (tmp_path / "k").write_text(text)
    (tmp_path / "iv").write_text("0x" + IV.hex()[:20] + "\n" + IV.hex()[20:])
    r = run_cli("decrypt", "--key-file", str(tmp_path / "k"), "--iv-file", str(tmp_path / "iv"), enc,
                "-o", str(tmp_path / "out.wav"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out.wav").read_bytes() == PLAIN
