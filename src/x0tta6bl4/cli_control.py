"""``x0t serve``, ``x0t db upgrade``, ``x0t admin create-key``: the control plane's CLI.

Registered by ``cli.py``; imports FastAPI, SQLAlchemy and uvicorn only inside commands, so
a node's CLI never loads them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from x0tta6bl4.errors import X0tError

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

db_app = typer.Typer(help="The control plane's database.", no_args_is_help=True)
admin_app = typer.Typer(help="Operator bootstrap: API keys.", no_args_is_help=True)

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        envvar="X0T_DATA_DIR",
        help="SQLite file, CA and enrollment key (default ./x0t-data).",
        file_okay=False,
    ),
]


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except (X0tError, OSError, ValueError) as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None


def _settings(data_dir: Path | None, **extra: object):  # type: ignore[no-untyped-def]
    from pydantic import ValidationError

    from x0tta6bl4.control.settings import ControlSettings

    kwargs: dict[str, object] = {k: v for k, v in extra.items() if v is not None}
    if data_dir is not None:
        kwargs["data_dir"] = data_dir
    try:
        return ControlSettings(**kwargs)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise X0tError(f"setting {field} (X0T_{field.upper()}): {first['msg']}") from None


def serve(
    data_dir: DataDir = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on (X0T_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (X0T_PORT, default 8700).")] = None,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes.")] = 1,
) -> None:
    """Run the control plane: migrates the database, creates the CA on first start."""
    import os

    import uvicorn

    with _errors():
        settings = _settings(data_dir, host=host, port=port)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        # Workers (and the factory) read settings from the environment.
        os.environ["X0T_DATA_DIR"] = str(settings.data_dir.resolve())
        os.environ["X0T_HOST"], os.environ["X0T_PORT"] = settings.host, str(settings.port)
        err.print(
            f"x0t serve: http://{settings.host}:{settings.port}  data {settings.data_dir}  "
            f"database {settings.resolved_database_url.split('@')[-1]}"
        )
        from x0tta6bl4.observability.logging import configure_logging

        # This process's own lines (workers configure themselves in serve_app).
        configure_logging(json=settings.log_format == "json", level=settings.log_level.upper())
        uvicorn.run(
            # Logging and tracing set up in each worker, then the app.
            "x0tta6bl4.control.app:serve_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=workers,
            log_level="warning",
            log_config=None,  # uvicorn's lines go through our handler (JSON)
            access_log=False,
            lifespan="on",
            # Node event streams never end on their own: without a bound, shutdown
            # would wait for every connected node.
            timeout_graceful_shutdown=2,
        )


@db_app.command("upgrade")
def db_upgrade(data_dir: DataDir = None) -> None:
    """Apply every pending migration (``x0t serve`` also does this at start)."""
    from x0tta6bl4.control.db import Database

    with _errors():
        settings = _settings(data_dir)
        settings.data_dir.mkdir(parents=True, exist_ok=True)

        async def run() -> None:
            db = Database(settings.resolved_database_url)
            try:
                await db.migrate()
            finally:
                await db.close()

        asyncio.run(run())
        out.print("database is at the newest revision")


@admin_app.command("create-key")
def create_key(
    name: Annotated[str, typer.Argument(help="Who the key is for.")],
    role: Annotated[str, typer.Option(help="admin, operator or viewer.")] = "viewer",
    data_dir: DataDir = None,
) -> None:
    """Create an API key; prints it once (only its hash is stored)."""
    from x0tta6bl4.control.admin import create_api_key
    from x0tta6bl4.control.auth import Role
    from x0tta6bl4.control.db import Database

    with _errors():
        if role not in Role.__members__:
            raise X0tError(f"role must be admin, operator or viewer, not {role!r}")
        settings = _settings(data_dir)
        settings.data_dir.mkdir(parents=True, exist_ok=True)

        async def run() -> str:
            db = Database(settings.resolved_database_url)
            try:
                await db.migrate()
                return await create_api_key(db, name, Role[role], "cli")
            finally:
                await db.close()

        out.print(asyncio.run(run()))


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.add_typer(db_app, name="db")
    app.add_typer(admin_app, name="admin")
