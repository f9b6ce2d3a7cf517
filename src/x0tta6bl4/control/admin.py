"""Operator bootstrap that runs beside the service: the first API key, migrations."""

from __future__ import annotations

import time

from x0tta6bl4.control.audit import record
from x0tta6bl4.control.auth import Role, new_api_key
from x0tta6bl4.control.db import Database
from x0tta6bl4.control.models import ApiKey


async def create_api_key(db: Database, name: str, role: Role, created_by: str) -> str:
    """A new key; the returned text is the only time the secret exists in the clear."""
    text, key_id, secret_hash = new_api_key()
    async with db.session() as s:
        s.add(
            ApiKey(
                id=key_id,
                name=name,
                role=role.name,
                secret_hash=secret_hash,
                created_at=time.time(),
                created_by=created_by,
            )
        )
        record(s, created_by, "api_key.create", key_id, {"name": name, "role": role.name})
        await s.commit()
    return text
