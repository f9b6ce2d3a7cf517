"""Times a user would recognise: a repair is traffic verified flowing again (end-to-end
probes answered after the detection, the failed element still failed), not a route in
the table; a fault that goes away by itself is ``cleared``, not ``repaired``; MTTR runs
from the fault's start, and the start of a gray failure is when its loss began to
rise, not when a verdict was reached (test_hello_record dates it).

Before this, a dead neighbour was "repaired" as soon as its destinations had routes
(stale ones, across a partition), a revived one too, and MTTR ran from the detection;
a degraded link's fault "started" when its pressure crossed the onset ratio, which
after a revival was the moment of detection (MTTD 0).
"""

from __future__ import annotations

import random

import pytest

from tests.healing.helpers import RecordingNode, link, route
from x0tta6bl4.healing import (
    ActionKind,
    BreakerState,
    FaultKind,
    HealingConfig,
    HealingEvent,
    HealingLoop,
    Outcome,
    RepairStats,
)
from x0tta6bl4.healing.knowledge import Knowledge

DEAD = FaultKind.DEAD_NEIGHBOUR
DEGRADED = FaultKind.DEGRADED_LINK


def make(**cfg: object) -> tuple[RecordingNode, HealingLoop, list[HealingEvent]]:
    node = RecordingNode()
    events: list[HealingEvent] = []
    loop = HealingLoop(
        node,
        rng=random.Random(0),
        config=HealingConfig(**cfg),  # type: ignore[arg-type]
        on_event=events.append,
    )
    return node, loop, events


def probes(node: RecordingNode) -> list[tuple[float, str]]:
    return [(c[1], c[2]) for c in node.called("probe")]


# -- the event's times -------------------------------------------------------------------


def test_mttr_runs_from_the_fault_start_and_clearing_is_not_a_repair() -> None:
    acts = (ActionKind.REROUTE,)
    repaired = HealingEvent("dead_neighbour", "B", 10.0, acts, 10.3, "repaired", 9.6)
    assert repaired.mttr == pytest.approx(0.7) and repaired.mttd == pytest.approx(0.4)
    assert repaired.time_to_clear is None
    unknown_start = HealingEvent("handshake_failing", "B", 10.0, acts, 10.3, "repaired")
    assert unknown_start.mttr == pytest.approx(0.3) and unknown_start.mttd is None
    cleared = HealingEvent("partition", "A", 10.0, (), None, "cleared", 8.5, cleared_at=20.0)
    assert cleared.mttr is None and cleared.time_to_clear == pytest.approx(11.5)


def test_repair_stats_count_cleared_apart_from_repairs() -> None:
    k = Knowledge(HealingConfig())
    stats = RepairStats()
    assert stats.success_rate is None and stats.mean_time_to_clear is None
    from x0tta6bl4.healing.knowledge import Incident

    for outcome, at in ((Outcome.REPAIRED, 10.5), (Outcome.CLEARED, 14.0), (Outcome.FAILED, 40)):
        incident = Incident(DEAD, "B", 10.0, 1, 9.5, 1.0)
        k.incidents[incident.key] = incident
        k.close(incident, outcome, at)
    s = k.repair_stats[("dead_neighbour", "wait")]
    assert (s.repaired, s.cleared, s.failed) == (1, 1, 1)
    assert s.mean_mttr == pytest.approx(1.0) and s.mean_time_to_clear == pytest.approx(4.5)
    assert s.success_rate == pytest.approx(0.5)  # a cleared incident is neither


