"""Link estimation: hello codec, reception history, ETX, RTT echo, cost, liveness."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.routing.helpers import HelloCore
from x0tta6bl4.errors import BadLength, BadVersion, DecodeError, Truncated
from x0tta6bl4.routing import linkquality as lq
from x0tta6bl4.routing.linkquality import (
    BASE_COST,
    DEAD_INTERVAL,
    HELLO_INTERVAL,
    HELLO_SIZE,
    INFINITY,
    RTT_MAX,
    RTT_MAX_PENALTY,
    RTT_MIN,
    Hello,
    LinkEstimator,
    decode_hello,
    encode_hello,
)
from x0tta6bl4.sim import LinkSpec, Simulator

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)


@st.composite
def hellos(draw: st.DrawFn) -> Hello:
    echo = draw(st.none() | u32)
    delay = draw(u32) if echo is not None else 0
    return Hello(draw(u16), draw(u32), draw(u16), draw(u16), echo, delay)


# --- codec ----------------------------------------------------------------------


@given(hellos())
def test_hello_round_trip(h: Hello) -> None:
    data = encode_hello(h)
    assert len(data) == HELLO_SIZE
    assert decode_hello(data) == h
    assert encode_hello(decode_hello(data)) == data


@given(st.binary(max_size=64))
def test_decode_hello_rejects_garbage_with_decode_errors_only(data: bytes) -> None:
    try:
        h = decode_hello(data)
    except DecodeError:
        return
    assert encode_hello(h) == data  # whatever decodes is canonical


def test_decode_hello_error_kinds() -> None:
    good = encode_hello(Hello(1, 2, 10, 256, 3, 4))
    with pytest.raises(Truncated):
        decode_hello(good[:-1])
    with pytest.raises(Truncated):
        decode_hello(b"")
    with pytest.raises(BadLength):
        decode_hello(good + b"\x00")
    with pytest.raises(BadVersion):
        decode_hello(b"\x02" + good[1:])
    with pytest.raises(DecodeError, match="reserved"):
        decode_hello(good[:1] + b"\x03" + good[2:])
    no_echo = encode_hello(Hello(1, 2, 10, 256))
    with pytest.raises(DecodeError, match="without the echo flag"):
        decode_hello(no_echo[:-1] + b"\x01")


def test_encode_hello_rejects_out_of_range_fields() -> None:
    with pytest.raises(ValueError):
        encode_hello(Hello(0x10000, 0, 10, 256))
    with pytest.raises(ValueError):
        encode_hello(Hello(1, -1, 10, 256))
    with pytest.raises(ValueError, match="echo_delay"):
        encode_hello(Hello(1, 1, 10, 256, None, 5))


# --- two estimators on the simulator -------------------------------------------------


FAST = LinkSpec(latency=0.001)


class Pair:
    """Two estimators exchanging hellos over one simulated link (``helpers.HelloCore``).

    ``spec`` gives the a -> b direction (``reverse`` b -> a, default the same): latency
    plus up to ``jitter`` per packet. ``drop(direction, n)`` decides whether the n-th
    hello in that direction ("ab" or "ba") is lost. B's clock runs with an offset, as
    real monotonic clocks do: the RTT echo must not care.
    """

    B_CLOCK_OFFSET = 12_345.678

    def __init__(
        self,
        spec: LinkSpec = FAST,
        reverse: LinkSpec | None = None,
        drop: Callable[[str, int], bool] = lambda d, n: False,
        seed: int = 1,
    ) -> None:
        self.a = LinkEstimator(random.Random(seed))
        self.b = LinkEstimator(random.Random(seed + 1))
        # One stream for both ends' send jitter, drawn in send order.
        jitter = random.Random(seed)
        self.sim = Simulator(seed)
        self.sim.add_node(
            "a",
            lambda _n, _r, _t: HelloCore(
                "b", self.a, first_send=0.0, jitter=jitter, drop=lambda n: drop("ab", n)
            ),
        )
        self.sim.add_node(
            "b",
            lambda _n, _r, _t: HelloCore(
                "a",
                self.b,
                first_send=0.05,
                jitter=jitter,
                clock_offset=self.B_CLOCK_OFFSET,
                drop=lambda n: drop("ba", n),
            ),
        )
        self.sim.add_link("a", "b", spec, reverse=reverse)

    def run(self, until: float) -> None:
        self.sim.run(until)
        # Both estimators look at the end of the run (hellos overdue by then count).
        self.a.is_dead(until)
        self.b.is_dead(until + self.B_CLOCK_OFFSET)


# --- estimates --------------------------------------------------------------------


def test_perfect_link_has_etx_one_and_base_cost() -> None:
    p = Pair()
    p.run(3.0)
    for est in (p.a, p.b):
        assert est.etx == 1.0
        assert est.loss == 0.0
        assert est.rxcost == 256
        assert est.rtt is not None and est.rtt < RTT_MIN
        assert est.cost == BASE_COST


def test_half_the_hellos_lost_one_way_doubles_etx_on_both_ends() -> None:
    p = Pair(drop=lambda d, n: d == "ba" and n % 2 == 1)
    p.run(5.0)
    # A hears half of B's hellos; B hears all of A's and learns A's rxcost from the IHU.
    assert p.a.loss == pytest.approx(0.5, abs=1 / 16)
    assert p.a.rxcost == pytest.approx(512, rel=0.15)
    assert p.b.loss == 0.0
    assert p.a.etx == pytest.approx(2.0, rel=0.15)
    assert p.b.etx == pytest.approx(2.0, rel=0.15)
    assert p.a.cost == pytest.approx(2 * BASE_COST, rel=0.15)
    assert p.a.cost > BASE_COST * 1.5


def test_loss_both_ways_multiplies() -> None:
    p = Pair(drop=lambda d, n: n % 2 == 1)
    p.run(5.0)
    assert p.a.etx == pytest.approx(4.0, rel=0.25)
    assert p.b.etx == pytest.approx(4.0, rel=0.25)


def test_rtt_converges_to_the_simulated_round_trip() -> None:
    p = Pair(LinkSpec(latency=0.030), reverse=LinkSpec(latency=0.020))
    p.run(10.0)
    for est in (p.a, p.b):
        assert est.rtt == pytest.approx(0.050, abs=0.0005)
        assert est.jitter < 0.0005
    penalty = RTT_MAX_PENALTY * (0.050 - RTT_MIN) / (RTT_MAX - RTT_MIN)
    assert p.a.rtt_penalty == pytest.approx(penalty, rel=0.02)
    assert p.a.cost == round(BASE_COST + p.a.rtt_penalty)


def test_rtt_tracks_a_change_and_jitter_reflects_variation() -> None:
    p = Pair(LinkSpec(latency=0.005, jitter=0.010))  # 5-15 ms each way, per packet
    p.run(10.0)
    assert p.a.rtt == pytest.approx(0.020, abs=0.004)
    assert p.a.jitter > 0.001
    slow = Pair(LinkSpec(latency=0.2))
    slow.run(10.0)
    assert slow.a.rtt_penalty == RTT_MAX_PENALTY
    assert slow.a.cost == BASE_COST + RTT_MAX_PENALTY


def test_dead_after_dead_interval_and_cost_infinite() -> None:
    est = LinkEstimator()
    assert est.is_dead(0.0)
    assert est.cost == INFINITY
    assert est.last_heard is None
    peer = LinkEstimator()
    # Two hellos so that both directions are known.
    est.on_hello(1.0, peer.make_hello(1.0))
    peer.on_hello(1.0, est.make_hello(1.0))
    est.on_hello(1.1, peer.make_hello(1.1))
    assert est.last_heard == 1.1
    assert not est.is_dead(1.1 + DEAD_INTERVAL - 0.01)
    assert est.cost < INFINITY
    assert est.is_dead(1.1 + DEAD_INTERVAL + 0.01)
    assert est.cost == INFINITY
    # Detection within half a second of the last hello, as the mesh promises.
    assert DEAD_INTERVAL + HELLO_INTERVAL <= 0.5


def test_cost_rises_while_hellos_are_overdue() -> None:
    p = Pair()
    p.run(3.0)
    last = p.a.last_heard
    assert last is not None
    before = p.a.cost
    p.a.is_dead(last + 3.2 * HELLO_INTERVAL)  # three hellos overdue, not yet dead
    assert 0 < p.a.loss < 0.5
    assert before < p.a.cost < INFINITY


def test_unidirectional_link_is_unusable() -> None:
    p = Pair(drop=lambda d, n: d == "ab")  # B never hears A
    p.run(2.0)
    assert p.a.loss == 0.0  # A hears B fine...
    assert p.a.etx == float("inf")  # ...but B's IHU says it does not hear A
    assert p.a.cost == INFINITY
    assert p.b.cost == INFINITY


def test_multiplier_raises_cost_and_never_lowers_it() -> None:
    p = Pair()
    p.run(2.0)
    p.a.set_cost_multiplier(2.5)
    assert p.a.cost_multiplier == 2.5
    assert p.a.cost == round(2.5 * BASE_COST)
    p.a.set_cost_multiplier(0.1)
    assert p.a.cost == BASE_COST


def _hello(seqno: int, ts: int = 0) -> Hello:
    return Hello(seqno, ts, 10, 256)


def test_history_counts_gaps_and_survives_seqno_wrap() -> None:
    est = LinkEstimator()
    t = 0.0
    for s in range(65530, 65536):
        est.on_hello(t, _hello(s))
        t += 0.1
    for s in range(0, 10):  # wraps without loss
        est.on_hello(t, _hello(s))
        t += 0.1
    assert est.loss == 0.0
    est.on_hello(t, _hello(12))  # 10 and 11 lost
    assert est.loss == pytest.approx(2 / 16)
    est.on_hello(t, _hello(12))  # duplicate: no change
    est.on_hello(t, _hello(11))  # late arrival: ignored, still counted lost
    assert est.loss == pytest.approx(2 / 16)
    est.on_hello(t + 0.1, _hello(40))  # a gap longer than the history: all lost
    assert est.loss == pytest.approx(15 / 16)


def test_the_hello_record_keeps_the_fate_of_more_hellos_than_the_loss_window() -> None:
    est = LinkEstimator()
    assert est.hello_record() == (0, 0)
    heard = [s for s in range(100, 140) if s not in (110, 111, 112, 135)]
    for s in heard:
        est.on_hello(s * 0.1, _hello(s))
    bits, n = est.hello_record()
    assert n == 139 - 100 + 1  # from the first hello heard to the last
    assert [s for s in range(100, 140) if (bits >> (139 - s)) & 1] == heard
    assert est.loss == pytest.approx(1 / 16)  # the cost still sees the last 16 only
    # The silence since the last hello is the caller's to count: not in the record.
    est.is_dead(20.0)
    assert est.hello_record() == (bits, n)
    for s in range(140, 140 + lq.RECORD_LEN):
        est.on_hello(s * 0.1, _hello(s))
    assert est.hello_record() == ((1 << lq.RECORD_LEN) - 1, lq.RECORD_LEN)
    est.on_hello(40.0, _hello(5))  # far behind: the peer restarted its counter
    assert est.hello_record() == (1, 1)


def test_peer_restart_resets_history() -> None:
    est = LinkEstimator()
    for i, s in enumerate(range(1000, 1016)):
        est.on_hello(i * 0.1, _hello(s))
    est.on_hello(1.7, _hello(3))  # far behind: the peer restarted its counter
    assert est.loss == 0.0
    est.on_hello(1.8, _hello(4))
    assert est.loss == 0.0


def test_fresh_link_is_measured_over_the_hellos_seen_so_far() -> None:
    est = LinkEstimator()
    est.on_hello(0.0, _hello(7))
    assert est.loss == 0.0  # one of one, not one of sixteen


def test_bogus_echo_is_ignored() -> None:
    est = LinkEstimator()
    now = 5.0
    future = lq._to_us32(now + 1.0)  # an echo of a timestamp we have not sent yet
    est.on_hello(now, Hello(1, 0, 10, 256, future, 0))
    assert est.rtt is None
    stale = lq._to_us32(now - 100.0)  # older than any plausible round trip
    est.on_hello(now, Hello(2, 0, 10, 256, stale, 0))
    assert est.rtt is None


def test_echo_carries_the_time_we_held_the_peer_timestamp() -> None:
    est = LinkEstimator(hello_interval=0.25)
    est.on_hello(1.0, Hello(1, 777, 10, 256))
    h = est.make_hello(1.03)
    assert h.echo_timestamp == 777
    assert h.echo_delay == 30_000
    assert h.interval == 25
    assert h.rxcost == 256
    # Held for longer than the field can say: no echo rather than a wrong one.
    h = est.make_hello(1.0 + 5000.0)
    assert h.echo_timestamp is None and h.echo_delay == 0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 0.3), u16), max_size=40))
def test_estimates_stay_in_range_for_any_hello_sequence(
    steps: list[tuple[float, int]],
) -> None:
    est = LinkEstimator()
    t = 0.0
    for dt, seqno in steps:
        t += dt
        est.on_hello(t, Hello(seqno, 0, 10, 256))
        assert 0.0 <= est.loss <= 1.0
        assert est.etx >= 1.0
        assert 1 <= est.cost <= INFINITY
        assert 1 <= est.rxcost <= INFINITY
        bits, n = est.hello_record()
        assert 1 <= n <= lq.RECORD_LEN and bits & 1 and bits < 1 << n


def test_hello_bytes_is_the_encoding_of_make_hello() -> None:
    a, b = LinkEstimator(random.Random(1)), LinkEstimator(random.Random(1))
    peer = LinkEstimator(random.Random(2))
    for t in (0.0, 0.1, 0.2, 0.35):
        assert a.hello_bytes(t) == encode_hello(b.make_hello(t))
        h = peer.make_hello(t)
        a.on_hello(t + 0.01, h)
        b.on_hello(t + 0.01, h)


def test_base_cost_ignores_the_healing_multiplier() -> None:
    a, b = LinkEstimator(random.Random(3)), LinkEstimator(random.Random(4))
    for i in range(8):
        t = i * 0.1
        b.on_hello(t + 0.005, a.make_hello(t))
        a.on_hello(t + 0.01, b.make_hello(t + 0.005))
    base = a.cost
    a.set_cost_multiplier(4.0)
    assert a.base_cost == base
    assert base < a.cost and abs(a.cost - 4 * base) <= 2  # both rounded from one raw cost
    assert LinkEstimator().base_cost == lq.INFINITY  # never heard
