"""`CallChannel`: a call with two audio legs, a call state, and a whole call recorder.

The legs are the producer ends of two shared-memory rings: `inbound` carries audio
from the far end (the caller), `outbound` what is sent to it (prompts, DTMF, the
other party). Whoever produces a leg's audio (an RTP receiver, a prompt player, the
load simulator) writes int16 8 kHz samples with `write()`.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

import numpy as np

from wholecall.shm import Arena, LegWriter

from .activities import Activities
from .errors import Error, Hangup
from .media import DTMFPlayer, FilePlayer, bridge, unbridge
from .recorder import WholeCallRecorder
from .states import CallState, call_transition

if TYPE_CHECKING:
    from .controller import Controller

log = logging.getLogger("wholecall.controller")


class Leg:
    """One direction of a call's audio: the producer side of its ring."""

    def __init__(self, writer: LegWriter, name: str) -> None:
        self._w = writer
        self.name = name
        # Legs this audio is also sent to (bridges, conferences). A tuple: the empty one is
        # shared and untracked, where a list per leg was two more objects a call for every
        # full collection of the controller's process to walk (at 20,000 calls, ~40 each).
        self._relay: tuple[Leg, ...] = ()

    @property
    def slot(self) -> int:
        return self._w.slot

    @property
    def arena(self) -> Arena:
        """The ring arena this leg lives in (the recorder writes its pause gate there)."""
        return self._w.arena

    @property
    def position(self) -> int:
        """The leg's sample clock (8 kHz samples since the channel was created)."""
        return self._w.position

    @property
    def overruns(self) -> int:
        """Samples dropped because the ring was full (only with block=False)."""
        return self._w.overruns

    def write(self, pcm: np.ndarray, block: bool = True, timeout: float | None = None) -> int:
        """Append int16 8 kHz samples; returns how many were stored (see `shm.LegWriter.write`)."""
        done = self._w.write(pcm, block=block, timeout=timeout)
        for leg in self._relay:
            # A bridged peer must never stall this call: relay without waiting.
            leg._w.write(pcm, block=False)
        return done

    def relay_to(self, legs: list[Leg]) -> None:
        """Also send this leg's audio to `legs` from now on (bridges and conferences set it)."""
        self._relay = tuple(legs)

    def skip(self, samples: int) -> None:
        """Advance the leg's clock over a gap (lost packets): recorded as silence."""
        self._w.skip(samples)

    def __repr__(self) -> str:
        return f"<Leg {self.name} slot={self.slot} position={self.position}>"


