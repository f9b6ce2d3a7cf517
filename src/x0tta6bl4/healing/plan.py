"""Plan: findings and open incidents in, the node calls to make out.

Three kinds of rule:

* one-shot, per incident: a dead neighbour is dropped (``reroute``) once; a new
  partition retries every dead neighbour's handshake once;
* reconciliation toward a desired state, every cycle: a dead or handshake-failing
  neighbour is reconnected on an exponential backoff with jitter; a degraded link's cost
  factor follows its severity up and is lifted when it recovers, at most once per link
  per dwell time (which grows while the link keeps oscillating); a flapping link is held
  down until its figure of merit has decayed (route-flap damping, RFC 2439), extended
  by every flap while held; a certificate near expiry asks for renewal, on a backoff;
* measurement, every cycle: an open dead-neighbour incident probes a few of the
  destinations that were routed through the neighbour, end to end (``verify``), until
  enough have answered, so its repair is measured rather than read off the routing
  table. A destination is probed once it has a route, again at once when its route
  changes, and otherwise after a doubling delay. One destination more than needed is
  probed, and one more every ``verify_interval`` while too few have answered (up to
  ``verify_max``), so a slow first-contact handshake (a lost message waits out the
  channel's retry timer) cannot hold the verdict.
  Probes are deduplicated across incidents and rate limited by Execute.

An action is recorded in Knowledge only once Execute has run it, so one that was rate
limited or refused by a circuit breaker is planned again next cycle.
"""

from __future__ import annotations

import heapq
import math
import random

from x0tta6bl4.healing.events import ActionKind, FaultKind, Finding, IncidentKey, PlannedAction
from x0tta6bl4.healing.knowledge import HealingConfig, Incident, Knowledge, LinkKnowledge, clamp
from x0tta6bl4.healing.monitor import Snapshot


def reconnect_delay(attempt: int, config: HealingConfig, rng: random.Random) -> float:
    """Delay after the ``attempt``-th reconnect (from 1): doubling, capped, jittered."""
    delay = min(config.reconnect_max, config.reconnect_base * 2.0 ** max(0, attempt - 1))
    # Jitter keeps the neighbours of a crashed node from retrying in lockstep.
    return delay * (1.0 + rng.uniform(-config.reconnect_jitter, config.reconnect_jitter))


def renewal_delay(attempt: int, config: HealingConfig) -> float:
    return min(config.renewal_retry_max, config.renewal_retry * 2.0 ** max(0, attempt - 1))


def penalty_factor(severity: float, config: HealingConfig) -> float:
    """Cost factor for a degraded link: 2 at the threshold, doubling per unit of severity.

    Powers of two, so a severity that wobbles does not re-issue a penalty every cycle.
    """
    top = max(1, math.floor(math.log2(config.penalty_max)))
    exponent = clamp(math.floor(severity) if math.isfinite(severity) else top, 1, top)
    return 2.0 ** int(exponent)


def damp_hold(merit: float, config: HealingConfig) -> float:
    """Hold-down for a link with this flap merit: until it decays to ``damp_reuse``."""
    if merit <= config.damp_reuse:
        return 0.0
    hold = config.damp_half_life * math.log2(merit / config.damp_reuse)
    return min(config.damp_hold_max, hold)


_EXTEND_SLACK = 1e-6  # seconds: float noise is not a flap


def _dead_peers(snap: Snapshot) -> list[str]:
    return sorted(peer for peer, lf in snap.links.items() if not lf.alive)


