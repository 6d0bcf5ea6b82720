"""The channel activities the spec names as conflicts for starting a recorder.

They are real producers of outbound audio: `FilePlayer` streams a WAV file, `DTMFPlayer`
generates standard DTMF (ITU-T Q.23 frequencies), `bridge` makes each channel's inbound
audio the other's outbound, a `Conference` relays every member's inbound audio to the
other members, and `MusicOnHold` loops its audio into every channel added to it.
Players pace their audio at real time in 20 ms frames from a background thread, as a
media server would, so what they send sits at the right place in the call.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import TYPE_CHECKING, cast

import numpy as np

from .errors import Error, Hangup

if TYPE_CHECKING:
    from .channel import CallChannel

from wholecall.formats.codecs import CALL_RATE as RATE
from wholecall.formats.codecs import FRAME

#: ITU-T Q.23 frequency pairs (low, high) in Hz.
DTMF_FREQS: dict[str, tuple[int, int]] = {
    "1": (697, 1209), "2": (697, 1336), "3": (697, 1477), "A": (697, 1633),
    "4": (770, 1209), "5": (770, 1336), "6": (770, 1477), "B": (770, 1633),
    "7": (852, 1209), "8": (852, 1336), "9": (852, 1477), "C": (852, 1633),
    "*": (941, 1209), "0": (941, 1336), "#": (941, 1477), "D": (941, 1633),
}


def dtmf_tone(digit: str, ms: int, dbfs_per_tone: float = -10.0) -> np.ndarray:
    """One DTMF digit as int16 samples, each of the two tones at `dbfs_per_tone` (peak)."""
    try:
        lo, hi = DTMF_FREQS[digit.upper()]
    except KeyError:
        raise Error(f"not a DTMF digit: {digit!r} (use 0-9, *, #, A-D)") from None
    t = np.arange(ms * RATE // 1000) / RATE
    amp = 32767 * 10 ** (dbfs_per_tone / 20)
    return np.rint(amp * (np.sin(2 * np.pi * lo * t) + np.sin(2 * np.pi * hi * t))).astype(np.int16)


def load_wav_8k(filename: str) -> np.ndarray:
    """A WAV (any format libsndfile reads) as int16 mono at 8 kHz."""
    import soundfile as sf

    try:
        data, rate = sf.read(filename, dtype="float32", always_2d=True)
    except Exception as e:
        raise Error(f"cannot play {filename!r}: {e}") from None
    mono = data.mean(axis=1)
    if rate != RATE:
        import soxr

        mono = soxr.resample(mono, rate, RATE)
    return np.clip(np.rint(mono * 32768), -32768, 32767).astype(np.int16)


class _Player:
    """Streams audio into a channel's outbound leg from a thread, paced at real time."""

    activity = ""

    def __init__(self, channel: CallChannel) -> None:
        # Weak, like the recorder's: the channel owns its players, and a strong reference
        # back would make every call a reference cycle (see `WholeCallRecorder.__init__`).
        self._channel_ref = weakref.ref(channel)
        self._channel_id = channel.id
        self._thread: threading.Thread | None = None
        # Made by each play, not here: most calls never play, and an Event is a Condition,
        # a lock, a deque and bound methods, all tracked by the cyclic collector (at 20,000
        # calls the controller's full collections walked ~45 objects a call, a third of
        # them the two players' idle Events, and paused every thread up to 720 ms).
        self._stop: threading.Event | None = None

    @property
    def _channel(self) -> CallChannel:
        ch = self._channel_ref()
        if ch is None:
            raise Hangup(f"Channel({self._channel_id}) is closed (hung up)")
        return ch

    def _begin(self, audio: np.ndarray, realtime: bool) -> None:
        ch = self._channel
        ch.require_answered(self.activity)
        ch.activities.begin_transmit(self.activity)
        self._stop = stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(audio, realtime, stop), daemon=True,
                                        name=f"{self.activity}-{ch.id}")
        self._thread.start()

    def _run(self, audio: np.ndarray, realtime: bool, stop: threading.Event) -> None:
        ch = self._channel
        try:
            t0 = time.monotonic()
            for i in range(0, len(audio), FRAME):
                if stop.is_set():
                    break
                ch.outbound.write(audio[i:i + FRAME], timeout=1.0)
                if realtime:
                    delay = t0 + (i + FRAME) / RATE - time.monotonic()
                    if delay > 0:
                        stop.wait(delay)
        finally:
            ch.activities.end_transmit(self.activity)

    def stop(self) -> None:
        """Stop playing now (no-op if nothing plays)."""
        if self._stop is not None:
            self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(2)

    def wait_until_finished(self, seconds_timeout: float | None = None) -> bool:
        t = self._thread
        if t is None:
            return True
        t.join(seconds_timeout)
        return not t.is_alive()

    @property
    def playing(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


class FilePlayer(_Player):
    """`channel.FilePlayer`: plays a WAV file to the far end (into the outbound leg)."""

    activity = "play()"

    def start(self, filename: str, realtime: bool = True) -> None:
        self._begin(load_wav_8k(filename), realtime)

    def play(self, filename: str, realtime: bool = True) -> None:
        """Play the whole file; returns when it has been sent."""
        self.start(filename, realtime)
        self.wait_until_finished()


class DTMFPlayer(_Player):
    """`channel.DTMFPlayer`: sends in-band DTMF digits to the far end."""

    activity = "play_dtmf()"

    def start(self, digits: str, tone_ms: int = 80, gap_ms: int = 80, realtime: bool = True) -> None:
        if not digits:
            raise Error("digits must not be empty")
        gap = np.zeros(gap_ms * RATE // 1000, np.int16)
        parts: list[np.ndarray] = []
        for d in digits:
            parts += [dtmf_tone(d, tone_ms), gap]
        self._begin(np.concatenate(parts), realtime)

    def play(self, digits: str, tone_ms: int = 80, gap_ms: int = 80, realtime: bool = True) -> None:
        """Send the digits; returns when the last one has been sent."""
        self.start(digits, tone_ms, gap_ms, realtime)
        self.wait_until_finished()


# -- bridging: inbound audio of one channel is written to the outbound of others ---------------


def _set_relay(channel: CallChannel) -> None:
    """Recompute where the channel's inbound audio is relayed to."""
    targets = []
    act = channel.activities
    if act.peer is not None:
        targets.append(cast("CallChannel", act.peer).outbound)
    if isinstance(act.conference, Conference):
        targets += [m.outbound for m in act.conference.members if m is not channel]
    channel.inbound.relay_to(targets)


def bridge(a: CallChannel, b: CallChannel) -> None:
    if a is b:
        raise Error(f"Channel({a.id}) cannot be connected to itself")
    for ch in (a, b):
        ch.require_answered("connect")
        peer = ch.activities.peer
        if peer is not None:
            raise Error(f"Channel({ch.id}) is already connected to Channel({peer.id})")
    a.activities.peer, b.activities.peer = b, a
    _set_relay(a)
    _set_relay(b)


def unbridge(a: CallChannel) -> None:
    b = cast("CallChannel | None", a.activities.peer)
    if b is None:
        return
    a.activities.peer = b.activities.peer = None
    _set_relay(a)
    _set_relay(b)


class Conference:
    """A named conference: each member hears every other member's inbound audio."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.members: list[CallChannel] = []
        self._lock = threading.Lock()

    def add(self, channel: CallChannel) -> None:
        channel.require_answered("join a conference")
        with self._lock:
            channel.activities.join("conference", self)
            self.members.append(channel)
            for m in self.members:
                _set_relay(m)

    def remove(self, channel: CallChannel) -> None:
        with self._lock:
            if channel in self.members:
                self.members.remove(channel)
                channel.activities.leave("conference", self)
                _set_relay(channel)
                for m in self.members:
                    _set_relay(m)


class MusicOnHold:
    """A music-on-hold resource: loops its audio into every channel added to it."""

    def __init__(self, name: str, audio: np.ndarray | None = None, filename: str | None = None) -> None:
        self.name = name
        if filename is not None:
            audio = load_wav_8k(filename)
        if audio is None:  # a gentle two-tone chime
            t = np.arange(RATE) / RATE
            audio = np.rint(3000 * np.sin(2 * np.pi * 440 * t) * (t < 0.5)
                            + 3000 * np.sin(2 * np.pi * 554 * t) * (t >= 0.5)).astype(np.int16)
        self.audio = np.asarray(audio, np.int16)
        self._listeners: dict[int, tuple[CallChannel, threading.Event, threading.Thread]] = {}
        self._lock = threading.Lock()

    def add(self, channel: CallChannel) -> None:
        channel.require_answered("go on music on hold")
        with self._lock:
            channel.activities.join("moh", self)
            stop = threading.Event()
            t = threading.Thread(target=self._play, args=(channel, stop), daemon=True, name=f"moh-{channel.id}")
            self._listeners[channel.id] = (channel, stop, t)
            t.start()

    def _play(self, channel: CallChannel, stop: threading.Event) -> None:
        t0 = time.monotonic()
        i = 0
        n = len(self.audio)
        while not stop.is_set():
            idx = (np.arange(i, i + FRAME)) % n
            channel.outbound.write(self.audio[idx], timeout=1.0)
            i += FRAME
            delay = t0 + i / RATE - time.monotonic()
            if delay > 0:
                stop.wait(delay)

    def remove(self, channel: CallChannel) -> None:
        with self._lock:
            entry = self._listeners.pop(channel.id, None)
            channel.activities.leave("moh", self)
        if entry is not None:
            entry[1].set()
            if entry[2] is not threading.current_thread():
                entry[2].join(2)
