"""Execute: node calls through a per-kind token bucket and circuit breaker."""

from __future__ import annotations

import pytest

from tests.healing import helpers
from x0tta6bl4.errors import NoSession
from x0tta6bl4.healing import (
    ActionKind,
    BreakerState,
    CircuitBreaker,
    Executor,
    FaultKind,
    HealingConfig,
    PlannedAction,
)
from x0tta6bl4.ratelimit import TokenBucket
from x0tta6bl4.sansio import Action, Event


class RecordingNode(helpers.RecordingNode):
    """The shared recording node, whose every call also answers with an
    ``Event("node.<method>")``, so the tests see the node's actions passed through."""

    def _record(self, *call: object) -> list[Action]:
        super()._record(*call)
        return [Event("node." + str(call[0]), {})]


def state(breaker: CircuitBreaker) -> BreakerState:
    # a call, so mypy does not narrow the attribute across the calls that change it
    return breaker.state


def pa(kind: ActionKind, subject: str = "B", **kw: object) -> PlannedAction:
    return PlannedAction(kind, subject, FaultKind.DEAD_NEIGHBOUR, **kw)  # type: ignore[arg-type]


def executor(**cfg: object) -> tuple[RecordingNode, Executor]:
    node = RecordingNode()
    return node, Executor(node, HealingConfig(**cfg))  # type: ignore[arg-type]


def kinds_of(actions: list[Action]) -> list[str]:
    return [a.kind for a in actions if isinstance(a, Event)]


def test_each_action_kind_calls_the_node() -> None:
    node, ex = executor()
    planned = [
        pa(ActionKind.REROUTE),
        pa(ActionKind.REHANDSHAKE),
        pa(ActionKind.RAISE_COST, factor=4.0),
        pa(ActionKind.LIFT_COST),
        pa(ActionKind.DAMP, until=9.0),
        pa(ActionKind.REQUEST_RENEWAL, "A"),
    ]
    result = ex.execute(1.0, planned)
    assert node.calls == [
        ("drop_neighbour", 1.0, "B"),
        ("reconnect", 1.0, "B"),
        ("set_link_penalty", 1.0, "B", 4.0),
        ("set_link_penalty", 1.0, "B", 1.0),
        ("damp_link", 1.0, "B", 9.0),
        ("request_renewal", 1.0),
    ]
    assert result.executed == planned and result.skipped == []
    assert kinds_of(result.actions)[:2] == ["healing.action", "node.drop_neighbour"]
    first = result.actions[0]
    assert isinstance(first, Event)
    assert first.fields == {"action": "reroute", "subject": "B", "reason": "dead_neighbour"}
    damp = result.actions[8]
    assert isinstance(damp, Event) and damp.fields["until"] == 9.0


def test_rate_limit_per_action_kind() -> None:
    _node, ex = executor(rate_limit_per_second=1.0, rate_limit_burst=3.0)
    five = [pa(ActionKind.REHANDSHAKE, f"P{i}") for i in range(5)]
    result = ex.execute(0.0, [*five, pa(ActionKind.REROUTE)])
    assert len(result.executed) == 4  # three reconnects and the reroute (its own bucket)
    assert [r for _, r in result.skipped] == ["rate_limited", "rate_limited"]
    assert len(ex.execute(0.5, five).executed) == 0
    assert len(ex.execute(1.0, five).executed) == 1
    assert len(ex.execute(10.0, five).executed) == 3  # refilled up to the burst only


def test_probes_call_the_node_through_their_own_bucket() -> None:
    node, ex = executor(
        rate_limit_per_second=1.0, rate_limit_burst=1.0, probe_rate_per_second=2.0, probe_burst=3.0
    )
    five = [pa(ActionKind.VERIFY, f"D{i}", via="E") for i in range(5)]
    result = ex.execute(0.0, [*five, pa(ActionKind.REROUTE)])
    probed = [("probe", 0.0, f"D{i}") for i in range(3)]  # the burst
    assert node.calls == [*probed, ("drop_neighbour", 0.0, "B")]
    assert [r for _, r in result.skipped] == ["rate_limited", "rate_limited"]
    first = result.actions[0]
    assert isinstance(first, Event) and first.fields["via"] == "E"
    assert len(ex.execute(1.0, five).executed) == 2  # two per second


