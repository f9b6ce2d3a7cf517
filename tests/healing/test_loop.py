"""The whole loop, driven through a scripted HealableNode, and the HealingNode core."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.healing.helpers import RecordingNode, link, route
from x0tta6bl4.healing import (
    TIMER_KEY,
    ActionKind,
    BreakerState,
    FaultKind,
    HealingConfig,
    HealingEvent,
    HealingLoop,
    HealingNode,
    RuntimeStats,
)
from x0tta6bl4.mesh.observe import LinkObservation, RouteObservation
from x0tta6bl4.sansio import (
    Action,
    Datagram,
    Event,
    Input,
    LinkDown,
    LinkDownReason,
    SetTimer,
    Timer,
)


def make(seed: int = 1, **cfg: object) -> tuple[RecordingNode, HealingLoop, list[HealingEvent]]:
    node = RecordingNode()
    events: list[HealingEvent] = []
    loop = HealingLoop(
        node,
        rng=random.Random(seed),
        config=HealingConfig(**cfg),  # type: ignore[arg-type]
        on_event=events.append,
    )
    return node, loop, events


def run(node: RecordingNode, loop: HealingLoop, t0: float, t1: float, dt: float = 0.1) -> None:
    for i in range(round((t1 - t0) / dt)):
        loop.cycle(round(t0 + i * dt, 6))


TABLE = [route("B", "B"), route("C", "B"), route("D", "B"), route("E", "E")]


def test_dead_neighbour_reroute_rehandshake_and_measured_repair() -> None:
    node, loop, events = make(partition_grace=100.0)
    node.set([link("B"), link("E")], TABLE)
    run(node, loop, 0.0, 1.0)
    node.set([link("B", alive=False, last_heard=0.7), link("E")], [route("E", "E")])
    loop.cycle(1.0)
    assert node.called("drop_neighbour") == [("drop_neighbour", 1.0, "B")]
    assert node.called("reconnect") == [("reconnect", 1.0, "B")]
    assert [i.kind for i in loop.open_incidents] == [FaultKind.DEAD_NEIGHBOUR]
    # C comes back through E and answers its probe; D has no route yet: still open
    node.set([link("B", alive=False), link("E")], [route("C", "E", 1), route("E", "E")])
    run(node, loop, 1.1, 1.5)
    assert node.called("probe") == [("probe", 1.1, "C")]
    assert events == []
    node.set(
        [link("B", alive=False), link("E")],
        [route("C", "E", 1), route("D", "E", 1), route("E", "E")],
    )
    loop.cycle(1.5)
    assert node.called("probe")[-1] == ("probe", 1.5, "D") and events == []  # routes: no
    loop.cycle(1.55)
    [event] = events
    assert event.kind == "dead_neighbour" and event.subject == "B"
    assert event.outcome == "repaired" and event.action == "reroute+rehandshake"
    # repaired when D's answer arrived (sent 1.5, answered 10 ms later); the MTTR runs
    # from B's last hello, as a user's outage does
    assert event.detected_at == 1.0 and event.repaired_at == pytest.approx(1.51)
    assert event.mttr == pytest.approx(0.81) and event.mttd == pytest.approx(0.3)
    assert event.verified == ("C", "D")
    assert loop.events == (event,) and loop.last_finished == (event,)
    assert loop.knowledge.repair_stats[("dead_neighbour", "reroute+rehandshake")].repaired == 1
    # B stays dead: reconnects continue on the backoff, the incident does not reopen
    run(node, loop, 1.6, 5.0)
    assert len(events) == 1 and loop.open_incidents == ()
    assert 2 <= len(node.called("reconnect")) <= 6
    assert len(node.called("drop_neighbour")) == 1


def test_slowly_worsening_link_gets_its_cost_raised_before_it_dies() -> None:
    node, loop, events = make()
    table = [route("B", "B"), route("C", "B"), route("E", "E")]
    node.set([link("B"), link("E")], table)
    run(node, loop, 0.0, 3.0)
    raised_at = None
    t = 3.0
    for i in range(300):
        loss = 0.003 * i  # +3 % loss per second, dead at 100 %
        t = round(3.0 + i * 0.1, 6)
        node.set([link("B", loss=loss, rtt=0.01 + 0.001 * i), link("E")], table)
        loop.cycle(t)
        if node.called("set_link_penalty") and raised_at is None:
            raised_at, loss_then = t, loss
    assert raised_at is not None and loss_then < 0.2  # well before the link is dead
    factors = [c[3] for c in node.called("set_link_penalty")]
    assert factors == sorted(factors) and factors[0] == 2.0 and factors[-1] == 16.0
    # traffic moves off B: the degraded incident is measured repaired
    node.set([link("B", loss=0.9), link("E")], [route("B", "B"), route("C", "E", 1), table[2]])
    loop.cycle(t + 0.1)
    loop.cycle(t + 0.2)
    degraded = [e for e in events if e.kind == "degraded_link"]
    assert degraded and degraded[-1].outcome == "repaired" and degraded[-1].action == "raise_cost"
    # the link recovers: the penalty is lifted exactly once
    node.set([link("B"), link("E")], table)
    run(node, loop, t + 0.3, t + 15.0)
    assert node.called("set_link_penalty")[-1][3] == 1.0
    assert [c[3] for c in node.called("set_link_penalty")].count(1.0) == 1


def test_flapping_link_damped_and_held_while_it_flaps() -> None:
    node, loop, events = make(flap_window=5.0)
    lapses = []
    for i in range(400):
        alive = (i // 3) % 2 == 0  # B flips every 0.3 s for 40 s
        now = round(i * 0.1, 6)
        until = node.links["B"].damped_until if "B" in node.links else None
        if node.called("damp_link") and (until is None or until <= now):
            lapses.append(now)
        hop = "B" if alive and not node.called("damp_link") else "E"
        node.set([link("B", alive=alive), link("E")], [route("B", hop, i // 3), route("E", "E")])
        loop.cycle(now)
    calls = node.called("damp_link")
    assert calls[0][1] < 2.0  # four transitions in 0.9 s reach the cut-off (3)
    assert lapses == []  # each flap extended the hold; it never ran out while flapping
    untils = [c[3] for c in calls]
    assert all(a < b for a, b in itertools.pairwise(untils))
    # flapping this fast for 40 s: held until damp_hold_max after the last flap at most
    assert untils[-1] <= 40.0 + loop.config.damp_hold_max
    flaps = [e for e in events if e.kind == "flapping_link"] + [
        i for i in loop.open_incidents if i.kind is FaultKind.FLAPPING_LINK
    ]
    assert flaps


def test_partition_detected_rehandshakes_and_clears() -> None:
    node, loop, events = make(partition_grace=1.0, reconnect_jitter=0.0)
    full = [route("E", "E"), route("X", "E"), route("Y", "E")]
    node.set([link("B", alive=False, handshake_failures=1), link("E")], full)
    run(node, loop, 0.0, 1.0)
    node.set([link("B", alive=False), link("E")], [route("E", "E")])
    run(node, loop, 1.0, 2.0)
    assert loop.open_incidents == ()  # within the grace period
    loop.cycle(2.0)
    assert len(loop.open_incidents) == 1
    incident = loop.open_incidents[0]
    assert incident.kind is FaultKind.PARTITION and incident.destinations == {"X", "Y"}
    assert node.called("reconnect") == [("reconnect", 2.0, "B")]  # the dead neighbour
    run(node, loop, 2.1, 4.0)
    node.set([link("B", alive=False), link("E")], full)
    loop.cycle(4.0)
    # the lost destinations are back: the partition went away (no repair of ours)
    [event] = events
    assert event.kind == "partition" and event.outcome == "cleared"
    assert event.action == "rehandshake" and event.mttr is None
    assert event.time_to_clear == pytest.approx(3.0) and event.mttd == pytest.approx(1.0)
    assert node.called("probe") == []
    # a cleared incident says nothing about its actions: no breaker hears of it
    assert loop.executor.breakers[ActionKind.REHANDSHAKE].failures == 0


def test_certificate_renewal_requested_once_not_every_cycle() -> None:
    node, loop, events = make(renewal_retry=60.0)
    node.not_after = 1e6 + 300.0
    run(node, loop, 0.0, 1.0)
    run(node, loop, 200.0, 230.0)  # 300 cycles inside the renewal window
    assert node.called("request_renewal") == [("request_renewal", 200.0)]  # 100 s of 300 left
    node.not_after = 1e6 + 2000.0
    run(node, loop, 230.0, 231.0)
    [event] = events
    assert event.kind == "cert_near_expiry" and event.action == "request_renewal"
    assert event.outcome == "repaired" and event.mttr == pytest.approx(30.0)


def test_repeated_failures_open_the_breaker_and_stop_the_calls() -> None:
    node, loop, events = make(
        incident_timeout=1.0, partition_grace=100.0, breaker_failures=2, breaker_cooldown=30.0
    )
    for i, peer in enumerate("BCD"):  # three neighbours die in turn; X never comes back
        routes = [route(p, p) for p in "BCD" if p != peer] + [route("X", peer)]
        node.set([link(p) for p in "BCD"], routes)
        loop.cycle(i * 2.0)
        node.set([link(p, alive=p != peer) for p in "BCD"], routes[:-1])
        loop.cycle(i * 2.0 + 0.1)
        loop.cycle(i * 2.0 + 1.2)
    assert [e.outcome for e in events] == ["failed", "failed", "failed"]
    assert loop.executor.breakers[ActionKind.REROUTE].state is BreakerState.OPEN
    assert [c[2] for c in node.called("drop_neighbour")] == ["B", "C"]  # not D


def test_leaves_that_die_for_good_open_no_breaker() -> None:
    # Three neighbours that carried no transit traffic die in turn and never come back:
    # each incident times out ("failed": nothing verified it), but no action could have
    # ended it, so no breaker hears of it, and a relay that dies next is still routed
    # around. (Before, three leaf crashes opened the REROUTE and REHANDSHAKE breakers.)
    node, loop, events = make(
        incident_timeout=1.0, partition_grace=100.0, breaker_failures=2, breaker_cooldown=30.0
    )
    peers = "BCDE"
    for i, peer in enumerate("BCD"):
        gone = set("BCD"[:i])
        up = [p for p in peers if p not in gone]
        routes = [route(p, p) for p in up]
        node.set([link(p, alive=p not in gone) for p in peers], routes)
        loop.cycle(i * 2.0)
        node.set([link(p, alive=p not in gone | {peer}) for p in peers], routes[1:])
        loop.cycle(i * 2.0 + 0.1)
        loop.cycle(i * 2.0 + 1.2)
    assert [(e.subject, e.outcome) for e in events] == [
        ("B", "failed"),
        ("C", "failed"),
        ("D", "failed"),
    ]
    for kind in (ActionKind.REROUTE, ActionKind.REHANDSHAKE):
        assert loop.executor.breakers[kind].state is BreakerState.CLOSED, kind
        assert loop.executor.breakers[kind].failures == 0, kind
    assert [c[2] for c in node.called("drop_neighbour")] == ["B", "C", "D"]


def test_phase_durations_use_the_injected_counter() -> None:
    ticks = itertools.count()
    seen: list[dict[str, float]] = []
    node = RecordingNode()
    loop = HealingLoop(
        node,
        rng=random.Random(0),
        perf_counter=lambda: float(next(ticks)),
        on_cycle=lambda d: seen.append(dict(d)),
    )
    loop.cycle(0.0)
    assert seen == [{"monitor": 1.0, "analyse": 1.0, "plan": 1.0, "execute": 1.0}]
    assert loop.last_phase_durations == seen[0]
    assert loop.config == HealingConfig()


def test_healing_node_drives_the_loop_on_its_timer() -> None:
    node = RecordingNode()
    loop = HealingLoop(node, rng=random.Random(0), config=HealingConfig(cycle_interval=0.5))
    core = HealingNode(node, loop)
    assert core.name == "A"
    assert core.start(0.0) == [SetTimer(1.0, ("hello",)), SetTimer(0.5, TIMER_KEY)]
    assert core.handle(0.1, Datagram("x", b"hi")) == [Event("handled", {})]
    assert core.handle(0.2, Timer(("hello",))) == [Event("handled", {})]
    assert core.handle(0.3, RuntimeStats(loop_lag=0.01, memory_bytes=10)) == []
    assert len(node.inputs) == 2  # runtime stats are the loop's, not the node's
    node.set([link("B", alive=False, handshake_failures=5)], [])
    out = core.handle(0.5, Timer(TIMER_KEY))
    # an incident is open: the loop cycles at the active pace until it is closed
    assert out[-1] == SetTimer(0.5 + loop.config.active_cycle_interval, TIMER_KEY)
    assert loop.last_snapshot is not None and loop.last_snapshot.loop_lag == 0.01
    assert [i.kind for i in core.open_incidents] == [FaultKind.HANDSHAKE_FAILING]
    node.set([link("B")], [])
    out = core.handle(1.0, Timer(TIMER_KEY))
    [healing] = [a for a in out if isinstance(a, Event) and a.kind == "healing"]
    assert healing.fields == {
        "kind": "handshake_failing",
        "subject": "B",
        "action": "rehandshake",
        "outcome": "repaired",
        "fault_started_at": None,
        "detected_at": 0.5,
        "repaired_at": 1.0,
        "cleared_at": None,
        "verified": "",
        "mttr": 0.5,
        "mttd": None,
        "time_to_clear": None,
    }
    assert core.events == loop.events and core.open_incidents == ()


def test_healing_node_refuses_a_loop_for_another_node() -> None:
    loop = HealingLoop(RecordingNode(), rng=random.Random(0))
    with pytest.raises(ValueError):
        HealingNode(RecordingNode(), loop)


# --- property: any observation sequence keeps thresholds in bounds, never raises -------

PEERS = ("B", "C", "D")
floats = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.floats(min_value=0.0, max_value=3.0),
)
links_st = st.builds(
    LinkObservation,
    peer=st.sampled_from(PEERS),
    alive=st.booleans(),
    rtt=floats,
    jitter=floats,
    loss=st.one_of(st.floats(width=32), st.floats(min_value=0.0, max_value=1.0)),
    last_heard=floats,
    cost=st.integers(0, 0xFFFF),
    base_cost=st.integers(0, 0xFFFF),
    session_age=floats,
    handshake_failures=st.integers(0, 10),
    damped_until=floats,
)
routes_st = st.builds(
    RouteObservation,
    dst=st.sampled_from(("B", "C", "D", "X", "Y")),
    next_hop=st.one_of(st.none(), st.sampled_from(PEERS)),
    metric=st.integers(0, 0xFFFF),
    changes=st.integers(0, 50),
)
step_st = st.tuples(
    st.floats(min_value=0.0, max_value=5.0),  # time step
    st.lists(links_st, max_size=3),
    st.lists(routes_st, max_size=5),
    st.floats(min_value=-10.0, max_value=1e4),  # cert remaining
    st.one_of(st.none(), st.floats(min_value=0.0, max_value=5.0)),  # loop lag
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(step_st, min_size=1, max_size=40),
    seed=st.integers(0, 2**16),
    max_peers=st.integers(1, 4),
)
def test_any_observation_sequence_keeps_thresholds_in_bounds(
    steps: list[tuple[float, list[LinkObservation], list[RouteObservation], float, float | None]],
    seed: int,
    max_peers: int,
) -> None:
    node = RecordingNode()
    config = HealingConfig(baseline_min_samples=2, incident_timeout=3.0, max_peers=max_peers)
    loop = HealingLoop(node, rng=random.Random(seed), config=config)
    core = HealingNode(node, loop)
    now = 0.0
    for dt, links, routes, remaining, lag in steps:
        now += dt
        node.links = {lo.peer: lo for lo in links}
        node.routes = {r.dst: r for r in routes}
        node.not_after = now + 1e6 + remaining
        core.handle(now, RuntimeStats(loop_lag=lag))
        core.handle(now, Timer(TIMER_KEY))
        for lk in loop.knowledge.links.values():
            assert config.degraded_loss_min <= lk.loss_threshold <= config.degraded_loss_max
            assert config.degraded_rtt_min <= lk.rtt_threshold <= config.degraded_rtt_max
            assert math.isfinite(lk.anomaly) and lk.anomaly >= 0
            assert 1.0 <= lk.penalty <= config.penalty_max
    for event in loop.events:
        assert event.outcome in ("repaired", "cleared", "failed", "superseded")
        assert event.mttr is None or event.mttr >= 0
        assert event.time_to_clear is None or event.time_to_clear >= 0
        assert (event.repaired_at is None) == (event.outcome != "repaired")
        assert (event.cleared_at is None) == (event.outcome != "cleared")


class _DyingLinkNode(RecordingNode):
    """Reports a neighbour death on the next input, as MeshNode does from its hello timer."""

    def handle(self, now: float, inp: Input) -> list[Action]:
        self.inputs.append(inp)
        return [LinkDown("B", LinkDownReason.DEAD), Event("neighbour_dead", {"peer": "B"})]


class _TracingOnlyNode(RecordingNode):
    """Emits the trace record of a neighbour death but no control action."""

    def handle(self, now: float, inp: Input) -> list[Action]:
        self.inputs.append(inp)
        return [Event("neighbour_dead", {"peer": "B"})]


def test_a_trace_event_alone_decides_nothing() -> None:
    # The trace is for people and tools; only typed control actions drive the loop.
    node = _TracingOnlyNode()
    loop = HealingLoop(node, rng=random.Random(0))
    core = HealingNode(node, loop)
    core.start(0.0)
    node.set([link("B")], [route("X", "B")])
    core.handle(0.5, Timer(TIMER_KEY))
    node.set([link("B", alive=False)], [])
    out = core.handle(0.7, Timer(("hello",)))
    assert core.open_incidents == () and node.called("drop_neighbour") == []
    assert not any(isinstance(a, SetTimer) and a.key == TIMER_KEY for a in out)


def test_a_link_event_runs_a_cycle_at_once_and_speeds_up_the_timer() -> None:
    node = _DyingLinkNode()
    loop = HealingLoop(node, rng=random.Random(0))
    core = HealingNode(node, loop)
    core.start(0.0)
    node.set([link("B")], [route("X", "B")])
    core.handle(0.5, Timer(TIMER_KEY))  # baseline: B alive, X via B
    node.set([link("B", alive=False)], [])
    out = core.handle(0.7, Timer(("hello",)))
    # the dead neighbour was analysed at 0.7, not at the next periodic tick (1.0)
    assert [i.kind for i in core.open_incidents] == [FaultKind.DEAD_NEIGHBOUR]
    assert core.open_incidents[0].detected_at == 0.7
    assert node.called("drop_neighbour") == [("drop_neighbour", 0.7, "B")]
    assert out[-1] == SetTimer(0.7 + loop.config.active_cycle_interval, TIMER_KEY)
