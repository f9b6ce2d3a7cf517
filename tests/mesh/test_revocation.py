"""A newer revocation list drops the revoked node's sessions, not only its next handshakes.

a - b - c run with link sessions a-b and b-c and an end-to-end session a-c carrying
traffic; the CA revokes c and the new list reaches a and b (``RevocationListUpdated``).
From then on b's link to c is down (reason ``revoked``, routes through it retracted,
healing told), a's end-to-end session with c is gone, nothing a sends c is delivered,
c's handshakes are refused (``cert_rejected:revoked``) and a-b carry on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from x0tta6bl4.healing import HealingNode
from x0tta6bl4.identity.crl import RevocationList
from x0tta6bl4.mesh.node import MeshNode, node_id
from x0tta6bl4.sansio import (
    Action,
    Core,
    Deliver,
    Event,
    LinkDown,
    LinkDownReason,
    RevocationListUpdated,
    Send,
)
from x0tta6bl4.sim import Edge, LinkSpec, Simulator, Topology
from x0tta6bl4.sim.meshsim import MeshSim, build_world, mesh_of, meshes, path

SEED = 23
PORT = 9
SETTLE = 0.05
"""Virtual seconds after the list arrives at which its effects are checked (a few link
latencies: routing retractions need one hop)."""


@dataclass
class Revoked:
    """What happened around the revocation, recorded as the run went."""

    sim: Simulator
    t_revoked: float
    crl: RevocationList
    nodes: dict[str, MeshNode]
    seen: list[tuple[float, str, Action]] = field(default_factory=list)
    # what each core answered the list with (control actions included, which the
    # simulator's observers do not see)
    answered: dict[str, list[Action]] = field(default_factory=dict)
    # taken SETTLE after the list arrived
    b_neighbours: dict[str, bool] = field(default_factory=dict)
    b_link_to_c_established: bool | None = None
    a_e2e_with_c_established: bool | None = None
    a_next_hop_c: str | None = "unset"
    b_next_hop_c: str | None = "unset"

    def link_downs(self, node: str) -> list[LinkDown]:
        return [a for a in self.answered[node] if type(a) is LinkDown]

    def events_after(self, node: str, kind: str) -> list[Event]:
        return [
            a
            for t, n, a in self.seen
            if n == node and t >= self.t_revoked and type(a) is Event and a.kind == kind
        ]

    def delivered_after(self, node: str, port: int = PORT) -> list[Deliver]:
        return [
            a
            for t, n, a in self.seen
            if n == node and t > self.t_revoked and type(a) is Deliver and a.port == port
        ]


def _topology() -> Topology:
    s = LinkSpec()
    return Topology(("a", "b", "c"), (Edge("a", "b", s), Edge("b", "c", s)))


def _give(crl: RevocationList, answered: list[Action]) -> Callable[[Core, float], list[Action]]:
    def feed(core: Core, now: float) -> list[Action]:
        answered.extend(core.handle(now, RevocationListUpdated(crl)))
        return answered

    return feed


@pytest.fixture(scope="module")
def revoked() -> Revoked:
    topo = _topology()
    world = build_world(topo.nodes, SEED)
    sim = Simulator(SEED, trace_drops=False)
    sim.add_topology(topo, MeshSim(world, topo).factory())  # with healing, as in the agent
    seen: list[tuple[float, str, Action]] = []
    sim.on_action.append(lambda t, n, a: seen.append((t, n, a)) if type(a) is not Send else None)
    while not (path(meshes(sim), "a", "c") and path(meshes(sim), "c", "a")):
        assert sim.now < 10.0, "a-b-c did not converge"
        sim.run(round(sim.now + 0.1, 6))
    # the end-to-end session a-c, carrying traffic both ways
    t0 = round(sim.now + 0.1, 6)
    sim.send_app(t0, "a", "c", PORT, b"a to c before")
    sim.send_app(t0 + 0.2, "c", "a", PORT, b"c to a before")
    sim.run(t0 + 1.0)
    before = [a for _, n, a in seen if n == "c" and type(a) is Deliver and a.port == PORT]
    assert [d.payload for d in before] == [b"a to c before"]
    nodes = meshes(sim)
    e2e = nodes["a"].e2e.peer(node_id("c"))
    assert e2e is not None and e2e.established
    link = nodes["b"].links.peer("c")
    assert link is not None and link.established

    t1 = sim.now
    crl = world.revocation_list(["c"], version=2, at=t1)
    out = Revoked(sim, t1, crl, nodes, seen)
    for name in ("a", "b"):  # c is not told (it would not take a list revoking itself)
        sim.call(t1, name, _give(crl, out.answered.setdefault(name, [])))
    sim.run(t1 + SETTLE)
    out.b_neighbours = nodes["b"].neighbours()
    info = nodes["b"].links.peer("c")
    out.b_link_to_c_established = info is not None and info.established
    info = nodes["a"].e2e.peer(node_id("c"))
    out.a_e2e_with_c_established = info is not None and info.established
    out.a_next_hop_c = nodes["a"].next_hop("c")
    out.b_next_hop_c = nodes["b"].next_hop("c")
    # a keeps sending to c, c keeps sending to a; a and b keep talking
    for k in range(20):
        t = round(t1 + SETTLE + 0.1 * k, 6)
        sim.send_app(t, "a", "c", PORT, b"a to c after %d" % k)
        sim.send_app(t, "c", "a", PORT, b"c to a after %d" % k)
        sim.send_app(t, "a", "b", PORT, b"a to b after %d" % k)
        sim.send_app(t, "b", "a", PORT, b"b to a after %d" % k)
    sim.run(t1 + 4.0)
    return out


def test_the_link_to_the_revoked_node_goes_down_with_the_reason(revoked: Revoked) -> None:
    assert revoked.link_downs("b") == [LinkDown("c", LinkDownReason.REVOKED)]
    assert revoked.b_neighbours == {"a": True, "c": False}
    assert revoked.b_link_to_c_established is False
    assert revoked.nodes["b"].counters.get("neighbour_revoked") == 1
    # a's link to b is not c's: a reports no link down at all
    assert revoked.link_downs("a") == []


def test_routes_through_the_revoked_link_are_retracted(revoked: Revoked) -> None:
    assert revoked.b_next_hop_c is None
    assert revoked.a_next_hop_c is None


def test_healing_hears_of_it_at_once(revoked: Revoked) -> None:
    # The LinkDown ran a MAPE-K cycle at once: its first action for c is in the same instant.
    acts = [
        (t, a.fields["subject"])
        for t, n, a in revoked.seen
        if n == "b" and type(a) is Event and a.kind == "healing.action" and t >= revoked.t_revoked
    ]
    assert acts and acts[0] == (revoked.t_revoked, "c")
    core = revoked.sim.core("b")
    assert isinstance(core, HealingNode)


def test_the_end_to_end_session_with_the_revoked_node_is_gone(revoked: Revoked) -> None:
    assert revoked.a_e2e_with_c_established is False
    assert revoked.nodes["a"].e2e.counters.get("revoked_teardown") == 1
    assert revoked.nodes["b"].links.counters.get("revoked_teardown") == 1
    assert revoked.events_after("a", "e2e.peer_revoked")
    assert revoked.events_after("b", "link.peer_revoked")


def test_nothing_reaches_or_comes_from_the_revoked_node(revoked: Revoked) -> None:
    assert revoked.delivered_after("c") == []
    assert [d for d in revoked.delivered_after("a") if d.src == "c"] == []
    assert [
        e for e in revoked.events_after("a", "e2e.handshake_complete") if e.fields["peer"] == "c"
    ] == []


def test_the_revoked_node_cannot_handshake_again(revoked: Revoked) -> None:
    # c tried (it was not told), and b refused it on the new list.
    assert revoked.events_after("c", "link.handshake_started")
    assert revoked.nodes["b"].links.counters.get("cert_rejected:revoked", 0) >= 1
    refused = [
        e
        for e in revoked.events_after("b", "link.dropped")
        if e.fields["reason"] == "cert_rejected:revoked"
    ]
    assert refused and all(e.fields["addr"] == "c" for e in refused)
    assert revoked.events_after("b", "link.handshake_complete") == []
    assert revoked.nodes["b"].neighbours()["c"] is False


def test_the_other_nodes_keep_working(revoked: Revoked) -> None:
    got_b = {d.payload for d in revoked.delivered_after("b") if d.src == "a"}
    got_a = {d.payload for d in revoked.delivered_after("a") if d.src == "b"}
    assert got_b == {b"a to b after %d" % k for k in range(20)}
    assert got_a == {b"b to a after %d" % k for k in range(20)}
    assert revoked.nodes["a"].neighbours() == {"b": True}
    assert revoked.nodes["a"].next_hop("b") == "b"
    assert revoked.link_downs("a") == []


def test_an_older_list_changes_nothing(revoked: Revoked) -> None:
    b = mesh_of(revoked.sim.core("b"))
    assert b is not None
    held = b.links.revocation_list
    assert held is not None and held.version == 2
    older = revoked.sim.core("b")
    assert older is not None
    v1 = build_world(_topology().nodes, SEED).revocation_list([], version=1, at=revoked.sim.now)
    out = list(older.handle(revoked.sim.now, RevocationListUpdated(v1)))
    assert not [a for a in out if type(a) is LinkDown]
    assert b.links.revocation_list is held
    assert b.neighbours() == {"a": True, "c": False}
