"""A revoked neighbour is not hammered: bounded traffic towards it, and it can come back.

a - b - c linked, a and c talking end to end; the CA revokes c and the list reaches a and b
(c is not told and keeps trying). Before this was bounded, b treated c like any dead
neighbour: its hellos (one a second) and healing's re-handshakes started attempts that
fetched c's certificate and refused it about eight times a second for 30 s each. Measured
in this scenario (seed 23) over the 10 virtual seconds after the revocation, before: b
sent c 141 datagrams, 23,154 bytes, and made c send it 835 datagrams, 910,296 bytes (c's
~7 KB certificate again and again); 863 datagrams, 111,058 bytes over 60 s. Now b sends c
only answers to what c itself sends (18 datagrams, 7,410 bytes: NO_SESSION answers to c's
packets on its dead session and, once, b's own certificate when c asked for it; 65
datagrams, 8,914 bytes over 60 s) and starts no handshake of its own. What c still sends
b (302 datagrams, 333,672 bytes: its own INIT retries, refused) is c's doing.

When c comes back re-enrolled (new keys, new certificate, same name and address) and
dials b, the link comes up again at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from x0tta6bl4.channel.constants import MSG_CERT_REQUEST, MSG_INIT
from x0tta6bl4.crypto.hybrid import HybridPrivateKey
from x0tta6bl4.identity.crl import RevocationList
from x0tta6bl4.mesh.node import MeshNode, node_id
from x0tta6bl4.sansio import Action, Core, Event, RevocationListUpdated, Send
from x0tta6bl4.sim import Edge, LinkSpec, Simulator, Topology
from x0tta6bl4.sim.meshsim import MeshSim, build_world, meshes, path

SEED = 23
PORT = 9
WINDOW = 10.0
BOUND_DATAGRAMS = 30  # b -> c in the window: 141 before, 18 now
BOUND_BYTES = 10_000  # 23,154 before, 7,410 now


@dataclass
class Revoked:
    sim: Simulator
    t_revoked: float
    sent: list[tuple[float, str, object, bytes]] = field(default_factory=list)
    events: list[tuple[float, str, Event]] = field(default_factory=list)
    nodes: dict[str, MeshNode] = field(default_factory=dict)
    # at the end of the window
    b_held_c: bool = False
    b_neighbours: dict[str, bool] = field(default_factory=dict)
    a_held_c_e2e: bool = False
    b_after_return: dict[str, bool] = field(default_factory=dict)
    b_held_c_after_return: bool = True
    a_path_to_c_after_return: list[str] | None = None

    def sends(self, src: str, dst: str, start: float, end: float) -> list[bytes]:
        return [d for t, s, a, d in self.sent if s == src and a == dst and start <= t < end]


def _give(crl: RevocationList) -> Callable[[Core, float], list[Action]]:
    def feed(core: Core, now: float) -> list[Action]:
        return list(core.handle(now, RevocationListUpdated(crl)))

    return feed


@pytest.fixture(scope="module")
def revoked() -> Revoked:
    s = LinkSpec()
    topo = Topology(("a", "b", "c"), (Edge("a", "b", s), Edge("b", "c", s)))
    world = build_world(topo.nodes, SEED)
    sim = Simulator(SEED, trace_drops=False)
    sim.add_topology(topo, MeshSim(world, topo).factory())
    out = Revoked(sim, 0.0)

    def observe(t: float, n: str, a: Action) -> None:
        if type(a) is Send:
            out.sent.append((t, n, a.addr, a.data))
        elif type(a) is Event:
            out.events.append((t, n, a))

    sim.on_action.append(observe)
    while not (path(meshes(sim), "a", "c") and path(meshes(sim), "c", "a")):
        assert sim.now < 10.0, "a-b-c did not converge"
        sim.run(round(sim.now + 0.1, 6))
    # an end-to-end session a-c carrying traffic both ways
    t0 = round(sim.now + 0.1, 6)
    sim.send_app(t0, "a", "c", PORT, b"a to c before")
    sim.send_app(t0 + 0.2, "c", "a", PORT, b"c to a before")
    sim.run(t0 + 2.0)
    t1 = out.t_revoked = sim.now
    crl = world.revocation_list(["c"], version=2, at=t1)
    for name in ("a", "b"):
        sim.call(t1, name, _give(crl))
    for k in range(int(WINDOW * 10)):  # a keeps trying to reach c; c keeps talking too
        t = round(t1 + 0.1 * k, 6)
        sim.send_app(t, "a", "c", PORT, b"a to c %d" % k)
        sim.send_app(t, "c", "a", PORT, b"c to a %d" % k)
    sim.run(t1 + WINDOW)
    out.nodes = meshes(sim)
    out.b_held_c = out.nodes["b"].links.revoked_addr("c", sim.now)
    out.b_neighbours = out.nodes["b"].neighbours()
    out.a_held_c_e2e = out.nodes["a"].e2e.revoked_addr(node_id("c"), sim.now)

    # c comes back re-enrolled: new keys and certificate, same name and address
    fresh = world.issue("c", at=sim.now, validity=3600.0, static=HybridPrivateKey.generate())
    sim.crash("c")
    sim.restart("c", MeshSim(world, topo, credentials={"c": fresh}).factory())
    sim.run(sim.now + 3.0)
    b = meshes(sim)["b"]
    out.b_after_return = b.neighbours()
    out.b_held_c_after_return = b.links.revoked_addr("c", sim.now)
    out.a_path_to_c_after_return = path(meshes(sim), "a", "c")
    return out


def test_b_sends_the_revoked_neighbour_little(revoked: Revoked) -> None:
    t1 = revoked.t_revoked
    to_c = revoked.sends("b", "c", t1, t1 + WINDOW)
    size = sum(len(d) for d in to_c)
    assert len(to_c) <= BOUND_DATAGRAMS
    assert size <= BOUND_BYTES
    # nothing of b's own making: no certificate requests, no INITs
    assert [d for d in to_c if d[1] in (MSG_CERT_REQUEST, MSG_INIT)] == []


def test_b_starts_no_handshake_with_the_revoked_neighbour(revoked: Revoked) -> None:
    t1 = revoked.t_revoked
    started = [
        e
        for t, n, e in revoked.events
        if n == "b" and t >= t1 and t < t1 + WINDOW and e.kind == "link.handshake_started"
    ]
    assert started == []
    b = revoked.nodes["b"]
    assert revoked.b_held_c
    # healing still plans re-handshakes with a dead neighbour; they go nowhere
    assert revoked.b_neighbours == {"a": True, "c": False}
    # the certificates b refuses now are the INITs c keeps sending, not ones b fetched
    assert b.links.counters.get("revoked_attempt_ended", 0) == 0


def test_a_does_not_dial_the_revoked_node_end_to_end(revoked: Revoked) -> None:
    a = revoked.nodes["a"]
    assert revoked.a_held_c_e2e
    assert a.e2e.counters["addr_revoked"] >= 1
    t1 = revoked.t_revoked
    started = [
        e
        for t, n, e in revoked.events
        if n == "a" and t1 <= t < t1 + WINDOW and e.kind == "e2e.handshake_started"
    ]
    assert started == []


def test_the_re_enrolled_neighbour_links_again(revoked: Revoked) -> None:
    assert revoked.b_after_return == {"a": True, "c": True}
    assert not revoked.b_held_c_after_return
    assert revoked.a_path_to_c_after_return == ["a", "b", "c"]