@pytest.mark.parametrize(
    "bad",
    [
        {"verify_sample": 0},
        {"verify_sample": 1.5},
        {"verify_max": 1},
        {"verify_interval": 0.0},
        {"verify_interval": 2.0},
        {"probe_rate_per_second": 0.0},
        {"probe_burst": 0.5},
    ],
)
def test_config_rejects_nonsense_verification(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        HealingConfig(**bad)  # type: ignore[arg-type]


# -- probes ------------------------------------------------------------------------------

VIA_B = [route("B", "B"), route("C", "B"), route("D", "B"), route("F", "B"), route("E", "E")]
AROUND = [route("C", "E", 1), route("D", "E", 1), route("F", "E", 1), route("E", "E")]


def test_a_sample_is_probed_not_every_destination_and_grows_only_while_unanswered() -> None:
    node, loop, events = make(verify_delay=0.0)
    node.set([link("B"), link("E")], VIA_B)
    loop.cycle(0.0)
    node.set([link("B", alive=False, last_heard=0.6), link("E")], AROUND)
    node.black_holes = {"C", "D", "F"}  # nothing answers yet
    loop.cycle(1.0)
    # two answers needed (verify_sample), one more probed so one slow handshake cannot
    # hold the verdict
    assert probes(node) == [(1.0, "C"), (1.0, "D"), (1.0, "F")]
    [incident] = loop.open_incidents
    assert incident.actions == [ActionKind.REROUTE, ActionKind.REHANDSHAKE]  # not verify
    node.black_holes = set()
    loop.cycle(1.05)
    assert len(probes(node)) == 3  # not due again yet
    loop.cycle(1.2)  # 0.15 s on: repeated, and answered this time
    loop.cycle(1.25)
    [event] = events
    assert event.outcome == "repaired" and len(event.verified) == 3
    assert event.repaired_at == pytest.approx(1.21) and event.mttr == pytest.approx(0.61)


def test_the_sample_grows_while_too_few_answer() -> None:
    node, loop, events = make(verify_delay=0.0)
    table = [route(d, "B") for d in "CDFH"] + [route("B", "B"), route("E", "E")]
    node.set([link("B"), link("E")], table)
    loop.cycle(0.0)
    around = [route(d, "E", 1) for d in "CDFH"] + [route("E", "E")]
    node.set([link("B", alive=False, last_heard=0.6), link("E")], around)
    node.black_holes = {"C", "D"}  # two slow ones among the first three
    for i in range(8):
        loop.cycle(round(1.0 + i * 0.05, 6))
    assert sorted({d for _, d in probes(node)}) == ["C", "D", "F", "H"]  # one more, H
    assert [d for t, d in probes(node) if d == "H"] == ["H"]
    [event] = events
    assert event.outcome == "repaired" and event.verified == ("F", "H")
    assert len({d for _, d in probes(node)}) <= loop.config.verify_max


def test_a_new_route_is_probed_at_once() -> None:
    node, loop, _ = make(verify_delay=0.0)
    node.set([link("B"), link("E"), link("G")], [*VIA_B, route("G", "G")])
    loop.cycle(0.0)
    node.black_holes = {"C", "D", "F"}
    node.set([link("B", alive=False), link("E"), link("G")], [*AROUND, route("G", "G")])
    loop.cycle(1.0)
    first = probes(node)
    loop.cycle(1.05)
    assert probes(node) == first  # not due again yet
    moved = [route("C", "G", 2), route("D", "E", 1), route("F", "E", 1), route("E", "E")]
    node.set([link("B", alive=False), link("E"), link("G")], [*moved, route("G", "G")])
    loop.cycle(1.1)
    assert probes(node)[len(first) :] == [(1.1, "C")]  # C's path changed: a new chance


def test_the_first_probes_wait_for_the_far_side_to_notice() -> None:
    # Until the dead neighbour's other neighbours notice it too (within about a hello
    # interval), the way back from a destination may still lead through it.
    node, loop, events = make()
    node.set([link("B"), link("E")], VIA_B)
    loop.cycle(0.0)
    node.set([link("B", alive=False, last_heard=0.6), link("E")], AROUND)
    for i in range(5):
        loop.cycle(round(1.0 + i * 0.05, 6))
    assert {t for t, _ in probes(node)} == {1.1}  # verify_delay after the detection
    [event] = events
    assert event.repaired_at == pytest.approx(1.11)


def test_a_destination_two_incidents_share_is_probed_once_for_both() -> None:
    # X went through B; B died and X moved to G; then G died too: both incidents must
    # see X flowing again, one probe serves both.
    node, loop, events = make()
    node.set([link(p) for p in "BGE"], [route(p, p) for p in "BGE"] + [route("X", "B")])
    loop.cycle(0.0)
    node.black_holes = {"X"}
    dead_b = [link("B", alive=False), link("G"), link("E")]
    node.set(dead_b, [route("G", "G"), route("E", "E"), route("X", "G", 1)])
    loop.cycle(1.0)
    dead_bg = [link("B", alive=False), link("G", alive=False), link("E")]
    node.set(dead_bg, [route("E", "E"), route("X", "E", 2)])
    loop.cycle(1.1)
    assert {i.subject for i in loop.open_incidents} == {"B", "G"}
    assert [p for p in probes(node) if p[0] == 1.1] == [(1.1, "X")]
    node.black_holes = set()
    for i in range(1, 6):
        loop.cycle(round(1.1 + i * 0.05, 6))
    assert sorted((e.subject, e.outcome) for e in events) == [
        ("B", "repaired"),
        ("G", "repaired"),
    ]


def test_a_neighbour_heard_again_first_is_cleared_and_tells_no_breaker() -> None:
    node, loop, events = make(breaker_failures=1)
    node.set([link("B"), link("E")], VIA_B)
    loop.cycle(0.0)
    node.black_holes = {"C", "D", "F"}
    node.set([link("B", alive=False, last_heard=0.6), link("E")], AROUND)
    for i in range(10):
        loop.cycle(round(1.0 + i * 0.05, 6))
    node.set([link("B", last_heard=1.5), link("E")], VIA_B)
    loop.cycle(1.5)
    [event] = events
    assert event.outcome == "cleared" and event.cleared_at == 1.5
    assert event.mttr is None and event.time_to_clear == pytest.approx(0.9)
    assert event.action == "reroute+rehandshake"
    for kind in (ActionKind.REROUTE, ActionKind.REHANDSHAKE):
        assert loop.executor.breakers[kind].state is BreakerState.CLOSED
    n = len(probes(node))
    loop.cycle(1.6)
    assert len(probes(node)) == n  # nothing left to measure
