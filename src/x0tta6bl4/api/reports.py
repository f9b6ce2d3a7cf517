"""The status report a node posts to ``POST /v1/reports`` (node-signed), as both sides
read and write it.

    {"at": 1767225600.0,                      the node's clock, Unix seconds
     "endpoints": ["198.51.100.7:7100"],      where it listens (HOST:PORT, [IPv6]:PORT)
     "neighbours": [{"name", "rtt_ms", "loss", "cost", "up"}],
     "routes": [{"destination", "next_hop", "metric"}],   next_hop null: unreachable
     "sessions": 3, "policy_version": 7, "crl_version": 2,
     "events": [{"kind", "at", "detail"}]}    detail: a small flat JSON object

answered by ``{"accepted_events": n, "duplicate_events": m}``. Events are stored once per
``(node, kind, at)``: a node resends events it is unsure were stored, harmlessly.

Everything is bounded (``MAX_*``): list lengths, string lengths, number ranges, finite
floats, so one report costs the service a bounded amount of work and storage. The service
validates with pydantic models built from these bounds (``control/routers/reports.py``);
the node builds reports that fit them with the ``clean_*`` helpers here. This module is
plain standard library: the running agent never imports pydantic (``node/runsettings.py``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, TypedDict

PATH = "/v1/reports"

MAX_ENDPOINTS = 8
MAX_ENDPOINT = 270  # "[" + 255-character host + "]:" + port
MAX_NEIGHBOURS = 256
MAX_ROUTES = 1024
MAX_EVENTS = 100  # per report; a node with more pending sends them over several reports
MAX_DETAIL_KEYS = 16
MAX_DETAIL_KEY = 64
MAX_DETAIL_STR = 256
MAX_KIND = 64
MAX_METRIC = 0xFFFF  # routing's INFINITY: the widest metric or link cost there is
MAX_RTT_MS = 600_000.0
MAX_SESSIONS = 1_000_000
MAX_VERSION = 2**31 - 1
MAX_TIME = 4_102_444_800.0  # 2100-01-01: no later time is one a node can mean

NODE_NAME_PATTERN = r"^[a-z0-9][a-z0-9.-]{0,62}$"
EVENT_KIND_PATTERN = r"^[a-z][a-z0-9_.-]{0,63}$"
_NODE_NAME_RE = re.compile(NODE_NAME_PATTERN)
_EVENT_KIND_RE = re.compile(EVENT_KIND_PATTERN)
_ENDPOINT_RE = re.compile(r"(?:\[[0-9A-Za-z:.%_-]{2,253}\]|[0-9A-Za-z._-]{1,253}):([0-9]{1,5})")


class NeighbourDict(TypedDict):
    name: str
    rtt_ms: float | None
    loss: float
    cost: int
    up: bool


class RouteDict(TypedDict):
    destination: str
    next_hop: str | None
    metric: int


class EventDict(TypedDict):
    kind: str
    at: float
    detail: dict[str, str | int | float | bool | None]


class ReportDict(TypedDict):
    at: float
    endpoints: list[str]
    neighbours: list[NeighbourDict]
    routes: list[RouteDict]
    sessions: int
    policy_version: int | None
    crl_version: int | None
    events: list[EventDict]


def is_node_name(value: object) -> bool:
    return isinstance(value, str) and _NODE_NAME_RE.fullmatch(value) is not None


def is_event_kind(value: object) -> bool:
    return isinstance(value, str) and _EVENT_KIND_RE.fullmatch(value) is not None


def is_endpoint(value: object) -> bool:
    if not isinstance(value, str) or len(value) > MAX_ENDPOINT:
        return False
    m = _ENDPOINT_RE.fullmatch(value)
    return m is not None and 1 <= int(m.group(1)) <= 65535


def is_time(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0.0 <= value <= MAX_TIME
    )


def _number(value: object, lo: float, hi: float) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    v = float(value)
    if not math.isfinite(v):
        return None
    return min(max(v, lo), hi)


def _int(value: object, lo: int, hi: int, default: int) -> int:
    v = _number(value, lo, hi)
    return default if v is None else int(v)


def _version(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 <= value <= MAX_VERSION else None


def clean_neighbour(raw: Mapping[str, Any]) -> NeighbourDict | None:
    """A neighbour entry within bounds (numbers clamped), or None without a valid name."""
    name = raw.get("name")
    if not is_node_name(name):
        return None
    assert isinstance(name, str)
    return {
        "name": name,
        "rtt_ms": _number(raw.get("rtt_ms"), 0.0, MAX_RTT_MS),
        "loss": _number(raw.get("loss"), 0.0, 1.0) or 0.0,
        "cost": _int(raw.get("cost"), 0, MAX_METRIC, MAX_METRIC),
        "up": bool(raw.get("up")),
    }


def clean_route(raw: Mapping[str, Any]) -> RouteDict | None:
    dst = raw.get("destination")
    if not is_node_name(dst):
        return None
    assert isinstance(dst, str)
    hop = raw.get("next_hop")
    return {
        "destination": dst,
        "next_hop": hop if is_node_name(hop) else None,
        "metric": _int(raw.get("metric"), 0, MAX_METRIC, MAX_METRIC),
    }


def clean_detail(raw: Mapping[str, Any]) -> dict[str, str | int | float | bool | None]:
    """At most ``MAX_DETAIL_KEYS`` flat values: long strings cut, other types as text,
    non-finite floats as null."""
    out: dict[str, str | int | float | bool | None] = {}
    for key, value in raw.items():
        if len(out) >= MAX_DETAIL_KEYS:
            break
        k = str(key)[:MAX_DETAIL_KEY]
        if value is None or isinstance(value, bool):
            out[k] = value
        elif isinstance(value, int):
            out[k] = value if abs(value) < 2**63 else str(value)[:MAX_DETAIL_STR]
        elif isinstance(value, float):
            out[k] = value if math.isfinite(value) else None
        else:
            out[k] = str(value)[:MAX_DETAIL_STR]
    return out


def clean_event(kind: object, at: object, detail: Mapping[str, Any] | None) -> EventDict | None:
    """An event within bounds, or None when its kind or time is unusable."""
    if not is_event_kind(kind) or not is_time(at):
        return None
    assert isinstance(kind, str) and isinstance(at, int | float)
    return {"kind": kind, "at": float(at), "detail": clean_detail(detail or {})}


__all__ = [
    "MAX_ENDPOINTS",
    "MAX_EVENTS",
    "MAX_NEIGHBOURS",
    "MAX_ROUTES",
    "PATH",
    "EventDict",
    "NeighbourDict",
    "ReportDict",
    "RouteDict",
    "clean_detail",
    "clean_event",
    "clean_neighbour",
    "clean_route",
    "is_endpoint",
    "is_event_kind",
    "is_node_name",
    "is_time",
]
