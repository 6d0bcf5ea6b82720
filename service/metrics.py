"""`GET /metrics`: the service's figures in Prometheus' text format, read at scrape time.

Why one collector and no per-process registries: the figures already exist where they
are kept, and copying them into metric objects on every change would put work on the
hot paths. The workers publish progress and heartbeats to the controller (shared memory
and their event socket: `Controller.stats()`), the controller totals the recordings that
ended (`Controller.counters`), the ingest process keeps per-leg RTP counters and answers
``{"op": "totals"}`` over its control socket (`service.ingest_totals`). A scrape asks the
ingest once, then `ServiceCollector.collect()` turns the current values into metric
families. Nothing but the service process serves HTTP.

Names follow Prometheus' conventions: ``wholecall_`` prefix, ``_total`` counters, base
units (seconds, bytes). Core utilisation of a worker is ``rate(wholecall_worker_cpu_seconds_total[1m])``
(1.0 = one core busy). The ingest's counters (RTP, ring overruns) are kept monotonic
here: a leg's RFC 3550 "lost" count may step back when a late packet fills a gap, and a
counter that falls would read as a reset; the exposed value holds its highest until the
true value passes it again.

WebSocket media (another ingest) reports ``messages`` and ``errors`` through a
``websocket`` map in the ingest's totals reply or a ``websocket_stats`` dict attribute
of the service; both families exist, at 0, before anything feeds them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from wholecall.controller.states import RecorderState

from .ingest_totals import add_kernel_drops

if TYPE_CHECKING:
    from .app import Service

CONTENT_TYPE = CONTENT_TYPE_LATEST
#: start() latency buckets in seconds: a start is ~1-2 ms when idle; a loaded box or a slow
#: disk shows in the upper ones; 10 s is Config.start_timeout_s.
START_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
INGEST_TOTALS_TIMEOUT_S = 2.0
"""How long a scrape waits for the ingest's totals before reporting it down."""

#: ingest counter key -> (metric name, help). Per leg (label ``leg``).
RTP_COUNTERS = {
    "packets": ("wholecall_rtp_datagrams_total", "UDP datagrams read from the RTP sockets (valid or not)."),
    "received": ("wholecall_rtp_packets_received_total", "RTP packets of a known payload type that decoded."),
    "lost": ("wholecall_rtp_packets_lost_total", "RTP sequence numbers never received (RFC 3550 A.3)."),
    "reordered": ("wholecall_rtp_packets_reordered_total", "RTP packets that arrived after a later one of their stream."),
    "duplicates": ("wholecall_rtp_packets_duplicated_total", "RTP packets received twice (the copy is dropped)."),
    "late": ("wholecall_rtp_packets_late_total", "RTP audio packets that came after their place was played out (dropped)."),
    "ssrc_changes": ("wholecall_rtp_ssrc_changes_total", "Times a leg switched to a new or returning SSRC."),
    "resyncs": ("wholecall_rtp_resyncs_total", "Times a stream that had left the re-order window was re-anchored."),
    "kernel_drops": ("wholecall_rtp_kernel_drops_total", "Datagrams the kernel dropped for full socket receive buffers."),
    "ring_overruns": ("wholecall_ring_overruns_total", "Writes of the ingest that overran a ring a worker had not read."),
}
#: ingest counter key -> ``reason`` label of wholecall_rtp_rejected_total.
RTP_REJECTED = {"undecodable": "undecodable", "foreign_source": "foreign_source", "bad_version": "bad_version",
                "too_short": "too_short", "malformed": "malformed", "unknown_payload_type": "unknown_payload_type",
                "srtp_replayed": "srtp_replayed", "srtp_rejected": "srtp_rejected"}
LEG_NAMES = ("inbound", "outbound")


