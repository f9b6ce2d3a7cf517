"""Babel-style routing: codec, convergence, failure, starvation, hysteresis, loop freedom,
and the router's timer (push-style ``SetTimer``).

The routers under test are real and run on the simulator (``x0tta6bl4.sim``) as bare
cores (``helpers.RouterCore``); the link costs are set by the test directly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import itertools
import random
from collections.abc import Callable, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.routing.helpers import RouterCore, SentLog, TimerSlot, messages, split
from x0tta6bl4.errors import BadLength, DecodeError, Truncated, UnknownType
from x0tta6bl4.routing import babel as rt
from x0tta6bl4.routing import linkquality as lq
from x0tta6bl4.routing import metric as routing_metric
from x0tta6bl4.routing.babel import (
    HYSTERESIS_ABS,
    INFINITY,
    ROUTE_TIMER,
    SEQNO_REQUEST_HOPS,
    SEQNO_REQUEST_MAX_RESENDS,
    TRIGGER_DELAY,
    Outgoing,
    Router,
    RouteRequest,
    RouterOutput,
    RouteTimer,
    SeqnoRequest,
    Tlv,
    Update,
    decode_tlvs,
    encode_tlvs,
    pack_tlvs,
    seqno_ge,
    seqno_newer,
)
from x0tta6bl4.sansio import SetTimer
from x0tta6bl4.sim import LinkSpec, Simulator


def nid(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()[:8]


# --- harness --------------------------------------------------------------------------


class Net:
    """A handful of real Routers on the simulator, over links whose routing costs the
    test sets directly (the simulator's links carry the packets: latency ``delay`` plus
    up to ``jitter``, each packet lost with probability ``loss``; :meth:`drop` loses
    chosen ones).

    A test that calls a router directly and then runs the net on must pass the output
    to :meth:`emit`: it may carry the router's SetTimer, and the simulator holds the
    timer (``RouterCore`` asserts that the held timer is never late).
    """

    def __init__(
        self,
        names: list[str],
        *,
        delay: float = 0.01,
        jitter: float = 0.0,
        interval: float = rt.UPDATE_INTERVAL,
        seed: int = 0,
        wire: bool = True,
        loss: float = 0.0,
    ) -> None:
        self.sim = Simulator(seed)
        # The routers pack to MTU themselves; wire=False sends each batch unsplit.
        self.spec = LinkSpec(latency=delay, jitter=jitter, mtu=1 << 16, loss=loss)
        self.wire = wire
        self.interval = interval
        self.cores: dict[str, RouterCore] = {}
        self.ids = {n: nid(n) for n in names}
        self.names = {v: k for k, v in self.ids.items()}
        self.cost: dict[tuple[str, str], int] = {}  # directed
        self.sent: SentLog = []
        self.on_deliver: Callable[[], None] | None = None
        for n in names:
            self.sim.add_node(n, self._make_core)
        self.sim.run(0.0)  # every router starts before any link exists

    def _make_core(self, name: str, rng: random.Random, now: float) -> RouterCore:
        router = Router(nid(name), rng, update_interval=self.interval)
        core = RouterCore(name, router, wire=self.wire, sent=self.sent, on_packet=self._delivered)
        self.cores[name] = core
        return core

    def _delivered(self) -> None:
        if self.on_deliver is not None:
            self.on_deliver()

    @property
    def now(self) -> float:
        return self.sim.now

    @property
    def routers(self) -> dict[str, Router]:
        return {n: c.router for n, c in self.cores.items()}

    # topology
    def neighbours(self, a: str) -> list[str]:
        return [b for (x, b) in self.cost if x == a]

    def link(self, a: str, b: str, cost: int, cost_ba: int | None = None) -> None:
        self.cost[(a, b)] = cost
        self.cost[(b, a)] = cost if cost_ba is None else cost_ba
        if self.sim.net.has_link(a, b):
            self.sim.net.set_up(a, b, True)
        else:
            self.sim.add_link(a, b, self.spec)
        self.emit(a, self.routers[a].set_link_cost(self.now, b, cost))
        self.emit(b, self.routers[b].set_link_cost(self.now, a, self.cost[(b, a)]))

    def set_cost(self, a: str, b: str, cost: int) -> None:
        """Change one direction's cost (the link stays up)."""
        self.cost[(a, b)] = cost
        self.emit(a, self.routers[a].set_link_cost(self.now, b, cost))

    def unlink(self, a: str, b: str) -> None:
        """The link goes down: packets in flight on it are lost."""
        self.cost.pop((a, b), None)
        self.cost.pop((b, a), None)
        if self.sim.net.has_link(a, b):
            self.sim.net.set_up(a, b, False)
        self.emit(a, self.routers[a].remove_neighbour(self.now, b))
        self.emit(b, self.routers[b].set_link_cost(self.now, a, INFINITY))

    def stop_loss(self) -> None:
        """Every link (and every link added later) stops losing packets."""
        self.spec = dataclasses.replace(self.spec, loss=0.0)
        for a, b in self.sim.net.links():
            self.sim.net.degrade(a, b, loss=0.0)

    # transport
    def drop(self, src: str, dst: str, until: float, pred: Callable[[list[Tlv]], bool]) -> None:
        """Lose every packet from ``src`` to ``dst`` arriving before ``until`` whose TLVs
        satisfy ``pred`` (a deterministic loss, where the link's loss is random)."""
        prev = self.sim.net.intercept

        def intercept(s: object, d: str, data: bytes) -> bytes | None:
            if s == src and d == dst and self.now < until and pred(decode_tlvs(data)):
                return None
            return data if prev is None else prev(s, d, data)

        self.sim.net.set_intercept(intercept)

    def emit(self, src: str, out: RouterOutput) -> None:
        """Carry out what a test's direct call on ``src``'s router returned, now."""
        acts = self.cores[src].actions(self.now, out)
        self.sim.call(self.now, src, lambda _core, _now: acts)
        self.sim.run(self.now)

    def run(self, duration: float) -> None:
        self.sim.run(self.now + duration)

    # inspection
    def path(self, src: str, dst: str) -> list[str] | None:
        """Next hops from src toward dst; None if they dead-end. Asserts no cycle."""
        hops = [src]
        did = self.ids[dst]
        while hops[-1] != dst:
            nh = self.routers[hops[-1]].next_hop(did)
            if nh is None:
                return None
            assert nh not in hops, f"routing loop toward {dst}: {[*hops, nh]}"
            hops.append(nh)
        return hops

    def assert_loop_free(self) -> None:
        for dst in self.routers:
            for src in self.routers:
                self.path(src, dst)

    def path_cost(self, hops: list[str]) -> int:
        return sum(self.cost[(a, b)] for a, b in itertools.pairwise(hops))

    def shortest(self, src: str) -> dict[str, int]:
        dist = {src: 0}
        pq = [(0, src)]
        while pq:
            d, u = heapq.heappop(pq)
            if d > dist[u]:
                continue
            for v in self.neighbours(u):
                nd = d + self.cost[(u, v)]
                if nd < dist.get(v, 1 << 60):
                    dist[v] = nd
                    heapq.heappush(pq, (nd, v))
        return dist

    def assert_shortest_paths(self) -> None:
        for src, r in self.routers.items():
            dist = self.shortest(src)
            for dst in self.routers:
                if dst == src:
                    continue
                hops = self.path(src, dst)
                assert hops is not None, f"{src} has no route to {dst}"
                assert self.path_cost(hops) == dist[dst], (src, dst, hops)
                assert r.metric(self.ids[dst]) == dist[dst]

    def sent_tlvs(self, kind: type, since: float = 0.0) -> list[tuple[str, str | None, Tlv]]:
        return [(s, to, t) for (at, s, to, t) in self.sent if isinstance(t, kind) and at >= since]


def line(n: int, cost: int = 96, **kw: object) -> Net:
    names = [chr(ord("a") + i) for i in range(n)]
    net = Net(names, **kw)  # type: ignore[arg-type]
    for x, y in itertools.pairwise(names):
        net.link(x, y, cost)
    return net


