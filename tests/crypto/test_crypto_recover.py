"""`wholecall recover` as an operator runs it, in real processes: a live recording's
intermediate is left alone (its writer holds a lock), each recovery says what it made,
a part with nothing a player could read is refused and kept, errors name their file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from crypto_helpers import run_cli

from wholecall.formats import encrypted as cf
from wholecall.formats import recovery, wav
from wholecall.worker.crypto import EncryptedSink

KEY, IV = bytes(range(32)), bytes(range(16))
ENV = {"WHOLECALL_KEY": KEY.hex()}
AUDIO = bytes(range(256)) * 32  # 8,192 A-law samples: 1.024 s
HEADER = wav.header(wav.get_codec("alaw"), 1, 8000, 0, 0)  # sizes as a writer leaves them before its first refresh


def _left_by_a_killed_worker(path: str, content: bytes) -> str:
    """The .wcpart a worker killed after writing `content` leaves (its descriptor closed)."""
    sink = EncryptedSink(path, cf.SCHEME_CBC, key=KEY, iv=IV)
    sink.pwrite(content, 0)
    return sink.keep()


@pytest.fixture
def writer(tmp_path):
    """A live writer in another process: an EncryptedSink holding rec/live.wav.wcpart open."""
    (tmp_path / "rec").mkdir()
    code = textwrap.dedent(f"""
        import sys
        from wholecall.worker.crypto import EncryptedSink
        sink = EncryptedSink({str(tmp_path / "rec" / "live.wav")!r}, "aes-cbc", key={KEY!r}, iv={IV!r})
        sink.pwrite({HEADER + AUDIO!r}, 0)
        print("ready", flush=True)
        sys.stdin.read()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"ready\n"
        yield proc
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()


def test_a_live_recordings_part_is_left_alone_until_its_writer_dies(tmp_path, writer) -> None:
    rec = tmp_path / "rec"
    part = str(rec / "live.wav.wcpart")
    before = open(part, "rb").read()
    r = run_cli("recover", str(rec), env=ENV)
    assert r.returncode == 0, r.stderr
    assert f"{part}: skipped: a running recording is writing it" in r.stdout.decode()
    assert "0 recovered, 1 skipped (still recording), 0 failed" in r.stdout.decode()
    r = run_cli("recover", part, env=ENV)  # named explicitly: an error
    assert r.returncode == 1
    assert f"{part} is in use: a running recording is writing it" in r.stderr.decode()
    assert os.listdir(rec) == ["live.wav.wcpart"] and open(part, "rb").read() == before
    with pytest.raises(recovery.PartInUse):  # nor may a takeover's worker take it
        EncryptedSink.reopen(str(rec / "live.wav"), {"scheme": "aes-cbc", "key": KEY, "iv": IV})
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    r = run_cli("recover", str(rec), env=ENV)
    assert r.returncode == 0, r.stderr
    assert f"{part} -> {rec / 'live.wav'}: 1.02 s of alaw 8000 Hz mono" in r.stdout.decode()
    assert sorted(os.listdir(rec)) == ["live.wav"]


def test_recover_says_what_it_made_and_what_it_repaired(tmp_path) -> None:
    part = _left_by_a_killed_worker(str(tmp_path / "r.wav"), HEADER + AUDIO)
    r = run_cli("recover", part, env=ENV)
    assert r.returncode == 0, r.stderr
    size = len(HEADER + AUDIO)
    assert r.stdout.decode() == (
        f"{part} -> {tmp_path / 'r.wav'}: 1.02 s of alaw 8000 Hz mono ({size} bytes of WAV, {size // 16 * 16 + 16} "
        f"bytes encrypted); repaired the WAV header: data size 0 -> {len(AUDIO)}, RIFF size {len(HEADER) - 8} -> "
        f"{size - 8}, fact frames 0 -> {len(AUDIO)}\n")
    r = run_cli("decrypt", "--check", str(tmp_path / "r.wav"), env=dict(ENV, WHOLECALL_IV=IV.hex()))
    assert r.returncode == 0, r.stderr


def test_a_part_without_a_whole_wav_header_is_refused_and_kept(tmp_path) -> None:
    """A worker killed while writing the WAV header: recovering it published a 'recording'
    that decrypt then refused, and deleted the intermediate."""
    for name, content in (("cut", HEADER[:20]), ("empty", b"")):
        part = _left_by_a_killed_worker(str(tmp_path / f"{name}.wav"), content)
        before = open(part, "rb").read()
        r = run_cli("recover", part, env=ENV)
        assert r.returncode == 1
        err = r.stderr.decode()
        assert f"{part} holds no complete WAV header ({len(content)} bytes of content" in err
        assert "the intermediate is kept as it was" in err
        assert open(part, "rb").read() == before
        assert not os.path.lexists(tmp_path / f"{name}.wav")
        assert not os.path.lexists(tmp_path / f"{name}.wav.wctmp")


