"""Links under a blaster/sink pair of toy cores: latency, jitter, loss, duplication,
capacity and queueing, MTU, link state, partitions, flaps, degradation, the tamper hook,
the arrival intercept and injected datagrams."""

from __future__ import annotations

import itertools
import math
import random
import statistics
from typing import Any

import pytest

from x0tta6bl4.sansio import Action, AppSend, Datagram, Deliver, Input, Send
from x0tta6bl4.sim import LinkSpec, SimError, Simulator

# --- toy cores -------------------------------------------------------------------


class Node:
    """Sends whatever the app asks verbatim (one packet per AppSend, to ``dst``);
    records every datagram; relays datagrams that start with b">" to the node named in
    the next byte (single-letter names), so a three-node line can exercise forwarding."""

    def __init__(self, name: str, rng: random.Random, now: float) -> None:
        self.name = name
        self.rx: list[tuple[float, Any, bytes]] = []

    def start(self, now: float) -> list[Action]:
        return []

    def handle(self, now: float, inp: Input) -> list[Action]:
        if isinstance(inp, AppSend):
            return [Send(inp.dst, inp.payload)]
        assert isinstance(inp, Datagram)
        self.rx.append((now, inp.addr, inp.data))
        if inp.data[:1] == b">":
            return [Send(inp.data[1:2].decode(), inp.data[2:])]
        return [Deliver(str(inp.addr), 0, inp.data)]


def net(*names: str, seed: int = 1, **spec: Any) -> Simulator:
    sim = Simulator(seed)
    for n in names:
        sim.add_node(n, Node)
    for a, b in itertools.pairwise(names):
        sim.add_link(a, b, LinkSpec(**spec))
    return sim


def rx(sim: Simulator, name: str) -> list[tuple[float, Any, bytes]]:
    c = sim.core(name)
    assert isinstance(c, Node)
    return c.rx


def blast(
    sim: Simulator,
    src: str,
    dst: str,
    count: int,
    *,
    start: float = 0.0,
    gap: float = 0.001,
    size: int = 8,
) -> None:
    """``count`` packets whose first 8 bytes are their sequence number."""
    for i in range(count):
        sim.send_app(start + i * gap, src, dst, 0, i.to_bytes(8, "big") + bytes(size - 8))


def seqs(packets: list[tuple[float, Any, bytes]]) -> list[int]:
    return [int.from_bytes(d[:8], "big") for _, _, d in packets]


# --- latency, jitter, loss --------------------------------------------------------------


def test_fixed_latency_is_exact_and_fifo() -> None:
    sim = net("a", "b", latency=0.025)
    blast(sim, "a", "b", 100)
    sim.run(1.0)
    got = rx(sim, "b")
    assert seqs(got) == list(range(100))
    assert all(t == pytest.approx(i * 0.001 + 0.025) for i, (t, _, _) in enumerate(got))


def test_jitter_stays_within_its_bound_and_may_reorder() -> None:
    sim = net("a", "b", latency=0.010, jitter=0.005)
    blast(sim, "a", "b", 5000, gap=0.001)
    sim.run(10.0)
    got = rx(sim, "b")
    assert len(got) == 5000
    delays = sorted((t - s * 0.001) for (t, _, _), s in zip(got, seqs(got), strict=True))
    assert delays[0] >= 0.010 and delays[-1] < 0.015 + 1e-12
    assert statistics.fmean(delays) == pytest.approx(0.0125, abs=0.0002)  # uniform jitter
    order = seqs(got)
    assert order != sorted(order)  # 1 ms spacing with 5 ms jitter must reorder some
    # ... but never by more than jitter allows: 5 ms of jitter, 1 ms apart => < 5 places.
    assert max(abs(pos - s) for pos, s in enumerate(order)) < 5


def test_loss_rate_lands_in_a_tight_band_and_is_counted() -> None:
    sim = net("a", "b", loss=0.10)
    blast(sim, "a", "b", 5000)
    sim.run(10.0)
    lost = sim.stats["a"].dropped["loss"]
    assert 0.087 * 5000 <= lost <= 0.113 * 5000  # +-3 sigma
    assert len(rx(sim, "b")) == 5000 - lost
    assert sim.drops["loss"] == lost
    assert len(sim.trace.select(kind="sim.drop")) == lost


