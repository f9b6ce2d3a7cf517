"""``POST /v1/reports``: a node's signed status report and the events it carries.

The hot write path (every node, every few seconds): one short transaction of three
statements: upsert the latest report, touch the node's ``last_seen`` and ``endpoints``,
insert the events with ``ON CONFLICT DO NOTHING`` on ``(node, kind, at)`` so a resend
stores nothing twice.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import bindparam, text, update
from sqlalchemy.dialects import postgresql, sqlite

from x0tta6bl4.api import reports as wire
from x0tta6bl4.api.signing import MAX_SKEW_S
from x0tta6bl4.control.context import ctx
from x0tta6bl4.control.models import Event, Node, NodeReport
from x0tta6bl4.control.nodeauth import NodeCaller, authenticated_node
from x0tta6bl4.control.routers.nodes import forget_node

router = APIRouter(
    prefix="/v1",
    tags=["reports"],
    responses={401: {"description": "not signed by a node with a current certificate"}},
)

# --- the wire schema (api/reports.py) as the service validates it ------------------------

NodeName = Annotated[str, Field(pattern=wire.NODE_NAME_PATTERN, max_length=63)]
Time = Annotated[float, Field(ge=0.0, le=wire.MAX_TIME, allow_inf_nan=False)]
DetailValue = Annotated[str, Field(max_length=wire.MAX_DETAIL_STR)] | int | float | bool | None


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NeighbourReport(_Model):
    name: NodeName
    rtt_ms: float | None = Field(default=None, ge=0.0, le=wire.MAX_RTT_MS, allow_inf_nan=False)
    loss: float = Field(default=0.0, ge=0.0, le=1.0, allow_inf_nan=False)
    cost: int = Field(default=0, ge=0, le=wire.MAX_METRIC)
    up: bool


class RouteReport(_Model):
    destination: NodeName
    next_hop: NodeName | None = Field(default=None, description="null: unreachable")
    metric: int = Field(ge=0, le=wire.MAX_METRIC)


class EventReport(_Model):
    kind: str = Field(pattern=wire.EVENT_KIND_PATTERN, max_length=wire.MAX_KIND)
    at: Time
    detail: dict[Annotated[str, Field(max_length=wire.MAX_DETAIL_KEY)], DetailValue] = Field(
        default_factory=dict, max_length=wire.MAX_DETAIL_KEYS
    )

    @field_validator("detail")
    @classmethod
    def _finite(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key, value in v.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"detail[{key!r}] is not a finite number")
        return v


class StatusReport(_Model):
    """One node's status at ``at`` (Unix seconds, the node's clock)."""

    at: Time
    endpoints: list[Annotated[str, Field(max_length=wire.MAX_ENDPOINT)]] = Field(
        default_factory=list, max_length=wire.MAX_ENDPOINTS
    )
    neighbours: list[NeighbourReport] = Field(default_factory=list, max_length=wire.MAX_NEIGHBOURS)
    routes: list[RouteReport] = Field(default_factory=list, max_length=wire.MAX_ROUTES)
    sessions: int = Field(default=0, ge=0, le=wire.MAX_SESSIONS)
    policy_version: int | None = Field(default=None, ge=0, le=wire.MAX_VERSION)
    crl_version: int | None = Field(default=None, ge=0, le=wire.MAX_VERSION)
    events: list[EventReport] = Field(default_factory=list, max_length=wire.MAX_EVENTS)

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, v: list[str]) -> list[str]:
        for item in v:
            if not wire.is_endpoint(item):
                raise ValueError(
                    f"endpoint {item[:80]!r} is not HOST:PORT ([IPv6]:PORT), port 1-65535"
                )
        return v


class ReportAccepted(_Model):
    accepted_events: int = Field(description="Events of this report stored now.")
    duplicate_events: int = Field(
        description="Events already stored from an earlier send (a resend is harmless)."
    )


_REPORT_COLUMNS = (
    "node_name",
    "at",
    "report",
    "neighbours",
    "sessions",
    "policy_version",
    "crl_version",
)


@functools.cache
def _report_upsert(is_sqlite: bool) -> Any:
    """Built once per dialect (building it per request was a tenth of a report's CPU).
    Reports may arrive out of order (a retry after a newer one): keep the newest."""
    ins = dialect_insert(is_sqlite, NodeReport).values(
        {k: bindparam(k, type_=NodeReport.__table__.c[k].type) for k in _REPORT_COLUMNS}
    )
    return ins.on_conflict_do_update(
        index_elements=[NodeReport.node_name],
        set_={k: ins.excluded[k] for k in _REPORT_COLUMNS if k != "node_name"},
        where=NodeReport.at <= ins.excluded.at,
    )


def dialect_insert(is_sqlite: bool, table: Any) -> Any:
    """``INSERT`` with ``ON CONFLICT`` support for the database in use."""
    return sqlite.insert(table) if is_sqlite else postgresql.insert(table)


@router.post(
    wire.PATH.removeprefix("/v1"),
    response_model=ReportAccepted,
    summary="A node reports its status and events (node-signed)",
    responses={400: {"description": "a time in the report is in the future"}},
)
async def post_report(
    request: Request,
    body: StatusReport,
    node: NodeCaller = Depends(authenticated_node),  # noqa: B008
) -> ReportAccepted:
    """Node-signed (``x-x0t-*`` headers, see ``api.signing``). Stores the latest report,
    the node's endpoints and ``last_seen``, and the events (idempotently: a resend of the
    same event, same kind and time, is counted in ``duplicate_events``)."""
    now = time.time()
    limit = now + MAX_SKEW_S
    if body.at > limit:
        raise HTTPException(
            400, detail=f"at: {body.at:.0f} is {body.at - now:.0f} s in the future (clock?)"
        )
    for i, ev in enumerate(body.events):
        if ev.at > limit:
            raise HTTPException(
                400, detail=f"events.{i}.at: {ev.at:.0f} is {ev.at - now:.0f} s in the future"
            )
    c = ctx(request)
    is_sqlite = c.db.is_sqlite
    report: dict[str, Any] = {
        "at": body.at,
        "endpoints": body.endpoints,
        "neighbours": [n.model_dump() for n in body.neighbours],
        "routes": [r.model_dump() for r in body.routes],
        "sessions": body.sessions,
        "policy_version": body.policy_version,
        "crl_version": body.crl_version,
    }
    values = {
        "node_name": node.name,
        "at": body.at,
        "report": report,
        "neighbours": len(body.neighbours),
        "sessions": body.sessions,
        "policy_version": body.policy_version,
        "crl_version": body.crl_version,
    }
    upsert = _report_upsert(is_sqlite)
    accepted = 0
    async with c.db.engine.begin() as conn:
        if not is_sqlite:
            # A report is telemetry, superseded seconds later: a crash may lose the last
            # few milliseconds of them rather than wait for the WAL to reach the disk
            # on every one (enrollment and revocation stay synchronous).
            await conn.execute(text("SET LOCAL synchronous_commit TO OFF"))
        await conn.execute(upsert, values)
        await conn.execute(
            update(Node)
            .where(Node.name == node.name)
            .values(last_seen=now, endpoints=body.endpoints)
        )
        if body.events:
            rows = [
                {
                    "node_name": node.name,
                    "kind": ev.kind,
                    "at": ev.at,
                    "detail": ev.detail,
                    "received_at": now,
                }
                for ev in body.events
            ]
            result = await conn.execute(
                dialect_insert(is_sqlite, Event)
                .values(rows)
                .on_conflict_do_nothing(index_elements=["node_name", "kind", "at"])
            )
            accepted = max(0, result.rowcount)
    forget_node(request.app, node.name)
    return ReportAccepted(accepted_events=accepted, duplicate_events=len(body.events) - accepted)
