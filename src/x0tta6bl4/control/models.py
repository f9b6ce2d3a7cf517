"""SQLAlchemy 2 models: PostgreSQL is the truth (SQLite on one laptop).

Times are Unix seconds (float); certificate serials are lowercase hex (they are 128-bit,
wider than BIGINT). Changing a model means a new Alembic revision in ``migrations/``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class ApiKey(Base):
    """An operator's key: ``x0tk_<id>_<secret>``; only SHA-256 of the secret is kept."""

    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    secret_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str] = mapped_column(String(128))
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class JoinToken(Base):
    """A join token: ``x0tj1.<id>.<secret>.<enrollment key fingerprint>``; the secret is
    kept only as SHA-256."""

    __tablename__ = "join_tokens"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    secret_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    name_pattern: Mapped[str] = mapped_column(String(128))
    tags: Mapped[list[str]] = mapped_column(JSON)
    max_uses: Mapped[int] = mapped_column(Integer)
    uses: Mapped[int] = mapped_column(Integer, default=0)
    expires_at: Mapped[float] = mapped_column(Float)
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str] = mapped_column(String(128))
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    comment: Mapped[str] = mapped_column(String(256), default="")


class Node(Base):
    __tablename__ = "nodes"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    spiffe_id: Mapped[str] = mapped_column(String(256))
    tags: Mapped[list[str]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))  # active | revoked
    created_at: Mapped[float] = mapped_column(Float)
    current_serial: Mapped[str | None] = mapped_column(String(40), nullable=True)
    # Where the node says it listens (from its reports); bootstrap peers for new nodes.
    endpoints: Mapped[list[str]] = mapped_column(JSON, default=list)
    last_seen: Mapped[float | None] = mapped_column(Float, nullable=True)


class Certificate(Base):
    """The CA's inventory: every certificate it issued."""

    __tablename__ = "certificates"
    serial: Mapped[str] = mapped_column(String(40), primary_key=True)
    node_name: Mapped[str] = mapped_column(ForeignKey("nodes.name"), index=True)
    not_before: Mapped[float] = mapped_column(Float)
    not_after: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16))  # valid | revoked
    signing_key_fp: Mapped[str] = mapped_column(String(64), index=True)
    static_key_fp: Mapped[str] = mapped_column(String(64), index=True)
    pem: Mapped[str] = mapped_column(Text)
    issued_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    revoke_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)


class RevocationListRow(Base):
    """Each signed revocation list; the highest version is current."""

    __tablename__ = "revocation_lists"
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    pem: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)


class PolicyVersion(Base):
    """Each signed policy document; the highest version is current (a rollback is a new
    version with old content, because nodes refuse older versions)."""

    __tablename__ = "policy_versions"
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    source: Mapped[str] = mapped_column(Text)
    signed: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str] = mapped_column(String(128))
    comment: Mapped[str] = mapped_column(String(256), default="")
    rolled_back_from: Mapped[int | None] = mapped_column(Integer, nullable=True)


class NodeReport(Base):
    """The latest status a node reported (neighbours, links, routes)."""

    __tablename__ = "node_reports"
    node_name: Mapped[str] = mapped_column(ForeignKey("nodes.name"), primary_key=True)
    at: Mapped[float] = mapped_column(Float)
    report: Mapped[dict[str, Any]] = mapped_column(JSON)
    # A summary beside the JSON, so reading one node does not decode the whole report.
    neighbours: Mapped[int] = mapped_column(Integer, default=0)
    sessions: Mapped[int] = mapped_column(Integer, default=0)
    policy_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    crl_version: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Event(Base):
    """A self-healing (or other) event a node reported."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    node_name: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(64))
    at: Mapped[float] = mapped_column(Float)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)
    received_at: Mapped[float] = mapped_column(Float)
    __table_args__ = (
        Index("ix_events_node_at", "node_name", "at"),
        Index("ix_events_kind_at", "kind", "at"),
        # A node resends events it is unsure were stored; this makes that idempotent.
        UniqueConstraint("node_name", "kind", "at", name="uq_events_node_kind_at"),
    )


class AuditEntry(Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(256))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)


class SeenNonce(Base):
    """Nonces of signed node requests inside the clock window (replay protection shared
    by all replicas)."""

    __tablename__ = "seen_nonces"
    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[float] = mapped_column(Float, index=True)
