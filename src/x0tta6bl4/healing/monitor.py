"""Monitor: successive ``NodeObservation``s in, one feature :class:`Snapshot` out.

It keeps the time series in :class:`~x0tta6bl4.healing.knowledge.Knowledge` (RTT, loss,
jitter, alive transitions, cost changes, session resets, route next-hop changes) and
derives the features the Analyse phase thresholds: per link, sequential evidence that its
loss exceeds its threshold, an RTT anomaly score against the link's own baseline, a
decaying flap merit and transition counts within the flap window; which routes use which
link, and which once-reachable destinations are unreachable now.

Route bookkeeping is incremental (work in proportion to the routes that changed), since
a node in a 1,000-node simulation sees 1,000 routes every 0.1 s cycle.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

from x0tta6bl4.healing.events import RuntimeStats
from x0tta6bl4.healing.knowledge import (
    EwmaBaseline,
    HealingConfig,
    Knowledge,
    LinkKnowledge,
    LinkSample,
    RouteKnowledge,
    clamp,
    count_since,
)
from x0tta6bl4.mesh.observe import LinkObservation, NodeObservation, RouteObservation
from x0tta6bl4.routing.metric import INFINITY

_SESSION_AGE_SLACK = 1e-3  # seconds of float noise tolerated before "age went backwards"


@dataclass(frozen=True, slots=True)
class LinkFeatures:
    """One link in this cycle. Counts are within the flap window."""

    peer: str
    present: bool  # listed in this observation (a vanished live link reads as dead)
    alive: bool
    ever_alive: bool
    rtt: float | None
    loss: float
    jitter: float | None
    last_heard: float | None
    cost: int
    base_cost: int
    session_age: float | None
    handshake_failures: int
    damped_until: float | None
    settling: bool  # back from the dead within revive_grace: no degradation verdict yet
    alive_transitions: int
    cost_changes: int
    session_resets: int
    anomaly: float  # smoothed one-sided z-score of the RTT
    pressure: float  # progress toward a degraded verdict (1.0 = degraded, see monitor)
    severity: float  # how bad: max of loss level, RTT and anomaly over their thresholds
    loss_evidence: float  # nats of evidence that loss exceeds its threshold (CUSUM)
    hellos: tuple[int, int] | None  # the hello record (LinkObservation.hellos), if any
    flap_merit: float  # RFC 2439 figure of merit (decayed alive transitions)
    loss_threshold: float
    rtt_threshold: float
    degrading_since: float | None
    revived_at: float | None  # last dead -> alive transition
    routes_via: int  # routes to other destinations that use this link as next hop


@dataclass(frozen=True, slots=True)
class RouteFlap:
    """A destination whose next hop changed within the flap window."""

    changes: int
    hops: frozenset[str]  # next hops involved (old and new)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Features of one observation; what Analyse and Plan read."""

    seq: int  # observation number, from 1
    now: float
    wall_now: float
    name: str
    links: Mapping[str, LinkFeatures]
    routes: Mapping[str, RouteObservation]  # as observed
    reachable: frozenset[str]
    route_flaps: Mapping[str, RouteFlap]
    unreachable_since: Mapping[str, float]  # once-reachable destinations, unreachable now
    cert_not_after: float
    cert_validity: float | None  # configured, or learned from the first sight of the cert
    loop_lag: float | None
    memory_bytes: int | None
    counters: Mapping[str, int]
    # destination -> when the node last had an end-to-end probe to it answered
    verified: Mapping[str, float] = dataclasses.field(default_factory=dict)


def _finite(x: float | None) -> float | None:
    # A node should never report NaN or a negative RTT; if one does, the sample is
    # dropped rather than poisoning a baseline forever.
    if x is None or not math.isfinite(x) or x < 0:
        return None
    return float(x)


def _scored(
    base: EwmaBaseline, x: float, floor: float, score: float, alpha: float, config: HealingConfig
) -> float:
    """Update ``base`` with sample ``x`` at weight ``alpha``; return the new smoothed
    anomaly score."""
    if base.n >= config.baseline_min_samples:
        score += config.anomaly_alpha * (base.z(x, floor) - score)
    # While the link looks anomalous the baseline learns only slowly, so a creeping
    # degradation is not absorbed as the new normal (it still is, eventually).
    if score > config.baseline_gate:
        alpha *= config.baseline_slow_factor
    base.update(x, alpha, config.baseline_min_samples)
    return score


