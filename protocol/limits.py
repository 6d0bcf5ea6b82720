"""The bounds of every number a `StartJob` carries, and the one check both ends apply.

Why here: the controller refuses an argument that a worker could not run (an `Error`
naming it, before anything changes state), and the worker refuses a job whose numbers
it cannot represent (a crafted or corrupted StartJob ends that job with ERROR instead of
killing the worker and every call on it). Both read the same constants, so the two
sides cannot drift apart.

The bounds are what the worker's arrays and files can hold, not policy:

- silence limits are counted in int64 samples at 8 kHz (`worker/silence.py`):
  `MAX_SILENCE_MS` is the largest millisecond count whose sample count fits (~36 million
  years; 0 still means "no limit");
- a WAV file cannot exceed the RIFF limit (`formats.wav.RIFF_LIMIT`, 0xFFFFFFFE bytes):
  a larger `max_bytes` could never be reached, so it is refused rather than silently
  meaning "no limit" (a test checks the two constants agree);
- positions, ids and slots are int64 in the arena.
"""

from __future__ import annotations

import os
from typing import Any

INT64_MAX = (1 << 63) - 1
#: Leg samples per millisecond (every leg runs at 8 kHz).
SAMPLES_PER_MS = 8
#: Largest `milliseconds_max_silence` / `milliseconds_initial_silence`: its sample count is an int64.
MAX_SILENCE_MS = INT64_MAX // SAMPLES_PER_MS
#: Largest `max_bytes`: the RIFF size field is 32 bits (formats.wav.RIFF_LIMIT).
MAX_BYTES = 0xFFFFFFFE


def _int_in(name: str, value: Any, low: int, high: int) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        return f"{name} must be an integer in {low}..{high}, got {value!r}"
    return ""


def start_job_problem(msg: Any, slots: int = INT64_MAX) -> str:
    """Why the worker cannot run this StartJob, or "" if it can.

    `slots`: ring slots in the worker's arena (slot numbers index it). Formats, rates and
    ciphers are checked where they are known (the WAV writer, the sink factory); the
    worker-wide settings (`WorkerSettings`) come from the controller's validated Config.
    """
    checks = (
        ("job_id", msg.job_id, 1, INT64_MAX),
        ("channel", msg.channel, 0, INT64_MAX),
        ("slot_in", msg.slot_in, 0, slots - 1),
        ("slot_out", msg.slot_out, 0, slots - 1),
        ("start_pos", msg.start_pos, 0, INT64_MAX),
        ("max_bytes", msg.max_bytes, 0, MAX_BYTES),
        ("milliseconds_max_silence", msg.ms_max_silence, 0, MAX_SILENCE_MS),
        ("milliseconds_initial_silence", msg.ms_initial_silence, 0, MAX_SILENCE_MS),
    )
    for name, value, low, high in checks:
        problem = _int_in(name, value, low, high)
        if problem:
            return problem
    if msg.mode not in ("mixed", "separate"):
        return f"mode must be 'mixed' or 'separate', got {msg.mode!r}"
    if not isinstance(msg.path, str) or not os.path.isabs(msg.path) or "\0" in msg.path:
        return f"path must be an absolute file name without NUL, got {msg.path!r}"
    return ""
