"""Per-leg playout core: RTP packets in, a gap-free run of samples on the call's clock out.

No I/O and no clock of its own (aioquic style): the caller passes `now` (seconds, any
monotonic clock that `call_t0` also came from) to `push` and `pull`, so tests are exact and
deterministic.

Why it works this way (issue 22): the worker reads both legs of a call at the same ring
position, so each leg must produce exactly one sample per tick of the call's 8 kHz clock,
whatever the network did. Therefore

* positions, not arrival order, decide where audio goes. A stream's first packet anchors
  it: it lands at the call clock of its arrival, ``(now - call_t0) * 8000``; every later
  packet of the stream lands at ``anchor + (timestamp - first timestamp)``, with 32-bit
  timestamp and 16-bit sequence wrap unrolled into extended counters;
* output is held back by the re-order window (default 200 ms): `pull(now)` releases every
  position below ``clock(now) - window``, audio where packets landed and silence of the
  exact length elsewhere, so a late packet within the window still lands at its place, a
  lost one is silence at its place, and a leg that never sends still advances. Both legs of
  a call released by the same `now` end at the same position;
* a packet whose place was already released is "late" and dropped; a repeated sequence
  number is a duplicate and dropped; a sequence number far from the others (RFC 3550 A.1)
  is not believed until the next packet follows it, then the numbering restarts there;
* a new SSRC (re-INVITE, transfer, hold) continues right after the previous stream's last
  sample if it arrives within the window of it, else at its arrival time;
* a stream whose newest packet would land more than `max_ahead` past the clock is
  re-anchored at its arrival time ("resync"). One whose newest packet (audio, event or CN)
  lands before what has been released is re-anchored only once that has lasted a window's time: a delay spike's
  held packets arrive together and are dropped as late while the packets after them land
  where they always did (re-anchoring at the first of them shifted the leg for the rest of
  the call), where a stream that has moved (sender clock drift, a changed delay) stays
  late and is re-anchored, at the cost of a window of audio now and then. An in-sequence
  packet whose timestamp stepped back by more than the window (a sender restarting its
  clock) is re-anchored at once: nothing after it could land otherwise;
* RFC 4733 telephone events become digits (reported once per key press, with the position
  where the press starts) and CN (RFC 3389) only moves the stream along: neither is ever
  written as audio; their spans are silence unless audio packets cover them.

Where the state lives (issue 22's throughput): the leg's current stream's counters, its
release point and its landed audio are columns of a `LegTable` row (a private one-row
table when none is given), so that `ingest.fastpath` can place the common packet (the
next sequence number of the current stream, G.711) for thousands of legs in one compiled
loop. Audio lands in the row's staging ring; where two packets cover the same samples the
one placed last wins.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from .legtable import KIND_OTHER, KIND_PCMA, KIND_PCMU, STAGE, STAGE_MASK, LegTable
from .payload import PCMA, PCMU, RATE, Kind, PayloadError, PayloadTypes
from .telephone_event import TelephoneEvent, parse_event

DEFAULT_WINDOW = 0.2
"""Re-order window in seconds."""
DEFAULT_MAX_AHEAD = 1.0
"""How far past the call clock (seconds) a stream's newest packet may land before a resync."""
MAX_STREAMS = 8
"""Streams (SSRCs) remembered per leg; the oldest is forgotten past this (garbage SSRCs)."""

_SEQ_SEEN = 2048  # sequence numbers remembered for duplicate detection (about 40 s at 50/s)
# RFC 3550 A.1: a sequence number this far ahead of the highest, or this far behind it, is
# not loss or re-ordering but a sender that restarted its numbering.
MAX_DROPOUT = 3000
MAX_MISORDER = 100
# Two packets far behind in numbering that still land within this of the call clock by the
# stream's own timestamps are old packets delivered late (a failover, a duplicate path), not a
# restart: a sender that restarts draws new, unrelated numbers and timestamps.
STALE_S = 60
_EVENT_STARTS = 32  # telephone-event start timestamps remembered per stream

Chunk = tuple[int, "np.ndarray | int"]
"""(position, int16 samples) or (position, silence length in samples)."""


@dataclass(frozen=True, slots=True)
class Digit:
    """A key press (RFC 4733 event 0..15) on this leg."""

    position: int
    """Leg sample position where the press starts."""
    digit: str
    """``0``-``9``, ``*``, ``#``, ``A``-``D``."""
    volume: int
    """Power level in -dBm0 as the sender reported it."""
    ssrc: int


