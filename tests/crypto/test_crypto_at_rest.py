"""No plaintext at rest (during writing, during finish, after), and what survives a SIGKILLed worker.

What survives a kill while recording: ``<name>`` does not exist; ``<name>.wcpart``
holds, encrypted, every byte the WAV writer had written, with the WAV header as
of the writer's last refresh. `recover` makes the normal encrypted ``<name>``:
byte-for-byte the plain file's content at the kill (``repair_wav=False``), or
that content with RIFF/data sizes fixed to cover all whole blocks (default).
Killed during finish: the intermediate is intact, a ``.wctmp`` of ciphertext may
exist, and `recover` gives the same result.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile

import pytest
from crypto_helpers import apply, known_audio, leaks, openssl_decrypt, rsa_pems, writer_ops

import wholecall.formats.encrypted as cf
from wholecall.controller.cipher import AESCBCCipher, EnvelopeCipher, EnvelopePrivateKey, new_iv, new_key, validate
from wholecall.worker.crypto import find_parts, open_sink, recover
from wholecall.worker.sink import FileSink

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
AUDIO = known_audio(80_000, seed=7)
# header, 4 chunks, size refresh (2 patches), 1 more chunk: the header is stale by 8000 bytes
OPS = writer_ops(AUDIO, chunk=8000, refresh_every=4)
KILL_AT = 1 + 4 + 2 + 1


def _scan(directory: str) -> dict[str, list[str]]:
    found = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            problems = leaks(open(path, "rb").read(), AUDIO)
            if problems:
                found[path] = problems
    return found


def _cipher(scheme: str) -> tuple[dict, dict]:
    """(wire dict for the sink, credentials for recovery/decryption)."""
    if scheme == "aes-cbc":
        c = AESCBCCipher(new_key(), new_iv())
        w = c.to_wire()
        return w, {"key": w["key"], "iv": w["iv"], "cipher": c}
    priv, pub = rsa_pems()
    return EnvelopeCipher(pub).to_wire(), {"private_key_pem": priv, "cipher": EnvelopePrivateKey(priv)}


def _decrypt_final(path: str, cred: dict) -> bytes:
    if "key" in cred:
        return openssl_decrypt(path, cred["key"], cred["iv"])
    fd = os.open(path, os.O_RDONLY)
    try:
        return b"".join(cf.iter_decrypt(fd, private_key=cf.load_private_key(cred["private_key_pem"])))
    finally:
        os.close(fd)


@pytest.mark.parametrize("scheme", ["aes-cbc", "envelope"])
def test_no_plaintext_during_writing_finish_and_after(tmp_path, monkeypatch, scheme: str) -> None:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    rec = tmp_path / "rec"
    rec.mkdir()
    wire, cred = _cipher(scheme)
    sink = open_sink(str(rec / "call.wav"), wire)
    for i, op in enumerate(OPS):
        apply(sink, [op])
        if i % 3 == 0:
            assert _scan(str(tmp_path)) == {}
    assert os.listdir(rec) == ["call.wav.wcpart"]

    seen_during_finish = []
    real_link = cf.link_no_replace

    def scan_then_link(src: str, dst: str) -> None:
        seen_during_finish.append(sorted(os.listdir(rec)))
        assert _scan(str(tmp_path)) == {}
        real_link(src, dst)

    monkeypatch.setattr(cf, "link_no_replace", scan_then_link)
    sink.finish()
    assert seen_during_finish == [["call.wav.wcpart", "call.wav.wctmp"]]
    assert _scan(str(tmp_path)) == {}
    assert os.listdir(rec) == ["call.wav"] and os.listdir(tmpdir) == []
    plain = FileSink(str(tmp_path / "plain.wav"))
    apply(plain, OPS)
    plain.finish()
    assert _decrypt_final(str(rec / "call.wav"), cred) == (tmp_path / "plain.wav").read_bytes()
    # The detector itself works: the plain recording trips it.
    assert sorted(_scan(str(tmp_path))[str(tmp_path / "plain.wav")]) == ["RIFF", "WAVE", "audio run at 44", "fmt "]


def test_discard_leaves_nothing(tmp_path) -> None:
    wire, _ = _cipher("aes-cbc")
    sink = open_sink(str(tmp_path / "a.wav"), wire)
    apply(sink, OPS[:5])
    sink.discard()
    done = open_sink(str(tmp_path / "b.wav"), wire)
    done.finish()
    done.discard()
    assert os.listdir(tmp_path) == []


WORKER = r"""
import json, os, signal, sys, time
sys.path[:0] = [os.environ["REPO"], os.environ["HERE"]]
import wholecall.formats.encrypted as cf
from crypto_helpers import apply, known_audio, writer_ops
from wholecall.worker.crypto import open_sink
cfg = json.loads(sys.stdin.readline())          # the key comes on stdin, not argv
wire = {k: bytes.fromhex(v) if k in ("key", "iv") else v for k, v in cfg["wire"].items()}
sink = open_sink(cfg["path"], wire)
ops = writer_ops(known_audio(80_000, seed=7), chunk=8000, refresh_every=4)
apply(sink, ops[:cfg["stop"]])
if cfg["phase"] == "finish":
    cf.link_no_replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)   # die with .wctmp complete
    sink.finish()
