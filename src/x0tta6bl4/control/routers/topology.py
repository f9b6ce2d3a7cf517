"""``GET /v1/topology``: the mesh as the nodes last reported it, and optionally the path
traffic from one node to another takes now (following each hop's reported next hop).

A killed node sends nothing more, so its own last report still says its links are up.
Its neighbours notice within the dead interval (0.4 s) and report at once (the reporter
sends a report on every link change), so the newer reports win: a link whose other end
reported it dead, or stopped listing it, after this end's last report is down, and a
node all of whose reporting neighbours say so is ``down``. Reports are ordered by when
the service received them (``nodes.last_seen``, one clock), never by the nodes' clocks.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import AliasChoices, BaseModel, Field
from sqlalchemy import select

from x0tta6bl4.api.reports import NODE_NAME_PATTERN
from x0tta6bl4.control.auth import Actor, Role, require
from x0tta6bl4.control.context import ctx
from x0tta6bl4.control.models import Node, NodeReport
from x0tta6bl4.control.routers.nodes import ONLINE_WINDOW_S

router = APIRouter(
    prefix="/v1",
    tags=["topology"],
    responses={
        401: {"description": "no API key, or an unknown, malformed or revoked one"},
        403: {"description": "the key's role is too low for this route"},
    },
)

# A path longer than this is a loop the walk failed to see, or a mesh far beyond design.
MAX_PATH = 1024


class TopologyNode(BaseModel):
    name: str
    tags: list[str]
    online: bool
    status: str
    down: bool = Field(
        description="Every neighbour that reported after this node's last report says its "
        "link to it is dead (at least one did), while the node's own last report had one "
        "of those links up: it stopped answering and has not reported since."
    )


class TopologyLink(BaseModel):
    a: str = Field(description="The alphabetically first end.")
    b: str
    rtt_ms: float | None = Field(description="Mean of the ends' reports.")
    loss: float = Field(description="The worse of the ends' reports.")
    cost: int = Field(description="The higher of the ends' reports.")
    up: bool = Field(description="Every end that reports the link says it is up.")
    reported_by: list[str] = Field(description="Which ends reported it (one or both).")


class TopologyPath(BaseModel):
    source: str = Field(validation_alias=AliasChoices("from", "source"), serialization_alias="from")
    to: str
    hops: list[str] = Field(description="from, the next hops, and to when complete.")
    complete: bool
    reason: str | None = Field(description="Why the walk stopped short (null when complete).")


class Topology(BaseModel):
    nodes: list[TopologyNode]
    links: list[TopologyLink]
    path: TopologyPath | None = None
    generated_at: float


def merge_links(
    reports: dict[str, dict[str, Any]], received: dict[str, float] | None = None
) -> list[TopologyLink]:
    """One link per pair of nodes from both ends' neighbour lists; a link only one end
    reports still shows. ``received`` (node -> when its latest report arrived): a link
    that one end dropped from a report newer than the other end's is down."""
    ends: dict[tuple[str, str], list[tuple[str, dict[str, Any]]]] = {}
    for reporter, rep in reports.items():
        for n in rep.get("neighbours") or []:
            other = n.get("name")
            if not isinstance(other, str) or other == reporter:
                continue
            key = (reporter, other) if reporter < other else (other, reporter)
            ends.setdefault(key, []).append((reporter, n))
    received = received or {}
    links = []
    for (a, b), seen in sorted(ends.items()):
        rtts = [float(n["rtt_ms"]) for _, n in seen if n.get("rtt_ms") is not None]
        up = all(bool(n.get("up")) for _, n in seen)
        if len(seen) == 1:
            # Only one end lists it: the other end forgot it if it reported since.
            lister = seen[0][0]
            silent = b if lister == a else a
            if received.get(silent, float("-inf")) > received.get(lister, float("inf")):
                up = False
        links.append(
            TopologyLink(
                a=a,
                b=b,
                rtt_ms=round(sum(rtts) / len(rtts), 3) if rtts else None,
                loss=max(float(n.get("loss") or 0.0) for _, n in seen),
                cost=max(int(n.get("cost") or 0) for _, n in seen),
                up=up,
                reported_by=sorted({r for r, _ in seen}),
            )
        )
    return links


