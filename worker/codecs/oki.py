"""OKI / Dialogic ADPCM: 4 bits a sample, 12-bit sample range (WAVE tag 0x0017, or raw .vox).

Each code is a sign bit and a 3-bit magnitude `c`; the decoder adds
`((2*c + 1) * step) >> 3` to a 12-bit predictor clamped to [-2048, 2047], then
moves the step index (49 steps, 16..1552) by -1,-1,-1,-1,2,4,6,8. Two codes per
byte, the FIRST sample in the HIGH nibble. No block headers: the state runs
from the start of the file (predictor 0, step index 0).

Why the multiply form: ffmpeg, sox and libsndfile all decode with
`((2*c+1)*step) >> 3`; an encoder that tracks its state with the older
shift-and-add form (`step>>3 + ...`) drifts away from what they reconstruct
(measured: 4.8 dB SNR on speech instead of ~20). The encoder must track the
decoders' state and pick `c = min(7, 4*|d| // step)` on the full 16-bit
input, which puts the reconstruction at the middle of the quantisation
interval.

Two encoders with that arithmetic:
  - `encode_codes` / `PyOkiEncoder`: ours, in Python; it tracks ffmpeg's
    state exactly (12-bit clamp). The reference, ~1.4 ms a channel-second.
  - `OkiEncoder` (used for recordings): libsndfile's RAW VOX_ADPCM encoder in
    C, driven as a stream through a write-only file object, ~0.15 ms a
    channel-second. Its bytes are identical to the reference's (tested)
    except after the predictor hits the positive limit: libsndfile clamps at
    32767 where the 12-bit grid (and ffmpeg) stop at 2047*16 = 32752, so
    after such a clamp ffmpeg reconstructs up to 15 LSB (-67 dBFS) lower
    than the encoder assumed, until the next negative clamp. Inaudible, and
    sox/libsndfile reading the .vox form then match it exactly.

Who reads what (measured with sox 14.4.2, ffmpeg 5.1, libsndfile 1.2.2):
  - WAV tag 0x0017 (and 0x0010): ffmpeg only; sox and libsndfile refuse both.
  - raw .vox (no header): sox (`sox -t vox -r RATE f.vox ...`), libsndfile
    (`format RAW, subtype VOX_ADPCM`), and Dialogic tools; ffmpeg has no vox
    demuxer. Use `worker.wavfile.to_vox()` to get it from our WAV.
"""

from __future__ import annotations

import numpy as np
import soundfile as sf

#: The OKI step sizes (12-bit units); also entries 8..56 of the IMA table.
STEPS: tuple[int, ...] = (
    16, 17, 19, 21, 23, 25, 28, 31, 34, 37, 41, 45, 50, 55, 60, 66, 73, 80, 88, 97,
    107, 118, 130, 143, 157, 173, 190, 209, 230, 253, 279, 307, 337, 371, 408, 449,
    494, 544, 598, 658, 724, 796, 876, 963, 1060, 1166, 1282, 1411, 1552,
)  # fmt: skip
INDEX_ADJUST: tuple[int, ...] = (-1, -1, -1, -1, 2, 4, 6, 8)
MAX_INDEX = len(STEPS) - 1
#: 12-bit predictor limits, expressed in the 16-bit units we work in.
P_MIN = -2048 * 16
P_MAX = 2047 * 16

