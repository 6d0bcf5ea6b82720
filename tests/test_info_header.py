"""`wholecall info` on a WAV whose header is behind its audio (a crash of the whole service:
the worker refreshes the header only every few seconds and nobody repaired the file). It
reported the header's length with "disagreements": [] and never suggested `wholecall
repair` (a reviewer's find); now the header is a disagreement, exit 1, with the command."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from wholecall.formats.codecs import get_codec
from wholecall.formats.wav import header

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def info(path: str) -> tuple[int, dict, str]:
    done = subprocess.run([sys.executable, "-m", "wholecall.cli.main", "info", path], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    return done.returncode, json.loads(done.stdout), done.stderr


def repair(path: str) -> None:
    subprocess.run([sys.executable, "-m", "wholecall.cli.main", "repair", path], check=True, capture_output=True,
                   timeout=60, cwd=ROOT)


@pytest.mark.parametrize("file_format, unit_bytes, unit_frames", [("s16bit", 2, 1), ("alaw", 1, 1), ("ima", 256, 505)])
def test_a_header_behind_the_audio_is_a_disagreement_with_or_without_a_sidecar(tmp_path, file_format, unit_bytes,
                                                                             unit_frames):
    codec = get_codec(file_format)
    said, holds = 10 * unit_bytes, 32 * unit_bytes  # the header's count at its last refresh; what was written
    path = tmp_path / f"crashed-{file_format}.wav"
    path.write_bytes(header(codec, 1, 8000, said, said // unit_bytes * unit_frames) + bytes(range(256)) * (holds // 256)
                     + bytes(holds % 256))
    rc, out, err = info(str(path))
    assert rc == 1
    [d] = out["disagreements"]
    assert d["field"] == "header"
    assert d["header"]["samples"] == said // unit_bytes * unit_frames == out["file"]["samples"]
    assert d["file"] == {"data_bytes": holds, "samples": holds // unit_bytes * unit_frames,
                         "seconds": round(holds // unit_bytes * unit_frames / 8000, 6)}
    assert d["repair"] == f"wholecall repair {path}"
    assert f"wholecall repair {path}" in err and "has no sidecar" in err
    # With a sidecar (as the recorder wrote it for the whole audio) it is reported too.
    (tmp_path / f"crashed-{file_format}.wav.json").write_text(json.dumps({"samples": holds // unit_bytes * unit_frames}))
    rc, out, err = info(str(path))
    assert rc == 1 and [d["field"] for d in out["disagreements"]] == ["header", "samples"]
    assert "wholecall repair" in err
    repair(str(path))
    rc, out, err = info(str(path))
    assert rc == 0 and out["disagreements"] == [], err
    assert out["file"]["samples"] == holds // unit_bytes * unit_frames


def test_a_consistent_file_has_no_header_disagreement(tmp_path):
    codec = get_codec("alaw")
    path = tmp_path / "odd.wav"
    path.write_bytes(header(codec, 1, 8000, 7, 7, pad=1) + b"\x55" * 7 + b"\0")  # an odd size and its pad byte
    rc, out, err = info(str(path))
    assert out["disagreements"] == [] and "repair" not in err
    assert rc == 1 and "has no sidecar" in err


#: A controller recording in real time, killed with its workers (the whole process group)
#: by the test, as an OOM kill of the cgroup or kill -9 of the group does.
RECORDING = r"""
import sys, time, numpy as np
from wholecall.controller import Controller
ctl = Controller(workers=1, recordings_dir=sys.argv[1], max_channels=8, ring_ms=4096, flush_ms=200).start()
ch = ctl.incoming_call(); ch.answer()
assert ch.WholeCallRecorder.start("whole-group.wav", file_format="s16bit")
print(ch.WholeCallRecorder._path, ctl.arena.path, ctl._run_dir, flush=True)
x = (8000 * np.sin(np.arange(800) * 0.2)).astype(np.int16)
while True:
    ch.inbound.write(x); ch.outbound.write(np.zeros(800, np.int16))
    time.sleep(0.1)
"""


def test_the_file_of_a_whole_service_crash_is_flagged_for_repair(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", RECORDING, str(tmp_path / "rec")], stdout=subprocess.PIPE,
                            text=True, cwd=ROOT, start_new_session=True)
    try:
        path, arena, run_dir = proc.stdout.readline().split()
        deadline = time.monotonic() + 30
        # Past the first header refresh (5 s of audio) and well into the next span.
        while time.monotonic() < deadline and not (os.path.exists(path) and os.path.getsize(path) > 44 + 7 * 16000):
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        if "arena" in locals():  # what the killed controller leaves for the next one's sweep
            os.unlink(arena)
            shutil.rmtree(run_dir)
    assert os.path.getsize(path) > 44 + 7 * 16000
    rc, out, err = info(path)
    assert rc == 1
    [d] = out["disagreements"]
    assert d["field"] == "header" and d["header"]["samples"] < d["file"]["samples"]
    assert f"wholecall repair {path}" in err
    repair(path)
    rc, out, err = info(path)
    assert out["disagreements"] == [] and rc == 1 and "has no sidecar" in err  # the crash left none
    assert np.count_nonzero(np.fromfile(path, np.int16, offset=44)) > 6 * 8000


def test_a_whole_wav_with_a_chunk_after_its_data_is_no_crash(tmp_path) -> None:
    """A tagger's LIST chunk after the data chunk, every size right: it was reported as a
    header behind its audio, and `repair` would then have made the tag audio (a reviewer's
    find)."""
    import struct

    codec = get_codec("s16bit")
    audio = bytes(1600)
    tag = b"INFOISFT" + struct.pack("<I", 6) + b"tools\0"
    body = header(codec, 1, 8000, len(audio), 800)[12:] + audio + b"LIST" + struct.pack("<I", len(tag)) + tag
    path = tmp_path / "tagged.wav"
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WAVE" + body)
    rc, facts, _ = info(str(path))
    assert "header" not in [d["field"] for d in facts.get("disagreements", [])]