@dataclass(frozen=True, slots=True)
class LegCounters:
    """What happened to a leg's packets so far (a snapshot)."""

    received: int
    """Packets of a known payload type that decoded (duplicates and late ones included)."""
    lost: int
    """Sequence numbers never received, summed over the leg's streams (RFC 3550 A.3 style)."""
    reordered: int
    """Packets that arrived after a packet with a higher sequence number of the same stream."""
    duplicates: int
    """Packets whose sequence number had already been received; dropped."""
    late: int
    """Audio packets whose place had already been released, wholly (dropped) or in part (their
    rest kept)."""
    ssrc_changes: int
    """Times the leg switched to a new (or returning) SSRC."""
    resyncs: int
    """Times a stream that had left the window was re-anchored at its arrival."""
    bad: int
    """Packets dropped for an unknown payload type or an undecodable payload."""


class _Stream:
    """One SSRC's state: how its timestamps map to positions and what it has sent."""

    __slots__ = (
        "ssrc", "anchor", "base_ts", "max_ts", "max_seq", "min_seq", "unique", "seen",
        "last_arrival", "end", "event_ts", "event_code", "event_end", "event_duration", "event_starts",
        "late_since", "bad_seq",
    )

    def __init__(self, ssrc: int, ts: int, seq: int, anchor: int, now: float) -> None:
        self.ssrc = ssrc
        self.anchor = anchor  # position of extended timestamp base_ts
        self.base_ts = ts
        self.max_ts = ts  # highest extended timestamp so far
        self.max_seq = seq  # highest extended sequence number so far
        self.min_seq = seq
        self.unique = 0
        self.seen: set[int] = set()
        self.last_arrival = now
        self.end = anchor  # one past the last position this stream covered
        self.event_ts: int | None = None
        self.event_code = -1
        self.event_end = False
        self.event_duration = 0
        self.event_starts: deque[int] = deque(maxlen=_EVENT_STARTS)
        self.late_since = -1.0  # arrival of the first of the newest packets that were all late; -1: none
        self.bad_seq = -1  # RFC 3550 A.1: the sequence number that would confirm a restart; -1: none

    def lost(self) -> int:
        return max(0, self.max_seq - self.min_seq + 1 - self.unique)


def _unwrap(value: int, reference: int, bits: int) -> int:
    """Extend a `bits`-wide counter to the value nearest to the extended `reference`."""
    mask = (1 << bits) - 1
    delta = (value - reference) & mask
    if delta >= 1 << (bits - 1):
        delta -= 1 << bits
    return reference + delta