class Monitor:
    """Turns observations into snapshots; holds the previous observation for diffs."""

    def __init__(self, knowledge: Knowledge) -> None:
        self.knowledge = knowledge
        self.config = knowledge.config
        self.seq = 0
        self._prev_now: float | None = None
        self._prev_routes: Mapping[str, RouteObservation] = {}
        self._reachable: set[str] = set()
        self._reachable_frozen: frozenset[str] = frozenset()
        self._reachable_dirty = False  # rebuild the frozenset once per cycle, not per route
        self._via: dict[str, set[str]] = {}  # next hop -> destinations (other than itself)
        # frozen copies of _via entries, made when a live link's record asks for one and
        # dropped when the entry changes: copies in proportion to route changes only
        self._via_frozen: dict[str, frozenset[str]] = {}
        self._unreachable_since: dict[str, float] = {}

    # -- routes ------------------------------------------------------------------------

    def _route_changed(
        self, now: float, dst: str, prev: RouteObservation | None, cur: RouteObservation | None
    ) -> None:
        old = prev.next_hop if prev is not None else None
        new = cur.next_hop if cur is not None else None
        if prev is not None and cur is not None:
            # Counters going backwards means the node restarted: count the hop change only.
            n = cur.changes - prev.changes if cur.changes >= prev.changes else 0
            n = max(n, 1 if old != new else 0)
        else:
            n = 1 if prev is not None and old is not None else 0  # a vanished live route
        if n and (old is None or new is None):
            # Losing or regaining the destination is a partition's or a dead
            # neighbour's business; a flapping route switches between next hops. The
            # counter may also hold switches made between two observations: keep those.
            n -= 1
        if n:
            rk = self.knowledge.routes.get(dst)
            if rk is None:
                rk = self.knowledge.routes[dst] = RouteKnowledge(self.config)
            rk.changes.append((now, old, new, min(n, self.config.history_len)))
        if old == new:
            return
        if old is not None:
            self._reachable.discard(dst)
            if old != dst:
                via = self._via.get(old)
                if via is not None:
                    via.discard(dst)
                    self._via_frozen.pop(old, None)
                    if not via:
                        del self._via[old]
            if new is None:
                self._unreachable_since[dst] = now
        if new is not None:
            self._reachable.add(dst)
            self._unreachable_since.pop(dst, None)
            if new != dst:
                self._via.setdefault(new, set()).add(dst)
                self._via_frozen.pop(new, None)
        self._reachable_dirty = True

    def _via_of(self, hop: str) -> frozenset[str]:
        frozen = self._via_frozen.get(hop)
        if frozen is None:
            frozen = self._via_frozen[hop] = frozenset(self._via.get(hop, ()))
        return frozen

    def _update_routes(self, now: float, routes: Mapping[str, RouteObservation]) -> None:
        prev = self._prev_routes
        if routes is prev:
            return
        seen = 0
        for dst, cur in routes.items():
            p = prev.get(dst)
            if p is not None:
                seen += 1
                if p is cur or (p.next_hop == cur.next_hop and p.changes == cur.changes):
                    continue
            self._route_changed(now, dst, p, cur)
        if seen < len(prev):
            for dst in prev.keys() - routes.keys():
                self._route_changed(now, dst, prev[dst], None)
        self._prev_routes = routes
        if self._reachable_dirty:
            self._reachable_frozen = frozenset(self._reachable)
            self._reachable_dirty = False

    def _route_flaps(self, now: float) -> dict[str, RouteFlap]:
        since = now - self.config.flap_window
        flaps: dict[str, RouteFlap] = {}
        stale: list[str] = []
        for dst, rk in self.knowledge.routes.items():
            n = rk.changes_since(since)
            if n:
                flaps[dst] = RouteFlap(n, frozenset(rk.hops_since(since)))
            else:
                stale.append(dst)  # nothing within the window: no longer worth keeping
        for dst in stale:
            del self.knowledge.routes[dst]
        return flaps

    # -- links -------------------------------------------------------------------------

    def _update_link(
        self, lk: LinkKnowledge, lo: LinkObservation | None, now: float, elapsed: float
    ) -> None:
        config = self.config
        alive = lo is not None and bool(lo.alive)
        if lk.alive is not None and lk.alive != alive:
            if lk.ever_alive:  # a link's first coming up is no flap: nothing was lost
                lk.alive_changes.append(now)
                lk.add_merit(now, 1.0, config)  # a flap, down or up, for damping
            if alive:
                lk.revived_at = now
        lk.alive = alive
        if lo is None:
            _quiet(lk)
            return
        lk.last_seen = now
        lk.last_heard = _finite(lo.last_heard)
        lk.handshake_failures = max(0, lo.handshake_failures)
        if alive:
            lk.ever_alive = True
            lk.last_alive_at = now
            lk.via_when_alive = self._via_of(lk.peer)
            if lk.handshake_failures == 0:
                lk.reconnect_attempts = 0
                lk.reconnect_next_at = None
        if (
            lk.base_cost is not None
            and max(lk.base_cost, lo.base_cost) < INFINITY  # deaths count as such
            and _significant(lk.base_cost, lo.base_cost, config)
        ):
            # Count turns, not steps: a link recovering from an outage walks its cost
            # down in several steps, which is healing, not flapping; a flapping link's
            # cost keeps changing direction.
            trend = 1 if lo.base_cost > lk.base_cost else -1
            if trend != lk.cost_trend:
                lk.cost_changes.append(now)
                lk.cost_trend = trend
        lk.base_cost = lo.base_cost
        age = _finite(lo.session_age)
        if (
            lk.session_age is not None
            and age is not None
            and age + _SESSION_AGE_SLACK < lk.session_age + elapsed
            and age < lk.session_age  # a fresh session, not a long gap between cycles
        ):
            lk.session_resets.append(now)
        lk.session_age = age
        rtt = _finite(lo.rtt)
        raw_loss = _finite(lo.loss)
        loss = clamp(raw_loss, 0.0, 1.0) if raw_loss is not None else 1.0
        prev_t = lk.samples[-1].t if lk.samples else None
        lk.samples.append(LinkSample(now, alive, rtt, loss, _finite(lo.jitter)))
        if not alive or (lk.revived_at is not None and now - lk.revived_at < config.revive_grace):
            # A dead link is the dead-neighbour finding's business; it is judged again
            # once it is back and its history has caught up (anomaly score afresh,
            # baselines and loss evidence kept).
            _quiet(lk)
            return
        loss_pressure = _loss_evidence(lk, loss, now, config)
        # Baselines and thresholds learn per unit of time, not per observation: the loop
        # observes 20 times faster while an incident is open, and learning 20 times
        # faster would take a degradation for the new normal before the evidence is in.
        alpha, rate = config.baseline_alpha, config.threshold_adapt_rate
        if prev_t is not None and now - prev_t < config.cycle_interval:
            cycles = (now - prev_t) / config.cycle_interval
            alpha = 1.0 - (1.0 - alpha) ** cycles
            rate = 1.0 - (1.0 - rate) ** cycles
        loss_alpha = alpha
        if loss_pressure >= config.onset_ratio:
            loss_alpha *= config.baseline_slow_factor  # do not learn a degradation as normal
        lk.loss_base.update(loss, loss_alpha, config.baseline_min_samples)
        if rtt is not None:
            floor = max(config.rtt_sigma_floor, config.rtt_sigma_floor_ratio * lk.rtt_base.mean)
            lk.rtt_score = _scored(lk.rtt_base, rtt, floor, lk.rtt_score, alpha, config)
        anomaly = lk.rtt_score / config.anomaly_threshold
        rtt_ratio = rtt / lk.rtt_threshold if rtt is not None else 0.0
        lk.pressure = pressure = max(loss_pressure, rtt_ratio, anomaly)
        level = lk.loss_level if lk.loss_level is not None else loss
        lk.severity = max(level / lk.loss_threshold, rtt_ratio, anomaly)
        # Thresholds learn from healthy history only: a degrading link must not loosen
        # the very threshold that is about to catch it (nor evidence building up).
        lk.adapt_thresholds(
            config,
            rate,
            loss=loss_pressure < config.onset_ratio,
            rtt=max(rtt_ratio, anomaly) < 1.0 and lk.anomaly <= config.baseline_gate,
        )
        if pressure >= config.onset_ratio:
            if lk.degrading_since is None:
                lk.degrading_since = now
        else:
            lk.degrading_since = None

    def _features(self, lk: LinkKnowledge, lo: LinkObservation | None, now: float) -> LinkFeatures:
        since = now - self.config.flap_window
        last = lk.samples[-1] if lk.samples else None
        present = lo is not None
        return LinkFeatures(
            peer=lk.peer,
            present=present,
            alive=bool(lk.alive),
            ever_alive=lk.ever_alive,
            rtt=last.rtt if present and last is not None else None,
            loss=last.loss if present and last is not None else 1.0,
            jitter=last.jitter if present and last is not None else None,
            last_heard=lk.last_heard,
            cost=lo.cost if lo is not None else 0,
            base_cost=lo.base_cost if lo is not None else 0,
            session_age=lk.session_age if present else None,
            handshake_failures=lk.handshake_failures,
            damped_until=lo.damped_until if lo is not None else lk.damped_until,
            settling=bool(lk.alive)
            and lk.revived_at is not None
            and now - lk.revived_at < self.config.revive_grace,
            alive_transitions=count_since(lk.alive_changes, since),
            cost_changes=count_since(lk.cost_changes, since),
            session_resets=count_since(lk.session_resets, since),
            anomaly=lk.anomaly,
            pressure=lk.pressure,
            severity=lk.severity,
            loss_evidence=lk.loss_llr,
            hellos=lo.hellos if lo is not None else None,
            flap_merit=lk.merit(now, self.config),
            loss_threshold=lk.loss_threshold,
            rtt_threshold=lk.rtt_threshold,
            degrading_since=lk.degrading_since,
            revived_at=lk.revived_at,
            routes_via=len(self._via.get(lk.peer, ())),
        )

    def _update_links(self, obs: NodeObservation, elapsed: float) -> dict[str, LinkFeatures]:
        now = obs.now
        knowledge = self.knowledge
        features: dict[str, LinkFeatures] = {}
        for peer, lo in obs.links.items():
            lk = knowledge.link(peer)
            self._update_link(lk, lo, now, elapsed)
            features[peer] = self._features(lk, lo, now)
        gone: list[str] = []
        for peer, lk in knowledge.links.items():
            if peer in features:
                continue
            if now - lk.last_seen > self.config.forget_after:
                gone.append(peer)
                continue
            self._update_link(lk, None, now, elapsed)
            if lk.ever_alive:
                features[peer] = self._features(lk, None, now)
        for peer in gone:
            del knowledge.links[peer]
        if len(features) > len(knowledge.links):
            # More links than max_peers: the LRU already forgot some; so do we.
            features = {p: f for p, f in features.items() if p in knowledge.links}
        return features

    # -- the phase ---------------------------------------------------------------------

    def _update_cert(self, obs: NodeObservation) -> float | None:
        cert = self.knowledge.cert
        remaining = obs.cert_not_after - obs.wall_now
        if cert.not_after != obs.cert_not_after:
            # A new certificate: start its validity estimate and the renewal backoff over.
            cert.not_after = obs.cert_not_after
            cert.validity = remaining
            cert.renewal_attempts = 0
            cert.renewal_next_at = None
        elif cert.validity is None or remaining > cert.validity:
            cert.validity = remaining
        if self.config.cert_validity is not None:
            return self.config.cert_validity
        return cert.validity

    def update(self, obs: NodeObservation, stats: RuntimeStats | None = None) -> Snapshot:
        """Fold one observation into the history and return its features."""
        now = obs.now
        self.seq += 1
        if self.knowledge.first_seen is None:
            self.knowledge.first_seen = now
        elapsed = now - self._prev_now if self._prev_now is not None else 0.0
        self._prev_now = now
        self._update_routes(now, obs.routes)
        memory = self.config.partition_memory
        for dst in [d for d, t in self._unreachable_since.items() if now - t > memory]:
            del self._unreachable_since[dst]
        links = self._update_links(obs, elapsed)
        validity = self._update_cert(obs)
        lag = memory_bytes = None
        if stats is not None:
            lag = _finite(stats.loop_lag)
            if lag is not None:
                self.knowledge.loop_lag.append((now, lag))
            if stats.memory_bytes is not None and stats.memory_bytes >= 0:
                memory_bytes = stats.memory_bytes
                self.knowledge.memory.append((now, memory_bytes))
        return Snapshot(
            seq=self.seq,
            now=now,
            wall_now=obs.wall_now,
            name=obs.name,
            links=links,
            routes=obs.routes,
            reachable=self._reachable_frozen,
            route_flaps=self._route_flaps(now),
            unreachable_since=dict(self._unreachable_since),
            cert_not_after=obs.cert_not_after,
            cert_validity=validity,
            loop_lag=lag,
            memory_bytes=memory_bytes,
            counters=obs.counters,
            verified=obs.verified,
        )