def test_token_bucket_ignores_time_going_backwards() -> None:
    bucket = TokenBucket(rate=1.0, burst=1.0)
    assert bucket.take(10.0)
    assert not bucket.take(5.0)
    assert not bucket.take(10.5)
    assert bucket.take(11.0)


def test_circuit_breaker_opens_half_opens_and_closes() -> None:
    node, ex = executor(breaker_failures=3, breaker_cooldown=10.0)
    for t in (1.0, 2.0, 3.0):
        ex.report(t, ActionKind.REHANDSHAKE, ok=False)
    breaker = ex.breakers[ActionKind.REHANDSHAKE]
    assert state(breaker) is BreakerState.OPEN
    result = ex.execute(4.0, [pa(ActionKind.REHANDSHAKE), pa(ActionKind.REROUTE)])
    assert [r for _, r in result.skipped] == ["circuit_open"]
    assert node.calls == [("drop_neighbour", 4.0, "B")]  # other kinds unaffected
    opened = [a for a in result.actions if isinstance(a, Event) and a.kind == "healing.breaker"]
    assert [e.fields for e in opened] == [{"action": "rehandshake", "state": "open"}]
    assert ex.execute(12.9, [pa(ActionKind.REHANDSHAKE)]).executed == []
    # after the cool-down: one probe, not two
    result = ex.execute(13.0, [pa(ActionKind.REHANDSHAKE), pa(ActionKind.REHANDSHAKE, "C")])
    assert len(result.executed) == 1 and state(breaker) is BreakerState.HALF_OPEN
    ex.report(14.0, ActionKind.REHANDSHAKE, ok=True)
    assert state(breaker) is BreakerState.CLOSED
    assert len(ex.execute(14.0, [pa(ActionKind.REHANDSHAKE, "C")]).executed) == 1


def test_failed_probe_reopens() -> None:
    breaker = CircuitBreaker(threshold=2, cooldown=5.0)
    breaker.record(0.0, ok=False)
    assert state(breaker) is BreakerState.CLOSED
    breaker.record(0.0, ok=False)
    assert state(breaker) is BreakerState.OPEN and not breaker.allow(4.9)
    assert breaker.allow(5.0) and state(breaker) is BreakerState.HALF_OPEN
    breaker.record(6.0, ok=False)
    assert state(breaker) is BreakerState.OPEN and not breaker.allow(10.9)
    assert breaker.allow(11.0)
    # a probe whose verdict never arrives is replaced after another cool-down
    assert not breaker.allow(15.9) and breaker.allow(16.0)


def test_node_refusal_counts_as_failure_and_opens_the_breaker() -> None:
    node, ex = executor(breaker_failures=2)
    node.refuse["reconnect"] = NoSession("no such peer")
    result = ex.execute(0.0, [pa(ActionKind.REHANDSHAKE)])
    assert result.executed == [] and result.skipped[0][1] == "error"
    failed = result.actions[0]
    assert isinstance(failed, Event) and failed.kind == "healing.action_failed"
    assert failed.fields["error"] == "NoSession"
    result = ex.execute(0.1, [pa(ActionKind.REHANDSHAKE)])
    assert state(ex.breakers[ActionKind.REHANDSHAKE]) is BreakerState.OPEN
    assert "healing.breaker" in kinds_of(result.actions)
    assert ex.execute(0.2, [pa(ActionKind.REHANDSHAKE)]).skipped[0][1] == "circuit_open"
    assert len(node.calls) == 2


def test_unexpected_errors_propagate() -> None:
    node, ex = executor()
    node.refuse["drop_neighbour"] = RuntimeError("bug")
    with pytest.raises(RuntimeError):
        ex.execute(0.0, [pa(ActionKind.REROUTE)])
