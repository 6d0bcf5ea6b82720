"""Temporary stand-ins used only until worker/dtmf.py and worker/wavfile.py land."""
import struct
import numpy as np

FRAME = 160


class DtmfBank:
    lookahead_frames = 0

    def __init__(self, capacity=64):
        pass

    def ensure_capacity(self, rows):
        pass

    def reset(self, rows, eliminate):
        pass

    def process(self, rows, frames):
        return frames

    def flush(self, rows):
        return np.zeros((len(rows), 0, FRAME), np.float32)


def _alaw(x):
    x = x.astype(np.int32)
    sign = np.where(x >= 0, 0xD5, 0x55)
    a = np.minimum(np.where(x >= 0, x, -x - 1), 32767) >> 3
    seg = np.zeros_like(a)
    for i in range(1, 8):
        seg[a >= (32 << (i - 1))] = i
    mant = np.where(seg == 0, a >> 1, a >> seg) & 0xF
    return ((seg << 4 | mant) ^ sign).astype(np.uint8)


class WavWriter:
    def __init__(self, sink, file_format, rate, channels=1, max_bytes=0):
        self.sink, self.ch = sink, channels
        self.full = False
        self.input_samples = 0
        self._hdr()

    def _hdr(self):
        n = self.input_samples * self.ch
        h = struct.pack("<4sI4s4sIHHIIHH4sIHI4sI", b"RIFF", 50 + n, b"WAVE", b"fmt ", 18, 6, self.ch, 8000,
                        8000 * self.ch, self.ch, 8, 0, b"fact", 4, 0, b"data", n)
        h = h[:36] + struct.pack("<4sII", b"fact", 4, self.input_samples) + struct.pack("<4sI", b"data", n)
        self.sink.pwrite(h, 0)

    def write(self, pcm):
        b = _alaw(np.asarray(pcm).reshape(-1)).tobytes()
        self.sink.pwrite(b, 58 + self.input_samples * self.ch)
        self.input_samples += len(pcm)
        self._hdr()
        return len(pcm)

    def truncate(self, n):
        self.input_samples = min(n, self.input_samples)
        self.sink.truncate(58 + self.input_samples * self.ch)
        self._hdr()

    def close(self):
        self._hdr()
        return self.sink.finish(), self.input_samples

    def abort(self):
        self.sink.discard()
