"""`wholecall info FILE`: a recording's sidecar beside the file's own facts.

The sidecar (`controller/sidecar.py`, schema in formats/sidecar.schema.json) says what
the recorder wrote; the file says what is on disk now. Printed as one JSON document:
{"file": facts, "sidecar": the sidecar or null, "disagreements": [{"field", "file",
"sidecar"}]}. Exit status 0 when they agree, 1 when they disagree or the sidecar is
missing, 2 when the file cannot be read. Facts inside an encrypted file need its key
(`wholecall decrypt`), so for one only its size and checksum are compared.

The file's facts are what its header says. A WAV whose header does not describe its
length (the worker refreshes the header only every few seconds, so a crash of the whole
service leaves it behind the audio, and no sidecar) is one more disagreement, with or
without a sidecar: {"field": "header", "header": {...}, "file": {...}, "changes": [...],
"repair": "wholecall repair FILE"}, judged by the repair policy itself
(`formats.wav.repair_plan`), so info flags exactly what repair would change.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import sys
from typing import Any

from wholecall.formats.codecs import tag_name
from wholecall.formats.wav import HEAD_BYTES, WavChecker, read_info, repair_plan


def file_facts(path: str) -> dict[str, Any]:
    """What the file itself says: size, checksum and, for a plain WAV, its header."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    facts: dict[str, Any] = {"path": os.path.abspath(path), "bytes": os.path.getsize(path), "sha256": h.hexdigest()}
    try:
        info = read_info(path)
    except ValueError as e:
        facts["wav"] = f"not a plain WAV ({e}); encrypted recordings need their key"
        return facts
    unit_bytes, unit_frames = info.unit()
    data = min(info.data_size, info.file_size - info.data_offset)
    samples = info.fact_frames if info.fact_offset else data // unit_bytes * unit_frames
    facts.update({"format": tag_name(info.format_tag, info.bits_per_sample), "rate": info.rate,
                  "mode": "separate" if info.channels == 2 else "mixed", "samples": samples,
                  "seconds": round(samples / info.rate, 6)})
    return facts


def header_disagreement(path: str) -> dict[str, Any] | None:
    """How a plain WAV's header disagrees with the file's length, None when it does not
    (or the file is no plain WAV: an encrypted one needs its key)."""
    checker = WavChecker()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(HEAD_BYTES)
        checker.feed(head)
        for block in iter(lambda: f.read(1 << 20), b""):
            checker.feed(block)
    if checker.result() is None:
        return None  # a whole WAV, chunks after its data included (a tagger's LIST is no crash)
    try:
        plan = repair_plan(head, size, path)
    except ValueError:
        return None
    if not plan.patches and plan.size == size:
        return None
    info = plan.info
    unit_bytes, unit_frames = info.unit()
    said = info.fact_frames if info.fact_offset else info.data_size // unit_bytes * unit_frames
    return {"field": "header",
            "header": {"data_bytes": info.data_size, "samples": said, "seconds": round(said / info.rate, 6)},
            "file": {"data_bytes": size - info.data_offset, "samples": plan.frames,
                     "seconds": round(plan.frames / info.rate, 6)},
            "changes": plan.changes, "repair": f"wholecall repair {shlex.quote(path)}"}


def compare(facts: dict[str, Any], side: dict[str, Any]) -> list[dict[str, Any]]:
    """Fields the file and its sidecar both state, where they differ."""
    out = []
    for field in ("bytes", "sha256", "format", "rate", "mode", "samples"):
        if field in facts and field in side and facts[field] != side[field]:
            out.append({"field": field, "file": facts[field], "sidecar": side[field]})
    if "seconds" in facts and abs(facts["seconds"] - side.get("seconds", facts["seconds"])) > 1e-3:
        out.append({"field": "seconds", "file": facts["seconds"], "sidecar": side["seconds"]})
    return out


def info_command(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="wholecall info",
                                description="Print a recording's metadata sidecar with the file's own facts.")
    p.add_argument("file", help="the recording (its sidecar is FILE.json)")
    a = p.parse_args(argv)
    try:
        facts = file_facts(a.file)
    except OSError as e:
        print(f"wholecall info: cannot read {a.file}: {e.strerror or e}", file=sys.stderr)
        return 2
    side = None
    try:
        with open(a.file + ".json") as f:
            side = json.load(f)
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as e:
        why = str(e)
        if os.path.isfile(a.file + ".json") and os.path.getsize(a.file + ".json") == 0:
            # Written and renamed, then the machine went down before the syncer made its
            # data durable (`controller.durability`).
            why = "it is empty (the machine stopped before it was made durable)"
        print(f"wholecall info: cannot read {a.file}.json: {why}", file=sys.stderr)
    try:
        header = header_disagreement(a.file)
    except OSError as e:
        print(f"wholecall info: cannot read {a.file}: {e.strerror or e}", file=sys.stderr)
        return 2
    disagreements = compare(facts, side) if isinstance(side, dict) else []
    if header is not None:
        disagreements.insert(0, header)
    json.dump({"file": facts, "sidecar": side, "disagreements": disagreements}, sys.stdout, indent=2)
    print()
    if header is not None:
        print(f"wholecall info: the WAV header disagrees with the file's length: it says {header['header']['seconds']} s "
              f"({header['header']['data_bytes']} data bytes), the file holds {header['file']['seconds']} s "
              f"({header['file']['data_bytes']}); left so by a crash (or still being recorded). "
              f"Once no recording writes it: {header['repair']}", file=sys.stderr)
    if side is None:
        print(f"wholecall info: {a.file} has no sidecar ({a.file}.json)", file=sys.stderr)
        return 1
    for d in disagreements:
        if d is not header:
            print(f"wholecall info: {d['field']} disagrees: file {d['file']!r}, sidecar {d['sidecar']!r}",
                  file=sys.stderr)
    return 1 if disagreements else 0
