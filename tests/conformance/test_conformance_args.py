"""Every argument of record() and start(): names, defaults, accepted values reaching the
worker (seen in the start command and in the file), and bad values refused with an
Error naming the argument, before anything is started or created.

Codec correctness, DTMF accuracy and cryptography have their own suites; here only
their plumbing is checked."""

from __future__ import annotations

import inspect
import os

import numpy as np
import pytest
from conformance_helpers import alaw_exact, feed, feed_both, files_under, has_tone, mix, read, tone

from wholecall.controller import AESCBCCipher, Cause, Error, RecorderState, WholeCallRecorder, new_iv, new_key, validate
from wholecall.formats.codecs import CODECS
from wholecall.formats.wav import read_info
from wholecall.worker.codecs.g711 import ulaw_decode, ulaw_encode

FORMATS = ("alaw", "ulaw", "oki", "ima", "s16bit", "u8bit")
RATES = (6000, 8000, 11000, 11025)
_EMPTY = inspect.Parameter.empty


def test_record_signature():
    """record(): "record(filename, file_format='alaw', rate=8000, seconds_timeout=None, max_bytes=0,
    milliseconds_max_silence=0, milliseconds_initial_silence=0, dtmf_elim=True,
    recording_mode='mixed', cipher=None)"
    record(): "the name of the file to record."
    record(): "the file format to use. Default is alaw."
    record(): "the rate at which to record. Default is 8000."
    record(): "the amount of time allocated to the record job. Default is None seconds (no timeout)."
    record(): "the maximum size allowed for the file. Default is 0 bytes (no limit)."
    record(): "the amount of silence (in milliseconds) after which to stop recording. Default is 0 seconds (no limit)."
    record(): "the amount of silence (in milliseconds) to wait for audio before starting the
    recording. Default is 0 seconds (no limit)."
    record(): "option to eliminate DTMF from the recording. Default is True."
    record(): "option to set the recording mode. Default is mixed."
    """
    params = list(inspect.signature(WholeCallRecorder.record).parameters.values())[1:]
    assert [(p.name, p.default) for p in params] == [
        ("filename", _EMPTY), ("file_format", "alaw"), ("rate", 8000), ("seconds_timeout", None),
        ("max_bytes", 0), ("milliseconds_max_silence", 0), ("milliseconds_initial_silence", 0),
        ("dtmf_elim", True), ("recording_mode", "mixed"), ("cipher", None),
    ]


def test_start_signature():
    """start(): "start(filename, file_format='alaw', rate=8000, max_bytes=0, milliseconds_max_silence=0,
    milliseconds_initial_silence=0, dtmf_elim=True, recording_mode='mixed', cipher=None)"
    start(): "the name of the file to record."
    start(): "the file format to use. Default is alaw."
    start(): "the rate at which to record. Default is 8000."
    start(): "the maximum size allowed for the file. Default is 0 bytes (no limit)."
    start(): "the amount of silence after which to stop recording. Default is 0 seconds (no limit)."
    start(): "the amount of silence (in milliseconds) to wait for audio before starting the
    recording. Default is 0 seconds (no limit)."
    start(): "option to eliminate DTMF from the recording. Default is True."
    start(): "option to set the recording mode. Default is mixed."
    """
    params = list(inspect.signature(WholeCallRecorder.start).parameters.values())[1:]
    assert [(p.name, p.default) for p in params] == [
        ("filename", _EMPTY), ("file_format", "alaw"), ("rate", 8000), ("max_bytes", 0),
        ("milliseconds_max_silence", 0), ("milliseconds_initial_silence", 0),
        ("dtmf_elim", True), ("recording_mode", "mixed"), ("cipher", None),
    ]


def test_defaults_reach_the_worker(call, sent, name, rec_dir):
    """start(): "the file format to use. Default is alaw."
    start(): "the rate at which to record. Default is 8000."
    start(): "the maximum size allowed for the file. Default is 0 bytes (no limit)."
    start(): "option to eliminate DTMF from the recording. Default is True."
    start(): "option to set the recording mode. Default is mixed."
    record(): "the file format to use. Default is alaw."
    record(): "the rate at which to record. Default is 8000."
    start(): "the name of the file to record."
    """
    fn = name()
    rec = call.WholeCallRecorder
    assert rec.start(fn)
    feed_both(call, tone(440, 0.2))
    assert rec.stop()
    msg = sent[-1]
    assert (msg.file_format, msg.rate, msg.max_bytes, msg.ms_max_silence, msg.ms_initial_silence,
            msg.dtmf_elim, msg.mode, msg.cipher) == ("alaw", 8000, 0, 0, 0, True, "mixed", None)
    assert msg.path == os.path.join(os.path.realpath(rec_dir), fn)
    info = read_info(msg.path)
    assert (info.format_tag, info.rate, info.channels) == (6, 8000, 1)


