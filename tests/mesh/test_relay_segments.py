"""RELAY datagrams received together (a UDP GRO batch, one buffer of equal-sized
segments): forwarded in one buffer with their TTL lowered, or opened at once at the
destination; from anyone but a live neighbour, dropped; and whatever the batch holds,
what goes out is what the datagrams one by one would give."""

from __future__ import annotations

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from x0tta6bl4.channel import constants as C
from x0tta6bl4.mesh.node import RELAY_OVERHEAD, MeshNode, MeshTimer
from x0tta6bl4.mesh.routewait import ROUTE_WAIT
from x0tta6bl4.sansio import Datagram, Deliver, SendSegments, Timer, outgoing
from x0tta6bl4.sim import Simulator, line
from x0tta6bl4.sim.meshrun import build_mesh


def _line3() -> tuple[Simulator, dict[str, MeshNode]]:
    run = build_mesh(line(3), seed=4, healing=False).run(3.0)
    run.sim.send_app(run.now, "n0000", "n0002", 7, b"hello")  # the e2e session
    return run.run_for(1.0).sim, run.nodes()


_SIM, _NODES = _line3()  # relaying changes no state but counters: one line for all tests


def _message(size: int) -> SendSegments:
    out = _NODES["n0000"].send_app(_SIM.now, "n0002", 7, bytes(i % 251 for i in range(size)))
    assert [type(x) for x in out] == [SendSegments]
    seg = out[0]
    assert isinstance(seg, SendSegments)
    return seg


def test_a_batch_is_relayed_then_opened_whole() -> None:
    sim, nodes = _line3()
    a, b, c = nodes["n0000"], nodes["n0001"], nodes["n0002"]
    big = bytes(i % 251 for i in range(50_000))
    out = a.send_app(sim.now, "n0002", 7, big)
    # one action and one buffer for the message's datagrams: one GSO send
    assert [type(x) for x in out] == [SendSegments]
    sent = out[0]
    assert isinstance(sent, SendSegments) and sent.addr == "n0001"
    to_b = sent.datagrams()
    assert len(to_b) > 30
    relayed = b.handle_segments(sim.now, "n0000", bytes(sent.data), sent.size)
    assert [type(x) for x in relayed] == [SendSegments]
    fwd = relayed[0]
    assert isinstance(fwd, SendSegments) and fwd.addr == "n0002" and fwd.size == sent.size
    to_c = fwd.datagrams()
    assert len(to_c) == len(to_b)
    assert all(
        int.from_bytes(y[4:6], "big") == int.from_bytes(x[4:6], "big") - 1
        for x, y in zip(to_b, to_c, strict=True)
    )
    assert all(x[6:] == y[6:] for x, y in zip(to_b, to_c, strict=True))  # unopened
    got = c.handle_segments(sim.now, "n0001", bytes(fwd.data), fwd.size)
    assert [(d.src, d.port, d.payload) for d in got if isinstance(d, Deliver)] == [
        ("n0000", 7, big)
    ]


def test_a_batch_from_a_stranger_is_dropped() -> None:
    b = _NODES["n0001"]
    msg = _message(20_000)
    before = b.counters.get("relay_from_stranger", 0)
    assert b.handle_segments(_SIM.now, "somewhere-else", bytes(msg.data), msg.size) == []
    assert b.counters["relay_from_stranger"] == before + msg.count
    # a batch with a non-data inner message goes the careful way and is refused there
    batch = msg.datagrams()
    odd = [*batch[:-1], batch[-1][:RELAY_OVERHEAD] + b"\x01\x01" + batch[-1][RELAY_OVERHEAD + 2 :]]
    bad_before = b.counters.get("bad_relay", 0)
    relayed = b.handle_segments(_SIM.now, "n0000", b"".join(odd), msg.size)
    assert len(outgoing(relayed)) == len(batch) - 1
    assert b.counters["bad_relay"] == bad_before + 1


def test_a_batch_of_mixed_ttls_lowers_each_its_own() -> None:
    b = _NODES["n0001"]
    msg = _message(20_000)
    batch = msg.datagrams()
    ttls = [9, 2, 1, *([5] * (len(batch) - 3))]
    mixed = [d[:4] + t.to_bytes(2, "big") + d[6:] for d, t in zip(batch, ttls, strict=True)]
    before = b.counters.get("ttl_expired", 0)
    relayed = [
        d for _, d in outgoing(b.handle_segments(_SIM.now, "n0000", b"".join(mixed), msg.size))
    ]
    # the one that arrived with TTL 1 dies here; the others go on, one hop lower each
    assert [int.from_bytes(d[4:6], "big") for d in relayed] == [t - 1 for t in ttls if t > 1]
    assert b.counters["ttl_expired"] == before + 1


