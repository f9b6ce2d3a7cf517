"""The K of MAPE-K: configuration, bounded history per link and route, adaptive
thresholds, open incidents, and what repaired what and how fast.

Every phase reads this; Monitor writes the observed history, the loop writes incidents
and executed actions. All containers are bounded (ring buffers, an LRU of peers) so a
node that runs for months does not grow.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import NamedTuple

from x0tta6bl4.healing.events import (
    ActionKind,
    FaultKind,
    Finding,
    HealingEvent,
    IncidentKey,
    Outcome,
    PlannedAction,
)
from x0tta6bl4.routing import linkquality as lq


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
    # -- what a link's reported loss means (the link estimator's constants): turns the
    # time between two observations into the number of hellos they cover
    hello_interval: float = lq.HELLO_INTERVAL  # seconds between a neighbour's hellos
    loss_window: int = lq.HISTORY_LEN  # hellos each reported loss fraction is taken over
    # -- degraded link: per-link loss threshold p0 (the most loss still normal for it),
    # adapted toward the link's own baseline + margin within [min, max]
    degraded_loss: float = 0.2
    degraded_loss_min: float = 0.05
    degraded_loss_max: float = 0.5
    loss_margin: float = 0.1  # adapted loss threshold = baseline loss + margin
    # Loss is judged by a sequential test (Page's CUSUM of the log-likelihood ratio, in
    # nats) of "loss = p0" against "loss = p0 + loss_shift", over hellos accumulated
    # across observations: a 16-hello window (1/16 steps) cannot tell 3 % from 10 %.
    loss_shift: float = 0.2  # fraction of hellos lost above p0 that the test looks for
    loss_evidence: float = 4.6  # nats to call a link degraded (ln 100: odds of 100 to 1)
    loss_evidence_max: float = 9.2  # nats, cap on the evidence; bounds the recovery time
    loss_level_time: float = 2.0  # seconds, time constant of the loss level (severity)
    degraded_rtt: float = 0.5
    degraded_rtt_min: float = 0.05
    degraded_rtt_max: float = 2.0
    rtt_factor: float = 3.0  # adapted RTT threshold = baseline * factor + margin
    rtt_margin: float = 0.05
    threshold_adapt_rate: float = 0.05  # fraction of the gap closed per cycle_interval
    # -- degraded link: RTT anomaly score (EWMA of a one-sided z-score against the baseline)
    anomaly_threshold: float = 3.0
    anomaly_alpha: float = 0.2
    baseline_alpha: float = 0.02  # a sample's weight in the baselines, per cycle_interval
    baseline_min_samples: int = 20  # no score, no adaptation before this many samples
    baseline_gate: float = 1.0  # above this score the baseline learns only slowly...
    baseline_slow_factor: float = 0.1  # ...at baseline_alpha times this
    # the floors keep a perfectly steady link from calling a few ms of RTT noise an anomaly
    rtt_sigma_floor: float = 0.005
    rtt_sigma_floor_ratio: float = 0.25  # of the baseline RTT
    onset_ratio: float = 0.34  # pressure (1.0 = threshold) that marks a degradation's start
    # A fault is dated from a loss rise in the link's hello record (the neighbour's last
    # 128 hellos) if the rise gains this many nats over no change (ln 1,000: the search
    # over every change point makes smaller gains common; 128 hellos at 2 % loss reach
    # 6.5 nats one time in a thousand) and does not fall back after (rise_fall_evidence).
    rise_evidence: float = 6.9
    rise_fall_evidence: float = 4.6
    # A link back from the dead still reports the outage in its hello history (16 hellos
    # at 0.1 s): no degradation verdict, and no baseline learning, for this long.
    revive_grace: float = 2.0
    recover_ratio: float = 0.7  # degraded until pressure falls below this (hysteresis)
    penalty_max: float = 16.0  # largest cost factor; factors are powers of two
    # A link's cost (penalty) changes at most once per dwell (seconds); the dwell is
    # multiplied by the backoff each time a penalty comes back soon after it was lifted
    # (an oscillating link), up to the max, and starts over once the cost has held still
    # for cost_dwell_reset seconds.
    cost_dwell: float = 5.0  # seconds, the first dwell
    cost_dwell_backoff: float = 2.0  # factor per oscillation
    cost_dwell_max: float = 80.0  # seconds
    cost_dwell_reset: float = 120.0  # seconds
    # -- flapping
    flap_window: float = 10.0  # route next-hop changes and link transitions counted over this
    route_flap_threshold: int = 4  # next-hop changes of one route within the window
    route_flap_min_link_score: int = 5  # local instability needed to blame a next hop
    cost_change_ratio: float = 0.25  # base-cost steps this large count as instability
    # Damping (RFC 2439's figure of merit): each alive transition (down or up) adds 1 to
    # the link's merit, which halves every damp_half_life seconds. A link is suppressed
    # (held out of routing) once its merit reaches damp_suppress, and reused when it has
    # decayed to damp_reuse; a flap while held adds merit and so extends the hold. The
    # merit is capped so a hold ends at most damp_hold_max seconds after the last flap.
    damp_half_life: float = 10.0  # seconds
    damp_suppress: float = 3.0  # merit (alive transitions): two outages in a few seconds
    damp_reuse: float = 1.5  # merit (alive transitions)
    damp_hold_max: float = 30.0  # seconds after the last flap
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
    # -- verified repair: a dead neighbour is repaired only once end-to-end probes to
    # destinations that were routed through it were answered after the detection; a
    # route in the table is not traffic flowing. Each probe to a destination without an
    # end-to-end session costs a handshake, whose lost message waits out a retry timer.
    verify_sample: int = 2  # answered destinations a repair needs (fewer if fewer affected)
    # Destinations an incident probes in all: one more than it needs at first, and one
    # more every verify_interval while too few have answered, so one or two slow
    # handshakes cannot hold the verdict.
    verify_max: int = 4
    # Seconds from the detection to the first probes: the dead neighbour's other
    # neighbours notice it within about a hello interval of us, and until they do, the
    # answer's way back may still lead through it (a lost first-contact handshake
    # message then waits out the channel's retry timer, a quarter of a second).
    verify_delay: float = 0.1
    verify_interval: float = 0.15  # seconds before an unanswered probe is repeated...
    verify_interval_max: float = 1.0  # ...doubling up to this many seconds
    # -- execute
    rate_limit_per_second: float = 5.0  # token bucket per action kind
    rate_limit_burst: float = 10.0
    probe_rate_per_second: float = 10.0  # probes per second, all incidents of the node
    probe_burst: float = 10.0  # probes that may go at once (a few incidents' samples)
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
        if self.penalty_max < 2:
            raise ValueError("HealingConfig.penalty_max must be >= 2")
        if min(self.hello_interval, self.loss_window, self.loss_level_time) <= 0:
            raise ValueError("HealingConfig hello_interval, loss_window, loss_level_time > 0")
        if not 0 < self.loss_shift < 1 - self.degraded_loss_max:
            raise ValueError("HealingConfig needs 0 < loss_shift < 1 - degraded_loss_max")
        if not 0 < self.loss_evidence <= self.loss_evidence_max:
            raise ValueError("HealingConfig needs 0 < loss_evidence <= loss_evidence_max")
        if self.cost_dwell_backoff < 1:
            raise ValueError("HealingConfig.cost_dwell_backoff must be >= 1")
        if not self.cost_dwell <= self.cost_dwell_max <= self.cost_dwell_reset:
            raise ValueError("HealingConfig needs cost_dwell <= cost_dwell_max <= cost_dwell_reset")
        if min(self.damp_half_life, self.damp_hold_max) <= 0:
            raise ValueError("HealingConfig damp_half_life and damp_hold_max must be > 0")
        if not 0 < self.damp_reuse < self.damp_suppress:
            raise ValueError("HealingConfig needs 0 < damp_reuse < damp_suppress")
        if self.reconnect_jitter >= 1:
            raise ValueError("HealingConfig.reconnect_jitter must be < 1")
        if not isinstance(self.verify_sample, int) or self.verify_sample < 1:
            raise ValueError("HealingConfig.verify_sample must be an int >= 1")
        if not isinstance(self.verify_max, int) or self.verify_max < self.verify_sample:
            raise ValueError("HealingConfig needs an int verify_max >= verify_sample")
        if not 0 < self.verify_interval <= self.verify_interval_max:
            raise ValueError("HealingConfig needs 0 < verify_interval <= verify_interval_max")
        if self.probe_rate_per_second <= 0 or self.probe_burst < 1:
            raise ValueError("HealingConfig needs probe_rate_per_second > 0, probe_burst >= 1")


def _binomial_ll(lost: int, n: int) -> float:
    """Log-likelihood of ``lost`` of ``n`` hellos lost at their own rate (its maximum)."""
    if lost == 0 or lost == n:
        return 0.0
    p = lost / n
    return lost * math.log(p) + (n - lost) * math.log(1.0 - p)


def _rise(lost_at: list[int]) -> tuple[float, int]:
    """The most likely change point to a higher loss rate in a record (index 0 the
    newest hello; ``lost_at`` holds 1 per lost one): ``(gain in nats over no change,
    j)``, the hellos before ``j`` being the lossier; ``(0.0, 0)`` if there is none."""
    n = len(lost_at)
    total = sum(lost_at)
    base = _binomial_ll(total, n)
    best, best_j = 0.0, 0
    newer = 0
    for j in range(1, n):
        newer += lost_at[j - 1]
        older = total - newer
        if newer * (n - j) <= older * j:
            continue
        gain = _binomial_ll(newer, j) + _binomial_ll(older, n - j) - base
        if gain >= best:  # ties: the earlier change, so a time to detect is not flattered
            best, best_j = gain, j
    return best, best_j


def _fell_back(lost_at: list[int], j: int) -> float:
    """How much likelier (nats) the record is if the newest hellos of a rise at ``j``
    went back to the loss rate before it: a burst that passed, not a rise going on."""
    n = len(lost_at)
    before = sum(lost_at[j:])
    rise = sum(lost_at[:j])
    two = _binomial_ll(before, n - j) + _binomial_ll(rise, j)
    best = 0.0
    newest = 0
    for k in range(1, j):
        newest += lost_at[k - 1]
        calm, calm_n = before + newest, n - j + k  # the newest k back at the old rate
        mid = rise - newest
        if mid * calm_n <= calm * (j - k):
            continue
        best = max(best, _binomial_ll(calm, calm_n) + _binomial_ll(mid, j - k) - two)
    return best


def rise_start(bits: int, n: int, rise: float, fall: float) -> int | None:
    """How many of the newest hellos of a hello record (``bits``: newest in bit 0, 1 for
    heard; ``n`` of them) an ongoing rise in loss spans, or None if there is none.

    The most likely single change point from a lower loss rate to a higher one must gain
    ``rise`` nats of likelihood over no change at all, and the hellos after it must not
    have gone back to the rate before it (``fall`` nats likelier so): a burst of lost
    hellos that passed, followed by the link's usual few, is no rise going on now,
    though the stretch since the burst loses more than the link used to. (A link that
    fell silent for a while and came back as lossy as before it did has not gone back.)"""
    if n < 2:
        return None
    lost_at = [1 - ((bits >> i) & 1) for i in range(n)]
    gain, j = _rise(lost_at)
    if gain < rise or _fell_back(lost_at, j) >= fall:
        return None
    return j


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

    The first ``warmup`` samples use a cumulative mean (weight 1/n) so the baseline
    settles quickly, then ``alpha`` takes over (however small the caller makes it:
    it scales with the time between samples, and a 1/n phase that lasted until 1/n fell
    below it would learn a creeping degradation as fast as the first samples).
    """

    __slots__ = ("mean", "n", "var")

    def __init__(self) -> None:
        self.mean = 0.0
        self.var = 0.0
        self.n = 0

    def update(self, x: float, alpha: float, warmup: int) -> None:
        self.n += 1
        a = max(alpha, 1.0 / self.n) if self.n <= warmup else alpha
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
        # destinations (other than the peer) routed through the peer when last alive:
        # the traffic a dead neighbour's repair must get flowing again
        self.via_when_alive: frozenset[str] = frozenset()
        self.loss_base = EwmaBaseline()
        self.rtt_base = EwmaBaseline()
        self.rtt_score = 0.0
        # loss evidence: CUSUM of the log-likelihood ratio (nats), its verdict, and a
        # smoothed loss level (None until the first sample) for the severity
        self.loss_llr = 0.0
        self.loss_degraded = False
        self.loss_level: float | None = None
        self.loss_at: float | None = None  # when the evidence last took in hellos
        self.incident_at: float | None = None  # last incident about this link opened
        self.degrading_since: float | None = None
        self.pressure = 0.0  # of the latest sample; 0 while the link is dead
        self.severity = 0.0  # how far past its thresholds the link is (1.0 = at one)
        self.loss_threshold = config.degraded_loss
        self.rtt_threshold = config.degraded_rtt
        # healing state, written when actions are executed
        self.reconnect_attempts = 0
        self.reconnect_next_at: float | None = None
        self.penalty = 1.0
        self.cost_changed_at: float | None = None  # last executed cost change
        self.cost_lifted_at: float | None = None  # last executed lift
        self.cost_dwell = config.cost_dwell  # current minimum time between cost changes
        self.damped_until: float | None = None
        self.flap_merit = 0.0  # RFC 2439 figure of merit, as of merit_at
        self.merit_at = 0.0

    def merit(self, now: float, config: HealingConfig) -> float:
        """The flap merit decayed to ``now`` (halves every ``damp_half_life``)."""
        if self.flap_merit == 0.0:
            return 0.0
        decay: float = 2.0 ** (-(now - self.merit_at) / config.damp_half_life)
        return self.flap_merit * decay

    def add_merit(self, now: float, amount: float, config: HealingConfig) -> None:
        # The ceiling is the merit that decays to reuse in exactly damp_hold_max: no
        # hold lasts longer than that after the last flap, however long the link flapped.
        ceiling = config.damp_reuse * 2.0 ** (config.damp_hold_max / config.damp_half_life)
        self.flap_merit = min(ceiling, self.merit(now, config) + amount)
        self.merit_at = now

    def reuse_at(self, config: HealingConfig) -> float:
        """When the merit will have decayed to ``damp_reuse`` if the link flaps no more."""
        if self.flap_merit <= config.damp_reuse:
            return self.merit_at
        return self.merit_at + config.damp_half_life * math.log2(
            self.flap_merit / config.damp_reuse
        )

    def cost_change_due(self, now: float) -> bool:
        """May the link's cost change now (its dwell since the last change is over)?"""
        return self.cost_changed_at is None or now - self.cost_changed_at >= self.cost_dwell

    def damped_at(self, now: float) -> bool:
        return self.damped_until is not None and self.damped_until > now

    @property
    def anomaly(self) -> float:
        return self.rtt_score

    def adapt_thresholds(
        self, config: HealingConfig, rate: float, *, loss: bool, rtt: bool
    ) -> None:
        """Move the ``loss`` and/or ``rtt`` threshold toward this link's own baseline +
        margin, clamped; ``rate`` is the fraction of the gap closed now
        (``threshold_adapt_rate`` per cycle_interval).

        A link that is normally lossy gets a looser loss threshold (so it is not
        penalised forever) and a clean one a tighter threshold, never outside bounds.
        """
        if loss and self.loss_base.n >= config.baseline_min_samples:
            target = self.loss_base.mean + config.loss_margin
            self.loss_threshold = clamp(
                self.loss_threshold + rate * (target - self.loss_threshold),
                config.degraded_loss_min,
                config.degraded_loss_max,
            )
        if not rtt:
            return
        if self.rtt_base.n >= config.baseline_min_samples:
            target = self.rtt_base.mean * config.rtt_factor + config.rtt_margin
            self.rtt_threshold = clamp(
                self.rtt_threshold + rate * (target - self.rtt_threshold),
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
class Probe:
    """The probes an incident sent to one destination."""

    first_at: float  # an answer counts only if it arrived after this
    via: str | None  # the next hop of the last probe
    next_at: float  # when an unanswered probe may be repeated
    sent: int = 1


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
    sample: list[str] = field(default_factory=list)  # destinations probed, in order chosen
    sample_grown_at: float | None = None  # when the sample last took a destination
    probes: dict[str, Probe] = field(default_factory=dict)

    @property
    def key(self) -> IncidentKey:
        return (self.kind, self.subject)

    @property
    def judges_actions(self) -> bool:
        """Whether a failure of this incident speaks against its actions. Not for a dead
        neighbour that carried no transit traffic: nothing was cut off but the neighbour
        itself, and if it crashed only its return ends the incident, whatever we do."""
        return not (self.kind is FaultKind.DEAD_NEIGHBOUR and not self.destinations)

    def needed(self, config: HealingConfig) -> int:
        """Answered probes a dead neighbour's verified repair takes: one per destination
        routed through it, up to ``verify_sample``; at least one, so a neighbour that
        carried no transit traffic is verified through the neighbour itself (reachable
        around a cut link, never around a dead node)."""
        return min(config.verify_sample, max(1, len(self.destinations)))

    def answers(self, verified: Mapping[str, float]) -> list[tuple[float, str]]:
        """``(arrival time, destination)`` of answers to this incident's probes, in
        order (an answer to a probe sent before them would not match the node's latest
        nonce anyway)."""
        return sorted(
            (t, dst)
            for dst, p in self.probes.items()
            if (t := verified.get(dst)) is not None and t > p.first_at
        )


@dataclass(slots=True)
class RepairStats:
    """Outcomes of one (fault kind, action) pair and how fast the repairs were."""

    repaired: int = 0
    cleared: int = 0  # the fault went away by itself: neither a success nor a failure
    failed: int = 0
    superseded: int = 0
    mttr_total: float = 0.0  # seconds, fault start to verified repair, summed
    mttr_max: float = 0.0
    clear_total: float = 0.0  # seconds, fault start to clearing, summed

    @property
    def mean_mttr(self) -> float | None:
        return self.mttr_total / self.repaired if self.repaired else None

    @property
    def mean_time_to_clear(self) -> float | None:
        return self.clear_total / self.cleared if self.cleared else None

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
        if action.kind is ActionKind.VERIFY:
            self._probed(now, action)
            return
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
            self._cost_changed(now, lk, action)
        elif kind is ActionKind.DAMP:
            lk.damped_until = action.until
            if action.until is not None and action.until > lk.reuse_at(self.config):
                # Held longer than the merit alone asks (a route flap blamed on the
                # link): the merit becomes the one whose reuse time is the hold's end.
                lk.flap_merit = self.config.damp_reuse * 2.0 ** (
                    (action.until - now) / self.config.damp_half_life
                )
                lk.merit_at = now

    def _probed(self, now: float, action: PlannedAction) -> None:
        # A probe measures; it is no repair action of the incidents it serves.
        config = self.config
        for key in action.incidents:
            incident = self.incidents.get(key)
            if incident is None:
                continue
            probe = incident.probes.get(action.subject)
            if probe is None:
                incident.probes[action.subject] = Probe(
                    now, action.via, now + config.verify_interval
                )
                continue
            probe.sent += 1
            probe.via = action.via
            backoff = config.verify_interval * 2.0 ** (probe.sent - 1)
            probe.next_at = now + min(config.verify_interval_max, backoff)

    def _cost_changed(self, now: float, lk: LinkKnowledge, action: PlannedAction) -> None:
        config = self.config
        factor = action.factor if action.factor is not None else 1.0
        if lk.cost_changed_at is not None and now - lk.cost_changed_at >= config.cost_dwell_reset:
            lk.cost_dwell = config.cost_dwell  # the cost held still long enough: calm link
        if action.kind is ActionKind.LIFT_COST:
            lk.cost_lifted_at = now
        elif (
            lk.penalty == 1.0
            and lk.cost_lifted_at is not None
            and now - lk.cost_lifted_at < config.cost_dwell_reset
        ):
            # Penalised again soon after a lift: the link oscillates between good and
            # bad, so its cost is held longer each time.
            lk.cost_dwell = min(config.cost_dwell_max, lk.cost_dwell * config.cost_dwell_backoff)
        lk.penalty = factor
        lk.cost_changed_at = now

    def close(
        self,
        incident: Incident,
        outcome: Outcome,
        at: float,
        verified: tuple[str, ...] = (),
    ) -> HealingEvent:
        """Turn an open incident into a finished HealingEvent and learn from it.

        ``at`` is when the repair was measured (the answer that completed it) for
        ``repaired``, when the fault was seen gone for ``cleared``; ``verified`` are the
        destinations whose answers proved it."""
        del self.incidents[incident.key]
        event = HealingEvent(
            kind=str(incident.kind),
            subject=incident.subject,
            detected_at=incident.detected_at,
            actions=tuple(incident.actions),
            repaired_at=at if outcome is Outcome.REPAIRED else None,
            outcome=str(outcome),
            fault_started_at=incident.fault_started_at,
            cleared_at=at if outcome is Outcome.CLEARED else None,
            verified=verified,
        )
        self.events.append(event)
        stats = self.repair_stats.setdefault((event.kind, event.action), RepairStats())
        if outcome is Outcome.REPAIRED:
            stats.repaired += 1
            mttr = event.mttr or 0.0
            stats.mttr_total += mttr
            stats.mttr_max = max(stats.mttr_max, mttr)
        elif outcome is Outcome.CLEARED:
            stats.cleared += 1
            stats.clear_total += event.time_to_clear or 0.0
        elif outcome is Outcome.FAILED:
            stats.failed += 1
        else:
            stats.superseded += 1
        return event
