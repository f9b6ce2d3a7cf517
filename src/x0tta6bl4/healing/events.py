"""The healing layer's vocabulary: fault and action kinds, findings, planned actions,
runtime samples and the :class:`HealingEvent` every finished incident becomes.

Kinds are ``StrEnum``s so they serialise as plain strings in traces and metric labels.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class FaultKind(enum.StrEnum):
    DEAD_NEIGHBOUR = "dead_neighbour"
    DEGRADED_LINK = "degraded_link"
    FLAPPING_LINK = "flapping_link"
    PARTITION = "partition"
    CERT_NEAR_EXPIRY = "cert_near_expiry"
    HANDSHAKE_FAILING = "handshake_failing"


class ActionKind(enum.StrEnum):
    REROUTE = "reroute"  # drop_neighbour
    REHANDSHAKE = "rehandshake"  # reconnect
    RAISE_COST = "raise_cost"  # set_link_penalty(factor > 1)
    LIFT_COST = "lift_cost"  # set_link_penalty(1.0)
    DAMP = "damp"  # damp_link
    REQUEST_RENEWAL = "request_renewal"
    # probe: an end-to-end echo to a destination, to measure a repair rather than
    # assume it; never credited to an incident as a repair action
    VERIFY = "verify"


class Outcome(enum.StrEnum):
    """How an incident ended.

    * ``repaired``: the repair condition was measured while the fault still held (for a
      dead neighbour or a partition: traffic to a sample of the affected destinations
      verified end to end after the detection, the neighbour still dead);
    * ``cleared``: the fault went away by itself (the neighbour was heard again, the
      partition healed, the link recovered) before a repair was measured;
    * ``failed``: neither within the incident timeout;
    * ``superseded``: folded into a broader incident.
    """

    REPAIRED = "repaired"
    CLEARED = "cleared"
    FAILED = "failed"
    SUPERSEDED = "superseded"


NO_ACTION = "wait"
"""``HealingEvent.action`` label of an incident closed without any action executed for it."""

IncidentKey = tuple[FaultKind, str]
"""``(kind, subject)``: at most one open incident per key."""


@dataclass(frozen=True, slots=True)
class HealingEvent:
    """One finished incident: what broke, what we did, and when it was measured repaired.

    Times, as a user of the mesh would count them:

    * ``fault_started_at``: the node's honest estimate of when the fault began (a dead
      neighbour: its last hello heard, or when its loss began to rise if it was dying
      by degrees; a gray link: when its loss evidence started rising);
    * ``detected_at``: when an incident was opened;
    * ``repaired_at`` (outcome ``repaired`` only): when traffic verifiably flowed again,
      the arrival of the end-to-end probe answer that completed the repair, never the
      moment an action was sent or a route appeared;
    * ``cleared_at`` (outcome ``cleared`` only): when the fault was seen gone by itself.

    ``mttd`` is fault start to detection, ``mttr`` fault start to verified repair (the
    outage a user of an affected destination saw; it includes the detection), and
    ``time_to_clear`` fault start to clearing. ``verified`` names the destinations whose
    end-to-end answers proved the repair, in the order they came.

    ``actions`` are the executed action kinds in execution order; ``action`` is their
    display label (``reroute+rehandshake``, or ``wait`` for none), for tables and metric
    labels only: decisions use ``actions``. Probes (``verify``) measure, they do not
    repair, and are not among them.
    """

    kind: str
    subject: str
    detected_at: float
    actions: tuple[ActionKind, ...]
    repaired_at: float | None
    outcome: str
    fault_started_at: float | None = None
    cleared_at: float | None = None
    verified: tuple[str, ...] = ()

    @property
    def action(self) -> str:
        return "+".join(self.actions) if self.actions else NO_ACTION

    @property
    def started_at(self) -> float:
        """The fault's start, or its detection when the start is unknown."""
        start = self.fault_started_at
        return self.detected_at if start is None else min(start, self.detected_at)

    @property
    def mttr(self) -> float | None:
        """Time to repair: fault start to verified repair; None unless repaired."""
        if self.repaired_at is None:
            return None
        return max(0.0, self.repaired_at - self.started_at)

    @property
    def mttd(self) -> float | None:
        """Time to detect, fault start to detection; None when the start is unknown."""
        if self.fault_started_at is None:
            return None
        return max(0.0, self.detected_at - self.fault_started_at)

    @property
    def time_to_clear(self) -> float | None:
        """Fault start to the fault going away by itself; None unless cleared."""
        if self.cleared_at is None:
            return None
        return max(0.0, self.cleared_at - self.started_at)


@dataclass(frozen=True, slots=True)
class Finding:
    """A fault condition that holds in the current observation (level, not edge).

    ``severity`` is 1.0 at the detection threshold and grows with the fault.
    ``destinations`` are the nodes that must be reachable again for a repair
    (dead neighbour: reachable before it died; partition: the lost ones).
    """

    kind: FaultKind
    subject: str
    severity: float = 1.0
    fault_started_at: float | None = None
    destinations: frozenset[str] = frozenset()

    @property
    def key(self) -> IncidentKey:
        return (self.kind, self.subject)


@dataclass(frozen=True, slots=True)
class PlannedAction:
    """One call the Execute phase should make on the node.

    ``subject`` is the peer acted on (the node's own name for renewal, the destination
    for a probe); ``incidents`` are the open incidents the action is credited to.
    ``factor`` is for cost actions, ``until`` for damping, ``retry_at`` is when the
    planner may repeat the action (backoff), recorded only if the action is executed;
    ``via`` is the next hop a probe leaves by (a new route is worth a new probe).
    """

    kind: ActionKind
    subject: str
    reason: FaultKind
    incidents: tuple[IncidentKey, ...] = ()
    factor: float | None = None
    until: float | None = None
    retry_at: float | None = None
    via: str | None = None


@dataclass(frozen=True, slots=True)
class RuntimeStats:
    """Facts about the node's own process that only the runtime can measure.

    The runtime feeds them to :class:`~x0tta6bl4.healing.loop.HealingNode` as an input;
    the simulator never does, so every field is optional.
    """

    loop_lag: float | None = None  # seconds the event loop ran late
    memory_bytes: int | None = None  # resident set size
