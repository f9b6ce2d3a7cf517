"""Enrolled nodes for tests without the enrollment flow: a ``Node`` row and a certificate
issued by the control plane's CA in one transaction, with the private keys kept here so
the test can sign requests as the node (``api.signing``)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from x0tta6bl4.api.signing import sign_request
from x0tta6bl4.control.ca import ControlCA
from x0tta6bl4.control.db import Database
from x0tta6bl4.control.models import Node
from x0tta6bl4.crypto.hybrid import HybridPrivateKey
from x0tta6bl4.crypto.sign import SigningKey
from x0tta6bl4.identity.cert import NodeCertificate
from x0tta6bl4.node.control_client import Signer


@dataclass
class TestNode:
    __test__ = False  # not a pytest class

    name: str
    tags: tuple[str, ...]
    cert: NodeCertificate
    signing_key: SigningKey
    static_key: HybridPrivateKey

    @property
    def serial(self) -> int:
        return self.cert.serial

    @property
    def serial_hex(self) -> str:
        return format(self.cert.serial, "x")

    @property
    def signer(self) -> Signer:
        """For ``ControlClient.request`` / ``events``."""
        return Signer(self.signing_key, self.cert.serial)

    def headers(self, method: str, path: str, body: bytes = b"", **kw: Any) -> dict[str, str]:
        """Signed-request headers; ``path`` with its query string exactly as sent."""
        return sign_request(self.signing_key, self.cert.serial, method, path, body, **kw)


async def create_node(
    db: Database,
    ca: ControlCA,
    name: str,
    tags: Sequence[str] = (),
    *,
    now: float | None = None,
    lifetime_s: float = 3600.0,
    status: str = "active",
) -> TestNode:
    """Insert the node and issue its certificate (committed)."""
    t = time.time() if now is None else now
    signing = SigningKey.generate()
    static = HybridPrivateKey.generate()
    async with db.session() as s:
        s.add(
            Node(
                name=name,
                spiffe_id=f"spiffe://{ca.ca.trust_domain}/node/{name}",
                tags=list(tags),
                status=status,
                created_at=t,
                endpoints=[],
            )
        )
        await s.flush()
        cert = await ca.issue(
            s,
            name,
            list(tags),
            static.public_key(),
            signing.public_key(),
            now=t,
            lifetime_s=lifetime_s,
        )
        await s.commit()
    return TestNode(name, tuple(tags), cert, signing, static)


async def issue_again(
    db: Database, ca: ControlCA, node: TestNode, *, lifetime_s: float = 3600.0
) -> TestNode:
    """A second certificate for the same node and keys (as a renewal gives)."""
    async with db.session() as s:
        cert = await ca.issue(
            s,
            node.name,
            list(node.tags),
            node.static_key.public_key(),
            node.signing_key.public_key(),
            now=time.time(),
            lifetime_s=lifetime_s,
        )
        await s.commit()
    return TestNode(node.name, node.tags, cert, node.signing_key, node.static_key)


def enroll(control: Any, name: str, tags: Sequence[str] = (), **kw: Any) -> TestNode:
    """``create_node`` on the ``control`` fixture's running app."""
    node: TestNode = control.client.portal.call(
        lambda: create_node(control.ctx.db, control.ctx.ca, name, tags, **kw)
    )
    return node


def usable_key(control: Any, role: str) -> str:
    """A new key of ``role`` on the ``control`` fixture's running app."""
    key: str = control.client.portal.call(_create_key, control.ctx.db, role)
    return key


async def _create_key(db: Database, role: str) -> str:
    from x0tta6bl4.control.admin import create_api_key
    from x0tta6bl4.control.auth import Role

    return await create_api_key(db, f"test-{role}", Role[role], "test")


def steady_keys(control: Any) -> None:
    """Give ``control`` an admin key and a ``new_key`` from this module."""
    control.admin_key = usable_key(control, "admin")
    control.new_key = lambda role, name=None: usable_key(control, role)
