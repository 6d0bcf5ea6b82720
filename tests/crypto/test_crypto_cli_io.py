"""`wholecall decrypt` as an operator runs it, in a real process: key files in the forms
tools write them, output to devices, FIFOs and stdout, input from pipes."""

from __future__ import annotations

import os
import stat
import threading

import pytest
from crypto_helpers import cbc_file, rsa_pems, run_cli

from wholecall.formats import encrypted as cf
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


def test_force_writes_into_a_descriptor_alias_and_never_replaces_it(tmp_path, enc) -> None:
    """`-o /dev/stdout --force` (a symlink to /proc/self/fd/1): the plaintext goes to stdout
    and the link stays a link (the rename over it replaced the system's /dev/stdout)."""
    link = tmp_path / "stdout"
    link.symlink_to("/proc/self/fd/1")
    for force in ([], ["--force"]):
        r = run_cli("decrypt", enc, "-o", str(link), *force, env=ENV)
        assert r.returncode == 0, r.stderr
        assert r.stdout == PLAIN
        assert link.is_symlink() and os.readlink(link) == "/proc/self/fd/1"
    r = run_cli("decrypt", enc, "-o", "-", env=ENV)
    assert (r.returncode, r.stdout, r.stderr) == (0, PLAIN, b"")


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a character device needs root")
def test_force_writes_into_a_character_device(tmp_path, enc) -> None:
    null = tmp_path / "null"
    os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # what /dev/null is
    r = run_cli("decrypt", enc, "-o", str(null), "--force", env=ENV)
    assert r.returncode == 0, r.stderr
    assert stat.S_ISCHR(os.lstat(null).st_mode)
    assert sorted(os.listdir(tmp_path)) == ["null", "r.wav.enc"]  # no temp file left either


def test_a_fifo_is_written_into(tmp_path, enc) -> None:
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()))
    reader.start()
    try:
        r = run_cli("decrypt", enc, "-o", fifo, "--force", env=ENV)
    finally:
        if reader.is_alive() and not got:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # let the reader go if the CLI never opened it
        reader.join(10)
    assert r.returncode == 0, r.stderr
    assert got == [PLAIN]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_what_cannot_be_written_into_is_refused_naming_it(tmp_path, enc) -> None:
    (tmp_path / "d").mkdir()
    r = run_cli("decrypt", enc, "-o", str(tmp_path / "d"), "--force", env=ENV)
    assert r.returncode == 1
    assert f"{tmp_path / 'd'} is a directory: give the name of a file" in r.stderr.decode()
    primary, secondary = os.openpty()
    try:
        r = run_cli("decrypt", enc, "-o", "-", env=ENV, stdout=secondary)
    finally:
        os.close(primary)
        os.close(secondary)
    assert r.returncode == 1
    assert "refusing to write audio to a terminal" in r.stderr.decode()
    assert sorted(os.listdir(tmp_path)) == ["d", "r.wav.enc"]


@pytest.mark.parametrize("name", ["-", "/dev/stdin"])
def test_input_from_a_pipe(tmp_path, enc, name) -> None:
    """`cat rec.enc | wholecall decrypt -`: read once, in order (it was pread: 'cannot write
    out.wav: Illegal seek', blaming the output)."""
    data = open(enc, "rb").read()
    out = str(tmp_path / "out.wav")
    r = run_cli("decrypt", name, "-o", out, env=ENV, input=data)
    assert r.returncode == 0, r.stderr
    assert open(out, "rb").read() == PLAIN
    r = run_cli("decrypt", name, "-o", "-", env=ENV, input=data)
    assert (r.returncode, r.stdout) == (0, PLAIN)
    if name == "-":
        r = run_cli("decrypt", name, env=ENV, input=data)
        assert r.returncode == 1
        assert "reading stdin: give the output with -o OUT (- for stdout)" in r.stderr.decode()
    r = run_cli("decrypt", name, "-o", "-", env=ENV, input=data[:-5])  # a stream's size is known at its end
    assert (r.returncode, r.stdout) == (1, b"")
    assert "not a positive multiple of 16" in r.stderr.decode()


def test_envelope_from_a_pipe_is_authenticated_before_any_output(tmp_path) -> None:
    priv, pub = rsa_pems()
    (tmp_path / "key.pem").write_bytes(priv)
    enc = cf.EnvelopeEncryptor(cf.load_public_key(pub))
    data = enc.header + enc.update(PLAIN) + enc.finalize()
    args = ("decrypt", "--private-key", str(tmp_path / "key.pem"), "-", "-o", "-")
    r = run_cli(*args, input=data)
    assert (r.returncode, r.stdout) == (0, PLAIN), r.stderr
    bad = bytearray(data)
    bad[len(data) // 2] ^= 1
    r = run_cli(*args, input=bytes(bad))
    assert (r.returncode, r.stdout) == (1, b"")
    assert "authentication failed" in r.stderr.decode()
    r = run_cli(*args, input=data[:-10])
    assert (r.returncode, r.stdout) == (1, b"")


def test_an_unreadable_input_is_named_as_the_input(tmp_path) -> None:
    (tmp_path / "d").mkdir()
    r = run_cli("decrypt", str(tmp_path / "d"), "-o", str(tmp_path / "out.wav"), env=ENV)
    assert r.returncode == 1
    assert r.stderr.decode().strip() == f"wholecall decrypt: error: cannot read {tmp_path / 'd'}: Is a directory"