def test_record_defaults_reach_the_worker(call, sent, name):
    """record(): "the name of the file to record."
    record(): "the maximum size allowed for the file. Default is 0 bytes (no limit)."
    record(): "option to eliminate DTMF from the recording. Default is True."
    record(): "option to set the recording mode. Default is mixed."
    record(): "Record an entire call."
    """
    from conformance_helpers import in_thread, wait_for

    rec = call.WholeCallRecorder
    t, box = in_thread(lambda: rec.record(name()))
    assert wait_for(lambda: rec.state() is RecorderState.RECORDING)
    feed_both(call, tone(440, 0.2))
    assert rec.stop()
    t.join(5)
    assert box["result"] is Cause.ABORTED
    msg = sent[-1]
    assert (msg.file_format, msg.rate, msg.max_bytes, msg.ms_max_silence, msg.ms_initial_silence,
            msg.dtmf_elim, msg.mode, msg.cipher) == ("alaw", 8000, 0, 0, 0, True, "mixed", None)


def test_explicit_arguments_reach_the_worker(call, sent, name):
    """start(): "option to eliminate DTMF from the recording. Default is True."
    start(): "the maximum size allowed for the file. Default is 0 bytes (no limit)."
    start(): "the amount of silence after which to stop recording. Default is 0 seconds (no limit)."
    start(): "the amount of silence (in milliseconds) to wait for audio before starting the
    recording. Default is 0 seconds (no limit)."
    """
    rec = call.WholeCallRecorder
    assert rec.start(name(), file_format="ulaw", rate=11025, max_bytes=123456, milliseconds_max_silence=4500,
                     milliseconds_initial_silence=7000, dtmf_elim=False, recording_mode="mixed")
    assert rec.stop()
    msg = sent[-1]
    assert (msg.file_format, msg.rate, msg.max_bytes, msg.ms_max_silence, msg.ms_initial_silence,
            msg.dtmf_elim, msg.mode) == ("ulaw", 11025, 123456, 4500, 7000, False, "mixed")
    assert (np.int64(8000) == 8000) and rec.start(name(), rate=np.int64(8000), max_bytes=np.int32(0))
    assert rec.stop() and sent[-1].rate == 8000 and type(sent[-1].rate) is int


@pytest.mark.parametrize("file_format", FORMATS)
@pytest.mark.parametrize("rate", RATES)
def test_every_format_and_rate_is_recorded_as_asked(call, name, file_format, rate):
    """record(): "The optional argument file_format is the audio codec in which to record the media."
    record(): "The default is alaw (G.711 A-law), other options are ulaw (G.711 mu-law), oki (OKI
    ADPCM), ima (IMA ADPCM) s16bit (signed 16-bit PCM) and u8bit (unsigned 8-bit PCM)."
    record(): "The optional argument rate is the recording rate in Hz."
    record(): "The default is 8000, other options are 6000, 11000 and 11025."
    start(): "The optional argument file_format is the audio codec in which to record the media."
    start(): "The default is alaw (G.711 A-law), other options are ulaw (G.711 mu-law), oki (OKI
    ADPCM), ima (IMA ADPCM) s16bit (signed 16-bit PCM) and u8bit (unsigned 8-bit PCM)."
    start(): "The optional argument rate is the recording rate in Hz."
    start(): "The default is 8000, other options are 6000, 11000 and 11025."
    """
    rec = call.WholeCallRecorder
    assert rec.start(name(), file_format=file_format, rate=rate)
    feed_both(call, tone(1000, 0.5))
    assert rec.stop() and rec.cause() is Cause.ABORTED
    codec = CODECS[file_format]
    info = read_info(rec.last_result.path)
    assert (info.format_tag, info.channels, info.rate, info.bits_per_sample) == (
        codec.format_tag, 1, rate, codec.bits_per_sample)
    frames = rec.last_result.samples
    assert rate // 2 - rate // 100 <= frames <= rate // 2 + codec.unit_frames  # 0.5 s of audio
    if file_format != "oki":  # OKI in WAV: ffmpeg only (codec suite); the rest via libsndfile
        data, file_rate = read(rec.last_result.path)
        assert file_rate == rate and has_tone(data, 1000, rate)  # the rate is the sample rate


