"""The access policy: validate, dry-run against the live nodes, create signed versions,
list them, roll back. Nodes get each new version pushed (``routers/stream.py``).

The service numbers versions: the ``version`` line of a submitted text is replaced by the
next version (only the number changes, so rule ids ``line:N`` stay those of the text), the
result is signed with the CA as ``x0t policy sign`` signs it, and nodes refuse anything
older than what they hold. A rollback is therefore a new version with old content.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy import select

from x0tta6bl4.control.auth import Actor, Role, require
from x0tta6bl4.control.context import ctx
from x0tta6bl4.control.models import Node, PolicyVersion
from x0tta6bl4.control.policies import (
    DryRunTooLarge,
    InvalidSource,
    NodeView,
    PairOutcome,
    VersionConflict,
    check_source,
    create_version,
    dry_run,
    latest_versions,
    push_docs,
    rule_count,
)
from x0tta6bl4.errors import IdentityError
from x0tta6bl4.identity.cert import validate_name, validate_tag
from x0tta6bl4.policy import MAX_POLICY_SIZE, Policy, Proto
from x0tta6bl4.policy.signed import split_signed
from x0tta6bl4.policy.types import PORTED

router = APIRouter(prefix="/v1/policies", tags=["policy"])

MAX_PAGE = 500
_MAX_VERSION = 2**31 - 1  # the column is a 32-bit integer in PostgreSQL


class SourceBody(BaseModel):
    source: str = Field(
        max_length=MAX_POLICY_SIZE,
        description="Policy text (docs/policy.md): a 'version N' header, then rules.",
    )


class Problem(BaseModel):
    line: int = Field(description="1-based; 0 when the problem is the text as a whole.")
    column: int = Field(description="1-based; a tab counts as one column.")
    message: str


class ValidateResult(BaseModel):
    valid: bool
    errors: list[Problem]
    rules: int = Field(description="Rules in the text (0 when invalid).")


class DryRunBody(SourceBody):
    to: str = Field(
        min_length=1, max_length=200, description="A node name, or tag:KEY:VALUE for every node."
    )
    proto: Proto
    port: int | None = Field(
        default=None, ge=0, le=65535, description="Required for tcp, udp and msg; none for icmp."
    )


class Pair(BaseModel):
    node: str = Field(description="The node the flow comes from.")
    target: str = Field(description="The node it goes to.")
    allowed: bool = Field(description="Under the submitted text.")
    rule_id: str = Field(description="The deciding rule under the submitted text.")
    rule: str | None
    was_allowed: bool = Field(description="Under the current policy.")
    was_rule_id: str
    was_rule: str | None


class DryRunResult(BaseModel):
    to: str
    proto: Proto
    port: int | None
    current_version: int | None = Field(description="The policy compared against (None: none).")
    targets: list[str] = Field(description="The active nodes 'to' names.")
    reachable: list[Pair] = Field(description="Pairs allowed after the change.")
    gained: list[Pair] = Field(description="Allowed after the change, denied now.")
    lost: list[Pair] = Field(description="Allowed now, denied after the change.")
    evaluated: int = Field(description="Pairs decided.")


_COMMENT = Field(default="", max_length=256, pattern=r"^[^\x00]*$", description="Free text.")


class CreateBody(SourceBody):
    comment: str = _COMMENT


class RollbackBody(BaseModel):
    comment: str = _COMMENT


class PolicySummary(BaseModel):
    version: int
    created_at: float
    created_by: str
    comment: str
    rolled_back_from: int | None = Field(description="The version whose content this is.")
    sha256: str = Field(description="SHA-256 of the signed document.")


class PolicyDetail(PolicySummary):
    rules: int
    source: str = Field(description="The signed text (its version line is the version).")
    signed: str = Field(description="The CA-signed document as nodes receive it, base64.")


class PolicyPage(BaseModel):
    items: list[PolicySummary]
    next_before: int | None = Field(description="Pass as 'before' for the next page.")


def _summary(row: PolicyVersion) -> PolicySummary:
    return PolicySummary(
        version=row.version,
        created_at=row.created_at,
        created_by=row.created_by,
        comment=row.comment,
        rolled_back_from=row.rolled_back_from,
        sha256=hashlib.sha256(row.signed).hexdigest(),
    )


async def _detail(row: PolicyVersion) -> PolicyDetail:
    rules = await asyncio.to_thread(rule_count, row.signed)
    return PolicyDetail(
        **_summary(row).model_dump(),
        rules=rules,
        source=row.source,
        signed=base64.b64encode(row.signed).decode(),
    )


def _invalid(exc: InvalidSource) -> HTTPException:
    return HTTPException(422, detail=str(exc))


@router.post("/validate", summary="Check policy text (viewer)")
async def validate(body: SourceBody, _: Actor = Depends(require(Role.viewer))) -> ValidateResult:  # noqa: B008
    """Role: viewer. Parses the text as nodes do; ``errors`` give the line and column of the
    first problem. Nothing is stored."""
    try:
        policy = await asyncio.to_thread(check_source, body.source)
    except InvalidSource as exc:
        p = exc.problem
        return ValidateResult(
            valid=False, errors=[Problem(line=p.line, column=p.column, message=p.message)], rules=0
        )
    return ValidateResult(valid=True, errors=[], rules=len(policy.rules))


@router.post("/dry-run", summary="Who could reach a node after a change (viewer)")
async def dry_run_route(
    body: DryRunBody,
    request: Request,
    _: Actor = Depends(require(Role.viewer)),  # noqa: B008
) -> DryRunResult:
    """Role: viewer. Decides, for every active node, whether it could reach ``to`` on
    ``proto``/``port`` under the submitted text, with the deciding rule, and lists the
    pairs gained and lost against the current policy. Subjects are the SPIFFE IDs and
    tags the nodes were enrolled with. Nothing is stored."""
    if body.proto in PORTED and body.port is None:
        raise HTTPException(422, detail=f"port: {body.proto} needs a port from 0 to 65535")
    if body.proto not in PORTED and body.port is not None:
        raise HTTPException(422, detail=f"port: {body.proto} has no ports; leave port out")
    try:
        new = await asyncio.to_thread(check_source, body.source)
    except InvalidSource as exc:
        raise _invalid(exc) from None
    c = ctx(request)
    async with c.db.session() as s:
        rows = (
            await s.execute(
                select(Node.name, Node.spiffe_id, Node.tags)
                .where(Node.status == "active")
                .order_by(Node.name)
            )
        ).all()
    nodes = [NodeView(name, spiffe, tuple(tags or ())) for name, spiffe, tags in rows]
    targets = _targets(body.to, nodes)
    current, _crl = await latest_versions(c.db)
    old: Policy | None = None
    if current:
        doc = await push_docs(request).policy(c.db, current)
        if doc is not None:
            old = await asyncio.to_thread(Policy.parse, split_signed(doc.signed)[0], "policy")
    try:
        result = await asyncio.to_thread(dry_run, new, old, nodes, targets, body.proto, body.port)
    except DryRunTooLarge as exc:
        raise HTTPException(422, detail=str(exc)) from None
    return DryRunResult(
        to=body.to,
        proto=body.proto,
        port=body.port,
        current_version=old.version if old is not None else None,
        targets=result.targets,
        reachable=[_pair(p) for p in result.reachable],
        gained=[_pair(p) for p in result.gained],
        lost=[_pair(p) for p in result.lost],
        evaluated=result.evaluated,
    )


def _targets(to: str, nodes: list[NodeView]) -> list[NodeView]:
    if to.startswith("tag:"):
        tag = to[4:]
        try:
            validate_tag(tag)
        except IdentityError as exc:
            raise HTTPException(422, detail=f"to: {exc}") from None
        return [n for n in nodes if tag in n.tags]
    try:
        validate_name(to)
    except IdentityError as exc:
        raise HTTPException(
            422, detail=f"to: {exc} (or tag:KEY:VALUE for every node with that tag)"
        ) from None
    found = [n for n in nodes if n.name == to]
    if not found:
        raise HTTPException(404, detail=f"to: no active node is named {to!r}")
    return found


def _pair(p: PairOutcome) -> Pair:
    return Pair(
        node=p.source,
        target=p.target,
        allowed=p.allowed,
        rule_id=p.rule_id,
        rule=p.rule,
        was_allowed=p.was_allowed,
        was_rule_id=p.was_rule_id,
        was_rule=p.was_rule,
    )


async def _publish(request: Request, row: PolicyVersion, response: Response) -> PolicyDetail:
    await ctx(request).pusher.changed("policy")
    response.headers["Location"] = f"/v1/policies/{row.version}"
    return await _detail(row)


@router.post("", status_code=201, summary="Create the next policy version (operator)")
async def create(
    body: CreateBody,
    request: Request,
    response: Response,
    actor: Actor = Depends(require(Role.operator)),  # noqa: B008
) -> PolicyDetail:
    """Role: operator. Validates the text (422 naming the line and column), makes it the
    next version N+1 (its version line is set to N+1), signs it with the CA, stores and
    audits it, and pushes it to every connected node."""
    c = ctx(request)
    try:
        row = await create_version(c, body.source, actor=actor, comment=body.comment)
    except InvalidSource as exc:
        raise _invalid(exc) from None
    except VersionConflict as exc:
        raise HTTPException(503, detail=str(exc)) from None
    return await _publish(request, row, response)


@router.get("", summary="Policy versions, newest first (viewer)")
async def list_versions(
    request: Request,
    limit: int = Query(50, ge=1, le=MAX_PAGE),
    before: int | None = Query(
        None, ge=1, le=_MAX_VERSION, description="Only versions below this."
    ),
    _: Actor = Depends(require(Role.viewer)),  # noqa: B008
) -> PolicyPage:
    """Role: viewer. Pages by version: pass ``next_before`` as ``before``."""
    q = select(PolicyVersion).order_by(PolicyVersion.version.desc()).limit(limit + 1)
    if before is not None:
        q = q.where(PolicyVersion.version < before)
    async with ctx(request).db.session() as s:
        rows = list((await s.execute(q)).scalars())
    more = len(rows) > limit
    rows = rows[:limit]
    return PolicyPage(
        items=[_summary(r) for r in rows], next_before=rows[-1].version if more else None
    )


@router.get(
    "/current",
    summary="The policy nodes enforce (viewer)",
    responses={404: {"description": "No policy has been created yet."}},
)
async def current(
    request: Request,
    _: Actor = Depends(require(Role.viewer)),  # noqa: B008
) -> PolicyDetail:
    """Role: viewer. The highest version: the one pushed to nodes."""
    async with ctx(request).db.session() as s:
        row = (
            await s.execute(select(PolicyVersion).order_by(PolicyVersion.version.desc()).limit(1))
        ).scalar_one_or_none()
    if row is None:
        raise HTTPException(
            404, detail="no policy has been created yet (nodes deny every flow until one is)"
        )
    return await _detail(row)


async def _get(request: Request, version: int) -> PolicyVersion:
    async with ctx(request).db.session() as s:
        row = (
            await s.execute(select(PolicyVersion).where(PolicyVersion.version == version))
        ).scalar_one_or_none()
    if row is None:
        raise HTTPException(404, detail=f"version: no policy version {version}")
    return row


@router.get(
    "/{version}",
    summary="One policy version (viewer)",
    responses={404: {"description": "No such version."}},
)
async def get_version(
    request: Request,
    version: int = Path(ge=1, le=_MAX_VERSION),
    _: Actor = Depends(require(Role.viewer)),  # noqa: B008
) -> PolicyDetail:
    """Role: viewer."""
    return await _detail(await _get(request, version))


@router.post(
    "/{version}/rollback",
    status_code=201,
    summary="Make an older version's content current again (operator)",
    responses={
        404: {"description": "No such version."},
        409: {"description": "That version is the current one."},
    },
)
async def rollback(
    request: Request,
    response: Response,
    version: int = Path(ge=1, le=_MAX_VERSION),
    body: RollbackBody | None = None,
    actor: Actor = Depends(require(Role.operator)),  # noqa: B008
) -> PolicyDetail:
    """Role: operator. Nodes refuse older versions, so this creates a new version N+1 with
    the content of ``version`` (``rolled_back_from`` says which), signs and pushes it."""
    c = ctx(request)
    old = await _get(request, version)
    latest, _crl = await latest_versions(c.db)
    if latest == version:
        raise HTTPException(
            409, detail=f"version: {version} is the current policy; nothing to roll back"
        )
    comment = body.comment if body is not None and body.comment else f"rollback to {version}"
    try:
        row = await create_version(
            c, old.source, actor=actor, comment=comment, rolled_back_from=version
        )
    except VersionConflict as exc:
        raise HTTPException(503, detail=str(exc)) from None
    return await _publish(request, row, response)
