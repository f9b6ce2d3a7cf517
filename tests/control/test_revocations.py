"""Revocation: by serial or node, the CRL it signs, refusals, concurrency, refresh."""

from __future__ import annotations

import threading
import time

import pytest
from cryptography import x509
from sqlalchemy import select, update

from tests.control.nodes_helper import enroll, issue_again, steady_keys
from x0tta6bl4.api.push import sync_path
from x0tta6bl4.control.models import AuditEntry, Certificate, Node, RevocationListRow
from x0tta6bl4.control.routers.revocations import ReasonName, refresh_if_due
from x0tta6bl4.identity.crl import REVOCATION_REASONS, RevocationList


@pytest.fixture(autouse=True)
def _keys(request: pytest.FixtureRequest) -> None:
    if "control" in request.fixturenames:
        steady_keys(request.getfixturevalue("control"))


def _revoke(control, key=None, **body):  # type: ignore[no-untyped-def]
    return control.client.post("/v1/revocations", json=body, headers=control.auth(key))


def _crl(control) -> RevocationList:  # type: ignore[no-untyped-def]
    r = control.client.get("/v1/crl")  # public: no key
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/x-pem-file")
    return RevocationList.from_pem(r.content, control.ctx.ca.ca.certificate)


def _sync_status(control, node) -> int:  # type: ignore[no-untyped-def]
    path = sync_path(0, 0)
    r = control.client.get(path, headers=node.headers("GET", path))
    return r.status_code


def _db(control, fn):  # type: ignore[no-untyped-def]
    async def run():  # type: ignore[no-untyped-def]
        async with control.ctx.db.session() as s:
            out = await fn(s)
            await s.commit()
            return out

    return control.client.portal.call(run)


def test_revoke_a_serial(control) -> None:  # type: ignore[no-untyped-def]
    web = enroll(control, "web-1", ["role:web"])
    other = enroll(control, "web-2", ["role:web"])
    assert _sync_status(control, web) == 200
    before = control.client.get("/v1/crl/version").json()["version"]

    operator = control.new_key("operator")
    r = _revoke(control, operator, serial=web.serial_hex.upper(), reason="key-compromise")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body == {
        "crl_version": before + 1,
        "serials": [web.serial_hex],
        "node": None,
        "reason": "key-compromise",
    }
    crl = _crl(control)
    assert crl.version == before + 1 and crl.is_revoked(web.serial)
    assert crl.entry(web.serial).reason is x509.ReasonFlags.key_compromise  # type: ignore[union-attr]
    assert not crl.is_revoked(other.serial)
    version = control.client.get("/v1/crl/version").json()
    assert version["version"] == before + 1 and version["next_update"] > time.time() + 6 * 86400

    listed = control.client.get("/v1/revocations", headers=control.auth(control.new_key("viewer")))
    assert listed.status_code == 200
    (entry,) = listed.json()["entries"]
    assert entry["serial"] == web.serial_hex and entry["node"] == "web-1"
    assert entry["reason"] == "key-compromise" and abs(entry["at"] - time.time()) < 60

    # The node's requests are refused with the reason; the other node is unaffected.
    path = sync_path(0, 0)
    r = control.client.get(path, headers=web.headers("GET", path))
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    assert _sync_status(control, other) == 200
    # Revoking one certificate leaves the node itself active.
    status = _db(control, lambda s: _scalar(s, select(Node.status).where(Node.name == "web-1")))
    assert status == "active"


async def _scalar(s, q):  # type: ignore[no-untyped-def]
    return (await s.execute(q)).scalar_one_or_none()


async def _scalars(s, q):  # type: ignore[no-untyped-def]
    return list((await s.execute(q)).scalars())


def test_revoke_a_node_revokes_all_its_certificates(control) -> None:  # type: ignore[no-untyped-def]
    first = enroll(control, "db-1", ["role:db"])
    second = control.client.portal.call(issue_again, control.ctx.db, control.ctx.ca, first)
    r = _revoke(control, node="db-1", reason="cessation-of-operation")
    assert r.status_code == 200, r.text
    assert sorted(r.json()["serials"]) == sorted([first.serial_hex, second.serial_hex])
    assert r.json()["node"] == "db-1"
    crl = _crl(control)
    assert crl.is_revoked(first.serial) and crl.is_revoked(second.serial)
    assert _db(control, lambda s: _scalar(s, select(Node.status).where(Node.name == "db-1"))) == (
        "revoked"
    )
    statuses = _db(
        control,
        lambda s: _scalars(s, select(Certificate.status).where(Certificate.node_name == "db-1")),
    )
    assert statuses == ["revoked", "revoked"]
    actions = _db(control, lambda s: _scalars(s, select(AuditEntry.action)))
    assert "node.revoke" in actions
    assert _sync_status(control, second) == 401


