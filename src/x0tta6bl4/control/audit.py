"""The audit log: who changed what. Written in the same transaction as the change."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from x0tta6bl4.control.auth import Actor
from x0tta6bl4.control.models import AuditEntry


def record(
    s: AsyncSession,
    actor: Actor | str,
    action: str,
    target: str,
    detail: dict[str, Any] | None = None,
) -> None:
    s.add(
        AuditEntry(
            at=time.time(),
            actor=actor.label if isinstance(actor, Actor) else actor,
            action=action,
            target=target,
            detail=detail or {},
        )
    )
