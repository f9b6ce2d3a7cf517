"""``GET /v1/audit``: every mutation of these routers leaves an entry; filters, paging."""

from __future__ import annotations

from typing import Any

from tests.control.report_helpers import admin, bearer, make_node, usable_key


def _audit(control: Any, query: str = "") -> dict[str, Any]:
    r = control.client.get(f"/v1/audit{query}", headers=admin(control))
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_each_mutation_is_audited(control) -> None:  # type: ignore[no-untyped-def]
    me = admin(control)
    my_id = me["Authorization"].split("_")[1]
    made = control.client.post(
        "/v1/api-keys", json={"name": "ci", "role": "operator"}, headers=me
    ).json()
    control.client.delete(f"/v1/api-keys/{made['id']}", headers=me)
    make_node(control, "au-1")
    control.client.patch("/v1/nodes/au-1", json={"tags": ["role:x"]}, headers=me)
    entries = _audit(control, f"?actor={my_id}")["entries"]
    assert [(e["action"], e["target"]) for e in entries] == [
        ("node.update_tags", "au-1"),
        ("api_key.revoke", made["id"]),
        ("api_key.create", made["id"]),
    ]
    for e in entries:
        assert e["actor"] == f"key:{my_id}(test-admin)"
        assert e["at"] > 0
    assert entries[2]["detail"] == {"name": "ci", "role": "operator"}
    assert entries[1]["detail"] == {"name": "ci", "role": "operator"}
    # Refused changes leave no entry.
    control.client.delete(f"/v1/api-keys/{made['id']}", headers=me)  # already revoked
    control.client.patch("/v1/nodes/ghost", json={"tags": []}, headers=me)
    assert len(_audit(control, f"?actor={my_id}")["entries"]) == 3


def test_audit_filters_and_pages(control) -> None:  # type: ignore[no-untyped-def]
    import time

    me = admin(control)
    t = time.time()
    for i in range(5):
        control.client.post("/v1/api-keys", json={"name": f"k{i}", "role": "viewer"}, headers=me)
    created = _audit(control, "?action=api_key.create")["entries"]
    assert len(created) >= 5  # the fixtures' own keys are created through the same path
    recent = _audit(control, f"?action=api_key.create&since={t}")["entries"]
    assert [e["detail"]["name"] for e in recent] == [f"k{i}" for i in range(4, -1, -1)]
    assert _audit(control, "?actor=nobody")["entries"] == []
    assert _audit(control, "?actor=test")["entries"]  # the fixture's "test" actor, exact
    seen: list[int] = []
    query = f"?since={t}&limit=2"
    while True:
        page = _audit(control, query)
        seen += [e["id"] for e in page["entries"]]
        if page["next_cursor"] is None:
            break
        query = f"?since={t}&limit=2&cursor={page['next_cursor']}"
    assert len(seen) == 5 and seen == sorted(seen, reverse=True)


def test_audit_is_for_admins(control) -> None:  # type: ignore[no-untyped-def]
    operator = bearer(usable_key(control, "operator"))
    r = control.client.get("/v1/audit", headers=operator)
    assert r.status_code == 403 and "admin" in r.json()["detail"]
    assert control.client.get("/v1/audit").status_code == 401
    r = control.client.get("/v1/audit?limit=5000", headers=admin(control))
    assert r.status_code == 422 and "limit" in r.json()["detail"]
