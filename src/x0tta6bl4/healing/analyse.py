"""Analyse: which fault conditions hold now, and the incident lifecycle.

:func:`analyse` turns a :class:`~x0tta6bl4.healing.monitor.Snapshot` into level
:class:`~x0tta6bl4.healing.events.Finding`s (a condition that holds in this observation).
:func:`track_incidents` opens an incident on a condition's rising edge, and closes it
when its repair condition is *measured* in a later observation (``repaired``), when the
fault is seen gone by itself (``cleared``), when a broader incident supersedes it, or
when it times out (``failed``).

A dead neighbour is repaired when traffic that went through it verifiably flows again:
end-to-end probes (Plan's ``verify``) to a sample of the destinations routed through it
were answered after the detection, while it is still dead. A route in the table is not
enough: other neighbours' stale routes survive its death, and across a partition they
survive until those neighbours notice too. Heard again first, it is ``cleared``.

A partition only ever clears: by the time one is declared, routing has had
``partition_grace`` to route around the loss and could not, so its end is the network's
doing (a healed cut, a restarted node), never a repair. It clears when every lost
destination has a route again. It is not probed: a partition ends for every node on its
side at once, and a probe from each (a first-contact handshake each) toward whatever
came back would be a storm; stale routes are no worry here, since the lost destinations
were unrouted for the whole grace.
"""

from __future__ import annotations

from collections import deque

from x0tta6bl4.healing.events import FaultKind, Finding, HealingEvent, IncidentKey, Outcome
from x0tta6bl4.healing.knowledge import (
    HealingConfig,
    Incident,
    Knowledge,
    LinkKnowledge,
    rise_start,
)
from x0tta6bl4.healing.monitor import LinkFeatures, Snapshot
from x0tta6bl4.routing.linkquality import RECORD_LEN

_LINK_KINDS = frozenset(
    {
        FaultKind.DEAD_NEIGHBOUR,
        FaultKind.DEGRADED_LINK,
        FaultKind.FLAPPING_LINK,
        FaultKind.HANDSHAKE_FAILING,
    }
)
"""Faults whose subject is a neighbour link."""


def _first_since(stamps: deque[float], since: float) -> float | None:
    """The earliest timestamp at or after ``since`` (stamps are in time order)."""
    first = None
    for t in reversed(stamps):
        if t < since:
            break
        first = t
    return first


def _flapping(snap: Snapshot, knowledge: Knowledge) -> dict[str, Finding]:
    config = knowledge.config
    since = snap.now - config.flap_window
    found: dict[str, Finding] = {}
    for peer, lf in snap.links.items():
        # RFC 2439: suppressed from the cut-off, and still flapping while held down
        # until the merit has decayed to the reuse level (the hold-down's end).
        merit = lf.flap_merit
        if merit < config.damp_reuse:
            continue
        lk = knowledge.links[peer]
        if merit >= config.damp_suppress or lk.damped_at(snap.now):
            found[peer] = Finding(
                FaultKind.FLAPPING_LINK,
                peer,
                severity=merit / config.damp_suppress,
                fault_started_at=_first_since(lk.alive_changes, since),
            )
    for dst, flap in snap.route_flaps.items():
        if flap.changes < config.route_flap_threshold:
            continue
        # Blame the next hop whose own link is the unstable one (alive transitions and
        # cost changes); a route flapping for reasons far away has no local culprit, and
        # damping a healthy local link would not help it.
        best: tuple[int, str] | None = None
        for hop in flap.hops:
            hop_link = snap.links.get(hop)
            if hop_link is None:
                continue
            score = hop_link.alive_transitions + hop_link.cost_changes
            # One clean outage (down, up and the two cost jumps with them) is not
            # flapping: damping the links that just healed a partition would cut it again.
            if score >= config.route_flap_min_link_score and (best is None or (score, hop) > best):
                best = (score, hop)
        if best is None:
            continue
        culprit = best[1]
        severity = flap.changes / config.route_flap_threshold
        prev = found.get(culprit)
        if prev is None or prev.severity < severity:
            rk = knowledge.routes[dst]
            started = next((t for t, *_ in rk.changes if t >= since), None)
            found[culprit] = Finding(
                FaultKind.FLAPPING_LINK, culprit, severity=severity, fault_started_at=started
            )
    return found


def _dead(lf: LinkFeatures) -> bool:
    return lf.ever_alive and not lf.alive


def _earliest(*times: float | None) -> float | None:
    known = [t for t in times if t is not None]
    return min(known) if known else None


def _loss_rise(
    lf: LinkFeatures, now: float, config: HealingConfig, *, before_silence: bool
) -> float | None:
    """When the link's ongoing loss rise began, from its hello record (the silence since
    the last hello heard left out if ``before_silence``); None without a record."""
    if lf.hellos is None or lf.last_heard is None:
        return None
    bits, n = lf.hellos
    interval = config.hello_interval
    overdue = 0
    if not before_silence:
        # the hellos due since the last one heard count as lost (half an interval of
        # slack for the sender's jitter), as in the link's reported loss
        overdue = min(RECORD_LEN, max(0, int((now - lf.last_heard) / interval - 0.5)))
        bits, n = bits << overdue, n + overdue
    j = rise_start(bits, n, config.rise_evidence, config.rise_fall_evidence)
    if j is None:
        return None
    # bit i is the hello due (i - overdue) intervals before the last one heard
    return lf.last_heard - (j - 1 - overdue) * interval