# --- codec -------------------------------------------------------------------------------

node_ids = st.binary(min_size=8, max_size=8)
u16 = st.integers(0, 0xFFFF)
tlv_strategy: st.SearchStrategy[Tlv] = st.one_of(
    st.builds(Update, node_ids, u16, u16, st.sampled_from([0, 100, 1600, 0xFFFF])),
    st.builds(SeqnoRequest, node_ids, u16, st.integers(0, 255)),
    st.builds(RouteRequest, st.none() | node_ids),
    st.builds(rt.Query, node_ids, u16, u16),
    st.builds(rt.Reply, node_ids, u16, u16, u16),
    st.builds(rt.Resume, node_ids, u16, u16, u16),
)


@given(st.lists(tlv_strategy, max_size=60))
def test_tlv_round_trip(tlvs: list[Tlv]) -> None:
    assert decode_tlvs(encode_tlvs(tlvs)) == tlvs


@given(st.lists(tlv_strategy, max_size=80), st.integers(17, 300))
def test_pack_tlvs_respects_the_limit_and_preserves_order(tlvs: list[Tlv], limit: int) -> None:
    packets = pack_tlvs(tlvs, limit)
    assert all(0 < len(p) <= limit for p in packets)
    assert [t for p in packets for t in decode_tlvs(p)] == tlvs


def test_updates_with_one_interval_share_a_tlv() -> None:
    ups = [Update(nid(str(i)), i, i, 1600) for i in range(1000)]
    data = encode_tlvs(ups)
    assert len(data) == 3 + 2 + 12 * 1000  # one header, 12 bytes per route
    assert decode_tlvs(data) == ups
    # More records than one TLV's 16-bit length can hold still round-trip.
    many = [Update(nid(str(i)), 1, 2, 3) for i in range(6000)]
    assert decode_tlvs(encode_tlvs(many)) == many


@settings(max_examples=300)
@given(st.binary(max_size=80))
def test_decode_tlvs_raises_only_decode_errors(data: bytes) -> None:
    try:
        tlvs = decode_tlvs(data)
    except DecodeError:
        return
    assert encode_tlvs(tlvs) == data or len(tlvs) >= 2  # split update groups re-merge


@settings(max_examples=200)
@given(st.binary(max_size=80))
def test_handle_packet_raises_only_decode_errors_and_is_atomic(data: bytes) -> None:
    r = Router(nid("x"), random.Random(1))
    r.set_link_cost(0.0, "p", 96)
    # Whatever is valid up front, a bad tail must not leave half the packet applied.
    good = encode_tlvs([Update(nid("d"), 1, 10, 1600)])
    try:
        r.handle_packet(0.0, "p", good + data)
    except DecodeError:
        assert r.selected() == {}


def test_decode_error_kinds() -> None:
    with pytest.raises(Truncated):
        decode_tlvs(b"\x01\x00")
    with pytest.raises(Truncated):
        decode_tlvs(b"\x02\x00\x0b" + b"\x00" * 10)
    with pytest.raises(BadLength):
        decode_tlvs(b"\x01\x00\x02\x06\x40")  # update with no records
    with pytest.raises(BadLength):
        decode_tlvs(b"\x01\x00\x0f" + b"\x00" * 15)  # partial record
    with pytest.raises(BadLength):
        decode_tlvs(b"\x02\x00\x0a" + b"\x00" * 10)
    with pytest.raises(BadLength):
        decode_tlvs(b"\x03\x00\x04" + b"\x00" * 4)
    with pytest.raises(BadLength):
        decode_tlvs(b"\x04\x00\x0e" + b"\x00" * 14)  # a query is 12 bytes
    with pytest.raises(BadLength):
        decode_tlvs(b"\x05\x00\x0c" + b"\x00" * 12)  # a reply is 14
    with pytest.raises(BadLength):
        decode_tlvs(b"\x06\x00\x0c" + b"\x00" * 12)  # so is a resume
    with pytest.raises(UnknownType):
        decode_tlvs(b"\x09\x00\x00")
    assert decode_tlvs(b"") == []


def test_encode_rejects_bad_fields() -> None:
    with pytest.raises(ValueError):
        encode_tlvs([Update(b"short", 1, 1, 1)])
    with pytest.raises(ValueError):
        encode_tlvs([Update(nid("a"), 0x10000, 1, 1)])
    with pytest.raises(ValueError):
        encode_tlvs([Update(nid("a"), 1, 1, -1)])
    with pytest.raises(ValueError):
        encode_tlvs([SeqnoRequest(nid("a"), 1, 256)])
    with pytest.raises(ValueError):
        encode_tlvs([RouteRequest(b"x")])
    with pytest.raises(ValueError):
        encode_tlvs([rt.Query(nid("a"), 1, 0x10000)])
    with pytest.raises(ValueError):
        encode_tlvs([rt.Reply(b"x", 1, 1, 1)])
    with pytest.raises(ValueError):
        pack_tlvs([Update(nid("a"), 1, 1, 1)], 16)
    with pytest.raises(ValueError):
        pack_tlvs([SeqnoRequest(nid("a"), 1, 1)], 13)
    with pytest.raises(TypeError):
        encode_tlvs(["nope"])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        Router(b"short", random.Random(1))
    with pytest.raises(ValueError):
        Router(nid("a"), random.Random(1), update_interval=0)
    with pytest.raises(ValueError):
        Router(nid("a"), random.Random(1), update_repeats=-1)


# --- seqno arithmetic ------------------------------------------------------------------


def test_seqno_comparisons_wrap() -> None:
    assert seqno_newer(0, 0xFFFF)
    assert seqno_newer(5, 0xFFF0)
    assert not seqno_newer(0xFFFF, 0)
    assert not seqno_newer(7, 7)
    assert seqno_ge(7, 7)
    assert seqno_ge(1, 0xFFFF)
    assert not seqno_ge(0xFFFF, 1)
    assert not seqno_newer(0x8000, 0)  # exactly half-way: neither is newer
    assert not seqno_newer(0, 0x8000)


@given(u16, st.integers(1, 0x7FFF))
def test_seqno_newer_is_antisymmetric_across_wrap(a: int, k: int) -> None:
    b = (a + k) & 0xFFFF
    assert seqno_newer(b, a)
    assert not seqno_newer(a, b)
    assert seqno_ge(b, a) and not seqno_ge(a, b)


def test_router_seqno_wraps_when_requested() -> None:
    net = Net(["a", "b"])
    net.routers["b"].seqno = 0xFFFF  # before b ever advertises
    net.link("a", "b", 96)
    net.run(1.0)
    a = net.routers["a"]
    b_id = net.ids["b"]
    net.emit("a", a.handle(net.now, "b", [Update(b_id, 0xFFFF, 0, 1600)]))
    # a asks for seqno 0 (= 0xFFFF + 1); b must step to it, and 0 beats 0xFFFF at a.
    net.emit("b", net.routers["b"].handle(net.now, "a", [SeqnoRequest(b_id, 0, 5)]))
    net.run(1.0)
    assert net.routers["b"].seqno == 0
    assert a.selected()[b_id] == ("b", 96, 0)


# --- convergence ------------------------------------------------------------------------


def test_line_converges_to_shortest_paths() -> None:
    net = line(5)
    net.run(2.0)
    net.assert_shortest_paths()
    assert net.path("a", "e") == ["a", "b", "c", "d", "e"]
    assert net.routers["a"].metric(net.ids["e"]) == 4 * 96
    assert net.routers["a"].metric(net.ids["a"]) == 0
    assert net.routers["a"].next_hop(net.ids["a"]) is None
    assert net.routers["a"].neighbours() == {"b": 96}


