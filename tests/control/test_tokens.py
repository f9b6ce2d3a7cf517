"""Join tokens: an operator creates them (the text once), lists them (never the secret),
revokes them; roles and bounds are enforced; the token's limits hold at enrollment."""

from __future__ import annotations

import hashlib
import time

import pytest
from sqlalchemy import select, update

from tests.control.enroll_helpers import attempt, create_token
from x0tta6bl4.api.enroll import JoinTokenText
from x0tta6bl4.control.models import AuditEntry, JoinToken


def _rows(control, model, *where):  # type: ignore[no-untyped-def]
    async def run():  # type: ignore[no-untyped-def]
        async with control.ctx.db.session() as s:
            return (await s.execute(select(model).where(*where))).scalars().all()

    return control.client.portal.call(run)


def _set(control, token_id: str, **values) -> None:  # type: ignore[no-untyped-def]
    async def run() -> None:
        async with control.ctx.db.session() as s:
            await s.execute(update(JoinToken).where(JoinToken.id == token_id).values(**values))
            await s.commit()

    control.client.portal.call(run)


def test_create_returns_the_token_once_and_stores_only_its_hash(control) -> None:  # type: ignore[no-untyped-def]
    t = create_token(
        control, name_pattern="web-*", tags=["role:web", "env:prod"], max_uses=3, comment="rack 4"
    )
    parsed = JoinTokenText.parse(t["token"])
    assert parsed.token_id == t["id"]
    assert parsed.fingerprint == control.ctx.ca.enroll_fingerprint
    assert t["tags"] == ["env:prod", "role:web"]  # canonical: sorted
    assert (t["max_uses"], t["uses"], t["remaining"], t["comment"]) == (3, 0, 3, "rack 4")
    assert abs(t["expires_at"] - (time.time() + 3600)) < 60
    (row,) = _rows(control, JoinToken, JoinToken.id == t["id"])
    assert row.secret_hash == hashlib.sha256(parsed.secret.encode()).digest()
    assert parsed.secret.encode() not in repr(row.__dict__).encode()
    listed = control.client.get("/v1/tokens", headers=control.auth()).json()
    assert [x["id"] for x in listed] == [t["id"]]
    assert "token" not in listed[0] and parsed.secret not in str(listed)
    (entry,) = _rows(control, AuditEntry, AuditEntry.action == "token.create")
    assert entry.target == t["id"] and parsed.secret not in str(entry.detail)


def test_roles_viewer_lists_operator_creates_and_revokes(control) -> None:  # type: ignore[no-untyped-def]
    viewer = control.auth(control.new_key("viewer"))
    operator = control.auth(control.new_key("operator"))
    r = control.client.post("/v1/tokens", json={}, headers=viewer)
    assert r.status_code == 403 and "operator" in r.json()["detail"]
    assert control.client.post("/v1/tokens", json={}).status_code == 401
    assert control.client.get("/v1/tokens").status_code == 401
    t = control.client.post("/v1/tokens", json={}, headers=operator).json()
    assert control.client.get("/v1/tokens", headers=viewer).status_code == 200
    assert control.client.delete(f"/v1/tokens/{t['id']}", headers=viewer).status_code == 403
    assert control.client.delete(f"/v1/tokens/{t['id']}", headers=operator).status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"max_uses": 0}, "max_uses"),
        ({"max_uses": 10_001}, "max_uses"),
        ({"ttl_s": 10}, "ttl_s"),
        ({"ttl_s": 365 * 86400}, "ttl_s"),
        ({"tags": ["NotATag"]}, "tags"),
        ({"tags": [f"k:{i}" for i in range(33)]}, "tags"),
        ({"name_pattern": "Web/*"}, "name_pattern"),
        ({"name_pattern": ""}, "name_pattern"),
        ({"comment": "x" * 257}, "comment"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_create_refuses_out_of_bounds_fields_naming_them(control, body, field) -> None:  # type: ignore[no-untyped-def]
    r = control.client.post("/v1/tokens", json=body, headers=control.auth())
    assert r.status_code == 422, r.text
    assert field in r.json()["detail"]


def test_revoke_is_idempotent_and_unknown_ids_are_404(control) -> None:  # type: ignore[no-untyped-def]
    t = create_token(control)
    r = control.client.delete(f"/v1/tokens/{t['id']}", headers=control.auth())
    assert r.status_code == 200
    body = r.json()
    assert body["revoked_at"] is not None and body["remaining"] == 0
    again = control.client.delete(f"/v1/tokens/{t['id']}", headers=control.auth()).json()
    assert again["revoked_at"] == body["revoked_at"]
    assert len(_rows(control, AuditEntry, AuditEntry.action == "token.revoke")) == 1
    for bad in ("0123456789abcdef", "nope", "x" * 64):
        r = control.client.delete(f"/v1/tokens/{bad}", headers=control.auth())
        assert r.status_code == 404 and "token_id" in r.json()["detail"], r.text
    a = attempt(control.client, t["token"], "n1")
    assert a.status == 403 and "revoked" in a.detail


def test_a_token_enrolls_at_most_max_uses_nodes(control) -> None:  # type: ignore[no-untyped-def]
    t = create_token(control, max_uses=2)
    assert attempt(control.client, t["token"], "n1").status == 200
    assert attempt(control.client, t["token"], "n2").status == 200
    third = attempt(control.client, t["token"], "n3")
    assert third.status == 403 and "used up" in third.detail
    (listed,) = control.client.get("/v1/tokens", headers=control.auth()).json()
    assert (listed["uses"], listed["remaining"]) == (2, 0)


def test_an_expired_token_is_refused_and_listed_as_expired(control) -> None:  # type: ignore[no-untyped-def]
    t = create_token(control)
    _set(control, t["id"], expires_at=time.time() - 1)
    a = attempt(control.client, t["token"], "n1")
    assert a.status == 403 and "expired" in a.detail
    (listed,) = control.client.get("/v1/tokens", headers=control.auth()).json()
    assert listed["expired"] is True and listed["remaining"] == 0


def test_name_pattern_and_tags_bound_what_a_token_grants(control) -> None:  # type: ignore[no-untyped-def]
    t = create_token(control, name_pattern="web-*", tags=["role:web", "env:prod"], max_uses=5)
    a = attempt(control.client, t["token"], "db-1", ["role:web"])
    assert a.status == 403 and "name pattern" in a.detail and "web-*" in a.detail
    a = attempt(control.client, t["token"], "web-1", ["role:db"])
    assert a.status == 403 and "role:db" in a.detail
    # A subset is fine; the certificate carries what was asked for.
    from x0tta6bl4.identity.cert import NodeCertificate

    res = attempt(control.client, t["token"], "web-1", ["role:web"]).result()
    assert NodeCertificate.from_pem(res.certificate.encode()).tags == ("role:web",)
    res = attempt(control.client, t["token"], "web-2").result()
    assert NodeCertificate.from_pem(res.certificate.encode()).tags == ()
    (listed,) = control.client.get("/v1/tokens", headers=control.auth()).json()
    assert listed["uses"] == 2  # refusals took no use
