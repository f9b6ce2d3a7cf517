"""RELAY datagrams received together (a UDP GRO batch): forwarded with their TTL lowered,
or opened at once at the destination; from anyone but a live neighbour, dropped."""

from __future__ import annotations

from x0tta6bl4.mesh.node import RELAY_OVERHEAD, MeshNode
from x0tta6bl4.sansio import Deliver, SendBatch, outgoing
from x0tta6bl4.sim import Simulator, line
from x0tta6bl4.sim.meshsim import MeshSim, build_world, meshes


def _line3() -> tuple[Simulator, dict[str, MeshNode]]:
    topo = line(3)
    mesh = MeshSim(build_world(topo.nodes, 4), topo, healing=False)
    sim = Simulator(4, trace_drops=False)
    sim.add_topology(topo, mesh.factory())
    sim.run(3.0)
    sim.send_app(sim.now, "n0000", "n0002", 7, b"hello")  # the e2e session
    sim.run(sim.now + 1.0)
    return sim, meshes(sim)


def test_a_batch_is_relayed_then_opened_whole() -> None:
    sim, nodes = _line3()
    a, b, c = nodes["n0000"], nodes["n0001"], nodes["n0002"]
    big = bytes(i % 251 for i in range(50_000))
    out = a.send_app(sim.now, "n0002", 7, big)
    # one action for the message's datagrams: a runtime sends them in one GSO call
    assert [type(x) for x in out] == [SendBatch]
    to_b = [d for addr, d in outgoing(out)]
    assert len(to_b) > 30 and {addr for addr, _ in outgoing(out)} == {"n0001"}
    relayed = b.handle_batch(sim.now, "n0000", to_b)
    assert [type(x) for x in relayed] == [SendBatch]
    to_c = outgoing(relayed)
    assert len(to_c) == len(to_b) and {addr for addr, _ in to_c} == {"n0002"}
    assert all(
        int.from_bytes(y[4:6], "big") == int.from_bytes(x[4:6], "big") - 1
        for x, (_, y) in zip(to_b, to_c, strict=True)
    )
    assert all(x[6:] == y[6:] for x, (_, y) in zip(to_b, to_c, strict=True))  # unopened
    got = c.handle_batch(sim.now, "n0001", [d for _, d in to_c])
    assert [(d.src, d.port, d.payload) for d in got if isinstance(d, Deliver)] == [
        ("n0000", 7, big)
    ]


def test_a_batch_from_a_stranger_is_dropped() -> None:
    sim, nodes = _line3()
    a, b = nodes["n0000"], nodes["n0001"]
    out = a.send_app(sim.now, "n0002", 7, bytes(20_000))
    batch = [d for _, d in outgoing(out)]
    before = b.counters.get("relay_from_stranger", 0)
    assert b.handle_batch(sim.now, "somewhere-else", batch) == []
    assert b.counters["relay_from_stranger"] == before + len(batch)
    # a batch mixing a non-data inner message goes the careful way and is refused there
    odd = [*batch[:-1], batch[-1][:RELAY_OVERHEAD] + b"\x01\x01" + batch[-1][RELAY_OVERHEAD + 2 :]]
    relayed = b.handle_batch(sim.now, "n0000", odd)
    assert len(outgoing(relayed)) == len(batch) - 1
    assert b.counters.get("bad_relay", 0) >= 1


def test_a_batch_of_mixed_ttls_lowers_each_its_own() -> None:
    sim, nodes = _line3()
    a, b = nodes["n0000"], nodes["n0001"]
    out = a.send_app(sim.now, "n0002", 7, bytes(20_000))
    batch = [d for _, d in outgoing(out)]
    ttls = [9, 2, 1, *([5] * (len(batch) - 3))]
    mixed = [d[:4] + t.to_bytes(2, "big") + d[6:] for d, t in zip(batch, ttls, strict=True)]
    before = b.counters.get("ttl_expired", 0)
    relayed = [d for _, d in outgoing(b.handle_batch(sim.now, "n0000", mixed))]
    # the one that arrived with TTL 1 dies here; the others go on, one hop lower each
    assert [int.from_bytes(d[4:6], "big") for d in relayed] == [t - 1 for t in ttls if t > 1]
    assert b.counters["ttl_expired"] == before + 1


def test_a_large_message_without_a_route_counts_every_datagram() -> None:
    sim, nodes = _line3()
    a = nodes["n0000"]
    a.router.remove_neighbour(sim.now, "n0001")  # n0002 is now out of reach
    before = a.counters.get("no_route", 0)
    out = a.send_app(sim.now, "n0002", 7, bytes(20_000))
    assert not outgoing(out)
    assert a.counters["no_route"] > before + 10  # one per datagram of the message