def test_ring_converges_and_object_path_agrees() -> None:
    names = [f"r{i}" for i in range(6)]
    for wire in (True, False):
        net = Net(names, wire=wire, seed=3)
        costs = [96, 100, 300, 96, 150, 96]
        for i, c in enumerate(costs):
            net.link(names[i], names[(i + 1) % 6], c)
        net.run(2.0)
        net.assert_shortest_paths()
        sel = net.routers["r0"].selected()
        assert set(sel) == {net.ids[n] for n in names[1:]}
        nh, metric, _seqno = sel[net.ids["r3"]]
        assert (nh, metric) == ("r5", 96 + 150 + 96)


def test_killing_a_link_reroutes() -> None:
    names = [f"r{i}" for i in range(5)]
    net = Net(names)
    for i in range(5):
        net.link(names[i], names[(i + 1) % 5], 96)
    net.run(2.0)
    assert net.path("r0", "r1") == ["r0", "r1"]
    net.unlink("r0", "r1")
    net.run(1.0)
    net.assert_shortest_paths()
    assert net.path("r0", "r1") == ["r0", "r4", "r3", "r2", "r1"]
    assert net.routers["r0"].route_changes[net.ids["r1"]] >= 2  # learnt, then moved
    changes = [(c.old, c.new) for c in net.routers["r0"].drain_changes() if c.dst == net.ids["r1"]]
    # r4's route (288) is no better than r0's FD (96), so r0 starves until r1's seqno
    # moves: the log says so, and ends on r4.
    assert changes[0] == (None, "r1")
    assert changes[-1][1] == "r4"
    assert ("r1", None) in changes or ("r1", "r4") in changes
    assert net.routers["r0"].drain_changes() == []


def test_retraction_propagates() -> None:
    net = line(4)
    net.run(2.0)
    d_id = net.ids["d"]
    assert net.path("a", "d") is not None
    t_cut = net.now
    net.unlink("c", "d")
    net.run(1.0)
    for n in "abc":
        assert net.routers[n].next_hop(d_id) is None
        assert net.routers[n].metric(d_id) == INFINITY
    retractions = [
        (s, t.seqno)
        for s, _, t in net.sent_tlvs(Update, since=t_cut)
        if isinstance(t, Update) and t.dst == d_id and t.metric == INFINITY
    ]
    assert {s for s, _ in retractions} == {"a", "b", "c"}
    log = net.routers["a"].drain_changes()
    assert log[-1].dst == d_id and log[-1].old == "b" and log[-1].new is None
    # The other destinations are untouched.
    assert net.path("a", "c") == ["a", "b", "c"]


def test_link_restoration_relearns_routes() -> None:
    net = line(3)
    net.run(2.0)
    net.unlink("b", "c")
    net.run(1.0)
    assert net.path("a", "c") is None
    net.link("b", "c", 96)
    net.run(1.0)
    assert net.path("a", "c") == ["a", "b", "c"]
    net.assert_shortest_paths()


def _starvation_net(**kw: object) -> Net:
    """s-a-b is the short way; s-x-y-b the long one (x2: not linked yet). b's FD comes
    from the short way, so y's route (metric 192 = b's FD metric) is unfeasible until
    s's seqno moves. Converged."""
    net = Net(["s", "a", "b", "x", "y", "x2"], **kw)  # type: ignore[arg-type]
    net.link("s", "a", 96)
    net.link("a", "b", 96)
    net.link("s", "x", 96)
    net.link("x", "y", 96)
    net.link("y", "b", 200)
    net.run(2.0)
    assert net.path("b", "s") == ["b", "a", "s"]
    return net


def test_starvation_is_escaped_with_a_seqno_request() -> None:
    net = _starvation_net()
    s_id = net.ids["s"]
    b = net.routers["b"]
    fd = b.feasibility_distance(s_id)
    assert fd is not None and fd[1] == 192
    seqno_before = net.routers["s"].seqno
    net.on_deliver = net.assert_loop_free
    t_cut = net.now
    net.unlink("a", "b")
    net.run(1.0)
    assert net.path("b", "s") == ["b", "y", "x", "s"]
    assert b.metric(s_id) == 200 + 192
    assert seqno_newer(net.routers["s"].seqno, seqno_before)
    requests = net.sent_tlvs(SeqnoRequest, since=t_cut)
    assert any(src == "b" and t.dst == s_id for src, _, t in requests)
    assert any(src == "x" for src, _, _ in requests)  # forwarded toward the source


def _lose_tlvs(net: Net, lost: Callable[[object, str, Tlv], bool]) -> None:
    """From now on every TLV for which ``lost(sender, receiver, tlv)`` holds is lost; the
    rest of its packet arrives."""
    prev = net.sim.net.intercept

    def intercept(src: object, dst: str, data: bytes) -> bytes | None:
        tlvs = decode_tlvs(data)
        kept = [t for t in tlvs if not lost(src, dst, t)]
        if not kept:
            return None
        if len(kept) < len(tlvs):
            data = encode_tlvs(kept)
        return data if prev is None else prev(src, dst, data)

    net.sim.net.set_intercept(intercept)


def _lose_seqno_requests(net: Net) -> None:
    _lose_tlvs(net, lambda _s, _d, t: isinstance(t, SeqnoRequest))


def _starving_b() -> Net:
    """:func:`_starvation_net` with every seqno request lost: only a query can free b's
    unfeasible route through y."""
    net = _starvation_net()
    _lose_seqno_requests(net)
    return net


def test_a_starving_node_takes_an_unfeasible_route_once_every_neighbour_replied() -> None:
    net = _starving_b()
    s_id = net.ids["s"]
    b = net.routers["b"]
    seqno_before = net.routers["s"].seqno
    net.on_deliver = net.assert_loop_free
    t_cut = net.now
    net.unlink("a", "b")
    net.run(0.1)
    # Without a newer seqno (every request was lost), b's query let it reset its FD: one
    # round trip to its only other neighbour, not one to the origin.
    assert net.path("b", "s") == ["b", "y", "x", "s"]
    assert b.feasibility_distance(s_id) == (seqno_before, 200 + 192)
    assert net.routers["s"].seqno == seqno_before

    def about_s(kind: type) -> list[tuple[str, str | None]]:
        return [(src, to) for src, to, t in net.sent_tlvs(kind, since=t_cut) if t.dst == s_id]

    assert about_s(rt.Query) == [("b", None)]
    assert about_s(rt.Reply) == [("y", "b")]
    # The others learn b's new route at once, not after the 50 ms coalescing.
    resumes = [(src, t) for src, _, t in net.sent_tlvs(rt.Resume, since=t_cut)]
    about = [(src, t.metric) for src, t in resumes if isinstance(t, rt.Resume) and t.dst == s_id]
    assert about == [("b", 392)]


def test_a_neighbour_that_starves_too_replies_when_its_own_query_is_over() -> None:
    # s-a-b-c, and the long way s-x-y-c. When a's query makes b (routing through a)
    # starve too, b answers a only once c has answered b, so that a's reset does not
    # pick a route behind b that still leads through a. (a's retraction is lost, so b
    # learns of the loss from the query.)
    net = Net(["s", "a", "b", "c", "x", "y"])
    for u, v in (("s", "a"), ("a", "b"), ("b", "c"), ("s", "x"), ("x", "y")):
        net.link(u, v, 96)
    net.link("y", "c", 250)
    net.run(2.0)
    assert net.path("a", "s") == ["a", "s"] and net.path("c", "s") == ["c", "b", "a", "s"]
    _lose_seqno_requests(net)
    s_id = net.ids["s"]
    _lose_tlvs(
        net,
        lambda src, dst, t: (
            (src, dst) == ("a", "b")
            and isinstance(t, Update)
            and (t.dst, t.metric) == (s_id, INFINITY)
        ),
    )
    net.on_deliver = net.assert_loop_free
    t_cut = net.now
    net.unlink("s", "a")
    net.run(0.3)
    assert net.path("a", "s") == ["a", "b", "c", "y", "x", "s"]
    order = [
        (src, to, type(t).__name__)
        for at, src, to, t in net.sent
        if at >= t_cut and isinstance(t, rt.Query | rt.Reply) and t.dst == net.ids["s"]
    ]
    assert order.index(("c", "b", "Reply")) < order.index(("b", "a", "Reply"))
    assert ("b", None, "Query") in order