print("ready", flush=True)
time.sleep(60)
"""


def _run_and_kill(path: str, wire: dict, stop: int, phase: str) -> None:
    wire_json = {k: v.hex() if isinstance(v, bytes) and k in ("key", "iv") else
                 (v.decode() if isinstance(v, bytes) else v) for k, v in wire.items()}
    env = dict(os.environ, REPO=REPO, HERE=HERE)
    proc = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env=env, text=True)
    assert proc.stdin and proc.stdout
    proc.stdin.write(json.dumps({"path": path, "wire": wire_json, "stop": stop, "phase": phase}) + "\n")
    proc.stdin.flush()
    if phase == "record":
        assert proc.stdout.readline() == "ready\n"
        os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def _plain_at(tmp_path, ops) -> bytes:
    p = FileSink(str(tmp_path / "plain.wav"))
    apply(p, ops)
    p.finish()
    data = (tmp_path / "plain.wav").read_bytes()
    os.unlink(tmp_path / "plain.wav")
    return data


@pytest.mark.parametrize("scheme", ["aes-cbc", "envelope"])
def test_worker_killed_while_recording(tmp_path, scheme: str) -> None:
    rec = tmp_path / "rec"
    rec.mkdir()
    wire, cred = _cipher(scheme)
    final = str(rec / "call.wav")
    _run_and_kill(final, wire, KILL_AT, "record")

    # What is on disk: only the intermediate, ciphertext only.
    assert os.listdir(rec) == ["call.wav.wcpart"] and find_parts(str(rec)) == [final + ".wcpart"]
    assert _scan(str(rec)) == {}
    expected = _plain_at(tmp_path, OPS[:KILL_AT])  # what a plain recording would hold at the kill
    assert len(expected) == 44 + 5 * 8000 and int.from_bytes(expected[40:44], "little") == 4 * 8000

    creds = {k: v for k, v in cred.items() if k in ("key", "private_key_pem")}
    with pytest.raises(ValueError, match="wrong AES key|is for key"):
        recover(final + ".wcpart", **({"key": os.urandom(32)} if "key" in creds else
                                      {"private_key_pem": rsa_pems(1)[0]}))
    assert recover(final + ".wcpart", repair_wav=False, **creds) == final
    assert os.listdir(rec) == ["call.wav"]
    assert os.stat(final).st_mode & 0o777 == 0o600
    assert _decrypt_final(final, cred) == expected  # byte for byte the plain file at the kill
    assert not validate(final, cred["cipher"])  # like the plain file: sizes stale by the last 8000 bytes


@pytest.mark.parametrize("scheme", ["aes-cbc", "envelope"])
def test_recover_repairs_the_wav_by_default(tmp_path, scheme: str) -> None:
    wire, cred = _cipher(scheme)
    final = str(tmp_path / "call.wav")
    _run_and_kill(final, wire, KILL_AT, "record")
    creds = {k: v for k, v in cred.items() if k in ("key", "private_key_pem")}
    recover(final + ".wcpart", **creds)
    assert validate(final, cred["cipher"])
    got = _decrypt_final(final, cred)
    assert got[44:] == AUDIO[:5 * 8000]  # every byte written before the kill is audio in the file
    assert int.from_bytes(got[40:44], "little") == 5 * 8000


@pytest.mark.parametrize("scheme", ["aes-cbc", "envelope"])
def test_worker_killed_during_finish(tmp_path, scheme: str) -> None:
    wire, cred = _cipher(scheme)
    final = str(tmp_path / "call.wav")
    _run_and_kill(final, wire, len(OPS), "finish")
    assert sorted(os.listdir(tmp_path)) == ["call.wav.wcpart", "call.wav.wctmp"]
    assert _scan(str(tmp_path)) == {}
    creds = {k: v for k, v in cred.items() if k in ("key", "private_key_pem")}
    recover(final + ".wcpart", **creds)
    assert os.listdir(tmp_path) == ["call.wav"]
    assert _decrypt_final(final, cred) == _plain_at(tmp_path, OPS)
    assert validate(final, cred["cipher"])


def test_recover_refuses_to_overwrite(tmp_path) -> None:
    wire, cred = _cipher("aes-cbc")
    final = str(tmp_path / "call.wav")
    _run_and_kill(final, wire, KILL_AT, "record")
    open(final, "wb").write(b"someone else's")
    with pytest.raises(FileExistsError):
        recover(final + ".wcpart", key=cred["key"])
    assert open(final, "rb").read() == b"someone else's"
    assert sorted(os.listdir(tmp_path)) == ["call.wav", "call.wav.wcpart"]
