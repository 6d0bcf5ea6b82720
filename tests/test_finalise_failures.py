"""Issue 21 item 7: a recording whose finalising fails keeps what was recorded, and no
temp or part file is ever opened through a symlink planted in the recordings directory."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import feed, tone
from wholecall.cli.decrypt import decrypt_command
from wholecall.cli.recover import recover_command
from wholecall.controller import AESCBCCipher, Error, new_iv, new_key
from wholecall.formats import encrypted as cf

VICTIM = b"precious: must never be overwritten\n"


def answered(ctl):
    ch = ctl.incoming_call()
    ch.answer()
    return ch


def test_a_symlink_planted_at_the_temp_name_is_not_written_through(make_controller, tmp_path):
    ctl = make_controller(workers=1)
    rec_dir = ctl.config.recordings_dir
    victim = tmp_path / "victim"
    victim.write_bytes(VICTIM)
    key, iv = new_key(256), new_iv()
    ch = answered(ctl)
    with pytest.raises(Error, match="t.wav.wctmp exists, the intermediate of an unfinished encrypted recording"):
        os.symlink(victim, os.path.join(rec_dir, "t.wav" + cf.TMP_SUFFIX))
        ch.WholeCallRecorder.start("t.wav", file_format="s16bit", cipher=AESCBCCipher(key, iv))
    os.unlink(os.path.join(rec_dir, "t.wav" + cf.TMP_SUFFIX))
    assert ch.WholeCallRecorder.start("t.wav", file_format="s16bit", cipher=AESCBCCipher(key, iv))
    os.symlink(victim, os.path.join(rec_dir, "t.wav" + cf.TMP_SUFFIX))  # planted while it records
    feed(ch, tone(440, 0.5), tone(880, 0.5))
    assert ch.WholeCallRecorder.stop() and ch.WholeCallRecorder.cause() is ch.WholeCallRecorder.Cause.ABORTED
    assert victim.read_bytes() == VICTIM
    final = os.path.join(rec_dir, "t.wav")
    assert not os.path.islink(final) and os.path.getsize(final) > 8000
    assert not os.path.lexists(final + cf.TMP_SUFFIX)  # the planted link was removed, not followed


def test_a_symlink_planted_at_the_part_name_fails_the_job_and_is_not_written_through(make_controller, tmp_path):
    ctl = make_controller(workers=1)
    rec_dir = ctl.config.recordings_dir
    victim = tmp_path / "victim"
    victim.write_bytes(VICTIM)
    os.symlink(victim, os.path.join(rec_dir, "p.wav" + cf.PART_SUFFIX))
    rec = answered(ctl).WholeCallRecorder
    with pytest.raises(Error, match="p.wav.wcpart exists"):  # refused before any worker sees it
        rec.start("p.wav", cipher=AESCBCCipher(new_key(128), new_iv()))
    assert rec.state() is rec.State.IDLE
    assert victim.read_bytes() == VICTIM and os.path.islink(os.path.join(rec_dir, "p.wav" + cf.PART_SUFFIX))


@contextlib.contextmanager
def small_tmpfs(path, size="256k"):
    path.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True,
                       capture_output=True)
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
        pytest.skip(f"cannot mount a tmpfs here: {getattr(e, 'stderr', b'') or e}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory) -> str:
    """Fill the filesystem of `directory` to the last byte; returns the filler's path."""
    filler = os.path.join(directory, "filler")
    with open(filler, "wb", buffering=0) as f:  # unbuffered: close() has nothing left to fail on
        for block in (4096, 1):
            with contextlib.suppress(OSError):
                while f.write(b"\0" * block):
                    pass
    return filler


def test_an_encrypted_recording_that_cannot_be_finalised_keeps_its_part_for_recover(make_controller, tmp_path):
    with small_tmpfs(tmp_path / "small") as small:
        rec_dir = small / "rec"
        ctl = make_controller(workers=1, recordings_dir=str(rec_dir), min_free_bytes=0, flush_ms=200)
        try:
            _record_fill_recover(ctl, small, rec_dir, tmp_path)
        finally:
            ctl.close()  # before the filesystem goes


