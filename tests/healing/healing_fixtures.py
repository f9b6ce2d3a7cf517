"""Observations as a node would report them, for the healing tests (inputs, not mocks)."""

from __future__ import annotations

from x0tta6bl4.protocol.observe import LinkObservation, RouteObservation


def link(peer: str, *, alive: bool = True, **kw: object) -> LinkObservation:
    fields: dict[str, object] = {
        "rtt": 0.01,
        "jitter": 0.001,
        "loss": 0.0,
        "last_heard": None,
        "cost": 96,
        "base_cost": 96,
        "session_age": 1.0,
        "handshake_failures": 0,
    }
    fields.update(kw)
    return LinkObservation(peer=peer, alive=alive, **fields)  # type: ignore[arg-type]


def route(dst: str, hop: str | None, changes: int = 0) -> RouteObservation:
    return RouteObservation(dst, hop, 96 if hop else 0xFFFF, changes)
