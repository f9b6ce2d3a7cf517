"""Plan: findings and incidents to actions, with backoff, ratchets and hold-downs."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from tests.healing.helpers import link, route
from x0tta6bl4.healing import (
    ActionKind,
    FaultKind,
    HealingConfig,
    Knowledge,
    Monitor,
    PlannedAction,
    analyse,
    damp_hold,
    penalty_factor,
    plan,
    reconnect_delay,
    track_incidents,
)
from x0tta6bl4.healing.plan import renewal_delay
from x0tta6bl4.mesh.observe import LinkObservation, NodeObservation, RouteObservation


class Planner:
    """Monitor, Analyse and Plan; executes every planned action (no Execute phase)."""

    def __init__(self, seed: int = 1, **cfg: object) -> None:
        self.k = Knowledge(HealingConfig(**cfg))  # type: ignore[arg-type]
        self.m = Monitor(self.k)
        self.rng = random.Random(seed)

    def step(
        self,
        now: float,
        links: list[LinkObservation] | None = None,
        routes: list[RouteObservation] | None = None,
        *,
        not_after: float = 1e12,
        execute: bool = True,
    ) -> list[PlannedAction]:
        o = NodeObservation(
            now=now,
            name="A",
            links={lo.peer: lo for lo in links or []},
            routes={r.dst: r for r in routes or []},
            cert_not_after=not_after,
            wall_now=1e6 + now,
        )
        snap = self.m.update(o)
        findings = analyse(snap, self.k)
        track_incidents(snap, findings, self.k)
        actions = plan(snap, findings, self.k, self.rng)
        if execute:
            for a in actions:
                self.k.note_executed(now, a)
        return actions


def kinds(actions: list[PlannedAction]) -> list[tuple[ActionKind, str]]:
    return [(a.kind, a.subject) for a in actions]


TABLE = [route("B", "B"), route("C", "B"), route("E", "E")]


def test_dead_neighbour_reroute_once_and_rehandshake_with_backoff() -> None:
    p = Planner(partition_grace=1000.0, reconnect_jitter=0.0)
    p.step(0.0, [link("B"), link("E")], TABLE)
    first = p.step(1.0, [link("B", alive=False), link("E")], [route("E", "E")])
    assert kinds(first) == [(ActionKind.REROUTE, "B"), (ActionKind.REHANDSHAKE, "B")]
    key = (FaultKind.DEAD_NEIGHBOUR, "B")
    assert all(a.incidents == (key,) for a in first)
    assert p.k.incidents[key].actions == ["reroute", "rehandshake"]
    times = [1.0]
    t = 1.0
    while t < 30.0:
        t = round(t + 0.1, 1)
        if p.step(t, [link("B", alive=False), link("E")], [route("E", "E")]):
            times.append(t)
    gaps = [round(b - a, 1) for a, b in itertools.pairwise(times)]
    assert gaps[:5] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert max(gaps) == 10.0  # capped at reconnect_max
    # the neighbour returns: the backoff starts over
    p.step(31.0, [link("B"), link("E")], TABLE)
    assert p.k.links["B"].reconnect_attempts == 0


def test_unexecuted_actions_are_planned_again() -> None:
    p = Planner(partition_grace=1000.0)
    p.step(0.0, [link("B")], [route("B", "B"), route("C", "B")])
    dead = [link("B", alive=False)]
    assert len(p.step(1.0, dead, [], execute=False)) == 2
    assert kinds(p.step(1.1, dead, [])) == [
        (ActionKind.REROUTE, "B"),
        (ActionKind.REHANDSHAKE, "B"),
    ]


def test_handshake_failing_is_reconnected_on_backoff() -> None:
    p = Planner(reconnect_jitter=0.0)
    a = p.step(0.0, [link("B", alive=False, handshake_failures=3)])
    assert kinds(a) == [(ActionKind.REHANDSHAKE, "B")]
    assert a[0].reason is FaultKind.HANDSHAKE_FAILING and a[0].retry_at == 0.5
    assert p.step(0.4, [link("B", alive=False, handshake_failures=4)]) == []


def raised_within(p: Planner, start: float, loss: float, limit: float) -> PlannedAction:
    """Report ``loss`` on B every 0.1 s until its cost is raised; that action."""
    t = start
    while t < start + limit:
        for a in p.step(t, [link("B", loss=loss), link("E")], TABLE):
            if a.kind is ActionKind.RAISE_COST:
                return a
        t = round(t + 0.1, 6)
    raise AssertionError(f"{loss:.0%} loss not penalised within {limit} s")


def test_degraded_cost_rises_with_severity_and_is_lifted_on_recovery() -> None:
    p = Planner()
    for i in range(30):
        p.step(i * 0.1, [link("B"), link("E")], TABLE)
    # 40 % loss against a threshold of ~0.19: raised once the evidence is in (~2 s),
    # by a factor from the smoothed loss over the threshold (~2: x4)
    first = raised_within(p, 3.0, 0.4, 4.0)
    assert first.factor is not None and 2.0 <= first.factor <= 4.0
    assert p.k.links["B"].cost_changed_at is not None
    t0 = p.k.links["B"].cost_changed_at
    # much worse: escalated, but not before the dwell since the last change is over
    worse = raised_within(p, round(t0 + 0.1, 6), 0.9, 8.0)
    assert worse.factor == 16.0 and p.k.links["B"].penalty == 16.0
    t1 = p.k.links["B"].cost_changed_at
    assert t1 is not None and t1 - t0 >= p.k.config.cost_dwell
    # better again, but still degraded: the factor does not go down (no oscillation)
    for i in range(10):
        assert p.step(round(t1 + 0.1 * (i + 1), 6), [link("B", loss=0.3), link("E")], TABLE) == []
    # dead: the penalty stays (a returning link must prove itself)
    t = round(t1 + 1.1, 6)
    assert kinds(p.step(t, [link("B", alive=False), link("E")], TABLE))[0][0] is (
        ActionKind.REROUTE
    )
    lifted = []
    for i in range(100):
        lifted += p.step(round(t + 0.1 * (i + 1), 6), [link("B", loss=0.0), link("E")], TABLE)
    lifts = [a for a in lifted if a.kind is ActionKind.LIFT_COST]
    assert len(lifts) == 1 and lifts[0].factor == 1.0 and p.k.links["B"].penalty == 1.0


def test_flapping_held_and_extended_while_it_flaps() -> None:
    p = Planner(damp_half_life=10.0, damp_hold_max=30.0)
    damps: list[tuple[float, float]] = []
    for i in range(600):
        now = i * 0.1
        alive = (i // 5) % 2 == 0  # the link flips every 0.5 s, for a minute
        for a in p.step(now, [link("B", alive=alive), link("E")]):
            if a.kind is ActionKind.DAMP:
                assert a.until is not None
                damps.append((now, a.until))
    # damped once at the cut-off, then extended at every flap, never restarted early
    assert damps[0][0] < 3.0
    untils = [u for _, u in damps]
    assert all(a < b for a, b in itertools.pairwise(untils))
    # the merit is capped: held at most damp_hold_max after the last flap
    last_flap = 59.5
    assert last_flap + 20.0 < untils[-1] <= last_flap + 30.0 + 1e-9


def test_damping_merit_decays_after_a_quiet_spell() -> None:
    p = Planner(damp_suppress=1.9, damp_reuse=1.0, damp_half_life=2.0)
    for i, alive in enumerate([True, False, True]):
        actions = p.step(float(i) * 0.1, [link("B", alive=alive)])
    # two transitions (merit ~2): held until the merit has halved to reuse, ~2 s later
    [damp] = [a for a in actions if a.kind is ActionKind.DAMP]
    assert damp.until == pytest.approx(0.2 + 2.0 * math.log2(p.k.links["B"].merit(0.2, p.k.config)))
    # long after, the same two transitions count the same: no memory of the first
    for t in (20.0, 20.1, 20.2):
        actions = p.step(t, [link("B", alive=t != 20.1)])
    [damp] = [a for a in actions if a.kind is ActionKind.DAMP]
    assert damp.until == pytest.approx(
        20.2 + 2.0 * math.log2(p.k.links["B"].merit(20.2, p.k.config))
    )
    assert damp.until - 20.2 < 2.1


def test_node_reported_damping_is_respected() -> None:
    p = Planner(damp_suppress=1.9, flap_window=5.0)
    p.step(0.0, [link("B")])
    p.step(0.1, [link("B", alive=False)])
    assert p.step(0.2, [link("B", damped_until=5.0)]) == []


def test_partition_rehandshakes_each_dead_neighbour_once() -> None:
    p = Planner(partition_grace=0.5, reconnect_jitter=0.0)
    p.step(0.0, [link("B", alive=False), link("E")], [route("E", "E"), route("X", "E")])
    p.step(0.1, [link("B", alive=False), link("E", loss=0.0)], [route("E", "E")])
    a = p.step(0.7, [link("B", alive=False), link("E")], [route("E", "E")])
    assert kinds(a) == [(ActionKind.REHANDSHAKE, "B")]
    assert a[0].incidents == ((FaultKind.PARTITION, "A"),)
    assert p.k.incidents[(FaultKind.PARTITION, "A")].actions == ["rehandshake"]
    assert p.step(0.8, [link("B", alive=False), link("E")], [route("E", "E")]) == []


def test_partition_credit_shared_with_a_due_reconnect() -> None:
    p = Planner(partition_grace=0.5, reconnect_jitter=0.0)
    table = [route("B", "B"), route("C", "B"), route("E", "E"), route("X", "E")]
    p.step(0.0, [link("B"), link("E")], table)
    p.step(0.5, [link("B"), link("E")], table[:3])  # X lost, far away
    # B dies with C behind it; X's loss is old enough to be a partition, C's is not
    a = p.step(1.0, [link("B", alive=False), link("E")], [route("E", "E")])
    [rehandshake] = [x for x in a if x.kind is ActionKind.REHANDSHAKE]
    assert set(rehandshake.incidents) == {
        (FaultKind.DEAD_NEIGHBOUR, "B"),
        (FaultKind.PARTITION, "A"),
    }


def test_cert_renewal_requested_once_then_after_the_retry_interval() -> None:
    p = Planner(renewal_retry=60.0, renewal_timeout=1e6)
    p.step(0.0, not_after=1e6 + 300.0)
    requests = []
    for i in range(1, 3000):
        now = 200.0 + i * 0.1
        if now >= 1e6:
            break
        requests += [
            now
            for a in p.step(now, not_after=1e6 + 300.0)
            if a.kind is (ActionKind.REQUEST_RENEWAL)
        ]
    assert requests[0] == pytest.approx(200.1)
    assert [round(b - a) for a, b in itertools.pairwise(requests)] == [60, 120]


def test_helpers() -> None:
    cfg = HealingConfig()
    assert [penalty_factor(s, cfg) for s in (0.5, 1.0, 1.9, 2.0, 3.5, 9.0, math.inf)] == [
        2.0,
        2.0,
        2.0,
        4.0,
        8.0,
        16.0,
        16.0,
    ]
    assert [damp_hold(m, cfg) for m in (1.0, 1.5, 3.0, 6.0, 1e6)] == [0.0, 0.0, 10.0, 20.0, 30.0]
    rng = random.Random(7)
    for attempt in range(1, 20):
        d = reconnect_delay(attempt, cfg, rng)
        nominal = min(cfg.reconnect_max, cfg.reconnect_base * 2 ** (attempt - 1))
        assert nominal * 0.8 <= d <= nominal * 1.2
    assert renewal_delay(20, cfg) == cfg.renewal_retry_max


def test_penalty_kept_while_held_down_or_settling() -> None:
    p = Planner(revive_grace=2.0)
    raised = raised_within(p, 0.0, 0.5, 3.0)
    t = p.k.links["B"].cost_changed_at
    assert t is not None and raised.factor == 4.0 and p.k.links["B"].penalty == 4.0
    # recovered but held down: not judged, so not lifted (even past the dwell)
    for i in range(80):
        now = round(t + 0.1 * (i + 1), 6)
        assert p.step(now, [link("B", damped_until=t + 20.0), link("E")], TABLE) == []
    # died and came back: settling, not lifted either
    t = round(t + 20.0, 6)
    p.step(t, [link("B", alive=False), link("E")], TABLE)
    settling = [
        a
        for a in p.step(t + 0.1, [link("B"), link("E")], TABLE)
        if a.kind is (ActionKind.LIFT_COST)
    ]
    assert settling == []
    lifted = [
        a
        for a in p.step(t + 2.2, [link("B"), link("E")], TABLE)
        if a.kind is (ActionKind.LIFT_COST)
    ]
    assert len(lifted) == 1
