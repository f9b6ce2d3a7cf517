"""A real agent does not know every node's name: routes carry 8-byte ids, and a name is
learned from a certificate (a neighbour's link, an end-to-end session). Healing must
verify repairs to destinations it knows only by id."""

from __future__ import annotations

from x0tta6bl4.mesh.node import UNNAMED_PREFIX, node_id
from x0tta6bl4.sim import Simulator, diamond, line
from x0tta6bl4.sim.meshsim import MeshSim, build_world, meshes


def _sim(topo_name: str, healing: bool) -> tuple[Simulator, MeshSim]:
    topo = diamond() if topo_name == "diamond" else line(4)
    mesh = MeshSim(build_world(topo.nodes, 5), topo, healing=healing, directory=False)
    sim = Simulator(5, trace_drops=False)
    sim.add_topology(topo, mesh.factory())
    return sim, mesh


def test_far_destinations_are_named_from_their_first_route() -> None:
    sim, _ = _sim("line", healing=False)
    seen: set[str] = set()
    while sim.now < 4.0:
        sim.run(sim.now + 0.05)
        seen |= set(meshes(sim)["n0000"].observe(sim.now).routes)
    a = meshes(sim)["n0000"]
    # names travel ahead of routes: no route was ever shown under a bare id
    assert seen == {"n0001", "n0002", "n0003"}
    assert a.next_hop("n0003") == "n0001"
    assert a.next_hop(UNNAMED_PREFIX + node_id("n0003").hex()) == "n0001"


def test_a_names_frame_cannot_rename_an_id() -> None:
    sim, _ = _sim("line", healing=False)
    sim.run(4.0)
    a = meshes(sim)["n0000"]
    from x0tta6bl4.mesh.node import FRAME_NAMES

    out: list = []
    # a name always maps to its own id (a hash): "evil" cannot take n0003's place
    a._on_frame(sim.now, "n0001", bytes((FRAME_NAMES, 4)) + b"evil", out)
    assert a.name_of(node_id("n0003")) == "n0003" and a.name_of(node_id("evil")) == "evil"
    a._on_frame(sim.now, "n0001", bytes((FRAME_NAMES, 9)) + b"Bad Name!", out)
    a._on_frame(sim.now, "n0001", bytes((FRAME_NAMES, 40)) + b"short", out)
    assert a.counters["bad_names"] == 2


def test_healing_verifies_a_repair_to_destinations_known_only_by_id() -> None:
    sim, mesh = _sim("diamond", healing=True)
    sim.run(4.0)
    a = meshes(sim)["a"]
    relay = a.next_hop(UNNAMED_PREFIX + node_id("d").hex())
    assert relay in ("b", "c")
    sim.crash(relay)
    sim.run(sim.now + 3.0)
    repaired = [e for n, e in mesh.healing_events if n == "a" and e.outcome == "repaired"]
    assert repaired and repaired[0].subject == relay and repaired[0].mttr is not None
    assert repaired[0].mttr < 1.5
