"""What a channel is doing that the spec says blocks starting its whole call recorder.

"A whole call recorder cannot be started if the channel is currently using a
transmitter function, is connected to another channel, is in a conference or is on
music on hold." Each channel owns one `Activities`; the media functions
(`controller/media.py`) record here what they begin and end, and the recorder asks
`busy()` before it starts. Neither reaches into the other, nor into the channel.
"""

from __future__ import annotations

import threading
from typing import Protocol

from .errors import Error


class Named(Protocol):
    """A conference or music-on-hold resource, as this module needs to know it."""

    name: str


class Peer(Protocol):
    """A bridged channel, as this module needs to know it."""

    id: int


class Activities:
    """The blocking activities of one channel; thread-safe (players run on their own threads)."""

    def __init__(self, channel_id: int) -> None:
        self._id = channel_id
        self._lock = threading.Lock()
        # "play()", "play_dtmf()" while they run. A tuple, not a set: an empty set is 216 B,
        # kept by every call of the process, and a channel runs at most two transmitters.
        self._transmitters: tuple[str, ...] = ()
        self.peer: Peer | None = None
        """The channel this one is connected (bridged) to."""
        self.conference: Named | None = None
        self.moh: Named | None = None
        """The music-on-hold resource playing into this channel."""

    def begin_transmit(self, what: str) -> None:
        """A transmitter function starts; Error if the same one is already running."""
        with self._lock:
            if what in self._transmitters:
                raise Error(f"Channel({self._id}): {what} is already running")
            self._transmitters = (*self._transmitters, what)

    def end_transmit(self, what: str) -> None:
        with self._lock:
            self._transmitters = tuple(t for t in self._transmitters if t != what)

    def join(self, kind: str, resource: Named) -> None:
        """Enter a conference (`kind` "conference") or music on hold ("moh"); Error if already in one."""
        with self._lock:
            current = getattr(self, kind)
            if current is not None:
                what = "in conference" if kind == "conference" else "on music on hold"
                raise Error(f"Channel({self._id}) is already {what} {current.name!r}")
            setattr(self, kind, resource)

    def leave(self, kind: str, resource: Named) -> bool:
        """Leave `resource`; False if the channel was not in it."""
        with self._lock:
            if getattr(self, kind) is not resource:
                return False
            setattr(self, kind, None)
            return True

    def busy(self) -> list[str]:
        """Why a recorder cannot start now, one phrase per activity (empty: it can)."""
        with self._lock:
            why = [f"is using {t}" for t in sorted(self._transmitters)]
            if self.peer is not None:
                why.append(f"is connected to Channel({self.peer.id})")
            if self.conference is not None:
                why.append(f"is in conference {self.conference.name!r}")
            if self.moh is not None:
                why.append(f"is on music on hold {self.moh.name!r}")
            return why