def _death_started(
    lf: LinkFeatures, lk: LinkKnowledge, now: float, config: HealingConfig
) -> float | None:
    """When a dead neighbour's fault began: when it fell silent, not when we noticed;
    or, if its loss had been rising markedly since it last came up, unnoticed, when that
    began (a link dying by degrees fails users before its last hello). A rise that some
    incident already caught was detected then; the death is a fault of its own."""
    started = lf.last_heard if lf.last_heard is not None else lk.last_alive_at
    onset = _loss_rise(lf, now, config, before_silence=True)
    if (
        onset is not None
        and (lf.revived_at is None or onset >= lf.revived_at)
        and (lk.incident_at is None or lk.incident_at < onset)
    ):
        return onset if started is None else min(started, onset)
    return started


def analyse(snap: Snapshot, knowledge: Knowledge) -> list[Finding]:
    """The fault conditions that hold in this snapshot, in a deterministic order."""
    config = knowledge.config
    active = knowledge.active
    now = snap.now
    # When our own event loop runs late, silence and RTT growth may be ours, not the
    # neighbour's: no new dead/degraded blame then (conditions already raised persist).
    blame = snap.loop_lag is None or snap.loop_lag <= config.max_loop_lag
    findings: list[Finding] = []

    for peer, lf in snap.links.items():
        lk = knowledge.links[peer]
        # A link we hold down is out of routing on purpose: its deaths and losses are
        # not faults to repair until the hold-down ends (flapping stays tracked).
        held = lk.damped_at(now) or (lf.damped_until is not None and lf.damped_until > now)
        dead_key = (FaultKind.DEAD_NEIGHBOUR, peer)
        if held:
            pass  # neither dead nor failing handshakes count while held down
        elif _dead(lf) and (blame or dead_key in active):
            findings.append(
                Finding(
                    FaultKind.DEAD_NEIGHBOUR,
                    peer,
                    fault_started_at=_death_started(lf, lk, now, config),
                    destinations=lk.via_when_alive - {peer},
                )
            )
        elif not lf.alive and lf.handshake_failures >= config.handshake_fail_threshold:
            # A link that never came up (or is up on an old session: it works). Not
            # while the peer is dead: failing reconnects are part of that incident.
            findings.append(
                Finding(
                    FaultKind.HANDSHAKE_FAILING,
                    peer,
                    severity=lf.handshake_failures / config.handshake_fail_threshold,
                )
            )
        # A link just back from the dead gets no verdict until its history caught up
        # (its degraded condition, if any, was cleared when it died).
        if lf.present and lf.alive and not held and not lf.settling:
            degraded_key = (FaultKind.DEGRADED_LINK, peer)
            entering = blame and lf.pressure >= 1.0
            staying = degraded_key in active and lf.pressure >= config.recover_ratio
            if entering or staying:
                findings.append(
                    Finding(
                        FaultKind.DEGRADED_LINK,
                        peer,
                        # pressure decides (loss only on enough evidence), severity says
                        # how bad (the smoothed loss level, RTT) and sizes the penalty
                        severity=max(1.0, lf.severity),
                        fault_started_at=_earliest(
                            lf.degrading_since,
                            _loss_rise(lf, now, config, before_silence=False),
                        ),
                    )
                )

    findings.extend(sorted(_flapping(snap, knowledge).values(), key=lambda f: f.subject))

    lost: dict[str, float] = {}
    for dst, since in snap.unreachable_since.items():
        if now - since < config.partition_grace:
            continue  # routing may still be converging
        neighbour = snap.links.get(dst)
        if neighbour is not None and _dead(neighbour):
            continue  # a dead neighbour is its own incident
        lost[dst] = since
    if lost:
        findings.append(
            Finding(
                FaultKind.PARTITION,
                snap.name,
                severity=float(len(lost)),
                fault_started_at=min(lost.values()),
                destinations=frozenset(lost),
            )
        )

    remaining = snap.cert_not_after - snap.wall_now
    window = config.cert_renew_fraction * snap.cert_validity if snap.cert_validity else 0.0
    if remaining <= window:
        # The threshold crossing in wall-clock time, moved onto the monotonic clock;
        # not before we started watching, or mttd would count time we were not running.
        started = now - (snap.wall_now - (snap.cert_not_after - window))
        if knowledge.first_seen is not None:
            started = max(started, knowledge.first_seen)
        findings.append(
            Finding(
                FaultKind.CERT_NEAR_EXPIRY,
                snap.name,
                severity=2.0 - remaining / window if window > 0 else 2.0,
                fault_started_at=started,
            )
        )
    return findings


# --- incidents --------------------------------------------------------------------------


Verdict = tuple[Outcome, float, tuple[str, ...]]
"""How an incident ends now: outcome, when (the answer that proved a repair, or the
observation), and the destinations whose answers proved it."""