# Flat per-(index, magnitude) tables in 16-bit units, indexed by 8*index + c,
# so the inner loop does one list lookup per quantity.
_STEP16 = [16 * STEPS[i // 8] for i in range(8 * len(STEPS))]
_DIFF16 = [16 * (((2 * c + 1) * s) >> 3) for s in STEPS for c in range(8)]
_NEXT8 = [8 * min(MAX_INDEX, max(0, i + INDEX_ADJUST[c])) for i in range(len(STEPS)) for c in range(8)]


def encode_codes(samples: np.ndarray, predictor: int = 0, index: int = 0) -> tuple[bytearray, int, int]:
    """One 4-bit code per int16 sample; returns (codes, predictor in 16-bit units, step index)."""
    codes = bytearray(len(samples))
    step16, diff16, nxt = _STEP16, _DIFF16, _NEXT8
    p = predictor
    i8 = 8 * index
    k = 0
    # Plain ifs and a manual index: min()/enumerate() calls cost more than the arithmetic here.
    for v in samples.tolist():
        d = v - p
        if d >= 0:
            c = (d << 2) // step16[i8]
            if c > 7:
                c = 7
            p += diff16[i8 + c]
            if p > P_MAX:
                p = P_MAX
            codes[k] = c
        else:
            c = (-d << 2) // step16[i8]
            if c > 7:
                c = 7
            p -= diff16[i8 + c]
            if p < P_MIN:
                p = P_MIN
            codes[k] = c | 8
        i8 = nxt[i8 + c]
        k += 1
    return codes, p, i8 // 8


def pack(codes: np.ndarray) -> bytes:
    """Two codes a byte, first in the high nibble (len(codes) must be even)."""
    c = np.asarray(codes, dtype=np.uint8)
    return ((c[0::2] << 4) | c[1::2]).astype(np.uint8).tobytes()


def decode(data: bytes, predictor: int = 0, index: int = 0) -> np.ndarray:
    """Reference decoder (ffmpeg's arithmetic): int16 samples, two per byte."""
    out = np.empty(2 * len(data), dtype=np.int16)
    p = predictor // 16
    k = 0
    for byte in data:
        for code in (byte >> 4, byte & 0x0F):
            c = code & 7
            diff = ((2 * c + 1) * STEPS[index]) >> 3
            p = p - diff if code & 8 else p + diff
            p = max(-2048, min(2047, p))
            index = min(MAX_INDEX, max(0, index + INDEX_ADJUST[c]))
            out[k] = p * 16
            k += 1
    return out


class PyOkiEncoder:
    """Streaming OKI ADPCM in Python (the reference), mono: holds back the code of an odd last sample."""

    def __init__(self, channels: int) -> None:
        if channels != 1:
            raise ValueError(f"channels: OKI ADPCM is written mono only, got {channels}")
        self._predictor = 0
        self._index = 0
        self._held: bytearray = bytearray()  # at most one code waiting for its byte partner

    def encode(self, frames: np.ndarray) -> bytes:
        samples = np.asarray(frames, dtype=np.int16).reshape(-1)
        if not len(samples):
            return b""
        codes, self._predictor, self._index = encode_codes(samples, self._predictor, self._index)
        if self._held:
            codes[:0] = self._held
        keep = len(codes) & 1
        self._held = codes[len(codes) - keep :]
        return pack(np.frombuffer(codes, dtype=np.uint8, count=len(codes) - keep))

    def flush(self) -> bytes:
        """An odd last sample gets a zero-magnitude partner code (a byte is the smallest unit)."""
        if not self._held:
            return b""
        data = bytes([self._held[0] << 4])
        self._held = bytearray()
        return data

    @property
    def pending(self) -> int:
        return len(self._held)

    def keep_pending(self, frames: int) -> None:
        if frames <= 0:
            self._held = bytearray()


class _Collector:
    """Write-only file object that hands libsndfile's output back to us instead of storing it."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._pos = 0

    def write(self, data: bytes) -> int:
        self._parts.append(data)
        self._pos += len(data)
        return len(data)

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        target = offset if whence == 0 else self._pos + offset
        if target != self._pos:  # RAW has no header to go back to; anything else is a surprise
            raise OSError(f"VOX stream cannot seek to {target} (at {self._pos})")
        return self._pos

    def read(self, size: int = -1) -> bytes:
        return b""

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


class OkiEncoder:
    """Streaming OKI ADPCM through libsndfile's C encoder, mono.

    libsndfile takes only whole bytes (an even number of samples), so an odd
    last sample waits here, raw, for the next call.
    """

    def __init__(self, channels: int) -> None:
        if channels != 1:
            raise ValueError(f"channels: OKI ADPCM is written mono only, got {channels}")
        self._out = _Collector()
        self._sf: sf.SoundFile | None = sf.SoundFile(
            self._out, "w", samplerate=8000, channels=1, subtype="VOX_ADPCM", format="RAW"
        )
        self._held = np.zeros(0, dtype=np.int16)

    def encode(self, frames: np.ndarray) -> bytes:
        samples = np.asarray(frames, dtype=np.int16).reshape(-1)
        if len(self._held):
            samples = np.concatenate([self._held, samples])
        even = len(samples) & ~1
        self._held = samples[even:].copy()
        if even:
            assert self._sf is not None, "encoder already flushed"
            self._sf.write(samples[:even])
        return self._out.take()

    def flush(self) -> bytes:
        """An odd last sample is paired with a silent one (a byte is the smallest unit); ends the stream."""
        if self._sf is None:
            return b""
        if len(self._held):
            self._sf.write(np.array([self._held[0], 0], dtype=np.int16))
            self._held = np.zeros(0, dtype=np.int16)
        self._sf.close()
        self._sf = None
        return self._out.take()

    @property
    def pending(self) -> int:
        return len(self._held)

    def keep_pending(self, frames: int) -> None:
        self._held = self._held[: max(frames, 0)].copy()