def test_refusals(control) -> None:  # type: ignore[no-untyped-def]
    node = enroll(control, "web-1")
    viewer = control.new_key("viewer")
    r = _revoke(control, viewer, serial=node.serial_hex)
    assert r.status_code == 403 and "operator" in r.json()["detail"]
    r = control.client.post("/v1/revocations", json={"serial": node.serial_hex})
    assert r.status_code == 401

    r = _revoke(control, serial="abc123")
    assert r.status_code == 404 and "abc123" in r.json()["detail"]
    r = _revoke(control, node="nobody")
    assert r.status_code == 404 and "nobody" in r.json()["detail"]

    for body, fragment in [
        ({}, "exactly one of serial and node"),
        ({"serial": node.serial_hex, "node": "web-1"}, "exactly one"),
        ({"serial": "xyz"}, "serial"),
        ({"serial": "1" * 41}, "serial"),
        ({"node": ""}, "node"),
        ({"node": "\u0000"}, "node"),
        ({"node": "Web-1"}, "node"),
        ({"node": "web-1", "reason": "because"}, "reason"),
        ({"node": "web-1", "reason": "certificate-hold"}, "reason"),
    ]:
        r = _revoke(control, **body)
        assert r.status_code == 422, (body, r.text)
        assert fragment in r.json()["detail"], (body, r.json())

    # Twice: 409, and the list does not grow a version.
    assert _revoke(control, serial=node.serial_hex).status_code == 200
    version = _crl(control).version
    r = _revoke(control, serial=node.serial_hex, reason="superseded")
    assert r.status_code == 409 and "already revoked" in r.json()["detail"]
    assert _revoke(control, node="web-1").status_code == 200
    r = _revoke(control, node="web-1")
    assert r.status_code == 409 and "already revoked" in r.json()["detail"]
    # The first reason stands.
    crl = _crl(control)
    assert crl.version == version + 1
    assert crl.entry(node.serial).reason is x509.ReasonFlags.unspecified  # type: ignore[union-attr]


def test_reason_names_are_the_crl_module_s() -> None:
    assert set(ReasonName.__args__) == set(REVOCATION_REASONS)  # type: ignore[attr-defined]


def test_concurrent_revocations_lose_none(control) -> None:  # type: ignore[no-untyped-def]
    nodes = [enroll(control, f"n-{i}") for i in range(6)]
    start = _crl(control).version
    results: list[int] = []
    errors: list[str] = []

    def worker(name: str) -> None:
        r = _revoke(control, node=name)
        if r.status_code == 200:
            results.append(r.json()["crl_version"])
        else:
            errors.append(r.text)

    threads = [threading.Thread(target=worker, args=(n.name,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(results) == list(range(start + 1, start + 7))
    crl = _crl(control)
    assert crl.version == start + 6
    assert all(crl.is_revoked(n.serial) for n in nodes)


def test_refresh_if_due_resigns_the_list(control) -> None:  # type: ignore[no-untyped-def]
    node = enroll(control, "web-1")
    assert _revoke(control, serial=node.serial_hex).status_code == 200
    before = _crl(control)
    assert control.client.portal.call(lambda: refresh_if_due(control.ctx)) is None
    later = time.time() + 2 * 86400
    new = control.client.portal.call(lambda: refresh_if_due(control.ctx, now=later))
    assert new == before.version + 1
    after = _crl(control)
    assert after.version == new and after.is_revoked(node.serial)
    assert after.next_update > before.next_update + 86400
    actions = _db(control, lambda s: _scalars(s, select(AuditEntry.action)))
    assert "crl.refresh" in actions


def test_a_stale_list_is_refreshed_when_the_service_starts(control_settings) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from x0tta6bl4.control.app import create_app

    with TestClient(create_app(control_settings)) as client:
        v1 = client.get("/v1/crl/version").json()["version"]

        async def age() -> None:
            async with client.app.state.ctl.db.session() as s:  # type: ignore[attr-defined]
                await s.execute(update(RevocationListRow).values(created_at=time.time() - 90000))
                await s.commit()

        client.portal.call(age)
    with TestClient(create_app(control_settings)) as client:
        deadline = time.monotonic() + 10
        while client.get("/v1/crl/version").json()["version"] == v1:
            assert time.monotonic() < deadline, "the stale list was not refreshed"
            time.sleep(0.05)
        assert client.get("/v1/crl/version").json()["version"] == v1 + 1