def test_a_node_resets_its_fd_once_per_seqno() -> None:
    # b's query has reset its FD once and b took the long way (s-x-y-b). When that goes
    # too, a route at the same seqno (via x2, which advertises more than the new FD) is
    # not taken by a second reset: across a partition such routes are the ghosts of the lost side
    # (neighbours that had not heard of the loss yet), and a reset after each one
    # counted to infinity over them for seconds. A newer seqno frees it as ever.
    net = _starving_b()
    s_id = net.ids["s"]
    b = net.routers["b"]
    seqno_before = net.routers["s"].seqno
    net.unlink("a", "b")
    net.run(0.1)
    assert net.path("b", "s") == ["b", "y", "x", "s"]
    net.link("x2", "x", 300)
    net.link("b", "x2", 96)
    net.run(1.0)
    assert b.feasibility_distance(s_id) == (seqno_before, 392)
    assert b.next_hop(s_id) == "y"
    net.on_deliver = net.assert_loop_free
    t_cut = net.now
    net.unlink("y", "b")
    net.run(1.0)
    assert b.next_hop(s_id) is None  # x2 advertises 396: not feasible at this seqno
    queries = [t for at, src, _, t in net.sent if at >= t_cut and isinstance(t, rt.Query)]
    assert not [t for t in queries if t.dst == s_id]
    # Once seqno requests get through (b resends its own with backoff), s's seqno moves
    # and b takes x2's route.
    net.sim.net.set_intercept(None)
    net.run(5.0)
    assert net.path("b", "s") == ["b", "x2", "x", "s"]


def test_a_query_nobody_answers_is_given_up_without_resetting() -> None:
    net = _starving_b()
    s_id = net.ids["s"]
    b = net.routers["b"]
    fd = b.feasibility_distance(s_id)
    net.drop("y", "b", float("inf"), lambda tlvs: any(isinstance(t, rt.Reply) for t in tlvs))
    t_cut = net.now
    net.unlink("a", "b")
    net.run(rt.QUERY_TIMEOUT + 0.2)
    assert b.next_hop(s_id) is None
    assert b.feasibility_distance(s_id) == fd
    # It asked again, every QUERY_RESEND, until it gave up.
    asked = [
        at for at, src, _, t in net.sent if src == "b" and isinstance(t, rt.Query) and t.dst == s_id
    ]
    assert len(asked) == pytest.approx(rt.QUERY_TIMEOUT / rt.QUERY_RESEND, abs=2)
    assert max(asked) < t_cut + rt.QUERY_TIMEOUT + 0.01


def test_a_neighbour_dropped_at_one_end_only_blocks_the_reset() -> None:
    # b drops its link to x, but x has not noticed and still holds b's route to s
    # (metric 288 via b-a-s; feasible for x, whose own metric via y is larger).
    net = _starving_b()
    net.link("b", "x2", 96)
    net.link("x2", "x", 500)
    net.run(2.0)
    s_id = net.ids["s"]
    b = net.routers["b"]
    fd = b.feasibility_distance(s_id)
    net.emit("b", b.remove_neighbour(net.now, "x2"))  # only b's end
    net.unlink("a", "b")
    net.run(rt.QUERY_TIMEOUT + 0.2)
    # x2 cannot hear b's query and may still take b's old route, so b must not reset
    # its FD: a reset route through y could lead back through x2 (y-x-x2-b).
    assert b.feasibility_distance(s_id) == fd
    net.assert_loop_free()


def test_an_update_overtaken_by_the_neighbours_query_is_ignored() -> None:
    net = line(3)
    net.run(2.0)
    a = net.routers["a"]
    c_id = net.ids["c"]
    seqno = a.selected()[c_id][2]
    now = net.now
    # b withdraws c with a query; its older update, overtaken on the way, comes second.
    a.handle(now, "b", [rt.Query(c_id, seqno, 7)])
    assert a.next_hop(c_id) is None
    a.handle(now + 0.01, "b", [Update(c_id, seqno, 96, 1600)])
    assert a.next_hop(c_id) is None
    # b's Resume (its query is over) is taken at once, and so is a newer seqno.
    a.handle(now + 0.02, "b", [rt.Resume(c_id, seqno, 90, 7)])
    assert a.metric(c_id) == 186
    a.handle(now + 0.03, "b", [rt.Query(c_id, seqno, 8)])
    a.handle(now + 0.04, "b", [Update(c_id, (seqno + 1) & 0xFFFF, 96, 1600)])
    assert a.metric(c_id) == 192
    # A late copy of a query that is over changes nothing.
    a.handle(now + 0.05, "b", [rt.Query(c_id, seqno, 7)])
    assert a.metric(c_id) == 192


def test_hysteresis_ignores_small_improvements_but_takes_big_ones() -> None:
    # n reaches d through p (96 + 96) or q (100 + 96).
    net = Net(["n", "p", "q", "d"])
    net.link("n", "p", 96)
    net.link("n", "q", 100)
    net.link("p", "d", 96)
    net.link("q", "d", 96)
    net.run(2.0)
    d_id = net.ids["d"]
    n = net.routers["n"]
    assert n.next_hop(d_id) == "p"
    changes = n.route_changes[d_id]
    # p becomes slightly worse than q: 96 + 130 = 226 vs 196 (gain 30 <= HYSTERESIS_ABS).
    net.set_cost("n", "p", 130)
    net.run(1.0)
    assert HYSTERESIS_ABS >= 226 - 196
    assert n.next_hop(d_id) == "p"
    assert n.metric(d_id) == 226
    assert n.route_changes[d_id] == changes
    # Much worse: switch.
    net.set_cost("n", "p", 400)
    net.run(1.0)
    assert n.next_hop(d_id) == "q"
    assert n.route_changes[d_id] == changes + 1
    # And a big improvement on a non-selected route wins too.
    net.set_cost("n", "p", 20)
    net.run(1.0)
    assert n.next_hop(d_id) == "p"


def test_link_cost_noise_is_absorbed() -> None:
    net = line(2)
    a = net.routers["a"]
    assert a.set_link_cost(net.now, "b", 100) == []
    assert a.neighbours() == {"b": 96}
    assert a.set_link_cost(net.now, "b", 0) != [] or a.neighbours()["b"] == 1
    assert a.neighbours()["b"] >= rt.MIN_LINK_COST
    assert a.remove_neighbour(net.now, "nobody") == []


def test_good_news_is_coalesced_bad_news_is_not() -> None:
    net = line(3)
    net.run(2.0)
    a = net.routers["a"]
    new = nid("new")
    msgs, timers = split(a.handle(net.now, "b", [Update(new, 1, 50, 1600)]))
    assert msgs == []  # a new route waits for the flush, and asks to be woken for it
    assert len(timers) == 1 and net.now < timers[0].at <= net.now + TRIGGER_DELAY
    msgs = messages(a.handle_timer(net.now + TRIGGER_DELAY))
    assert [(o.to, o.tlvs) for o in msgs] == [(None, [Update(new, 1, 146, 1600)])]
    msgs = messages(a.handle(net.now + 0.1, "b", [Update(new, 1, INFINITY, 1600)]))
    assert msgs[0].to is None and msgs[0].tlvs[0] == Update(new, 1, INFINITY, 1600)


