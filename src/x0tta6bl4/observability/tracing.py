"""OpenTelemetry tracing: off unless the standard ``OTEL_*`` variables ask for it.

On when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set,
or ``OTEL_TRACES_EXPORTER`` names ``otlp``; off when ``OTEL_SDK_DISABLED=true`` or
``OTEL_TRACES_EXPORTER=none``. Spans go out in batches (``BatchSpanProcessor``, tuned by
``OTEL_BSP_*``) over OTLP/HTTP with protobuf; the SDK reads the endpoint, headers,
timeout and ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` itself.

This module imports only the standard library: the SDK is loaded by ``setup_tracing``
and only when tracing is on, so a node without ``OTEL_*`` variables never loads
OpenTelemetry at all (its memory budget). Everything else here is a no-op while off.

Span attributes never carry secrets (tokens, keys): callers pass names, serials,
versions and outcomes only.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any, Final, Protocol

# What an attribute may hold; anything else is sent as its str().
AttrValue = str | bool | int | float


class SpanLike(Protocol):
    """What ``span`` yields: an OpenTelemetry span when on, a no-op when off."""

    def set_attribute(self, key: str, value: Any) -> Any: ...


class _NoopSpan:
    __slots__ = ()

    def set_attribute(self, key: str, value: Any) -> None:
        return None


_NOOP: Final = _NoopSpan()

_lock = threading.Lock()
# Set once by setup_tracing: the SDK's TracerProvider and our Tracer (Any: the SDK's
# types are not importable while tracing is off).
_provider: Any = None
_tracer: Any = None


def wanted(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the ``OTEL_*`` variables of ``environ`` (default: the process's) turn
    tracing on. Off by default: the SDK's own default exporter (otlp to localhost) is
    not assumed."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER")
    if exporters is not None and exporters.strip():
        names = {n.strip().lower() for n in exporters.split(",")}
        return "otlp" in names
    return bool(
        env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    )


def enabled() -> bool:
    """Tracing is set up in this process (cheap: callers test it before doing work)."""
    return _tracer is not None


def setup_tracing(service_name: str) -> bool:
    """Set up tracing for this process if its ``OTEL_*`` variables ask for it; returns
    whether it is on. Idempotent. ``service_name`` is the default ``service.name``
    (``OTEL_SERVICE_NAME`` or ``OTEL_RESOURCE_ATTRIBUTES`` win). What is buffered is
    exported at exit (``shutdown``) or by ``flush``."""
    global _provider, _tracer
    if not wanted():
        return enabled()
    with _lock:
        if _tracer is not None:
            return True
        # Imported here only: loading the SDK costs memory a node without tracing keeps.
        try:
            from opentelemetry import trace
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter,
            )
            from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError as exc:
            # A node installed without the tracing extra keeps running, untraced.
            import logging

            logging.getLogger("x0tta6bl4.tracing").warning(
                "tracing_unavailable: OTEL_* variables ask for tracing but %s; install "
                "x0tta6bl4[tracing]",
                exc,
            )
            return False

        # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; ours are
        # only defaults for what they leave unset.
        detected = Resource.create({})
        ours: dict[str, str] = {}
        if str(detected.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            ours[SERVICE_NAME] = service_name
        if SERVICE_VERSION not in detected.attributes:
            ours[SERVICE_VERSION] = _version()
        resource = detected.merge(Resource(ours))
        # OTEL_TRACES_SAMPLER, when set, is the SDK's to read (sampler=None).
        sampler = None if os.environ.get("OTEL_TRACES_SAMPLER", "").strip() else _sampler()
        provider = TracerProvider(resource=resource, sampler=sampler)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        # Global too, so propagation and third-party instrumentation find it; set once.
        trace.set_tracer_provider(provider)
        _provider = provider
        _tracer = provider.get_tracer("x0tta6bl4", _version())
        atexit.register(shutdown)
    return True


def _sampler() -> Any:
    """Everything, except database and Redis client spans outside any request or span
    of ours: the control plane's background loops (push polling every second, CRL
    refresh, gauges) would otherwise fill the trace store with lone SELECTs."""
    from opentelemetry.sdk.trace.sampling import (
        Decision,
        ParentBased,
        Sampler,
        SamplingResult,
    )
    from opentelemetry.trace import SpanKind

    class NoLoneClients(Sampler):
        def should_sample(  # type: ignore[no-untyped-def]
            self, parent_context, trace_id, name, kind=None, attributes=None, *a, **kw
        ) -> SamplingResult:
            if kind == SpanKind.CLIENT:
                return SamplingResult(Decision.DROP)
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)

        def get_description(self) -> str:
            return "NoLoneClients"

    return ParentBased(root=NoLoneClients())


def provider() -> Any:
    """The SDK TracerProvider (None while off), for instrumentations."""
    return _provider


# Probes and scrapes every few seconds would bury the interesting traces.
_EXCLUDED_URLS: Final = "/health,/ready,/metrics"
# Redacted even when OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_* ask for headers: API keys,
# cookies and node request signatures.
_SECRET_HEADERS: Final = (
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-x0t-signature",
    "x-x0t-nonce",
)


def instrument_fastapi(app: Any) -> None:
    """Server spans for every request of ``app`` (a FastAPI application); no-op while off.
    ``/health``, ``/ready`` and ``/metrics`` are left out unless
    ``OTEL_PYTHON_FASTAPI_EXCLUDED_URLS`` says otherwise. Headers are recorded only when
    ``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_*`` ask, and then secret ones redacted."""
    if _provider is None:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    excluded = None if "OTEL_PYTHON_FASTAPI_EXCLUDED_URLS" in os.environ else _EXCLUDED_URLS
    env_redact = os.environ.get("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS", "")
    redact = [*_SECRET_HEADERS, *(h.strip() for h in env_redact.split(",") if h.strip())]
    # The ASGI layer's per-message "http send"/"receive" spans would be one per event of
    # a node's push stream: left out.
    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=_provider,
        excluded_urls=excluded,
        http_capture_headers_sanitize_fields=redact,
        exclude_spans=["receive", "send"],
    )


def instrument_sqlalchemy(sync_engine: Any) -> None:
    """Client spans for the statements of ``sync_engine`` (``AsyncEngine.sync_engine``):
    SQL text with placeholders, never the parameters. No-op while off. The
    instrumentor works once per process, so this instruments the process's first
    engine (the control plane has one per process)."""
    if _provider is None:
        return
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    inst = SQLAlchemyInstrumentor()
    if not inst.is_instrumented_by_opentelemetry:
        # Its declared range stops below SQLAlchemy 2.1, whose engine events it uses
        # unchanged (tests/observability/test_tracing.py receives the statement spans).
        inst.instrument(engine=sync_engine, tracer_provider=_provider, skip_dep_check=True)


def instrument_redis() -> None:
    """Client spans for Redis commands (arguments replaced by ``?``); call before the
    client is made. No-op while off."""
    if _provider is None:
        return
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    inst = RedisInstrumentor()
    if not inst.is_instrumented_by_opentelemetry:
        inst.instrument(tracer_provider=_provider)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("x0tta6bl4")
    except PackageNotFoundError:
        return "0+unknown"


def flush(timeout_s: float = 5.0) -> None:
    """Export what is buffered now (end of a request burst, before a fork or exit)."""
    if _provider is not None:
        _provider.force_flush(int(timeout_s * 1000))


def shutdown() -> None:
    """Flush and stop the exporter; tracing stays off in this process afterwards."""
    global _provider, _tracer
    with _lock:
        p, _provider, _tracer = _provider, None, None
    if p is not None:
        p.shutdown()


def _clean(attrs: Mapping[str, Any]) -> dict[str, AttrValue]:
    out: dict[str, AttrValue] = {}
    for key, value in attrs.items():
        if value is None:
            continue
        out[key] = value if isinstance(value, str | bool | int | float) else str(value)
    return out


@contextlib.contextmanager
def span(name: str, **attrs: Any) -> Iterator[SpanLike]:
    """A span around the block, child of the current one; yields something with
    ``set_attribute``. Keyword arguments become attributes ``x0t.<name>`` (None ones are
    left out). An exception leaving the block is recorded and marks the span failed. A
    no-op while tracing is off."""
    tracer = _tracer
    if tracer is None:
        yield _NOOP
        return
    clean = _clean({f"x0t.{k}": v for k, v in attrs.items()})
    with tracer.start_as_current_span(name, attributes=clean) as s:
        yield s


def record_span(
    name: str,
    *,
    start: float,
    end: float,
    error: str | None = None,
    new_trace: bool = False,
    **attrs: Any,
) -> None:
    """A finished span for something that already happened (``start``/``end`` in Unix
    seconds): a handshake, a healing incident. A child of the current span, if any,
    unless ``new_trace`` (then its own trace, linked to the current span: for work done
    inside a request that lasts for hours, such as a node's push stream). ``error``: why
    it failed (status ERROR), None when it did not. Attributes as for ``span``."""
    tracer = _tracer
    if tracer is None:
        return
    from opentelemetry.context import Context
    from opentelemetry.trace import Link, Status, StatusCode, get_current_span

    clean = _clean({f"x0t.{k}": v for k, v in attrs.items()})
    context, links = None, None
    if new_trace:
        current = get_current_span().get_span_context()
        context, links = Context(), ([Link(current)] if current.is_valid else None)
    s = tracer.start_span(
        name, context=context, links=links, attributes=clean, start_time=int(start * 1e9)
    )
    if error is not None:
        s.set_status(Status(StatusCode.ERROR, error))
    s.end(end_time=int(max(start, end) * 1e9))


class HealingEventLike(Protocol):
    """What ``record_healing_event`` reads (a ``healing.HealingEvent``); times are the
    runtime's monotonic seconds."""

    @property
    def kind(self) -> str: ...
    @property
    def subject(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def outcome(self) -> str: ...
    @property
    def started_at(self) -> float: ...
    @property
    def detected_at(self) -> float: ...
    @property
    def repaired_at(self) -> float | None: ...
    @property
    def cleared_at(self) -> float | None: ...
    @property
    def mttd(self) -> float | None: ...
    @property
    def mttr(self) -> float | None: ...
    @property
    def time_to_clear(self) -> float | None: ...
    @property
    def verified(self) -> tuple[str, ...]: ...


# Trace event kinds of the secure channel (prefixed "link." or "e2e." by the mesh) and
# the span each becomes.
_HANDSHAKE_SPANS: Final = {
    "handshake_started": "x0t.handshake.initiated",
    "handshake_complete": "x0t.handshake.completed",
    "handshake_failed": "x0t.handshake.failed",
}


def record_handshake_event(kind: str, fields: Mapping[str, Any], now: float) -> None:
    """A span for a handshake trace event (``link.handshake_complete`` ...) seen at Unix
    time ``now``: initiated (an instant), completed (spanning its ``duration``) or failed
    (status ERROR, with the reason). Per peer: ``x0t.peer``, ``x0t.addr``, ``x0t.layer``."""
    if _tracer is None:
        return
    layer, _, base = kind.rpartition(".")
    name = _HANDSHAKE_SPANS.get(base)
    if name is None:
        return
    duration = fields.get("duration")
    start = now - float(duration) if isinstance(duration, int | float) else now
    reason = fields.get("reason")
    record_span(
        name,
        start=start,
        end=now,
        error=None if base != "handshake_failed" else str(reason or "failed"),
        layer=layer or "link",
        peer=fields.get("peer"),
        addr=fields.get("addr"),
        role=fields.get("role"),
        rekey=fields.get("rekey"),
        attempts=fields.get("attempts"),
        reason=reason,
        duration_s=duration,
    )


def record_healing_event(ev: HealingEventLike, wall_offset: float) -> None:
    """A span for a finished self-healing incident, from the fault's start to its repair
    (or clearing, or now): kind, subject, action, outcome, MTTD/MTTR. ``wall_offset``
    turns the event's monotonic times into Unix time. Failed incidents are errors."""
    if _tracer is None:
        return
    import time

    ended = ev.repaired_at if ev.repaired_at is not None else ev.cleared_at
    end = (ended + wall_offset) if ended is not None else time.time()
    record_span(
        "x0t.self_healing",
        start=ev.started_at + wall_offset,
        end=end,
        error="incident not repaired" if str(ev.outcome) == "failed" else None,
        kind=str(ev.kind),
        subject=ev.subject,
        action=str(ev.action),
        outcome=str(ev.outcome),
        mttd_s=ev.mttd,
        mttr_s=ev.mttr,
        time_to_clear_s=ev.time_to_clear,
        detected_at=round(ev.detected_at + wall_offset, 6),
        verified=",".join(ev.verified) or None,
    )


def inject(headers: MutableMapping[str, str]) -> None:
    """Add the W3C ``traceparent`` of the current span to outgoing HTTP ``headers``, so
    the control plane's spans join the node's trace. Nothing while off."""
    if _tracer is None:
        return
    from opentelemetry.propagate import inject as otel_inject

    otel_inject(headers)


def current_ids() -> tuple[str, str] | None:
    """``(trace_id, span_id)`` in hex of the current span, None when there is none or
    tracing is off (for log lines)."""
    if _tracer is None:
        return None
    from opentelemetry.trace import get_current_span

    ctx = get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


__all__ = [
    "HealingEventLike",
    "SpanLike",
    "current_ids",
    "enabled",
    "flush",
    "inject",
    "instrument_fastapi",
    "instrument_redis",
    "instrument_sqlalchemy",
    "provider",
    "record_handshake_event",
    "record_healing_event",
    "record_span",
    "setup_tracing",
    "shutdown",
    "span",
    "wanted",
]
