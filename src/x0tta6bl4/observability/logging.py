"""Logging set-up: structlog, JSON lines in production, a readable console in a terminal.

Standard-library loggers (uvicorn, SQLAlchemy, ...) are routed through the same
processors, so one process writes one format.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from x0tta6bl4.observability import tracing

_PARAMETER_LOGGERS = ("aiosqlite",)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Ours, so a second configure_logging replaces it instead of adding another."""


def add_trace_ids(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """``trace_id`` and ``span_id`` of the current span, so a log line leads to its trace
    (one attribute test while tracing is off)."""
    if tracing.enabled():
        ids = tracing.current_ids()
        if ids is not None:
            event_dict.setdefault("trace_id", ids[0])
            event_dict.setdefault("span_id", ids[1])
    return event_dict


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        add_trace_ids,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]


def configure_logging(json: bool, level: int | str = logging.INFO) -> None:
    """Configure structlog and the stdlib root logger; safe to call again (tests, CLI).

    ``json=True``: one JSON object per line (production, log shippers).
    ``json=False``: structlog's console renderer (colours only on a TTY).
    """
    renderer: Any
    if json:
        # JSON needs exceptions as strings; the console renderer formats them itself.
        final: list[Any] = [structlog.processors.format_exc_info]
        renderer = structlog.processors.JSONRenderer()
    else:
        final = []
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())

    shared = _shared_processors()
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *final,
            renderer,
        ],
    )
    handler = _Handler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    # Replace, not add: calling twice must not print every line twice.
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # aiosqlite's DEBUG lines repeat every SQL statement with its parameters: a flood, and
    # values that have no place in logs. Held at INFO whatever the level.
    for name in _PARAMETER_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