def test_route_requests_are_answered() -> None:
    net = line(3)
    net.run(2.0)
    b = net.routers["b"]
    c_id = net.ids["c"]
    (dump,) = messages(b.handle(net.now, "a", [RouteRequest(None)]))
    assert dump.to == "a"
    # Everything b knows, including itself and the route back to a (no split horizon).
    assert {t.dst for t in dump.tlvs if isinstance(t, Update)} == set(net.ids.values())
    out = b.handle(net.now, "a", [RouteRequest(c_id)])
    assert out == [Outgoing("a", [Update(c_id, net.routers["c"].seqno, 96, 1600)])]
    unknown = nid("unknown")
    out = b.handle(net.now, "a", [RouteRequest(unknown)])
    assert out == [Outgoing("a", [Update(unknown, 0, INFINITY, 1600)])]
    # Messages from a stranger are ignored.
    assert b.handle(net.now, "stranger", [RouteRequest(None)]) == []
    assert b.handle_packet(net.now, "stranger", encode_tlvs([RouteRequest(None)])) == []


def test_seqno_request_for_self_jumps_to_it_only_when_ahead() -> None:
    net = line(2)
    net.run(1.0)
    b = net.routers["b"]
    b_id = net.ids["b"]
    s = b.seqno
    out = b.handle(net.now, "a", [SeqnoRequest(b_id, s, 10)])  # not ahead: just answer
    assert b.seqno == s
    assert out == [Outgoing("a", [Update(b_id, s, 0, 1600)])]
    out = b.handle(net.now, "a", [SeqnoRequest(b_id, (s + 5) & 0xFFFF, 10)])
    # Jump straight to it: after a restart ours may be thousands behind (see routing.py).
    assert b.seqno == (s + 5) & 0xFFFF
    me = Update(b_id, b.seqno, 0, 1600)
    assert messages(out) == [Outgoing(None, [me])]
    # The answer is urgent, so copies follow, REPEAT_DELAY apart (the first one is what
    # the timer is moved for).
    assert split(out)[1] == [SetTimer(net.now + rt.REPEAT_DELAY, ROUTE_TIMER)]
    timer = TimerSlot()
    timer.feed(out)
    for k in range(1, rt.UPDATE_REPEATS + 1):
        assert timer.at == pytest.approx(net.now + k * rt.REPEAT_DELAY)
        assert timer.feed(b.handle_timer(timer.at)) == [Outgoing(None, [me])]
    assert timer.at > net.now + 1.0  # no more copies


def test_restarted_node_jumps_past_its_old_seqno() -> None:
    net = line(2)
    net.run(1.0)
    b = net.routers["b"]
    old = b.seqno
    b.seqno = (old - 10) & 0xFFFF  # as if b restarted with a stale counter
    out = b.handle(net.now, "a", [Update(net.ids["b"], old, 96, 1600)])
    assert b.seqno == (old + 1) & 0xFFFF
    assert messages(out)[0].tlvs == [Update(net.ids["b"], b.seqno, 0, 1600)]


def _b_of_line4() -> tuple[Net, Router, bytes, int]:
    """A converged line a-b-c-d: the net, b's router, d's id and the seqno to ask of d."""
    net = line(4)
    net.run(2.0)
    return net, net.routers["b"], net.ids["d"], (net.routers["d"].seqno + 1) & 0xFFFF


def test_seqno_requests_are_forwarded_with_hop_count_and_deduplicated() -> None:
    net, b, d_id, want = _b_of_line4()
    out = b.handle(net.now, "a", [SeqnoRequest(d_id, want, 5)])
    assert messages(out) == [Outgoing("c", [SeqnoRequest(d_id, want, 4)])]
    assert messages(b.handle(net.now, "a", [SeqnoRequest(d_id, want, 5)])) == []  # duplicate
    assert messages(b.handle(net.now, "a", [SeqnoRequest(d_id, want, 1)])) == []  # hops spent
    # Never back to the requester: c's only way to d is d itself, the only way back is b.
    c = net.routers["c"]
    assert messages(c.handle(net.now, "d", [SeqnoRequest(net.ids["a"], 7, 5)])) in (
        [],
        [Outgoing("b", [SeqnoRequest(net.ids["a"], 7, 4)])],
    )
    # Requests for unknown destinations go nowhere.
    assert messages(b.handle(net.now, "a", [SeqnoRequest(nid("nobody"), 1, 5)])) == []
    # Satisfied locally: answered, not forwarded.
    out = b.handle(net.now, "a", [SeqnoRequest(d_id, net.routers["d"].seqno, 5)])
    answer = messages(out)[0]
    assert answer.to == "a" and isinstance(answer.tlvs[0], Update)


def test_unanswered_seqno_requests_are_resent_a_bounded_number_of_times() -> None:
    r = Router(nid("me"), random.Random(1))
    timer = TimerSlot()
    timer.feed(r.set_link_cost(0.0, "p", 96))
    timer.feed(r.start(0.0))
    dst = nid("far")
    timer.feed(r.handle(0.0, "p", [Update(dst, 10, 100, 1600)]))
    timer.feed(r.handle_timer(1.0))  # flush
    out = r.handle(1.0, "p", [Update(dst, 10, INFINITY, 1600)])  # lost: starving
    assert _requests(out) == [SeqnoRequest(dst, 11, SEQNO_REQUEST_HOPS)]
    timer.feed(out)
    sent_at = [1.0]
    t = 1.0
    for _ in range(50):
        t = max(t + 0.001, timer.at)
        if t > 20.0:
            break
        sent_at += [t] * len(_requests(out := r.handle_timer(t)))
        timer.feed(out)
    # Each request goes twice, REQUEST_REPEAT_DELAY apart; the resends are the rest.
    firsts = sent_at[0::2]
    assert len(sent_at) == 2 * (1 + SEQNO_REQUEST_MAX_RESENDS)
    assert [b - a for a, b in zip(firsts, sent_at[1::2], strict=True)] == pytest.approx(
        [rt.REQUEST_REPEAT_DELAY] * len(firsts)
    )
    assert [b - a for a, b in itertools.pairwise(firsts)] == pytest.approx(
        [rt.SEQNO_REQUEST_RESEND_DELAY * 2**k for k in range(SEQNO_REQUEST_MAX_RESENDS)]
    )


def test_a_seqno_request_goes_a_second_time_unless_answered_first() -> None:
    # A forwarded request is the only copy on its hop: one loss would starve the region
    # behind it until the originator's resend. A second copy follows shortly.
    net, b, d_id, want = _b_of_line4()
    timer = TimerSlot()
    timer.feed(b.handle_timer(net.now))
    t0 = net.now
    assert timer.feed(b.handle(t0, "a", [SeqnoRequest(d_id, want, 5)])) == [
        Outgoing("c", [SeqnoRequest(d_id, want, 4)])
    ]
    assert timer.at == pytest.approx(t0 + rt.REQUEST_REPEAT_DELAY)
    assert _requests(b.handle_timer(timer.at)) == [SeqnoRequest(d_id, want, 4)]
    # Answered before the copy is due: no copy.
    want += 1
    timer.feed(b.handle(t0 + 1.0, "a", [SeqnoRequest(d_id, want, 5)]))
    timer.feed(b.handle(t0 + 1.005, "c", [Update(d_id, want, 96, 1600)]))
    assert _requests(b.handle_timer(t0 + 1.0 + rt.REQUEST_REPEAT_DELAY)) == []


def test_routes_expire_and_sources_are_collected() -> None:
    net = line(2, interval=1.0)
    net.run(3.0)
    a = net.routers["a"]
    b_id = net.ids["b"]
    assert a.next_hop(b_id) == "b"
    # b falls silent without the link being reported down.
    timer = TimerSlot()
    timer.feed(a.handle_timer(net.now))
    out: RouterOutput = []
    t = net.now
    while t < net.now + 10.0 and a.next_hop(b_id) is not None:
        t = max(t + 0.01, timer.at)
        timer.feed(out := a.handle_timer(t))
    assert a.next_hop(b_id) is None
    assert t - net.now <= rt.ROUTE_EXPIRY_FACTOR * 1.0 + 1.0
    assert any(x.metric == INFINITY for _, x in _updates(out))
    assert a.feasibility_distance(b_id) is not None  # kept: it guards loop freedom
    a.handle_timer(t + rt.SOURCE_GC_TIME + 1.0)
    assert a.feasibility_distance(b_id) is None