def _verified(
    incident: Incident, snap: Snapshot, config: HealingConfig
) -> tuple[float, tuple[str, ...]] | None:
    """When traffic through a dead neighbour was verified flowing again: every
    destination routed around it, and enough answered a probe sent after the detection
    (the answer that made it enough is the time)."""
    if not incident.destinations <= snap.reachable:
        return None
    answers = incident.answers(snap.verified)
    need = incident.needed(config)
    if len(answers) < need:
        return None
    return answers[need - 1][0], tuple(dst for _, dst in answers)


def _verdict(
    incident: Incident,
    snap: Snapshot,
    current: dict[IncidentKey, Finding],
    config: HealingConfig,
) -> Verdict | None:
    kind = incident.kind
    now = snap.now
    lf = snap.links.get(incident.subject)
    if kind is FaultKind.DEAD_NEIGHBOUR:
        if lf is not None and lf.alive:
            return Outcome.CLEARED, now, ()  # heard again before a repair was verified
        done = _verified(incident, snap, config)
        return None if done is None else (Outcome.REPAIRED, *done)
    if kind is FaultKind.PARTITION:
        back = incident.destinations <= snap.reachable
        return (Outcome.CLEARED, now, ()) if back else None
    if kind is FaultKind.DEGRADED_LINK:
        if lf is None or lf.routes_via == 0:
            return Outcome.REPAIRED, now, ()  # no transit traffic uses it any more
        if incident.key not in current:
            # Recovered (hysteresis applied by analyse) while still carrying traffic:
            # a raised cost does not lower a link's loss, the fault went away.
            return Outcome.CLEARED, now, ()
        return None
    if kind is FaultKind.FLAPPING_LINK:
        calm = all(
            flap.changes < config.route_flap_threshold
            for flap in snap.route_flaps.values()
            if incident.subject in flap.hops
        )
        if not calm:
            return None
        # Held down by us, or calm on its own.
        return (Outcome.REPAIRED if incident.actions else Outcome.CLEARED), now, ()
    if kind is FaultKind.HANDSHAKE_FAILING:
        ok = lf is not None and (lf.alive or lf.handshake_failures == 0)
        return (Outcome.REPAIRED, now, ()) if ok else None
    return (Outcome.REPAIRED, now, ()) if incident.key not in current else None  # renewed


def track_incidents(
    snap: Snapshot, findings: list[Finding], knowledge: Knowledge
) -> list[HealingEvent]:
    """Update open incidents from this cycle's findings; return the ones that closed."""
    config = knowledge.config
    now = snap.now
    current = {f.key: f for f in findings}
    closed: list[HealingEvent] = []

    for incident in list(knowledge.incidents.values()):
        if incident.detected_seq >= snap.seq:
            continue  # a repair must be seen in an observation after the detection
        if incident.kind is FaultKind.DEGRADED_LINK and (
            (FaultKind.DEAD_NEIGHBOUR, incident.subject) in current
        ):
            # Not "recovered": the link died, and that is now the dead neighbour's incident.
            closed.append(knowledge.close(incident, Outcome.SUPERSEDED, now))
            continue
        verdict = _verdict(incident, snap, current, config)
        if verdict is not None:
            closed.append(knowledge.close(incident, *verdict))
            continue
        timeout = (
            config.renewal_timeout
            if incident.kind is FaultKind.CERT_NEAR_EXPIRY
            else config.incident_timeout
        )
        if now - incident.detected_at >= timeout:
            closed.append(knowledge.close(incident, Outcome.FAILED, now))

    for key, finding in current.items():
        open_incident = knowledge.incidents.get(key)
        if open_incident is not None:
            open_incident.severity = finding.severity
            if finding.kind is FaultKind.PARTITION:
                open_incident.destinations |= finding.destinations
            continue
        previous = knowledge.active.get(key)
        destinations = finding.destinations
        if previous is not None:
            # A condition that persists is the same fault (its incident may have closed
            # already); only a partition that loses further destinations is a new one.
            if finding.kind is not FaultKind.PARTITION:
                continue
            destinations = destinations - previous.destinations
            if not destinations:
                continue
        if finding.kind in _LINK_KINDS and (lk := knowledge.links.get(finding.subject)):
            lk.incident_at = now
        knowledge.incidents[key] = Incident(
            kind=finding.kind,
            subject=finding.subject,
            detected_at=now,
            detected_seq=snap.seq,
            fault_started_at=finding.fault_started_at,
            severity=finding.severity,
            destinations=destinations,
        )

    # A dead neighbour whose missing destinations are all part of a partition is that
    # partition now: one fault, one incident, measured by the partition's repair.
    partition = knowledge.incidents.get((FaultKind.PARTITION, snap.name))
    if partition is not None:
        for incident in list(knowledge.incidents.values()):
            if incident.kind is not FaultKind.DEAD_NEIGHBOUR:
                continue
            missing = incident.destinations - snap.reachable
            if missing and missing <= partition.destinations:
                closed.append(knowledge.close(incident, Outcome.SUPERSEDED, now))

    knowledge.active = current
    return closed
