"""Control-plane settings: embedded defaults for one laptop, URLs for production."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from x0tta6bl4.identity.cert import DEFAULT_TRUST_DOMAIN


class ControlSettings(BaseSettings):
    """``X0T_*`` environment variables override every field."""

    model_config = SettingsConfigDict(env_prefix="X0T_", extra="ignore")

    data_dir: Path = Field(
        default=Path("x0t-data"), description="SQLite file, CA and enrollment key live here."
    )
    database_url: str | None = Field(
        default=None,
        description="postgresql+asyncpg://... in production; default SQLite in data_dir.",
    )
    redis_url: str | None = Field(
        default=None, description="redis://... to share pushes across replicas; default in-process."
    )
    ca_dir: Path | None = Field(
        default=None,
        description="CA directory (key 0600) or a mounted secret; default data_dir/ca.",
    )
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    host: str = "127.0.0.1"
    port: int = Field(default=8700, ge=0, le=65535)
    cert_lifetime_s: float = Field(
        default=24 * 3600.0, gt=0, description="Lifetime of node certificates the CA issues."
    )
    db_pool_size: int = Field(default=20, ge=1, le=200)
    read_cache_s: float = Field(
        default=1.0,
        ge=0,
        le=10,
        description="How long a replica answers GET /v1/nodes/{name} from memory; 0 = never.",
    )
    # A replica with no bus message rechecks pushed state this often (the fallback when
    # Redis is down, and what bounds cross-replica lag then).
    push_poll_s: float = Field(default=1.0, gt=0, le=60)
    log_format: str = Field(default="json", pattern="^(json|console)$")
    log_level: str = Field(default="info", pattern="^(debug|info|warning|error)$")
    metrics_refresh_s: float = Field(
        default=15.0,
        gt=0,
        le=3600,
        description="How often the inventory gauges (certificates, nodes) are recounted.",
    )

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'control.db').resolve()}"

    @property
    def resolved_ca_dir(self) -> Path:
        return self.ca_dir if self.ca_dir is not None else self.data_dir / "ca"
