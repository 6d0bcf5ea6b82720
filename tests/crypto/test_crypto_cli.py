"""`wholecall decrypt` / `wholecall recover`: keys from files or env only, no output unless authentic."""

from __future__ import annotations

import os

import pytest
from crypto_helpers import apply, known_audio, rsa_pems, writer_ops

from wholecall.cli.decrypt import decrypt_command
from wholecall.cli.recover import recover_command
from wholecall.controller.cipher import AESCBCCipher, EnvelopeCipher, new_iv, new_key
from wholecall.worker.crypto import open_sink
from wholecall.worker.sink import FileSink

OPS = writer_ops(known_audio(20_000), chunk=4000, refresh_every=2)


@pytest.fixture
def plain(tmp_path) -> bytes:
    sink = FileSink(str(tmp_path / "plain.wav"))
    apply(sink, OPS)
    sink.finish()
    data = (tmp_path / "plain.wav").read_bytes()
    os.unlink(tmp_path / "plain.wav")
    return data


@pytest.fixture(autouse=True)
def clean_env(monkeypatch) -> None:
    for name in ("WHOLECALL_KEY", "WHOLECALL_IV", "WHOLECALL_PASSPHRASE"):
        monkeypatch.delenv(name, raising=False)


def _record(path, wire, ops=OPS) -> str:
    sink = open_sink(str(path), wire)
    apply(sink, ops)
    sink.finish()
    return str(path)


def _cbc(tmp_path) -> tuple[AESCBCCipher, str, str]:
    key, iv = new_key(192), new_iv()
    (tmp_path / "k").write_text(key + "\n")
    (tmp_path / "iv").write_text(iv)
    return AESCBCCipher(key, iv), str(tmp_path / "k"), str(tmp_path / "iv")


def test_envelope_decrypt(tmp_path, plain, capsys) -> None:
    priv, pub = rsa_pems()
    (tmp_path / "key.pem").write_bytes(priv)
    enc = _record(tmp_path / "rec.wav.enc", EnvelopeCipher(pub).to_wire())
    assert decrypt_command(["--private-key", str(tmp_path / "key.pem"), enc]) == 0
    assert (tmp_path / "rec.wav").read_bytes() == plain
    assert os.stat(tmp_path / "rec.wav").st_mode & 0o777 == 0o600
    assert decrypt_command(["--private-key", str(tmp_path / "key.pem"), enc]) == 1
    assert "rec.wav exists (use --force" in capsys.readouterr().err
    assert decrypt_command(["--private-key", str(tmp_path / "key.pem"), enc, "--force"]) == 0
    assert decrypt_command(["--private-key", str(tmp_path / "key.pem"), enc, "--check"]) == 0
    assert "ok (" in capsys.readouterr().out


