"""``GET /v1/topology`` after a node dies: its neighbours' newer reports win over its own
last one. A node whose reporting neighbours all say its links are dead is ``down``, its
links are down, and a path stops at it; a node that is alive and reports its own links
dead (isolated, not dead) is not. Reports are ordered by arrival at the service."""

from __future__ import annotations

from typing import Any

from tests.control.report_helpers import admin, make_node, neighbour, post_report, route


def _topo(control: Any, query: str = "") -> dict[str, Any]:
    r = control.client.get(f"/v1/topology{query}", headers=admin(control))
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _down(topo: dict[str, Any]) -> list[str]:
    return [n["name"] for n in topo["nodes"] if n["down"]]


def _up(topo: dict[str, Any]) -> dict[tuple[str, str], bool]:
    return {(link["a"], link["b"]): link["up"] for link in topo["links"]}


def _ok(answer: Any) -> None:
    assert answer.status_code == 200, answer.text


def _chain(control: Any) -> dict[str, Any]:
    """a - b - c, every link up, every node routing to every other through the chain."""
    nodes = {n: make_node(control, n) for n in ("a", "b", "c")}
    _ok(
        post_report(
            control,
            nodes["a"],
            neighbours=[neighbour("b")],
            routes=[route("b", "b"), route("c", "b", 192)],
        )
    )
    _ok(
        post_report(
            control,
            nodes["b"],
            neighbours=[neighbour("a"), neighbour("c")],
            routes=[route("a", "a"), route("c", "c")],
        )
    )
    _ok(
        post_report(
            control,
            nodes["c"],
            neighbours=[neighbour("b")],
            routes=[route("b", "b"), route("a", "b", 192)],
        )
    )
    return nodes


def test_a_node_its_neighbours_report_dead_is_down(control) -> None:  # type: ignore[no-untyped-def]
    nodes = _chain(control)
    topo = _topo(control)
    assert _down(topo) == []
    assert _up(topo) == {("a", "b"): True, ("b", "c"): True}

    # b is killed: it reports nothing more. Its neighbours say so, a first.
    dead = neighbour("b", rtt_ms=1.0, loss=1.0, cost=0xFFFF, up=False)
    _ok(post_report(control, nodes["a"], neighbours=[dead], routes=[route("c", "b", 192)]))
    topo = _topo(control)
    # Only one of its two neighbours has spoken: not enough to call b dead.
    assert _down(topo) == []
    assert _up(topo) == {("a", "b"): False, ("b", "c"): True}

    _ok(post_report(control, nodes["c"], neighbours=[dead], routes=[route("a", None, 0xFFFF)]))
    topo = _topo(control, "?from=a&to=c")
    assert _down(topo) == ["b"]
    assert _up(topo) == {("a", "b"): False, ("b", "c"): False}
    # a has not rerouted yet (its route still names b): the path stops at the dead node
    # instead of following b's stale report to c.
    assert topo["path"]["hops"] == ["a", "b"]
    assert topo["path"]["complete"] is False and topo["path"]["reason"] == "b is down"
    # b's own stale report still lists its links; it is still "online" by report age.
    assert {n["name"]: n["online"] for n in topo["nodes"]}["b"] is True

    # b comes back and reports: it is up again, whatever its neighbours said before.
    _ok(post_report(control, nodes["b"], neighbours=[neighbour("a"), neighbour("c")]))
    assert _down(_topo(control)) == []


def test_an_isolated_node_that_still_reports_is_not_down(control) -> None:  # type: ignore[no-untyped-def]
    nodes = _chain(control)
    dead = neighbour("b", loss=1.0, cost=0xFFFF, up=False)
    # b's links really died (a cable cut), and b says so itself before they do.
    _ok(
        post_report(
            control,
            nodes["b"],
            neighbours=[
                neighbour("a", loss=1.0, cost=0xFFFF, up=False),
                neighbour("c", loss=1.0, cost=0xFFFF, up=False),
            ],
        )
    )
    _ok(post_report(control, nodes["a"], neighbours=[dead]))
    _ok(post_report(control, nodes["c"], neighbours=[dead]))
    topo = _topo(control)
    assert _down(topo) == []  # it answers the service: isolated, not dead
    assert _up(topo) == {("a", "b"): False, ("b", "c"): False}


def test_a_link_the_other_end_stopped_listing_is_down(control) -> None:  # type: ignore[no-untyped-def]
    nodes = _chain(control)
    # c forgets b altogether (its neighbour entry is gone) in a report newer than b's.
    _ok(post_report(control, nodes["c"], neighbours=[]))
    topo = _topo(control)
    assert _up(topo) == {("a", "b"): True, ("b", "c"): False}
    links = {(link["a"], link["b"]): link for link in topo["links"]}
    assert links[("b", "c")]["reported_by"] == ["b"]
    # b reports again, still listing c: its report is the newer one now.
    _ok(post_report(control, nodes["b"], neighbours=[neighbour("a"), neighbour("c")]))
    assert _up(_topo(control))[("b", "c")] is True
