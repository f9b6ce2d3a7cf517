"""Fragmentation: split/reassemble, bounds, eviction and timeouts."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from x0tta6bl4.channel import constants as C
from x0tta6bl4.channel.fragment import Reassembler, split
from x0tta6bl4.channel.wire import Fragment, encode
from x0tta6bl4.errors import DecodeError, MessageTooLarge


def feed(r: Reassembler, src: object, datagrams: list[bytes], now: float = 0.0) -> bytes | None:
    out = None
    for d in datagrams:
        added = r.add(now, src, d)
        if added.message is not None:
            out = added.message
    return out


@settings(max_examples=60, deadline=None)
@given(
    st.binary(min_size=1, max_size=9000),
    st.integers(C.MIN_DATAGRAM, 1500),
    st.randoms(use_true_random=False),
)
def test_split_reassemble_any_order(msg: bytes, mtu: int, rnd: random.Random) -> None:
    parts = split(msg, 42, mtu)
    assert all(len(p) <= mtu for p in parts)
    if len(msg) <= mtu:
        assert parts == [msg]
        return
    rnd.shuffle(parts)
    parts = parts + parts[:1]  # a duplicate too
    r = Reassembler()
    assert feed(r, "a", parts) == msg
    assert len(r) == 0


def test_split_refuses_oversized_and_tiny_mtu() -> None:
    with pytest.raises(MessageTooLarge):
        split(bytes(C.MAX_MESSAGE_SIZE + 1), 1, 1280)
    with pytest.raises(ValueError):
        split(b"x", 1, 100)


def test_interleaved_sources_and_ids() -> None:
    m1, m2 = bytes(range(256)) * 12, bytes(3000)
    p1, p2 = split(m1, 1, 1280), split(m2, 1, 1280)
    r = Reassembler()
    done = []
    for a, b in zip(p1, p2, strict=False):
        for src, d in (("a", a), ("b", b)):
            added = r.add(0.0, src, d)
            if added.message:
                done.append((src, added.message))
    for d in p1[len(p2) :]:
        added = r.add(0.0, "a", d)
        if added.message:
            done.append(("a", added.message))
    assert sorted(done) == sorted([("a", m1), ("b", m2)])


def test_timeout_drops_partial() -> None:
    parts = split(bytes(5000), 9, 1280)
    r = Reassembler(timeout=5.0)
    added = r.add(1.0, "a", parts[0])
    assert added.started == 6.0
    assert not r.expire(5.9, "a", 9)
    assert r.expire(6.0, "a", 9)
    assert not r.expire(7.0, "a", 9)
    assert len(r) == 0


def test_limits_evict_only_stale_partials_and_only_within_their_own_pool() -> None:
    r = Reassembler(max_per_source=2, max_unknown=3, max_known=2)
    first = [split(bytes(3000), i, 1280)[0] for i in range(4)]
    assert r.add(0, "a", first[0]).evicted == 0
    assert r.add(0, "a", first[1]).evicted == 0
    assert r.add(0.1, "a", first[2]).refused  # the source is full of young partials
    old = C.REASSEMBLY_MIN_EVICT_AGE
    assert r.add(old, "a", first[2]).evicted == 1  # now id 0 is stale: it goes
    assert r.add(old + 0.1, "b", first[0]).evicted == 0
    assert r.add(old + 0.2, "c", first[0]).evicted == 1  # pool full: a's stale id 1 goes
    assert r.add(old + 0.3, "d", first[0]).refused  # full, and nothing in it is stale
    assert r.add(2 * old + 0.01, "d", first[0]).evicted == 1  # a's id 2 is stale now
    assert r.held(known=False) == 3
    # the known pool is separate: unknown sources neither fill it nor evict from it
    assert r.add(2 * old, "peer", first[3], known=True).evicted == 0
    for t, src in enumerate(("e", "f", "g", "h")):
        r.add(3 * old + t, src, first[0])
    assert r.held(known=True) == 1 and r.held(known=False) == 3
    assert len(r) == 4
    assert r.buffered_bytes() == 4 * (1280 - C.FRAGMENT_HEADER_SIZE)


def test_spoofed_first_fragments_cannot_evict_a_real_partial() -> None:
    """Finding 6: 64 spoofed first fragments used to evict a real partial through the
    global oldest-first eviction. Now a new partial never evicts one that is arriving (in
    either pool), and unknown sources cannot touch the known pool at all."""
    real = split(bytes(9000), 0xA11CE, 1280)
    for known in (True, False):
        r = Reassembler()
        assert r.add(0.0, "alice", real[0], known=known).message is None
        refused = 0
        for i in range(200):  # many spoofed sources, one lone first fragment each
            refused += r.add(0.01, f"spoof{i}", split(bytes(3000), i, 1280)[0]).refused
        assert r.held(known=False) <= C.MAX_REASSEMBLIES_UNKNOWN
        assert refused == 200 - C.MAX_REASSEMBLIES_UNKNOWN + (0 if known else 1)
        message = None
        for d in real[1:]:
            message = r.add(0.02, "alice", d, known=known).message or message
        assert message == bytes(9000), f"known={known}"


def test_conflicts_and_inconsistencies_raise_typed_errors() -> None:
    parts = split(bytes(3000), 5, 1280)
    r = Reassembler()
    r.add(0, "a", parts[0])
    assert r.add(0, "a", parts[0]).duplicate
    altered = parts[0][:-1] + b"\x01"
    with pytest.raises(DecodeError):
        r.add(0, "a", altered)
    wrong_total = encode(Fragment(5, 1, 3, 2999, b"x"))
    with pytest.raises(DecodeError):
        r.add(0, "a", wrong_total)
    too_much = encode(Fragment(5, 1, 3, 3000, bytes(2000)))
    with pytest.raises(DecodeError):
        r.add(0, "a", too_much)


def test_short_total_is_rejected_on_completion() -> None:
    r = Reassembler()
    r.add(0, "a", encode(Fragment(1, 0, 2, 100, b"abc")))
    with pytest.raises(DecodeError):
        r.add(0, "a", encode(Fragment(1, 1, 2, 100, b"def")))
    assert len(r) == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=200), max_size=20))
def test_arbitrary_datagrams_only_typed_errors_and_bounded(datagrams: list[bytes]) -> None:
    r = Reassembler(max_per_source=2, max_unknown=4)
    for d in datagrams:
        with contextlib.suppress(DecodeError):
            r.add(0.0, "x", encode(Fragment(1, 0, 2, 10, b"a"))[:12] + d)
        with contextlib.suppress(DecodeError):
            r.add(0.0, "y", d)
    assert len(r) <= 4
