"""Payloads larger than one datagram: sealed as ONE DATA message (one AEAD seal, one
counter) and sent in DATA_FRAGMENTs, reassembled apart from handshake messages, never
repaired (a lost fragment loses its payload, counted), with bounded memory for what
nobody has authenticated."""

from __future__ import annotations

import math
import os
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.channel.helpers import Net, World, make_world
from x0tta6bl4.channel import constants as C
from x0tta6bl4.channel import wire
from x0tta6bl4.channel.endpoint import SecureEndpoint
from x0tta6bl4.channel.fragment import DataReassembler, data_segments
from x0tta6bl4.channel.timers import ChannelTimer, ChannelTimerKind
from x0tta6bl4.channel.wire import DataFragment, decode_data_fragment
from x0tta6bl4.errors import DecodeError, MessageTooLarge
from x0tta6bl4.sansio import (
    Action,
    Datagram,
    Deliver,
    PeerMoved,
    SetTimer,
    Timer,
    outgoing,
    segments,
)

CHUNK_1280 = 1280 - C.DATA_FRAGMENT_HEADER_SIZE


def split_data(receiver: int, counter: int, ct: bytes, max_datagram: int) -> list[bytes]:
    """A DATA message's fragments as separate datagrams."""
    return segments(*data_segments(receiver, counter, ct, max_datagram))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("large"), ["alpha", "beta", "gamma"])


def net_pair(world: World, seed: int, **net: float) -> tuple[Net, SecureEndpoint, SecureEndpoint]:
    n = Net(seed=seed, **net)  # type: ignore[arg-type]
    a = n.add("A", world.endpoint("alpha", seed=seed * 2 + 1))
    b = n.add("B", world.endpoint("beta", seed=seed * 2 + 2))
    return n, a, b


def established(
    world: World, seed: int, **net: float
) -> tuple[Net, SecureEndpoint, SecureEndpoint]:
    n, a, b = net_pair(world, seed, **net)
    n.send("A", "B", b"x")
    n.run(1.0)
    n.send("B", "A", b"y")
    n.run(2.0)
    assert a.peer("B").established and b.peer("A").established  # type: ignore[union-attr]
    return n, a, b


def got(n: Net, addr: str) -> list[bytes]:
    return [p for _, p in n.delivered[addr]]


def fragments_sent(n: Net, src: str) -> list[bytes]:
    return [d for _, s, _, d in n.sent if s == src and d[1] == C.MSG_DATA_FRAGMENT]


def expected_datagrams(size: int, max_datagram: int) -> int:
    if size <= max_datagram - C.DATA_OVERHEAD:
        return 1
    return math.ceil((size + C.AEAD_TAG_SIZE) / (max_datagram - C.DATA_FRAGMENT_HEADER_SIZE))


# --- over the simulator ------------------------------------------------------------------


def test_1400_and_60000_byte_payloads_arrive_intact(world: World) -> None:
    n, a, b = established(world, seed=1, dup=0.05, jitter=0.005)  # reordered, duplicated
    assert a.max_payload == C.MAX_DATA_PAYLOAD == 65535
    assert a.max_unfragmented_payload == 1280 - C.DATA_OVERHEAD
    big = [os.urandom(1400), os.urandom(60000), os.urandom(C.MAX_DATA_PAYLOAD)]
    for p in big:
        n.send("A", "B", p)
        n.send("B", "A", p[::-1])
        n.run(n.now + 0.2)
    n.run(n.now + C.REASSEMBLY_TIMEOUT)  # duplicated handshake fragments are held that long
    assert got(n, "B")[1:] == big  # each exactly once, whole (after the handshake's "x")
    assert got(n, "A")[1:] == [p[::-1] for p in big]
    assert max(len(d) for _, _, _, d in n.sent) <= 1280
    frags = fragments_sent(n, "A")
    assert len(frags) == sum(expected_datagrams(len(p), 1280) for p in big)
    # one DATA message per payload: every fragment of one payload carries one counter
    counters = [struct.unpack_from("<Q", d, 8)[0] for d in frags]
    assert len(set(counters)) == len(big)
    assert b.reassemblies_pending == 0 and "data_incomplete" not in b.counters