def plan(
    snap: Snapshot, findings: list[Finding], knowledge: Knowledge, rng: random.Random
) -> list[PlannedAction]:
    """The actions for this cycle, in a fixed order (kind, then subject)."""
    config = knowledge.config
    now = snap.now
    current = {f.key: f for f in findings}
    actions: list[PlannedAction] = []

    # reroute: once per dead-neighbour incident, while the neighbour is still dead
    for incident in knowledge.incidents.values():
        if incident.kind is not FaultKind.DEAD_NEIGHBOUR:
            continue
        peer = incident.subject
        lf = snap.links.get(peer)
        if lf is not None and not lf.alive and (ActionKind.REROUTE, peer) not in incident.done:
            actions.append(
                PlannedAction(
                    ActionKind.REROUTE, peer, FaultKind.DEAD_NEIGHBOUR, incidents=(incident.key,)
                )
            )

    # rehandshake: backoff-paced for dead / failing neighbours; a new partition kicks
    # every dead neighbour once regardless of its backoff
    credit: dict[str, list[IncidentKey]] = {}
    reasons: dict[str, FaultKind] = {}
    for finding in findings:
        if finding.kind not in (FaultKind.DEAD_NEIGHBOUR, FaultKind.HANDSHAKE_FAILING):
            continue
        lk = knowledge.links[finding.subject]
        if lk.reconnect_next_at is None or now >= lk.reconnect_next_at:
            credit[finding.subject] = [finding.key] if finding.key in knowledge.incidents else []
            reasons[finding.subject] = finding.kind
    partition = knowledge.incidents.get((FaultKind.PARTITION, snap.name))
    if partition is not None:
        for peer in _dead_peers(snap):
            if (ActionKind.REHANDSHAKE, peer) not in partition.done:
                credit.setdefault(peer, []).append(partition.key)
                reasons.setdefault(peer, FaultKind.PARTITION)
    for peer in sorted(credit):
        lk = knowledge.link(peer)
        actions.append(
            PlannedAction(
                ActionKind.REHANDSHAKE,
                peer,
                reasons[peer],
                incidents=tuple(credit[peer]),
                retry_at=now + reconnect_delay(lk.reconnect_attempts + 1, config, rng),
            )
        )

    # link cost: follow severity upward while degraded; lift once recovered and alive;
    # never more than one change per link per dwell (an oscillating link waits longer)
    # damping: hold a flapping link down until its merit has decayed to the reuse level;
    # a flap while held adds merit, so the hold is extended rather than left to expire
    flapping = {f.subject: f for f in findings if f.kind is FaultKind.FLAPPING_LINK}
    damps: list[PlannedAction] = []
    for peer in sorted(knowledge.links):
        lk = knowledge.links[peer]
        if lk.penalty != 1.0 or (FaultKind.DEGRADED_LINK, peer) in current:
            cost = _cost_action(snap, current, knowledge, lk, now)
            if cost is not None:
                actions.append(cost)
        flap = flapping.get(peer)
        if flap is not None or lk.damped_until is not None:
            damp = _damp_action(snap, flap, knowledge, lk, now)
            if damp is not None:
                damps.append(damp)
    actions.extend(damps)

    # certificate: ask once, then again only after a growing retry interval
    cert_finding = current.get((FaultKind.CERT_NEAR_EXPIRY, snap.name))
    cert = knowledge.cert
    if cert_finding is not None and (cert.renewal_next_at is None or now >= cert.renewal_next_at):
        key = cert_finding.key
        actions.append(
            PlannedAction(
                ActionKind.REQUEST_RENEWAL,
                snap.name,
                FaultKind.CERT_NEAR_EXPIRY,
                incidents=(key,) if key in knowledge.incidents else (),
                retry_at=now + renewal_delay(cert.renewal_attempts + 1, config),
            )
        )
    actions.extend(_probes(snap, knowledge))
    return actions


def _route_hop(snap: Snapshot, dst: str, avoid: str | None) -> str | None:
    """The next hop toward ``dst`` if a probe could take it now (not via ``avoid``)."""
    route = snap.routes.get(dst)
    hop = route.next_hop if route is not None else None
    return None if hop is None or hop == avoid else hop


def _fill_sample(incident: Incident, snap: Snapshot, config: HealingConfig) -> None:
    """Choose a dead neighbour's probe destinations, once each: routable ones only (a
    probe without a route is dropped at once, and a first one starts a handshake that
    would then wait out its retry timer); those probed before first (their end-to-end
    session exists, so a probe costs a few hundred bytes rather than a handshake), then
    the nearest (fewer hops, fewer bytes). The neighbour's own name comes last: only
    when it carried little transit traffic is reaching it around the dead link the
    proof (it is, around a cut link; never around a dead node)."""
    now = snap.now
    want = incident.needed(config) + 1
    grown = incident.sample_grown_at
    if grown is not None and len(incident.sample) >= want:
        # Stalled: one more destination per interval, up to the bound.
        want = len(incident.sample) + (1 if now - grown >= config.verify_interval else 0)
    want = min(want, config.verify_max, len(incident.destinations) + 1)
    if len(incident.sample) >= want:
        return
    dead = incident.subject
    chosen = set(incident.sample)
    ranked: list[tuple[int, int, int, str]] = []
    for dst in incident.destinations:
        if dst in chosen or _route_hop(snap, dst, dead) is None:
            continue
        route = snap.routes[dst]
        ranked.append((0, 0 if dst in snap.verified else 1, route.metric, dst))
    if dead not in chosen and _route_hop(snap, dead, dead) is not None:
        ranked.append((1, 0, 0, dead))
    picked = heapq.nsmallest(want - len(incident.sample), ranked)
    if picked:
        incident.sample.extend(dst for *_, dst in picked)
        incident.sample_grown_at = now