def test_loss_and_jitter_follow_the_seed() -> None:
    def outcome(seed: int) -> list[tuple[float, int]]:
        sim = net("a", "b", seed=seed, loss=0.3, jitter=0.01)
        blast(sim, "a", "b", 200)
        sim.run(5.0)
        return [(t, s) for (t, _, _), s in zip(rx(sim, "b"), seqs(rx(sim, "b")), strict=True)]

    assert outcome(1) == outcome(1)
    assert outcome(1) != outcome(2)


def test_dup_rate_lands_in_a_tight_band_and_copies_arrive_separately() -> None:
    sim = net("a", "b", loss=0.10, dup=0.20, jitter=0.002)
    blast(sim, "a", "b", 5000)
    sim.run(10.0)
    lost = sim.stats["a"].dropped["loss"]
    got = seqs(rx(sim, "b"))
    extra = len(got) - len(set(got))
    assert len(set(got)) == 5000 - lost  # a duplicate is never of a lost packet
    assert 0.18 * (5000 - lost) <= extra <= 0.22 * (5000 - lost)  # +-3 sigma of 20 %
    assert max(got.count(s) for s in set(got)) == 2
    assert sim.stats["a"].sent_packets == 5000 and sim.stats["b"].recv_packets == len(got)


def test_links_without_dup_keep_their_random_streams() -> None:
    # dup is drawn only where it is non-zero, so adding the knob changed no old run.
    def outcome(**spec: Any) -> list[tuple[float, int]]:
        sim = net("a", "b", seed=4, loss=0.3, jitter=0.01, **spec)
        blast(sim, "a", "b", 200)
        sim.run(5.0)
        return [(t, s) for (t, _, _), s in zip(rx(sim, "b"), seqs(rx(sim, "b")), strict=True)]

    assert outcome() == outcome(dup=0.0)
    assert outcome() != outcome(dup=0.5)


def test_each_direction_has_its_own_spec() -> None:
    sim = Simulator(seed=0)
    sim.add_node("a", Node)
    sim.add_node("b", Node)
    sim.add_link("a", "b", LinkSpec(latency=0.01), reverse=LinkSpec(latency=0.05))
    sim.send_app(0.0, "a", "b", 0, b"x")
    sim.send_app(0.0, "b", "a", 0, b"y")
    sim.run(1.0)
    assert rx(sim, "b")[0][0] == pytest.approx(0.01)
    assert rx(sim, "a")[0][0] == pytest.approx(0.05)


# --- capacity and queueing ---------------------------------------------------------------


def test_capacity_serializes_a_burst_at_the_link_rate() -> None:
    sim = net("a", "b", latency=0.01, capacity=10_000.0, queue=100_000)
    blast(sim, "a", "b", 10, gap=0.0, size=1000)
    sim.run(5.0)
    times = [t for t, _, _ in rx(sim, "b")]
    assert times == pytest.approx([0.01 + (k + 1) * 0.1 for k in range(10)])
    assert seqs(rx(sim, "b")) == list(range(10))


def test_a_full_queue_tail_drops_then_drains() -> None:
    sim = net("a", "b", latency=0.0, capacity=10_000.0, queue=5_000)
    blast(sim, "a", "b", 10, gap=0.0, size=1000)  # 5 fit (one in service + 4 waiting)
    blast(sim, "a", "b", 2, start=1.0, gap=0.0, size=1000)  # drained by then
    sim.run(5.0)
    assert sim.stats["a"].dropped["queue_overflow"] == 5
    assert seqs(rx(sim, "b")) == [0, 1, 2, 3, 4, 0, 1]
    assert rx(sim, "b")[-1][0] == pytest.approx(1.2)


def test_sustained_overload_is_capped_at_capacity() -> None:
    sim = net("a", "b", latency=0.0, capacity=50_000.0, queue=10_000)
    blast(sim, "a", "b", 2000, gap=0.01, size=1000)  # 100 kB/s offered for 20 s
    sim.run(20.0)
    got = rx(sim, "b")
    rate = len(got) * 1000 / got[-1][0]
    assert rate == pytest.approx(50_000, rel=0.01)
    assert sim.stats["a"].dropped["queue_overflow"] == pytest.approx(1000, abs=15)


def test_oversize_datagrams_are_dropped_by_mtu() -> None:
    sim = net("a", "b", mtu=1500)
    sim.send_app(0.0, "a", "b", 0, bytes(1500))
    sim.send_app(0.0, "a", "b", 0, bytes(1501))
    sim.run(1.0)
    assert [len(d) for _, _, d in rx(sim, "b")] == [1500]
    assert sim.stats["a"].dropped["mtu"] == 1
    assert sim.trace.select(kind="sim.drop")[0][3] == {"reason": "mtu", "peer": "b", "bytes": 1501}


