"""Fragmentation: split/reassemble, bounds, eviction and timeouts."""

from __future__ import annotations

import contextlib
import itertools
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


# --- repair: NACKs, echoes of completed messages, kept messages ----------------------------


def test_a_quiet_partial_nacks_what_it_misses_then_backs_off_within_bounds() -> None:
    parts = split(bytes(range(256)) * 20, 0xBEEF, 1280)  # 5 fragments
    r = Reassembler()
    added = r.add(0.0, "a", parts[0])
    assert added.nack_at == C.NACK_QUIET and added.started == C.REASSEMBLY_TIMEOUT
    r.add(0.01, "a", parts[3])
    assert r.nack_tick(0.02, "a", 0xBEEF).nack == 0  # fragments came 10 ms ago: wait
    tick = r.nack_tick(0.031, "a", 0xBEEF)
    assert tick.nack == 0b10110  # 1, 2 and 4
    assert tick.next is not None and tick.next > 0.031
    # the resend brings 1 and 4; 2 is still missing once things go quiet again
    r.add(0.2, "a", parts[1])
    r.add(0.2, "a", parts[4])
    assert r.nack_tick(0.215, "a", 0xBEEF).nack == 0
    assert r.nack_tick(0.221, "a", 0xBEEF).nack == 0b100
    # nothing more comes: NACKs repeat at the measured round trip, then back off
    times = []
    t = 0.221
    while True:
        tick = r.nack_tick(t, "a", 0xBEEF)
        if tick.nack:
            times.append(t)
        if tick.next is None or tick.next >= C.REASSEMBLY_TIMEOUT:
            break
        t = tick.next
    assert len(times) + 2 <= C.MAX_NACKS_PER_MESSAGE
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps == sorted(gaps)  # never faster than before
    assert r.add(t, "a", parts[2]).message == bytes(range(256)) * 20


def test_nacks_never_carry_more_bytes_than_the_partial_received() -> None:
    r = Reassembler()
    tiny = encode(Fragment(9, 0, 4, 3000, b"x" * 20))  # a spoofed 32-byte fragment
    r.add(0.0, "spoof", tiny)
    sent = 0
    for k in range(1, 500):
        sent += C.FRAGMENT_NACK_SIZE * bool(r.nack_tick(k * 0.01, "spoof", 9).nack)
    assert 0 < sent <= 20


def test_a_copy_of_a_completed_message_is_never_nacked_and_counts_towards_a_repeat() -> None:
    msg = bytes(5000)
    parts = split(msg, 0x51, 1280)
    r = Reassembler()
    for d in parts:
        done = r.add(0.0, "a", d)
    assert done.message == msg
    straggler = r.add(0.01, "a", parts[0])  # a late copy within the holdoff
    assert straggler.echo_bytes == 0 and straggler.nack_at is None
    assert r.nack_tick(1.0, "a", 0x51).nack == 0  # a copy is never NACKed for
    first = r.add(0.5, "a", parts[1])  # the sender retried: its copy counts now
    assert first.echo_bytes == len(parts[1]) - C.FRAGMENT_HEADER_SIZE
    second = r.add(0.5, "a", parts[2])
    assert second.echo_bytes == first.echo_bytes + len(parts[2]) - C.FRAGMENT_HEADER_SIZE
    r.answered(0.5, "a", 0x51)
    assert r.add(0.52, "a", parts[3]).echo_bytes == 0  # the rest of that copy: holdoff
    assert r.add(0.6, "a", parts[1]).echo_bytes == len(parts[1]) - C.FRAGMENT_HEADER_SIZE
    # a complete copy is still handed on (a replay is refused by whoever reads it)
    for d in parts:
        last = r.add(0.7, "a", d)
    assert last.message == msg


def test_kept_messages_are_bounded_budgeted_and_pooled() -> None:
    from x0tta6bl4.channel.fragment import SentMessages

    s = SentMessages(max_own=3, max_answers=2, max_per_dest=2)
    frags = [b"f0", b"f1", b"f2"]
    s.add(0.0, "x", 1, frags)
    assert s.resend(0.1, "x", 1, 0b101) == [b"f0", b"f2"]
    assert s.resend(0.1, "y", 1, 0b1) is None  # only to where it went
    assert s.resend(0.1, "x", 2, 0b1) is None
    for _ in range(C.MAX_RESENDS_PER_MESSAGE - 1):
        assert s.resend(0.1, "x", 1, 0b1) == [b"f0"]
    assert s.resend(0.1, "x", 1, 0b1) == []  # budget spent
    s.add(0.2, "x", 1, frags)  # sent again under the same id: a fresh budget
    assert s.resend(0.2, "x", 1, 0b1) == [b"f0"]
    assert s.resend(C.SENT_MESSAGE_TTL + 0.2, "x", 1, 0b1) is None  # expired
    # per destination and per pool, oldest first; answers never push out our own
    s = SentMessages(max_own=3, max_answers=2, max_per_dest=2)
    s.add(0.0, "x", 1, frags)
    s.add(0.0, "x", 2, frags)
    s.add(0.0, "x", 3, frags)
    assert s.resend(0.0, "x", 1, 1) is None and s.resend(0.0, "x", 3, 1) == [b"f0"]
    s.add(0.0, "y", 4, frags)
    for i in range(10):
        s.add(0.0, ("spoof", i), 100 + i, frags, answer=True, request_id=i)
    assert len(s) == 3 + 2  # three of ours, two answers
    assert s.resend(0.0, "x", 2, 1) == [b"f0"] and s.resend(0.0, "y", 4, 1) == [b"f0"]
    # answers are found by the request they answer, and forgotten once it is confirmed
    s.add(0.0, "z", 200, [b"r0", b"r1"], answer=True, request_id=77)
    assert s.answer_size(0.0, "z", 77) == 4
    assert s.answer(0.0, "z", 77) == [b"r0", b"r1"]
    assert s.answer(0.0, "z", 78) is None and s.answer(0.0, "w", 77) is None
    s.forget_answers("z")
    assert s.answer(0.0, "z", 77) is None and s.resend(0.0, "z", 200, 1) is None
