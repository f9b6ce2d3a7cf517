"""``/v1/nodes``: the enrolled nodes, one node's detail, and operators changing tags.

``GET /v1/nodes/{name}`` is the hot read (dashboards, scripts polling one node): one
query (node, current certificate and report summary joined) on an autocommit connection
(no BEGIN/ROLLBACK round trips), plain ``Row`` access and ``json.dumps`` straight into the
response, skipping FastAPI's response validation (the ``response_model`` still documents
the shape; the tests check the two agree).

Each replica also keeps the encoded answer for ``X0T_READ_CACHE_S`` (default 1 s; 0 = off), and for
``DETAIL_STALE_S`` (2 s) more serves it while one request refreshes it in the background.
So an answer is about 1 s old under steady reads and never more than 3 s, and only for
changes made through another replica or another router: this replica forgets a node's
entry when it stores that node's report or changes its tags, and every entry when the
revocation list version changes (a revocation made anywhere reaches every replica's
pusher within about a second). Other routers that change a node can call
``forget_node(app, name)`` for read-your-writes on their replica.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import (
    ColumnElement,
    bindparam,
    cast,
    exists,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncEngine

from x0tta6bl4.api.reports import NODE_NAME_PATTERN
from x0tta6bl4.control import audit
from x0tta6bl4.control.auth import Actor, Role, require
from x0tta6bl4.control.context import ctx
from x0tta6bl4.control.models import Certificate, Node, NodeReport
from x0tta6bl4.errors import IdentityError
from x0tta6bl4.identity.cert import (
    MAX_TAG_KEY,
    MAX_TAG_VALUE,
    MAX_TAGS,
    normalize_tags,
)
from x0tta6bl4.identity.overlay import overlay_ipv4, overlay_ipv6

router = APIRouter(
    prefix="/v1",
    tags=["nodes"],
    responses={
        401: {"description": "no API key, or an unknown, malformed or revoked one"},
        403: {"description": "the key's role is too low for this route"},
    },
)

# A node reports every few seconds (``[control] report_interval``, 5 s by default); it is
# online while its last report is younger than this (several intervals, so one lost
# report does not flap it).
ONLINE_WINDOW_S = 30.0
MAX_PAGE = 500
DETAIL_CACHE_S = 1.0
DETAIL_STALE_S = 2.0  # past DETAIL_CACHE_S, served while a refresh runs, for this long
# identity.cert's tag rule, in the schema so clients see it (validate_tag still decides).
TAG_PATTERN = rf"^[a-z][a-z0-9_.-]{{0,{MAX_TAG_KEY - 1}}}:[a-z0-9_.-]{{1,{MAX_TAG_VALUE}}}$"
_DETAIL_CACHE_MAX = 10_000

NodeNameParam = Annotated[
    str, Path(description="The node's name.", max_length=63, pattern=NODE_NAME_PATTERN)
]


class OverlayAddresses(BaseModel):
    ipv6: str = Field(description="The node's overlay IPv6 address (derived from its SPIFFE ID).")
    ipv4: str = Field(
        description="Its overlay IPv4 address in 100.64.0.0/10 (derived too); on the node's "
        "TUN device when the node runs with tun.ipv4 on."
    )


def overlay_addresses(spiffe_id: str) -> dict[str, str]:
    v6, v4 = _overlay(spiffe_id)
    return {"ipv6": v6, "ipv4": v4}


@functools.lru_cache(maxsize=65536)
def _overlay(spiffe_id: str) -> tuple[str, str]:
    # Cached: a page of nodes would otherwise hash every SPIFFE ID twice per request.
    return str(overlay_ipv6(spiffe_id)), str(overlay_ipv4(spiffe_id))


class NodeSummary(BaseModel):
    name: str
    spiffe_id: str
    overlay: OverlayAddresses
    tags: list[str]
    status: str = Field(description="active or revoked")
    current_serial: str | None
    last_seen: float | None = Field(description="Unix time of the last report received.")
    online: bool = Field(description=f"A report arrived within {ONLINE_WINDOW_S:.0f} s.")
    endpoints: list[str] = Field(description="Where the node says it listens (HOST:PORT).")


class NodePage(BaseModel):
    nodes: list[NodeSummary]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null on the last page."
    )


class CertificateInfo(BaseModel):
    serial: str
    not_before: float
    not_after: float
    status: str


class ReportSummary(BaseModel):
    at: float = Field(description="When the node made its latest report (its clock).")
    neighbours: int
    sessions: int
    policy_version: int | None
    crl_version: int | None


class NodeDetail(NodeSummary):
    certificate: CertificateInfo | None
    report: ReportSummary | None


class TagsUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tags: list[Annotated[str, Field(max_length=200, pattern=TAG_PATTERN)]] = Field(
        max_length=MAX_TAGS, description="key:value tags; the whole new set."
    )

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: list[str]) -> list[str]:
        try:
            return list(normalize_tags(v))
        except IdentityError as exc:
            raise ValueError(str(exc)) from None


class TagsUpdated(BaseModel):
    name: str
    tags: list[str]
    previous_tags: list[str]
    takes_effect: Literal["next_renewal"] = "next_renewal"
    detail: str


def _online(last_seen: float | None, now: float) -> bool:
    return last_seen is not None and now - last_seen <= ONLINE_WINDOW_S


def _not_found(name: str) -> HTTPException:
    return HTTPException(404, detail=f"name: no node named {name!r}")


_DETAIL = (
    select(
        Node.name,
        Node.spiffe_id,
        Node.tags,
        Node.status,
        Node.current_serial,
        Node.last_seen,
        Node.endpoints,
        Certificate.not_before,
        Certificate.not_after,
        Certificate.status.label("cert_status"),
        NodeReport.at,
        NodeReport.neighbours,
        NodeReport.sessions,
        NodeReport.policy_version,
        NodeReport.crl_version,
    )
    .outerjoin(Certificate, Certificate.serial == Node.current_serial)
    .outerjoin(NodeReport, NodeReport.node_name == Node.name)
    .where(Node.name == bindparam("name"))
)


@router.get(
    "/nodes/{name}",
    response_model=NodeDetail,
    summary="One node: status, certificate and latest report (viewer)",
    responses={404: {"description": "no such node"}},
)
async def get_node(
    request: Request,
    name: NodeNameParam,
    _: Actor = Depends(require(Role.viewer)),  # noqa: B008
) -> Response:
    """Role: viewer. About 1 s old at most under steady reads, never more than 3 s, for
    changes made elsewhere (see the module's notes on the cache)."""
    c = ctx(request)
    cached = cached_detail(request.app, c, name)
    if cached is not None:
        return Response(cached, media_type="application/json")
    # One query per name at a time: requests that miss together wait for that one answer
    # instead of each taking a connection.
    body = await asyncio.shield(_loading(request.app, c, name, c.pusher.versions.crl))
    if body is None:
        raise _not_found(name)
    return Response(body, media_type="application/json")


def cached_detail(app: Any, c: Any, name: str) -> bytes | None:
    """This replica's answer for ``name`` if it may be served without the database: fresh,
    or just expired (then one background refresh starts, so a busy name never makes its
    readers wait). Also used by ``control.hotreads``, which answers before routing."""
    hit = detail_cache(app).get(name)
    if hit is None:
        return None
    crl = c.pusher.versions.crl
    if hit[1] != crl:
        return None
    now = time.monotonic()
    if hit[0] > now:
        return hit[2]
    if hit[0] + DETAIL_STALE_S > now:
        _loading(app, c, name, crl)
        return hit[2]
    return None


async def _load_detail(app: Any, c: Any, name: str, crl: int) -> bytes | None:
    async with _autocommit(app, c).connect() as conn:
        row: Any = (await conn.execute(_DETAIL, {"name": name})).first()
    if row is None:
        return None
    now = time.time()
    body = json.dumps(
        {
            "name": row[0],
            "spiffe_id": row[1],
            "overlay": overlay_addresses(row[1]),
            "tags": row[2],
            "status": row[3],
            "current_serial": row[4],
            "last_seen": row[5],
            "online": _online(row[5], now),
            "endpoints": row[6] or [],
            "certificate": None
            if row[7] is None
            else {
                "serial": row[4],
                "not_before": row[7],
                "not_after": row[8],
                "status": row[9],
            },
            "report": None
            if row[10] is None
            else {
                "at": row[10],
                "neighbours": row[11],
                "sessions": row[12],
                "policy_version": row[13],
                "crl_version": row[14],
            },
        }
    ).encode()
    if _inflight(app).get(name) is not asyncio.current_task():
        return body  # forget_node ran meanwhile: this answer may predate the change
    cache = detail_cache(app)
    if len(cache) >= _DETAIL_CACHE_MAX:
        cache.clear()
    ttl = c.settings.read_cache_s
    if ttl > 0:
        cache[name] = (time.monotonic() + ttl, crl, body)
    return body


def _loading(app: Any, c: Any, name: str, crl: int) -> asyncio.Future[bytes | None]:
    """The load of ``name`` under way, or a new one."""
    inflight = _inflight(app)
    pending = inflight.get(name)
    if pending is None:
        pending = inflight[name] = asyncio.ensure_future(_load_detail(app, c, name, crl))
        pending.add_done_callback(lambda f: _done(inflight, name, f))
    return pending


def _done(inflight: dict[str, asyncio.Future[bytes | None]], name: str, f: object) -> None:
    if inflight.get(name) is f:
        del inflight[name]
    assert isinstance(f, asyncio.Future)
    if not f.cancelled():
        f.exception()  # retrieved: a background refresh that failed is not "never retrieved"


def _inflight(app: Any) -> dict[str, asyncio.Future[bytes | None]]:
    inflight: dict[str, asyncio.Future[bytes | None]] | None = getattr(
        app.state, "node_detail_inflight", None
    )
    if inflight is None:
        inflight = app.state.node_detail_inflight = {}
    return inflight


def detail_cache(app: Any) -> dict[str, tuple[float, int, bytes]]:
    """This replica's cache of encoded node details: name -> (expires, crl version,
    body). Per application, so two apps in one process behave as two replicas."""
    cache: dict[str, tuple[float, int, bytes]] | None = getattr(
        app.state, "node_detail_cache", None
    )
    if cache is None:
        cache = app.state.node_detail_cache = {}
    return cache


def forget_node(app: Any, name: str) -> None:
    """Drop ``name`` from this replica's detail cache: call after changing the node."""
    detail_cache(app).pop(name, None)
    _inflight(app).pop(name, None)


def _autocommit(app: Any, c: Any) -> AsyncEngine:
    """The engine in autocommit mode (same pool): a single SELECT needs no transaction."""
    engine: AsyncEngine | None = getattr(app.state, "node_read_engine", None)
    if engine is None:
        engine = app.state.node_read_engine = c.db.engine.execution_options(
            isolation_level="AUTOCOMMIT"
        )
    return engine


def _has_tag(is_sqlite: bool, tag: str) -> ColumnElement[bool]:
    """``tag`` is one of the node's tags (a JSON array), in the database's own dialect."""
    if is_sqlite:
        return exists(
            select(literal_column("1"))
            .select_from(text("json_each(nodes.tags) AS t"))
            .where(literal_column("t.value") == tag)
        )
    return cast(Node.tags, JSONB).contains([tag])


@router.get(
    "/nodes",
    response_model=NodePage,
    summary="The enrolled nodes, by name, paged and filtered (viewer)",
)
async def list_nodes(
    request: Request,
    status: Annotated[
        Literal["active", "revoked"] | None, Query(description="Only nodes with this status.")
    ] = None,
    tag: Annotated[
        str | None,
        Query(max_length=200, pattern=TAG_PATTERN, description="Only nodes with this tag."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    cursor: Annotated[
        str | None,
        Query(
            max_length=63,
            pattern=NODE_NAME_PATTERN,
            description="The last name of the previous page (next_cursor).",
        ),
    ] = None,
    offset: Annotated[int, Query(ge=0, le=1_000_000, description="Rows to skip instead.")] = 0,
    _: Actor = Depends(require(Role.viewer)),  # noqa: B008
) -> NodePage:
    """Role: viewer. Ordered by name; page with ``cursor`` (preferred: stable while nodes
    join) or ``offset``."""
    c = ctx(request)
    q = select(
        Node.name,
        Node.spiffe_id,
        Node.tags,
        Node.status,
        Node.current_serial,
        Node.last_seen,
        Node.endpoints,
    ).order_by(Node.name)
    if status is not None:
        q = q.where(Node.status == status)
    if tag is not None:
        q = q.where(_has_tag(c.db.is_sqlite, tag))
    if cursor is not None:
        q = q.where(Node.name > cursor)
    q = q.offset(offset).limit(limit)
    async with c.db.engine.connect() as conn:
        rows = (await conn.execute(q)).all()
    now = time.time()
    nodes = [
        NodeSummary(
            name=r.name,
            spiffe_id=r.spiffe_id,
            overlay=OverlayAddresses(**overlay_addresses(r.spiffe_id)),
            tags=r.tags,
            status=r.status,
            current_serial=r.current_serial,
            last_seen=r.last_seen,
            online=_online(r.last_seen, now),
            endpoints=r.endpoints or [],
        )
        for r in rows
    ]
    return NodePage(nodes=nodes, next_cursor=nodes[-1].name if len(nodes) == limit else None)


@router.patch(
    "/nodes/{name}",
    response_model=TagsUpdated,
    summary="Change a node's tags; they take effect at its next renewal (operator)",
    responses={404: {"description": "no such node"}},
)
async def patch_node(
    request: Request,
    name: NodeNameParam,
    body: TagsUpdate,
    actor: Actor = Depends(require(Role.operator)),  # noqa: B008
) -> TagsUpdated:
    """Role: operator. Records the node's new tags; certificates carry tags, so the node
    (and its peers' policy decisions) see them when it next renews its certificate."""
    c = ctx(request)
    async with c.db.session() as s:
        previous = (
            await s.execute(select(Node.tags).where(Node.name == name).with_for_update())
        ).scalar_one_or_none()
        if previous is None:
            raise _not_found(name)
        await s.execute(update(Node).where(Node.name == name).values(tags=body.tags))
        audit.record(
            s, actor, "node.update_tags", name, {"tags": body.tags, "previous": list(previous)}
        )
        await s.commit()
    forget_node(request.app, name)
    return TagsUpdated(
        name=name,
        tags=body.tags,
        previous_tags=list(previous),
        detail="recorded; the node's certificate carries its tags, so they take effect "
        "when the node next renews it",
    )
