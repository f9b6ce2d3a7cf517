"""The simulator as a tool: ``build_mesh`` / ``MeshRun``, flows, periodic checks, random
flaps, path probes that report what a packet would meet, more topologies, and the runner
with loss, jitter, topology kind and flows."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from x0tta6bl4.mesh.routewait import ROUTE_WAIT
from x0tta6bl4.sim import (
    TOPOLOGY_KINDS,
    Edge,
    LinkSpec,
    MeshRun,
    PathResult,
    Scenario,
    SimError,
    Topology,
    TopologyError,
    build_mesh,
    build_topology,
    cut,
    diamond,
    every,
    grid,
    kill,
    line,
    partition,
    random_flaps,
    random_geometric,
    random_regular,
    restore,
    route_path,
    trace_path,
)
from x0tta6bl4.sim.flows import FLOW_RECORD
from x0tta6bl4.sim.runner import flow_pairs, run_scenario

SEED = 5


def _diamond(**kw: object) -> MeshRun:
    run = build_mesh(diamond(LinkSpec(latency=0.002)), seed=SEED, **kw)  # type: ignore[arg-type]
    assert run.wait_converged(limit=5.0) is not None
    return run


# -- build_mesh and paths ---------------------------------------------------------------


def test_build_mesh_gives_a_running_mesh_of_real_nodes() -> None:
    run = _diamond()
    assert sorted(run.nodes()) == ["a", "b", "c", "d"]
    assert run.node("a") is run.nodes()["a"] and run.sim.is_alive("a")
    p = run.path("a", "d")
    assert p.ok and p.kind == "ok" and p.hops[0] == "a" and p.hops[-1] == "d" and p.links == 2
    assert run.route("a", "d") == p
    assert run.reachability([("a", "d"), ("d", "a"), ("b", "c")]) == 1.0
    assert run.healing_events == [] and run.faults() == []
    assert run.control_bytes() > 0
    assert "4 nodes" in repr(run)


def test_build_mesh_link_loss_and_jitter_keep_geometric_latency() -> None:
    topo = random_geometric(8, SEED)
    run = build_mesh(topo, seed=SEED, loss=0.02, jitter=0.005)
    for e in topo.edges:
        link = run.sim.net.link(e.a, e.b)
        assert (link.loss, link.jitter, link.latency) == (0.02, 0.005, e.spec.latency)
    flat = build_mesh(topo, seed=SEED, link=LinkSpec(latency=0.003, loss=0.1), jitter=0.001)
    link = flat.sim.net.link(topo.edges[0].a, topo.edges[0].b)
    assert (link.latency, link.loss, link.jitter) == (0.003, 0.1, 0.001)
    bare = build_mesh(diamond(), seed=SEED, healing=False)
    assert type(bare.sim.core("a")).__name__ == "MeshNode"


def test_path_reports_dead_links_partitions_dead_nodes_no_route_and_loops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cold = build_mesh(diamond(), seed=SEED)
    assert cold.path("a", "d") == PathResult("no_route", ("a",))  # nothing learned yet

    run = _diamond()
    relay = run.path("a", "d").hops[1]
    other = "c" if relay == "b" else "b"
    # A cut link: the routing view still goes through it, the packet does not.
    run.at(run.now, cut("a", relay)).run(run.now)
    assert run.route("a", "d").ok
    assert run.path("a", "d") == PathResult("dead_link", ("a", relay))
    run.at(run.now, restore("a", relay), partition([{"a", "b", "c"}])).run(run.now)
    assert run.path("a", "d") == PathResult("dead_link", ("a", relay, "d"))
    run.sim.net.heal()
    run.sim.crash(relay)
    assert run.path("a", "d") == PathResult("dead_node", ("a", relay))
    assert run.route("a", "d") == PathResult("dead_node", ("a", relay))
    assert run.path(relay, "d") == PathResult("dead_node", (relay,))
    # A loop is a result, not an exception: d sends toward a back through `other`.
    nodes = run.nodes()
    monkeypatch.setattr(nodes[other].router, "next_hop", lambda dst: "a")
    monkeypatch.setattr(nodes["a"].router, "next_hop", lambda dst: other)
    assert trace_path(run.sim, "a", "d") == PathResult("loop", ("a", other, "a"))
    assert route_path(nodes, "a", "d").kind == "loop"
    assert run.paths([("a", "d")]) == {("a", "d"): PathResult("loop", ("a", other, "a"))}


# -- flows ----------------------------------------------------------------------------------


def test_flow_counts_deliveries_latency_and_the_gap_of_a_cut() -> None:
    topo = line(3, LinkSpec(latency=0.01))
    run = build_mesh(topo, seed=SEED, trace_deliveries=True)
    assert run.wait_converged(limit=5.0) is not None
    t0 = run.now + 0.5
    f = run.add_flow("n0000", "n0002", 20, size=100, start=t0, stop=t0 + 6.0)
    # The only path is cut for 1 s: one outage, about as long, in the deliveries.
    run.at(t0 + 2.0, cut("n0001", "n0002")).at(t0 + 3.0, restore("n0001", "n0002"))
    run.run(t0 + 8.0)
    s = run.flow_stats()[0]
    assert (s.flow, s.src, s.dst, f.sent) == (0, "n0000", "n0002", 120)
    assert s.sent == 120 and s.duplicates == 0
    # 20 of 120 sent into the cut: those sent before n0001 found the link dead (0.1-0.2
    # s) are lost, the rest wait for a route (mesh/routewait.py) and arrive late.
    assert 0.85 < s.delivery_ratio < 0.98
    # Two links of 10 ms; the first packets waited for the end-to-end handshake.
    assert s.latency_p50 == pytest.approx(0.02, abs=0.002)
    assert s.latency_p50 <= s.latency_p90 <= s.latency_p99 <= s.latency_max
    assert s.latency_max < ROUTE_WAIT + 0.1  # none waited longer than a route wait
    assert s.first_delivery_at is not None and t0 < s.first_delivery_at < t0 + 0.5
    assert len(s.outages) == 1
    before, after = s.outages[0]
    assert after is not None and t0 + 1.9 < before <= t0 + 2.05 and t0 + 3.0 < after < t0 + 4.5
    # Ground truth in the trace, one record per distinct delivery (opt-in).
    recs = run.sim.trace.select(kind=FLOW_RECORD, node="n0002")
    assert len(recs) == len(f.arrivals) == s.delivered
    assert recs[0][3] == {"flow": 0, "seq": recs[0][3]["seq"], "src": "n0000"}
    assert f.first_delivery_after(t0 + 2.0) == (
        after,
        min(q for q, t in f.arrivals.items() if t >= after),
    )
    assert math.isnan(run.flows.delivery_ratio(grace=100.0))  # nothing sent that early


def test_flow_taps_cost_nothing_without_flows_and_trace_only_when_asked() -> None:
    run = _diamond()
    assert run.sim.on_deliver == [] and run.sim.on_record == []
    run.add_flow("a", "d", 10, stop=run.now + 1.0)
    assert len(run.sim.on_deliver) == 1 and len(run.sim.on_record) == 1
    run.run_for(2.0)
    assert run.flows.flows[0].arrivals
    assert run.sim.trace.select(kind=FLOW_RECORD) == []
    assert run.sim.stats["d"].delivered >= len(run.flows.flows[0].arrivals)


def test_flow_windows_count_what_was_sent_in_them() -> None:
    run = _diamond()
    t0 = run.now
    f = run.add_flow("a", "d", 10, 64, t0, t0 + 3.0)  # positional, as in the issue
    run.run(t0 + 5.0)
    assert f.sent == 30 and f.sent_by(t0 - 1.0) == 0 and f.sent_by(t0) == 1
    assert f.sent_by(t0 + 0.95) == 10 and f.sent_by(t0 + 1.0) == 11 and f.sent_by(t0 + 9) == 30
    assert f.window(t0, t0 + 1.0) == (10, len([q for q in f.arrivals if q < 10]))
    assert f.window(t0 + 1.0, t0 + 10.0)[0] == 20 and f.window(t0 + 4.0, t0 + 5.0) == (0, 0)
    assert f.payload(7)[:4] == b"x0tF" and len(f.payload(7)) == 64
    assert "a->d" in repr(f)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("a", "zz", 10.0), "unknown node"),
        (("a", "a", 10.0), "two nodes"),
        (("a", "d", 0.0), "rate_pps"),
        (("a", "d", math.inf), "rate_pps"),
    ],
)
def test_add_flow_validation(args: tuple[str, str, float], match: str) -> None:
    run = build_mesh(diamond(), seed=SEED)
    with pytest.raises(SimError, match=match):
        run.add_flow(*args)


def test_add_flow_size_and_times_are_checked() -> None:
    run = build_mesh(diamond(), seed=SEED)
    run.run(1.0)
    with pytest.raises(SimError, match="size"):
        run.add_flow("a", "d", 10, size=4)
    with pytest.raises(SimError, match="start"):
        run.add_flow("a", "d", 10, start=0.5)
    with pytest.raises(SimError, match="start"):
        run.add_flow("a", "d", 10, start=2.0, stop=2.0)


def test_same_seed_same_trace_with_flows_and_delivery_records() -> None:
    def digest(seed: int) -> str:
        run = build_mesh(
            diamond(LinkSpec(loss=0.05, jitter=0.002)), seed=seed, trace_deliveries=True
        )
        run.add_flow("a", "d", 20, start=0.5)
        run.add_flow("d", "b", 20, start=0.5)
        run.at(2.0, kill("b")).run(4.0)
        assert run.sim.trace.select(kind=FLOW_RECORD)
        return run.sim.trace.digest()

    assert digest(SEED) == digest(SEED)
    assert digest(SEED) != digest(SEED + 1)


# -- periodic checks and random flaps -------------------------------------------------------


class _Quiet:
    def __init__(self, *_: object) -> None:
        pass

    def start(self, now: float) -> list[object]:
        return []

    def handle(self, now: float, inp: object) -> list[object]:
        return []


def _quiet_scenario(topo: Topology, seed: int = 0) -> Scenario:
    return Scenario(topo, seed, _Quiet)  # type: ignore[arg-type]


def test_every_runs_on_a_fixed_grid_and_stops_at_until() -> None:
    times: list[float] = []
    late: list[float] = []
    s = _quiet_scenario(line(2)).every(0.3, lambda sim: times.append(sim.now), until=1.0)
    s.every(0.5, lambda sim: late.append(sim.now), start=1.0)
    s.run(until=2.2)
    assert times == pytest.approx([0.0, 0.3, 0.6, 0.9])
    assert late == [1.0, 1.5, 2.0]
    with pytest.raises(SimError, match="interval"):
        s.every(0.0, lambda sim: None)
    with pytest.raises(SimError, match="start"):
        s.every(1.0, lambda sim: None, start=-1.0)


def test_every_on_a_running_simulator() -> None:
    sim = _quiet_scenario(line(2)).build()
    sim.run(1.0)
    seen: list[float] = []
    every(sim, 0.5, lambda s: seen.append(s.now), until=2.5)
    sim.run(5.0)
    assert seen == [1.0, 1.5, 2.0, 2.5]
    with pytest.raises(SimError, match="interval"):
        every(sim, math.nan, lambda s: None)


def test_mesh_run_every_passes_the_run() -> None:
    run = build_mesh(diamond(), seed=SEED)
    seen: list[tuple[float, int]] = []
    run.every(0.25, lambda r: seen.append((r.now, len(r.nodes()))), until=0.5).run(1.0)
    assert seen == [(0.0, 4), (0.25, 4), (0.5, 4)]


def _flap_times(seed: int) -> list[tuple[float, str, str]]:
    topo = grid(3, 3)
    r = (
        _quiet_scenario(topo, seed)
        .at(1.0, random_flaps([("n0000", "n0001"), ("n0004", "n0005")], 0.5, until=30.0))
        .at(2.0, random_flaps(None, 0.05, until=10.0, down_for=(0.1, 0.2)))
        .run(until=40.0)
    )
    for a, b in r.sim.net.links():
        assert r.sim.net.is_up(a, b), "every link is left up at until"
    return [(t, k, n) for t, n, k, _ in r.trace if k in ("sim.link_down", "sim.link_up")]


def test_random_flaps_are_seeded_bounded_and_recorded_as_faults() -> None:
    a = _flap_times(SEED)
    assert a == _flap_times(SEED) and a != _flap_times(SEED + 1)
    downs = [t for t, k, _ in a if k == "sim.link_down"]
    ups = [t for t, k, _ in a if k == "sim.link_up"]
    assert len(downs) == len(ups) >= 10  # ~0.5/s on two links for 29 s, down ~1.1 s each
    assert all(1.0 < t < 30.0 for t in downs) and max(ups) <= 30.0


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: random_flaps(None, 0.0, until=1.0), "rate"),
        (lambda: random_flaps(None, 1.0, until=1.0, down_for=(0.0, 1.0)), "down_for"),
        (lambda: random_flaps(None, 1.0, until=math.inf), "until"),
    ],
)
def test_random_flaps_validation(make: Callable[[], object], match: str) -> None:
    with pytest.raises(SimError, match=match):
        make()


def test_random_flaps_on_an_unknown_link_fail_when_applied() -> None:
    s = _quiet_scenario(line(3)).at(1.0, random_flaps([("n0000", "n0002")], 1.0, until=5.0))
    with pytest.raises(SimError, match="no link"):
        s.run(until=2.0)


# -- topologies ------------------------------------------------------------------------------


def test_random_regular_is_regular_connected_and_seeded() -> None:
    t = random_regular(50, 4, seed=3)
    assert len(t) == 50 and all(t.degree(n) == 4 for n in t.nodes) and t.is_connected()
    assert t == random_regular(50, 4, seed=3) and t.edges != random_regular(50, 4, seed=4).edges
    assert all(e.a < e.b for e in t.edges)
    assert random_regular(2, 1, seed=0).edges == (Edge("n0000", "n0001"),)
    for n, d, match in ((5, 3, "even"), (4, 4, "degree"), (6, 1, "never connected")):
        with pytest.raises(TopologyError, match=match):
            random_regular(n, d, seed=0)


def test_build_topology_knows_every_kind() -> None:
    spec = LinkSpec(loss=0.01)
    for kind in TOPOLOGY_KINDS:
        t = build_topology(kind, 10, seed=2, spec=spec)
        assert len(t) == 10 and t.is_connected(), kind
        assert all(e.spec.loss == 0.01 for e in t.edges), kind
        assert t == build_topology(kind, 10, seed=2, spec=spec), kind
    assert build_topology("grid", 12, 0) == grid(4, 3)  # ceil(sqrt(12)) = 4 columns
    ragged = build_topology("grid", 7, 0)  # 3 columns: rows of 3, 3, 1
    assert len(ragged.edges) == 2 + 2 + 3 + 1 and ragged.is_connected()
    assert build_topology("random-regular", 10, 1, degree=3).degree("n0000") == 3
    assert build_topology("random-geometric", 30, 1) == random_geometric(30, 1)
    with pytest.raises(TopologyError, match="unknown topology kind"):
        build_topology("torus", 10, 0)
    with pytest.raises(TopologyError, match="whole degree"):
        build_topology("random-regular", 10, 0, degree=3.5)


# -- the runner -------------------------------------------------------------------------------


def test_run_scenario_on_a_lossy_line_with_flows() -> None:
    s = run_scenario(
        "relay-kill",
        nodes=8,
        seed=SEED,
        topology="random-regular",
        loss=0.01,
        jitter=0.002,
        flows=6,
    )
    assert (s.topology, s.loss, s.jitter, s.nodes) == ("random-regular", 0.01, 0.002, 8)
    assert len(s.flows) == 6 and s.details["flows"] == 6
    assert 0.5 < s.delivery_ratio <= 1.0
    assert s.drops["loss"] > 0
    assert s.fault is not None and s.outages and s.outages[0].fault.kind == "crash"
    partition_line = run_scenario("partition", nodes=6, seed=SEED, topology="line", until=12.0)
    assert partition_line.topology == "line" and partition_line.fault is not None
    assert "3|3" in partition_line.fault


def test_run_scenario_defaults_are_unchanged() -> None:
    s = run_scenario("converge", nodes=6, seed=SEED, until=3.0)
    assert (s.topology, s.loss, s.jitter, s.flows, s.outages) == ("random-geometric", 0, 0, [], [])
    assert math.isnan(s.delivery_ratio) and "flows" not in s.details
    # A run that ends before convergence has no time left for flows.
    short = run_scenario("converge", nodes=6, seed=SEED, until=0.05, flows=3)
    assert short.convergence_s is None and short.flows == []


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"loss": 1.0}, "loss"),
        ({"jitter": -0.1}, "jitter"),
        ({"flows": -1}, "flows"),
        ({"topology": "torus"}, "unknown topology"),
    ],
)
def test_run_scenario_rejects_bad_network_options(kw: dict[str, object], match: str) -> None:
    with pytest.raises(SimError, match=match):
        run_scenario("converge", nodes=6, seed=SEED, **kw)  # type: ignore[arg-type]


def test_flow_pairs_are_distinct_and_seeded() -> None:
    names = [f"n{i}" for i in range(10)]
    p = flow_pairs(names, 20, 3)
    assert len(set(p)) == 20 and all(a != b for a, b in p)
    assert p == flow_pairs(names, 20, 3) and p != flow_pairs(names, 20, 4)
    assert len(flow_pairs(names[:3], 50, 3)) == 6
