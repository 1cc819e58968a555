"""Tracing: one span per reader try in the worker processes, parented to the span that enqueued
the item, none lost when processes are recycled; exporters chosen by the OTEL_* environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator, Sequence
{%- if cookiecutter.include_redis_jobs %}
from datetime import UTC, datetime, timedelta
{%- endif %}
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any{% if cookiecutter.include_redis_jobs %}, cast{% endif %}

import pytest
{%- if cookiecutter.include_redis_jobs %}
from jobs_support import new_stream, settings_for
{%- endif %}
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind
{%- if cookiecutter.include_redis_jobs %}
from servers import Server, running
{%- endif %}
from support import fast_settings, free_port, writer_over

{% if cookiecutter.include_redis_jobs -%}
from {{ cookiecutter.__package_slug }}.sources.redis_jobs import Job, Jobs, RedisJobs
{% endif -%}
from {{ cookiecutter.__package_slug }}.tracing import (
    Tracing,
    TracingError,
    exporter_names,
    exporters_from_env,
)
from {{ cookiecutter.__package_slug }}.worker import Permanent, Worker

PROJECT = Path(__file__).resolve().parents[1]


class FileExporter(SpanExporter):
    """Appends each span as a JSON line to `<folder>/<pid>.jsonl`: one file per process."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / f"{os.getpid()}.jsonl"

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(_record(span)) + "\n" for span in spans)
        with self.path.open("a") as file:
            file.write(lines)
        return SpanExportResult.SUCCESS


def _record(span: ReadableSpan) -> dict[str, Any]:
    assert span.context is not None
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace": span.context.trace_id,
        "parent": span.parent.span_id if span.parent is not None else None,
        "attributes": dict(span.attributes or {}),
        "status": span.status.status_code.name,
        "error": span.status.description,
        "service": span.resource.attributes.get("service.name"),
    }


def spans_in(folder: Path) -> tuple[list[dict[str, Any]], int]:
    """Every span written to `folder`, and how many processes wrote some."""
    files = sorted(folder.glob("*.jsonl"))
    spans = [json.loads(line) for path in files for line in path.read_text().splitlines()]
    return spans, len(files)


def file_tracing(folder: Path) -> Tracing:
    return Tracing(lambda: [FileExporter(folder)])


ITEMS = 120
FLAKY = {n for n in range(ITEMS) if n % 7 == 0}  # fails its first try, then succeeds
BROKEN = {n for n in range(ITEMS) if n % 10 == 3}  # fails both tries


async def test_one_span_per_try_parented_to_the_writer_none_lost_when_recycled(
    tmp_path: Path,
) -> None:
    provider = TracerProvider()  # the parent's own spans: the writer's, one per item
    tracer = provider.get_tracer("test")
    enqueued: dict[int, tuple[int, int]] = {}  # item -> (trace id, span id) of its writer span
    items = writer_over(range(ITEMS))

    async def writer(desired: int) -> AsyncIterator[int]:
        async for item in items(desired):
            with tracer.start_as_current_span("enqueue", kind=SpanKind.PRODUCER) as span:
                enqueued[item] = (span.get_span_context().trace_id, span.get_span_context().span_id)
                yield item

    tried: set[int] = set()  # in each worker process: the items that failed once there

    def reader(item: int) -> None:
        if item in BROKEN:
            raise ValueError(f"broken {item}")
        if item in FLAKY and item not in tried:
            tried.add(item)
            raise ValueError(f"flaky {item}")

    settings = fast_settings(max_retries=1, retry_backoff=0.001, max_jobs_per_process=25)
    worker = Worker(
        "t", reader=reader, writer=writer, settings=settings, tracing=file_tracing(tmp_path)
    )
    summary = await worker.drain()

    assert (summary.succeeded, summary.failed) == (ITEMS - len(BROKEN), len(BROKEN))
    spans, processes = spans_in(tmp_path)
    assert processes >= ITEMS // 25  # recycled every 25 items: each process flushed its spans
    by_writer_span = {span_id: item for item, (_, span_id) in enqueued.items()}
    tries: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for span in spans:
        item = by_writer_span[span["parent"]]
        assert span["trace"] == enqueued[item][0]
        assert (span["name"], span["kind"], span["service"]) == ("t item", "CONSUMER", "t")
        tries[item].append(span)
    assert set(tries) == set(range(ITEMS))  # every item has spans, each parented to its writer's
    for item, item_spans in tries.items():
        item_spans.sort(key=lambda span: span["attributes"]["worker.item.attempt"])
        attributes = [span["attributes"] for span in item_spans]
        assert {a["worker.item.id"] for a in attributes} == {str(item + 1)}  # its number
        expected = (
            ["failed", "failed"]
            if item in BROKEN
            else ["failed", "succeeded"]
            if item in FLAKY
            else ["succeeded"]
        )
        assert [a["worker.item.outcome"] for a in attributes] == expected, item
        assert [a["worker.item.attempt"] for a in attributes] == list(range(1, len(expected) + 1))
        for span, outcome in zip(item_spans, expected, strict=True):
            assert span["status"] == ("ERROR" if outcome == "failed" else "UNSET")
            if outcome == "failed":
                assert f"{item}" in span["error"]
    assert len(spans) == ITEMS + len(FLAKY | BROKEN)  # one per try, none twice


