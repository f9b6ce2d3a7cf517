"""Enrolled nodes without the enrollment flow: a ``Node`` row and a certificate issued by
the control plane's CA, the private keys kept here to sign requests as that node."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from x0tta6bl4.api.signing import sign_request
from x0tta6bl4.crypto.sign import SigningKey


@dataclass
class TestNode:
    __test__ = False  # not a test class, despite the name

    name: str
    key: SigningKey
    serial: int
    tags: tuple[str, ...]

    @property
    def serial_hex(self) -> str:
        return format(self.serial, "x")


def usable_key(control: Any, role: str, name: str | None = None) -> str:
    """A new API key with ``role``."""
    key: str = control.new_key(role, name)
    return key


def admin(control: Any) -> dict[str, str]:
    """Authorization headers of an admin key named test-admin (one per control plane),
    so audit entries can be told from the fixture's own."""
    key = getattr(control, "_usable_admin", None)
    if key is None:
        key = usable_key(control, "admin", "test-admin")
        control._usable_admin = key
    return {"Authorization": f"Bearer {key}"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def make_node(
    control: Any,
    name: str,
    tags: tuple[str, ...] | list[str] = (),
    *,
    lifetime_s: float = 3600.0,
) -> TestNode:
    """Insert an active node and issue it a certificate, as enrollment would."""
    from tests.control.nodes_helper import create_node

    c = control.ctx
    node = control.client.portal.call(
        lambda: create_node(c.db, c.ca, name, sorted(tags), lifetime_s=lifetime_s)
    )
    return TestNode(name, node.signing_key, node.serial, tuple(sorted(tags)))


def revoke_node(control: Any, node: TestNode) -> None:
    """Revoke the node's certificate as an operator would, and tell every replica."""
    from sqlalchemy import update

    from x0tta6bl4.control.models import Node

    c = control.ctx

    async def run() -> None:
        async with c.db.session() as s:
            await c.ca.revoke_in(s, [node.serial_hex], x509.ReasonFlags.key_compromise, time.time())
            await s.execute(update(Node).where(Node.name == node.name).values(status="revoked"))
            await s.commit()
        await c.pusher.changed("crl")

    control.client.portal.call(run)


def signed_request(
    control: Any, node: TestNode, method: str, path: str, payload: Any = None
) -> Any:
    body = b"" if payload is None else json.dumps(payload).encode()
    headers = sign_request(node.key, node.serial, method, path, body)
    if body:
        headers["content-type"] = "application/json"
    return control.client.request(method, path, content=body or None, headers=headers)


def report(at: float | None = None, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "at": time.time() if at is None else at,
        "endpoints": [],
        "neighbours": [],
        "routes": [],
        "sessions": 0,
        "policy_version": None,
        "crl_version": None,
        "events": [],
    }
    body.update(fields)
    return body


def post_report(control: Any, node: TestNode, **fields: Any) -> Any:
    return signed_request(control, node, "POST", "/v1/reports", report(**fields))


def neighbour(
    name: str, *, rtt_ms: float = 1.0, loss: float = 0.0, cost: int = 96, up: bool = True
) -> dict[str, Any]:
    return {"name": name, "rtt_ms": rtt_ms, "loss": loss, "cost": cost, "up": up}


def route(destination: str, next_hop: str | None, metric: int = 96) -> dict[str, Any]:
    return {"destination": destination, "next_hop": next_hop, "metric": metric}
