"""The database: async engine and sessions, readiness, and migrations on start-up."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Held while migrating so replicas starting together do not race (PostgreSQL only).
_MIGRATION_LOCK_ID = 0x7830_7430


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets readers run during a write; busy_timeout waits for the writer's lock
    # instead of failing at once; foreign keys are off by default in SQLite.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


class Database:
    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {}
        if not self.is_sqlite:
            # No pre-ping: it costs round trips on every checkout (a third of a read's
            # time). A connection that died with a PostgreSQL restart fails its request
            # once, and SQLAlchemy then invalidates the whole pool (disconnect detection),
            # so the service recovers without a restart; /ready reports the gap.
            # Overflow connections are opened and closed per burst (a TCP + auth round
            # trip each): keep the pool itself large enough for the usual concurrency.
            kwargs.update(pool_size=pool_size, max_overflow=pool_size // 2, pool_recycle=1800)
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    def session(self) -> AsyncSession:
        return self.sessions()

    async def ping(self, timeout: float = 2.0) -> str | None:
        """None when the database answers, else why not (for /ready)."""
        import asyncio

        try:
            async with asyncio.timeout(timeout), self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:  # any failure means not ready; the text says which
            return f"{type(exc).__name__}: {exc}"[:300]
        return None

    async def migrate(self) -> None:
        """Upgrade the schema to the newest revision (idempotent)."""
        async with self.engine.begin() as conn:
            await conn.run_sync(self._upgrade)

    def _upgrade(self, conn: Connection) -> None:
        from alembic import command
        from alembic.config import Config

        if conn.dialect.name == "postgresql":
            conn.execute(text(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_ID})"))
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")

    async def close(self) -> None:
        await self.engine.dispose()


def now() -> float:
    return time.time()