def _quiet(lk: LinkKnowledge) -> None:
    """No verdict on a dead, vanished or settling link. Its loss evidence is frozen, not
    dropped: a gray link that keeps dying for a moment would otherwise never gather
    enough, and a link back from the dead must prove itself anyway. The hellos of the
    gap are not counted (the first report after it stands for one window)."""
    lk.rtt_score = lk.pressure = lk.severity = 0.0
    lk.loss_at = None
    lk.degrading_since = None


def _llr(lost: float, hellos: float, p1: float, p0: float) -> float:
    """Log-likelihood ratio (nats) of ``lost`` of ``hellos`` hellos lost at rate ``p1``
    against rate ``p0``."""
    return lost * math.log(p1 / p0) + (hellos - lost) * math.log((1.0 - p1) / (1.0 - p0))


def _loss_evidence(lk: LinkKnowledge, loss: float, now: float, config: HealingConfig) -> float:
    """Fold one loss report into the link's evidence; return the loss pressure.

    The node reports loss over its last ``loss_window`` hellos. The hellos sent since the
    previous report are taken to have been lost at that rate, and Page's CUSUM sums their
    log-likelihood ratio of "loss = p0 + loss_shift" against "loss = p0" (p0: the
    link's threshold), floored at 0 so a long good history cannot delay a detection,
    capped so it cannot delay a recovery. Degraded from ``loss_evidence`` nats until the
    sum is back at 0: a link between p0 and p0 + shift keeps its verdict (hysteresis).
    Every lost hello adds ln(p1/p0) (~1 nat at p0 = 0.12), every heard one takes away
    ln((1-p0)/(1-p1)) (~0.26 nat): at 2 % loss the sum drifts down, at 40 % it climbs
    ~0.24 nat per hello and crosses the default 4.6 nats within ~2 s of hellos.
    """
    window = config.loss_window
    if lk.loss_at is None:
        hellos = float(window)  # the whole window is new
    else:
        hellos = min(float(window), (now - lk.loss_at) / config.hello_interval)
    lk.loss_at = now
    if lk.loss_level is None:
        lk.loss_level = loss
    else:
        a = 1.0 - math.exp(-hellos * config.hello_interval / config.loss_level_time)
        lk.loss_level += a * (loss - lk.loss_level)
    p0 = lk.loss_threshold
    p1 = p0 + config.loss_shift
    llr = _llr(loss * hellos, hellos, p1, p0)
    evidence = clamp(lk.loss_llr + llr, 0.0, config.loss_evidence_max)
    lk.loss_llr = evidence
    if evidence >= config.loss_evidence:
        lk.loss_degraded = True
    elif evidence <= 0.0:
        lk.loss_degraded = False
    pressure = evidence / config.loss_evidence
    return max(1.0, pressure) if lk.loss_degraded else pressure


def _significant(old: int, new: int, config: HealingConfig) -> bool:
    # The link estimator's cost moves a little with every hello; only a real step (or
    # going to / coming back from infinity) says the link is unstable.
    return abs(new - old) >= config.cost_change_ratio * max(1, min(old, new))
