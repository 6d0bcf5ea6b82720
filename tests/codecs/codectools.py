"""Test helpers: decode a file with each real tool, models of each decoder's arithmetic, speech.

The three readers a customer will use are run for real (libsndfile through
soundfile, the `sox` and `ffmpeg` programs); every one is asked for int16 PCM
at the file's own rate, so nothing but the decoder itself touches the samples
(sox runs with -D: no dither).

Decoder models (written here from the formats' descriptions, independent of
worker/codecs) pin down the known differences between readers exactly, so the
interop tests can assert equality instead of a loose tolerance:
  - IMA: libsndfile and sox use the reference shift-and-add reconstruction
    (step>>3 + step if b2 + step>>1 if b1 + step>>2 if b0); ffmpeg 5.1
    multiplies, ((2c+1)*step)>>3, which is never smaller; the gap builds up
    inside a block and is reset by the next block header.
  - OKI: ffmpeg clamps the 12-bit predictor to [-2048, 2047] and outputs it
    times 16; sox and libsndfile work in 16-bit units and clamp to
    [-32768, 32767], so after a positive clamp they read up to 15 higher.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
from functools import cache

import numpy as np
import soundfile as sf
import soxr

IMA_STEPS = (
    7, 8, 9, 10, 11, 12, 13, 14, 16, 17, 19, 21, 23, 25, 28, 31, 34, 37, 41, 45, 50, 55, 60, 66, 73, 80, 88, 97,
    107, 118, 130, 143, 157, 173, 190, 209, 230, 253, 279, 307, 337, 371, 408, 449, 494, 544, 598, 658, 724,
    796, 876, 963, 1060, 1166, 1282, 1411, 1552, 1707, 1878, 2066, 2272, 2499, 2749, 3024, 3327, 3660, 4026,
    4428, 4871, 5358, 5894, 6484, 7132, 7845, 8630, 9493, 10442, 11487, 12635, 13899, 15289, 16818, 18500,
    20350, 22385, 24623, 27086, 29794, 32767,
)  # fmt: skip
OKI_STEPS = IMA_STEPS[8:57]  # the Dialogic table: 16 .. 1552
INDEX_ADJUST = (-1, -1, -1, -1, 2, 4, 6, 8)

HAVE_TOOLS = all(shutil.which(t) for t in ("sox", "ffmpeg"))


# -- running the real readers ----------------------------------------------------


def parse_pcm16_wav(blob: bytes) -> tuple[np.ndarray, int]:
    """(frames (n, ch) int16, rate) from a 16-bit PCM WAV a tool wrote to a pipe (sizes may be bogus)."""
    assert blob[:4] == b"RIFF" and blob[8:12] == b"WAVE", blob[:16]
    pos, fmt = 12, None
    while pos + 8 <= len(blob):
        cid = blob[pos : pos + 4]
        size = struct.unpack_from("<I", blob, pos + 4)[0]
        if cid == b"fmt ":
            fmt = struct.unpack_from("<HHIIHH", blob, pos + 8)
        elif cid == b"data":
            assert fmt is not None and fmt[5] == 16, fmt
            channels, rate = fmt[1], fmt[2]
            body = blob[pos + 8 :]
            body = body[: len(body) // (2 * channels) * 2 * channels]
            return np.frombuffer(body, dtype="<i2").astype(np.int16).reshape(-1, channels), rate
        pos += 8 + size + (size & 1)
    raise AssertionError("no data chunk in tool output")


def decode_soundfile(path: str, vox_rate: int | None = None) -> tuple[np.ndarray, int]:
    """libsndfile: (frames (n, ch) int16, rate)."""
    if vox_rate:
        data, rate = sf.read(path, dtype="int16", always_2d=True, format="RAW", subtype="VOX_ADPCM",
                             samplerate=vox_rate, channels=1)  # fmt: skip
    else:
        data, rate = sf.read(path, dtype="int16", always_2d=True)
    return data, rate


def decode_sox(path: str, vox_rate: int | None = None) -> tuple[np.ndarray, int]:
    """sox: (frames (n, ch) int16, rate)."""
    pre = ["-t", "vox", "-r", str(vox_rate)] if vox_rate else []
    out = subprocess.run(["sox", "-D", "-V1", *pre, path, "-t", "wav", "-e", "signed", "-b", "16", "-"],
                         capture_output=True, check=True).stdout  # fmt: skip
    return parse_pcm16_wav(out)


def decode_ffmpeg(path: str) -> tuple[np.ndarray, int]:
    """ffmpeg: (frames (n, ch) int16, rate)."""
    out = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", path, "-map_metadata", "-1", "-fflags", "+bitexact",
         "-c:a", "pcm_s16le", "-f", "wav", "-"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    return parse_pcm16_wav(out)


# -- models of the decoders' arithmetic --------------------------------------------


def ima_decode_model(data: bytes, block_bytes: int = 256, multiply: bool = False) -> np.ndarray:
    """Mono IMA WAV blocks -> int16; `multiply` selects ffmpeg's reconstruction."""
    out: list[int] = []
    for start in range(0, len(data) - block_bytes + 1, block_bytes):
        p, idx = struct.unpack_from("<hB", data, start)
        out.append(p)
        for byte in data[start + 4 : start + block_bytes]:
            for code in (byte & 0x0F, byte >> 4):  # first sample in the low nibble
                step = IMA_STEPS[idx]
                if multiply:
                    diff = ((2 * (code & 7) + 1) * step) >> 3
                else:
                    diff = step >> 3
                    if code & 4:
                        diff += step
                    if code & 2:
                        diff += step >> 1
                    if code & 1:
                        diff += step >> 2
                p = p - diff if code & 8 else p + diff
                p = max(-32768, min(32767, p))
                idx = max(0, min(88, idx + INDEX_ADJUST[code & 7]))
                out.append(p)
    return np.array(out, dtype=np.int16)