def test_directories_are_searched_below_and_an_empty_one_says_so(tmp_path) -> None:
    (tmp_path / "rec" / "calls" / "2024").mkdir(parents=True)
    r = run_cli("recover", str(tmp_path / "rec"), env=ENV)
    assert r.returncode == 0
    assert f"{tmp_path / 'rec'}: no .wcpart found in it or below: nothing to recover" in r.stdout.decode()
    part = _left_by_a_killed_worker(str(tmp_path / "rec" / "calls" / "2024" / "1234.wav"), HEADER + AUDIO)
    r = run_cli("recover", "--no-recurse", str(tmp_path / "rec"), env=ENV)
    assert r.returncode == 0 and "no .wcpart found: nothing to recover" in r.stdout.decode()
    r = run_cli("recover", str(tmp_path / "rec"), env=ENV)
    assert r.returncode == 0, r.stderr
    assert f"{part} -> {part[:-len('.wcpart')]}: 1.02 s" in r.stdout.decode()
    assert "1 recovered, 0 skipped (still recording), 0 failed" in r.stdout.decode()


def test_a_missing_path_is_named_as_missing(tmp_path) -> None:
    r = run_cli("recover", str(tmp_path / "no" / "such" / "dir"), env=ENV)
    assert r.returncode == 1
    assert r.stderr.decode() == f"wholecall recover: error: {tmp_path / 'no' / 'such' / 'dir'}: No such file or directory\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs")
def test_a_full_disk_names_the_file_that_could_not_be_written(tmp_path) -> None:
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(tiny)], check=True)
    try:
        part = _left_by_a_killed_worker(str(tiny / "r.wav"), HEADER + bytes(40_000))
        r = run_cli("recover", part, env=ENV)
        assert r.returncode == 1
        assert r.stderr.decode() == (f"wholecall recover: error: {part}: No space left on device ({tiny / 'r.wav'}"
                                     f".wctmp); the intermediate is kept as it was\n")
        assert os.listdir(tiny) == ["r.wav.wcpart"]
    finally:
        subprocess.run(["umount", str(tiny)], check=True)


def test_keep_names_nothing_it_did_not_check(tmp_path) -> None:
    """A sink whose intermediate was removed under it (by a recover that took a live part)
    must not report that part as kept."""
    sink = EncryptedSink(str(tmp_path / "r.wav"), cf.SCHEME_CBC, key=KEY, iv=IV)
    sink.pwrite(HEADER, 0)
    os.unlink(tmp_path / "r.wav.wcpart")
    with pytest.raises(FileNotFoundError, match="no longer under its name"):
        sink.keep()
    sink = EncryptedSink(str(tmp_path / "s.wav"), cf.SCHEME_CBC, key=KEY, iv=IV)
    os.rename(tmp_path / "s.wav.wcpart", tmp_path / "x")
    open(tmp_path / "s.wav.wcpart", "wb").close()  # another file under its name
    with pytest.raises(FileNotFoundError):
        sink.keep()


def test_a_part_left_beside_its_finished_file_is_removed_and_a_foreign_one_kept(tmp_path) -> None:
    """A worker killed between linking the final file and removing the intermediate: the
    final file is checked against the part (decrypted, compared) and the leftover removed."""
    sink = EncryptedSink(str(tmp_path / "r.wav"), cf.SCHEME_CBC, key=KEY, iv=IV)
    sink.pwrite(HEADER + AUDIO, 0)
    sink.pwrite(wav.header(wav.get_codec("alaw"), 1, 8000, len(AUDIO), len(AUDIO)), 0)  # as close() leaves it
    saved = open(tmp_path / "r.wav.wcpart", "rb").read()
    sink.finish()
    final = open(tmp_path / "r.wav", "rb").read()
    (tmp_path / "r.wav.wcpart").write_bytes(saved)
    r = run_cli("recover", str(tmp_path), env=ENV)
    assert r.returncode == 0, r.stderr
    assert "it had been finished already (its worker died removing the intermediate)" in r.stdout.decode()
    assert sorted(os.listdir(tmp_path)) == ["r.wav"] and open(tmp_path / "r.wav", "rb").read() == final
    (tmp_path / "r.wav.wcpart").write_bytes(saved)
    (tmp_path / "r.wav").write_bytes(final[:-16])  # not what the part makes
    r = run_cli("recover", str(tmp_path), env=ENV)
    assert r.returncode == 1
    assert "the final recording exists and is not this intermediate's" in r.stderr.decode()
    assert sorted(os.listdir(tmp_path)) == ["r.wav", "r.wav.wcpart"]


def test_a_writer_waits_a_moment_for_an_intermediates_lock_a_recover_run_holds(tmp_path) -> None:
    """A `wholecall recover` run can take the lock of an intermediate a worker has just
    created (between its O_EXCL create and its lock), for the moment it takes to find no
    header and let go; the worker's start failed with PartInUse for it (a reviewer's find).
    Writers wait up to WRITER_LOCK_WAIT_S; recover does not wait."""
    import fcntl
    import threading

    from wholecall.formats.recovery import PartInUse, lock_part
    from wholecall.worker.crypto import WRITER_LOCK_WAIT_S

    part = tmp_path / "x.wav.wcpart"
    part.write_bytes(b"")
    holder = os.open(part, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)
    writer = os.open(part, os.O_RDWR)
    try:
        with pytest.raises(PartInUse):
            lock_part(writer, str(part))  # recover's way: at once
        threading.Timer(0.3, os.close, (holder,)).start()
        lock_part(writer, str(part), WRITER_LOCK_WAIT_S)  # the writer's: taken once recover lets go
    finally:
        os.close(writer)
