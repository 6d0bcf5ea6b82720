"""Encrypted recordings end to end through the recorder: openssl decrypts them to exactly
the bytes an unencrypted recording of the same audio holds; envelopes decrypt with the
private key via `wholecall decrypt`; no plaintext is on disk while or after recording."""

import os
import shutil
import subprocess

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import feed, tone
from wholecall.controller import AESCBCCipher, Cause, EnvelopeCipher, new_iv, new_key

pytestmark = pytest.mark.skipif(not shutil.which("openssl"), reason="needs the openssl command")


def record_pair(ctl, name, fmt, cipher, mode="mixed"):
    """Record the same audio on two channels at once: plain and encrypted."""
    a, b = tone(523, 1.3, 7000), tone(1477, 1.3, 3000)
    chans = []
    for suffix, c in (("plain", None), ("enc", cipher)):
        ch = ctl.incoming_call()
        ch.answer()
        assert ch.WholeCallRecorder.start(f"{name}-{suffix}.wav", file_format=fmt, cipher=c, recording_mode=mode)
        chans.append(ch)
    for ch in chans:
        feed(ch, a, b)
    for ch in chans:
        assert ch.WholeCallRecorder.stop()
        assert ch.WholeCallRecorder.cause() is Cause.ABORTED
    return [ch.WholeCallRecorder.last_result.path for ch in chans]


@pytest.mark.parametrize("bits", [128, 192, 256])
@pytest.mark.parametrize("fmt", ["alaw", "ulaw", "s16bit", "u8bit", "ima", "oki"])
def test_openssl_decrypts_to_the_plain_recording(ctl, tmp_path, bits, fmt):
    key, iv = new_key(bits), new_iv()
    plain, enc = record_pair(ctl, f"{fmt}{bits}", fmt, AESCBCCipher(key, iv))
    out = tmp_path / "dec.wav"
    subprocess.run(["openssl", "enc", "-d", f"-aes-{bits}-cbc", "-K", key, "-iv", iv, "-in", enc, "-out", str(out)],
                   check=True)
    want = open(plain, "rb").read()
    assert len(want) > 5000
    assert out.read_bytes() == want
    assert open(enc, "rb").read()[:4] != b"RIFF"
    assert oct(os.stat(enc).st_mode & 0o777) == "0o600"


def test_separate_mode_encrypts_too(ctl, tmp_path):
    key, iv = new_key(256), new_iv()
    plain, enc = record_pair(ctl, "sep", "s16bit", AESCBCCipher(key, iv), mode="separate")
    out = tmp_path / "dec.wav"
    subprocess.run(["openssl", "enc", "-d", "-aes-256-cbc", "-K", key, "-iv", iv, "-in", enc, "-out", str(out)],
                   check=True)
    assert out.read_bytes() == open(plain, "rb").read()


def test_envelope_round_trip_and_no_plaintext_on_disk(ctl, tmp_path):
    priv = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem_pub = priv.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    pem_priv = tmp_path / "key.pem"
    pem_priv.write_bytes(priv.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    a = tone(700, 2.0, 9000)
    ch = ctl.incoming_call()
    ch.answer()
    rec = ch.WholeCallRecorder
    assert rec.start("env.wav", file_format="s16bit", cipher=EnvelopeCipher(pem_pub))
    feed(ch, a, None)
    needle = a[4000:4008].tobytes()

    def scan():
        for root in (ctl.config.recordings_dir, os.environ.get("TMPDIR", "/tmp")):
            for dirpath, dirnames, files in os.walk(root):
                if dirpath.count(os.sep) - root.count(os.sep) >= 12:
                    dirnames[:] = []  # nothing of ours is that deep; another program's tree may be deeper than recursion
                for f in files:
                    p = os.path.join(dirpath, f)
                    if not os.path.isfile(p) or os.path.getsize(p) > 50_000_000:
                        continue
                    try:
                        data = open(p, "rb").read()
                    except OSError:
                        continue
                    if p.endswith(".wav") and "dec" in f:
                        continue
                    assert needle not in data, f"plaintext audio in {p}"
                    if os.path.dirname(p) == os.path.realpath(ctl.config.recordings_dir):
                        assert b"WAVE" not in data[:64], f"plaintext WAV header in {p}"

    import time
    time.sleep(1.5)  # let the worker flush audio to the intermediate
    scan()
    assert rec.stop()
    scan()
    out = tmp_path / "dec.wav"
    r = subprocess.run(["wholecall", "decrypt", "--private-key", str(pem_priv), rec.last_result.path, "-o", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    import soundfile as sf
    data, rate = sf.read(out, dtype="int16")
    assert rate == 8000 and np.array_equal(data[:15000], a[:15000])


@pytest.mark.parametrize("suffix", [".wcpart", ".wctmp"])
def test_a_name_whose_encrypted_intermediate_exists_is_refused(ctl, answered, suffix):
    """The intermediate of an unfinished encrypted recording (a killed worker's .wcpart, a
    crash's .wctmp) belongs to that recording: `wholecall recover` turns it into the file of
    that name. A new recording of the name would have its finish remove it (the .wctmp) or
    be overwritten."""
    from wholecall.controller import Error

    path = os.path.join(ctl.config.recordings_dir, "pending.wav" + suffix)
    with open(path, "wb") as f:
        f.write(b"left by a crash")
    for cipher in (None, AESCBCCipher(new_key(), new_iv())):
        with pytest.raises(Error, match=f"pending.wav{suffix} exists, the intermediate of an unfinished encrypted"):
            answered.WholeCallRecorder.start("pending.wav", cipher=cipher)
    assert open(path, "rb").read() == b"left by a crash"
    assert not os.path.exists(path[:-len(suffix)])


def test_recover_leaves_a_running_recording_alone(ctl, tmp_path):
    """`wholecall recover DIR` while a call records into DIR/calls/: the worker holds its
    .wcpart's lock, so recover skips it (it used to publish a cut-short file and delete the
    live intermediate: the call then ended ERROR, all later audio lost)."""
    import sys
    import time

    import soundfile as sf

    key, iv = new_key(256), new_iv()
    a = np.random.default_rng(3).integers(-12000, 12000, 6 * 8000).astype(np.int16)
    ch = ctl.incoming_call()
    ch.answer()
    rec = ch.WholeCallRecorder
    assert rec.start("calls/live.wav", file_format="s16bit", cipher=AESCBCCipher(key, iv), dtmf_elim=False)
    feed(ch, a[:3 * 8000], None)
    part = os.path.join(ctl.config.recordings_dir, "calls", "live.wav.wcpart")
    deadline = time.monotonic() + 10
    while os.path.getsize(part) < 8000 and time.monotonic() < deadline:  # the worker has flushed audio
        time.sleep(0.05)
    env = dict(os.environ, WHOLECALL_KEY=key)
    r = subprocess.run([sys.executable, "-m", "wholecall.cli", "recover", ctl.config.recordings_dir], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"{part}: skipped: a running recording is writing it" in r.stdout
    feed(ch, a[3 * 8000:], None)
    assert rec.stop()
    assert rec.cause() is Cause.ABORTED, rec.last_result.error
    out = tmp_path / "out.wav"
    r = subprocess.run([sys.executable, "-m", "wholecall.cli", "decrypt", rec.last_result.path, "-o", str(out)],
                       env=dict(env, WHOLECALL_IV=iv), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    data, _ = sf.read(out, dtype="int16")
    assert np.array_equal(data, a)
    assert sorted(os.listdir(os.path.dirname(part))) == ["live.wav", "live.wav.json"]
