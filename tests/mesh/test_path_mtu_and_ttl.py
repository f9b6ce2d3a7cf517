"""Bugs 6 and 7 of the mesh-robustness issue, on real nodes in the simulator.

* A link whose MTU drops below the mesh's datagram size still carries hellos (they are
  small); its probes show it, and routing moves off it.
* The FORWARD TTL covers every path routing can accept.
"""

from __future__ import annotations

from x0tta6bl4.mesh.node import DEFAULT_TTL, MAX_ROUTE_HOPS
from x0tta6bl4.routing import linkquality as lq
from x0tta6bl4.routing.metric import INFINITY
from x0tta6bl4.sansio import Action, Deliver
from x0tta6bl4.sim import Simulator, diamond, line
from x0tta6bl4.sim.meshsim import MeshSim, build_world, meshes

PORT = 7


def _converged(sim: Simulator, src: str, dst: str, limit: float) -> None:
    nodes = meshes(sim)
    while nodes[src].next_hop(dst) is None:
        assert sim.now < limit, f"{src} has no route to {dst} by {limit} s"
        sim.run(round(sim.now + 0.1, 6))


def test_a_link_whose_mtu_shrinks_is_routed_around() -> None:
    # diamond: a - b - d and a - c - d. a's route to d starts on one of the two.
    topo = diamond()
    mesh = MeshSim(build_world(topo.nodes, 3), topo, healing=True)
    sim = Simulator(3, trace_drops=False)
    sim.add_topology(topo, mesh.factory())
    a, d = "a", "d"
    _converged(sim, a, d, 5.0)
    sim.run(sim.now + 2.0)
    node_a = meshes(sim)[a]
    via = node_a.next_hop(d)
    assert via in ("b", "c")
    other = "c" if via == "b" else "b"

    delivered: list[float] = []

    def tap(t: float, node: str, act: Action) -> None:
        if type(act) is Deliver and node == d:
            delivered.append(t)

    sim.on_action.append(tap)
    big = b"\xa5" * node_a.max_app_payload  # full-size datagrams, as bulk traffic sends
    t_cut = sim.now
    sim.net.degrade(a, via, mtu=600)
    for i in range(300):  # 30 s of 10 packets/s
        sim.send_app(t_cut + 0.1 * i, a, d, PORT, big)
    sim.run(t_cut + 30.0)

    # The link stays alive (hellos are small) but routing left it.
    assert meshes(sim)[a].neighbours()[via] is True
    assert node_a.next_hop(d) == other
    low = sim.trace.select(kind="link_mtu_low")
    assert any(r[1] == a and r[3]["peer"] == via for r in low)
    # Full-size traffic flows again, well before the route over the bad link would have
    # expired on its own.
    resumed = [t for t in delivered if t > t_cut]
    assert resumed, "nothing was delivered after the MTU drop"
    late = [t for t in delivered if t > t_cut + 15.0]
    assert len(late) >= 0.9 * 150  # 15 s x 10 pkt/s, allowing ordinary losses

    # The MTU comes back: a probe gets through and the link is usable again.
    sim.net.degrade(a, via, mtu=1500)
    sim.run(sim.now + 2 * node_a.config.mtu_probe_interval + 1.0)
    assert any(r[1] == a for r in sim.trace.select(kind="link_mtu_restored"))
    assert node_a.observe(sim.now).links[via].cost < INFINITY


def test_a_healthy_lossy_link_is_not_called_mtu_limited() -> None:
    # Probes lost to ordinary loss must not look like an MTU problem.
    topo = diamond()
    mesh = MeshSim(build_world(topo.nodes, 4), topo, healing=False)
    sim = Simulator(4, trace_drops=False)
    sim.add_topology(topo, mesh.factory())
    sim.run(2.0)
    for e in topo.edges:
        sim.net.degrade(e.a, e.b, loss=0.05)
    sim.run(62.0)
    assert sim.trace.select(kind="link_mtu_low") == []


def test_the_ttl_covers_every_path_routing_accepts() -> None:
    # Each hop costs at least BASE_COST and a metric must stay below INFINITY.
    assert MAX_ROUTE_HOPS == (INFINITY - 1) // lq.BASE_COST
    assert DEFAULT_TTL > MAX_ROUTE_HOPS
    assert DEFAULT_TTL <= 0xFFFF


def test_a_line_longer_than_the_old_ttl_delivers() -> None:
    # Before: TTL 64, and a line of 66 nodes delivered nothing end to end.
    n = 66
    topo = line(n)
    mesh = MeshSim(build_world(topo.nodes, 1), topo, healing=False)
    sim = Simulator(1, trace_drops=False)
    sim.add_topology(topo, mesh.factory())
    src, dst = topo.nodes[0], topo.nodes[-1]
    _converged(sim, src, dst, 30.0)
    got: list[bytes] = []

    def tap(t: float, node: str, act: Action) -> None:
        if type(act) is Deliver and node == dst:
            got.append(act.payload)

    sim.on_action.append(tap)
    t0 = sim.now
    for i in range(5):
        sim.send_app(t0 + 0.2 * i, src, dst, PORT, b"far %d" % i)
    sim.run(t0 + 5.0)
    assert got == [b"far %d" % i for i in range(5)]
