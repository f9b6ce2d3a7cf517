"""``SecureEndpoint.handle_batch``: the datagrams a UDP GRO receive returns together.
When they are every fragment of one DATA message, in order, the message is rebuilt at
once; whatever else they are, the outcome is what ``handle`` gives one by one."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.channel.helpers import World, make_world
from tests.channel.test_large_payloads import established
from x0tta6bl4.channel import constants as C
from x0tta6bl4.channel.endpoint import SecureEndpoint
from x0tta6bl4.sansio import Datagram, Deliver, outgoing


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("batch"), ["alpha", "beta"])


def _fragments(a: SecureEndpoint, now: float, payload: bytes) -> list[bytes]:
    out = [d for _, d in outgoing(a.send(now, "B", payload))]
    assert len(out) >= 2 and all(d[1] == C.MSG_DATA_FRAGMENT for d in out)
    return out


def _delivered(actions: list) -> list[bytes]:
    return [x.payload for x in actions if isinstance(x, Deliver)]


def test_a_whole_message_in_order_opens_at_once(world: World) -> None:
    n, a, b = established(world, 1)
    payload = random.Random(1).randbytes(60_000)
    frags = _fragments(a, n.now, payload)
    assert _delivered(b.handle_batch(n.now, "A", frags)) == [payload]
    # the same batch again is a replay: nothing is delivered twice
    assert _delivered(b.handle_batch(n.now, "A", frags)) == []


def test_a_batch_that_is_not_one_whole_message_takes_the_careful_way(world: World) -> None:
    n, a, b = established(world, 2)
    p1, p2 = b"\x01" * 5000, b"\x02" * 5000
    f1, f2 = _fragments(a, n.now, p1), _fragments(a, n.now, p2)
    # two messages interleaved, one fragment late: both still arrive whole
    mixed = [f1[0], f2[0], *f1[1:], *f2[1:]]
    assert sorted(_delivered(b.handle_batch(n.now, "A", mixed))) == [p1, p2]
    # a tampered fragment: the whole fails authentication, nothing is delivered
    f3 = _fragments(a, n.now, b"\x03" * 5000)
    bad = [*f3[:-1], f3[-1][:-1] + bytes([f3[-1][-1] ^ 1])]
    assert _delivered(b.handle_batch(n.now, "A", bad)) == []
    # a missing fragment: nothing yet, the rest completes it later
    f4 = _fragments(a, n.now, b"\x04" * 5000)
    assert _delivered(b.handle_batch(n.now, "A", f4[1:])) == []
    assert _delivered(b.handle(n.now, Datagram("A", f4[0]))) == [b"\x04" * 5000]


@settings(max_examples=40, deadline=None)
@given(
    size=st.integers(min_value=1300, max_value=20_000),
    seed=st.integers(min_value=0, max_value=2**16),
    missing=st.booleans(),
)
def test_any_order_and_any_loss_delivers_the_payload_once_or_not_at_all(
    world: World, size: int, seed: int, missing: bool
) -> None:
    n, a, b = established(world, 3)
    payload = bytes((i * 7 + seed) % 251 for i in range(size))
    frags = _fragments(a, n.now, payload)
    rng = random.Random(seed)
    late = frags.pop(rng.randrange(len(frags))) if missing else None
    rng.shuffle(frags)
    first = _delivered(b.handle_batch(n.now, "A", frags))
    assert first == ([] if missing else [payload])
    if late is not None:  # the straggler completes it, one by one
        assert _delivered(b.handle(n.now, Datagram("A", late))) == [payload]
    # and nothing arrives twice, whichever way it comes again
    assert _delivered(b.handle_batch(n.now, "A", frags)) == []


def test_a_batch_read_past_a_relay_header_opens_the_same(world: World) -> None:
    # The mesh hands over RELAY datagrams and the offset of ours in them, not copies.
    n, a, b = established(world, 3)
    head = b"R" * 22
    payload = random.Random(3).randbytes(30_000)
    frags = [head + f for f in _fragments(a, n.now, payload)]
    assert _delivered(b.handle_batch(n.now, "A", frags, 22)) == [payload]
    # not one whole message (a fragment missing): the careful way, still past the header
    p2 = b"\x05" * 5000
    f2 = [head + f for f in _fragments(a, n.now, p2)]
    assert _delivered(b.handle_batch(n.now, "A", f2[1:], 22)) == []
    assert _delivered(b.handle_batch(n.now, "A", f2[:1], 22)) == [p2]
    # a header of the wrong length shifts every fragment: nothing opens
    f3 = [b"R" + f for f in _fragments(a, n.now, b"\x06" * 5000)]
    assert _delivered(b.handle_batch(n.now, "A", f3, 22)) == []
    with pytest.raises(ValueError, match="negative"):
        b.handle_batch(n.now, "A", frags, -1)


def test_identity_is_the_peer_records_identity(world: World) -> None:
    _, _, b = established(world, 4)
    info = b.peer("A")
    assert info is not None and info.identity is not None
    assert b.identity("A") is info.identity
    assert b.identity("nobody") is None
