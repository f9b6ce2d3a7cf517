"""``/v1/api-keys``: create (shown once), list (no secrets), revoke (takes effect), and
the last active admin key cannot be revoked."""

from __future__ import annotations

import time
from typing import Any

from tests.control.report_helpers import admin, bearer, usable_key
from x0tta6bl4.control.auth import KEY_CACHE_S, parse_api_key


def _create(control: Any, name: str, role: str, headers: dict[str, str]) -> dict[str, Any]:
    r = control.client.post("/v1/api-keys", json={"name": name, "role": role}, headers=headers)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    assert parse_api_key(body["key"]) == (body["id"], body["key"].split("_", 2)[2])
    return body


def _keys(
    control: Any, query: str = "", headers: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    r = control.client.get(f"/v1/api-keys{query}", headers=headers or admin(control))
    assert r.status_code == 200, r.text
    return r.json()["keys"]  # type: ignore[no-any-return]


def test_key_lifecycle(control) -> None:  # type: ignore[no-untyped-def]
    made = _create(control, "grafana", "viewer", admin(control))
    assert made["role"] == "viewer" and made["name"] == "grafana"
    assert made["key"].startswith(f"x0tk_{made['id']}_")
    # The new key works with its role, and no more.
    viewer = bearer(made["key"])
    assert control.client.get("/v1/nodes", headers=viewer).status_code == 200
    r = control.client.get("/v1/api-keys", headers=viewer)
    assert r.status_code == 403 and "admin" in r.json()["detail"]
    # Listing never shows a secret.
    listed = {k["id"]: k for k in _keys(control)}
    assert listed[made["id"]]["active"] is True
    assert listed[made["id"]]["created_by"].startswith("key:")
    text = str(_keys(control))
    assert made["key"].split("_", 2)[2] not in text and "secret" not in text
    # Revoked: refused at once on this replica.
    r = control.client.delete(f"/v1/api-keys/{made['id']}", headers=admin(control))
    assert r.status_code == 200, r.text
    assert r.json()["already_revoked"] is False
    r = control.client.get("/v1/nodes", headers=viewer)
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    listed = {k["id"]: k for k in _keys(control)}
    assert listed[made["id"]]["active"] is False
    assert made["id"] not in {k["id"] for k in _keys(control, "?active=true")}
    assert [k["id"] for k in _keys(control, "?active=false")] == [made["id"]]
    # Revoking again changes nothing and says so.
    again = control.client.delete(f"/v1/api-keys/{made['id']}", headers=admin(control))
    assert again.status_code == 200 and again.json()["already_revoked"] is True


def test_revocation_reaches_another_replica_within_the_cache_time(control) -> None:  # type: ignore[no-untyped-def]
    """A second app on the same database stands for another replica: it has cached the
    key, does not hear of the revocation, and refuses the key once its cache expires."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from fastapi.testclient import TestClient

    from x0tta6bl4.control.app import create_app

    made = _create(control, "script", "viewer", admin(control))
    settings = control.settings.model_copy()
    with TestClient(create_app(settings)) as other:
        assert other.get("/v1/nodes", headers=bearer(made["key"])).status_code == 200
        r = control.client.delete(f"/v1/api-keys/{made['id']}", headers=admin(control))
        assert r.status_code == 200
        assert control.client.get("/v1/nodes", headers=bearer(made["key"])).status_code == 401
        deadline = time.monotonic() + KEY_CACHE_S + 2
        while other.get("/v1/nodes", headers=bearer(made["key"])).status_code == 200:
            assert time.monotonic() < deadline, "the other replica still accepts the key"
            time.sleep(0.2)
        assert other.get("/v1/nodes", headers=bearer(made["key"])).status_code == 401


def _revoke_other_admins(control: Any, keep_id: str, headers: dict[str, str]) -> None:
    """Revoke every active admin key but ``keep_id``, the caller's own last."""
    mine = headers["Authorization"].split("_")[1]
    others = [
        k["id"]
        for k in _keys(control, "?active=true", headers)
        if k["role"] == "admin" and k["id"] not in (keep_id, mine)
    ]
    for key_id in [*others, *([mine] if mine != keep_id else [])]:
        r = control.client.delete(f"/v1/api-keys/{key_id}", headers=headers)
        assert r.status_code == 200, r.text


def test_last_active_admin_key_cannot_be_revoked(control) -> None:  # type: ignore[no-untyped-def]
    me = admin(control)
    my_id = me["Authorization"].split("_")[1]
    # Revoke every other admin key (the fixture's own included) while it is allowed.
    _revoke_other_admins(control, my_id, me)
    r = control.client.delete(f"/v1/api-keys/{my_id}", headers=me)
    assert r.status_code == 409
    assert "last active admin" in r.json()["detail"]
    assert control.client.get("/v1/api-keys", headers=me).status_code == 200
    # With a second admin, the first may go (even revoking itself).
    second = _create(control, "second-admin", "admin", me)
    _revoke_other_admins(control, second["id"], me)  # leaves only second (and me: revoked last)
    assert control.client.get("/v1/api-keys", headers=me).status_code == 401
    r = control.client.delete(f"/v1/api-keys/{second['id']}", headers=bearer(second["key"]))
    assert r.status_code == 409
    # Revoking a non-admin key is never blocked by the rule.
    op = _create(control, "op", "operator", bearer(second["key"]))
    r = control.client.delete(f"/v1/api-keys/{op['id']}", headers=bearer(second["key"]))
    assert r.status_code == 200


def _active_admins(control: Any) -> list[str]:
    from sqlalchemy import select

    from x0tta6bl4.control.models import ApiKey

    async def run() -> list[str]:
        async with control.ctx.db.session() as s:
            rows = await s.execute(
                select(ApiKey.id).where(ApiKey.role == "admin", ApiKey.revoked_at.is_(None))
            )
            return list(rows.scalars())

    return control.client.portal.call(run)  # type: ignore[no-any-return]


def test_two_admins_revoking_each_other_at_once_leave_one(control) -> None:  # type: ignore[no-untyped-def]
    """The race the rule must survive: each request alone is allowed, both together
    would leave no admin."""
    import concurrent.futures

    me = admin(control)
    my_id = me["Authorization"].split("_")[1]
    other = _create(control, "other-admin", "admin", me)
    keys = {k["id"] for k in _keys(control, "?active=true") if k["role"] == "admin"}
    for k in keys - {my_id, other["id"]}:
        assert control.client.delete(f"/v1/api-keys/{k}", headers=me).status_code == 200
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        a = pool.submit(control.client.delete, f"/v1/api-keys/{other['id']}", headers=me)
        b = pool.submit(
            control.client.delete, f"/v1/api-keys/{my_id}", headers=bearer(other["key"])
        )
        codes = sorted([a.result().status_code, b.result().status_code])
    left = _active_admins(control)
    assert len(left) == 1, (codes, left)
    assert codes in ([200, 409], [200, 401]), codes  # the loser is refused, or finds its key gone


def test_only_admins_manage_keys_and_input_is_checked(control) -> None:  # type: ignore[no-untyped-def]
    operator = bearer(usable_key(control, "operator"))
    r = control.client.post("/v1/api-keys", json={"name": "x", "role": "admin"}, headers=operator)
    assert r.status_code == 403
    assert control.client.get("/v1/api-keys", headers=operator).status_code == 403
    assert control.client.delete("/v1/api-keys/0123456789ab", headers=operator).status_code == 403
    assert control.client.get("/v1/api-keys").status_code == 401
    for body, field in (
        ({"name": "x", "role": "root"}, "role"),
        ({"name": "", "role": "viewer"}, "name"),
        ({"name": "x" * 129, "role": "viewer"}, "name"),
        ({"role": "viewer"}, "name"),
    ):
        r = control.client.post("/v1/api-keys", json=body, headers=admin(control))
        assert r.status_code == 422, body
        assert field in r.json()["detail"]
    r = control.client.delete("/v1/api-keys/0123456789ab", headers=admin(control))
    assert r.status_code == 404 and "0123456789ab" in r.json()["detail"]
    r = control.client.delete("/v1/api-keys/not-an-id", headers=admin(control))
    assert r.status_code == 422 and "key_id" in r.json()["detail"]