def test_g711_converts_to_16bit_without_degradation(call, other_call, name):
    """record(): "Of those, G.711 A-law, G.711 mu-law and 16-bit PCM provide the best quality since
    the first two match those used on calls, and they can convert to the last without degradation."
    start(): "Of those, G.711 A-law, G.711 mu-law and 16-bit PCM provide the best quality since
    the first two match those used on calls, and they can convert to the last without degradation."

    Call audio that came as G.711 is recorded bit-exactly in its own law and in s16bit.
    """
    rng = np.random.default_rng(7)
    speechlike = np.rint(rng.standard_normal(8000) * 3000).astype(np.int16)
    for law, exact in (("alaw", alaw_exact), ("ulaw", lambda x: ulaw_decode(ulaw_encode(x)))):
        x = exact(speechlike)  # what a G.711 call leg carries
        g, p = call.WholeCallRecorder, other_call.WholeCallRecorder
        assert g.start(name(), file_format=law) and p.start(name(), file_format="s16bit")
        feed(call, x, None)
        feed(other_call, x, None)
        assert g.stop() and p.stop()
        assert np.array_equal(read(g.last_result.path)[0], x)
        assert np.array_equal(read(p.last_result.path)[0], x)


def test_8000_is_the_call_rate_and_bit_exact(call, name):
    """record(): "Of those, 8000 provides the best quality since it matches the sampling rate used on calls."
    start(): "Of those, 8000 provides the best quality since it matches the sampling rate used on calls."
    record(): "This function is provided to allow the recording of an entire call (both sides
    of the conversation) to a WAV file."
    start(): "This function is provided to start the recording of an entire call (both sides of
    the conversation) to a WAV file."
    """
    rng = np.random.default_rng(8)
    a = np.rint(rng.standard_normal(6000) * 2000).astype(np.int16)
    b = np.rint(rng.standard_normal(6000) * 2000).astype(np.int16)
    rec = call.WholeCallRecorder
    assert rec.start(name(), file_format="s16bit", rate=8000)
    feed(call, a, b)
    assert rec.stop()
    data, rate = read(rec.last_result.path)
    assert rate == 8000 and np.array_equal(data, mix(a, b))


def test_dtmf_elim_reaches_the_worker(call, sent, name):
    """start(): "option to eliminate DTMF from the recording. Default is True."
    record(): "option to eliminate DTMF from the recording. Default is True."

    Plumbing only (DTMF accuracy is tests/dsp): the flag is in the start command, and
    with dtmf_elim=False a keyed digit stays in the file.
    """
    from wholecall.controller.media import dtmf_tone

    rec = call.WholeCallRecorder
    for flag in (True, False):
        assert rec.start(name(), dtmf_elim=flag)
        feed_both(call, np.concatenate([dtmf_tone("9", 200), np.zeros(1600, np.int16)]))
        assert rec.stop()
        assert sent[-1].dtmf_elim is flag
    data, _ = read(rec.last_result.path)
    assert has_tone(data, 852) and has_tone(data, 1477)


def test_cipher_reaches_the_worker_and_the_file_is_encrypted(call, sent, name):
    """start(): "if the recorded file is to be encrypted, supply the cipher so it can be
    encrypted when recording is completed."
    record(): "if the recorded file is to be encrypted, supply the cipher so it can be encrypted
    when recording is completed."

    Plumbing only (cryptography is tests/crypto): the cipher travels to the worker and
    the completed file is ciphertext that decrypts to a valid WAV.
    """
    cipher = AESCBCCipher(new_key(), new_iv())
    rec = call.WholeCallRecorder
    assert rec.start(name(), cipher=cipher)
    feed_both(call, tone(440, 0.5))
    assert rec.stop() and rec.cause() is Cause.ABORTED
    assert sent[-1].cipher == cipher.to_wire()
    with open(rec.last_result.path, "rb") as f:
        assert f.read(4) != b"RIFF"
    assert validate(rec.last_result.path, cipher)


