"""Alembic environment: runs on the connection ``Database.migrate`` hands over, or on
``sqlalchemy.url`` for ``alembic`` run by hand."""

from __future__ import annotations

from alembic import context
from sqlalchemy import engine_from_config, pool

from x0tta6bl4.control.models import Base

target_metadata = Base.metadata
config = context.config


def _run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    engine = engine_from_config(
        config.get_section(config.config_ini_section) or {},
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    with engine.connect() as conn:
        _run(conn)
