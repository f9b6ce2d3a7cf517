"""Failure scenarios on the real mesh (MeshNode + healing, real cryptography) in the
simulator: failover, partitions, degrading and flapping links, determinism, and the
named scenarios of ``sim.runner``."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from itertools import pairwise

import pytest

from tests.sim.helpers import converge, two_paths
from x0tta6bl4.sansio import Action, Deliver
from x0tta6bl4.sim import (
    LinkSpec,
    Simulator,
    build_mesh,
    cut,
    degrade,
    diamond,
    kill,
    schedule,
)
from x0tta6bl4.sim.meshsim import meshes, path
from x0tta6bl4.sim.runner import (
    PARTITION_FOR,
    SCENARIOS,
    SimSummary,
    convergence_stats,
    failover_samples,
    failover_stats,
    percentile,
    run_scenario,
)

SEED = 3


# -- diamond failover -------------------------------------------------------------------


def test_diamond_failover_keeps_app_traffic_flowing() -> None:
    sim = build_mesh(diamond(), seed=SEED).sim
    t0 = converge(sim, 10.0) + 1.0
    a = meshes(sim)["a"]
    relay = a.next_hop("d")
    assert relay in ("b", "c")
    other = "c" if relay == "b" else "b"

    got: list[tuple[float, bytes]] = []

    def on_action(t: float, node: str, act: Action) -> None:
        if node == "d" and type(act) is Deliver:
            assert act.src == "a" and act.port == 7
            got.append((t, act.payload))

    sim.on_action.append(on_action)
    period, n = 0.05, 100  # 5 s of traffic, one message every 50 ms
    for i in range(n):
        sim.send_app(t0 + i * period, "a", "d", 7, b"seq %03d" % i)
    kill_at = t0 + 1.0
    schedule(sim, kill_at, kill(relay))
    sim.run(t0 + n * period + 1.0)

    before = [p for t, p in got if t < kill_at]
    after = [(t, p) for t, p in got if t >= kill_at]
    assert len(before) >= 15
    assert after, "traffic never resumed"
    gap = after[0][0] - kill_at
    # Dead after 0.4 s of silence, then the route and the e2e session move over.
    assert gap < 1.0, f"failover took {gap:.3f} s"
    assert meshes(sim)["a"].next_hop("d") == other
    # Once resumed, nothing sent later is lost, and nothing arrives twice or altered.
    resumed = after[0][0]
    sent_later = {b"seq %03d" % i for i in range(n) if t0 + i * period >= resumed}
    assert sent_later <= {p for _, p in after}
    payloads = [p for _, p in got]
    assert len(payloads) == len(set(payloads))
    assert all(p.startswith(b"seq ") for p in payloads)


# -- partition and heal -------------------------------------------------------------------


@pytest.fixture(scope="module")
def partitioned() -> SimSummary:
    # 12 nodes split by x for 5 s; run long enough after the heal for any damping
    # hold-downs of the first episode to end.
    return run_scenario("partition", nodes=12, seed=SEED, until=40.0)


def test_partition_and_heal_restores_reachability_and_says_so(partitioned: SimSummary) -> None:
    s = partitioned
    assert s.convergence_s is not None and s.fault_at is not None
    healed = s.fault_at + PARTITION_FOR
    during = [f for t, f in s.reachability if s.fault_at + 0.5 <= t < healed]
    assert during and max(during) < 0.6  # the partition did cut the mesh in two
    assert s.recovery_s is not None, "reachability never came back after the heal"
    assert s.recovery_s < 3.0
    # 12 nodes: the sample is every ordered pair, so this is full reachability.
    assert s.details["sampled_pairs"] == 12 * 11
    assert s.reachability[-1][1] == 1.0
    assert s.drops["partition"] > 0
    events = [e for _, e in s.healing_events if e.kind in ("partition", "dead_neighbour")]
    # A partition cannot be repaired from inside: it ends only when it heals, and says
    # so (cleared, not repaired), soon after the heal.
    partitions = [e for e in events if e.kind == "partition" and e.detected_at < healed]
    assert partitions
    for e in partitions:
        assert e.outcome == "cleared" and e.repaired_at is None and e.mttr is None
        assert e.cleared_at is not None and healed <= e.cleared_at <= healed + 5.0
    # A dead neighbour is repaired only with proof that traffic flows around it (probes
    # answered end to end); otherwise it clears when the cut heals, or the partition
    # incident supersedes it.
    for e in events:
        if e.kind == "dead_neighbour" and e.detected_at < healed:
            if e.outcome == "superseded":
                continue
            if e.outcome == "repaired":
                assert e.verified and e.repaired_at is not None
                assert e.mttr is not None and math.isfinite(e.mttr) and e.mttr >= 0
            else:
                assert e.outcome == "cleared" and e.cleared_at is not None
                assert healed <= e.cleared_at <= healed + 5.0
    assert not [e for _, e in s.healing_events if e.outcome == "failed"]


def test_partition_heal_does_not_relapse(partitioned: SimSummary) -> None:
    s = partitioned
    assert s.fault_at is not None and s.recovery_s is not None
    back = s.fault_at + PARTITION_FOR + s.recovery_s
    after = [(t, f) for t, f in s.reachability if t >= back]
    assert min(f for _, f in after) == 1.0, after


# -- degrading link -------------------------------------------------------------------------


def test_slowly_degrading_link_is_routed_around_before_it_dies() -> None:
    sim = build_mesh(two_paths(LinkSpec(latency=0.005)), seed=SEED).sim
    t0 = converge(sim, 10.0) + 2.0
    sim.run(t0)
    assert meshes(sim)["a"].next_hop("d") == "b"
    steps = 12
    for i in range(steps):  # loss 0.05 -> 0.6 over 20 s, then the link dies
        loss = 0.05 + 0.55 * i / (steps - 1)
        schedule(sim, t0 + i * 20 / steps, degrade("a", "b", loss=loss))
    cut_at = t0 + 20.0
    schedule(sim, cut_at, cut("a", "b"))
    moved: list[tuple[float, float]] = []  # (time, loss) when a moved off a-b, alive
    while sim.now < cut_at - 0.1:
        sim.run(round(sim.now + 0.1, 6))
        a = meshes(sim)["a"]
        if a.next_hop("d") == "c" and a.neighbours().get("b") and not moved:
            moved.append((sim.now, sim.net.link("a", "b").loss))
    assert moved, "the route stayed on the degrading link until it was cut"
    t_moved, loss = moved[0]
    assert t_moved < cut_at
    # Off the link well before the end, and for good: the last part of the ramp
    # (loss >= 0.5) sees a on the long path.
    a = meshes(sim)["a"]
    assert a.next_hop("d") == "c"
    assert loss <= 0.5, f"moved only at loss {loss:.2f}"
    sim.run(cut_at + 2.0)
    assert path(meshes(sim), "a", "d") == ["a", "c", "e", "d"]


# -- flapping link ----------------------------------------------------------------------------


def _route_changes(sim: Simulator) -> int:
    return sum(sum(m.router.route_changes.values()) for m in meshes(sim).values())


def _flap_changes(healing: bool) -> tuple[int, float]:
    """Route changes (all nodes) in the minute a-b flaps (down 1 s every 2 s), and the
    reachability 5 s after."""
    sim = build_mesh(diamond(), seed=SEED, healing=healing).sim
    t0 = converge(sim, 10.0) + 2.0
    sim.run(t0)
    before = _route_changes(sim)
    sim.net.flap("a", "b", period=2.0, until=t0 + 60.0)
    sim.run(t0 + 60.0)
    per_minute = _route_changes(sim) - before
    sim.run(t0 + 60.0 + 5.0)
    nodes = meshes(sim)
    pairs = [(x, y) for x in nodes for y in nodes if x != y]
    reach = sum(1 for x, y in pairs if path(nodes, x, y)) / len(pairs)
    return per_minute, reach


def test_flapping_link_is_damped() -> None:
    undamped, _ = _flap_changes(healing=False)
    damped, reach = _flap_changes(healing=True)
    # Measured: 131 route changes per minute undamped, 11 damped (seed 3). Without
    # healing every one of the 30 flaps moves routes at a, b and d twice (down, up);
    # with damping the link is held down for growing periods instead.
    assert undamped >= 100, undamped
    assert damped <= undamped // 4, (damped, undamped)
    assert damped <= 30, damped
    assert reach == 1.0  # the rest of the diamond still carries everything


# -- restart ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "seed",
    [
        1,  # the new random seqno happens to be newer than the old one
        4,  # older (mod 2**16) than what its neighbours remember: they ask, it jumps
        7,
    ],
)
def test_restarted_node_is_reachable_again(seed: int) -> None:
    sim = build_mesh(diamond(), seed=seed).sim
    t0 = converge(sim, 10.0) + 1.0
    sim.run(t0)
    sim.crash("b")
    sim.run(t0 + 3.0)
    sim.restart("b")
    deadline = t0 + 3.0 + 5.0
    while sim.now < deadline:
        sim.run(round(sim.now + 0.1, 6))
        nodes = meshes(sim)
        if all(path(nodes, x, y) for x in nodes for y in nodes if x != y):
            return
    nodes = meshes(sim)
    missing = [(x, y) for x in nodes for y in nodes if x != y and not path(nodes, x, y)]
    raise AssertionError(f"not all reachable 5 s after the restart: {missing}")


# -- determinism ---------------------------------------------------------------------------------


def test_same_seed_same_trace_other_seed_other_trace() -> None:
    a = run_scenario("relay-kill", nodes=10, seed=SEED)
    b = run_scenario("relay-kill", nodes=10, seed=SEED)
    c = run_scenario("relay-kill", nodes=10, seed=SEED + 1)
    assert a.trace_digest == b.trace_digest
    assert a.trace.dumps() == b.trace.dumps()
    assert (a.convergence_s, a.recovery_s, a.drops) == (b.convergence_s, b.recovery_s, b.drops)
    assert c.trace_digest != a.trace_digest


def test_same_seed_same_trace_across_processes() -> None:
    # str hashing is salted per process: anything that lets set or dict-of-set order
    # reach a decision (or a traced field) shows up as a different digest here.
    code = (
        "from x0tta6bl4.sim.runner import run_scenario;"
        f"print(run_scenario('partition', nodes=12, seed={SEED}).trace_digest)"
    )
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        digests.add(out.stdout.strip())
    assert digests == {run_scenario("partition", nodes=12, seed=SEED).trace_digest}


# -- the named scenarios ---------------------------------------------------------------------------


def _check_summary(s: SimSummary, name: str) -> None:
    assert s.scenario == name
    assert s.convergence_s is not None and s.convergence_s < 10.0
    assert s.virtual_s > s.convergence_s
    assert s.wall_s > 0
    assert s.control_bytes_per_node_s > 0
    assert len(s.trace_digest) == 64
    times = [t for t, _ in s.reachability]
    assert times == sorted(times) and times[0] == 0.0
    assert all(abs(t2 - t1 - 0.5) < 1e-9 for t1, t2 in pairwise(times))
    assert all(0.0 <= f <= 1.0 for _, f in s.reachability)


@pytest.mark.parametrize("name", SCENARIOS)
def test_named_scenario_runs_and_summarises(name: str) -> None:
    s = run_scenario(name, nodes=10, seed=SEED)
    _check_summary(s, name)
    if name != "converge":
        assert s.fault is not None and s.fault_at is not None
    if name in ("relay-kill", "diamond"):
        assert s.recovery_s is not None and 0 < s.recovery_s < 2.0
        assert s.drops["crashed"] > 0
    if name == "degrade":
        assert s.details["moved_off_at"] is not None
        moved = s.details["moved_off_at"]
        assert isinstance(moved, float) and moved < float(str(s.details["cut_at"]))


def test_until_stops_the_run_exactly() -> None:
    s = run_scenario("flap", nodes=8, seed=SEED, until=4.0)
    assert s.virtual_s == 4.0
    assert s.reachability[-1][0] <= 4.0


def test_unknown_scenario_is_refused() -> None:
    from x0tta6bl4.sim import SimError

    with pytest.raises(SimError, match="unknown scenario"):
        run_scenario("meteor", nodes=5, seed=1)


def test_failover_samples_and_convergence_stats() -> None:
    samples = failover_samples(nodes=12, kills=3, seed=SEED)
    assert len(samples) == 3
    assert all(0 < x < 2.0 for x in samples), samples
    assert percentile(samples, 50) <= max(samples)
    stats = failover_stats(nodes=12, kills=3, seed=SEED)
    assert stats.samples == samples  # deterministic
    assert len(stats.relays) == len(stats.affected) == len(stats.reconverge_s) == 3
    assert all(n > 0 for n in stats.affected)
    s = convergence_stats(10, SEED, duration=20.0)
    assert 0 < s.converge_s < 5.0
    assert s.steady_from == pytest.approx(s.converge_s + 5.0)
    # Start-up handshakes make the whole run costlier per second than the steady part.
    assert 0 < s.steady_bytes_per_node_s < s.total_bytes_per_node_s
    assert s.wall_s > 0