def test_a_payload_that_loses_a_fragment_is_dropped_cleanly_and_later_ones_arrive(
    world: World,
) -> None:
    n, _a, b = established(world, seed=2)
    dropped: list[bytes] = []

    def lose_one(src: object, dst: object, data: bytes) -> bytes | None:
        if data[1] == C.MSG_DATA_FRAGMENT and data[16] == 3 and not dropped:
            dropped.append(data)  # fragment 3 of the first payload
            return None
        return data

    n.tap = lose_one
    payloads = [os.urandom(20000 + i) for i in range(4)]
    for p in payloads:
        n.send("A", "B", p)
        n.run(n.now + 0.05)
    n.run(n.now + C.DATA_REASSEMBLY_TIMEOUT + 0.5)
    assert len(dropped) == 1
    assert got(n, "B")[1:] == payloads[1:]  # the others, whole and in order
    assert b.counters["data_incomplete"] == 1  # counted once, when its partial expired
    assert b.reassemblies_pending == 0
    # best effort, like an IP packet: nothing asked for again, nothing resent
    assert "nack_sent" not in b.counters and "fragments_resent" not in n.nodes["A"].counters
    dropped_events = [e.fields for _, node, e in n.events if node == "B" and e.kind == "dropped"]
    assert {"reason": "data_incomplete", "addr": "A"} in dropped_events


def test_large_payloads_over_a_lossy_path_arrive_whole_or_not_at_all(world: World) -> None:
    n, a, b = established(world, seed=3)
    n.sim.net.degrade("A", "B", loss=0.03)  # both directions of the one link
    sent = [os.urandom(3000 + 997 * i) for i in range(40)]
    for p in sent:
        n.send("A", "B", p)
        n.run(n.now + 0.05)
    n.run(n.now + 2.0)
    arrived = got(n, "B")[1:]
    assert set(arrived) <= set(sent) and len(arrived) == len(set(arrived))  # never garbled
    assert 0 < len(arrived) < len(sent)
    assert b.counters.get("data_incomplete", 0) >= 1
    assert b.reassemblies_pending == 0
    for ep in (a, b):
        assert not [k for k in ep.counters if k == "internal_error" or k.startswith("error:")]


def test_a_large_payload_queued_before_the_first_handshake_arrives(world: World) -> None:
    """Queued before any session, it goes out while our new session still travels in
    CONFIRM: a CONFIRM with an empty packet leads, so the responder holds the session
    when the fragments arrive."""
    n, _a, _b = net_pair(world, seed=4)
    big = os.urandom(30000)
    n.send("A", "B", big)
    n.send("A", "B", b"small")
    n.run(2.0)
    assert got(n, "B") == [big, b"small"]


def test_too_large_a_payload_still_raises(world: World) -> None:
    n, a, _b = established(world, seed=5)
    sent = len(n.sent)
    with pytest.raises(MessageTooLarge) as err:
        a.send(n.now, "B", bytes(C.MAX_DATA_PAYLOAD + 1))
    assert err.value.limit == C.MAX_DATA_PAYLOAD
    with pytest.raises(MessageTooLarge):
        a.send(n.now, "NEW", bytes(C.MAX_DATA_PAYLOAD + 1))
    assert a.peers() == ["B"] and len(n.sent) == sent  # nothing declared, nothing sent


def test_a_fragmented_payload_from_a_new_address_moves_the_peer(world: World) -> None:
    n, _a, b = established(world, seed=6)
    n.rebind("A", "A2")
    big = os.urandom(5000)
    n.send("A", "B", big)
    n.run(n.now + 0.5)
    assert got(n, "B")[-1] == big and b.peers() == ["A2"]
    assert [c for _, node, c in n.controls if node == "B" and isinstance(c, PeerMoved)] == [
        PeerMoved("A", "A2", "alpha")
    ]