class Metrics:
    """The service's registry: the scrape-time collector, the start() histogram, process figures."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)
        self.start_seconds = Histogram(
            "wholecall_recording_start_seconds", "start() latency: request to worker confirmation (file open).",
            buckets=START_BUCKETS, registry=self.registry)
        self.start_failures = Counter(
            "wholecall_recording_start_failures", "Recordings whose start() failed (refused or not confirmed).",
            registry=self.registry)
        self.collector = ServiceCollector(self)
        self.registry.register(self.collector)
        ProcessCollector(registry=self.registry)  # the service process: CPU, memory, descriptors
        self.ingest: dict[str, Any] | None = None
        self._high: dict[tuple[str, tuple[str, ...]], float] = {}

    def started(self, recorder: Any, ok: bool) -> None:
        """After a start(): its latency when it succeeded (the recorder's own trace), else a failure."""
        trace = getattr(recorder, "last_start_trace", None)
        if ok and trace is not None:
            self.start_seconds.observe(max(0.0, trace.returned - trace.called))
        elif not ok:
            self.start_failures.inc()

    def render(self, ingest_totals: dict[str, Any] | None) -> bytes:
        """The exposition text, given the ingest's answer to ``{"op": "totals"}`` (None: it
        did not answer; its families then read 0 or their last value, and wholecall_ingest_up 0)."""
        if ingest_totals and ingest_totals.get("ok"):
            add_kernel_drops(ingest_totals.setdefault("legs", {}), ingest_totals.get("inodes") or {})
        self.ingest = ingest_totals
        return generate_latest(self.registry)

    def monotonic(self, name: str, labels: tuple[str, ...], value: float) -> float:
        """`value`, or the highest value this series was exposed with if that is higher."""
        key = (name, labels)
        high = max(self._high.get(key, 0.0), float(value))
        self._high[key] = high
        return high


class ServiceCollector(Collector):
    """Reads the service, its controller and the last ingest totals at each scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterator[Metric]:
        return iter(())  # families depend on what exists at scrape time; no duplicate checks needed

    def collect(self) -> Iterator[Metric]:
        s = self.metrics.service
        yield from self._service(s)
        yield from self._controller(s)
        yield from self._ingest(s)

    # -- the service and its calls -------------------------------------------------------------

    def _service(self, s: Service) -> Iterator[Metric]:
        # Unlabelled families take their one sample as `value` (prometheus_client).
        yield GaugeMetricFamily("wholecall_ready", "1 when the service takes calls (healthz 200), else 0.",
                                value=1.0 if s.ready and not s.draining else 0.0)
        yield GaugeMetricFamily("wholecall_draining", "1 while the service drains on SIGTERM.",
                                value=1.0 if s.draining else 0.0)
        live = [e for e in list(s.calls.values()) if not e.hung_up]
        yield GaugeMetricFamily("wholecall_calls_active", "Calls that exist and are not hung up.", value=len(live))
        recording = sum(1 for e in live if e.channel.WholeCallRecorder.state() is RecorderState.RECORDING)
        yield GaugeMetricFamily("wholecall_recordings_active", "Recordings in progress.", value=recording)
        yield CounterMetricFamily("wholecall_webhooks_sent_total", "Webhook events delivered (2xx).",
                                  value=s.webhooks_sent)
        yield CounterMetricFamily("wholecall_webhook_failures_total", "Webhook events given up after every retry.",
                                  value=s.webhooks_failed)
        free = GaugeMetricFamily("wholecall_recordings_free_bytes",
                                 "Bytes an unprivileged writer may still use on the recordings filesystem.")
        try:
            st = os.statvfs(s.cfg.recordings_dir)
            free.add_metric([], st.f_bavail * st.f_frsize)
        except OSError:
            pass  # no sample: "absent" alerts fire, which is what a missing directory deserves
        yield free

    # -- the controller and its workers ---------------------------------------------------------

    def _controller(self, s: Service) -> Iterator[Metric]:
        ctl = s.ctl
        totals = ctl.counters.snapshot() if ctl is not None else \
            {"ended": {}, "bytes": 0, "failed": 0, "lost_samples": 0}
        ended = CounterMetricFamily("wholecall_recordings_ended_total", "Recordings that ended, by cause.",
                                    labels=["cause"])
        for cause, n in totals["ended"].items():
            ended.add_metric([cause], n)
        yield ended
        # Unlabelled families take their one sample as `value` (prometheus_client).
        yield CounterMetricFamily("wholecall_recording_bytes_total",
                                  "Bytes written to recording files, counted as each was finished (one then "
                                  "removed for min_seconds included).", value=totals["bytes"])
        yield CounterMetricFamily(
            "wholecall_recording_finalize_failures_total",
            "Recordings that ended with an error: their file could not be written or finalised.",
            value=totals["failed"])
        yield CounterMetricFamily("wholecall_lost_samples_total",
                                  "Samples overwritten in the rings before a worker takeover read them "
                                  "(recorded as silence).", value=totals["lost_samples"])
        syncer = ctl.syncer if ctl is not None else None
        sync = syncer.snapshot() if syncer is not None else {"pending": 0, "failed": 0, "lag_s": 0.0}
        yield GaugeMetricFamily("wholecall_sync_pending",
                                "Recordings ended (final, stop() returned) whose sidecar is not yet fsynced.",
                                value=sync["pending"])
        yield GaugeMetricFamily("wholecall_sync_lag_seconds",
                                "How long the oldest ended recording whose sidecar is not yet fsynced has "
                                "waited: what a power loss now could cost of sidecars.", value=sync["lag_s"])
        yield CounterMetricFamily("wholecall_sync_failures_total",
                                  "Ended recordings whose sidecar fsync failed (logged with their paths).",
                                  value=sync["failed"])

        stats = ctl.stats() if ctl is not None and ctl.supervisor is not None else {"workers": []}
        labels = ["worker", "cpu"]
        fams = {
            "up": GaugeMetricFamily("wholecall_worker_up", "1 when the worker process is alive and ready.", labels=labels),
            "lag": GaugeMetricFamily("wholecall_worker_tick_lag_seconds",
                                     "Time since the worker last published progress in shared memory.", labels=labels),
            "degraded": GaugeMetricFamily("wholecall_worker_degraded",
                                          "1 when the tick lag is over 1 s (overloaded or paused).", labels=labels),
            "jobs": GaugeMetricFamily("wholecall_worker_jobs", "Recordings the worker runs.", labels=labels),
            "cpu": CounterMetricFamily("wholecall_worker_cpu_seconds_total",
                                       "CPU time of the worker process (rate() = cores used).", labels=labels),
            "ticks": CounterMetricFamily("wholecall_worker_ticks_total", "Ticks the worker has run.", labels=labels),
            "overruns": GaugeMetricFamily("wholecall_worker_ring_overruns",
                                          "Ring overruns on the legs of the recordings the worker runs now.",
                                          labels=labels),
        }
        for w in stats["workers"]:
            lv = [str(w["index"]), str(w["cpu"])]
            fams["up"].add_metric(lv, 1.0 if w["alive"] and w["ready"] else 0.0)
            fams["lag"].add_metric(lv, w["lag_s"])
            fams["degraded"].add_metric(lv, 1.0 if w["degraded"] else 0.0)
            fams["jobs"].add_metric(lv, w["jobs"])
            fams["cpu"].add_metric(lv, w["cpu_s"])
            fams["ticks"].add_metric(lv, w["ticks"])
            fams["overruns"].add_metric(lv, w["overruns"])
        yield from fams.values()
        restarts = CounterMetricFamily("wholecall_worker_restarts_total", "Workers replaced after they died.")
        restarts.add_metric([], stats.get("restarts", 0))
        yield restarts
        takeovers = CounterMetricFamily("wholecall_worker_takeovers_total",
                                        "Recordings moved to another worker after theirs died.")
        takeovers.add_metric([], stats.get("takeovers", 0))
        yield takeovers
        dropped = CounterMetricFamily("wholecall_controller_dropped_messages_total",
                                      "Worker messages the controller did not apply, by reason.", labels=["reason"])
        for reason, n in sorted(stats.get("dropped_by_reason", {}).items()):
            dropped.add_metric([str(reason)], n)
        yield dropped

    # -- the ingest process -----------------------------------------------------------------------

    def _ingest(self, s: Service) -> Iterator[Metric]:
        reply = self.metrics.ingest
        up = GaugeMetricFamily("wholecall_ingest_up", "1 when the RTP ingest process answered this scrape.")
        up.add_metric([], 1.0 if reply and reply.get("ok") else 0.0)
        yield up
        legs: dict[str, dict[str, int]] = (reply or {}).get("legs", {}) or {}
        mono = self.metrics.monotonic
        for key, (name, doc) in RTP_COUNTERS.items():
            fam = CounterMetricFamily(name, doc, labels=["leg"])
            for leg in LEG_NAMES:
                fam.add_metric([leg], mono(name, (leg,), legs.get(leg, {}).get(key, 0)))
            yield fam
        rejected = CounterMetricFamily("wholecall_rtp_rejected_total",
                                       "Datagrams on RTP sockets dropped before play-out, by reason.",
                                       labels=["leg", "reason"])
        for leg in LEG_NAMES:
            for key, reason in RTP_REJECTED.items():
                rejected.add_metric([leg, reason], mono("rejected", (leg, reason), legs.get(leg, {}).get(key, 0)))
        yield rejected
        info = (reply or {}).get("ingest", {}) or {}
        cpu = CounterMetricFamily("wholecall_ingest_cpu_seconds_total", "CPU time of the RTP ingest process.")
        cpu.add_metric([], mono("ingest_cpu", (), info.get("cpu_s", 0.0)))
        yield cpu
        ws: dict[str, int] = {"messages": 0, "errors": 0}
        for source in ((reply or {}).get("websocket") or {}, getattr(s, "websocket_stats", None) or {}):
            for k in ws:
                v = source.get(k, 0)
                ws[k] += v if isinstance(v, (int, float)) else 0
        msgs = CounterMetricFamily("wholecall_websocket_messages_total", "WebSocket media messages received.")
        msgs.add_metric([], mono("ws_messages", (), ws["messages"]))
        yield msgs
        errs = CounterMetricFamily("wholecall_websocket_errors_total",
                                   "WebSocket media messages or connections that failed.")
        errs.add_metric([], mono("ws_errors", (), ws["errors"]))
        yield errs
