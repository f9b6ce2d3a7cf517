"""MTTD and MTTR that users would recognise, against the simulator's ground truth: it
knows when each fault struck, and its flows show when traffic actually arrived again.

* A relay kill or a cut link: every incident the neighbours report ``repaired`` was
  repaired no earlier than the traffic they forwarded through the failed element
  flowed again (less one flow interval and a little), its MTTR is within 0.3 s of that
  traffic's outage, and the destinations that proved it are named.
* A 10 s partition: no incident is ``repaired`` while it lasts on the strength of
  traffic across it (stale routes survive for a while; only probes answered from the
  node's own side count), and no incident it caused ends before it is over.
* A node killed and restarted: what heals because it came back is ``cleared``; only
  what was verifiably routed around before that is ``repaired``.
* A gray failure (50 % loss for 15 s): the time to detect is the time from when the
  loss began, not from when a verdict was reached.

Each failed on the healing code before this (688f0c9), in the same simulator:

* relay kill: MTTR 0.05 s (detection to "has routes") against outages of ~0.47 s;
* cut link: the same;
* partition (16-node mesh, seed 2): two dead-neighbour incidents ``repaired`` 0.05 s
  after detection across the partition, on stale routes;
* kill and restart: partition incidents about the dead node ``repaired`` at its
  restart, 2.4 s after they were opened; on a line the dead neighbour itself;
* gray failure: the first incident at b is a dead neighbour 1.28 s after the loss began,
  with an MTTD of 0.40 s (its last hello); six incidents, all "repaired" with MTTR 0.05 s.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import pairwise

import pytest

from tests.sim.helpers import two_paths
from x0tta6bl4.healing import HealingEvent
from x0tta6bl4.sim import (
    LinkSpec,
    MeshRun,
    build_mesh,
    cut,
    degrade,
    grid,
    heal,
    kill,
    line,
    partition,
    random_geometric,
    restart,
)

RATE = 50.0  # packets per second: recoveries resolved to 20 ms
LATENCY = 0.002
# Across the centre of a 3x3 grid, both ways, and corner to corner.
ACROSS = [
    ("n0001", "n0007"),
    ("n0007", "n0001"),
    ("n0003", "n0005"),
    ("n0005", "n0003"),
    ("n0000", "n0008"),
    ("n0008", "n0000"),
    ("n0002", "n0006"),
    ("n0006", "n0002"),
]
EARLY = 1 / RATE + 0.03  # a repair may be verified this much before a flow's next packet
MTTR_SLACK = 0.3  # the MTTR may differ from the user's outage by this much


def _verified(e: HealingEvent) -> tuple[str, ...]:
    return tuple(getattr(e, "verified", ()))  # absent before the fix


def _show(events: Iterable[tuple[str, HealingEvent]], t0: float) -> str:
    return "\n".join(
        f"  {n}: {e.kind} {e.subject} detected +{e.detected_at - t0:.3f} {e.outcome} "
        f"mttd {e.mttd} mttr {e.mttr} repaired_at {e.repaired_at} verified {_verified(e)}"
        for n, e in events
    )


def _grid_with_flows(seed: int) -> MeshRun:
    run = build_mesh(grid(3, 3, LinkSpec(latency=LATENCY)), seed=seed)
    assert run.wait_converged(limit=5.0) is not None
    start = run.now
    for a, b in ACROSS:
        run.add_flow(a, b, RATE, start=start)
    run.run(start + 2.0)
    return run


# -- relay kill and cut link --------------------------------------------------------------


@pytest.fixture(scope="module", params=["kill", "cut"])
def failover(request: pytest.FixtureRequest) -> tuple[MeshRun, str]:
    run = _grid_with_flows(seed=12)
    t = run.now
    if request.param == "kill":
        run.at(t, kill("n0004"))
        failed = "n0004"
    else:
        a, b = run.route("n0001", "n0007").hops[:2]
        run.at(t, cut(a, b))
        failed = f"{a}-{b}"
    run.run(t + 3.0)
    return run, failed


def test_a_failover_is_repaired_when_the_traffic_flows_again(
    failover: tuple[MeshRun, str],
) -> None:
    run, failed = failover
    (o,) = run.user_outages()
    print(f"{failed}: outages {sorted(o.outages)}\n{_show(o.healing, o.t)}")
    repaired = [(n, e) for n, e in o.healing if e.outcome == "repaired"]
    assert repaired, "routing around the failure is a repair"
    for node, e in repaired:
        assert e.repaired_at is not None and e.mttr is not None
        # the traffic this node sent or forwarded into the failed element
        mine = [f for f in o.affected if (node, e.subject) in pairwise(f.hops)]
        if not mine:
            continue
        assert all(f.recovered_at is not None and f.outage_s is not None for f in mine)
        recovered = max(f.recovered_at for f in mine if f.recovered_at is not None)
        outage = max(f.outage_s for f in mine if f.outage_s is not None)
        assert e.repaired_at >= recovered - EARLY, (node, e, recovered)
        assert abs(e.mttr - outage) <= MTTR_SLACK, (node, e.mttr, outage)
        assert _verified(e), "a repair names the destinations whose answers proved it"
    judged = [n for n, e in repaired if any((n, e.subject) in pairwise(f.hops) for f in o.affected)]
    assert len(judged) >= 2


# -- partition ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def partitioned() -> tuple[MeshRun, dict[str, int], float, float]:
    seed = 2
    topo = random_geometric(16, seed, mean_degree=4.0, spec=LinkSpec(latency=LATENCY))
    run = build_mesh(topo, seed=seed)
    assert run.wait_converged(limit=10.0) is not None
    pos = run.topology.positions
    assert pos is not None
    ordered = sorted(run.topology.nodes, key=lambda n: (pos[n][0], n))
    left, right = ordered[: len(ordered) // 2], ordered[len(ordered) // 2 :]
    start = run.now
    run.add_flow(left[0], right[-1], RATE, start=start)
    run.add_flow(right[-1], left[0], RATE, start=start)
    run.run(start + 2.0)
    t = run.now
    run.at(t, partition([left, right])).at(t + 10.0, heal()).run(t + 13.0)
    side = {n: 0 for n in left} | {n: 1 for n in right}
    return run, side, t, t + 10.0


def test_no_repair_is_reported_across_a_partition_while_it_lasts(
    partitioned: tuple[MeshRun, dict[str, int], float, float],
) -> None:
    run, side, t, healed = partitioned
    events = [(n, e) for n, e in run.healing_events if e.detected_at >= t]
    print(_show(events, t))
    during = [(n, e) for n, e in events if e.repaired_at is not None and e.repaired_at < healed]
    for node, e in during:
        # repaired while partitioned: only by traffic verified on the node's own side
        proof = _verified(e)
        assert proof and all(side[d] == side[node] for d in proof), (node, e)
    # what the partition cut off is not verified until it heals: those incidents clear
    # (or are still open), and none of them ends while the partition lasts
    for node, e in events:
        if e.cleared_at is not None and e.detected_at < healed:
            assert e.cleared_at >= healed, (node, e)
    assert all(e.outcome != "repaired" for _, e in events if e.kind == "partition")
    cleared = [e for _, e in events if e.outcome == "cleared" and e.detected_at < healed]
    assert cleared, "the partition's incidents end when it does"


# -- kill and restart ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def restarted() -> tuple[MeshRun, float, float]:
    run = _grid_with_flows(seed=4)
    t = run.now
    run.at(t, kill("n0004")).at(t + 5.0, restart("n0004")).run(t + 8.0)
    return run, t, t + 5.0


def test_a_node_that_comes_back_is_cleared_not_repaired(
    restarted: tuple[MeshRun, float, float],
) -> None:
    run, t, back = restarted
    events = [(n, e) for n, e in run.healing_events if e.detected_at >= t]
    print(_show(events, t))
    # the dead node unreachable from afar: those incidents end when it is back, cleared
    gone = [e for _, e in events if e.kind == "partition" and e.detected_at < back]
    assert gone and all(e.outcome == "cleared" for e in gone)
    assert all(e.cleared_at is not None and e.cleared_at >= back for e in gone)
    for node, e in events:
        if e.outcome == "repaired":
            # routing around it, verified while it was still dead
            assert e.repaired_at is not None and e.repaired_at < back, (node, e)
            assert _verified(e) and "n0004" not in _verified(e), (node, e)
    repaired = [e for _, e in events if e.outcome == "repaired" and e.subject == "n0004"]
    assert len(repaired) == 4  # every neighbour routed around it first


def test_a_dead_neighbour_that_cannot_be_routed_around_clears_when_it_is_back() -> None:
    # a line a-b-c: nothing can go around b; b is back after 1 s
    run = build_mesh(line(3, LinkSpec(latency=LATENCY)), seed=4)
    assert run.wait_converged(limit=5.0) is not None
    run.add_flow("n0000", "n0002", RATE)
    run.run(run.now + 1.0)
    t = run.now
    run.at(t, kill("n0001")).at(t + 1.0, restart("n0001")).run(t + 3.0)
    events = [(n, e) for n, e in run.healing_events if e.detected_at >= t]
    print(_show(events, t))
    about = [e for n, e in events if e.subject == "n0001" and n in ("n0000", "n0002")]
    assert len(about) == 2
    assert all(e.outcome == "cleared" for e in about)
    assert all(e.cleared_at is not None and e.cleared_at >= t + 1.0 for e in about)


# -- gray failure ----------------------------------------------------------------------------


GRAY_SEEDS = range(1, 13)


def _gray_failure(seed: int) -> tuple[float, list[tuple[str, HealingEvent]]]:
    # a-b-d (2 hops) and a-c-e-d (3 hops), 2 % loss everywhere; a-b loses half its
    # packets for 15 s. The link dies and revives now and then, and is found degraded.
    run = build_mesh(two_paths(LinkSpec(latency=0.005, loss=0.02)), seed=seed)
    assert run.wait_converged(limit=10.0) is not None
    run.add_flow("a", "d", RATE)
    run.add_flow("d", "a", RATE)
    run.run(run.now + 20.0)
    t = run.now
    run.at(t, degrade("a", "b", loss=0.5)).at(t + 15.0, degrade("a", "b", loss=0.02))
    run.run(t + 16.0)
    events = [
        (n, e) for n, e in run.healing_events if e.detected_at >= t and {n, e.subject} == {"a", "b"}
    ]
    print(f"seed {seed}:", _show(events, t))
    return t, events


def test_a_gray_failure_is_detected_as_late_as_it_really_was() -> None:
    # A death in the middle of a gray failure is dated from the loss only when the hello
    # record shows the rise clearly (healing/knowledge.py rise_start); a link that dies
    # after a second of mild-looking loss is dated from its silence. So this holds over
    # seeds, not in each: over 36 seeds, 62 of 72 first detections were dated within
    # 0.5 s of the truth (and of the degraded findings 26 of 32). One seed passing or
    # failing was luck either way.
    first_off: list[float] = []
    degraded_off: list[float] = []
    for seed in GRAY_SEEDS:
        t, events = _gray_failure(seed)
        assert {n for n, _ in events} == {"a", "b"}
        for node in ("a", "b"):
            first = min((e for n, e in events if n == node), key=lambda e: e.detected_at)
            assert first.mttd is not None
            first_off.append(abs(first.mttd - (first.detected_at - t)))
        for node, e in events:
            assert e.mttd is not None and e.mttd > 0.1, (seed, node, e)
            if e.kind == "degraded_link":  # the gray failure's own finding: dated from t
                degraded_off.append(abs(e.mttd - (e.detected_at - t)))
    print("first detections off by", sorted(round(x, 2) for x in first_off))
    print("degraded findings off by", sorted(round(x, 2) for x in degraded_off))
    assert sum(x > 0.5 for x in first_off) <= 7, first_off  # 24 of them; 3.4 expected
    assert sum(x > 0.5 for x in degraded_off) <= len(degraded_off) // 2, degraded_off


# -- a relay killed again and again -----------------------------------------------------------


def test_a_relay_killed_again_and_again_is_crashes_and_one_flapping_link() -> None:
    # Killed, back 2 s later, killed again 3 s after that, and once more: the neighbours
    # damp it for flapping. That incident is about the series, not one crash: each
    # crash's own account is its dead-neighbour incidents, detected as fast as the
    # first's. The
    # bench's relay kills used to count a flapping incident (dated from an earlier kill,
    # held until the damping ended) as one kill's MTTD of 3 s and MTTR of 12 s; and the
    # flapping was dated from the neighbours' start-up, whose first link-up counted
    # as a flap.
    run = _grid_with_flows(seed=12)
    kills = []
    for _ in range(3):
        t = run.now
        kills.append(t)
        run.at(t, kill("n0004")).run(t + 2.0)
        run.at(run.now, restart("n0004")).run(run.now + 3.0)
    run.run(run.now + 15.0)
    outages = run.user_outages()
    assert [o.t for o in outages] == kills
    for o in outages:
        print(f"crash at {o.t:.2f}:\n{_show(o.healing, o.t)}")
        assert {e.kind for _, e in o.healing} <= {"dead_neighbour"}
        assert all(e.mttd is not None and e.mttd <= 0.5 for _, e in o.healing)
    # the first two crashes cut flows and are reported; by the third the neighbours
    # hold the link out of routing (damped), so no flow crosses it and none is cut
    assert all(o.healing and o.affected for o in outages[:2])
    assert not outages[2].affected
    flapping = [(n, e) for n, e in run.healing_events if e.kind == "flapping_link"]
    print(_show(flapping, kills[0]))
    assert flapping, "three outages in fifteen seconds are flapping"
    assert all(e.subject == "n0004" and e.started_at >= kills[0] for _, e in flapping)
