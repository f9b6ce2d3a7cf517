"""Regenerate the initial Alembic revision from the models (before the first release only;
after it, every change is a new revision: ``alembic revision --autogenerate``)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from alembic import command
from alembic.config import Config

from x0tta6bl4.control.db import MIGRATIONS_DIR

VERSIONS = MIGRATIONS_DIR / "versions"


def main() -> None:
    for old in VERSIONS.glob("0001_*.py"):
        old.unlink()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        cfg.set_main_option("sqlalchemy.url", f"sqlite:///{Path(tmp) / 'empty.db'}")
        command.revision(cfg, message="initial schema", autogenerate=True, rev_id="0001")
    print("wrote", *VERSIONS.glob("0001_*.py"))


if __name__ == "__main__":
    main()