class JitterBuffer:
    """The playout core of one leg; see the module docstring for the rules."""

    def __init__(
        self,
        call_t0: float,
        payload_types: PayloadTypes | None = None,
        *,
        window: float = DEFAULT_WINDOW,
        max_ahead: float = DEFAULT_MAX_AHEAD,
        rate: int = RATE,
        table: LegTable | None = None,
        index: int | None = None,
    ) -> None:
        """`call_t0`: the instant (same clock as `now`) of the call's sample position 0.

        `table`/`index`: the `LegTable` row holding this leg's hot state (a fresh row of
        a private table when not given); the fast path needs the 8 kHz clock.
        """
        if not window >= 0:
            raise ValueError(f"re-order window {window} s must be >= 0")
        if not max_ahead >= window:
            raise ValueError(f"max_ahead {max_ahead} s must be >= the window {window} s")
        self.call_t0 = call_t0
        self.rate = rate
        self.payload_types = payload_types if payload_types is not None else PayloadTypes()
        self.window = round(window * rate)
        """Re-order window in samples."""
        self.max_ahead = round(max_ahead * rate)
        self.stale = STALE_S * rate
        """A number far behind whose timestamp still lands this near the clock is an old packet."""
        if table is None:
            table = LegTable(1)
            index = table.allocate()
        elif index is None:
            raise ValueError("a JitterBuffer on a shared LegTable needs its row index")
        self._t = table
        self._i = i = index
        table.call_t0[i] = call_t0
        table.window[i] = self.window
        table.max_ahead[i] = self.max_ahead
        table.released[i] = 0
        table.cur_ssrc[i] = -1
        fast = rate == RATE
        for pt, fmt in self.payload_types.items():
            table.kind[i, pt] = (KIND_PCMA if fmt is PCMA else KIND_PCMU if fmt is PCMU else KIND_OTHER) if fast else 0
        self._parked: list[tuple[int, int, np.ndarray]] = []  # heap: audio beyond the stage's reach
        self._order = 0
        self._streams: dict[int, _Stream] = {}
        self._current: _Stream | None = None
        self._digits: list[Digit] = []
        self._retired_lost = 0
        self.received = 0
        self.reordered = 0
        self.duplicates = 0
        self.late = 0
        self.ssrc_changes = 0
        self.resyncs = 0
        self.bad = 0

    @property
    def released(self) -> int:
        """Every position below this has been returned by `pull`."""
        return int(self._t.released[self._i])

    @released.setter
    def released(self, value: int) -> None:
        self._t.released[self._i] = value

    def clock(self, now: float) -> int:
        """The call's sample position at `now` (never negative)."""
        return max(0, math.floor((now - self.call_t0) * self.rate))

    def push(
        self,
        ssrc: int,
        sequence: int,
        timestamp: int,
        payload_type: int,
        payload: bytes | bytearray | memoryview | np.ndarray,
        now: float,
        marker: bool = False,
        decoded: np.ndarray | None = None,
    ) -> None:
        """Take one received packet: its header fields and its payload bytes (padding removed).

        Audio is decoded here, through the call's payload-type map, so that one place
        decides what a payload type means. A receiver that decoded a whole batch of G.711
        at once (one table lookup for every row) passes a packet's samples as `decoded`;
        they are used only if the map says the payload type is audio.
        """
        self._sync_in()
        try:
            self._push(ssrc, sequence, timestamp, payload_type, payload, now, marker, decoded)
        finally:
            self._sync_out()

    def _push(self, ssrc: int, sequence: int, timestamp: int, payload_type: int,
              payload: bytes | bytearray | memoryview | np.ndarray, now: float, marker: bool,
              decoded: np.ndarray | None) -> None:
        fmt = self.payload_types.get(payload_type)
        if fmt is None:
            self.bad += 1
            return
        try:
            if fmt.kind is Kind.AUDIO:
                samples = fmt.decode(payload) if decoded is None else decoded  # type: ignore[misc]
                event = None
            elif fmt.kind is Kind.EVENT:
                event = parse_event(payload if not isinstance(payload, np.ndarray) else payload.tobytes())
                samples = None
            else:
                samples = event = None
        except PayloadError:
            self.bad += 1
            return
        self.received += 1
        clock = self.clock(now)
        stream = self._streams.get(ssrc)
        if stream is None:
            stream = self._start_stream(ssrc, timestamp, sequence, clock, now)
            ext_ts = stream.base_ts
        else:
            ext_ts = _unwrap(timestamp, stream.max_ts, 32)
            if (
                stream is not self._current
                and ext_ts > stream.max_ts
                and now - stream.last_arrival > self.window / self.rate
            ):
                self._switch_to(stream, ext_ts, clock)  # a stream that comes back (unhold)

        ext_seq = _unwrap(sequence, stream.max_seq, 16)
        in_order = False
        if -MAX_MISORDER <= ext_seq - stream.max_seq <= MAX_DROPOUT:
            if ext_seq in stream.seen:
                self.duplicates += 1
                return
            stream.seen.add(ext_seq)
            if len(stream.seen) > _SEQ_SEEN:
                floor = stream.max_seq - _SEQ_SEEN // 2
                stream.seen = {s for s in stream.seen if s > floor}
            stream.unique += 1
            in_order = ext_seq > stream.max_seq  # (a stream's first packet is neither)
            if ext_seq < stream.max_seq:
                self.reordered += 1
                stream.min_seq = min(stream.min_seq, ext_seq)
            else:
                stream.max_seq = ext_seq
        elif ext_seq < stream.max_seq and abs(stream.anchor + ext_ts - stream.base_ts - clock) <= self.stale:
            pass  # old packets of this very numbering and timeline, delivered late (a duplicate path): no restart
        elif sequence == stream.bad_seq:  # the second in a row of a new numbering: the sender restarted it
            self._restart_sequence(stream, ext_seq)
            in_order = True
        else:  # a jump (RFC 3550 A.1): placed by its timestamp as ever, its number not yet believed
            stream.bad_seq = (sequence + 1) & 0xFFFF
        stream.last_arrival = now

        position = stream.anchor + ext_ts - stream.base_ts
        if ext_ts > stream.max_ts:
            if position > clock + self.max_ahead or (position < self.released and self._stays_late(stream, now)):
                position = self._resync(stream, ext_ts, clock)
            elif position >= self.released:
                stream.late_since = -1.0
            stream.max_ts = ext_ts
        elif in_order and samples is not None and ext_ts < stream.max_ts - self.window:
            position = self._resync(stream, ext_ts, clock)  # the sender's timestamps stepped back
            stream.max_ts = ext_ts

        if samples is not None:
            self._land(position, samples)
            stream.end = max(stream.end, position + len(samples))
        elif event is not None:
            self._event(stream, ext_ts, position, event, marker)
            stream.end = max(stream.end, position + event.duration)
        else:
            stream.end = max(stream.end, position)

    def place(self, position: int, samples: np.ndarray) -> None:
        """Audio whose position the caller worked out (a stream with its own timestamps, or
        arrival order): held and released exactly like a packet's; counted late if its
        place was already released."""
        self.received += 1
        self._land(position, samples)

    def pull(self, now: float) -> list[Chunk]:
        """Release everything below ``clock(now) - window``, in position order, gaps as silence."""
        self._sync_in()
        return self._release(self.clock(now) - self.window)

    def flush(self, now: float) -> list[Chunk]:
        """At the end of the call: release everything below ``clock(now)``, not holding the window."""
        self._sync_in()
        return self._release(self.clock(now))

    def release_to(self, horizon: int) -> list[Chunk]:
        """Release everything below `horizon` (a stream that has ended: all it sent lands,
        even what a sender ahead of our clock placed past ``clock(now)``)."""
        return self._release(horizon)

    def pop_digits(self) -> list[Digit]:
        """Digits reported since the last call, in the order their first packets arrived."""
        digits, self._digits = self._digits, []
        return digits

    def counters(self) -> LegCounters:
        self._sync_in()
        return LegCounters(
            received=self.received,
            lost=self._retired_lost + sum(s.lost() for s in self._streams.values()),
            reordered=self.reordered,
            duplicates=self.duplicates,
            late=self.late,
            ssrc_changes=self.ssrc_changes,
            resyncs=self.resyncs,
            bad=self.bad,
        )

    @property
    def parked(self) -> int:
        """Pieces of audio landed beyond the staging ring's reach, waiting for the release to come near."""
        return len(self._parked)

    def _sync_in(self) -> None:
        """Take over what the fast path did to the current stream since the last look.

        The fast path only ever accepts the next sequence number of the current stream,
        so the packets it took are exactly the extended numbers above ours: they join
        `seen` (duplicate detection) and the received counts.
        """
        cur = self._current
        if cur is None:
            return
        t, i = self._t, self._i
        new = int(t.max_seq[i])
        taken = new - cur.max_seq
        if taken <= 0:
            return
        cur.late_since = -1.0  # it takes only packets that landed in place
        self.received += taken
        cur.unique += taken
        lo = cur.max_seq + 1
        if len(cur.seen) + taken > _SEQ_SEEN:
            floor = new - _SEQ_SEEN // 2
            cur.seen = {s for s in cur.seen if s > floor}
            lo = max(lo, floor + 1)
        cur.seen.update(range(lo, new + 1))
        cur.max_seq = new
        cur.max_ts = int(t.max_ts[i])
        cur.end = int(t.end[i])
        cur.last_arrival = float(t.last_arrival[i])

    def _sync_out(self) -> None:
        """Publish the current stream's fields for the fast path."""
        cur = self._current
        t, i = self._t, self._i
        if cur is None:
            t.cur_ssrc[i] = -1
            return
        t.cur_ssrc[i] = cur.ssrc
        t.anchor[i] = cur.anchor
        t.base_ts[i] = cur.base_ts
        t.max_ts[i] = cur.max_ts
        t.max_seq[i] = cur.max_seq
        t.end[i] = cur.end
        t.last_arrival[i] = cur.last_arrival

    # -- inside ---------------------------------------------------------------------

    def _stays_late(self, stream: _Stream, now: float) -> bool:
        """Whether a stream's newest packet, late, means the stream has moved: it has been
        late for a window's time (one late burst is a delay spike, see the module
        docstring). The same for telephone events and CN: an event whose first packets were
        lost, or a delayed CN packet, re-anchored the whole leg at once (a reviewer's find)."""
        if stream.late_since < 0:
            stream.late_since = now
        return now - stream.late_since >= self.window / self.rate

    def _restart_sequence(self, stream: _Stream, ext_seq: int) -> None:
        """The sender restarted its sequence numbers (RFC 3550 A.1: two packets in a row after
        a large jump): the run so far keeps its losses and the new one starts at the first
        of the two; counting the new run against the old one's numbers made tens of
        thousands of packets "lost" (or every later one "re-ordered")."""
        self._retired_lost += stream.lost()
        stream.min_seq = ext_seq - 1
        stream.max_seq = ext_seq
        stream.unique = 2
        stream.seen = {ext_seq - 1, ext_seq}
        stream.bad_seq = -1

    def _resync(self, stream: _Stream, ext_ts: int, clock: int) -> int:
        """Re-anchor `stream` so that `ext_ts` lands at `clock`; returns that position."""
        stream.anchor = clock
        stream.base_ts = ext_ts
        stream.late_since = -1.0
        self.resyncs += 1
        return clock

    def _start_stream(self, ssrc: int, ts: int, seq: int, clock: int, now: float) -> _Stream:
        if len(self._streams) >= MAX_STREAMS:
            oldest = min(
                (s for s in self._streams.values() if s is not self._current), key=lambda s: s.last_arrival
            )
            self._retired_lost += oldest.lost()
            del self._streams[oldest.ssrc]
        stream = _Stream(ssrc, ts, seq, clock, now)
        self._streams[ssrc] = stream
        if self._current is not None:
            self._switch_to(stream, ts, clock)
        self._current = stream
        return stream

    def _switch_to(self, stream: _Stream, ext_ts: int, clock: int) -> None:
        """Anchor `stream` (new or returning) so that `ext_ts` lands where the leg continues."""
        previous = self._current
        anchor = clock
        if previous is not None and previous is not stream:
            self.ssrc_changes += 1
            if clock <= previous.end + self.window:
                anchor = previous.end
        stream.anchor = anchor
        stream.base_ts = ext_ts
        stream.max_ts = ext_ts
        stream.end = max(stream.end, anchor)
        stream.late_since = -1.0  # a returning stream's old lateness says nothing now
        self._current = stream

    def _land(self, position: int, samples: np.ndarray) -> None:
        released = self.released
        end = position + len(samples)
        if end <= released:
            self.late += 1
            return
        if position < released:
            self.late += 1  # in part: what was released is lost, counted as the whole would be
            samples = samples[released - position:]
            position = released
        self._place(position, samples)

    def _place(self, position: int, samples: np.ndarray) -> None:
        """Write into the staging ring what it can hold now; park the rest (wholly at or past its reach)."""
        released = self.released
        reach = released + STAGE
        if position < released:
            samples = samples[released - position:]
            position = released
        n = min(len(samples), max(0, reach - position))
        if n:
            stage = self._t.stage[self._i]
            col = position & STAGE_MASK
            first = min(n, STAGE - col)
            stage[col:col + first] = samples[:first]
            if first < n:
                stage[:n - first] = samples[first:n]
        if n < len(samples):
            heapq.heappush(self._parked, (position + n, self._order, samples[n:]))
            self._order += 1
            self._t.parked[self._i] = 1

    def _event(self, stream: _Stream, ext_ts: int, position: int, event: TelephoneEvent, marker: bool) -> None:
        if ext_ts == stream.event_ts:  # the same event again: update, repeat, or end retransmission
            stream.event_end = stream.event_end or event.end
            stream.event_duration = max(stream.event_duration, event.duration)
            return
        if ext_ts in stream.event_starts:  # a late packet of an event we already reported
            return
        stream.event_starts.append(ext_ts)
        continues = (
            stream.event_ts is not None
            and not marker
            and event.event == stream.event_code
            and not stream.event_end
            # Where the segment it continues ended: at its duration so far, or (its last packets,
            # those carrying the full 0xFFFF, lost) exactly 0xFFFF after it began.
            and (0 < ext_ts - stream.event_ts <= stream.event_duration or ext_ts - stream.event_ts == 0xFFFF)
        )
        stream.event_ts = ext_ts
        stream.event_code = event.event
        stream.event_end = event.end
        stream.event_duration = event.duration
        if continues:  # RFC 4733 2.5.1.3: the next segment of a long press
            return
        digit = event.digit
        if digit is not None:
            self._digits.append(Digit(position=position, digit=digit, volume=event.volume, ssrc=stream.ssrc))

    def _release(self, horizon: int) -> list[Chunk]:
        """Copy ``[released, horizon)`` out of the staging ring (zeroing it behind), a stage at a time."""
        cursor = self.released
        if horizon <= cursor:
            return []
        out: list[Chunk] = []
        stage = self._t.stage[self._i]
        parked = self._parked
        while cursor < horizon:
            while parked and parked[0][0] < cursor + STAGE:  # now within reach
                position, _, samples = heapq.heappop(parked)
                self._place(position, samples)
            step = min(horizon, cursor + STAGE)
            n = step - cursor
            col = cursor & STAGE_MASK
            first = min(n, STAGE - col)
            chunk = np.empty(n, np.int16)
            chunk[:first] = stage[col:col + first]
            stage[col:col + first] = 0
            if first < n:
                chunk[first:] = stage[:n - first]
                stage[:n - first] = 0
            out.append((cursor, chunk if chunk.any() else n))  # all silence: its length, as for a gap
            cursor = step
            self.released = cursor
        if not parked:
            self._t.parked[self._i] = 0
        return out