def test_data_partials_take_no_room_from_a_handshake(world: World) -> None:
    """Lingering partial payloads of a peer (each lost a fragment) do not stop its next
    handshake: handshake messages are reassembled in their own pools."""
    n, a, b = established(world, seed=7)
    n.tap = lambda s, d, data: (
        None if data[1] == C.MSG_DATA_FRAGMENT and data[16] == 0 else data
    )  # every payload loses its first fragment
    for _ in range(C.MAX_DATA_REASSEMBLIES_PER_SESSION + 4):
        n.send("A", "B", os.urandom(9000))
    n.run(n.now + 0.01)
    assert b.reassemblies_pending >= C.MAX_DATA_REASSEMBLIES_PER_SESSION
    n.tap = None
    b2 = n.nodes["B"]
    assert b2 is b
    n.connect("A", "B")  # a fresh handshake: INIT and RESP in FRAGMENTs
    n.run(n.now + 0.5)
    info = b.peer("A")
    assert info is not None and info.handshakes == 2
    assert a.peer("B").handshakes == 2  # type: ignore[union-attr]


# --- sizes around the fragment boundaries (endpoints driven directly) ----------------------


_PAIRS: dict[tuple[int, int], tuple[SecureEndpoint, SecureEndpoint]] = {}


def direct_pair(world: World, max_datagram: int) -> tuple[SecureEndpoint, SecureEndpoint]:
    key = (id(world), max_datagram)
    if key not in _PAIRS:
        n = Net(seed=max_datagram)
        a = n.add("A", world.endpoint("alpha", seed=1, max_datagram=max_datagram))
        b = n.add("B", world.endpoint("beta", seed=2, max_datagram=max_datagram))
        n.send("A", "B", b"x")
        n.run(1.0)
        n.send("B", "A", b"y")
        n.run(2.0)
        _PAIRS[key] = (a, b)
    return _PAIRS[key]


def boundary_sizes(max_datagram: int) -> st.SearchStrategy[int]:
    one = max_datagram - C.DATA_OVERHEAD
    chunk = max_datagram - C.DATA_FRAGMENT_HEADER_SIZE
    edges = [0, 1, one - 1, one, one + 1, one + 2]
    for k in (2, 3, 4, 51, 52):
        edge = k * chunk - C.AEAD_TAG_SIZE  # the ciphertext fills k chunks exactly
        edges += [edge - 1, edge, edge + 1]
    edges += [C.MAX_DATA_PAYLOAD - 1, C.MAX_DATA_PAYLOAD]
    edges = [e for e in edges if 0 <= e <= C.MAX_DATA_PAYLOAD]
    return st.one_of(st.sampled_from(edges), st.integers(0, C.MAX_DATA_PAYLOAD))


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from([C.MIN_DATAGRAM, 1229, 1280]).flatmap(
        lambda md: st.tuples(st.just(md), boundary_sizes(md), st.randoms(use_true_random=False))
    )
)
def test_any_size_up_to_the_maximum_arrives_whole_in_any_order(
    world: World, case: tuple[int, int, random.Random]
) -> None:
    max_datagram, size, rnd = case
    a, b = direct_pair(world, max_datagram)
    payload = rnd.randbytes(size)
    datagrams = [d for _, d in outgoing(a.send(3.0, "B", payload))]
    assert len(datagrams) == expected_datagrams(size, max_datagram)
    assert all(len(d) <= max_datagram for d in datagrams)
    if len(datagrams) == 1:
        assert datagrams[0][1] == C.MSG_DATA and len(datagrams[0]) == size + C.DATA_OVERHEAD
    rnd.shuffle(datagrams)
    datagrams += rnd.sample(datagrams, k=min(2, len(datagrams)))  # and some twice
    delivered = [
        x.payload
        for d in datagrams
        for x in b.handle(3.0, Datagram("A", d))
        if isinstance(x, Deliver)
    ]
    assert delivered == ([payload] if size else [])  # an empty one is a keepalive
    assert b.reassemblies_pending == 0


