"""``GET /v1/events``: the events nodes reported (self-healing incidents and others)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import select

from x0tta6bl4.api.reports import EVENT_KIND_PATTERN, MAX_TIME, NODE_NAME_PATTERN
from x0tta6bl4.control.auth import Actor, Role, require
from x0tta6bl4.control.context import ctx
from x0tta6bl4.control.models import Event

router = APIRouter(
    prefix="/v1",
    tags=["events"],
    responses={
        401: {"description": "no API key, or an unknown, malformed or revoked one"},
        403: {"description": "the key's role is too low for this route"},
    },
)

MAX_PAGE = 1000
MAX_ID = 2**31 - 1  # events.id is INTEGER


class EventOut(BaseModel):
    id: int
    node: str
    kind: str
    at: float = Field(description="When it happened (Unix seconds, the node's clock).")
    detail: dict[str, Any]


class EventPage(BaseModel):
    events: list[EventOut] = Field(description="Newest first (by arrival).")
    next_cursor: int | None = Field(
        description="Pass as ?cursor= for the next (older) page; null on the last page."
    )


TimeQuery = Annotated[float | None, Query(ge=0, le=MAX_TIME, allow_inf_nan=False)]


@router.get("/events", response_model=EventPage, summary="Reported events, newest first (viewer)")
async def list_events(
    request: Request,
    node: Annotated[str | None, Query(max_length=63, pattern=NODE_NAME_PATTERN)] = None,
    kind: Annotated[str | None, Query(max_length=64, pattern=EVENT_KIND_PATTERN)] = None,
    since: Annotated[TimeQuery, Query(description="Events at or after this Unix time.")] = None,
    until: Annotated[TimeQuery, Query(description="Events before this Unix time.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    cursor: Annotated[
        int | None, Query(ge=1, le=MAX_ID, description="The last id of the previous page.")
    ] = None,
    _: Actor = Depends(require(Role.viewer)),  # noqa: B008
) -> EventPage:
    """Role: viewer. Ordered by id, newest first: a resent old event appears when it
    arrived; ``since``/``until`` filter on the event's own time."""
    q = select(Event.id, Event.node_name, Event.kind, Event.at, Event.detail).order_by(
        Event.id.desc()
    )
    if node is not None:
        q = q.where(Event.node_name == node)
    if kind is not None:
        q = q.where(Event.kind == kind)
    if since is not None:
        q = q.where(Event.at >= since)
    if until is not None:
        q = q.where(Event.at < until)
    if cursor is not None:
        q = q.where(Event.id < cursor)
    async with ctx(request).db.engine.connect() as conn:
        rows = (await conn.execute(q.limit(limit))).all()
    events = [EventOut(id=r[0], node=r[1], kind=r[2], at=r[3], detail=r[4]) for r in rows]
    return EventPage(events=events, next_cursor=events[-1].id if len(events) == limit else None)
