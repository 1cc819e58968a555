"""Prometheus metrics of a run, gathered from every worker process (multi-process mode).

Turned on by METRICS_PORT. The parent switches prometheus-client to multi-process mode and
creates the metrics before it forks; worker processes count items into their own files in
the multi-process folder, and the parent serves the sum of all of them on
http://METRICS_HOST:METRICS_PORT/metrics from its event loop (no thread).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .remote import Outage
from .source import LabeledGauges, Source

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
GAUGES_TIMEOUT = 2.0  # seconds a scrape waits for the source's gauges


@dataclass(frozen=True)
class Metrics:
    """The metrics the runtime updates; `None` fields never occur (all or nothing)."""

    name: str  # the metric names' prefix
    directory: str
    owns_directory: bool
    started: Any
    succeeded: Any
    failed: Any
    retried: Any
    timed_out: Any
    duration: Any
    queue_depth: Any
    restarts: Any
    in_flight: Any
    slots: Any

    def render(self, gauges: Mapping[str, float | LabeledGauges] | None = None) -> bytes:
        """The text exposition of every process's metrics, summed, and the source's `gauges`
        (as `<name>_source_<key>`)."""
        from prometheus_client import CollectorRegistry, generate_latest, multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.directory)  # type: ignore[no-untyped-call]
        if gauges:
            registry.register(_SourceGauges(self.name, gauges))
        return generate_latest(registry)

    def process_exited(self, pid: int) -> None:
        """Drop the live gauges of a worker process that exited."""
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, self.directory)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        """Remove the multi-process folder if this run created it."""
        if self.owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)
            os.environ.pop(MULTIPROC_ENV, None)


def create_metrics(prefix: str) -> Metrics:
    """Switch prometheus-client to multi-process mode and create the metrics (in the parent)."""
    directory = os.environ.get(MULTIPROC_ENV)
    owns = directory is None
    if directory is None:
        directory = tempfile.mkdtemp(prefix="worker-metrics-")
        os.environ[MULTIPROC_ENV] = directory
    from prometheus_client import Counter, Gauge, Histogram, values

    # prometheus-client picks its value class when first imported; pick the multi-process one
    # now in case it was imported before the folder was set (tests/test_metrics.py checks it).
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    name = prefix.replace("-", "_")
    return Metrics(
        name=name,
        directory=directory,
        owns_directory=owns,
        started=Counter(f"{name}_items_started", "Items a reader started.", registry=None),
        succeeded=Counter(f"{name}_items_succeeded", "Items a reader finished.", registry=None),
        failed=Counter(f"{name}_items_failed", "Items that failed their last try.", registry=None),
        retried=Counter(f"{name}_items_retried", "Reader calls tried again.", registry=None),
        timed_out=Counter(
            f"{name}_items_timed_out", "Items that overran READER_TIMEOUT.", registry=None
        ),
        duration=Histogram(
            f"{name}_item_duration_seconds", "Seconds per item, retries included.", registry=None
        ),
        queue_depth=Gauge(
            f"{name}_queue_depth",
            "Items taken from the writer, not yet handed to a process.",
            registry=None,
            multiprocess_mode="livemax",
        ),
        restarts=Counter(
            f"{name}_worker_process_restarts", "Worker processes replaced.", registry=None
        ),
        in_flight=Gauge(
            f"{name}_items_in_flight",
            "Items whose reader runs now, in every worker process.",
            registry=None,
            multiprocess_mode="livesum",
        ),
        slots=Gauge(
            f"{name}_reader_slots",
            "Items the worker processes may run at once now (adaptive: see docs/worker.md).",
            registry=None,
            multiprocess_mode="livesum",
        ),
    )


class _SourceGauges:
    """A collector of the source's counts, read at one scrape."""

    def __init__(self, name: str, gauges: Mapping[str, float | LabeledGauges]) -> None:
        self.name, self.gauges = name, gauges

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        for key, value in self.gauges.items():
            name = f"{self.name}_source_{key}"
            help_text = f"The source's {key.replace('_', ' ')} count, read at this scrape."
            if not isinstance(value, LabeledGauges):
                yield GaugeMetricFamily(name, help_text, value=value)
                continue
            family = GaugeMetricFamily(name, value.help or help_text, labels=[value.label])
            for label, number in value.values.items():
                family.add_metric([label], number)
            yield family


async def _read_gauges(source: Source, outage: Outage) -> Mapping[str, float | LabeledGauges]:
    try:
        gauges = await asyncio.wait_for(source.gauges(), GAUGES_TIMEOUT)
    except Exception as exc:  # a scrape goes on without them
        outage.failed(exc, "left out of the metrics page")
        return {}
    outage.ok()
    return gauges


async def serve_metrics(
    metrics: Metrics, host: str, port: int, source: Source | None = None
) -> asyncio.Server:
    """Answer every HTTP request on host:port with the metrics page (and `source`'s gauges)."""
    outage = Outage(f"gauges of {source!r}", logger)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (await reader.readline()).strip():  # request line and headers
                pass
            gauges = await _read_gauges(source, outage) if source is not None else None
            body = metrics.render(gauges)
            head = (
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        finally:
            writer.close()

    return await asyncio.start_server(answer, host, port)


def probe(host: str, port: int, timeout: float = 3.0) -> str | None:
    """Fetch the metrics page of a running worker; return what went wrong, or None if it answered.

    A wildcard `host` (the server listens on every address) is probed on the loopback address.
    """
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    url = f"http://[{host}]:{port}/metrics" if ":" in host else f"http://{host}:{port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            response.read()
    except OSError as exc:
        return f"no answer from {url}: {exc}"
    return None