def test_unfeasible_update_for_the_selected_route_keeps_it_and_asks_for_a_seqno() -> None:
    net = line(3)
    net.run(2.0)
    a = net.routers["a"]
    c_id = net.ids["c"]
    seqno = a.selected()[c_id][2]
    # b claims a much worse metric at the same seqno: unfeasible for a (FD metric 192).
    out = a.handle(net.now, "b", [Update(c_id, seqno, 500, 1600)])
    assert a.next_hop(c_id) == "b"
    want = (seqno + 1) & 0xFFFF
    assert messages(out) == [Outgoing("b", [SeqnoRequest(c_id, want, SEQNO_REQUEST_HOPS)])]
    # ...and a wake-up for the request's second copy, due before anything else.
    assert split(out)[1] == [SetTimer(net.now + rt.REQUEST_REPEAT_DELAY, ROUTE_TIMER)]
    net.emit("a", out)
    net.run(1.0)
    # The newer seqno came back and the honest metric is now in use.
    assert seqno_newer(a.selected()[c_id][2], seqno)


def test_periodic_updates_refresh_routes() -> None:
    net = line(3, interval=1.0)
    net.run(10.0)  # well beyond the expiry of any single update
    net.assert_shortest_paths()
    periodic = [t for s, to, t in net.sent_tlvs(Update, since=5.0) if s == "a" and to is None]
    assert len(periodic) >= 2 * 3  # several full dumps of 3 routes


# --- loop freedom -----------------------------------------------------------------------


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[int, list[tuple[int, int, int]], list[tuple[object, ...]]]:
    n = draw(st.integers(3, 12))
    edges: dict[tuple[int, int], int] = {}
    for i in range(1, n):  # a random spanning tree keeps the start connected
        j = draw(st.integers(0, i - 1))
        edges[(j, i)] = draw(st.integers(1, 400))
    for _ in range(draw(st.integers(0, n))):
        i, j = sorted(draw(st.lists(st.integers(0, n - 1), min_size=2, max_size=2, unique=True)))
        edges[(i, j)] = draw(st.integers(1, 400))
    edge_list = [(i, j, c) for (i, j), c in edges.items()]
    k = len(edge_list)
    op = st.one_of(
        st.tuples(st.just("cost"), st.integers(0, k - 1), st.integers(1, 600), st.booleans()),
        st.tuples(st.just("cut"), st.integers(0, k - 1)),
        st.tuples(st.just("restore"), st.integers(0, k - 1), st.integers(1, 600)),
        st.tuples(st.just("run"), st.floats(0.0, 0.3)),
    )
    return n, edge_list, draw(st.lists(op, min_size=1, max_size=25))


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenarios(), st.integers(0, 2**16))
def test_next_hops_never_form_a_loop(
    scenario: tuple[int, list[tuple[int, int, int]], list[tuple[object, ...]]], seed: int
) -> None:
    _check_loop_freedom(scenario, seed, loss=0.0)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenarios(), st.integers(0, 2**16))
def test_next_hops_never_form_a_loop_under_loss(
    scenario: tuple[int, list[tuple[int, int, int]], list[tuple[object, ...]]], seed: int
) -> None:
    # Lost updates and retractions, and the copies that repair them (each saying what
    # the sender holds by then, maybe after a newer change), must not open a loop.
    _check_loop_freedom(scenario, seed, loss=0.15)


def _check_loop_freedom(
    scenario: tuple[int, list[tuple[int, int, int]], list[tuple[object, ...]]],
    seed: int,
    *,
    loss: float,
) -> None:
    n, edges, ops = scenario
    names = [f"n{i}" for i in range(n)]
    # Reordering delays and short update intervals make the interleavings nastier.
    net = Net(names, delay=0.005, jitter=0.02, interval=0.5, seed=seed, loss=loss)
    net.on_deliver = net.assert_loop_free
    for i, j, c in edges:
        net.link(names[i], names[j], c)
    net.assert_loop_free()
    net.run(0.3)
    for o in ops:
        kind = o[0]
        if kind == "run":
            assert isinstance(o[1], float)
            net.run(o[1])
            continue
        assert isinstance(o[1], int)
        i, j, _ = edges[o[1]]
        a, b = names[i], names[j]
        if kind == "cost" and (a, b) in net.cost:
            assert isinstance(o[2], int)
            if o[3]:
                net.set_cost(a, b, o[2])  # asymmetric
            else:
                net.link(a, b, o[2])
        elif kind == "cut":
            net.unlink(a, b)
        elif kind == "restore" and (a, b) not in net.cost:
            assert isinstance(o[2], int)
            net.link(a, b, o[2])
        net.assert_loop_free()
    # And once things settle, everyone connected can reach everyone. Under heavy loss a
    # starving node may have lost every copy of its seqno request and wait out
    # SEQNO_REQUEST_HOLD before asking again, so liveness is checked once the loss stops
    # (loop freedom was checked under it), within one more hold.
    if loss:
        net.stop_loss()
    net.run(5.0)
    for _ in range(round(rt.SEQNO_REQUEST_HOLD / 0.1) if loss else 1):
        net.assert_loop_free()
        missing = [
            (src, dst)
            for src in names
            for dst in net.shortest(src)
            if dst != src and net.path(src, dst) is None
        ]
        if not missing:
            break
        net.run(0.1)
    assert not missing


def _updates(out: Sequence[Outgoing | SetTimer]) -> list[tuple[str | None, Update]]:
    return [(o.to, t) for o in messages(out) for t in o.tlvs if isinstance(t, Update)]


def test_a_newer_seqno_on_the_selected_route_is_passed_on() -> None:
    # A starving node may sit behind us without our knowing: the newer seqno that frees
    # it must travel on even when our own next hop and metric stay the same.
    r = Router(nid("me"), random.Random(3))
    timer = TimerSlot()
    timer.feed(r.set_link_cost(0.0, "up", 96))
    timer.feed(r.set_link_cost(0.0, "down", 96))
    timer.feed(r.start(0.0))
    dst = nid("far")
    timer.feed(r.handle(0.0, "up", [Update(dst, 10, 100, 1600)]))
    timer.feed(r.handle_timer(TRIGGER_DELAY + 0.01))  # the new route goes out; FD = (10, 196)
    assert r.feasibility_distance(dst) == (10, 196)
    out = r.handle(1.0, "up", [Update(dst, 11, 100, 1600)])
    timer.feed(out)
    t = 1.0
    while t < 1.0 + TRIGGER_DELAY:  # the timer may fire early for other work first
        t = max(t, timer.at)
        timer.feed(more := r.handle_timer(t))
        out += more
    assert t <= 1.0 + TRIGGER_DELAY
    assert (None, Update(dst, 11, 196, r._interval_cs)) in _updates(out)


def _relay_b(metrics: dict[str, int]) -> tuple[Router, bytes]:
    """Router b with a route to ``far`` through each neighbour, advertised at ``metrics``."""
    b = Router(nid("b"), random.Random(4))
    for n in ("a", *metrics):
        b.set_link_cost(0.0, n, 96)
    b.start(0.0)
    dst = nid("far")
    for n, metric in metrics.items():
        b.handle(0.0, n, [Update(dst, 5, metric, 1600)])
    b.handle_timer(TRIGGER_DELAY + 0.01)
    return b, dst


def test_a_forwarded_request_goes_again_at_once_when_its_next_hop_fails() -> None:
    # A relay forwards a request into its next hop a moment before it learns that
    # neighbour is dead. Nobody may ask again for a while (the asker's resend is 0.2 s
    # away): the relay re-forwards it itself, the moment it switches next hop.
    b, dst = _relay_b({"c": 100, "e": 150})
    out = b.handle(1.0, "a", [SeqnoRequest(dst, 6, 10)])
    assert out == [Outgoing("c", [SeqnoRequest(dst, 6, 9)])]
    out = b.remove_neighbour(1.01, "c")
    assert b.next_hop(dst) == "e"
    assert Outgoing("e", [SeqnoRequest(dst, 6, 9)]) in messages(out)
    # Once: another copy of the same request soon after goes nowhere.
    out = b.handle(1.02, "a", [SeqnoRequest(dst, 6, 10)])
    assert _requests(out) == []