def oki_decode_model(data: bytes, high: int = 2047 * 16) -> np.ndarray:
    """OKI codes (first sample in the high nibble) -> int16 in 16-bit units, predictor clamped to [-32768, high].

    high=2047*16 is ffmpeg; high=32767 is sox and libsndfile.
    """
    out = np.empty(2 * len(data), dtype=np.int16)
    p, idx, k = 0, 0, 0
    for byte in data:
        for code in (byte >> 4, byte & 0x0F):
            diff = 16 * (((2 * (code & 7) + 1) * OKI_STEPS[idx]) >> 3)
            p = p - diff if code & 8 else p + diff
            p = max(-32768, min(high, p))
            idx = max(0, min(48, idx + INDEX_ADJUST[code & 7]))
            out[k] = p
            k += 1
    return out


# -- signals ---------------------------------------------------------------------------


@cache
def speech(seconds: float = 3.0) -> np.ndarray:
    """Real (synthetic) speech at 8 kHz, int16, from espeak-ng, band-limited by soxr like a call."""
    text = ("Whole call recording keeps both sides of the conversation. "
            "Please hold the line while we connect you to the next available agent.")  # fmt: skip
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        subprocess.run(["espeak-ng", "-s", "170", "-w", tmp.name, text], check=True, capture_output=True)
        x, rate = sf.read(tmp.name, dtype="float32")
    y = soxr.resample(x, rate, 8000)
    y = y / max(1e-9, float(np.max(np.abs(y)))) * 0.7  # peak -3 dBFS, a loud but unclipped call
    pcm = np.clip(np.rint(y * 32768), -32768, 32767).astype(np.int16)
    n = int(seconds * 8000)
    assert len(pcm) >= n, f"espeak-ng produced only {len(pcm) / 8000:.1f} s"
    return pcm[:n]


def resample_reference(pcm: np.ndarray, rate: int) -> np.ndarray:
    """One-shot soxr conversion of a whole 8 kHz int16 signal (n,) or (n, ch) -> int16 at `rate`."""
    if rate == 8000:
        return pcm
    y = soxr.resample(pcm.astype(np.float32) / 32768, 8000, rate)
    return np.clip(np.rint(y * 32768), -32768, 32767).astype(np.int16)


def snr_db(reference: np.ndarray, decoded: np.ndarray) -> float:
    """Signal-to-noise ratio of `decoded` against `reference` in dB."""
    ref = reference.astype(np.float64)
    err = ref - decoded.astype(np.float64)
    noise = float(np.sum(err * err))
    return float("inf") if noise == 0 else 10 * np.log10(float(np.sum(ref * ref)) / noise)