def test_sends_without_a_link_are_dropped_as_no_link() -> None:
    sim = net("a", "b", "c")
    sim.send_app(0.0, "a", "c", 0, b"x")  # not neighbours
    sim.send_app(0.0, "a", "a", 0, b"x")  # itself
    sim.send_app(0.0, "a", ("10.0.0.1", 9), 0, b"x")  # type: ignore[arg-type]
    sim.run(1.0)
    assert sim.stats["a"].dropped["no_link"] == 3
    assert sim.stats["a"].sent_packets == 3 and sim.stats["c"].recv_packets == 0


# --- link state ----------------------------------------------------------------------------


def test_a_down_link_drops_new_and_in_flight_packets() -> None:
    sim = net("a", "b", latency=0.1)
    blast(sim, "a", "b", 3, gap=0.05)  # at 0.0, 0.05, 0.1
    sim.schedule(0.12, lambda s: s.net.set_up("a", "b", False))  # 0 arrived; 1, 2 in flight
    sim.send_app(0.2, "b", "a", 0, b"x")  # while down
    sim.schedule(0.3, lambda s: s.net.set_up("b", "a", True))
    blast(sim, "a", "b", 1, start=0.4)
    sim.run(1.0)
    assert seqs(rx(sim, "b")) == [0, 0]
    assert sim.stats["a"].dropped["link_down"] == 2
    assert sim.stats["b"].dropped["link_down"] == 1
    ups = [(t, n, k, f) for t, n, k, f in sim.trace if k in ("sim.link_down", "sim.link_up")]
    assert ups == [
        (0.12, "a", "sim.link_down", {"peer": "b"}),
        (0.3, "a", "sim.link_up", {"peer": "b"}),
    ]


def test_setting_a_link_to_its_current_state_records_nothing() -> None:
    sim = net("a", "b")
    sim.net.set_up("a", "b", True)
    sim.net.set_up("a", "b", False)
    sim.net.set_up("b", "a", False)
    assert not sim.net.is_up("a", "b")
    assert len(sim.trace) == 1


def test_flap_toggles_on_schedule_and_ends_up() -> None:
    sim = net("a", "b")
    sim.schedule(1.0, lambda s: s.net.flap("a", "b", period=1.0, down_for=0.25, until=3.5))
    sim.run(10.0)
    got = [(round(t, 9), k) for t, _, k, _ in sim.trace if k.startswith("sim.link")]
    assert got == [
        (1.0, "sim.link_down"),
        (1.25, "sim.link_up"),
        (2.0, "sim.link_down"),
        (2.25, "sim.link_up"),
        (3.0, "sim.link_down"),
        (3.25, "sim.link_up"),
    ]
    assert sim.net.is_up("a", "b")


def test_flap_cut_short_by_until_leaves_the_link_up() -> None:
    sim = net("a", "b")
    sim.net.flap("a", "b", period=1.0, until=2.2)  # default down_for: half the period
    blast(sim, "a", "b", 30, gap=0.1)  # one packet every 100 ms
    sim.run(5.0)
    got = [(round(t, 9), k) for t, _, k, _ in sim.trace if k.startswith("sim.link")]
    assert got[-2:] == [(2.0, "sim.link_down"), (2.2, "sim.link_up")]
    assert sim.stats["a"].dropped["link_down"] == 5 + 5 + 2


def test_flap_validates_its_arguments() -> None:
    sim = net("a", "b")
    with pytest.raises(SimError):
        sim.net.flap("a", "b", period=0.0, until=1.0)
    with pytest.raises(SimError):
        sim.net.flap("a", "b", period=1.0, down_for=2.0, until=3.0)
    with pytest.raises(SimError):
        sim.net.flap("a", "b", period=1.0, until=3.0, start=4.0)
    with pytest.raises(SimError, match="no link"):
        sim.net.flap("a", "zz", period=1.0, until=3.0)


