"""A node that shuts down says so, and its neighbours reroute at once; echo hop counts;
a persisted routing seqno."""

from __future__ import annotations

import random

import pytest

from x0tta6bl4.mesh.node import FRAME_LEAVE, MeshNode
from x0tta6bl4.routing import babel as rt
from x0tta6bl4.routing.linkquality import DEAD_INTERVAL
from x0tta6bl4.sansio import Action, LinkDown, LinkDownReason
from x0tta6bl4.sim import Simulator, diamond, line
from x0tta6bl4.sim.meshsim import MeshSim, build_world, meshes


def _run(topo_name: str) -> tuple[Simulator, dict[str, MeshNode]]:
    topo = diamond() if topo_name == "diamond" else line(4)
    mesh = MeshSim(build_world(topo.nodes, 3), topo, healing=False)
    sim = Simulator(3, trace_drops=False)
    sim.add_topology(topo, mesh.factory())
    sim.run(4.0)
    return sim, meshes(sim)


def test_a_leaving_relay_is_routed_around_before_the_dead_interval() -> None:
    sim, nodes = _run("diamond")
    relay = nodes["a"].next_hop("d")
    assert relay in ("b", "c")
    other = "c" if relay == "b" else "b"
    t0 = sim.now
    sim.call(t0, relay, lambda core, now: nodes[relay].leave(now))
    sim.run(t0 + 0.01)
    sim.crash(relay)
    # Well inside the dead interval, both neighbours have dropped the link and a has
    # moved to the other relay.
    sim.run(t0 + DEAD_INTERVAL / 4)
    assert nodes["a"].neighbours()[relay] is False
    assert nodes["d"].neighbours()[relay] is False
    assert nodes["a"].next_hop("d") == other
    assert nodes["a"].counters.get("neighbour_left") == 1


def test_a_leave_takes_routes_through_the_node_away_on_a_line() -> None:
    sim, nodes = _run("line")
    assert nodes["n0000"].next_hop("n0003") == "n0001"
    t0 = sim.now
    sim.call(t0, "n0001", lambda core, now: nodes["n0001"].leave(now))
    sim.run(t0 + 0.01)
    sim.crash("n0001")
    sim.run(t0 + DEAD_INTERVAL / 4)
    assert nodes["n0000"].next_hop("n0003") is None
    assert nodes["n0002"].next_hop("n0000") is None


def test_a_leave_of_another_incarnation_changes_nothing() -> None:
    sim, nodes = _run("diamond")
    a = nodes["a"]
    stale = bytes((FRAME_LEAVE,)) + ((nodes["b"].boot_id + 1) % 2**32).to_bytes(4, "big")
    out: list[Action] = []
    a._on_frame(sim.now, "b", stale, out)  # as if opened from b's link session
    assert a.neighbours()["b"] is True
    assert not [x for x in out if isinstance(x, LinkDown)]
    assert a.counters.get("stale_leave") == 1
    a._on_frame(sim.now, "b", bytes((FRAME_LEAVE,)) + b"\0", out)  # wrong length
    assert a.counters.get("bad_leave") == 1 and a.neighbours()["b"] is True


def test_a_genuine_leave_reports_the_reason() -> None:
    sim, nodes = _run("diamond")
    a = nodes["a"]
    leave = bytes((FRAME_LEAVE,)) + nodes["b"].boot_id.to_bytes(4, "big")
    out: list[Action] = []
    a._on_frame(sim.now, "b", leave, out)
    assert [x for x in out if isinstance(x, LinkDown)] == [LinkDown("b", LinkDownReason.LEFT)]
    # Hellos of the incarnation that left (late, reordered, or from a run that failed to
    # stop) do not bring the link back; only a new incarnation does.
    sim.run(sim.now + 1.5 * rt.UPDATE_INTERVAL)  # b's periodic dumps reach a too
    assert a.neighbours()["b"] is False
    assert a.counters.get("hello_after_leave", 0) >= 5
    assert a.counters.get("routing_after_leave", 0) >= 1
    assert a.next_hop("d") == "c"


def test_an_echo_reports_rtt_and_hops() -> None:
    sim, nodes = _run("line")
    t0 = sim.now
    sim.call(t0, "n0000", lambda core, now: nodes["n0000"].probe(now, "n0003"))
    sim.call(t0, "n0000", lambda core, now: nodes["n0000"].probe(now, "n0001"))
    sim.run(t0 + 1.0)
    rtt, hops = nodes["n0000"].echo_results["n0003"]
    assert hops == 3 and 0 < rtt < 1.0
    assert nodes["n0000"].echo_results["n0001"][1] == 1


def test_the_router_continues_from_a_given_seqno() -> None:
    r = rt.Router(b"\1" * 8, random.Random(1), seqno=41)
    assert r.seqno == 41
    with pytest.raises(ValueError, match="seqno"):
        rt.Router(b"\1" * 8, random.Random(1), seqno=1 << 16)
