"""Inputs to and actions out of every sans-IO core.

A core is driven as ``core.handle(now, input) -> list[Action]``; it never touches a
socket, a clock or a sleep. ``now`` is monotonic seconds. The same cores run under
``node/`` (real UDP, real time) and under ``sim/`` (virtual time).

Addresses are opaque hashable values: ``(host, port)`` tuples on real UDP, node names
in the simulator, node names again for end-to-end sessions routed through the mesh.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, TypeAlias

Addr: TypeAlias = Hashable


# --- inputs -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Datagram:
    """Bytes that arrived from ``addr``."""

    addr: Addr
    data: bytes


@dataclass(frozen=True, slots=True)
class Timer:
    """A timer set earlier with ``SetTimer(at, key)`` has fired."""

    key: Hashable


@dataclass(frozen=True, slots=True)
class AppSend:
    """The application asks to send ``payload`` to ``dst`` (a peer or node name) on ``port``."""

    dst: str
    port: int
    payload: bytes


Input: TypeAlias = Datagram | Timer | AppSend


# --- actions ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Put ``data`` on the wire to ``addr``."""

    addr: Addr
    data: bytes


@dataclass(frozen=True, slots=True)
class Deliver:
    """Hand an authenticated payload from ``src`` (peer or node name) to the application."""

    src: str
    port: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class SetTimer:
    """Call back with ``Timer(key)`` at monotonic time ``at``; a later SetTimer with the
    same key replaces the earlier one."""

    at: float
    key: Hashable


@dataclass(frozen=True, slots=True)
class Event:
    """A structured trace record (qlog style): ``kind`` plus flat, JSON-able fields.

    Traces must be deterministic for a seeded simulation, so fields never carry random
    bytes (ciphertexts, ephemeral keys), only names, counts, sizes and reasons.
    """

    kind: str
    fields: dict[str, Any] = field(default_factory=dict)


Action: TypeAlias = Send | Deliver | SetTimer | Event