def test_a_request_is_not_re_forwarded_back_to_whoever_asked() -> None:
    b, dst = _relay_b({"c": 100})
    b.handle(0.0, "a", [Update(dst, 5, 150, 1600)])
    b.handle_timer(1.0)
    assert b.next_hop(dst) == "c"
    b.handle(1.0, "a", [SeqnoRequest(dst, 6, 10)])
    out = b.remove_neighbour(1.01, "c")
    # b now routes through a, which asked: the request does not go back to it.
    assert b.next_hop(dst) == "a"
    assert _requests(out) == []


def _requests(out: Sequence[Outgoing | SetTimer]) -> list[SeqnoRequest]:
    return [t for o in messages(out) for t in o.tlvs if isinstance(t, SeqnoRequest)]


def _starving_router() -> tuple[Router, bytes, TimerSlot]:
    """A router whose only way to ``far`` is unfeasible: it has to ask for a seqno."""
    r = Router(nid("me"), random.Random(5))
    timer = TimerSlot()
    timer.feed(r.set_link_cost(0.0, "p", 96))
    timer.feed(r.set_link_cost(0.0, "q", 96))
    timer.feed(r.start(0.0))
    far = nid("far")
    timer.feed(r.handle(0.0, "p", [Update(far, 10, 100, 1600)]))
    timer.feed(r.handle_timer(TRIGGER_DELAY + 0.01))  # advertised: FD (10, 196)
    timer.feed(r.handle(1.0, "q", [Update(far, 10, 300, 1600)]))  # worse than FD: unfeasible
    return r, far, timer


def test_a_starving_node_asks_again_after_its_request_expired() -> None:
    r, far, timer = _starving_router()
    out = r.handle(2.0, "p", [Update(far, 10, INFINITY, 1600)])  # the route dies
    assert _requests(out) == [SeqnoRequest(far, 11, SEQNO_REQUEST_HOPS)]
    timer.feed(out)
    t, asked = 2.0, 0
    while t < 2.0 + 3 * rt.SEQNO_REQUEST_HOLD:
        t = max(t + 0.01, timer.at)
        asked += len(_requests(out := r.handle_timer(t)))
        timer.feed(out)
    # three resends, then a fresh request each time the previous one expired unanswered
    assert asked >= SEQNO_REQUEST_MAX_RESENDS + 2
    assert r.next_hop(far) is None


def test_a_forwarded_request_does_not_silence_our_own() -> None:
    r, far, _ = _starving_router()
    # We relay someone's request for seqno 11 first (our route via p still works)...
    fwd = r.handle(1.5, "q", [SeqnoRequest(far, 11, 10)])
    assert fwd == [Outgoing("p", [SeqnoRequest(far, 11, 9)])]
    # ...then we starve ourselves: our own request must still go out, to everyone.
    out = r.handle(1.6, "p", [Update(far, 10, INFINITY, 1600)])
    assert (None, SeqnoRequest(far, 11, SEQNO_REQUEST_HOPS)) in [
        (o.to, t) for o in messages(out) for t in o.tlvs if isinstance(t, SeqnoRequest)
    ]


# --- the route timer (push style) ------------------------------------------------------


def test_route_timer_key_and_the_one_infinity() -> None:
    assert ROUTE_TIMER is RouteTimer.DUE and ROUTE_TIMER.value == "route.due"
    assert rt.INFINITY is routing_metric.INFINITY is lq.INFINITY == 0xFFFF


def test_start_arms_the_route_timer() -> None:
    r = Router(nid("me"), random.Random(1))
    out = r.start(0.0)
    assert len(out) == 1 and isinstance(out[0], SetTimer) and out[0].key == ROUTE_TIMER
    # The first sweep is due half an interval in, the first dump within one interval.
    assert 0.0 < out[0].at <= rt.UPDATE_INTERVAL / 2
    # A neighbour's arrival gets our dump and is owed copies of it: the timer moves to
    # the first copy.
    msgs, timers = split(r.set_link_cost(0.1, "p", 96))
    assert timers == [SetTimer(0.1 + rt.REPEAT_DELAY, ROUTE_TIMER)]
    assert msgs == [Outgoing("p", [RouteRequest(None), Update(nid("me"), r.seqno, 0, 1600)])]


def test_calls_before_start_ask_for_a_timer_at_once() -> None:
    r = Router(nid("me"), random.Random(1))
    msgs, timers = split(r.set_link_cost(0.5, "p", 96))
    assert timers == [SetTimer(0.5, ROUTE_TIMER)]  # its firing starts the periodic work
    assert [o.to for o in msgs] == ["p"]
    me = Update(nid("me"), r.seqno, 0, 1600)
    # Already asked for a timer: no second SetTimer.
    assert r.set_link_cost(0.6, "q", 96) == [Outgoing("q", [RouteRequest(None), me])]
    # The timer fires (late, as it may): the periodic work starts and re-arms; the copies
    # of both dumps due by now go out.
    msgs, timers = split(r.handle_timer(0.7))
    assert msgs == [Outgoing("p", [me]), Outgoing("q", [me])]
    assert len(timers) == 1 and 0.7 < timers[0].at <= 0.7 + rt.REPEAT_DELAY


def test_handle_timer_rearms_and_an_early_or_late_firing_is_harmless() -> None:
    r = Router(nid("me"), random.Random(2), update_interval=1.0)
    timer = TimerSlot()
    timer.feed(r.start(0.0))
    timer.feed(r.set_link_cost(0.0, "p", 96))
    far = nid("far")
    timer.feed(r.handle(0.0, "p", [Update(far, 3, 100, 100)]))
    due = timer.at
    assert due == TRIGGER_DELAY  # the coalesced new route
    # Early: nothing is due yet, so nothing goes out, and the same deadline is re-armed.
    assert r.handle_timer(due / 2) == [SetTimer(due, ROUTE_TIMER)]
    assert r.next_hop(far) == "p"
    # On time: the route goes out.
    msgs = timer.feed(r.handle_timer(due))
    assert _updates(msgs) == [(None, Update(far, 3, 196, 100))]
    assert timer.at > due
    # Very late (a timer lost, a process stalled): everything due by now is done at
    # once (the route has expired) and the timer points to the future again.
    late = 10.0
    out = r.handle_timer(late)
    assert r.next_hop(far) is None
    assert (None, Update(far, 3, INFINITY, 100)) in _updates(out)
    timer.feed(out)
    assert timer.at > late


def test_a_call_sets_a_timer_only_when_it_moves_the_deadline_earlier() -> None:
    r = Router(nid("me"), random.Random(3))
    timer = TimerSlot()
    timer.feed(r.start(0.0))
    timer.feed(r.set_link_cost(0.0, "p", 96))
    while timer.at < 0.5:  # the copies of the new neighbour's dump
        timer.feed(r.handle_timer(timer.at))
    periodic = timer.at
    assert periodic > 1.1
    a, b = nid("a"), nid("b")
    out = r.handle(1.0, "p", [Update(a, 1, 10, 1600)])
    assert split(out) == ([], [SetTimer(1.0 + TRIGGER_DELAY, ROUTE_TIMER)])
    timer.feed(out)
    # A second good-news route joins the same flush: the timer already covers it.
    assert r.handle(1.01, "p", [Update(b, 1, 10, 1600)]) == []
    # A call past the flush time carries the flush itself (the mesh reports a link
    # cost on every hello; this change is absorbed)...
    msgs, timers = split(r.set_link_cost(1.06, "p", 100))
    assert timers == []
    assert [(to, u.dst) for to, u in _updates(msgs)] == [(None, a), (None, b)]
    # ...so the timer still set for 1.05, firing late, finds nothing due and re-arms for
    # the copies the flush owes (a call's own later work never moves the timer earlier).
    copy_at = 1.06 + rt.REPEAT_DELAY
    assert r.handle_timer(1.06) == [SetTimer(copy_at, ROUTE_TIMER)]
    for k in range(rt.UPDATE_REPEATS):
        msgs, timers = split(r.handle_timer(copy_at + k * rt.REPEAT_DELAY))
        assert [(to, u.dst) for to, u in _updates(msgs)] == [(None, a), (None, b)]
    assert r.handle_timer(periodic - 0.01) == [SetTimer(periodic, ROUTE_TIMER)]


