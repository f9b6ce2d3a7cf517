"""``/v1/nodes``: listing with filters and paging, one node's detail, changing tags."""

from __future__ import annotations

import time
from typing import Any

from tests.control.report_helpers import (
    admin,
    bearer,
    make_node,
    neighbour,
    post_report,
    revoke_node,
    usable_key,
)
from x0tta6bl4.control.routers.nodes import (
    DETAIL_CACHE_S,
    DETAIL_STALE_S,
    NodeDetail,
    NodePage,
)


def _list(control: Any, query: str = "", key: str | None = None) -> dict[str, Any]:
    headers = bearer(key) if key else admin(control)
    r = control.client.get(f"/v1/nodes{query}", headers=headers)
    assert r.status_code == 200, r.text
    NodePage.model_validate(r.json())  # the documented shape
    return r.json()  # type: ignore[no-any-return]


def _names(page: dict[str, Any]) -> list[str]:
    return [n["name"] for n in page["nodes"]]


def test_list_shows_nodes_with_status_and_online(control) -> None:  # type: ignore[no-untyped-def]
    a = make_node(control, "n-a", ["role:web", "site:ams"])
    make_node(control, "n-b", ["role:db"])
    assert post_report(control, a, endpoints=["192.0.2.1:7100"]).status_code == 200
    viewer = usable_key(control, "viewer")
    page = _list(control, key=viewer)
    assert _names(page) == ["n-a", "n-b"]
    assert page["next_cursor"] is None
    first, second = page["nodes"]
    assert first["online"] is True and second["online"] is False
    assert first["endpoints"] == ["192.0.2.1:7100"]
    assert first["tags"] == ["role:web", "site:ams"]
    assert first["spiffe_id"].endswith("/node/n-a")
    assert first["status"] == "active"
    assert first["current_serial"] == a.serial_hex
    assert second["last_seen"] is None


def test_list_filters_by_status_and_tag(control) -> None:  # type: ignore[no-untyped-def]
    make_node(control, "f-1", ["role:web"])
    make_node(control, "f-2", ["role:web", "site:ams"])
    gone = make_node(control, "f-3", ["role:db"])
    revoke_node(control, gone)
    assert _names(_list(control, "?tag=role:web")) == ["f-1", "f-2"]
    assert _names(_list(control, "?tag=site:ams")) == ["f-2"]
    assert _names(_list(control, "?tag=role:none")) == []
    assert _names(_list(control, "?status=revoked")) == ["f-3"]
    assert _names(_list(control, "?status=active&tag=role:web")) == ["f-1", "f-2"]
    # A tag is matched whole, not as a substring (role:we is no prefix match).
    assert _names(_list(control, "?tag=role:we")) == []
    r = control.client.get("/v1/nodes?tag=notatag", headers=admin(control))
    assert r.status_code == 422 and "tag" in r.json()["detail"]
    r = control.client.get("/v1/nodes?status=gone", headers=admin(control))
    assert r.status_code == 422 and "status" in r.json()["detail"]


def test_list_pages_by_cursor_and_offset(control) -> None:  # type: ignore[no-untyped-def]
    for i in range(7):
        make_node(control, f"p-{i}")
    seen: list[str] = []
    query = "?limit=3"
    while True:
        page = _list(control, query)
        seen += _names(page)
        if page["next_cursor"] is None:
            break
        query = f"?limit=3&cursor={page['next_cursor']}"
    assert seen == [f"p-{i}" for i in range(7)]
    assert _names(_list(control, "?limit=2&offset=5")) == ["p-5", "p-6"]
    r = control.client.get("/v1/nodes?limit=501", headers=admin(control))
    assert r.status_code == 422 and "limit" in r.json()["detail"]


def test_detail_has_certificate_and_report_summary(control) -> None:  # type: ignore[no-untyped-def]
    a = make_node(control, "d-1", ["role:web"], lifetime_s=7200)
    make_node(control, "d-2")
    assert (
        post_report(
            control,
            a,
            neighbours=[neighbour("d-2"), neighbour("d-3", up=False)],
            sessions=2,
            policy_version=7,
            crl_version=3,
        ).status_code
        == 200
    )
    r = control.client.get("/v1/nodes/d-1", headers=bearer(usable_key(control, "viewer")))
    assert r.status_code == 200
    body = NodeDetail.model_validate(r.json())
    assert body.certificate is not None
    assert body.certificate.serial == a.serial_hex
    assert body.certificate.status == "valid"
    # two hours, plus the 5 minutes the CA back-dates not_before for clock skew
    assert 7100 + 300 < body.certificate.not_after - body.certificate.not_before <= 7200 + 300
    assert body.report is not None
    assert (body.report.neighbours, body.report.sessions) == (2, 2)
    assert (body.report.policy_version, body.report.crl_version) == (7, 3)
    assert body.online and body.tags == ["role:web"]
    # The overlay addresses the node itself computes (node.dataplane), from its name.
    from x0tta6bl4.node.dataplane import node_overlay_ipv4, node_overlay_ipv6

    td = control.ctx.ca.ca.trust_domain
    assert body.overlay.ipv6 == str(node_overlay_ipv6(td, "d-1"))
    assert body.overlay.ipv4 == str(node_overlay_ipv4(td, "d-1"))
    listed = control.client.get("/v1/nodes", headers=admin(control)).json()["nodes"]
    assert {n["name"]: n["overlay"]["ipv4"] for n in listed}["d-2"] == str(
        node_overlay_ipv4(td, "d-2")
    )
    # A node that never reported: no summary, offline.
    other = control.client.get("/v1/nodes/d-2", headers=admin(control)).json()
    assert other["report"] is None and other["online"] is False


