"""Everything a request handler needs, built once per process by ``app.create_app``."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from x0tta6bl4.control.auth import KeyCache
from x0tta6bl4.control.bus import Bus
from x0tta6bl4.control.ca import ControlCA
from x0tta6bl4.control.db import Database
from x0tta6bl4.control.nodeauth import CertCache, ReplayGuard
from x0tta6bl4.control.push import Pusher
from x0tta6bl4.control.settings import ControlSettings


@dataclass
class ControlContext:
    settings: ControlSettings
    db: Database
    bus: Bus
    ca: ControlCA
    pusher: Pusher
    key_cache: KeyCache = field(default_factory=KeyCache)
    cert_cache: CertCache = field(default_factory=CertCache)
    replay: ReplayGuard = field(default_factory=lambda: ReplayGuard("database"))


def ctx(request: Request) -> ControlContext:
    c = request.app.state.ctl
    assert isinstance(c, ControlContext)
    return c