def test_degrade_changes_a_live_link() -> None:
    sim = net("a", "b", latency=0.01)
    sim.schedule(1.0, lambda s: s.net.degrade("a", "b", latency=0.2, loss=1.0, both=False))
    sim.send_app(2.0, "a", "b", 0, b"lost")
    sim.send_app(2.0, "b", "a", 0, b"fast")
    sim.schedule(3.0, lambda s: s.net.degrade("b", "a", loss=0.0))
    sim.send_app(4.0, "a", "b", 0, b"slow")
    sim.run(5.0)
    assert [(round(t, 9), d) for t, _, d in rx(sim, "a")] == [(2.01, b"fast")]
    assert [(round(t, 9), d) for t, _, d in rx(sim, "b")] == [(4.2, b"slow")]
    assert sim.net.link("a", "b").spec == LinkSpec(latency=0.2, loss=0.0)
    assert sim.net.link("b", "a").spec == LinkSpec(latency=0.01)
    rec = sim.trace.select(kind="sim.degrade")
    assert rec[0] == (
        1.0,
        "a",
        "sim.degrade",
        {"peer": "b", "both": False, "latency": 0.2, "loss": 1.0},
    )
    with pytest.raises(SimError, match="loss"):
        sim.net.degrade("a", "b", loss=1.5)


# --- partitions ------------------------------------------------------------------------------


def full_mesh(*names: str, **spec: Any) -> Simulator:
    sim = Simulator(seed=0)
    for n in names:
        sim.add_node(n, Node)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            sim.add_link(a, b, LinkSpec(**spec))
    return sim


def test_partition_blocks_across_groups_only_until_healed() -> None:
    sim = full_mesh("a", "b", "c", "d", "e")
    sim.net.partition([{"a", "b"}, ["c"]])  # d, e: the implicit rest group
    for src, dst in [("a", "b"), ("a", "c"), ("c", "d"), ("d", "e"), ("b", "e")]:
        sim.send_app(0.0, src, dst, 0, b"1")
    sim.schedule(1.0, lambda s: s.net.heal())
    sim.send_app(1.0, "a", "c", 0, b"2")
    sim.run(2.0)
    got = {n: [(s, d) for _, s, d in rx(sim, n)] for n in "abcde"}
    assert got == {"a": [], "b": [("a", b"1")], "c": [("a", b"2")], "d": [], "e": [("d", b"1")]}
    assert sim.drops["partition"] == 3
    assert not sim.net.partitioned("a", "c")
    assert sim.trace.select(kind="sim.partition")[0][3] == {"groups": [["a", "b"], ["c"]]}


def test_a_partition_drops_packets_already_in_flight_across_it() -> None:
    sim = full_mesh("a", "b", latency=0.1)
    sim.send_app(0.0, "a", "b", 0, b"x")
    sim.schedule(0.05, lambda s: s.net.partition([{"a"}, {"b"}]))
    sim.run(1.0)
    assert rx(sim, "b") == []
    assert sim.trace.select(kind="sim.drop")[0][:2] == (0.1, "a")


def test_partition_validation() -> None:
    sim = full_mesh("a", "b")
    with pytest.raises(SimError, match="two groups"):
        sim.net.partition([{"a"}, {"a", "b"}])
    with pytest.raises(SimError, match="unknown node"):
        sim.net.partition([{"zz"}])
    sim.net.heal()  # nothing to heal: no record
    assert len(sim.trace) == 0


# --- tamper --------------------------------------------------------------------------------


def test_tamper_rewrites_what_a_relay_forwards() -> None:
    sim = net("a", "r", "c")
    seen: list[tuple[Any, bytes]] = []

    def flip(dst: Any, data: bytes) -> bytes:
        seen.append((dst, data))
        return data[:-1] + bytes([data[-1] ^ 0x01])

    sim.net.set_tamper("r", flip)
    sim.send_app(0.0, "a", "r", 0, b">cpayload")
    sim.send_app(1.0, "c", "r", 0, b">aback")  # r tampers in both directions
    sim.schedule(1.5, lambda s: s.net.set_tamper("r", None))
    sim.send_app(2.0, "a", "r", 0, b">cclean")
    sim.run(3.0)
    assert [d for _, _, d in rx(sim, "c")] == [b"payloae", b"clean"]
    assert [d for _, _, d in rx(sim, "a")] == [b"bacj"]
    assert seen == [("c", b"payload"), ("a", b"back")]


def test_tamper_can_grow_a_datagram_past_the_mtu() -> None:
    sim = net("a", "b", mtu=10)
    sim.net.set_tamper("a", lambda dst, data: data * 4)
    sim.send_app(0.0, "a", "b", 0, b"abc")
    sim.run(1.0)
    assert sim.stats["a"].dropped["mtu"] == 1 and sim.stats["a"].sent_bytes == 12


