"""The K of MAPE-K: configuration, bounded history per link and route, adaptive
thresholds, open incidents, and what repaired what and how fast.

Every phase reads this; Monitor writes the observed history, the loop writes incidents
and executed actions. All containers are bounded (ring buffers, an LRU of peers) so a
node that runs for months does not grow.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field, fields
from typing import NamedTuple

from x0tta6bl4.healing.events import (
    NO_ACTION,
    ActionKind,
    FaultKind,
    Finding,
    HealingEvent,
    IncidentKey,
    Outcome,
    PlannedAction,
)


@dataclass(frozen=True, slots=True)
class HealingConfig:
    """Every threshold and interval of the loop, by name. Times are seconds.

    The defaults fit the protocol's timers (hellos every 0.1 s, a neighbour dead after
    0.4 s of silence, handshake retries capped at 1 s).
    """

    cycle_interval: float = 1.0
    active_cycle_interval: float = 0.05  # while an incident is open
    # -- bounds on memory
    history_len: int = 64  # samples and change timestamps kept per link / route
    max_peers: int = 1024  # links remembered (LRU beyond that)
    event_history: int = 4096  # finished HealingEvents kept
    forget_after: float = 600.0  # a link absent from observations this long is forgotten
    # -- degraded link: absolute thresholds, adapted per link within [min, max]
    degraded_loss: float = 0.2
    degraded_loss_min: float = 0.05
    degraded_loss_max: float = 0.5
    loss_margin: float = 0.1  # adapted loss threshold = baseline loss + margin
    degraded_rtt: float = 0.5
    degraded_rtt_min: float = 0.05
    degraded_rtt_max: float = 2.0
    rtt_factor: float = 3.0  # adapted RTT threshold = baseline * factor + margin
    rtt_margin: float = 0.05
    threshold_adapt_rate: float = 0.05  # fraction of the gap closed per cycle
    # -- degraded link: anomaly score (EWMA of a one-sided z-score against the baseline)
    anomaly_threshold: float = 3.0
    anomaly_alpha: float = 0.2
    baseline_alpha: float = 0.02
    baseline_min_samples: int = 20  # no score, no adaptation before this many samples
    baseline_gate: float = 1.0  # above this score the baseline learns only slowly...
    baseline_slow_factor: float = 0.1  # ...at baseline_alpha times this
    # the floors keep a perfectly steady link from calling one lost hello (1/16) or a
    # few ms of RTT noise an anomaly
    loss_sigma_floor: float = 0.05
    rtt_sigma_floor: float = 0.005
    rtt_sigma_floor_ratio: float = 0.25  # of the baseline RTT
    onset_ratio: float = 0.34  # pressure (1.0 = threshold) that marks a degradation's start
    # A link back from the dead still reports the outage in its hello history (16 hellos
    # at 0.1 s): no degradation verdict, and no baseline learning, for this long.
    revive_grace: float = 2.0
    recover_ratio: float = 0.7  # degraded until severity falls below this (hysteresis)
    penalty_max: float = 16.0  # largest cost factor; factors are powers of two
    # -- flapping
    flap_window: float = 10.0
    link_flap_threshold: int = 4  # alive transitions within the window
    route_flap_threshold: int = 4  # next-hop changes of one route within the window
    route_flap_min_link_score: int = 5  # local instability needed to blame a next hop
    cost_change_ratio: float = 0.25  # base-cost steps this large count as instability
    damp_hold: float = 4.0  # first hold-down...
    damp_backoff: float = 2.0  # ...multiplied by this for each further episode...
    damp_hold_max: float = 120.0  # ...up to this
    damp_forget: float = 300.0  # episodes are forgotten after this long undamped
    # -- dead neighbour, handshakes
    reconnect_base: float = 0.5
    reconnect_max: float = 10.0
    reconnect_jitter: float = 0.2  # each delay is scaled by 1 +- this, at random
    handshake_fail_threshold: int = 3
    max_loop_lag: float = 1.0  # above this our own lateness explains silence: no blame
    # -- partition
    partition_grace: float = 1.5  # unreachable this long before it is a partition
    partition_memory: float = 300.0  # destinations lost longer ago are forgotten
    # -- certificate
    cert_validity: float | None = None  # None: learned from the first sight of each cert
    cert_renew_fraction: float = 1 / 3  # renew when this fraction of validity remains
    renewal_retry: float = 60.0
    renewal_retry_max: float = 3600.0
    # -- incidents
    incident_timeout: float = 30.0
    renewal_timeout: float = 600.0  # certificate incidents wait on the control plane
    # -- execute
    rate_limit_per_second: float = 5.0  # token bucket per action kind
    rate_limit_burst: float = 10.0
    breaker_failures: int = 3  # consecutive unsuccessful actions that open a breaker
    breaker_cooldown: float = 10.0  # open -> half-open

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"HealingConfig.{f.name} must be a finite number >= 0")
        if self.cycle_interval <= 0 or self.active_cycle_interval <= 0:
            raise ValueError("HealingConfig cycle intervals must be > 0")
        if min(self.history_len, self.max_peers, self.event_history) < 1:
            raise ValueError("HealingConfig history bounds must be >= 1")
        for lo, mid, hi in (
            ("degraded_loss_min", "degraded_loss", "degraded_loss_max"),
            ("degraded_rtt_min", "degraded_rtt", "degraded_rtt_max"),
        ):
            if not getattr(self, lo) <= getattr(self, mid) <= getattr(self, hi):
                raise ValueError(f"HealingConfig needs {lo} <= {mid} <= {hi}")
        if min(self.degraded_loss_min, self.degraded_rtt_min, self.anomaly_threshold) <= 0:
            raise ValueError("HealingConfig thresholds and their lower bounds must be > 0")
        if not 0 < self.cert_renew_fraction < 1:
            raise ValueError("HealingConfig.cert_renew_fraction must be in (0, 1)")
        if not 0 < self.recover_ratio <= 1:
            raise ValueError("HealingConfig.recover_ratio must be in (0, 1]")
        for name in ("anomaly_alpha", "baseline_alpha", "threshold_adapt_rate"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"HealingConfig.{name} must be in (0, 1]")
        if self.damp_backoff < 1 or self.penalty_max < 2:
            raise ValueError("HealingConfig needs damp_backoff >= 1 and penalty_max >= 2")
        if self.reconnect_jitter >= 1:
            raise ValueError("HealingConfig.reconnect_jitter must be < 1")


def clamp(x: float, lo: float, hi: float) -> float:
    return lo if x < lo else hi if x > hi else x


def count_since(stamps: deque[float], since: float) -> int:
    """Timestamps (appended in time order) at or after ``since``."""
    n = 0
    for t in reversed(stamps):
        if t < since:
            break
        n += 1
    return n


class EwmaBaseline:
    """Exponentially weighted mean and variance of a link metric (its "normal").

    The first samples use a cumulative mean (weight 1/n) so the baseline settles
    quickly, then the fixed ``alpha`` takes over.
    """

    __slots__ = ("mean", "n", "var")

    def __init__(self) -> None:
        self.mean = 0.0
        self.var = 0.0
        self.n = 0

    def update(self, x: float, alpha: float) -> None:
        self.n += 1
        a = max(alpha, 1.0 / self.n)
        d = x - self.mean
        self.mean += a * d
        self.var = (1.0 - a) * (self.var + a * d * d)

    def z(self, x: float, sigma_floor: float) -> float:
        """One-sided z-score: only worse-than-normal counts as anomalous."""
        sigma = max(math.sqrt(self.var), sigma_floor)
        return max(0.0, (x - self.mean) / sigma)


class LinkSample(NamedTuple):
    # a NamedTuple, not a dataclass: one is made per link per cycle
    t: float
    alive: bool
    rtt: float | None
    loss: float
    jitter: float | None


class LinkKnowledge:
    """Everything remembered about one neighbour link."""

    def __init__(self, peer: str, config: HealingConfig) -> None:
        n = config.history_len
        self.peer = peer
        self.samples: deque[LinkSample] = deque(maxlen=n)
        self.alive_changes: deque[float] = deque(maxlen=n)
        self.cost_changes: deque[float] = deque(maxlen=n)  # when the cost turned around
        self.cost_trend = 0  # direction of the last significant cost change: +1, -1, 0
        self.session_resets: deque[float] = deque(maxlen=n)
        self.alive: bool | None = None  # as last observed
        self.ever_alive = False
        self.last_seen = -math.inf  # last observation that listed the link
        self.last_alive_at: float | None = None
        self.revived_at: float | None = None  # last dead -> alive transition
        self.last_heard: float | None = None
        self.base_cost: int | None = None
        self.session_age: float | None = None
        self.handshake_failures = 0
        self.reachable_when_alive: frozenset[str] = frozenset()
        self.loss_base = EwmaBaseline()
        self.rtt_base = EwmaBaseline()
        self.loss_score = 0.0
        self.rtt_score = 0.0
        self.degrading_since: float | None = None
        self.pressure = 0.0  # of the latest sample; 0 while the link is dead
        self.loss_threshold = config.degraded_loss
        self.rtt_threshold = config.degraded_rtt
        # healing state, written when actions are executed
        self.reconnect_attempts = 0
        self.reconnect_next_at: float | None = None
        self.penalty = 1.0
        self.damped_until: float | None = None
        self.damp_episodes = 0

    def episodes_at(self, now: float, config: HealingConfig) -> int:
        """Damping episodes that still count: forgotten after a long quiet spell."""
        if self.damped_until is not None and now - self.damped_until > config.damp_forget:
            return 0
        return self.damp_episodes

    def damped_at(self, now: float) -> bool:
        return self.damped_until is not None and self.damped_until > now

    @property
    def anomaly(self) -> float:
        return max(self.loss_score, self.rtt_score)

    def adapt_thresholds(self, config: HealingConfig) -> None:
        """Move thresholds toward this link's own baseline + margin, clamped.

        A link that is normally lossy gets a looser loss threshold (so it is not
        penalised forever) and a clean one a tighter threshold, never outside bounds.
        """
        if self.loss_base.n >= config.baseline_min_samples:
            target = self.loss_base.mean + config.loss_margin
            self.loss_threshold = clamp(
                self.loss_threshold + config.threshold_adapt_rate * (target - self.loss_threshold),
                config.degraded_loss_min,
                config.degraded_loss_max,
            )
        if self.rtt_base.n >= config.baseline_min_samples:
            target = self.rtt_base.mean * config.rtt_factor + config.rtt_margin
            self.rtt_threshold = clamp(
                self.rtt_threshold + config.threshold_adapt_rate * (target - self.rtt_threshold),
                config.degraded_rtt_min,
                config.degraded_rtt_max,
            )


class RouteKnowledge:
    """Recent next-hop changes of one destination: ``(t, old_hop, new_hop, count)``."""

    __slots__ = ("changes",)

    def __init__(self, config: HealingConfig) -> None:
        self.changes: deque[tuple[float, str | None, str | None, int]] = deque(
            maxlen=config.history_len
        )

    def changes_since(self, since: float) -> int:
        n = 0
        for t, _, _, k in reversed(self.changes):
            if t < since:
                break
            n += k
        return n

    def hops_since(self, since: float) -> set[str]:
        hops: set[str] = set()
        for t, old, new, _ in reversed(self.changes):
            if t < since:
                break
            if old is not None:
                hops.add(old)
            if new is not None:
                hops.add(new)
        return hops


@dataclass(slots=True)
class CertKnowledge:
    not_after: float | None = None
    validity: float | None = None  # estimated: the most remaining time seen for this cert
    renewal_attempts: int = 0
    renewal_next_at: float | None = None


@dataclass(slots=True)
class Incident:
    """An open fault: detected, maybe acted on, not yet measured repaired."""

    kind: FaultKind
    subject: str
    detected_at: float
    detected_seq: int  # observation number; repair must be seen in a later one
    fault_started_at: float | None
    severity: float
    destinations: frozenset[str] = frozenset()
    actions: list[ActionKind] = field(default_factory=list)
    done: set[tuple[ActionKind, str]] = field(default_factory=set)  # one-shot actions

    @property
    def key(self) -> IncidentKey:
        return (self.kind, self.subject)

    @property
    def action_label(self) -> str:
        return "+".join(self.actions) if self.actions else NO_ACTION


@dataclass(slots=True)
class RepairStats:
    """Outcomes of one (fault kind, action) pair and how fast the repairs were."""

    repaired: int = 0
    failed: int = 0
    superseded: int = 0
    mttr_total: float = 0.0
    mttr_max: float = 0.0

    @property
    def mean_mttr(self) -> float | None:
        return self.mttr_total / self.repaired if self.repaired else None

    @property
    def success_rate(self) -> float | None:
        tried = self.repaired + self.failed
        return self.repaired / tried if tried else None


class Knowledge:
    """The shared state of one node's loop."""

    def __init__(self, config: HealingConfig) -> None:
        self.config = config
        self.links: OrderedDict[str, LinkKnowledge] = OrderedDict()
        self.routes: dict[str, RouteKnowledge] = {}
        self.cert = CertKnowledge()
        self.incidents: dict[IncidentKey, Incident] = {}
        self.active: dict[IncidentKey, Finding] = {}  # conditions of the last cycle
        self.events: deque[HealingEvent] = deque(maxlen=config.event_history)
        self.repair_stats: dict[tuple[str, str], RepairStats] = {}
        self.loop_lag: deque[tuple[float, float]] = deque(maxlen=config.history_len)
        self.memory: deque[tuple[float, int]] = deque(maxlen=config.history_len)
        self.first_seen: float | None = None  # now of the first observation

    def link(self, peer: str) -> LinkKnowledge:
        """The peer's record, created on first use; least recently used ones are evicted."""
        lk = self.links.get(peer)
        if lk is None:
            lk = self.links[peer] = LinkKnowledge(peer, self.config)
            while len(self.links) > self.config.max_peers:
                self.links.popitem(last=False)
        else:
            self.links.move_to_end(peer)
        return lk

    def note_executed(self, now: float, action: PlannedAction) -> None:
        """Remember an action the node accepted, and credit it to its incident."""
        for key in action.incidents:
            incident = self.incidents.get(key)
            if incident is not None:
                if action.kind not in incident.actions:
                    incident.actions.append(action.kind)
                incident.done.add((action.kind, action.subject))
        kind = action.kind
        if kind is ActionKind.REQUEST_RENEWAL:
            self.cert.renewal_attempts += 1
            self.cert.renewal_next_at = action.retry_at
            return
        lk = self.link(action.subject)
        if kind is ActionKind.REHANDSHAKE:
            lk.reconnect_attempts += 1
            lk.reconnect_next_at = action.retry_at
        elif kind in (ActionKind.RAISE_COST, ActionKind.LIFT_COST):
            lk.penalty = action.factor if action.factor is not None else 1.0
        elif kind is ActionKind.DAMP:
            lk.damp_episodes = lk.episodes_at(now, self.config) + 1
            lk.damped_until = action.until

    def close(self, incident: Incident, outcome: Outcome, at: float) -> HealingEvent:
        """Turn an open incident into a finished HealingEvent and learn from it."""
        del self.incidents[incident.key]
        event = HealingEvent(
            kind=str(incident.kind),
            subject=incident.subject,
            detected_at=incident.detected_at,
            action=incident.action_label,
            repaired_at=at if outcome is Outcome.REPAIRED else None,
            outcome=str(outcome),
            fault_started_at=incident.fault_started_at,
        )
        self.events.append(event)
        stats = self.repair_stats.setdefault((event.kind, event.action), RepairStats())
        if outcome is Outcome.REPAIRED:
            stats.repaired += 1
            mttr = at - incident.detected_at
            stats.mttr_total += mttr
            stats.mttr_max = max(stats.mttr_max, mttr)
        elif outcome is Outcome.FAILED:
            stats.failed += 1
        else:
            stats.superseded += 1
        return event
