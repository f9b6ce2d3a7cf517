"""Observations as a node would report them, for the healing tests (inputs, not mocks)."""

from __future__ import annotations

from x0tta6bl4.mesh.observe import LinkObservation, NodeObservation, RouteObservation


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


def obs(
    now: float,
    links: list[LinkObservation] | None = None,
    routes: list[RouteObservation] | None = None,
    *,
    not_after: float = 1e9,
    wall: float = 1e6,
) -> NodeObservation:
    return NodeObservation(
        now=now,
        name="A",
        links={lo.peer: lo for lo in links or []},
        routes={r.dst: r for r in routes or []},
        cert_not_after=not_after,
        wall_now=wall + now,
    )
