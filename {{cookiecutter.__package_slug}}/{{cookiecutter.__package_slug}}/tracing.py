"""OpenTelemetry spans for each item (docs/tracing.md): `Worker(..., tracing=Tracing.from_env())`.

Each reader call (each try, retries included) runs in a span `<worker name> item` of kind
CONSUMER in its worker process, with the attributes `worker.item.id`, `worker.item.attempt`
(the try, from 1), `worker.item.outcome` (succeeded, failed or timed_out) and, where the source
counts attempts (a Redis job), `worker.job.attempt`; a failure sets the status to ERROR with its
text. The id and attempt are what the source knows of the item (`worker.ItemInfo`). Its parent
is the span that enqueued the item: the submitter's, as the source knows it (a Redis job's
`traceparent`), or else the span current in the parent process when the source handed the
item over (a writer that opens a span around each `yield`).

The tracer is set up after the fork, in each worker process, and flushed before the process
exits: stopped, recycled after MAX_JOBS_PER_PROCESS items, or at the end of a drain. Where the
spans go is read from the standard environment: OTEL_TRACES_EXPORTER (otlp, console or none;
otlp by default when OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set)
and the exporter's own OTEL_EXPORTER_OTLP_* variables. With none of them set, `from_env()`
returns None and the worker does no tracing work at all.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from .worker import ItemInfo
from .worker.retry import ReaderTimeout
from .worker.texts import error_text

EXPORTERS = ("otlp", "console", "none")
OTLP_PROTOCOL = "http/protobuf"  # of the OTLP exporter installed (not grpc)
FLUSH_TIMEOUT = 5.0  # seconds a worker process waits, at most, for its last spans to be sent

logger = logging.getLogger(__name__)


class TracingError(ValueError):
    """The OTEL_* environment asks for an exporter this project does not have."""


def exporter_names(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The span exporters the environment asks for, [] for none.

    OTEL_TRACES_EXPORTER, comma-separated: `otlp`, `console` or `none`. Unset: `otlp` when an
    OTLP endpoint is set, else none. OTEL_SDK_DISABLED=true: none. Raises `TracingError` for a
    name or an OTLP protocol it does not know.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    value = environ.get("OTEL_TRACES_EXPORTER", "").strip()
    if value:
        names = [name.strip().lower() for name in value.split(",") if name.strip()]
    else:
        endpoints = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
        names = ["otlp"] if any(environ.get(name) for name in endpoints) else []
    unknown = sorted(set(names) - set(EXPORTERS))
    if unknown:
        raise TracingError(
            f"OTEL_TRACES_EXPORTER={value!r}: {', '.join(unknown)} unknown; "
            f"use {', '.join(EXPORTERS)}"
        )
    names = [name for name in dict.fromkeys(names) if name != "none"]
    if "otlp" in names:
        protocols = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
        variable = next((name for name in protocols if environ.get(name)), None)
        if variable is not None and environ[variable] != OTLP_PROTOCOL:
            raise TracingError(
                f"{variable}={environ[variable]!r}: this project exports OTLP over "
                f"{OTLP_PROTOCOL} (add opentelemetry-exporter-otlp-proto-grpc to export over grpc)"
            )
    return names


def exporters_from_env() -> list[SpanExporter]:
    """New exporters for `exporter_names()`: OTLP reads its OTEL_EXPORTER_OTLP_* variables."""
    made: dict[str, Callable[[], SpanExporter]] = {
        "otlp": OTLPSpanExporter,
        "console": lambda: ConsoleSpanExporter(out=sys.stderr),  # stdout is the summary's
    }
    return [made[name]() for name in exporter_names()]


class Tracing:
    """Spans for each item, for `Worker(..., tracing=...)` (a `worker.Instrument`).

    `exporters` is called once in each worker process, after the fork: the exporters its spans
    go to (by default those the OTEL_* environment names). In the parent, `carrier` reads the
    trace context through the global propagator (OTEL_PROPAGATORS; W3C trace context by
    default); a reader's own spans (`opentelemetry.trace.get_tracer(...)`) are children of
    the item's span, and go to the same exporters unless the program set a tracer provider
    before the fork.
    """

    def __init__(
        self,
        exporters: Callable[[], Sequence[SpanExporter]] = exporters_from_env,
        *,
        flush_timeout: float = FLUSH_TIMEOUT,
    ) -> None:
        self.exporters = exporters
        self.flush_timeout = flush_timeout
        self._name = "worker"
        self._provider: TracerProvider | None = None
        self._tracer: trace.Tracer | None = None

    @classmethod
    def from_env(cls) -> Tracing | None:
        """Tracing that exports where the environment says, or None if it names no exporter.

        An exporter or OTLP protocol this project does not have ends the program as a bad
        setting does: one line on stderr naming the variable and the rule, and exit status 2.
        """
        try:
            names = exporter_names()
        except TracingError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        return cls() if names else None

    def __repr__(self) -> str:
        return f"Tracing(exporters={self.exporters!r})"

    # parent
    def carrier(self) -> bytes:
        """The trace context current here, as JSON headers (b"" when there is none)."""
        headers: dict[str, str] = {}
        propagate.inject(headers)
        return json.dumps(headers, separators=(",", ":")).encode() if headers else b""

    # worker processes
    def process_started(self, name: str) -> None:
        """Set up this process's tracer provider (service name: OTEL_SERVICE_NAME, or the
        worker's name) and its exporters."""
        self._name = name
        service = os.environ.get("OTEL_SERVICE_NAME") or name
        # Not shut down at exit: `process_stopping` does it within `flush_timeout` (from
        # Python 3.13 a forked process runs atexit hooks, and the SDK's waits for the exporter).
        provider = TracerProvider(
            resource=Resource.create({SERVICE_NAME: service}), shutdown_on_exit=False
        )
        for exporter in self.exporters():
            provider.add_span_processor(BatchSpanProcessor(exporter))
        self._provider = provider
        self._tracer = provider.get_tracer(__name__)
        if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):  # none set yet
            trace.set_tracer_provider(provider)

    @contextmanager
    def span(self, info: ItemInfo, seq: int, attempt: int, carrier: bytes) -> Iterator[Span]:
        """The span of one try of the reader on an item (see the module docstring)."""
        assert self._tracer is not None, "process_started() was not called"
        if info.traceparent:
            parent = propagate.extract({"traceparent": info.traceparent}, context=Context())
        elif carrier:
            parent = propagate.extract(json.loads(carrier), context=Context())
        else:
            parent = Context()  # a root span
        attributes: dict[str, str | int] = {
            "worker.item.id": info.id if info.id is not None else str(seq),
            "worker.item.attempt": attempt,
        }
        if info.attempt is not None:
            attributes["worker.job.attempt"] = info.attempt
        with self._tracer.start_as_current_span(
            f"{self._name} item",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except BaseException as exc:
                timed_out = isinstance(exc, ReaderTimeout)
                span.set_attribute("worker.item.outcome", "timed_out" if timed_out else "failed")
                span.set_status(Status(StatusCode.ERROR, error_text(exc)))
                raise
            span.set_attribute("worker.item.outcome", "succeeded")

    def process_stopping(self) -> None:
        """Send the spans still buffered, then shut down; return after `flush_timeout` at most.

        A tracer provider the program set before the fork is flushed too: a worker process
        exits without running `atexit`, where it would have been. The SDK's flush does not keep
        to its timeout (an OTLP exporter retries an unreachable endpoint for up to
        OTEL_EXPORTER_OTLP_TIMEOUT, 10 s), so it runs on a daemon thread that the process
        stops waiting for at the deadline: the spans not sent by then are lost.
        """
        provider, self._provider, self._tracer = self._provider, None, None
        timeout = int(self.flush_timeout * 1000)
        inherited = trace.get_tracer_provider()
        flush = getattr(inherited, "force_flush", None)

        def send() -> None:
            if inherited is not provider and callable(flush):
                flush(timeout)
            if provider is not None:
                provider.force_flush(timeout)
                provider.shutdown()

        sender = threading.Thread(target=send, name="tracing-flush", daemon=True)
        sender.start()
        sender.join(self.flush_timeout)
        if sender.is_alive():
            logger.warning(
                "tracing: spans not sent within %gs (exporter unreachable?): dropped",
                self.flush_timeout,
            )
