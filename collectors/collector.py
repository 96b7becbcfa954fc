"""The collector stage: live capture -> metering -> names -> publishing, with a lifecycle.

Threads, each with one job: the capture reader (pcap stream to packet batches), the
metering thread (flow table, names, metrics), the publisher thread (batches, spool). The
constructor does no I/O; :meth:`Collector.start` starts everything; :meth:`Collector.stop`
(SIGTERM in the CLI) stops the capture, meters what was captured, ends every open flow,
and publishes (or spools) the last records before returning.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

import pandas as pd

from flowwarden.bus_base import Bus
from flowwarden.collectors.appnames import NameDissector
from flowwarden.collectors.capture import LiveCapture, build_bpf
from flowwarden.collectors.meter import Meter
from flowwarden.collectors.metrics import CollectorMetrics
from flowwarden.collectors.publish import Publisher
from flowwarden.collectors.spool import Spool
from flowwarden.settings import Settings

log = logging.getLogger("flowwarden.collector")

STATS_INTERVAL_S = 5.0
NAME_WAIT_S = 0.2


class Collector:
    """One node's collector; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        *,
        bus_factory: Callable[[], Bus] | None = None,
        metrics: CollectorMetrics | None = None,
        serve_metrics: bool = True,
    ) -> None:
        self.settings = settings
        cs = settings.collector
        self.metrics = metrics or CollectorMetrics(cs.node)
        self.serve_metrics = serve_metrics
        exclude = (
            list(settings.kafka.bootstrap_servers)
            if cs.exclude_kafka_traffic and settings.bus.kind == "kafka"
            else []
        )
        self.bpf = build_bpf(cs.bpf, exclude)
        self.capture = LiveCapture(
            cs.interfaces,
            bpf=self.bpf,
            snaplen=cs.snaplen,
            netns=cs.netns,
            tool=cs.capture_tool,
            poll_s=cs.interface_poll_s,
        )
        self.meter = Meter(cs)
        self.names = NameDissector() if self.meter.app_names else None
        self.publisher = Publisher(
            bus_factory=bus_factory or self._open_bus,
            topic=settings.kafka.topics.flows,
            partitions=settings.kafka.partitions,
            spool=Spool(cs.spool_dir, cs.spool_max_bytes),
            metrics=self.metrics,
            batch_max_flows=cs.batch_max_flows,
            batch_interval_s=cs.batch_interval_ms / 1000.0,
            queue_max_batches=cs.queue_max_batches,
            flush_timeout_s=cs.publish_flush_timeout_s,
            retry_s=cs.spool_retry_s,
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._server: object | None = None
        self._drops_seen = 0
        self._dups_seen = 0
        self._evicted_seen = 0
        self._undecoded_seen: dict[str, int] = {}
        self.failure = ""  # why the collector stopped on its own (empty: it was asked to)
        self._closing = False

    def _open_bus(self) -> Bus:
        from flowwarden.bus import open_bus

        return open_bus(self.settings)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self.names is not None:
            self.names.start()
        self.publisher.start()
        self.capture.start()
        if self.serve_metrics and self.settings.collector.metrics_port:
            self._server = self.metrics.serve(self.settings.collector.metrics_port)
        self._thread = threading.Thread(target=self._run, name="collector-meter", daemon=True)
        self._thread.start()
        log.info(
            "collector started node=%s interfaces=%s bpf=%r",
            self.settings.collector.node,
            ",".join(self.capture.interfaces),
            self.bpf,
        )

    def stop(self, timeout_s: float = 30.0) -> None:
        """Flush everything: captured packets, open flows, queued batches."""
        self._closing = True  # the captures are about to exit on purpose
        self.capture.stop()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.publisher.stop(timeout_s)
        if self.names is not None:
            self.names.close()
        if self._server is not None and hasattr(self._server, "shutdown"):
            self._server.shutdown()
        log.info(
            "collector stopped packets=%d flows=%d published=%d spooled=%d",
            self.meter.packets,
            self.meter.table.records_emitted,
            self.publisher.published_flows,
            len(self.publisher.spool),
        )

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until :meth:`stop` is called (or every capture died): True if stopped."""
        return self._stop.wait(timeout_s)

    # ------------------------------------------------------------------ metering thread

    def _run(self) -> None:
        next_stats = time.monotonic() + STATS_INTERVAL_S
        while True:
            stopping = self._stop.is_set()
            try:
                batch = self.capture.queue.get(timeout=0.1)
            except queue.Empty:
                if stopping:
                    break
                self._emit(self.meter.advance(time.time()))
            else:
                self._count_batch(self.meter.feed(batch), len(batch), int(batch.wirelen.sum()))
            if time.monotonic() >= next_stats:
                next_stats = time.monotonic() + STATS_INTERVAL_S
                self.capture.request_stats()
                self._count_drops()
            if not stopping and not self._closing and not any(c.alive for c in self.capture.captures):
                tails = "; ".join(f"{c.iface}: {c.stderr_tail}" for c in self.capture.captures)
                self.failure = f"every capture process has exited ({tails})"
                log.error("%s; stopping", self.failure)
                self._stop.set()
        self._count_drops()
        self._emit([self.meter.flush()])

    def _count_batch(self, records: list[pd.DataFrame], packets: int, nbytes: int) -> None:
        m = self.metrics
        m.packets.labels(node=m.node).inc(packets)
        m.bytes.labels(node=m.node).inc(nbytes)
        m.count_undecoded(self._undecoded_delta())
        self._emit(records)

    def _undecoded_delta(self) -> dict[str, int]:
        now = dict(self.meter.undecoded)
        seen = self._undecoded_seen
        delta = {k: v - seen.get(k, 0) for k, v in now.items() if v > seen.get(k, 0)}
        self._undecoded_seen = now
        return delta

    def _count_drops(self) -> None:
        drops = self.capture.kernel_drops
        if drops > self._drops_seen:
            self.metrics.kernel_drops.labels(node=self.metrics.node).inc(drops - self._drops_seen)
            self._drops_seen = drops
        self._count_sightings()

    def _count_sightings(self) -> None:
        """Second sightings left out, and the interfaces metered now (collectors/interfaces.py)."""
        m = self.metrics
        dups = self.capture.duplicates
        if dups > self._dups_seen:
            m.duplicates.labels(node=m.node).inc(dups - self._dups_seen)
            self._dups_seen = dups
        for role, names in self.capture.table.metered().items():
            m.interfaces.labels(node=m.node, role=role).set(len(names))

    def _emit(self, records: list[pd.DataFrame]) -> None:
        records = [r for r in records if len(r)]
        if self.names is not None and len(self.meter.candidates):
            self.names.submit(self.meter.candidates.take())
        ev = self.meter.table.evicted
        if ev > self._evicted_seen:
            self.metrics.evicted.labels(node=self.metrics.node).inc(ev - self._evicted_seen)
            self._evicted_seen = ev
        if not records:
            if self.names is not None:  # flows that ended without a record of their own
                self.names.forget(self.meter.take_ended())
            return
        df = pd.concat(records, ignore_index=True)
        if self.names is not None:
            self.names.wait(NAME_WAIT_S)
            df = self.names.join(df)
            self.names.forget(self.meter.take_ended())  # after the join: final records keep theirs
        self.metrics.flows.labels(node=self.metrics.node).inc(len(df))
        self.publisher.put(df)
