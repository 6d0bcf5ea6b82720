"""The ingest process's RTP counters summed over every leg it ever served, for metrics.

A leg's counters live as long as its call; a metric must only grow. So when a call is
removed its final counters are added to the retired totals, and a scrape's answer is
retired + live. The live legs' kernel drops are not read here: /proc/net/udp lists every
UDP socket of the host (thousands; 30+ ms to read on a busy box), and the ingest loop is
the media path. The answer carries the live sockets' inodes instead, and the service
process reads the drops for them (`add_kernel_drops`), off that path.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterable
from typing import Any

#: Per-leg counters summed into totals (keys of `ingest_proc.Leg.counters()`).
COUNTERS = ("packets", "received", "lost", "reordered", "duplicates", "late", "ssrc_changes", "resyncs",
            "undecodable", "foreign_source", "bad_version", "too_short", "malformed", "unknown_payload_type",
            "srtp_replayed", "srtp_rejected", "ring_overruns", "kernel_drops")


def drops_by_inode(paths: tuple[str, ...] = ("/proc/net/udp", "/proc/net/udp6")) -> dict[int, int]:
    """Socket inode -> datagrams the kernel dropped for it (receive buffer full)."""
    out: dict[int, int] = {}
    for path in paths:
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if len(fields) > 12:
                        out[int(fields[9])] = int(fields[12])
        except (OSError, StopIteration, ValueError):
            continue
    return out


def leg_counts(leg: Any) -> dict[str, int]:
    """The `COUNTERS` of one live leg (an `ingest_proc.Leg`), kernel drops aside."""
    c = leg.jitter.counters()
    return {"packets": leg.packets, "received": c.received, "lost": c.lost, "reordered": c.reordered,
            "duplicates": c.duplicates, "late": c.late, "ssrc_changes": c.ssrc_changes, "resyncs": c.resyncs,
            "undecodable": c.bad, "foreign_source": leg.foreign, "bad_version": leg.bad_version,
            "too_short": leg.too_short, "malformed": leg.malformed, "unknown_payload_type": leg.unknown_pt,
            "srtp_replayed": leg.srtp_replay, "srtp_rejected": leg.srtp_failed,
            "ring_overruns": leg.writer.overruns}


class LegTotals:
    """Totals by leg name ("inbound", "outbound") over retired and live legs."""

    def __init__(self) -> None:
        self.retired: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)

    def retire(self, media: dict[str, dict]) -> None:
        """A call's final `Call.media()`, added once when the call is removed."""
        for name, counts in media.items():
            for key in COUNTERS:
                value = counts.get(key, 0)
                if isinstance(value, int) and value > 0:  # kernel_drops is -1 when unreadable
                    self.retired[name][key] += value

    def current(self, calls: Iterable[Any]) -> tuple[dict[str, dict[str, int]], dict[str, list[int]]]:
        """Retired + every live leg of `calls` (`ingest_proc.Call`s), by leg name; and the
        socket inodes of the live legs by leg name (their kernel drops are not included)."""
        out = {name: dict(counts) for name, counts in self.retired.items()}
        inodes: dict[str, list[int]] = {}
        for call in calls:
            for leg in call.legs:
                sums = out.setdefault(leg.name, {})
                for key, value in leg_counts(leg).items():
                    sums[key] = sums.get(key, 0) + value
                try:
                    inodes.setdefault(leg.name, []).append(os.fstat(leg.sock.fileno()).st_ino)
                except OSError:
                    pass
        return out, inodes


def add_kernel_drops(legs: dict[str, dict[str, int]], inodes: dict[str, list[int]]) -> None:
    """Add the live sockets' kernel drops (one read of /proc/net/udp{,6}) to `legs` in place."""
    if not any(inodes.values()):
        return
    drops = drops_by_inode()
    for name, nodes in inodes.items():
        sums = legs.setdefault(name, {})
        sums["kernel_drops"] = sums.get("kernel_drops", 0) + sum(drops.get(i, 0) for i in nodes)


def merge_replies(replies: list[dict[str, Any]]) -> dict[str, Any] | None:
    """One `totals` reply from those of several ingest processes (legs sharded by port):
    counters and the ingest's numeric figures summed, inodes joined. None if none answered."""
    ok = [r for r in replies if r and r.get("ok")]
    if not ok:
        return None
    legs: dict[str, dict[str, int]] = {}
    inodes: dict[str, list[int]] = {}
    ingest: dict[str, float] = {}
    for r in ok:
        for name, counts in (r.get("legs") or {}).items():
            sums = legs.setdefault(name, {})
            for key, value in counts.items():
                sums[key] = sums.get(key, 0) + value
        for name, nodes in (r.get("inodes") or {}).items():
            inodes.setdefault(name, []).extend(nodes)
        for key, value in (r.get("ingest") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                ingest[key] = ingest.get(key, 0) + value
    return {"ok": True, "legs": legs, "inodes": inodes, "ingest": ingest, "processes": len(ok)}
