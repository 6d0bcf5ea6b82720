"""Test signals for the DTMF bank and a runner that pushes many of them through it at once.

Levels are in dBm0 per tone (0 dBm0 = a sine of peak `DBM0_PEAK` in int16 scale, see
worker/dtmf.py); twist is the high tone's level minus the low tone's, in dB (Q.24's
sign convention: +4 dB = "reverse twist", -8 dB = "normal twist"). Frequency
deviations are relative (0.015 = +1.5 %) plus an absolute offset in Hz.

Speech comes from espeak-ng (several languages, voices, speeds and pitches), made once
per session and cached as a .npy file in pytest's session temp dir.
"""

from __future__ import annotations

import io
import os
import subprocess
from dataclasses import dataclass

import numpy as np

from wholecall.worker.dtmf import (
    DBM0_PEAK,
    DIGITS,
    FRAME,
    HIGH_HZ,
    LOOKAHEAD_FRAMES,
    LOW_HZ,
    DtmfBank,
    dbm0_mean_square,
)

RATE = 8000


def pair(digit: str) -> tuple[float, float]:
    """Nominal (low, high) frequencies of a digit (ITU-T Q.23)."""
    i = DIGITS.index(digit)
    return LOW_HZ[i // 4], HIGH_HZ[i % 4]


def tone(digit: str, ms: float, dbm0: float = -10.0, twist_db: float = 0.0,
         rel: tuple[float, float] = (0.0, 0.0), hz: tuple[float, float] = (0.0, 0.0),
         phase: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """One DTMF digit: low tone at `dbm0`, high tone at `dbm0 + twist_db` (float64)."""
    lo, hi = pair(digit)
    f_lo = lo * (1 + rel[0]) + hz[0]
    f_hi = hi * (1 + rel[1]) + hz[1]
    t = np.arange(round(ms * RATE / 1000)) / RATE
    a_lo = DBM0_PEAK * 10 ** (dbm0 / 20)
    a_hi = a_lo * 10 ** (twist_db / 20)
    return a_lo * np.cos(2 * np.pi * f_lo * t + phase[0]) + a_hi * np.cos(2 * np.pi * f_hi * t + phase[1])


def operate_deviation(digit: str, sign_lo: int, sign_hi: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """The largest deviation a receiver must accept: +-(1.5 % + 2 Hz) (ES 201 235-3)."""
    return (0.015 * sign_lo, 0.015 * sign_hi), (2.0 * sign_lo, 2.0 * sign_hi)


def white(n: int, dbm0: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian white noise (flat 0..4 kHz) of mean square equal to a sine at `dbm0`."""
    return rng.standard_normal(n) * np.sqrt(dbm0_mean_square(dbm0))


def clip16(x: np.ndarray) -> np.ndarray:
    """What a 16-bit / G.711 channel does to a signal that is too loud."""
    return np.clip(x, -32768.0, 32767.0)


@dataclass
class BankRun:
    """Outputs of one bank run: `out[i]` is row i's output, aligned with its input."""

    out: np.ndarray  # (rows, samples) float32, the bank's delay removed
    events: list  # DtmfEvent, in confirmation order
    onsets_cut: int  # digits confirmed too late to mute their start (must stay 0)

    def digits(self, row: int) -> str:
        return "".join(e.digit for e in self.events if e.row == row)


def run_bank(signals: list[np.ndarray] | np.ndarray, eliminate: bool = True, subsets: bool = False,
             seed: int = 0, block: int = 1) -> BankRun:
    """Feed each signal to its own row of one bank, frame by frame; undo the delay.

    With `subsets`, each call carries a random subset of the rows still running, in a
    random order (a leg's frames still arrive in order), as the worker does when legs
    have different amounts of audio ready. With `block` > 1, calls advance rows by
    blocks of frames as the worker does at scale: `block` frames per call (the last one
    shorter), or with `subsets` a random size of 1 .. `block` per call.
    """
    sigs = [np.asarray(s, dtype=np.float64) for s in signals]
    rows = len(sigs)
    nfr = max(-(-len(s) // FRAME) for s in sigs)
    x = np.zeros((rows, nfr * FRAME), np.float32)
    for i, s in enumerate(sigs):
        x[i, : len(s)] = s
    frames = x.reshape(rows, nfr, FRAME)
    bank = DtmfBank(capacity=max(1, rows // 3), max_block=block)  # also exercises growth
    bank.reset(np.arange(rows), np.full(rows, eliminate))
    L = LOOKAHEAD_FRAMES
    out = np.zeros((rows, nfr + L, FRAME), np.float32)
    if not subsets:
        r = np.arange(rows)
        for k in range(0, nfr, block):
            if block == 1:
                out[:, k] = bank.process(r, frames[:, k])
            else:
                b = min(block, nfr - k)
                out[:, k:k + b] = bank.process(r, frames[:, k:k + b])
    else:
        rng = np.random.default_rng(seed)
        pos = np.zeros(rows, np.int64)
        while (pos < nfr).any():
            b = int(rng.integers(1, block + 1))
            live = np.flatnonzero(pos + b <= nfr)
            if not len(live):
                b, live = 1, np.flatnonzero(pos < nfr)
            pick = live[rng.random(len(live)) < 0.7]
            if not len(pick):
                continue
            pick = rng.permutation(pick)
            if b == 1 and block == 1:
                out[pick, pos[pick]] = bank.process(pick, frames[pick, pos[pick]])
            else:
                at = pos[pick][:, None] + np.arange(b)
                out[pick[:, None], at] = bank.process(pick, frames[pick[:, None], at])
            pos[pick] += b
    out[:, nfr:] = bank.flush(np.arange(rows))
    flat = out.reshape(rows, -1)[:, L * FRAME:]
    return BankRun(out=flat[:, : x.shape[1]], events=bank.pop_events(), onsets_cut=bank.onsets_cut)


# ---------------------------------------------------------------- speech (espeak-ng)

_TEXTS = {
    "en-us": "Thank you for calling. Please say or enter your account number, followed by the pound key. "
             "Your call may be recorded for quality and training purposes. I would like to check the balance "
             "on my savings account, and then transfer two hundred dollars before Friday.",
    "en-gb": "Good morning, you are through to the customer service desk. Could you confirm the first line of "
             "your address and your date of birth, please? Lovely, thank you. I can see the parcel was "
             "dispatched on Tuesday and should arrive within three working days.",
    "de": "Guten Tag, Sie sind verbunden mit dem Kundenservice. Bitte nennen Sie Ihre Kundennummer und das "
          "Geburtsdatum. Vielen Dank für Ihre Geduld, der nächste freie Mitarbeiter ist gleich für Sie da.",
    "fr-fr": "Bonjour et bienvenue. Pour des raisons de qualité, cet appel peut être enregistré. Veuillez "
             "patienter, un conseiller va prendre votre appel. Merci de nous indiquer votre numéro de client.",
    "es": "Buenas tardes, gracias por llamar. Por favor, indique su número de cliente y el motivo de su "
          "llamada. Un agente le atenderá en breve, le rogamos que no cuelgue.",
    "it": "Buongiorno, grazie per aver chiamato il servizio clienti. La sua chiamata è importante per noi. "
          "Per favore, resti in linea per non perdere la priorità acquisita.",
    "nl": "Goedemiddag, u spreekt met de klantenservice. Wilt u uw klantnummer en postcode doorgeven? "
          "Dank u wel, ik kijk even met u mee.",
    "pt-br": "Olá, obrigado por ligar. Para sua segurança, esta ligação poderá ser gravada. Por favor, "
             "informe o número do seu cartão e a data de validade.",
    "pl": "Dzień dobry, dziękujemy za telefon. Prosimy o podanie numeru klienta oraz daty urodzenia. "
          "Konsultant odbierze połączenie za chwilę.",
    "sv": "Hej och välkommen till kundtjänst. Vänligen ange ditt kundnummer följt av fyrkant. "
          "Vi svarar så snart vi kan.",
}
# Digits read aloud, in each language: number words are where speech talk-off lives.
_NUMBERS = "4 9 1 7 3 0 2 8 6 5. 1234 5678 9012 3456. 07 12 24 36 48 59 60 71 83 95."
_VARIANTS = ["", "+f1", "+m3", "+f4", "+klatt", "+m7", "+f2", "+croak", "+Tweaky", "+m1", "+grandma", "+klatt3"]


def _say(voice: str, text: str, speed: int, pitch: int) -> np.ndarray:
    import soundfile as sf
    import soxr

    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
                         capture_output=True, check=True).stdout
    x, sr = sf.read(io.BytesIO(wav), dtype="float64")
    return soxr.resample(x, sr, RATE)


# Languages whose synthesis differs from run to run (espeak-ng 1.51: Arabic): left out
# so that every test run sees exactly the same speech.
_UNSTABLE = {"ar"}


def espeak_languages() -> list[str]:
    """Every language espeak-ng has a voice for (about 130), but the unstable ones."""
    out = subprocess.run(["espeak-ng", "--voices"], capture_output=True, text=True, check=True).stdout
    langs = [line.split()[1] for line in out.splitlines()[1:] if line.strip()]
    return [lang for lang in langs if lang not in _UNSTABLE]


def make_speech(minutes: float) -> tuple[np.ndarray, list[str]]:
    """At least `minutes` of espeak-ng speech at 8 kHz (float64, peak ~1) and the voices used.

    One utterance per language in turn (every language espeak-ng has), each reading
    one of the texts above plus digits, with a rotating voice variant, speed and pitch.
    """
    parts: list[np.ndarray] = []
    voices: list[str] = []
    texts = list(_TEXTS.values())
    langs = espeak_languages()
    i = 0
    total = 0
    while total < minutes * 60 * RATE:
        lang = langs[i % len(langs)]
        voice = lang + _VARIANTS[i % len(_VARIANTS)]
        speed = (110, 140, 170, 200, 230)[i % 5]
        pitch = (10, 30, 50, 70, 90, 99)[(i * 7) % 6]
        try:
            x = _say(voice, texts[i % len(texts)] + " " + _NUMBERS, speed, pitch)
        except subprocess.CalledProcessError:  # a few listed languages cannot be selected
            i += 1
            continue
        parts.append(x)
        voices.append(f"{voice}@{speed}wpm/p{pitch}")
        total += len(x)
        i += 1
    return np.concatenate(parts), voices


def speech_at(x: np.ndarray, active_dbm0: float) -> np.ndarray:
    """Scale speech so its active level (mean over 20 ms frames within 40 dB of the
    loudest) equals a sine at `active_dbm0`; Q.24's talk-off figure is -15 dBm0."""
    fr = x[: len(x) // FRAME * FRAME].reshape(-1, FRAME)
    e = (fr**2).mean(axis=1)
    active = e > e.max() * 1e-4
    return x * np.sqrt(dbm0_mean_square(active_dbm0) / e[active].mean())


def cached_speech(cache_dir: str, minutes: float) -> tuple[np.ndarray, list[str]]:
    path = os.path.join(cache_dir, f"speech-{minutes:g}min.npy")
    vpath = path + ".voices"
    if os.path.exists(path) and os.path.exists(vpath):
        with open(vpath) as f:
            return np.load(path), f.read().split("\n")
    x, voices = make_speech(minutes)
    np.save(path, x)
    with open(vpath, "w") as f:
        f.write("\n".join(voices))
    return x, voices
