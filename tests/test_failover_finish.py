"""A worker that dies while finishing an encrypted recording, after the final file got its
name: the recording is complete, and the job ends with the cause its worker was finishing
it with (not ERROR "recording already finished by the worker that died"), the leftover
intermediate removed. The death is placed exactly: strace delays one system call of the
finish (the unlink of the .wcpart, or the fsync after it) past the stall timeout, and the
supervisor kills the worker there, as it kills any wedged worker."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import time

import numpy as np
import pytest
import soundfile as sf
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import tone
from wholecall.controller import AESCBCCipher, Cause, EnvelopeCipher, new_iv, new_key
from wholecall.formats import encrypted as cf

pytestmark = pytest.mark.skipif(not shutil.which("strace"), reason="needs strace")

#: (system call, its number counted from the attach) where the worker is held: the 3rd
#: unlink of a finish is the intermediate's (a stale .wctmp, the linked .wctmp, the
#: .wcpart); the 3rd fsync is the directory's after that unlink (temp file, directory
#: after the link, directory after the unlink).
AFTER_LINK = ("unlink,unlinkat", 3)
AFTER_PART_REMOVED = ("fsync", 3)


def _hold(pid: int, where: tuple[str, int]) -> subprocess.Popen:
    """strace on worker `pid` delaying the `where` call by 5 s; returns once it is attached."""
    calls, when = where
    st = subprocess.Popen(["strace", "-f", "-qq", "-o", "/dev/null", "-p", str(pid), "-e", f"trace={calls}",
                           "-e", f"inject={calls}:delay_enter=5000000:when={when}"], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/status") as f:
            if any(line.startswith("TracerPid:") and line.split()[1] != "0" for line in f):
                break
        time.sleep(0.02)
    else:
        st.kill()
        st.wait()
        pytest.skip("strace could not attach (ptrace not permitted here)")
    time.sleep(0.3)  # every thread of the worker traced, not only the first
    return st


def _decrypt(path: str, cipher, priv) -> np.ndarray:
    with open(path, "rb") as f:
        if priv is not None:
            plain = b"".join(cf.iter_decrypt(f.fileno(), private_key=priv))
        else:
            wire = cipher.to_wire()
            plain = b"".join(cf.iter_decrypt(f.fileno(), key=wire["key"], iv=wire["iv"]))
    return sf.read(io.BytesIO(plain), dtype="int16")[0]


@pytest.mark.parametrize("scheme,where", [("aes-cbc", AFTER_LINK), ("envelope", AFTER_LINK),
                                          ("aes-cbc", AFTER_PART_REMOVED)])
def test_a_stop_finished_by_a_dying_worker_ends_aborted(make_controller, scheme, where):
    ctl = make_controller(workers=1)
    priv = None
    if scheme == "envelope":
        priv = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cipher = EnvelopeCipher(priv.public_key().public_bytes(serialization.Encoding.PEM,
                                                               serialization.PublicFormat.SubjectPublicKeyInfo))
    else:
        cipher = AESCBCCipher(new_key(256), new_iv())
    ch = ctl.incoming_call()
    ch.answer()
    rec = ch.WholeCallRecorder
    assert rec.start("x.wav", file_format="s16bit", cipher=cipher, dtmf_elim=False)
    a = np.random.default_rng(5).integers(-9000, 9000, 2 * 8000).astype(np.int16)
    ch.inbound.write(a)
    time.sleep(0.5)
    st = _hold(ctl.supervisor.workers[0].proc.pid, where)
    try:
        assert rec.stop()
    finally:
        st.terminate()
        st.wait()
    r = rec.last_result
    assert rec.cause() is Cause.ABORTED, r.error
    assert ctl.stats()["restarts"] == 1  # the worker did die in the finish
    assert sorted(os.listdir(os.path.dirname(r.path))) == ["x.wav", "x.wav.json"]
    got = _decrypt(r.path, cipher, priv)
    np.testing.assert_array_equal(got, a)
    assert r.samples == len(a) and r.bytes == os.path.getsize(r.path)
    assert not ctl.arena.keys[ch.inbound.slot].any() and ctl.arena.job[ch.inbound.slot] == 0  # legs released


def test_a_silence_end_finished_by_a_dying_worker_keeps_its_cause(make_controller):
    """No stop was asked for: the worker decided SILENCE itself, and only its durable
    record (in the arena) still says so when it dies finishing the file."""
    ctl = make_controller(workers=1)
    cipher = AESCBCCipher(new_key(128), new_iv())
    ch = ctl.incoming_call()
    ch.answer()
    rec = ch.WholeCallRecorder
    assert rec.start("s.wav", file_format="alaw", cipher=cipher, milliseconds_max_silence=500)
    st = _hold(ctl.supervisor.workers[0].proc.pid, AFTER_LINK)
    try:
        ch.inbound.write(tone(440, 1.0))
        ch.inbound.write(np.zeros(2 * 8000, np.int16))
        cause = rec.wait_until_finished(20)
    finally:
        st.terminate()
        st.wait()
    assert cause is Cause.SILENCE, rec.last_result
    assert ctl.stats()["restarts"] == 1
    r = rec.last_result
    assert sorted(os.listdir(os.path.dirname(r.path))) == ["s.wav", "s.wav.json"]
    got = _decrypt(r.path, cipher, None)
    assert r.samples == len(got) and 8000 <= len(got) < 8000 + 0.5 * 8000
