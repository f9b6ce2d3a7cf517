"""MeshNode behaviour at the frame level: what it drops and counts, what it forwards,
how it exposes itself to the healing loop. Driven by the simulator (real sessions, real
cryptography); faults and hostile frames are injected through `Simulator.call`."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable

import pytest

from x0tta6bl4.errors import MessageTooLarge
from x0tta6bl4.mesh.node import (
    DAMPED_COST,
    FRAME_FORWARD,
    FRAME_HELLO,
    FRAME_ROUTING,
    MeshNode,
    node_id,
)
from x0tta6bl4.routing import babel as rt
from x0tta6bl4.sansio import Action, AppSend, Core, Deliver, Event
from x0tta6bl4.sim.engine import Simulator
from x0tta6bl4.sim.meshsim import MeshSim, build_world, mesh_of, meshes, path
from x0tta6bl4.sim.topology import Topology, diamond, line

SEED = 11


def _sim(topo: Topology, *, healing: bool = False, seed: int = SEED) -> Simulator:
    world = build_world(topo.nodes, seed)
    sim = Simulator(seed)
    sim.add_topology(topo, MeshSim(world, topo, healing=healing).factory())
    return sim


def _node(sim: Simulator, name: str) -> MeshNode:
    node = mesh_of(sim.core(name))
    assert node is not None
    return node


def _raw_link_frame(src: str, dst: str, frame: bytes) -> Callable[[Core, float], Iterable[Action]]:
    """A callable for Simulator.call: ``src`` seals ``frame`` on its link to ``dst``."""

    def send(core: Core, now: float) -> Iterable[Action]:
        node = mesh_of(core)
        assert node is not None
        addr = node.links.addr_of(dst)
        assert addr is not None
        return node.links.send(now, addr, frame)

    return send


def test_a_line_converges_and_forwards_end_to_end() -> None:
    sim = _sim(line(3))
    got: list[Deliver] = []
    sim.on_action.append(
        lambda t, n, a: got.append(a) if n == "n0002" and isinstance(a, Deliver) else None
    )
    sim.send_app(2.0, "n0000", "n0002", 80, b"hello far node")
    sim.run(4.0)
    assert path(meshes(sim), "n0000", "n0002") == ["n0000", "n0001", "n0002"]
    assert got == [Deliver("n0000", 80, b"hello far node")]
    assert _node(sim, "n0001").counters.get("relayed", 0) > 0


@pytest.mark.parametrize(
    ("frame", "counter"),
    [
        (bytes((FRAME_HELLO,)) + b"\x00" * 5, "bad_hello"),
        (bytes((FRAME_ROUTING,)) + b"\x01\xff\xff", "bad_routing"),
        (bytes((FRAME_FORWARD,)) + b"\x00" * 4, "bad_forward"),
        (b"\x77rubbish", "unknown_frame"),
    ],
)
def test_malformed_frames_inside_a_valid_session_are_dropped_and_counted(
    frame: bytes, counter: str
) -> None:
    sim = _sim(line(2))
    sim.call(2.0, "n0000", _raw_link_frame("n0000", "n0001", frame))
    sim.run(3.0)
    b = _node(sim, "n0001")
    assert b.counters.get(counter) == 1
    # and the link is unharmed
    assert b.neighbours() == {"n0000": True}


def test_ttl_expiry_and_missing_routes_drop_at_the_relay() -> None:
    sim = _sim(line(3))
    far = node_id("n0002")
    nowhere = node_id("not-a-node")
    src = node_id("n0000")
    expiring = struct.pack(">BH8s8s", FRAME_FORWARD, 1, src, far) + b"sealed"
    lost = struct.pack(">BH8s8s", FRAME_FORWARD, 9, src, nowhere) + b"sealed"
    sim.call(2.0, "n0000", _raw_link_frame("n0000", "n0001", expiring))
    sim.call(2.0, "n0000", _raw_link_frame("n0000", "n0001", lost))
    sim.run(3.0)
    relay = _node(sim, "n0001")
    assert relay.counters.get("ttl_expired") == 1
    assert relay.counters.get("no_route") == 1


def test_oversized_app_payload_is_refused_not_truncated() -> None:
    sim = _sim(line(2))
    sim.run(1.0)
    a = _node(sim, "n0000")
    with pytest.raises(MessageTooLarge) as err:
        a.send_app(1.0, "n0001", 9, bytes(a.max_app_payload + 1))
    assert err.value.limit == a.max_app_payload
    out = a.handle(1.0, AppSend("n0001", 9, bytes(a.max_app_payload + 1)))
    assert [e.kind for e in out if isinstance(e, Event)] == ["app_send_refused"]
    assert a.counters["app_send_refused"] == 1
    assert a.send_app(1.0, "n0000", 9, b"loopback") == [Deliver("n0000", 9, b"loopback")]
    with pytest.raises(ValueError, match="port"):
        a.send_app(1.0, "n0001", 70000, b"x")


def test_a_fast_restart_is_recognised_and_routes_through_the_old_self_are_dropped() -> None:
    sim = _sim(line(3))
    sim.run(2.0)
    sim.crash("n0001")
    sim.restart("n0001")  # back before anyone declares it dead
    sim.run(4.0)
    for name in ("n0000", "n0002"):
        assert _node(sim, name).counters.get("neighbour_restarted") == 1
    assert path(meshes(sim), "n0000", "n0002") == ["n0000", "n0001", "n0002"]


def test_a_damped_link_still_carries_what_has_no_other_way() -> None:
    # A flapping link is held out of routes that have another way, never out of the
    # only one: a relay kill next to a damped link once left a region of a lossy
    # 100-node mesh without a route for 7 s, until the hold-down ended.
    sim = _sim(line(3))
    sim.run(3.0)
    a = _node(sim, "n0000")
    assert a.next_hop("n0002") == "n0001"
    sim.call(3.0, "n0000", lambda core, now: a.damp_link(now, "n0001", now + 10.0))
    sim.run(4.0)
    assert a.observe(4.0).links["n0001"].cost >= DAMPED_COST
    assert path(meshes(sim), "n0000", "n0002") == ["n0000", "n0001", "n0002"]
    assert path(meshes(sim), "n0002", "n0000") == ["n0002", "n0001", "n0000"]


def test_observation_and_healing_controls() -> None:
    sim = _sim(diamond())
    sim.run(3.0)
    a = _node(sim, "a")
    obs = a.observe(3.0)
    assert set(obs.links) == {"b", "c"}
    assert all(lo.alive and lo.cost < rt.INFINITY for lo in obs.links.values())
    assert set(obs.routes) == {"b", "c", "d"}
    hop = obs.routes["d"].next_hop
    assert hop in {"b", "c"}
    other = "c" if hop == "b" else "b"
    # A penalty on the link in use moves the route to the other relay.
    sim.call(3.0, "a", lambda core, now: a.set_link_penalty(now, hop, 16.0))
    sim.run(4.0)
    obs = a.observe(4.0)
    assert obs.links[hop].cost > obs.links[hop].base_cost
    assert a.next_hop("d") == other
    # Damping makes a link the last resort until the hold-down ends.
    sim.call(4.0, "a", lambda core, now: a.damp_link(now, other, now + 1.0))
    sim.run(4.5)
    assert a.observe(4.5).links[other].cost >= DAMPED_COST
    assert a.next_hop("d") == hop
    sim.run(6.0)
    assert a.observe(6.0).links[other].cost < DAMPED_COST
    # Dropping a neighbour retracts routes through it at once; it comes back on hellos.
    sim.call(6.0, "a", lambda core, now: a.drop_neighbour(now, other))
    sim.run(6.0)
    assert not a.neighbours()[other]
    sim.call(6.1, "a", lambda core, now: a.reconnect(now, other))
    sim.run(7.0)
    assert a.neighbours()[other]
    assert a.request_renewal(7.0) == [Event("renewal_requested", {"node": "a"})]