def test_tampered_envelope_writes_nothing(tmp_path, capsys) -> None:
    priv, pub = rsa_pems()
    (tmp_path / "key.pem").write_bytes(priv)
    enc = _record(tmp_path / "rec.wav.enc", EnvelopeCipher(pub).to_wire())
    data = bytearray(open(enc, "rb").read())
    data[400] ^= 0x80
    open(enc, "wb").write(data)
    assert decrypt_command(["--private-key", str(tmp_path / "key.pem"), enc, "-o", str(tmp_path / "out.wav")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("wholecall decrypt: error: authentication failed")
    assert sorted(os.listdir(tmp_path)) == ["key.pem", "rec.wav.enc"]  # no output, no temp file


def test_wrong_private_key(tmp_path, capsys) -> None:
    _, pub = rsa_pems(0)
    (tmp_path / "other.pem").write_bytes(rsa_pems(1)[0])
    enc = _record(tmp_path / "rec.wav.enc", EnvelopeCipher(pub).to_wire())
    assert decrypt_command(["--private-key", str(tmp_path / "other.pem"), enc]) == 1
    assert "file is encrypted for key sha256:" in capsys.readouterr().err
    assert not (tmp_path / "rec.wav").exists()


def test_cbc_decrypt_from_files_and_env(tmp_path, plain, monkeypatch, capsys) -> None:
    cipher, kf, ivf = _cbc(tmp_path)
    enc = _record(tmp_path / "rec.wav", cipher.to_wire())
    assert decrypt_command(["--key-file", kf, "--iv-file", ivf, enc, "-o", str(tmp_path / "a.wav")]) == 0
    assert (tmp_path / "a.wav").read_bytes() == plain
    wire = cipher.to_wire()
    (tmp_path / "k.bin").write_bytes(wire["key"])  # raw key file (openssl rand 24 > k.bin)
    assert decrypt_command(["--key-file", str(tmp_path / "k.bin"), "--iv-file", ivf, enc,
                            "-o", str(tmp_path / "b.wav")]) == 0
    monkeypatch.setenv("WHOLECALL_KEY", wire["key"].hex())
    monkeypatch.setenv("WHOLECALL_IV", wire["iv"].hex())
    assert decrypt_command([enc, "-o", str(tmp_path / "c.wav")]) == 0
    assert (tmp_path / "b.wav").read_bytes() == (tmp_path / "c.wav").read_bytes() == plain
    assert capsys.readouterr().err == ""


def test_cbc_errors_never_show_the_key(tmp_path, capsys, monkeypatch) -> None:
    cipher, kf, ivf = _cbc(tmp_path)
    key_hex = cipher.to_wire()["key"].hex()
    enc = _record(tmp_path / "rec.wav", cipher.to_wire())
    out = str(tmp_path / "o.wav")
    cases = [
        (["--iv-file", ivf, enc, "-o", out], 1, "no AES key: give --key-file FILE or set WHOLECALL_KEY"),
        (["--key-file", kf, enc, "-o", out], 1, "no IV: give --iv-file FILE or set WHOLECALL_IV"),
        (["--key-file", kf, "--iv-file", ivf, enc], 1, "does not end in .enc: give the output name with -o"),
        (["--key-file", str(tmp_path / "nope"), "--iv-file", ivf, enc, "-o", out], 1, "cannot read key file"),
        (["--key", key_hex, enc, "-o", out], 2, "--key is not accepted: a key on the command line is visible in ps"),
        (["--iv=" + key_hex[:32], enc], 2, "--iv is not accepted"),
        (["-K", key_hex, enc], 2, "-K is not accepted"),
        (["--private-key", kf, enc, "-o", out], 1, "is not an envelope recording"),
        ([enc, "-o", out, "--bogus"], 2, "unrecognized arguments: --bogus"),
    ]
    for argv, code, message in cases:
        assert decrypt_command(argv) == code, argv
        err = capsys.readouterr().err
        assert message in err, (argv, err)
        assert key_hex not in err
    # Wrong IV: CBC decrypts (only the first block is garbled), the WAV check refuses to write it.
    monkeypatch.setenv("WHOLECALL_KEY", key_hex)
    monkeypatch.setenv("WHOLECALL_IV", new_iv())
    assert decrypt_command([enc, "-o", out]) == 1
    assert "not a valid WAV (not a RIFF/WAVE file): wrong IV" in capsys.readouterr().err
    assert not os.path.exists(out)
    assert decrypt_command([enc, "-o", out, "--no-wav-check"]) == 0
    # Wrong key: bad padding (or, 1 in 256, a non-WAV): either way no output.
    monkeypatch.setenv("WHOLECALL_KEY", new_key(192))
    assert decrypt_command([enc, "-o", str(tmp_path / "p.wav")]) == 1
    assert not os.path.exists(tmp_path / "p.wav")
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] == []


def test_decrypt_and_recover_an_intermediate(tmp_path, capsys) -> None:
    priv, pub = rsa_pems()
    (tmp_path / "key.pem").write_bytes(priv)
    sink = open_sink(str(tmp_path / "r.wav"), EnvelopeCipher(pub).to_wire())
    apply(sink, OPS[:6])
    part = str(tmp_path / "r.wav.wcpart")
    assert decrypt_command(["--private-key", str(tmp_path / "key.pem"), part, "-o", str(tmp_path / "peek.wav")]) == 0
    assert "unfinished intermediate" in capsys.readouterr().err
    assert (tmp_path / "peek.wav").read_bytes()[:4] == b"RIFF"
    assert recover_command(["--private-key", str(tmp_path / "key.pem"), str(tmp_path)]) == 0
    assert "r.wav.wcpart: skipped: a running recording is writing it" in capsys.readouterr().out
    assert sink.keep() == part  # the "worker" is gone: its descriptor, and lock, with it; its intermediate stays
    assert recover_command([str(tmp_path)]) == 1
    assert "give --private-key PEM" in capsys.readouterr().err
    assert recover_command(["--private-key", str(tmp_path / "key.pem"), str(tmp_path)]) == 0
    assert f"{part} -> {tmp_path / 'r.wav'}" in capsys.readouterr().out
    assert decrypt_command(["--private-key", str(tmp_path / "key.pem"), "--check", str(tmp_path / "r.wav")]) == 0


def test_recover_cbc_with_env_key(tmp_path, monkeypatch, capsys) -> None:
    cipher, kf, ivf = _cbc(tmp_path)
    sink = open_sink(str(tmp_path / "r.wav"), cipher.to_wire())
    apply(sink, OPS[:6])
    sink.keep()  # the "worker" is gone, its lock with it
    monkeypatch.setenv("WHOLECALL_KEY", new_key(192))
    assert recover_command([str(tmp_path / "r.wav.wcpart")]) == 1
    assert "wrong AES key" in capsys.readouterr().err
    monkeypatch.setenv("WHOLECALL_KEY", cipher.to_wire()["key"].hex())
    assert recover_command([str(tmp_path / "r.wav.wcpart")]) == 0
    assert decrypt_command(["--key-file", kf, "--iv-file", ivf, "--check", str(tmp_path / "r.wav")]) == 0
