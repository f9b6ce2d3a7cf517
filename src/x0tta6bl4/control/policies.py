"""Policy management and the documents pushed to nodes (the logic behind
``routers/policies.py``, ``routers/revocations.py`` and ``routers/stream.py``).

Policies are versioned by the service, not by the operator: the text an operator submits
is parsed as ``policy.parse`` parses it (so its errors carry a line and a column), its
``version`` header is replaced by the next free version N+1, and the result is signed with
the CA exactly as ``x0t policy sign`` signs it. The version is the table's primary key, so
two replicas writing at once cannot both take N+1: the loser retries with N+2.

``PushDocs`` reads each signed document once per version and keeps the server-sent event
frame ready, so a change wakes any number of node streams for one database read.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from fastapi import Request
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, OperationalError

from x0tta6bl4.api.push import (
    EVENT_CRL,
    EVENT_POLICY,
    MAX_INLINE_EVENT,
    PushedCrl,
    PushedPolicy,
    format_event,
)
from x0tta6bl4.control.audit import record
from x0tta6bl4.control.auth import Actor
from x0tta6bl4.control.ca import ControlCA
from x0tta6bl4.control.context import ControlContext
from x0tta6bl4.control.db import Database
from x0tta6bl4.control.models import PolicyVersion, RevocationListRow
from x0tta6bl4.crypto.keys import load_signing_key
from x0tta6bl4.errors import PolicyError
from x0tta6bl4.identity.ca import CA_KEY_FILE
from x0tta6bl4.identity.crl import REVOCATION_REASONS, RevocationList, RevokedEntry
from x0tta6bl4.policy import DEFAULT_DENY, Policy, PolicySyntaxError, Proto, SignedPolicy, Subject
from x0tta6bl4.policy.signed import split_signed

# Attempts at writing version N+1 before answering 503 (each loser sees the winner's row).
MAX_VERSION_ATTEMPTS = 8
# A dry run decides at most this many (source, destination) pairs (about 1 µs each).
MAX_DRY_RUN_PAIRS = 250_000
# Versions of each document kept in memory; streams only ever ask for the newest.
_KEEP_VERSIONS = 4

_Doc = TypeVar("_Doc")

REASON_NAMES = {flag: name for name, flag in REVOCATION_REASONS.items()}


class VersionConflict(Exception):
    """Every attempt at the next version lost to a concurrent writer."""


# --- validation and signing ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SourceProblem:
    """Where a policy text is wrong: 1-based line and column (0, 0: the text as a whole)."""

    line: int
    column: int
    message: str

    def __str__(self) -> str:
        if self.line == 0:
            return f"source: {self.message}"
        return f"source line {self.line}, column {self.column}: {self.message}"


class InvalidSource(Exception):
    def __init__(self, problem: SourceProblem) -> None:
        super().__init__(str(problem))
        self.problem = problem


def _encode(source: str) -> bytes:
    # Lone surrogates (JSON allows "\ud800") survive encoding and are then reported by the
    # parser as "not UTF-8 text" at their position, like any other bad byte.
    return source.encode("utf-8", "surrogatepass")


def check_source(source: str) -> Policy:
    """The parsed policy, or InvalidSource naming the line, column and problem."""
    nul = source.find("\x00")
    if nul >= 0:
        # Comments may hold any character, but the database's text cannot hold NUL.
        line = source.count("\n", 0, nul) + 1
        column = nul - (source.rfind("\n", 0, nul) + 1) + 1
        raise InvalidSource(SourceProblem(line, column, "unexpected character U+0000"))
    try:
        return Policy.parse(_encode(source), "source")
    except PolicySyntaxError as exc:
        raise InvalidSource(SourceProblem(exc.line, exc.column, exc.message)) from None
    except PolicyError as exc:  # too large: no position
        raise InvalidSource(SourceProblem(0, 0, str(exc))) from None


_VERSION_LINE = re.compile(r"([ \t]*version[ \t]+)([0-9]+)")


def with_version(source: str, version: int) -> str:
    """``source`` (already checked) with its ``version`` header set to ``version``. Only the
    number changes, so every rule keeps its line and column (rule ids are ``line:N``)."""
    lines = source.split("\n")
    for i, line in enumerate(lines):
        if not line.split("#", 1)[0].strip(" \t\r"):
            continue
        # The parser requires the header before the first rule, so this is it.
        m = _VERSION_LINE.match(line)
        if m is None:
            raise InvalidSource(SourceProblem(i + 1, 1, "expected the header 'version N'"))
        lines[i] = m.group(1) + str(version) + line[m.end() :]
        return "\n".join(lines)
    raise InvalidSource(SourceProblem(1, 1, "the policy is empty: expected 'version N'"))


def sign_text(ca: ControlCA, text: str) -> SignedPolicy:
    """Sign as ``x0t policy sign`` does: the CA key from the CA directory, parse first."""
    key = load_signing_key(ca.ca.directory / CA_KEY_FILE)
    return SignedPolicy.sign(_encode(text), key, "policy")


def retryable(exc: Exception, db: Database) -> bool:
    # PostgreSQL: the version's primary key. SQLite: a writer that lost the race for the
    # file lock may also be told "database is locked" instead of waiting.
    return isinstance(exc, IntegrityError) or (db.is_sqlite and isinstance(exc, OperationalError))


async def create_version(
    c: ControlContext,
    source: str,
    *,
    actor: Actor,
    comment: str,
    rolled_back_from: int | None = None,
) -> PolicyVersion:
    """Store, sign and audit the next version of ``source`` (checked); commit. The caller
    then tells the pusher."""
    check_source(source)
    for _ in range(MAX_VERSION_ATTEMPTS):
        try:
            return await _create_once(c, source, actor, comment, rolled_back_from)
        except Exception as exc:
            if retryable(exc, c.db):
                continue  # another writer took that version: the next attempt sees it
            raise
    raise VersionConflict(
        f"{MAX_VERSION_ATTEMPTS} concurrent policy changes won the next version; retry"
    )


async def _create_once(
    c: ControlContext, source: str, actor: Actor, comment: str, rolled_back_from: int | None
) -> PolicyVersion:
    async with c.db.session() as s:
        current = (await s.execute(select(func.max(PolicyVersion.version)))).scalar()
        version = int(current or 0) + 1
        text = with_version(source, version)
        signed = await asyncio.to_thread(sign_text, c.ca, text)
        data = signed.to_bytes()
        row = PolicyVersion(
            version=version,
            source=text,
            signed=data,
            created_at=time.time(),
            created_by=actor.label,
            comment=comment,
            rolled_back_from=rolled_back_from,
        )
        s.add(row)
        record(
            s,
            actor,
            "policy.rollback" if rolled_back_from is not None else "policy.create",
            f"policy:{version}",
            {
                "version": version,
                "rules": len(signed.policy.rules),
                "sha256": hashlib.sha256(data).hexdigest(),
                "comment": comment,
                "rolled_back_from": rolled_back_from,
            },
        )
        await s.commit()
    return row


def rule_count(signed: bytes) -> int:
    """Rules in a stored signed document (the service signed it, so it parses)."""
    return len(Policy.parse(split_signed(signed)[0], "policy").rules)


# --- dry run -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeView:
    """A node as the policy sees it: from the SPIFFE ID and tags recorded at enrollment."""

    name: str
    spiffe_id: str
    tags: tuple[str, ...]

    @property
    def subject(self) -> Subject:
        return Subject(self.spiffe_id, frozenset(self.tags))


@dataclass(frozen=True, slots=True)
class PairOutcome:
    source: str
    target: str
    allowed: bool
    rule_id: str
    rule: str | None
    was_allowed: bool
    was_rule_id: str
    was_rule: str | None


@dataclass(frozen=True, slots=True)
class DryRun:
    targets: list[str]
    reachable: list[PairOutcome]
    gained: list[PairOutcome]
    lost: list[PairOutcome]
    evaluated: int


class DryRunTooLarge(Exception):
    pass


def dry_run(
    new: Policy,
    old: Policy | None,
    nodes: Sequence[NodeView],
    targets: Sequence[NodeView],
    proto: Proto,
    port: int | None,
) -> DryRun:
    """Which of ``nodes`` could reach each of ``targets`` on ``proto``/``port`` under
    ``new``, and what changes against ``old`` (None: no policy, every flow denied)."""
    pairs = len(nodes) * len(targets)
    if pairs > MAX_DRY_RUN_PAIRS:
        raise DryRunTooLarge(
            f"to: {len(targets)} destinations x {len(nodes)} nodes is more than "
            f"{MAX_DRY_RUN_PAIRS:,} pairs; name one node or a narrower tag"
        )
    reachable: list[PairOutcome] = []
    gained: list[PairOutcome] = []
    lost: list[PairOutcome] = []
    evaluated = 0
    for dst in targets:
        dsub = dst.subject
        for src in nodes:
            if src.name == dst.name:
                continue
            ssub = src.subject
            now = new.decide(ssub, dsub, proto, port)
            was = old.decide(ssub, dsub, proto, port) if old is not None else DEFAULT_DENY
            evaluated += 1
            if not (now.allowed or was.allowed):
                continue
            outcome = PairOutcome(
                src.name,
                dst.name,
                now.allowed,
                now.rule_id,
                now.rule_text,
                was.allowed,
                was.rule_id,
                was.rule_text,
            )
            if now.allowed:
                reachable.append(outcome)
            if now.allowed and not was.allowed:
                gained.append(outcome)
            elif was.allowed and not now.allowed:
                lost.append(outcome)
    return DryRun([t.name for t in targets], reachable, gained, lost, evaluated)


# --- documents pushed to nodes -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PolicyDoc:
    version: int
    signed: bytes
    frame: bytes  # the ``policy`` event, ready to write to every stream
    created_at: float  # stored (just before its commit): where the push lag starts

    @property
    def pushed(self) -> PushedPolicy:
        return PushedPolicy(self.version, self.signed)


@dataclass(frozen=True, slots=True)
class CrlDoc:
    version: int
    pem: bytes
    frame: bytes
    crl: RevocationList
    created_at: float

    @property
    def pushed(self) -> PushedCrl:
        return PushedCrl(self.version, self.pem)

    def entry(self, serial_hex: str) -> RevokedEntry | None:
        return self.crl.entry(int(serial_hex, 16))


def _frame(event: str, wire: dict[str, object], announce: dict[str, object]) -> bytes:
    # Too large for one event line: announce the version; the node fetches it (/v1/sync).
    if len(json.dumps(wire)) > MAX_INLINE_EVENT:
        return format_event(event, announce)
    return format_event(event, wire)


class PushDocs:
    """Signed documents by version, read once from the database (versions never change)."""

    def __init__(self) -> None:
        self._policies: dict[int, PolicyDoc] = {}
        self._crls: dict[int, CrlDoc] = {}
        self._lock = asyncio.Lock()

    async def policy(self, db: Database, version: int) -> PolicyDoc | None:
        doc = self._policies.get(version)
        if doc is not None or version <= 0:
            return doc
        async with self._lock:  # a change wakes every stream: one of them reads
            doc = self._policies.get(version)
            if doc is not None:
                return doc
            async with db.session() as s:
                row = (
                    await s.execute(
                        select(PolicyVersion.signed, PolicyVersion.created_at).where(
                            PolicyVersion.version == version
                        )
                    )
                ).one_or_none()
            if row is None:
                return None
            signed, created_at = row
            wire = PushedPolicy(version, signed).to_wire()
            frame = _frame(EVENT_POLICY, wire, {**wire, "signed": None})
            doc = PolicyDoc(version, signed, frame, created_at)
            _remember(self._policies, version, doc)
            return doc

    async def crl(self, db: Database, ca: ControlCA, version: int) -> CrlDoc | None:
        doc = self._crls.get(version)
        if doc is not None or version <= 0:
            return doc
        async with self._lock:
            doc = self._crls.get(version)
            if doc is not None:
                return doc
            async with db.session() as s:
                row = (
                    await s.execute(
                        select(RevocationListRow.pem, RevocationListRow.created_at).where(
                            RevocationListRow.version == version
                        )
                    )
                ).one_or_none()
            if row is None:
                return None
            pem = row[0].encode()
            crl = await asyncio.to_thread(RevocationList.from_pem, pem, ca.ca.certificate)
            wire = PushedCrl(version, pem).to_wire()
            frame = _frame(EVENT_CRL, wire, {**wire, "pem": None})
            doc = CrlDoc(version, pem, frame, crl, row[1])
            _remember(self._crls, version, doc)
            return doc


def _remember(cache: dict[int, _Doc], version: int, doc: _Doc) -> None:
    cache[version] = doc
    while len(cache) > _KEEP_VERSIONS:
        del cache[min(cache)]


def push_docs(request: Request) -> PushDocs:
    """This application's document cache (one per app: each app has its own database)."""
    state = request.app.state
    docs = getattr(state, "x0t_push_docs", None)
    if docs is None:
        docs = PushDocs()
        state.x0t_push_docs = docs
    assert isinstance(docs, PushDocs)
    return docs


async def latest_versions(db: Database) -> tuple[int, int]:
    """``(policy, crl)`` versions in the database now (0: none)."""
    async with db.session() as s:
        policy = (await s.execute(select(func.max(PolicyVersion.version)))).scalar()
        crl = (await s.execute(select(func.max(RevocationListRow.version)))).scalar()
    return int(policy or 0), int(crl or 0)
