"""G.711: our lookup tables against the ITU-T G.711 tables, for every input.

The reference here is written from the standard's description (Tables 1a/2a
of G.711: segment end points, step sizes, mid-interval reconstruction,
character-signal bit layout), one sample at a time, independently of the
G.191-style vectorised construction in worker/codecs/g711.py. Inputs are int16
left-justified: A-law looks at a 13-bit signed value (x >> 3), mu-law at a
14-bit one (x >> 2). Negative samples use the interval that mirrors the
positive one (the integer x stands for [x, x+1), so -1 mirrors 0), which is
how the G.191 reference code treats them (one's complement).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from codectools import HAVE_TOOLS, decode_ffmpeg, decode_soundfile, decode_sox
from hypothesis import given, settings
from hypothesis.extra import numpy as hnp

from wholecall.worker.codecs import g711
from wholecall.worker.sink import FileSink
from wholecall.worker.wavfile import WavWriter

# A-law, 13-bit magnitudes 0..4095: segment s spans [EDGE[s], EDGE[s+1]) in 16 equal steps.
A_EDGES = (0, 32, 64, 128, 256, 512, 1024, 2048, 4096)
# mu-law, 14-bit magnitudes: segment end points 31, 95, ..., 8159 (segment 0 starts half a step below 0).
U_EDGES = (-1, 31, 95, 223, 479, 991, 2015, 4063, 8159)


def _magnitude(x: int) -> tuple[bool, int]:
    return (True, x) if x >= 0 else (False, -x - 1)


def ref_alaw_encode(x: int) -> int:
    positive, mag = _magnitude(x)
    m13 = mag >> 3
    seg = max(s for s in range(8) if m13 >= A_EDGES[s])
    step = (A_EDGES[seg + 1] - A_EDGES[seg]) // 16
    q = (m13 - A_EDGES[seg]) // step
    return ((0x80 if positive else 0) | seg << 4 | q) ^ 0x55  # even bits inverted


def ref_alaw_decode(code: int) -> int:
    c = code ^ 0x55
    seg, q = (c >> 4) & 7, c & 15
    step = (A_EDGES[seg + 1] - A_EDGES[seg]) // 16
    m13x2 = 2 * A_EDGES[seg] + 2 * step * q + step  # twice the interval middle, in 13-bit units
    return (m13x2 * 4) if c & 0x80 else -(m13x2 * 4)


def ref_ulaw_encode(x: int) -> int:
    positive, mag = _magnitude(x)
    m14 = mag >> 2
    seg = max(s for s in range(8) if m14 >= U_EDGES[s])
    step = (U_EDGES[seg + 1] - U_EDGES[seg]) // 16
    q = min(15, (m14 - U_EDGES[seg]) // step)  # beyond 8159: the last interval (overload)
    return (0x80 if positive else 0) | (0x7F ^ (seg << 4 | q))  # magnitude bits inverted


def ref_ulaw_decode(code: int) -> int:
    v = 0x7F ^ (code & 0x7F)
    seg, q = v >> 4, v & 15
    step = (U_EDGES[seg + 1] - U_EDGES[seg]) // 16
    mag = U_EDGES[seg] + step * q + step // 2
    return 4 * mag if code & 0x80 else -4 * mag


ALL_INT16 = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)


@pytest.mark.parametrize(
    "encode, reference",
    [(g711.alaw_encode, ref_alaw_encode), (g711.ulaw_encode, ref_ulaw_encode)],
    ids=["alaw", "ulaw"],
)
def test_encode_all_65536_inputs_match_g711(encode, reference):
    ours = encode(ALL_INT16)
    ref = np.array([reference(int(x)) for x in ALL_INT16.tolist()], dtype=np.uint8)
    bad = np.nonzero(ours != ref)[0]
    assert ours.dtype == np.uint8 and ours.shape == ALL_INT16.shape
    assert len(bad) == 0, f"{len(bad)} mismatches, first at x={ALL_INT16[bad[0]]}: {ours[bad[0]]:#x} != {ref[bad[0]]:#x}"


@pytest.mark.parametrize(
    "decode, reference",
    [(g711.alaw_decode, ref_alaw_decode), (g711.ulaw_decode, ref_ulaw_decode)],
    ids=["alaw", "ulaw"],
)
def test_decode_all_256_codes_match_g711(decode, reference):
    codes = np.arange(256, dtype=np.uint8)
    ref = np.array([reference(int(c)) for c in range(256)], dtype=np.int16)
    assert np.array_equal(decode(codes), ref)


def test_reference_sanity():
    """The reference itself, on values anyone can check in the G.711 tables."""
    assert ref_alaw_encode(0) == 0xD5 and ref_alaw_encode(-1) == 0x55
    assert ref_alaw_encode(32767) == 0xAA and ref_alaw_encode(-32768) == 0x2A
    assert ref_alaw_decode(0xD5) == 8 and ref_alaw_decode(0xAA) == 32256
    assert ref_ulaw_encode(0) == 0xFF and ref_ulaw_encode(-1) == 0x7F
    assert ref_ulaw_encode(32767) == 0x80 and ref_ulaw_encode(-32768) == 0x00
    assert ref_ulaw_decode(0xFF) == 0 and ref_ulaw_decode(0x80) == 32124 and ref_ulaw_decode(0x00) == -32124


@pytest.mark.parametrize("law", ["alaw", "ulaw"])
def test_decode_encode_is_identity_on_codes(law):
    """Every reconstruction level encodes back to its own code (the quantiser's fixed points)."""
    enc, dec = getattr(g711, f"{law}_encode"), getattr(g711, f"{law}_decode")
    codes = np.arange(256, dtype=np.uint8)
    again = enc(dec(codes))
    if law == "ulaw":  # the two zeros (0x7F, 0xFF) both decode to 0, which encodes as +0
        codes = codes.copy()
        codes[codes == 0x7F] = 0xFF
    assert np.array_equal(again, codes)


@settings(max_examples=50, deadline=None)
@given(hnp.arrays(np.int16, hnp.array_shapes(min_dims=1, max_dims=2, max_side=64)))
def test_encode_keeps_shape_and_is_elementwise(x):
    for law, ref in (("alaw", ref_alaw_encode), ("ulaw", ref_ulaw_encode)):
        out = getattr(g711, f"{law}_encode")(x)
        assert out.shape == x.shape and out.dtype == np.uint8
        assert [int(v) for v in out.reshape(-1)] == [ref(int(v)) for v in x.reshape(-1)]


def test_encode_rejects_non_int16():
    with pytest.raises(ValueError, match="int16"):
        g711.alaw_encode(np.zeros(4, dtype=np.float32))


@pytest.mark.skipif(not HAVE_TOOLS, reason="needs sox and ffmpeg")
@pytest.mark.parametrize("law", ["alaw", "ulaw"])
def test_every_reader_decodes_all_256_codes_like_g711(tmp_path, law):
    """A file holding each code once: libsndfile, sox and ffmpeg all reconstruct the G.711 levels."""
    dec = getattr(g711, f"{law}_decode")
    levels = dec(np.arange(256, dtype=np.uint8))
    path = os.path.join(tmp_path, f"{law}.wav")
    w = WavWriter(FileSink(path), law, 8000)
    w.write(levels)  # each level encodes to its own code (test above), so the file holds codes 0..255
    w.close()
    ref = np.array([(ref_alaw_decode if law == "alaw" else ref_ulaw_decode)(c) for c in range(256)], np.int16)
    for reader in (decode_soundfile, decode_sox, decode_ffmpeg):
        got, rate = reader(path)
        assert rate == 8000
        assert np.array_equal(got[:, 0], ref), reader.__name__