def _probes(snap: Snapshot, knowledge: Knowledge) -> list[PlannedAction]:
    config = knowledge.config
    now = snap.now
    due: dict[str, list[IncidentKey]] = {}
    hops: dict[str, str] = {}
    for key in sorted(knowledge.incidents):
        incident = knowledge.incidents[key]
        if incident.kind is not FaultKind.DEAD_NEIGHBOUR:
            continue
        dead = incident.subject
        lf = snap.links.get(dead)
        if lf is not None and lf.alive:
            continue  # back: the incident clears without a measurement
        if len(incident.answers(snap.verified)) >= incident.needed(config):
            continue  # measured; closes when every destination is routed again
        if now < incident.detected_at + config.verify_delay:
            continue  # the way back may still lead through it
        _fill_sample(incident, snap, config)
        for dst in incident.sample:
            hop = _route_hop(snap, dst, dead)
            if hop is None:
                continue
            probe = incident.probes.get(dst)
            if probe is not None:
                answered = snap.verified.get(dst)
                if answered is not None and answered > probe.first_at:
                    continue
                # An unanswered probe is repeated after its delay, or at once when the
                # route moved (a new path is a new chance, the old one may be a black
                # hole); a repeat replaces the node's nonce, so not faster than that.
                if now < probe.next_at and hop == probe.via:
                    continue
            due.setdefault(dst, []).append(key)
            hops[dst] = hop
    return [
        PlannedAction(
            ActionKind.VERIFY,
            dst,
            FaultKind.DEAD_NEIGHBOUR,  # the only incidents that probe
            incidents=tuple(due[dst]),
            via=hops[dst],
        )
        for dst in sorted(due)
    ]


def _recovered(snap: Snapshot, peer: str) -> bool:
    # Only a link that is up and past its revive grace has shown it recovered.
    lf = snap.links.get(peer)
    return lf is not None and lf.present and lf.alive and not lf.settling


def _damped(snap: Snapshot, lk: LinkKnowledge, now: float) -> bool:
    lf = snap.links.get(lk.peer)
    node_says = lf is not None and lf.damped_until is not None and lf.damped_until > now
    return node_says or lk.damped_at(now)


def _cost_action(
    snap: Snapshot,
    current: dict[IncidentKey, Finding],
    knowledge: Knowledge,
    lk: LinkKnowledge,
    now: float,
) -> PlannedAction | None:
    if not lk.cost_change_due(now):
        return None
    peer = lk.peer
    degraded = current.get((FaultKind.DEGRADED_LINK, peer))
    if degraded is not None:
        factor = penalty_factor(degraded.severity, knowledge.config)
        if factor <= lk.penalty:
            return None
        key = degraded.key
        return PlannedAction(
            ActionKind.RAISE_COST,
            peer,
            FaultKind.DEGRADED_LINK,
            incidents=(key,) if key in knowledge.incidents else (),
            factor=factor,
        )
    lf = snap.links.get(peer)
    calm = lf is not None and lf.pressure < knowledge.config.onset_ratio
    if calm and _recovered(snap, peer) and not _damped(snap, lk, now):
        # Not while evidence of a new degradation is building up; and a held-down link
        # is not judged at all, so it has not shown recovery.
        return PlannedAction(ActionKind.LIFT_COST, peer, FaultKind.DEGRADED_LINK, factor=1.0)
    return None


def _damp_action(
    snap: Snapshot,
    finding: Finding | None,
    knowledge: Knowledge,
    lk: LinkKnowledge,
    now: float,
) -> PlannedAction | None:
    config = knowledge.config
    held = lk.damped_until
    if held is not None and held > now:
        # Held by us: extend the hold to the merit's new reuse time if it flapped since.
        until = lk.reuse_at(config)
        if until <= held + _EXTEND_SLACK:
            return None
    elif finding is None or _damped(snap, lk, now):
        return None
    else:
        # A route flap blamed on this link may come with little merit of its own: it is
        # held as if it had just reached the cut-off.
        until = now + damp_hold(max(lk.merit(now, config), config.damp_suppress), config)
    key = (FaultKind.FLAPPING_LINK, lk.peer)
    return PlannedAction(
        ActionKind.DAMP,
        lk.peer,
        FaultKind.FLAPPING_LINK,
        incidents=(key,) if key in knowledge.incidents else (),
        until=until,
    )
