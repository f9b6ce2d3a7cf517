"""Pushes to connected nodes: each replica learns that something changed (from the bus,
or by polling the database when the bus is down) and wakes the streams of the nodes
attached to it.

What is pushed is versions: the current policy version and revocation-list version. A
node stream that sees a newer version sends the node the signed document (read once per
version and shared by all streams). The database stays the truth; the bus only makes the
news fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import func, select

from x0tta6bl4.control.models import PolicyVersion, RevocationListRow
from x0tta6bl4.control.tasks import stop_task
from x0tta6bl4.observability import tracing
from x0tta6bl4.observability.metrics import record_push_streams

log = structlog.get_logger("x0tta6bl4.control.push")

_SUBSCRIBER_QUEUE = 16


@dataclass(frozen=True, slots=True)
class Versions:
    policy: int = 0
    crl: int = 0


@dataclass(slots=True)
class PushStats:
    bus_messages: int = 0
    polls: int = 0
    changes: int = 0
    last_change_at: float = 0.0
    subscribers: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Pusher:
    def __init__(self, db: Any, bus: Any, poll_s: float, on_revocation: Any = None) -> None:
        self._db = db
        self._bus = bus
        self._poll_s = poll_s
        self._on_revocation = on_revocation
        self.versions = Versions()
        self._subscribers: set[asyncio.Queue[Versions]] = set()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.stats = PushStats()

    async def start(self) -> None:
        record_push_streams(len(self._subscribers))
        await self._refresh()
        await self._bus.start(self._on_bus)
        self._task = asyncio.create_task(self._poll(), name="pusher")

    async def close(self) -> None:
        await stop_task(self._task)

    async def changed(self, kind: str) -> None:
        """Called by the replica that made a change, after its commit: refresh here and
        tell the others."""
        with tracing.span("x0t.push.publish", kind=kind) as sp:
            await self._refresh()
            sp.set_attribute("x0t.policy_version", self.versions.policy)
            sp.set_attribute("x0t.crl_version", self.versions.crl)
            await self._bus.publish({"kind": kind, **_as_dict(self.versions)})

    async def _on_bus(self, message: dict[str, Any]) -> None:
        self.stats.bus_messages += 1
        self._wake.set()

    async def _poll(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_s):
                    await self._wake.wait()
            self._wake.clear()
            self.stats.polls += 1
            try:
                await self._refresh()
            except Exception as exc:  # database down: keep the last versions, retry
                log.warning("push_refresh_failed", error=str(exc)[:200])

    async def _refresh(self) -> None:
        async with self._db.session() as s:
            policy = (await s.execute(select(func.max(PolicyVersion.version)))).scalar()
            crl = (await s.execute(select(func.max(RevocationListRow.version)))).scalar()
        new = Versions(int(policy or 0), int(crl or 0))
        if new == self.versions:
            return
        if new.crl != self.versions.crl and self._on_revocation is not None:
            self._on_revocation()
        self.versions = new
        self.stats.changes += 1
        self.stats.last_change_at = time.time()
        for q in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(new)

    @contextlib.asynccontextmanager
    async def subscribe(self):  # type: ignore[no-untyped-def]
        """Yields a queue that receives the new ``Versions`` after each change."""
        q: asyncio.Queue[Versions] = asyncio.Queue(_SUBSCRIBER_QUEUE)
        self._subscribers.add(q)
        self.stats.subscribers = len(self._subscribers)
        record_push_streams(self.stats.subscribers)
        try:
            yield q
        finally:
            self._subscribers.discard(q)
            self.stats.subscribers = len(self._subscribers)
            record_push_streams(self.stats.subscribers)


def _as_dict(v: Versions) -> dict[str, int]:
    return {"policy": v.policy, "crl": v.crl}
