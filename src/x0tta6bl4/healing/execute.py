"""Execute: carry out planned actions through the ``HealableNode``, guarded per action
kind by a token bucket (no action storms, however many faults a cycle sees) and a
circuit breaker (stop repeating an action kind that keeps not working).

"Unsuccessful" is reported two ways: the node refusing the call (a typed error), and
the loop reporting the outcome of the incident the action was for (``report``).
Probes (``verify``) have their own bucket (``probe_rate_per_second``,
``probe_burst``): one per destination, and they bound the node's total probe rate.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from x0tta6bl4.errors import X0tError
from x0tta6bl4.healing.events import ActionKind, PlannedAction
from x0tta6bl4.healing.knowledge import HealingConfig
from x0tta6bl4.mesh.observe import HealableNode
from x0tta6bl4.ratelimit import TokenBucket
from x0tta6bl4.sansio import Action, Event


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Closed -> open after ``threshold`` consecutive failures; open -> half-open after
    ``cooldown``; half-open lets one probe through, whose result closes or reopens it.

    A probe whose result never arrives (its incident closed as superseded, or the action
    has no incident) is replaced by another after ``cooldown``, so it cannot wedge.
    """

    __slots__ = ("_opened_at", "_probe_at", "cooldown", "failures", "state", "threshold")

    def __init__(self, threshold: int, cooldown: float) -> None:
        self.threshold = max(1, threshold)
        self.cooldown = cooldown
        self.state = BreakerState.CLOSED
        self.failures = 0
        self._opened_at = 0.0
        self._probe_at: float | None = None

    def allow(self, now: float) -> bool:
        if self.state is BreakerState.OPEN and now - self._opened_at >= self.cooldown:
            self.state = BreakerState.HALF_OPEN
            self._probe_at = None
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.HALF_OPEN and (
            self._probe_at is None or now - self._probe_at >= self.cooldown
        ):
            self._probe_at = now
            return True
        return False

    def record(self, now: float, ok: bool) -> None:
        if ok:
            self.failures = 0
            self.state = BreakerState.CLOSED
            self._probe_at = None
            return
        self.failures += 1
        if self.state is BreakerState.HALF_OPEN or self.failures >= self.threshold:
            self.state = BreakerState.OPEN
            self._opened_at = now
            self._probe_at = None


@dataclass(frozen=True, slots=True)
class ExecutionResult:
    actions: list[Action]  # what the node asked to do, plus our trace events
    executed: list[PlannedAction]
    skipped: list[tuple[PlannedAction, str]]  # reason: rate_limited | circuit_open | error


# Errors a node may raise to refuse an action (unknown peer, bad argument, protocol
# state); anything else is a bug and propagates.
_REFUSALS = (X0tError, LookupError, ValueError)


class Executor:
    def __init__(self, node: HealableNode, config: HealingConfig) -> None:
        self.node = node
        self.config = config
        self.buckets = {
            kind: TokenBucket(config.rate_limit_per_second, config.rate_limit_burst)
            for kind in ActionKind
        }
        self.buckets[ActionKind.VERIFY] = TokenBucket(
            config.probe_rate_per_second, config.probe_burst
        )
        self.breakers = {
            kind: CircuitBreaker(config.breaker_failures, config.breaker_cooldown)
            for kind in ActionKind
        }
        self._trace: list[Action] = []  # breaker transitions reported between cycles

    def _call(self, now: float, action: PlannedAction) -> list[Action]:
        node, peer = self.node, action.subject
        match action.kind:
            case ActionKind.REROUTE:
                return node.drop_neighbour(now, peer)
            case ActionKind.REHANDSHAKE:
                return node.reconnect(now, peer)
            case ActionKind.RAISE_COST | ActionKind.LIFT_COST:
                factor = action.factor if action.factor is not None else 1.0
                return node.set_link_penalty(now, peer, factor)
            case ActionKind.DAMP:
                return node.damp_link(now, peer, action.until)
            case ActionKind.REQUEST_RENEWAL:
                return node.request_renewal(now)
            case ActionKind.VERIFY:
                return node.probe(now, peer)

    def report(self, now: float, kind: ActionKind, ok: bool) -> None:
        """Feed back whether an action of ``kind`` worked (its incident's outcome)."""
        breaker = self.breakers[kind]
        before = breaker.state
        breaker.record(now, ok)
        self._note_transition(kind, before, breaker.state)

    def _note_transition(self, kind: ActionKind, before: BreakerState, after: BreakerState) -> None:
        if before is not after:
            self._trace.append(Event("healing.breaker", {"action": str(kind), "state": str(after)}))

    def execute(self, now: float, planned: list[PlannedAction]) -> ExecutionResult:
        actions, self._trace = self._trace, []
        executed: list[PlannedAction] = []
        skipped: list[tuple[PlannedAction, str]] = []
        for action in planned:
            bucket = self.buckets[action.kind]
            # Peek at the bucket before asking the breaker, so a rate-limited action
            # does not use up a half-open breaker's single probe.
            if not bucket.ready(now):
                skipped.append((action, "rate_limited"))
                continue
            breaker = self.breakers[action.kind]
            before = breaker.state
            allowed = breaker.allow(now)
            self._note_transition(action.kind, before, breaker.state)
            if not allowed:
                skipped.append((action, "circuit_open"))
                continue
            bucket.take(now)
            try:
                out = self._call(now, action)
            except _REFUSALS as exc:
                skipped.append((action, "error"))
                self._trace.append(
                    Event(
                        "healing.action_failed",
                        {
                            "action": str(action.kind),
                            "subject": action.subject,
                            "error": type(exc).__name__,
                        },
                    )
                )
                self.report(now, action.kind, ok=False)
                continue
            fields: dict[str, object] = {
                "action": str(action.kind),
                "subject": action.subject,
                "reason": str(action.reason),
            }
            if action.factor is not None:
                fields["factor"] = action.factor
            if action.until is not None:
                fields["until"] = action.until
            if action.via is not None:
                fields["via"] = action.via
            actions.append(Event("healing.action", fields))
            actions.extend(out)
            executed.append(action)
        actions.extend(self._trace)
        self._trace = []
        return ExecutionResult(actions, executed, skipped)
