"""End-to-end reachability probes: what healing uses to call a repair a repair."""

from __future__ import annotations

import pytest

from x0tta6bl4.mesh.node import MeshNode
from x0tta6bl4.sansio import AppSend, Event
from x0tta6bl4.sim import Simulator, line
from x0tta6bl4.sim.meshsim import MeshSim, build_world, meshes


def _line3() -> tuple[Simulator, dict[str, MeshNode]]:
    topo = line(3)
    mesh = MeshSim(build_world(topo.nodes, 2), topo, healing=False)
    sim = Simulator(2, trace_drops=False)
    sim.add_topology(topo, mesh.factory())
    sim.run(3.0)
    return sim, meshes(sim)


def test_a_probe_is_answered_end_to_end() -> None:
    sim, nodes = _line3()
    a, c = "n0000", "n0002"
    assert nodes[a].observe(sim.now).verified == {}
    t0 = sim.now
    sim.call(t0, a, lambda core, now: nodes[a].probe(now, c))
    sim.run(t0 + 1.0)
    verified = nodes[a].observe(sim.now).verified
    assert c in verified and t0 < verified[c] < t0 + 1.0
    assert any(r[1] == a for r in sim.trace.select(kind="probe_ok"))
    # The far side answered at its mesh layer: nothing reached its application.
    assert nodes[c].counters.get("bad_echo", 0) == 0


def test_a_probe_to_a_dead_node_is_never_verified() -> None:
    sim, nodes = _line3()
    a, c = "n0000", "n0002"
    sim.crash(c)
    t0 = sim.now
    sim.call(t0, a, lambda core, now: nodes[a].probe(now, c))
    sim.run(t0 + 3.0)
    assert c not in nodes[a].observe(sim.now).verified


def test_the_first_answer_of_repeated_probes_verifies() -> None:
    sim, nodes = _line3()
    a, c = "n0000", "n0002"
    t0 = sim.now
    # two probes in a row: the first answer to arrive counts; the second is a repeat
    sim.call(t0, a, lambda core, now: nodes[a].probe(now, c))
    sim.call(t0 + 0.001, a, lambda core, now: nodes[a].probe(now, c))
    sim.run(t0 + 1.0)
    verified = nodes[a].observe(sim.now).verified
    assert c in verified
    assert nodes[a].counters.get("stale_echo", 0) == 1  # the later answer is not news


def test_port_zero_is_the_mesh_s_own() -> None:
    sim, nodes = _line3()
    a = nodes["n0000"]
    with pytest.raises(ValueError, match="0 is the mesh's probe"):
        a.send_app(sim.now, "n0002", 0, b"x")
    acts = a.handle(sim.now, AppSend("n0002", 0, b"x"))
    assert [e.kind for e in acts if isinstance(e, Event)] == ["app_send_refused"]