# --- intercept, injection, drop observers -------------------------------------------------


def test_intercept_sees_arrivals_at_arrival_time_and_may_rewrite_or_drop() -> None:
    sim = net("a", "b", latency=0.1)
    seen: list[tuple[float, Any, str, bytes]] = []

    def icp(src: Any, dst: str, data: bytes) -> bytes | None:
        seen.append((sim.now, src, dst, data))
        return None if data == b"drop" else data.upper()

    sim.net.set_intercept(icp)
    for i, payload in enumerate((b"keep", b"drop", b"also")):
        sim.send_app(i * 0.01, "a", "b", 0, payload)
    sim.run(1.0)
    assert [d for _, _, d in rx(sim, "b")] == [b"KEEP", b"ALSO"]
    assert [(round(t, 3), s, d) for t, s, d, _ in seen] == [
        (0.1, "a", "b"),
        (0.11, "a", "b"),
        (0.12, "a", "b"),
    ]
    assert sim.stats["a"].dropped["intercepted"] == 1
    assert sim.stats["b"].recv_packets == 2
    sim.net.set_intercept(None)
    sim.send_app(1.0, "a", "b", 0, b"drop")
    sim.run(2.0)
    assert rx(sim, "b")[-1][2] == b"drop"


def test_injected_datagrams_arrive_from_any_address() -> None:
    sim = net("a", "b")
    sim.post_arrival(0.5, "b", ("198.51.100.7", 4000), b"spoofed")
    sim.post_arrival(0.5, "b", "a", b"as if from a")  # no link: nothing can cut it
    sim.net.set_up("a", "b", False)
    sim.run(1.0)
    assert rx(sim, "b") == [
        (0.5, ("198.51.100.7", 4000), b"spoofed"),
        (0.5, "a", b"as if from a"),
    ]
    sim.crash("b")
    sim.post_arrival(1.5, "b", ("198.51.100.7", 4000), b"late")
    sim.run(2.0)
    assert sim.drops["crashed"] == 1  # counted, though no node sent it
    assert sim.trace.select(kind="sim.drop")[-1][1] == "('198.51.100.7', 4000)"
    with pytest.raises(SimError, match="before now"):
        sim.post_arrival(1.0, "b", "a", b"")
    with pytest.raises(SimError, match="unknown node"):
        sim.post_arrival(3.0, "zz", "a", b"")


def test_drop_observers_get_the_dropped_bytes() -> None:
    sim = net("a", "b", loss=0.5, mtu=100)
    drops: list[tuple[float, Any, Any, bytes, str]] = []
    sim.on_drop.append(lambda t, s, d, data, reason: drops.append((t, s, d, data, reason)))
    blast(sim, "a", "b", 100)
    sim.send_app(1.0, "a", "b", 0, bytes(200))
    sim.run(2.0)
    assert sum(1 for *_, r in drops if r == "loss") == sim.drops["loss"] > 0
    assert drops[-1] == (1.0, "a", "b", bytes(200), "mtu")
    assert all(len(d) == 8 for _, _, _, d, r in drops if r == "loss")


# --- validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("latency", -0.1),
        ("latency", math.nan),
        ("jitter", -1.0),
        ("loss", 1.1),
        ("loss", -0.1),
        ("capacity", 0.0),
        ("mtu", 0),
        ("mtu", 1500.0),
        ("queue", 0),
        ("dup", 1.5),
    ],
)
def test_link_spec_rejects_bad_values(field: str, value: Any) -> None:
    with pytest.raises(SimError, match=field):
        LinkSpec(**{field: value})


def test_add_link_validation() -> None:
    sim = net("a", "b")
    with pytest.raises(SimError, match="already exists"):
        sim.add_link("b", "a")
    with pytest.raises(SimError, match="itself"):
        sim.add_link("a", "a")
    with pytest.raises(SimError, match="unknown node"):
        sim.add_link("a", "zz")
    with pytest.raises(SimError, match="unknown node"):
        sim.net.set_tamper("zz", None)
    assert sim.net.links() == [("a", "b")]
    assert sim.net.neighbours("b") == ["a"] and sim.net.has_link("b", "a")
    assert sim.net.link("b", "a").backlog(0.0) == 0.0