def _record_fill_recover(ctl, small, rec_dir, tmp_path):
    key, iv = new_key(256), new_iv()
    ch = answered(ctl)
    rec = ch.WholeCallRecorder
    assert rec.start("big.wav", file_format="s16bit", cipher=AESCBCCipher(key, iv), dtmf_elim=False)
    a, b = tone(440, 4.0), tone(700, 4.0, amp=3000)
    feed(ch, a, b)
    part = rec_dir / ("big.wav" + cf.PART_SUFFIX)
    deadline = time.monotonic() + 10
    while part.stat().st_size < 60_000 and time.monotonic() < deadline:
        time.sleep(0.05)  # the worker flushes every 200 ms: wait for most of the audio
    filler = fill(str(small))
    assert rec.stop()
    assert rec.cause() is rec.Cause.ERROR
    err = rec.last_result.error
    assert "ENOSPC" in err and str(part) in err, err
    assert part.exists() and not (rec_dir / "big.wav").exists()
    assert not (rec_dir / ("big.wav" + cf.TMP_SUFFIX)).exists()

    os.unlink(filler)
    keyfile = tmp_path / "key"
    keyfile.write_text(key)
    ivfile = tmp_path / "iv"
    ivfile.write_text(iv)
    assert recover_command(["--key-file", str(keyfile), str(part)]) == 0
    assert not part.exists()
    out = tmp_path / "big.dec.wav"
    assert decrypt_command(["--key-file", str(keyfile), "--iv-file", str(ivfile), str(rec_dir / "big.wav"),
                            "-o", str(out)]) == 0
    audio, rate = sf.read(out, dtype="int16")
    expect = np.clip(a.astype(np.int32) + b, -32768, 32767).astype(np.int16)
    assert rate == 8000 and 60_000 // 2 - 8000 <= len(audio) <= len(expect)
    np.testing.assert_array_equal(audio, expect[:len(audio)])


def test_a_plain_recording_that_cannot_be_finalised_is_a_valid_partial_wav(tmp_path):
    """Closing fails (as close(2) reports a delayed write error on NFS): the pipeline keeps
    the file, with a header describing the audio on disk, and says why with the errno."""
    import errno

    from tests.test_worker_commands import feed as feed_ring
    from tests.test_worker_commands import start_msg
    from wholecall.protocol import Cause
    from wholecall.shm import Arena
    from wholecall.worker.pipeline import Pipeline
    from wholecall.worker.sink import FileSink

    class LateEIO(FileSink):
        def finish(self) -> int:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    arena = Arena.create(2, 1 << 14)
    try:
        pipe = Pipeline(arena, lambda path, cipher, mode: LateEIO(path, mode), capacity=4)
        path = str(tmp_path / "plain.wav")
        arena.job[0] = arena.job[1] = 1
        assert pipe.start(start_msg(1, path, 0)) == ""
        a = tone(440, 1.0)
        feed_ring(arena, 0, a)
        feed_ring(arena, 1, np.zeros_like(a))
        pipe.stop(1, "ABORTED", len(a))
        for _ in range(200):
            pipe.tick()
            if pipe.ended:
                break
        (end,) = pipe.ended
        assert end.cause is Cause.ERROR and "EIO" in end.error and f"kept {path}" in end.error, end.error
        audio, rate = sf.read(path, dtype="int16")
        np.testing.assert_array_equal(audio, a)
        pipe.close()
    finally:
        arena.close()


def test_an_encrypted_file_that_cannot_be_started_on_a_full_disk_says_enospc(tmp_path):
    """Its header's write failing once hid the disk's error behind an AttributeError of the
    clean-up (a reviewer's find); the error names ENOSPC and no intermediate is left."""
    from wholecall.worker.crypto import EncryptedSink

    with small_tmpfs(tmp_path / "small", "64k") as small:
        filler = fill(str(small))
        path = small / "a.wav"
        with pytest.raises(OSError) as e:
            EncryptedSink(str(path), cf.SCHEME_CBC, key=bytes(32), iv=bytes(16))
        assert e.value.errno == errno.ENOSPC, e.value
        assert sorted(os.listdir(small)) == ["filler"]
        os.unlink(filler)