def down_nodes(reports: dict[str, dict[str, Any]], received: dict[str, float]) -> set[str]:
    """Nodes that stopped answering their neighbours (see ``TopologyNode.down``)."""
    said_up: dict[str, set[str]] = {}  # node -> neighbours its own last report had up
    heard: dict[str, list[tuple[str, bool]]] = {}  # node -> (witness, link up) newer
    for reporter, rep in reports.items():
        for n in rep.get("neighbours") or []:
            other = n.get("name")
            if not isinstance(other, str) or other == reporter:
                continue
            if n.get("up"):
                said_up.setdefault(reporter, set()).add(other)
            if received.get(reporter, float("-inf")) > received.get(other, float("inf")):
                heard.setdefault(other, []).append((reporter, bool(n.get("up"))))
    return {
        name
        for name, witnesses in heard.items()
        if not any(up for _, up in witnesses)
        and any(w in said_up.get(name, ()) for w, _ in witnesses)
    }


def walk_path(
    reports: dict[str, dict[str, Any]],
    src: str,
    dst: str,
    down: set[str] | frozenset[str] = frozenset(),
) -> TopologyPath:
    """Follow each node's reported next hop towards ``dst``; stop at a loop, a node
    without a report, one without a route, or one that is ``down`` (its last report
    says where traffic went before it died, not where it goes now)."""
    hops = [src]
    seen = {src}
    at = src
    while at != dst:
        if at in down:
            return TopologyPath(
                source=src, to=dst, hops=hops, complete=False, reason=f"{at} is down"
            )
        rep = reports.get(at)
        if rep is None:
            return TopologyPath(
                source=src, to=dst, hops=hops, complete=False, reason=f"{at} has not reported"
            )
        nxt = next(
            (r.get("next_hop") for r in rep.get("routes") or [] if r.get("destination") == dst),
            None,
        )
        if not isinstance(nxt, str):
            return TopologyPath(
                source=src, to=dst, hops=hops, complete=False, reason=f"{at} has no route to {dst}"
            )
        if nxt in seen:
            hops.append(nxt)
            return TopologyPath(
                source=src, to=dst, hops=hops, complete=False, reason=f"routing loop at {nxt}"
            )
        hops.append(nxt)
        seen.add(nxt)
        at = nxt
        if len(hops) > MAX_PATH:
            return TopologyPath(
                source=src, to=dst, hops=hops, complete=False, reason="path too long"
            )
    return TopologyPath(source=src, to=dst, hops=hops, complete=True, reason=None)


NameQuery = Annotated[str | None, Query(max_length=63, pattern=NODE_NAME_PATTERN)]


@router.get(
    "/topology",
    response_model=Topology,
    response_model_by_alias=True,
    responses={
        400: {"description": "only one of from and to given"},
        404: {"description": "from or to names no node"},
    },
    summary="The mesh graph from the latest reports, optionally a path (viewer)",
)
async def topology(
    request: Request,
    from_: Annotated[
        str | None,
        Query(alias="from", max_length=63, pattern=NODE_NAME_PATTERN, description="Path start."),
    ] = None,
    to: Annotated[NameQuery, Query(description="Path end.")] = None,
    _: Actor = Depends(require(Role.viewer)),  # noqa: B008
) -> Topology:
    """Role: viewer. ``?from=A&to=B`` adds the current path from A to B (both needed)."""
    if (from_ is None) != (to is None):
        raise HTTPException(400, detail="from, to: give both to get a path, or neither")
    c = ctx(request)
    async with c.db.engine.connect() as conn:
        nodes = (
            await conn.execute(
                select(Node.name, Node.tags, Node.status, Node.last_seen).order_by(Node.name)
            )
        ).all()
        reports = {
            r[0]: r[1]
            for r in (await conn.execute(select(NodeReport.node_name, NodeReport.report))).all()
        }
    now = time.time()
    received = {n[0]: n[3] for n in nodes if n[3] is not None}
    down = down_nodes(reports, received)
    path = None
    if from_ is not None and to is not None:
        known = {n[0] for n in nodes}
        for field, name in (("from", from_), ("to", to)):
            if name not in known:
                raise HTTPException(404, detail=f"{field}: no node named {name!r}")
        path = walk_path(reports, from_, to, down)
    return Topology(
        nodes=[
            TopologyNode(
                name=n[0],
                tags=n[1],
                status=n[2],
                online=n[3] is not None and now - n[3] <= ONLINE_WINDOW_S,
                down=n[0] in down,
            )
            for n in nodes
        ],
        links=merge_links(reports, received),
        path=path,
        generated_at=now,
    )
