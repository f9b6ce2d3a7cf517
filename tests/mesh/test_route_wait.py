"""Packets that find no route wait for one (bounded), instead of being dropped at once.

A relay kill or a cut link leaves the nodes behind it without a route for as long as
routing takes to repair it; what reached the end of the broken route was dropped, and a
user's traffic came back only with the next packet from the source. Now those packets
leave when a route appears, from where they got to; what cannot be held is dropped as
before, and nothing held is ever evicted.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from x0tta6bl4.mesh.node import MeshTimer
from x0tta6bl4.mesh.routewait import MAX_BYTES, PER_DESTINATION, ROUTE_WAIT, RouteWait
from x0tta6bl4.sansio import Datagram, Send, Timer, outgoing
from x0tta6bl4.sim import LinkSpec, build_mesh, cut, line, restore

# -- the queue ---------------------------------------------------------------------------


def test_what_waits_leaves_in_order_and_only_in_time() -> None:
    w = RouteWait()
    assert w.hold(0.0, b"d", b"one")
    assert w.hold(0.5, b"d", b"two")
    assert w.hold(0.5, b"e", b"ten" * 4, size=3, count=4)
    assert w.held(b"d") == 2 and w.held(b"e") == 4
    held, expired = w.take(ROUTE_WAIT + 0.1, b"d")  # "one" is past its time
    assert [h.data for h in held] == [b"two"] and expired == 1
    assert w.held(b"d") == 0 and w.destinations() == [b"e"]
    assert w.expire(0.5 + ROUTE_WAIT) == 4
    assert not w and w.held_bytes == 0 and w.next_expiry() is None


def test_a_full_queue_drops_the_newcomer_and_keeps_what_it_holds() -> None:
    w = RouteWait()
    for i in range(PER_DESTINATION):
        assert w.hold(0.0, b"d", bytes([i]))
    assert not w.hold(0.0, b"d", b"x")  # one destination cannot take more
    assert w.hold(0.0, b"e", b"x")  # another still can
    big = bytes(MAX_BYTES - w.held_bytes)
    assert w.hold(0.0, b"f", big, size=len(big), count=1)
    assert not w.hold(0.0, b"g", b"y")  # and no destination past the byte bound
    held, _ = w.take(0.0, b"d")
    assert [h.data for h in held] == [bytes([i]) for i in range(PER_DESTINATION)]


def test_a_batch_must_be_what_it_says() -> None:
    with pytest.raises(ValueError, match="datagrams"):
        RouteWait().hold(0.0, b"d", bytes(10), size=3, count=3)
    with pytest.raises(ValueError, match="datagrams"):
        RouteWait().hold(0.0, b"d", b"", count=0)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["hold", "take", "expire"]),
            st.sampled_from([b"a", b"b", b"c"]),
            st.integers(min_value=1, max_value=40_000),
            st.integers(min_value=1, max_value=30),
            st.floats(min_value=0.0, max_value=0.4),
        ),
        max_size=80,
    )
)
def test_the_bounds_hold_whatever_arrives(
    ops: list[tuple[str, bytes, int, int, float]],
) -> None:
    w = RouteWait()
    now = 0.0
    held: dict[bytes, list[bytes]] = {b"a": [], b"b": [], b"c": []}
    for op, dst, length, count, dt in ops:
        now += dt
        if op == "hold":
            data = os.urandom(min(length, 2_000)) * count
            size = len(data) // count
            if w.hold(now, dst, data, size=size, count=count):
                held[dst].append(data)
        elif op == "take":
            got, _ = w.take(now, dst)
            taken = [h.data for h in got]
            assert taken == held[dst][len(held[dst]) - len(taken) :]  # oldest first
            assert all(h.until > now for h in got)
            held[dst] = []
        else:
            w.expire(now)
        assert w.held_bytes <= MAX_BYTES
        assert all(w.held(d) <= PER_DESTINATION for d in held)


# -- in the mesh -------------------------------------------------------------------------


def test_a_known_destination_waits_and_a_made_up_one_does_not() -> None:
    run = build_mesh(line(3), seed=3, healing=False).run(3.0)
    run.sim.send_app(run.now, "n0000", "n0002", 7, b"hello")  # the e2e session
    run.run_for(1.0)
    a, b = run.node("n0000"), run.node("n0001")
    sends = [x for x in a.send_app(run.now, "n0002", 7, b"data") if isinstance(x, Send)]
    assert len(sends) == 1 and sends[0].addr == "n0001"
    real = sends[0].data
    made_up = real[:14] + os.urandom(8) + real[22:]  # RELAY: hdr 4, ttl 2, src 8, dst 8
    b.router.remove_neighbour(run.now, "n0002")  # no route to n0002 now
    assert not outgoing(b.handle(run.now, Datagram("n0000", made_up)))
    assert b.counters.get("no_route", 0) == 1 and b.counters.get("route_wait", 0) == 0
    assert not outgoing(b.handle(run.now, Datagram("n0000", real)))
    assert b.counters.get("route_wait", 0) == 1
    # nothing came for it in time: dropped and counted when the wait ends
    assert not outgoing(b.handle(run.now + ROUTE_WAIT, Timer(MeshTimer.ROUTE_WAIT)))
    assert b.counters["no_route"] == 2


def test_packets_sent_while_a_link_is_down_arrive_when_it_is_back() -> None:
    # n0000 - n0001 - n0002: the only path to n0002 is cut for 0.3 s. Packets sent in
    # that time used to die at n0001 (or at n0000, once the retraction got there); now
    # they wait and arrive as soon as the link is back.
    run = build_mesh(line(3, LinkSpec(latency=0.005)), seed=5)
    assert run.wait_converged(limit=5.0) is not None
    flow = run.add_flow("n0000", "n0002", 50.0)
    run.run_for(2.0)
    assert flow.arrivals
    t_cut = run.now
    run.at(t_cut, cut("n0001", "n0002"))
    run.at(t_cut + 0.3, restore("n0001", "n0002"))
    run.run_for(3.0)
    dead = [
        r[0]
        for r in run.sim.trace.select(kind="neighbour_dead")
        if r[1] == "n0001" and r[3].get("peer") == "n0002" and r[0] >= t_cut
    ]
    assert dead and dead[0] < t_cut + 0.25
    # Until n0001 found the link dead it sent into it: those packets are lost. Every
    # packet sent from then on until the link was back arrives (before: none of them).
    sent, got = flow.window(dead[0], t_cut + 0.3)
    assert sent >= 3 and got == sent, (sent, got)
    late = [at for seq, at in flow.arrivals.items() if t_cut <= flow.send_time(seq) < t_cut + 0.3]
    assert min(late) >= t_cut + 0.3  # they waited for the link, not some other way
    waited = sum(n.counters.get("route_wait_sent", 0) for n in run.nodes().values())
    assert waited >= got


def test_nothing_waits_longer_than_the_route_wait() -> None:
    # The link stays down: what waited is dropped after ROUTE_WAIT, and counted.
    run = build_mesh(line(3, LinkSpec(latency=0.005)), seed=6)
    assert run.wait_converged(limit=5.0) is not None
    flow = run.add_flow("n0000", "n0002", 20.0, stop=run.now + 1.5)
    run.run_for(1.0)
    t_cut = run.now
    run.at(t_cut, cut("n0001", "n0002"))
    run.run_for(4.0)
    nodes = run.nodes()
    waited = sum(n.counters.get("route_wait", 0) for n in nodes.values())
    assert waited > 0
    assert sum(n.counters.get("route_wait_sent", 0) for n in nodes.values()) == 0
    # every packet that waited was dropped when its wait ended, and counted
    assert sum(n.counters.get("no_route", 0) for n in nodes.values()) >= waited
    assert flow.window(t_cut, t_cut + 1.0)[1] == 0