class CallChannel:
    """A call channel as the platform's API knows it; create with `Controller.channel()`."""

    State = CallState

    def __init__(self, controller: Controller, channel_id: int, slots: list[int], state: CallState) -> None:
        self.controller = controller
        self.id = channel_id
        self.slots = tuple(slots)  # of ints: the collector stops tracking it after one look
        self._lock = threading.RLock()
        self._state = state
        arena = controller.arena
        assert arena is not None, "channels exist only on a started controller"
        self.inbound = Leg(LegWriter(arena, slots[0]), "inbound")
        self.outbound = Leg(LegWriter(arena, slots[1]), "outbound")
        #: Activities the spec says a recorder cannot be started under (media.py keeps them).
        self.activities = Activities(channel_id)
        self.WholeCallRecorder = WholeCallRecorder(self)
        self._closed = False
        # Made when first used: most calls never play, and each player is two objects
        # (itself and its weak reference) for every full collection to walk.
        self._file_player: FilePlayer | None = None
        self._dtmf_player: DTMFPlayer | None = None

    @property
    def FilePlayer(self) -> FilePlayer:  # noqa: N802 - the platform API's name
        """Plays a WAV file to the far end (`media.FilePlayer`)."""
        with self._lock:
            if self._file_player is None:
                self._file_player = FilePlayer(self)
            return self._file_player

    @property
    def DTMFPlayer(self) -> DTMFPlayer:  # noqa: N802 - the platform API's name
        """Sends in-band DTMF digits to the far end (`media.DTMFPlayer`)."""
        with self._lock:
            if self._dtmf_player is None:
                self._dtmf_player = DTMFPlayer(self)
            return self._dtmf_player

    # -- call state ---------------------------------------------------------------------------

    def state(self) -> CallState:
        with self._lock:
            return self._state

    def _fire(self, event: str) -> None:
        with self._lock:
            if self._closed:
                raise Error(f"Channel({self.id}) is closed")
            new = call_transition(f"Channel({self.id})", self._state, event)
            if new is not self._state:
                log.info("Channel(%d) call %s -> %s", self.id, self._state.value, new.value,
                         extra={"event": "call_state", "channel": self.id, "old": self._state.value, "new": new.value})
            self._state = new

    def ring(self) -> None:
        """Signal ringing to the caller: CALL_INCOMING -> RING_INCOMING."""
        self._fire("ring")

    def answer(self) -> None:
        """Answer the incoming call: -> ANSWERED."""
        try:
            self._fire("answer")
        except Exception as e:
            raise Error(str(e)) from None

    def call(self, answer: bool = True) -> None:
        """Place an outbound call: IDLE -> CALL_CONNECTING, and on to ANSWERED at once
        unless `answer` is False (then the call rings until `remote_answer()`)."""
        try:
            self._fire("call")
            if answer:
                self._fire("connected")
        except Exception as e:
            raise Error(str(e)) from None

    def remote_answer(self) -> None:
        """The far end of an outbound call answers: CALL_CONNECTING -> ANSWERED."""
        try:
            self._fire("connected")
        except Exception as e:
            raise Error(str(e)) from None

    def incoming(self) -> None:
        """A call arrives on this idle channel: IDLE -> CALL_INCOMING."""
        try:
            self._fire("incoming")
        except Exception as e:
            raise Error(str(e)) from None

    def hang_up(self, wait: bool = True) -> None:
        """End the call: activities stop, a running recording ends with HANGUP, state IDLE.

        Returns once the recording's file is final, unless `wait` is False (a switch
        hanging up thousands of calls at once asks first and waits for all together).
        """
        with self._lock:
            if self._state is CallState.IDLE:
                return
            self._fire("hang_up")
        self._stop_activities()
        self.WholeCallRecorder._hangup(self.controller.config.stop_timeout_s if wait else 0.0)

    # -- activities that block starting a recorder (media.py implements them) --------------------

    def require_answered(self, what: str) -> None:
        """Hangup if the call is IDLE, Error unless ANSWERED: the guard every activity shares."""
        state = self.state()
        if state is CallState.IDLE:
            raise Hangup(f"Channel({self.id}): cannot {what}: the call is IDLE")
        if state is not CallState.ANSWERED:
            raise Error(f"Channel({self.id}): cannot {what}: the call is {state.value}, not ANSWERED")

    def _stop_activities(self) -> None:
        for player in (self._file_player, self._dtmf_player):
            if player is not None:  # a player never made has nothing to stop
                player.stop()
        act = self.activities
        if act.peer is not None:
            self.disconnect()
        conference, moh = act.conference, act.moh
        if conference is not None:
            conference.remove(self)  # type: ignore[attr-defined]
        if moh is not None:
            moh.remove(self)  # type: ignore[attr-defined]

    def play(self, filename: str, realtime: bool = True) -> None:
        """The spec's transmitter `play()`: send a WAV file to the far end; returns when sent.

        Shorthand for `FilePlayer.play`; use `FilePlayer.start` to play in the background.
        """
        self.FilePlayer.play(filename, realtime)

    def play_dtmf(self, digits: str, tone_ms: int = 80, gap_ms: int = 80, realtime: bool = True) -> None:
        """The spec's transmitter `play_dtmf()`: send in-band DTMF digits; returns when sent."""
        self.DTMFPlayer.play(digits, tone_ms, gap_ms, realtime)

    def connect(self, other: CallChannel) -> None:
        """Bridge two answered channels: each one's inbound audio becomes the other's outbound."""
        bridge(self, other)

    def disconnect(self) -> None:
        unbridge(self)

    # -- recorder plumbing --------------------------------------------------------------------

    def position(self) -> int:
        """Where the call is now: the furthest leg's clock."""
        return max(self.inbound.position, self.outbound.position)

    def arm(self, job_id: int) -> int:
        """Mark both legs as recorded by `job_id`; returns the position the recording starts at.

        Holding both in-process producers' locks makes the switch atomic for them: every
        sample written after this returns is kept for the worker (`shm.Arena.arm`).
        """
        w_in, w_out = self.inbound._w, self.outbound._w
        with w_in._lock, w_out._lock:
            return w_in.arena.arm([w_in.slot, w_out.slot], job_id)

    def disarm(self, job_id: int) -> None:
        self.inbound._w.arena.disarm(self.slots, job_id)

    def close(self) -> None:
        """Hang up and give the channel's ring slots back to the arena."""
        self.hang_up()
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.controller.release_channel(self)

    def __repr__(self) -> str:
        return f"<CallChannel {self.id} {self.state().value}>"