def test_detail_of_unknown_node_is_404(control) -> None:  # type: ignore[no-untyped-def]
    r = control.client.get("/v1/nodes/nobody", headers=admin(control))
    assert r.status_code == 404
    assert "nobody" in r.json()["detail"]
    r = control.client.get("/v1/nodes/Not_A_Name", headers=admin(control))
    assert r.status_code == 422 and "name" in r.json()["detail"]


def test_reading_needs_a_key(control) -> None:  # type: ignore[no-untyped-def]
    make_node(control, "k-1")
    assert control.client.get("/v1/nodes").status_code == 401
    assert control.client.get("/v1/nodes/k-1").status_code == 401


def test_operator_changes_tags_audited_effective_at_renewal(control) -> None:  # type: ignore[no-untyped-def]
    make_node(control, "t-1", ["role:web"])
    operator = usable_key(control, "operator", "ops-alice")
    r = control.client.patch(
        "/v1/nodes/t-1",
        json={"tags": ["site:ams", "role:db", "site:ams"]},
        headers=bearer(operator),
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tags"] == ["role:db", "site:ams"]  # canonical: sorted, unique
    assert body["previous_tags"] == ["role:web"]
    assert body["takes_effect"] == "next_renewal" and "renew" in body["detail"]
    assert control.client.get("/v1/nodes/t-1", headers=admin(control)).json()["tags"] == [
        "role:db",
        "site:ams",
    ]
    assert _names(_list(control, "?tag=role:db")) == ["t-1"]
    audit = control.client.get("/v1/audit?action=node.update_tags", headers=admin(control))
    (entry,) = audit.json()["entries"]
    assert entry["target"] == "t-1"
    assert "ops-alice" in entry["actor"]
    assert entry["detail"] == {"tags": ["role:db", "site:ams"], "previous": ["role:web"]}


def test_tag_changes_are_checked(control) -> None:  # type: ignore[no-untyped-def]
    make_node(control, "t-2")
    viewer = usable_key(control, "viewer")
    r = control.client.patch("/v1/nodes/t-2", json={"tags": ["a:b"]}, headers=bearer(viewer))
    assert r.status_code == 403 and "operator" in r.json()["detail"]
    r = control.client.patch("/v1/nodes/t-2", json={"tags": ["Bad Tag"]}, headers=admin(control))
    assert r.status_code == 422 and "tags" in r.json()["detail"]
    r = control.client.patch(
        "/v1/nodes/t-2", json={"tags": [f"k:{i}" for i in range(33)]}, headers=admin(control)
    )
    assert r.status_code == 422 and "tags" in r.json()["detail"]
    r = control.client.patch("/v1/nodes/ghost", json={"tags": []}, headers=admin(control))
    assert r.status_code == 404 and "ghost" in r.json()["detail"]
    entries = control.client.get("/v1/audit?action=node.update_tags", headers=admin(control))
    assert entries.json()["entries"] == []


def test_online_window_expires(control) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import update

    from x0tta6bl4.control.models import Node
    from x0tta6bl4.control.routers.nodes import ONLINE_WINDOW_S

    a = make_node(control, "o-1")
    assert post_report(control, a).status_code == 200
    assert control.client.get("/v1/nodes/o-1", headers=admin(control)).json()["online"]

    async def age() -> None:
        async with control.ctx.db.session() as s:
            await s.execute(
                update(Node)
                .where(Node.name == "o-1")
                .values(last_seen=time.time() - ONLINE_WINDOW_S - 1)
            )
            await s.commit()

    control.client.portal.call(age)
    # A change made behind this replica's back shows within the detail cache's bound.
    deadline = time.monotonic() + DETAIL_CACHE_S + DETAIL_STALE_S + 0.5
    while control.client.get("/v1/nodes/o-1", headers=admin(control)).json()["online"]:
        assert time.monotonic() < deadline, "the detail stayed stale too long"
        time.sleep(0.1)
    assert not _list(control)["nodes"][0]["online"]  # the list is never cached


def test_detail_reflects_this_replicas_writes_at_once(control) -> None:  # type: ignore[no-untyped-def]
    a = make_node(control, "c-1")
    assert control.client.get("/v1/nodes/c-1", headers=admin(control)).json()["report"] is None
    assert post_report(control, a, sessions=4).status_code == 200
    got = control.client.get("/v1/nodes/c-1", headers=admin(control)).json()
    assert got["report"]["sessions"] == 4
    control.client.patch("/v1/nodes/c-1", json={"tags": ["role:new"]}, headers=admin(control))
    assert control.client.get("/v1/nodes/c-1", headers=admin(control)).json()["tags"] == [
        "role:new"
    ]
    revoke_node(control, a)  # a revocation anywhere changes the CRL version: cache dropped
    assert control.client.get("/v1/nodes/c-1", headers=admin(control)).json()["status"] == (
        "revoked"
    )


def test_concurrent_detail_reads_agree(control) -> None:  # type: ignore[no-untyped-def]
    import concurrent.futures

    make_node(control, "c-2")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(
            pool.map(
                lambda _: control.client.get("/v1/nodes/c-2", headers=admin(control)).status_code,
                range(40),
            )
        )
    assert codes == [200] * 40
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(
            pool.map(
                lambda _: control.client.get("/v1/nodes/nope", headers=admin(control)).status_code,
                range(16),
            )
        )
    assert codes == [404] * 16