def test_the_simulator_always_holds_a_timer_no_later_than_the_router_needs() -> None:
    # RouterCore checks this after every call it carries out; here it runs through
    # convergence, a cut, a restore and several periodic dumps and sweeps.
    net = line(4, interval=1.0)
    net.run(2.0)
    net.unlink("b", "c")
    net.run(1.0)
    net.link("b", "c", 96)
    net.run(5.0)
    net.assert_shortest_paths()
    for core in net.cores.values():
        assert net.now < core.timer.at <= core.router._deadline()


# --- loss: copies of triggered updates and dumps, retractions held in dumps -------------


def _retracts(dst: bytes) -> Callable[[list[Tlv]], bool]:
    """A packet withdrawing ``dst``: a retraction, or a starvation query (one too)."""
    return lambda tlvs: any(
        (isinstance(t, Update) and t.dst == dst and t.metric == INFINITY)
        or (isinstance(t, rt.Query) and t.dst == dst)
        for t in tlvs
    )


def _carries(dst: bytes) -> Callable[[list[Tlv]], bool]:
    return lambda tlvs: any(isinstance(t, Update) and t.dst == dst for t in tlvs)


def test_a_lost_retraction_is_sent_again_within_a_fraction_of_a_second() -> None:
    net = line(4)
    net.run(2.0)
    d_id = net.ids["d"]
    a = net.routers["a"]
    assert a.next_hop(d_id) == "b"
    t_cut = net.now
    # b's retraction for d to a is lost: without another copy a would keep (and
    # advertise) a ghost route until it expired, 3.5 update intervals (56 s) later.
    net.drop("b", "a", t_cut + 0.05, _retracts(d_id))
    net.unlink("c", "d")
    net.run(0.5)
    assert a.next_hop(d_id) is None
    # The copies are bounded and spaced.
    sent = [
        at
        for at, src, to, t in net.sent
        if src == "b"
        and to is None
        and at >= t_cut
        and isinstance(t, Update)
        and (t.dst, t.metric) == (d_id, INFINITY)
    ]
    assert len(sent) == 1 + rt.UPDATE_REPEATS
    assert all(
        y - x == pytest.approx(rt.REPEAT_DELAY, abs=0.02) for x, y in itertools.pairwise(sent)
    )


def test_a_retraction_stays_in_full_dumps_while_a_neighbour_may_hold_the_route() -> None:
    interval = 2.0  # routes expire 3.5 intervals (7 s) after their last refresh
    net = line(3, interval=interval)
    net.run(3.0)
    c_id = net.ids["c"]
    a = net.routers["a"]
    t_cut = net.now
    # Every copy of b's retraction is lost: only a full dump can still clear a's ghost.
    net.drop("b", "a", t_cut + 1.0, _retracts(c_id))
    net.unlink("b", "c")
    net.run(1.0)
    assert a.next_hop(c_id) == "b"  # the ghost
    net.run(interval + 0.5)  # b's next dump, well before the ghost would expire
    assert a.next_hop(c_id) is None
    # Bounded: once the route b advertised last has expired everywhere, dumps leave c out.
    net.run(rt.ROUTE_EXPIRY_FACTOR * interval + interval)
    window = net.now - interval - 0.5
    late = [t for at, src, to, t in net.sent if src == "b" and to is None and at > window]
    assert Update(net.ids["b"], net.routers["b"].seqno, 0, 200) in late  # a dump went out
    assert not any(isinstance(t, Update) and t.dst == c_id for t in late)


def test_a_lost_new_route_arrives_with_the_next_copy() -> None:
    net = Net(["a", "b", "c"])
    net.link("a", "b", 96)
    net.run(2.0)
    c_id = net.ids["c"]
    t0 = net.now
    # b's (coalesced) update announcing c to a is lost; a's only neighbour is b, so
    # without a copy a would learn c from b's next full dump, up to 16 s later.
    net.drop("b", "a", t0 + 0.1, _carries(c_id))
    net.link("b", "c", 96)
    net.run(0.5)
    assert net.path("a", "c") == ["a", "b", "c"]


def test_a_lost_dump_to_a_new_neighbour_is_sent_again() -> None:
    net = Net(["a", "b", "c"])
    net.link("b", "c", 96)
    net.run(2.0)
    t0 = net.now
    # Both dumps b sends the new neighbour a (on the new link, and answering a's route
    # request) are lost.
    net.drop("b", "a", t0 + 0.05, lambda tlvs: True)
    net.link("a", "b", 96)
    net.run(0.5)
    assert net.path("a", "b") == ["a", "b"]
    assert net.path("a", "c") == ["a", "b", "c"]


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_a_lossy_line_converges_long_before_the_first_periodic_dump(seed: int) -> None:
    # 5 % loss on every link of a 10-router line, where every route has one way in:
    # with each update sent once some router nearly always misses a route until the
    # periodic dumps (16 s); with copies every route is there within a second.
    names = [f"l{i}" for i in range(10)]
    net = Net(names, loss=0.05, seed=seed)
    for x, y in itertools.pairwise(names):
        net.link(x, y, 96)
    net.run(1.0)
    net.assert_shortest_paths()


def _grid(w: int, h: int, **kw: object) -> tuple[Net, list[list[str]]]:
    rows = [[f"g{x}.{y}" for x in range(w)] for y in range(h)]
    net = Net([n for row in rows for n in row], **kw)  # type: ignore[arg-type]
    for y in range(h):
        for x in range(w):
            if x + 1 < w:
                net.link(rows[y][x], rows[y][x + 1], 96)
            if y + 1 < h:
                net.link(rows[y][x], rows[y + 1][x], 96)
    return net, rows


def test_a_lossy_partition_leaves_no_ghost_routes() -> None:
    net, rows = _grid(6, 4, loss=0.05, seed=12)
    net.run(3.0)
    net.assert_shortest_paths()  # every route across the coming cut is there
    left = {row[x] for row in rows for x in range(3)}
    right = set(net.routers) - left
    for row in rows:
        net.unlink(row[2], row[3])
    net.run(1.5)
    net.assert_loop_free()
    for side, other in ((left, right), (right, left)):
        for src in side:
            held = [dst for dst in other if net.routers[src].next_hop(net.ids[dst]) is not None]
            assert held == [], (src, held)


def test_with_no_repeats_each_update_goes_out_once() -> None:
    r = Router(nid("me"), random.Random(6), update_repeats=0)
    timer = TimerSlot()
    timer.feed(r.start(0.0))
    timer.feed(r.set_link_cost(0.0, "p", 96))
    far = nid("far")

    def updates_until(end: float) -> list[tuple[str | None, Update]]:
        out: list[tuple[str | None, Update]] = []
        while timer.at <= end:
            out += _updates(timer.feed(r.handle_timer(timer.at)))
        return out

    timer.feed(r.handle(0.1, "p", [Update(far, 3, 100, 1600)]))
    sent = updates_until(0.9)
    sent += _updates(timer.feed(r.handle(1.0, "p", [Update(far, 3, INFINITY, 1600)])))
    sent += updates_until(1.9)
    triggered = [(to, u.dst, u.metric) for to, u in sent if u.dst == far]
    assert triggered == [(None, far, 196), (None, far, INFINITY)]