def test_every_bit_flip_of_a_data_fragment_is_dropped_and_the_next_payload_arrives(
    world: World,
) -> None:
    n, a, b = established(world, seed=8)
    now = n.now
    rnd = random.Random(8)
    first_fragment_bits = list(range(C.DATA_FRAGMENT_HEADER_SIZE * 8))
    first_fragment_bits += rnd.sample(range(C.DATA_FRAGMENT_HEADER_SIZE * 8, 1280 * 8), 48)
    for bit in first_fragment_bits:
        now += 0.3  # the partials a flip leaves behind grow quiet enough to be evicted
        payload = os.urandom(1400)
        frags = [d for _, d in outgoing(a.send(now, "B", payload))]
        frags = [d for d in frags if d[1] == C.MSG_DATA_FRAGMENT]
        assert len(frags) == 2
        flipped = bytearray(frags[0])
        flipped[bit // 8] ^= 1 << (bit % 8)
        out = b.handle(now, Datagram("A", bytes(flipped))) + b.handle(now, Datagram("A", frags[1]))
        assert not [x for x in out if isinstance(x, Deliver)], bit
    now += 0.3
    last = os.urandom(3000)
    out = []
    for _, d in outgoing(a.send(now, "B", last)):
        out += b.handle(now, Datagram("A", d))
    assert [x.payload for x in out if isinstance(x, Deliver)] == [last]
    assert not [k for k in b.counters if k == "internal_error" or k.startswith("error:")]


# --- what nobody authenticated may cost ------------------------------------------------------


def test_fragments_for_no_session_or_replayed_ones_keep_nothing(world: World) -> None:
    n, a, b = established(world, seed=9)
    big = os.urandom(4000)
    frags = [d for _, d in outgoing(a.send(n.now, "B", big))]
    for d in frags:
        b.handle(n.now, Datagram("A", d))
    before = b.reassemblies_pending
    # the same fragments again (a replay), and fragments naming a session nobody holds
    for d in frags:
        b.handle(n.now, Datagram("X", d))
    unknown = bytearray(frags[0])
    unknown[4:8] = bytes(x ^ 0x5A for x in unknown[4:8])
    b.handle(n.now, Datagram("X", bytes(unknown)))
    assert b.reassemblies_pending == before == 0
    assert b.counters["replay"] >= len(frags) and b.counters["unknown_index"] >= 1


def test_forged_fragments_for_a_real_session_are_bounded_and_cannot_keep_it_out(
    world: World,
) -> None:
    """Someone on the path, who sees a session's receiver index, can plant partials for
    it: at most MAX_DATA_REASSEMBLIES_PER_SESSION, and each is evicted once it has been
    quiet for DATA_REASSEMBLY_MIN_EVICT_AGE, so a real payload gets in."""
    n, a, b = established(world, seed=10)
    real = [d for _, d in outgoing(a.send(n.now, "B", os.urandom(2000)))]
    index = struct.unpack_from("<I", real[0], 4)[0]
    base = struct.unpack_from("<Q", real[0], 8)[0] + 100
    now = n.now
    for i in range(50):
        forged = DataFragment(index, base + i, 0, 40, 60000, os.urandom(500))
        b.handle(now, Datagram("X", wire.encode(forged)))
    assert b.reassemblies_pending == C.MAX_DATA_REASSEMBLIES_PER_SESSION
    assert b.counters["reassembly_full"] == 50 - C.MAX_DATA_REASSEMBLIES_PER_SESSION
    later = now + C.DATA_REASSEMBLY_MIN_EVICT_AGE
    big = os.urandom(2000)
    out: list[Action] = []
    for _, d in outgoing(a.send(later, "B", big)):
        out += b.handle(later, Datagram("A", d))
    assert [x.payload for x in out if isinstance(x, Deliver)] == [big]
    assert b.counters["reassembly_evicted"] == 1


# --- the reassembler and the codec on their own ---------------------------------------------


def frag(index: int, counter: int, i: int, count: int, length: int, chunk: bytes) -> DataFragment:
    return DataFragment(index, counter, i, count, length, chunk)


def test_data_reassembler_bounds_and_its_one_timer() -> None:
    def reassembler(**limits: int) -> DataReassembler:
        kw: dict[str, int] = {"max_per_session": 8, "max_partials": 64, "max_bytes": 1 << 20}
        return DataReassembler(timeout=1.0, min_evict_age=0.25, **{**kw, **limits})

    def part(counter: int, session: int = 1) -> DataFragment:
        return frag(session, counter, 0, 2, 100, b"a" * 60)  # declares 116 bytes

    # per session: a new partial may take only one quiet for min_evict_age
    r = reassembler(max_per_session=2)
    first = r.add(0.0, "s", part(0))
    assert first.arm == 1.0 and first.message is None  # the one timer, set once
    assert r.add(0.1, "s", part(1)).arm is None
    assert r.add(0.2, "s", part(2)).refused  # both too fresh to evict
    assert r.add(0.2, "s", part(0, session=2)).message is None  # another session: room
    evicting = r.add(0.3, "s", part(2))
    assert evicting.evicted == 1 and len(r) == 3  # session 1's quietest (counter 0) went
    # in number, and in declared bytes, over every session
    r = reassembler(max_partials=2)
    r.add(0.0, "s", part(0, 1))
    r.add(0.0, "s", part(0, 2))
    assert r.add(0.1, "s", part(0, 3)).refused and r.add(0.3, "s", part(0, 3)).evicted == 1
    r = reassembler(max_bytes=300)
    r.add(0.0, "s", part(0, 1))
    r.add(0.0, "s", part(0, 2))
    assert r.declared_bytes == 232
    assert r.add(0.1, "s", part(0, 3)).refused and r.add(0.3, "s", part(0, 3)).evicted == 1
    assert r.declared_bytes == 232
    # completion rebuilds the DATA message; duplicates and contradictions
    r = reassembler()
    r.add(0.0, "s", frag(1, 2, 0, 2, 100, b"c" * 60))
    r.add(0.5, "t", frag(1, 3, 0, 2, 100, b"d" * 60))
    assert r.add(0.1, "s", frag(1, 2, 0, 2, 100, b"c" * 60)).duplicate
    with pytest.raises(DecodeError):
        r.add(0.1, "s", frag(1, 2, 0, 2, 100, b"X" * 60))
    with pytest.raises(DecodeError):
        r.add(0.1, "s", frag(1, 2, 1, 3, 100, b"c" * 56))  # another count
    done = r.add(0.2, "u", frag(1, 2, 1, 2, 100, b"c" * 56))
    assert done.message == wire.data_prefix(1) + (2).to_bytes(8, "little") + b"c" * 116
    # the timer: what is due goes, and it is set again for the next
    gone, arm = r.expire(1.0)
    assert gone == [] and arm == pytest.approx(1.5)  # counter 2 completed; 3 is next
    gone, arm = r.expire(1.5)
    assert gone == ["t"] and arm is None and len(r) == 0 and r.declared_bytes == 0


def test_data_fragment_codec() -> None:
    ct = os.urandom(3000 + C.AEAD_TAG_SIZE)
    datagrams = split_data(7, 2**64 - 1, ct, 1280)
    assert len(datagrams) == math.ceil(len(ct) / CHUNK_1280)
    decoded = [decode_data_fragment(d) for d in datagrams]
    assert b"".join(f.chunk for f in decoded) == ct
    assert {(f.receiver_index, f.counter, f.count, f.length) for f in decoded} == {
        (7, 2**64 - 1, len(datagrams), 3000)
    }
    assert [wire.encode(f) for f in decoded] == datagrams
    assert wire.decode(datagrams[0]) == decoded[0]
    with pytest.raises(ValueError):
        split_data(7, 0, os.urandom(100), 1280)  # fits one datagram: sent whole
    with pytest.raises(MessageTooLarge):
        split_data(7, 0, bytes(C.MAX_DATA_PAYLOAD + 1 + C.AEAD_TAG_SIZE), 1280)
    bad = [
        DataFragment(1, 0, 0, 1, 10, b"x"),  # one fragment is no fragment
        DataFragment(1, 0, 2, 2, 10, b"x"),  # index past count
        DataFragment(1, 0, 0, 2, 10, bytes(27)),  # chunk longer than the ciphertext
        DataFragment(1, 0, 0, 2, 10, b""),
        DataFragment(1, 2**64, 0, 2, 10, b"x"),
    ]
    for f in bad:
        with pytest.raises(DecodeError):
            wire.encode(f)
    with pytest.raises(DecodeError):
        decode_data_fragment(datagrams[0][: C.DATA_FRAGMENT_HEADER_SIZE])


def test_the_data_reassembly_timer_is_ours(world: World) -> None:
    _n, _a, b = established(world, seed=11)
    key = ChannelTimer(b.timer_namespace, ChannelTimerKind.DATA_REASSEMBLY, None)
    assert b.handle(50.0, Timer(key)) == []  # nothing held: nothing to do, no drop
    assert "unknown_timer" not in b.counters
    out = b.handle(50.0, Datagram("A", split_data(1, 0, bytes(2000), 1280)[0]))
    assert not [x for x in out if isinstance(x, SetTimer)]  # no session 1: nothing kept
