"""The bus: how a change made through one replica reaches nodes attached to the others.

Messages are small JSON objects ``{"kind": ..., ...}`` telling replicas *that* something
changed (a policy version, a revocation list version, bootstrap peers); the data itself is
read from the database, which stays the truth. ``RedisBus`` fans out over Redis pub/sub;
``LocalBus`` (one process, the embedded default) delivers in-process. If Redis is down,
publishing fails softly and replicas fall back to polling the database (``push.Pusher``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import structlog

from x0tta6bl4.control.tasks import stop_task

log = structlog.get_logger("x0tta6bl4.control.bus")

Handler = Callable[[dict[str, Any]], Awaitable[None]]
CHANNEL = "x0tta6bl4:control"


class Bus(Protocol):
    async def start(self, handler: Handler) -> None: ...
    async def publish(self, message: dict[str, Any]) -> bool: ...
    async def ping(self) -> str | None: ...
    async def close(self) -> None: ...


class LocalBus:
    """In-process delivery: the publisher's own replica is the only one."""

    def __init__(self) -> None:
        self._handler: Handler | None = None

    async def start(self, handler: Handler) -> None:
        self._handler = handler

    async def publish(self, message: dict[str, Any]) -> bool:
        if self._handler is not None:
            await self._handler(message)
        return True

    async def ping(self) -> str | None:
        return None

    async def close(self) -> None:
        self._handler = None


class RedisBus:
    """Redis pub/sub; reconnects on its own, so Redis may come and go."""

    def __init__(self, url: str, channel: str = CHANNEL) -> None:
        import redis.asyncio as redis

        self._redis = redis.Redis.from_url(
            url, socket_connect_timeout=1.0, socket_timeout=2.0, health_check_interval=5
        )
        self._channel = channel
        self._task: asyncio.Task[None] | None = None
        self.connected = False

    @property
    def redis(self) -> Any:
        """The client, shared with the replay guard (``nodeauth.ReplayGuard``)."""
        return self._redis

    async def start(self, handler: Handler) -> None:
        self._task = asyncio.create_task(self._listen(handler), name="redis-bus")

    async def _listen(self, handler: Handler) -> None:
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(self._channel)
                    self.connected = True
                    log.info("bus_connected", channel=self._channel)
                    # A replica that was cut off may have missed messages: tell the
                    # pusher to recheck the database.
                    await handler({"kind": "resync"})
                    async for msg in pubsub.listen():
                        if msg.get("type") != "message":
                            continue
                        try:
                            data = json.loads(msg["data"])
                        except (ValueError, TypeError):
                            log.warning("bus_bad_message")
                            continue
                        if isinstance(data, dict):
                            await handler(data)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection lost: retry; the pusher polls meanwhile
                if self.connected:
                    log.warning("bus_disconnected", error=str(exc))
                self.connected = False
                await asyncio.sleep(1.0)

    async def publish(self, message: dict[str, Any]) -> bool:
        try:
            await self._redis.publish(self._channel, json.dumps(message))
        except Exception as exc:  # Redis down: the change is in the database; polling finds it
            log.warning("bus_publish_failed", error=str(exc))
            return False
        return True

    async def ping(self) -> str | None:
        try:
            async with asyncio.timeout(2.0):
                await self._redis.ping()
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"[:300]
        return None

    async def close(self) -> None:
        await stop_task(self._task)
        await self._redis.aclose()


def make_bus(redis_url: str | None) -> Bus:
    return RedisBus(redis_url) if redis_url else LocalBus()
