"""DTMF elimination end to end (issue 5): digits keyed on either leg are gone from the
recording, in mixed and separate mode, while the speech around them is kept.

Figures reported (printed with -s): per tone, the residual at its two frequencies
relative to the tone as sent, and the correlation of the kept speech with the original.
"""

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import feed
from tests.speech import line_noise, say
from wholecall.controller.media import DTMF_FREQS, dtmf_tone

RATE = 8000
DIGITS = "159#0*D"
TONE_MS, GAP_MS = 70, 200
GUARD = 80  # samples (10 ms) around each tone that elimination may also mute


def goertzel_power(x: np.ndarray, freq: float) -> float:
    t = np.arange(len(x)) / RATE
    w = np.hanning(len(x))
    c = np.sum(x * w * np.cos(2 * np.pi * freq * t))
    s = np.sum(x * w * np.sin(2 * np.pi * freq * t))
    return (c * c + s * s) / np.sum(w) ** 2


def keyed_leg():
    """Caller speech, then digits keyed in a pause, then more speech; and where each tone is."""
    first = say("I would like to pay my bill with a card please.", voice="en", speed=170)
    second = say("Thank you, is that all done now?", voice="en-us", speed=150)
    pause = line_noise(int(0.3 * RATE), -60)
    parts, spans = [first, pause], []
    pos = len(first) + len(pause)
    for d in DIGITS:
        t = dtmf_tone(d, TONE_MS, -12.0)
        gap = line_noise(GAP_MS * RATE // 1000, -60, seed=pos)
        parts += [t, gap]
        spans.append((d, pos, pos + len(t)))
        pos += len(t) + len(gap)
    parts.append(second)
    return np.concatenate(parts), spans


def agent_leg(n):
    x = np.concatenate([say("Please enter your card number now, followed by the hash key.", voice="en-gb", speed=150),
                        say("I am still here while you type the digits on your keypad.", voice="en-gb", speed=140)])
    x = (x.astype(np.int32) // 2).astype(np.int16)  # the agent is quieter than the tones
    return np.resize(x, n)


def record(ctl, name, inbound, outbound, mode, fmt):
    ch = ctl.incoming_call()
    ch.answer()
    rec = ch.WholeCallRecorder
    assert rec.start(name, file_format=fmt, recording_mode=mode, dtmf_elim=True)
    feed(ch, inbound, outbound)
    assert rec.stop()
    data, rate = sf.read(rec.last_result.path, dtype="int16", always_2d=True)
    assert rate == RATE
    return data.astype(np.float64)


def check(recorded, original_tone_leg, spans, other=None, label=""):
    """Residual at the DTMF frequencies inside each tone span; correlation of the rest."""
    n = min(len(recorded), len(original_tone_leg))
    residual = recorded[:n] - (other[:n] if other is not None else 0)
    worst = -np.inf
    keep = np.ones(n, bool)
    for d, a, b in spans:
        lo, hi = DTMF_FREQS[d]
        sent = original_tone_leg[a:b].astype(np.float64)
        for f in (lo, hi):
            ratio = 10 * np.log10(goertzel_power(residual[a:b], f) / goertzel_power(sent, f) + 1e-30)
            worst = max(worst, ratio)
        keep[max(0, a - GUARD):b + GUARD] = False
    speech = original_tone_leg[:n].astype(np.float64) + (other[:n] if other is not None else 0)
    corr = np.corrcoef(recorded[:n][keep], speech[keep])[0, 1]
    print(f"\n{label}: worst residual at DTMF frequencies {worst:.1f} dB re tone; speech correlation {corr:.5f}")
    assert worst <= -40.0
    assert corr > 0.995
    return worst, corr


@pytest.mark.parametrize("leg", ["inbound", "outbound"])
def test_separate_mode_removes_tones_from_their_leg_only(ctl, leg):
    keyed, spans = keyed_leg()
    agent = agent_leg(len(keyed))
    inbound, outbound = (keyed, agent) if leg == "inbound" else (agent, keyed)
    data = record(ctl, f"sep-{leg}.wav", inbound, outbound, "separate", "s16bit")
    k = 0 if leg == "inbound" else 1
    check(data[:, k], keyed, spans, label=f"separate, tones on {leg}")
    other = data[:, 1 - k]
    talker = agent
    n = min(len(other), len(talker))
    assert np.array_equal(other[:n], talker[:n])  # the talking leg is untouched, sample for sample


@pytest.mark.parametrize("fmt", ["s16bit", "alaw"])
def test_mixed_mode_removes_tones_while_the_other_side_talks(ctl, fmt):
    keyed, spans = keyed_leg()
    agent = agent_leg(len(keyed))
    data = record(ctl, f"mix-{fmt}.wav", keyed, agent, "mixed", fmt)
    check(data[:, 0], keyed, spans, other=agent.astype(np.float64), label=f"mixed {fmt}")


def test_dtmf_elim_false_keeps_the_tones(ctl):
    keyed, spans = keyed_leg()
    ch = ctl.incoming_call()
    ch.answer()
    rec = ch.WholeCallRecorder
    assert rec.start("keep.wav", file_format="s16bit", dtmf_elim=False)
    feed(ch, keyed, None)
    assert rec.stop()
    data, _ = sf.read(rec.last_result.path, dtype="int16")
    n = min(len(data), len(keyed))
    assert np.array_equal(data[:n], keyed[:n])
