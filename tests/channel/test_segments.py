"""``SecureEndpoint.handle_segments``: the datagrams a UDP GRO receive returns together, as
one buffer of equal-sized segments. When they are every fragment of one DATA message, in
order, the message is rebuilt at once; whatever else they are, the outcome is what
``handle`` gives one by one. And the sender's side: ``data_segments`` lays a large
message's fragments out in one buffer, each after the layer below's header."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.channel.helpers import World, make_world
from tests.channel.test_large_payloads import established
from x0tta6bl4.channel import constants as C
from x0tta6bl4.channel.endpoint import SecureEndpoint
from x0tta6bl4.channel.fragment import data_segments
from x0tta6bl4.channel.wire import decode_data_fragment
from x0tta6bl4.sansio import Datagram, Deliver, SendSegments, outgoing, segments


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("segments"), ["alpha", "beta"])


def _fragments(a: SecureEndpoint, now: float, payload: bytes) -> list[bytes]:
    actions = a.send(now, "B", payload)
    assert [type(x) for x in actions] == [SendSegments]  # one buffer for the message
    out = [d for _, d in outgoing(actions)]
    assert len(out) >= 2 and all(d[1] == C.MSG_DATA_FRAGMENT for d in out)
    return out


def _buffer(frags: list[bytes]) -> tuple[bytes, int]:
    """``frags`` as a GRO batch: back to back, every one but the last the first's size."""
    size = len(frags[0])
    assert all(len(f) == size for f in frags[:-1]) and len(frags[-1]) <= size
    return b"".join(frags), size


def _full(a: SecureEndpoint, now: float, fragments: int) -> int:
    """A payload length whose message fills ``fragments`` fragments exactly (so that any
    order of them is a valid GRO batch: no short one in the middle)."""
    probe = _fragments(a, now, bytes(5000))
    chunk = len(probe[0]) - C.DATA_FRAGMENT_HEADER_SIZE
    return fragments * chunk - C.AEAD_TAG_SIZE


def _delivered(actions: list) -> list[bytes]:
    return [x.payload for x in actions if isinstance(x, Deliver)]


def test_a_whole_message_in_order_opens_at_once(world: World) -> None:
    n, a, b = established(world, 1)
    payload = random.Random(1).randbytes(60_000)
    data, size = _buffer(_fragments(a, n.now, payload))
    assert _delivered(b.handle_segments(n.now, "A", data, size)) == [payload]
    # the same batch again is a replay: nothing is delivered twice
    assert _delivered(b.handle_segments(n.now, "A", data, size)) == []


def test_a_batch_that_is_not_one_whole_message_takes_the_careful_way(world: World) -> None:
    n, a, b = established(world, 2)
    length = _full(a, n.now, 4)
    p1, p2 = b"\x01" * length, b"\x02" * length
    f1, f2 = _fragments(a, n.now, p1), _fragments(a, n.now, p2)
    # two messages interleaved, one fragment late: both still arrive whole
    mixed = [f1[0], f2[0], *f1[1:], *f2[1:]]
    assert sorted(_delivered(b.handle_segments(n.now, "A", *_buffer(mixed)))) == [p1, p2]
    # a tampered fragment: the whole fails authentication, nothing is delivered
    f3 = _fragments(a, n.now, b"\x03" * 5000)
    bad = [*f3[:-1], f3[-1][:-1] + bytes([f3[-1][-1] ^ 1])]
    assert _delivered(b.handle_segments(n.now, "A", *_buffer(bad))) == []
    # a missing fragment: nothing yet, the rest completes it later
    f4 = _fragments(a, n.now, b"\x04" * 5000)
    assert _delivered(b.handle_segments(n.now, "A", *_buffer(f4[1:]))) == []
    assert _delivered(b.handle(n.now, Datagram("A", f4[0]))) == [b"\x04" * 5000]