async def test_items_without_a_parent_span_get_root_spans(tmp_path: Path) -> None:
    async def reader(item: int) -> None:
        if item == 2:
            raise Permanent("no")

    settings = fast_settings(num_processes=1)
    worker = Worker(
        "t",
        reader=reader,
        writer=writer_over(range(4)),
        settings=settings,
        tracing=file_tracing(tmp_path),
    )
    assert (await worker.drain()).failed == 1
    spans, _ = spans_in(tmp_path)
    assert [span["parent"] for span in spans] == [None] * 4
    assert Counter(span["attributes"]["worker.item.outcome"] for span in spans) == Counter(
        succeeded=3, failed=1
    )


@pytest.mark.parametrize(
    ("environ", "names"),
    [
        ({}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "console"}, ["console"]),
        ({"OTEL_TRACES_EXPORTER": "otlp, console"}, ["otlp", "console"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, []),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"}, []),
    ],
)
def test_the_exporters_come_from_the_standard_environment(
    environ: dict[str, str], names: list[str]
) -> None:
    assert exporter_names(environ) == names


@pytest.mark.parametrize(
    "environ",
    [
        {"OTEL_TRACES_EXPORTER": "zipkin"},
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
    ],
)
def test_an_exporter_this_project_lacks_is_refused(environ: dict[str, str]) -> None:
    with pytest.raises(TracingError, match=r"zipkin|grpc"):
        exporter_names(environ)


@pytest.mark.parametrize(
    ("environ", "line"),
    [
        (
            {"OTEL_TRACES_EXPORTER": "zipkin"},
            "error: OTEL_TRACES_EXPORTER='zipkin': zipkin unknown; use otlp, console, none",
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "error: OTEL_EXPORTER_OTLP_PROTOCOL='grpc': this project exports OTLP over",
        ),
    ],
)
def test_a_bad_otel_setting_is_one_line_and_exit_2(environ: dict[str, str], line: str) -> None:
    """As a bad setting of the project: one line naming the variable and the rule, no
    traceback, exit status 2."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("OTEL_", "{{ cookiecutter.__env_prefix }}"))
    }
    result = subprocess.run(
        [sys.executable, "-m", "{{ cookiecutter.__package_slug }}.qq", "drain"],
        cwd=PROJECT,
        env=env | environ,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(line), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


@pytest.fixture
def collector() -> Iterator[tuple[str, list[ExportTraceServiceRequest]]]:
    """An OTLP/HTTP endpoint on a free loopback port, keeping each request it receives."""
    received: list[ExportTraceServiceRequest] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            received.append(request)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


async def test_otlp_exports_every_span_when_an_endpoint_is_set(
    collector: tuple[str, list[ExportTraceServiceRequest]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, received = collector
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
    assert Tracing.from_env() is not None
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT")
    assert Tracing.from_env() is None  # nothing configured: no tracing work at all
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)

    async def reader(item: int) -> None:
        pass

    settings = fast_settings(max_jobs_per_process=10)
    worker = Worker(
        "otlp-t",
        reader=reader,
        writer=writer_over(range(30)),
        settings=settings,
        tracing=Tracing.from_env(),
    )
    assert (await worker.drain()).succeeded == 30
    # Each process sent its spans before it exited, and the drain waits for every exit.
    ids = [
        {attribute.key: attribute.value.string_value for attribute in span.attributes}
        for request in received
        for resource_spans in request.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    ]
    assert sorted(int(attributes["worker.item.id"]) for attributes in ids) == list(range(1, 31))
    services = {
        attribute.value.string_value
        for request in received
        for resource_spans in request.resource_spans
        for attribute in resource_spans.resource.attributes
        if attribute.key == "service.name"
    }
    assert services == {"otlp-t"}


async def test_an_unreachable_endpoint_delays_the_stop_by_the_flush_timeout_at_most(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The OTLP exporter retries a refused connection for up to OTEL_EXPORTER_OTLP_TIMEOUT
    (10 s): each worker process stops waiting for it after `flush_timeout`."""
    for name in [name for name in os.environ if name.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port()}")

    async def reader(item: int) -> None:
        pass

    worker = Worker(
        "unreachable",
        reader=reader,
        writer=writer_over(range(5)),
        settings=fast_settings(num_processes=1),
        tracing=Tracing(flush_timeout=1.0),
    )
    started = time.monotonic()
    summary = await worker.drain()
    took = time.monotonic() - started

    assert summary.succeeded == 5
    assert took < 1.0 + 3.0, f"the drain took {took:.1f}s"  # the exporter alone: 5 to 10 s
{%- if cookiecutter.include_redis_jobs %}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running("redis", tmp_path_factory.mktemp("redis")) as server:
        yield server


