"""``GET /v1/topology``: links merged from both ends' reports, and the current path."""

from __future__ import annotations

from typing import Any

from tests.control.report_helpers import (
    admin,
    bearer,
    make_node,
    neighbour,
    post_report,
    route,
    usable_key,
)
from x0tta6bl4.control.routers.topology import Topology


def _topo(control: Any, query: str = "") -> dict[str, Any]:
    r = control.client.get(f"/v1/topology{query}", headers=admin(control))
    assert r.status_code == 200, r.text
    Topology.model_validate(r.json())
    return r.json()  # type: ignore[no-any-return]


def _links(topo: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(link["a"], link["b"]): link for link in topo["links"]}


def _square(control: Any) -> None:
    """a - b - c, a - d (d never reports), and c reports a link b does not."""
    a, b, c = (make_node(control, n, [f"role:{n}"]) for n in ("a", "b", "c"))
    make_node(control, "d")
    assert (
        post_report(
            control,
            a,
            neighbours=[neighbour("b", rtt_ms=2.0, loss=0.0, cost=96), neighbour("d", rtt_ms=9)],
            routes=[route("b", "b"), route("c", "b", 192), route("d", "d")],
        ).status_code
        == 200
    )
    assert (
        post_report(
            control,
            b,
            neighbours=[
                neighbour("a", rtt_ms=4.0, loss=0.1, cost=120),
                neighbour("c", rtt_ms=1.0, up=False),
            ],
            routes=[route("a", "a"), route("c", "c"), route("d", "a", 192)],
        ).status_code
        == 200
    )
    assert (
        post_report(
            control,
            c,
            neighbours=[neighbour("b", rtt_ms=3.0)],
            routes=[route("b", "b"), route("a", "b", 192), route("d", None, 0xFFFF)],
        ).status_code
        == 200
    )


def test_links_merge_both_ends_and_keep_one_sided_ones(control) -> None:  # type: ignore[no-untyped-def]
    _square(control)
    topo = _topo(control)
    assert [n["name"] for n in topo["nodes"]] == ["a", "b", "c", "d"]
    online = {n["name"]: n["online"] for n in topo["nodes"]}
    assert online == {"a": True, "b": True, "c": True, "d": False}
    assert topo["nodes"][0]["tags"] == ["role:a"] and topo["nodes"][0]["status"] == "active"
    links = _links(topo)
    assert set(links) == {("a", "b"), ("b", "c"), ("a", "d")}
    ab = links[("a", "b")]
    assert ab["rtt_ms"] == 3.0  # mean of 2 and 4
    assert ab["loss"] == 0.1 and ab["cost"] == 120  # the worse end
    assert ab["up"] is True and ab["reported_by"] == ["a", "b"]
    bc = links[("b", "c")]
    assert bc["up"] is False  # b says down: the link is not fully up
    ad = links[("a", "d")]  # only a reports it: it still shows
    assert ad["reported_by"] == ["a"] and ad["rtt_ms"] == 9.0
    assert topo["path"] is None
    assert topo["generated_at"] > 0


def test_path_follows_reported_next_hops(control) -> None:  # type: ignore[no-untyped-def]
    _square(control)
    path = _topo(control, "?from=a&to=c")["path"]
    assert path == {
        "from": "a",
        "to": "c",
        "hops": ["a", "b", "c"],
        "complete": True,
        "reason": None,
    }
    # c has no usable route to d: the walk stops there and says why.
    path = _topo(control, "?from=c&to=d")["path"]
    assert path["hops"] == ["c"] and path["complete"] is False
    assert "no route" in path["reason"]
    # b routes to d via a, but d never reported: complete once d is reached.
    assert _topo(control, "?from=b&to=d")["path"]["hops"] == ["b", "a", "d"]
    # d has not reported, so nothing is known about its routes.
    path = _topo(control, "?from=d&to=a")["path"]
    assert path["complete"] is False and "not reported" in path["reason"]
    assert _topo(control, "?from=a&to=a")["path"]["hops"] == ["a"]


def test_path_stops_at_a_loop(control) -> None:  # type: ignore[no-untyped-def]
    x, y = make_node(control, "x"), make_node(control, "y")
    make_node(control, "z")
    post_report(control, x, routes=[route("z", "y")])
    post_report(control, y, routes=[route("z", "x")])
    path = _topo(control, "?from=x&to=z")["path"]
    assert path["hops"] == ["x", "y", "x"]
    assert path["complete"] is False and "loop" in path["reason"]


def test_topology_queries_are_checked(control) -> None:  # type: ignore[no-untyped-def]
    make_node(control, "a")
    viewer = usable_key(control, "viewer")
    assert control.client.get("/v1/topology", headers=bearer(viewer)).status_code == 200
    assert control.client.get("/v1/topology").status_code == 401
    r = control.client.get("/v1/topology?from=a", headers=admin(control))
    assert r.status_code == 400 and "to" in r.json()["detail"]
    r = control.client.get("/v1/topology?from=a&to=ghost", headers=admin(control))
    assert r.status_code == 404 and "ghost" in r.json()["detail"]
    r = control.client.get("/v1/topology?from=A!&to=a", headers=admin(control))
    assert r.status_code == 422 and "from" in r.json()["detail"]


def test_empty_mesh(control) -> None:  # type: ignore[no-untyped-def]
    topo = _topo(control)
    assert topo["nodes"] == [] and topo["links"] == []
