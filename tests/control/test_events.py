"""``GET /v1/events``: filters and cursor paging over reported events, newest first."""

from __future__ import annotations

import time
from typing import Any

from tests.control.report_helpers import admin, bearer, make_node, post_report, usable_key


def _get(control: Any, query: str = "") -> dict[str, Any]:
    r = control.client.get(f"/v1/events{query}", headers=admin(control))
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _seed(control: Any) -> float:
    t0 = time.time() - 1000
    a = make_node(control, "e-a")
    b = make_node(control, "e-b")
    ev = [{"kind": "dead_neighbour", "at": t0 + i, "detail": {"i": i}} for i in range(0, 6)] + [
        {"kind": "degraded_link", "at": t0 + 100 + i, "detail": {"i": i}} for i in range(3)
    ]
    assert post_report(control, a, events=ev).json()["accepted_events"] == 9
    assert (
        post_report(
            control, b, events=[{"kind": "dead_neighbour", "at": t0 + 50, "detail": {"i": 99}}]
        ).json()["accepted_events"]
        == 1
    )
    return t0


def test_events_newest_first_with_filters(control) -> None:  # type: ignore[no-untyped-def]
    t0 = _seed(control)
    every = _get(control)["events"]
    assert len(every) == 10
    ids = [e["id"] for e in every]
    assert ids == sorted(ids, reverse=True)
    assert every[0]["node"] == "e-b"  # arrived last
    assert {e["node"] for e in _get(control, "?node=e-b")["events"]} == {"e-b"}
    assert len(_get(control, "?node=e-a")["events"]) == 9
    kinds = _get(control, "?kind=degraded_link")["events"]
    assert [e["detail"]["i"] for e in kinds] == [2, 1, 0]
    window = _get(control, f"?since={t0 + 2}&until={t0 + 5}&node=e-a")["events"]
    assert sorted(e["detail"]["i"] for e in window) == [2, 3, 4]
    assert _get(control, "?node=nobody")["events"] == []
    viewer = usable_key(control, "viewer")
    assert control.client.get("/v1/events", headers=bearer(viewer)).status_code == 200
    assert control.client.get("/v1/events").status_code == 401


def test_events_page_by_cursor(control) -> None:  # type: ignore[no-untyped-def]
    _seed(control)
    seen: list[int] = []
    query = "?limit=4"
    pages = 0
    while True:
        page = _get(control, query)
        pages += 1
        seen += [e["id"] for e in page["events"]]
        if page["next_cursor"] is None:
            break
        query = f"?limit=4&cursor={page['next_cursor']}"
    assert pages == 3
    assert len(seen) == len(set(seen)) == 10
    assert seen == sorted(seen, reverse=True)


def test_bad_event_queries_are_422_naming_the_field(control) -> None:  # type: ignore[no-untyped-def]
    for query, field in (
        ("?limit=1001", "limit"),
        ("?limit=0", "limit"),
        ("?cursor=0", "cursor"),
        ("?since=nan", "since"),
        ("?until=-1", "until"),
        ("?kind=Bad%20Kind", "kind"),
        ("?node=UPPER", "node"),
    ):
        r = control.client.get(f"/v1/events{query}", headers=admin(control))
        assert r.status_code == 422, query
        assert field in r.json()["detail"], (query, r.json())