@settings(max_examples=40, deadline=None)
@given(
    fragments=st.integers(min_value=2, max_value=14),
    seed=st.integers(min_value=0, max_value=2**16),
    missing=st.booleans(),
)
def test_any_order_and_any_loss_delivers_the_payload_once_or_not_at_all(
    world: World, fragments: int, seed: int, missing: bool
) -> None:
    n, a, b = established(world, 3)
    payload = bytes((i * 7 + seed) % 251 for i in range(_full(a, n.now, fragments)))
    frags = _fragments(a, n.now, payload)
    rng = random.Random(seed)
    late = frags.pop(rng.randrange(len(frags))) if missing else None
    rng.shuffle(frags)
    first = _delivered(b.handle_segments(n.now, "A", *_buffer(frags)))
    assert first == ([] if missing else [payload])
    if late is not None:  # the straggler completes it, one by one
        assert _delivered(b.handle(n.now, Datagram("A", late))) == [payload]
    # and nothing arrives twice, whichever way it comes again
    assert _delivered(b.handle_segments(n.now, "A", *_buffer(frags))) == []


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**16),
    where=st.integers(min_value=0, max_value=C.DATA_FRAGMENT_HEADER_SIZE - 1),
    flip=st.integers(min_value=1, max_value=255),
)
def test_one_changed_header_byte_in_any_fragment_is_never_taken_for_the_message(
    world: World, seed: int, where: int, flip: int
) -> None:
    # Every header column is checked, in every fragment: a fragment that names another
    # session, counter, index, count or length sends the batch the careful way, where
    # it cannot complete the message (nor anything else).
    n, a, b = established(world, 5)
    payload = random.Random(seed).randbytes(_full(a, n.now, 6))
    frags = _fragments(a, n.now, payload)
    victim = random.Random(seed).randrange(len(frags))
    d = bytearray(frags[victim])
    d[where] ^= flip
    frags[victim] = bytes(d)
    assert _delivered(b.handle_segments(n.now, "A", *_buffer(frags))) == []


def test_a_batch_read_past_a_relay_header_opens_the_same(world: World) -> None:
    # The mesh hands over its RELAY datagrams and the offset of ours in them, not copies.
    n, a, b = established(world, 3)
    head = b"R" * 22
    payload = random.Random(3).randbytes(30_000)
    frags = [head + f for f in _fragments(a, n.now, payload)]
    assert _delivered(b.handle_segments(n.now, "A", *_buffer(frags), 22)) == [payload]
    # not one whole message (a fragment missing): the careful way, still past the header
    p2 = b"\x05" * 5000
    f2 = [head + f for f in _fragments(a, n.now, p2)]
    assert _delivered(b.handle_segments(n.now, "A", *_buffer(f2[1:]), 22)) == []
    assert _delivered(b.handle_segments(n.now, "A", *_buffer(f2[:1]), 22)) == [p2]
    # a header of the wrong length shifts every fragment: nothing opens
    f3 = [b"R" + f for f in _fragments(a, n.now, b"\x06" * 5000)]
    assert _delivered(b.handle_segments(n.now, "A", *_buffer(f3), 22)) == []
    with pytest.raises(ValueError, match="offset -1"):
        b.handle_segments(n.now, "A", *_buffer(frags), -1)
    with pytest.raises(ValueError, match="size 0"):
        b.handle_segments(n.now, "A", b"x", 0)


@settings(max_examples=60, deadline=None)
@given(
    length=st.integers(min_value=1300, max_value=C.MAX_DATA_PAYLOAD),
    mtu=st.sampled_from([C.MIN_DATAGRAM, 1280, 1422, 9000]),
    prefix=st.binary(max_size=40),
)
def test_data_segments_are_the_fragments_in_order_each_after_the_prefix(
    length: int, mtu: int, prefix: bytes
) -> None:
    ct = os.urandom(length + C.AEAD_TAG_SIZE)
    if length + C.AEAD_TAG_SIZE <= mtu - C.DATA_FRAGMENT_HEADER_SIZE:
        with pytest.raises(ValueError, match="fits one datagram"):
            data_segments(7, 9, ct, mtu, prefix)
        return
    buf, size = data_segments(7, 9, ct, mtu, prefix)
    datagrams = segments(buf, size)
    assert size == len(prefix) + mtu and all(len(d) == size for d in datagrams[:-1])
    assert all(d[: len(prefix)] == prefix for d in datagrams)
    frags = [decode_data_fragment(d[len(prefix) :]) for d in datagrams]
    assert b"".join(f.chunk for f in frags) == ct
    assert [f.index for f in frags] == list(range(len(frags)))
    assert {(f.receiver_index, f.counter, f.count, f.length) for f in frags} == {
        (7, 9, len(frags), length)
    }


def test_identity_is_the_peer_records_identity(world: World) -> None:
    _, _, b = established(world, 4)
    info = b.peer("A")
    assert info is not None and info.identity is not None
    assert b.identity("A") is info.identity
    assert b.identity("nobody") is None