def test_filename_is_relative_to_the_recordings_dir(call, name, rec_dir):
    """start(): "the name of the file to record."

    Decided: names are relative to `recordings_dir`; missing subdirectories are created
    (owner-only); an absolute path inside the directory is accepted; files are 0600.
    """
    rec = call.WholeCallRecorder
    sub = name("")
    assert rec.start(f"{sub}/deeper/a.wav")
    assert rec.stop()
    path = os.path.join(rec_dir, sub, "deeper", "a.wav")
    assert os.path.isfile(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(os.path.join(rec_dir, sub)).st_mode & 0o777 == 0o700
    absolute = os.path.join(os.path.realpath(rec_dir), name())
    assert rec.start(absolute)
    assert rec.stop() and os.path.isfile(absolute)
    import pathlib

    assert rec.start(pathlib.Path(name()))
    assert rec.stop()


# -- bad input -------------------------------------------------------------------------------


def _private_key():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from wholecall.controller import EnvelopePrivateKey

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return EnvelopePrivateKey(pem)


BAD = [
    ("file_format", "mp3"), ("file_format", "ALAW"), ("file_format", None), ("file_format", 6),
    ("rate", 16000), ("rate", 44100), ("rate", 0), ("rate", -8000), ("rate", 8000.0), ("rate", "8000"),
    ("rate", True), ("rate", None),
    ("max_bytes", -1), ("max_bytes", 1.5), ("max_bytes", "100"), ("max_bytes", None), ("max_bytes", True),
    ("max_bytes", 10),
    ("milliseconds_max_silence", -1), ("milliseconds_max_silence", 0.5), ("milliseconds_max_silence", "1"),
    ("milliseconds_max_silence", None), ("milliseconds_max_silence", float("nan")),
    ("milliseconds_initial_silence", -1), ("milliseconds_initial_silence", 2.5),
    ("milliseconds_initial_silence", "1000"), ("milliseconds_initial_silence", None),
    ("milliseconds_initial_silence", True),
    ("dtmf_elim", "yes"), ("dtmf_elim", 1), ("dtmf_elim", None),
    ("recording_mode", "stereo"), ("recording_mode", "Mixed"), ("recording_mode", None),
    ("cipher", "secret"), ("cipher", 123), ("cipher", {"scheme": "aes-cbc"}), ("cipher", "private"),
]


def _bad_value(value):
    return _private_key() if value == "private" else value


@pytest.mark.parametrize("func", ["start", "record"])
@pytest.mark.parametrize("arg,value", BAD, ids=[f"{a}={v!r}" for a, v in BAD])
def test_bad_argument_raises_error_naming_it(call, sent, name, rec_dir, func, arg, value):
    """start(): "The default is alaw (G.711 A-law), other options are ulaw (G.711 mu-law), oki (OKI
    ADPCM), ima (IMA ADPCM) s16bit (signed 16-bit PCM) and u8bit (unsigned 8-bit PCM)."
    start(): "The default is 8000, other options are 6000, 11000 and 11025."
    start(): "The optional argument recording_mode is either mixed or separate."
    record(): "The default is 8000, other options are 6000, 11000 and 11025."
    record(): "The optional argument recording_mode is either mixed or separate."

    Decided: any other value is refused with Error naming the argument; nothing is
    started, no file or directory is created. Sizes and durations are non-negative
    integers; max_bytes must leave room for more than the WAV header.
    """
    rec = call.WholeCallRecorder
    before = files_under(rec_dir)
    fn = name()
    with pytest.raises(Error, match=arg):
        getattr(rec, func)(fn, **{arg: _bad_value(value)})
    assert rec.state() is RecorderState.IDLE and rec.cause() is Cause.NONE
    assert not sent and files_under(rec_dir) == before


@pytest.mark.parametrize("file_format", ["oki", "ima"])
def test_separate_mode_refuses_adpcm(call, sent, name, rec_dir, file_format):
    """record(): "When recording separate channels file_format must be one of alaw, ulaw, u8bit and
    s16bit , and max_bytes, milliseconds_max_silence and milliseconds_initial_silence are ignored."
    start(): "When recording separate channels file_format must be one of alaw, ulaw, u8bit and
    s16bit , and max_bytes, milliseconds_max_silence and milliseconds_initial_silence are ignored."
    """
    before = files_under(rec_dir)
    for func in ("start", "record"):
        with pytest.raises(Error, match="file_format"):
            getattr(call.WholeCallRecorder, func)(name(), file_format=file_format, recording_mode="separate")
    assert not sent and files_under(rec_dir) == before


@pytest.mark.parametrize("value", [-1, "1", 0, float("nan"), True, [1]])
def test_bad_record_timeout_raises_error_naming_it(call, sent, name, value):
    """record(): "the amount of time allocated to the record job. Default is None seconds (no timeout)."

    Decided: seconds_timeout is None or a positive number of seconds.
    """
    with pytest.raises(Error, match="seconds_timeout"):
        call.WholeCallRecorder.record(name(), seconds_timeout=value)
    assert not sent


@pytest.mark.parametrize("value", [-1, "1", float("nan"), True])
def test_bad_wait_timeout_raises_error_naming_it(call, name, value):
    """wait_until_finished(): "the amount of time allocated to wait for the record job to
    terminate. Default is 120 seconds."
    """
    rec = call.WholeCallRecorder
    assert rec.start(name())
    with pytest.raises(Error, match="seconds_timeout"):
        rec.wait_until_finished(value)
    assert rec.state() is RecorderState.RECORDING
    assert rec.stop()


def test_infinite_wait_is_accepted(call, name):
    """wait_until_finished(): "Giving a value of None for seconds_timeout will enable an infinite wait."

    float("inf") means the same as None (it must not overflow the lock's timeout).
    """
    from conformance_helpers import in_thread

    rec = call.WholeCallRecorder
    assert rec.start(name())
    t, box = in_thread(lambda: rec.wait_until_finished(float("inf")))
    t.join(0.3)
    assert t.is_alive()
    assert rec.stop()
    t.join(5)
    assert box.get("result") is Cause.ABORTED


def _filename_cases(rec_dir: str, outside: str, existing: str, existing_dir: str) -> list[tuple[object, str]]:
    link_out = os.path.join(rec_dir, "link-out")
    if not os.path.lexists(link_out):
        os.symlink(outside, link_out)
    dangling = os.path.join(rec_dir, "dangling.wav")
    if not os.path.lexists(dangling):
        os.symlink(os.path.join(outside, "nowhere.wav"), dangling)
    return [
        ("", "empty"), ("   ", "empty"), (None, "string"), (123, "string"), (b"x.wav", "string"),
        ("../x.wav", "outside"), ("sub/../../x.wav", "outside"), (os.path.join(outside, "x.wav"), "outside"),
        ("/etc/x.wav", "outside"), (".", "outside"), (rec_dir, "outside"), ("link-out/x.wav", "outside"),
        ("dangling.wav", "outside"), ("dir/", "directory"), ("nul\0.wav", "NUL"),
        (existing, "already exists"), (existing_dir, "already exists"),
    ]


def test_bad_filenames_raise_error_naming_filename(call, sent, rec_dir, tmp_path, name):
    """start(): "the name of the file to record."
    record(): "the name of the file to record."

    Decided: the name is relative to the recordings directory and may not leave it (no
    `..`, no absolute path elsewhere, no symlink out of it), may not be empty, and may
    not name anything that exists (a recording is never overwritten). Error names
    `filename`; nothing is started or created.
    """
    outside = str(tmp_path / "outside")
    os.makedirs(outside, exist_ok=True)
    existing = name()
    with open(os.path.join(rec_dir, existing), "wb") as f:
        f.write(b"keep me")
    existing_dir = name("")
    os.mkdir(os.path.join(rec_dir, existing_dir))
    cases = _filename_cases(rec_dir, outside, existing, existing_dir)
    before = files_under(rec_dir)
    for func in ("start", "record"):
        for filename, why in cases:
            with pytest.raises(Error, match="filename") as e:
                getattr(call.WholeCallRecorder, func)(filename)
            assert why in str(e.value), (filename, str(e.value))
    assert not sent and files_under(rec_dir) == before and os.listdir(outside) == []
    with open(os.path.join(rec_dir, existing), "rb") as f:
        assert f.read() == b"keep me"