async def test_redis_jobs_are_parented_to_the_submitters_span_on_every_run(
    server: Server, tmp_path: Path
) -> None:
    settings = settings_for(server.port, new_stream())
    tracer = TracerProvider().get_tracer("submitter")
    with Jobs(settings) as jobs:
        with tracer.start_as_current_span("submit") as submitting:
            plain = jobs.submit_many([{"n": n} for n in range(20)])
            keyed = jobs.submit_many([{"n": n} for n in range(20, 25)], [f"k{n}" for n in range(5)])
            past = datetime.now(UTC) - timedelta(seconds=1)
            scheduled = jobs.submit_many([{"n": n} for n in range(25, 30)], at=past)
        orphan = jobs.submit({"n": 30})  # no span current: no trace context stored
        stored = dict(cast(list[tuple[str, dict[str, str]]], jobs.client.xrange(jobs.stream)))
    context = submitting.get_span_context()
    traceparent = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    assert orphan is not None
    assert None not in [*plain, *keyed]
    assert {stored[job]["traceparent"] for job in [*plain, *keyed] if job} == {traceparent}
    assert "traceparent" not in stored[orphan]

    dead = {n for n in range(31) if n % 11 == 1}  # fail for good: replayed below, run again
    again = {n for n in range(31) if n % 5 == 0}  # fail their first run: put back, run again
    replaying = False

    def reader(item: Job) -> None:
        if item.payload["n"] in dead and not replaying:
            raise Permanent("dead")
        if item.payload["n"] in again and item.attempt == 1:
            raise ValueError("again")

    def worker() -> Worker:
        source = RedisJobs(settings, record_acks=True)
        return Worker("t", reader, settings=settings, source=source, tracing=file_tracing(tmp_path))

    first = await worker().drain()
    assert (first.succeeded, first.failed) == (31 - len(dead), len(dead) + len(again))
    with Jobs(settings) as jobs:
        assert jobs.dead_replay(None) == len(dead)  # dead letters keep the trace context too
    replaying = True
    assert (await worker().drain()).succeeded == len(dead)

    spans, _ = spans_in(tmp_path)
    ids = [*plain, *keyed, *scheduled, orphan]
    runs = Counter(span["attributes"]["worker.item.id"] for span in spans)
    assert runs == Counter({job: 2 if n in dead | again else 1 for n, job in enumerate(ids)})
    for span in spans:
        if span["attributes"]["worker.item.id"] == orphan:
            assert span["parent"] is None
        else:
            assert (span["trace"], span["parent"]) == (context.trace_id, context.span_id)
    second_runs = [span for span in spans if span["attributes"]["worker.job.attempt"] == 2]
    assert len(second_runs) == len(again)
{%- endif %}


def test_the_console_exporter_writes_to_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    # stdout carries a drain's JSON summary: spans printed there would break it
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    [exporter] = exporters_from_env()
    assert exporter.out is sys.stderr  # type: ignore[attr-defined]