def test_a_whole_batch_at_its_last_hop_dies_counted() -> None:
    b = _NODES["n0001"]
    msg = _message(20_000)
    last = [d[:4] + b"\x00\x01" + d[6:] for d in msg.datagrams()]
    before = b.counters.get("ttl_expired", 0)
    assert b.handle_segments(_SIM.now, "n0000", b"".join(last), msg.size) == []
    assert b.counters["ttl_expired"] == before + msg.count


def _one_by_one(node: MeshNode, addr: str, datagrams: list[bytes]) -> list[tuple[object, bytes]]:
    out: list[tuple[object, bytes]] = []
    for d in datagrams:
        out += outgoing(node.handle(_SIM.now, Datagram(addr, d)))
    return out


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**16),
    where=st.integers(min_value=0, max_value=RELAY_OVERHEAD + 1),
    flip=st.integers(min_value=1, max_value=255),
    size=st.integers(min_value=3_000, max_value=40_000),
)
def test_a_relayed_batch_gives_what_its_datagrams_one_by_one_give(
    seed: int, where: int, flip: int, size: int
) -> None:
    # One header byte changed in one datagram (TTL, either end, the inner type, the
    # RELAY header itself): the batch may no longer be taken as one, and then each
    # datagram goes its own way, exactly as if it had come alone.
    b = _NODES["n0001"]
    msg = _message(size)
    batch = msg.datagrams()
    victim = random.Random(seed).randrange(len(batch))
    d = bytearray(batch[victim])
    d[where] ^= flip
    batch[victim] = bytes(d)
    together = outgoing(b.handle_segments(_SIM.now, "n0000", b"".join(batch), msg.size))
    assert together == _one_by_one(b, "n0000", batch)


def test_a_large_message_without_a_route_counts_every_datagram() -> None:
    sim, nodes = _line3()
    a = nodes["n0000"]
    a.router.remove_neighbour(sim.now, "n0001")  # n0002 is now out of reach
    before = a.counters.get("no_route", 0)
    out = a.send_app(sim.now, "n0002", 7, bytes(20_000))
    assert not outgoing(out)
    # one per datagram of the message: port 2 + payload + tag, in chunks of a fragment;
    # each waits for a route (routewait.py), and no route came in time
    chunk = a.e2e_max_datagram - C.DATA_FRAGMENT_HEADER_SIZE
    n = math.ceil((2 + 20_000 + C.AEAD_TAG_SIZE) / chunk)
    assert a.counters["route_wait"] == n
    assert not outgoing(a.handle(sim.now + ROUTE_WAIT, Timer(MeshTimer.ROUTE_WAIT)))
    assert a.counters["no_route"] == before + n


def _short_tail_sizes() -> list[int]:
    """Payload sizes whose last fragment carries fewer bytes than a whole DATA message's
    header and tag: legitimate datagrams shorter than any unfragmented DATA."""
    sizes = [s for s in range(20_000, 21_600) if len(_message(s).datagrams()[-1]) < (
        RELAY_OVERHEAD + C.DATA_OVERHEAD)]  # fmt: skip
    assert sizes, "no size in the range ends in a short fragment"
    return sizes


def test_a_message_whose_last_fragment_is_tiny_crosses_a_relay() -> None:
    # Found with a TUN MTU of 9,000: about one super-packet in thirty ended in a
    # fragment of 1-11 payload bytes, the relay dropped it as malformed (bad_relay),
    # and TCP through the overlay fell from ~2,000 to a few hundred Mbit/s.
    sim, nodes = _line3()
    a, b, c = nodes["n0000"], nodes["n0001"], nodes["n0002"]
    for size in _short_tail_sizes()[:: max(1, len(_short_tail_sizes()) // 4)]:
        payload = bytes(i % 251 for i in range(size))
        (sent,) = a.send_app(sim.now, "n0002", 7, payload)
        assert isinstance(sent, SendSegments)
        bad = b.counters.get("bad_relay", 0)
        # as one GRO batch, and one datagram at a time
        relayed = outgoing(b.handle_segments(sim.now, "n0000", bytes(sent.data), sent.size))
        assert len(relayed) == sent.count
        assert relayed == _one_by_one(b, "n0000", sent.datagrams())
        assert b.counters.get("bad_relay", 0) == bad
        got: list[Deliver] = []
        for _, d in relayed:
            got += [x for x in c.handle(sim.now, Datagram("n0001", d)) if isinstance(x, Deliver)]
        assert [(d.src, d.port, d.payload) for d in got] == [("n0000", 7, payload)]
        # and the destination takes the same message as one batch too
        (again,) = a.send_app(sim.now, "n0002", 7, payload)
        assert isinstance(again, SendSegments)
        (fwd,) = b.handle_segments(sim.now, "n0000", bytes(again.data), again.size)
        assert isinstance(fwd, SendSegments)
        whole = c.handle_segments(sim.now, "n0001", bytes(fwd.data), fwd.size)
        assert [(d.src, d.port, d.payload) for d in whole if isinstance(d, Deliver)] == [
            ("n0000", 7, payload)
        ]
