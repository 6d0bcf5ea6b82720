"""SIZE: max_bytes, header included, never exceeded; reaching it ends the job with SIZE.
Against real workers, every file format, and the resampled rates."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from conformance_helpers import DELAY, alaw_exact, feed, feed_both, mix, read, silence, tone

from wholecall.controller import Cause, RecorderState
from wholecall.formats.codecs import CODECS
from wholecall.formats.wav import header_bytes, read_info

FORMATS = ("alaw", "ulaw", "oki", "ima", "s16bit", "u8bit")


def test_size_ends_the_job_at_max_bytes_with_the_first_audio(call, name):
    """record(): "the maximum size allowed for the file. Default is 0 bytes (no limit)."
    Cause: "record has stopped due to the maximum file size being reached."
    record(): "This could be that the maximum file size (max_bytes) has been reached; the
    silence timeout (milliseconds_max_silence) has been triggered or the initial silence
    timeout (milliseconds_initial_silence) has been triggered."

    Decided: the whole file, header included, never exceeds max_bytes; it holds the
    first audio of the call; the job ends with SIZE as soon as the file is full.
    """
    rec = call.WholeCallRecorder
    max_bytes = 58 + 4000  # A-law, 8 kHz: 4000 samples = 0.5 s
    a, b = tone(440, 1.0), tone(1000, 1.0)
    assert rec.start(name(), max_bytes=max_bytes)
    feed(call, a, b)
    assert rec.wait_until_finished(5) is Cause.SIZE
    assert rec.state() is RecorderState.IDLE
    path = rec.last_result.path
    assert os.path.getsize(path) == max_bytes == rec.last_result.bytes
    data, _ = read(path)
    assert np.array_equal(data, alaw_exact(mix(a, b))[:4000])


def test_size_is_reached_exactly(call, name):
    """start(): "the maximum size allowed for the file. Default is 0 bytes (no limit)."
    Cause: "record has stopped due to the maximum file size being reached."

    Audio that fills the file to the byte ends the job: no further audio is needed.
    """
    rec = call.WholeCallRecorder
    assert rec.start(name(), max_bytes=58 + 3200)
    feed_both(call, tone(440, (3200 + DELAY) / 8000))  # the limit plus the DTMF look-ahead, no more
    assert rec.wait_until_finished(5) is Cause.SIZE
    assert rec.last_result.bytes == 58 + 3200 and rec.last_result.samples == 3200


@pytest.mark.parametrize("file_format", FORMATS)
def test_max_bytes_holds_for_every_format(call, name, file_format):
    """start(): "the maximum size allowed for the file. Default is 0 bytes (no limit)."
    start(): "This could be that the maximum file size (max_bytes) has been reached; the
    silence timeout (milliseconds_max_silence) has been triggered or the initial silence
    timeout (milliseconds_initial_silence) has been triggered."
    Cause: "record has stopped due to the maximum file size being reached."
    """
    rec = call.WholeCallRecorder
    max_bytes = header_bytes(file_format, 1) + 2001  # odd on purpose: RIFF pads odd data
    assert rec.start(name(), file_format=file_format, max_bytes=max_bytes)
    feed_both(call, tone(440, 1.0))
    assert rec.wait_until_finished(5) is Cause.SIZE
    size = os.path.getsize(rec.last_result.path)
    unit = CODECS[file_format].unit_bytes(1)
    assert max_bytes - unit - 1 <= size <= max_bytes  # full, never over
    info = read_info(rec.last_result.path)
    assert info.riff_size == size - 8 and info.data_offset + info.data_size + (info.data_size & 1) == size


@pytest.mark.parametrize("rate", [6000, 11000, 11025])
def test_max_bytes_holds_at_every_rate(call, name, rate):
    """record(): "The default is 8000, other options are 6000, 11000 and 11025."
    Cause: "record has stopped due to the maximum file size being reached."
    """
    rec = call.WholeCallRecorder
    max_bytes = 58 + 3000
    assert rec.start(name(), rate=rate, max_bytes=max_bytes)
    feed_both(call, tone(440, 1.0))
    assert rec.wait_until_finished(5) is Cause.SIZE
    assert os.path.getsize(rec.last_result.path) == max_bytes
    assert read_info(rec.last_result.path).rate == rate


def test_file_never_exceeds_max_bytes_while_recording(call, name):
    """record(): "the maximum size allowed for the file. Default is 0 bytes (no limit)."

    Watched from outside while the worker writes: no moment over the limit.
    """
    rec = call.WholeCallRecorder
    fn = name()
    max_bytes = 44 + 2 * 6000
    assert rec.start(fn, file_format="s16bit", max_bytes=max_bytes)
    path = rec._path
    seen: list[int] = []
    done = threading.Event()

    def watch():
        while not done.is_set():
            seen.append(os.path.getsize(path))

    t = threading.Thread(target=watch)
    t.start()
    for _ in range(4):
        feed_both(call, tone(300, 0.5))
    assert rec.wait_until_finished(5) is Cause.SIZE
    done.set()
    t.join()
    assert max(seen) <= max_bytes and os.path.getsize(path) == max_bytes


def test_max_bytes_zero_means_no_limit(call, name):
    """record(): "To turn off the termination conditions, max_bytes=0 means no limit;
    milliseconds_max_silence=0 means no silence timeout and milliseconds_initial_silence=0
    means no initial silence timeout."
    """
    rec = call.WholeCallRecorder
    assert rec.start(name(), max_bytes=0)
    for _ in range(3):
        feed_both(call, np.concatenate([tone(440, 0.5), silence(0.5)]))
    assert rec.state() is RecorderState.RECORDING
    assert rec.stop() and rec.cause() is Cause.ABORTED
    assert rec.last_result.samples == 24000


def test_size_with_initial_silence_counts_only_what_is_written(call, name):
    """start(): "This could be that the maximum file size (max_bytes) has been reached; the
    silence timeout (milliseconds_max_silence) has been triggered or the initial silence
    timeout (milliseconds_initial_silence) has been triggered."

    Leading silence dropped by the initial-silence rule does not use up max_bytes.
    """
    rec = call.WholeCallRecorder
    assert rec.start(name(), max_bytes=58 + 4000, milliseconds_initial_silence=5000)
    feed_both(call, silence(2.0))
    assert rec.state() is RecorderState.RECORDING
    feed_both(call, tone(440, 1.0))
    assert rec.wait_until_finished(5) is Cause.SIZE
    data, _ = read(rec.last_result.path)
    assert len(data) == 4000 and np.abs(data[-1000:].astype(int)).max() > 1000  # the tone is in


@pytest.mark.parametrize("scheme", ["aes-cbc", "envelope"])
def test_encrypted_file_respects_max_bytes(call, name, scheme):
    """record(): "the maximum size allowed for the file. Default is 0 bytes (no limit)."
    record(): "if the recorded file is to be encrypted, supply the cipher so it can be encrypted
    when recording is completed."
    """
    from wholecall.controller import AESCBCCipher, EnvelopeCipher, new_iv, new_key

    if scheme == "aes-cbc":
        cipher = AESCBCCipher(new_key(), new_iv())
    else:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cipher = EnvelopeCipher(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    rec = call.WholeCallRecorder
    max_bytes = 58 + 4000
    assert rec.start(name(), max_bytes=max_bytes, cipher=cipher)
    feed_both(call, tone(440, 1.0))
    assert rec.wait_until_finished(5) is Cause.SIZE
    size = os.path.getsize(rec.last_result.path)
    assert max_bytes - 400 < size <= max_bytes  # capped on disk, and not by a wide margin


@pytest.mark.parametrize("file_format", FORMATS)
def test_the_smallest_max_bytes_holds_the_header_and_one_unit_of_audio(call, name, file_format):
    """start(): "the maximum size allowed for the file. Default is 0 bytes (no limit)."

    Decided (README, ambiguous sentence 9): a max_bytes that cannot hold more than the
    header raises Error. "More" is one unit of audio: a sample (with its RIFF pad byte when
    the data is odd-sized), an OKI byte, an IMA block; a limit one byte short of that ended
    every recording SIZE at once with no audio in its file (a reviewer's find)."""
    from wholecall.controller import Error

    rec = call.WholeCallRecorder
    unit = CODECS[file_format].unit_bytes(1)
    smallest = header_bytes(file_format, 1) + unit + (unit & 1)
    with pytest.raises(Error, match=f"max_bytes {smallest - 1} cannot hold the"):
        rec.start(name(), file_format=file_format, max_bytes=smallest - 1)
    assert rec.start(name(), file_format=file_format, max_bytes=smallest)
    feed_both(call, tone(440, 1.0))
    assert rec.wait_until_finished(5) is Cause.SIZE
    assert rec.last_result.samples >= CODECS[file_format].unit_frames
    assert os.path.getsize(rec.last_result.path) <= smallest


@pytest.mark.parametrize("scheme", ["aes-cbc", "envelope"])
def test_an_encrypted_max_bytes_counts_what_the_cipher_adds(call, name, scheme):
    """start(): "the maximum size allowed for the file. Default is 0 bytes (no limit)."

    The same rule for an encrypted file: its limit must hold the cipher's overhead too."""
    from wholecall.controller import AESCBCCipher, EnvelopeCipher, Error, new_iv, new_key

    if scheme == "aes-cbc":
        cipher = AESCBCCipher(new_key(), new_iv())
        smallest = 64  # the 58-byte A-law header, one sample and its pad byte, PKCS#7 to 64
    else:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cipher = EnvelopeCipher(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        smallest = 60 + (10**6 - cipher.plaintext_limit(10**6))  # header, sample, pad; then the envelope
    rec = call.WholeCallRecorder
    with pytest.raises(Error, match="go to the cipher"):
        rec.start(name(), max_bytes=smallest - 1, cipher=cipher)
    assert rec.start(name(), max_bytes=smallest, cipher=cipher)
    feed_both(call, tone(440, 1.0))
    assert rec.wait_until_finished(5) is Cause.SIZE
    assert rec.last_result.samples >= 1 and os.path.getsize(rec.last_result.path) <= smallest
