"""Control-plane fixtures: the same tests on SQLite and on the real PostgreSQL (and Redis)
of this machine. Without PostgreSQL or Redis the service-backed variants skip, saying why;
under X0T_REQUIRE_SERVICES=1 (CI) they fail instead."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_ADMIN_DSN = os.environ.get("X0T_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("X0T_TEST_REDIS", "redis://127.0.0.1:6379/0")
REQUIRE = os.environ.get("X0T_REQUIRE_SERVICES") == "1"


def _unavailable(what: str, why: str) -> None:
    msg = f"{what} is not reachable ({why})"
    if REQUIRE:
        pytest.fail(f"{msg}, and X0T_REQUIRE_SERVICES=1 requires it")
    pytest.skip(f"{msg}; start it or set X0T_REQUIRE_SERVICES=1 to make this a failure")


async def _pg(sql: str, dsn: str = PG_ADMIN_DSN) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=3)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.contextmanager
def scratch_database(prefix: str) -> Iterator[str]:
    """``postgresql+asyncpg://.../<prefix>_...``: a new database, dropped afterwards
    (skips, or fails under X0T_REQUIRE_SERVICES=1, without PostgreSQL)."""
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(3)}"
    try:
        asyncio.run(_pg(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        _unavailable("PostgreSQL at 127.0.0.1:5432", f"{type(exc).__name__}: {exc}")
    base = PG_ADMIN_DSN.rsplit("/", 1)[0]
    try:
        yield f"{base.replace('postgresql://', 'postgresql+asyncpg://')}/{name}"
    finally:
        asyncio.run(_pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session; dropped afterwards."""
    with scratch_database("x0t_test") as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as exc:
        _unavailable("Redis at 127.0.0.1:6379", f"{type(exc).__name__}: {exc}")
    return REDIS_URL


def _truncate_all(url: str) -> None:
    from x0tta6bl4.control.models import Base

    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    asyncio.run(_pg(f"TRUNCATE {tables} CASCADE", url.replace("+asyncpg", "")))


@pytest.fixture(params=["sqlite", "postgres"])
def control_settings(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Settings for one fresh control plane: SQLite in tmp_path, or PostgreSQL + Redis."""
    from x0tta6bl4.control.settings import ControlSettings

    if request.param == "sqlite":
        return ControlSettings(data_dir=tmp_path / "data")
    url = request.getfixturevalue("pg_database")
    redis = request.getfixturevalue("redis_url")
    settings = ControlSettings(data_dir=tmp_path / "data", database_url=url, redis_url=redis)
    # On first use the tables do not exist until the app migrates.
    with contextlib.suppress(Exception):
        _truncate_all(url)
    return settings


class Control:
    """A running control plane (in-process, lifespan started) and an admin key."""

    def __init__(self, client, settings) -> None:  # type: ignore[no-untyped-def]
        self.client = client
        self.settings = settings
        self.ctx = client.app.state.ctl
        self.admin_key = self.new_key("admin")

    def new_key(self, role: str, name: str | None = None) -> str:
        from x0tta6bl4.control.admin import create_api_key
        from x0tta6bl4.control.auth import Role

        return self.client.portal.call(
            create_api_key, self.ctx.db, name or f"test-{role}", Role[role], "test"
        )

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.admin_key}"}


@pytest.fixture
def control(control_settings):  # type: ignore[no-untyped-def]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from fastapi.testclient import TestClient

    from x0tta6bl4.control.app import create_app

    with TestClient(create_app(control_settings)) as client:
        yield Control(client, control_settings)
