"""Every metric of the project, declared once, on one registry.

``REGISTRY`` is our own ``CollectorRegistry`` rather than prometheus_client's global
one, so tests read exact values with ``REGISTRY.get_sample_value`` and the exporter
(runtime, control plane) serves only what is declared here.

This layer imports nothing from the project (see docs/architecture.md's layer table): the
recorders take any object with the right attributes (a ``HealingEvent``, a
``LinkObservation``) through the small Protocols below.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Final, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY: Final = CollectorRegistry(auto_describe=True)

# 50 ms (one healing cycle and a half) up to a minute (past the incident timeout).
REPAIR_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
# A cycle's phases are pure Python over a handful of links: microseconds to milliseconds.
CYCLE_BUCKETS: Final = (1e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1)

# --- self-healing -----------------------------------------------------------------------

SELF_HEALING_EVENTS: Final = Counter(
    "x0tta6bl4_self_healing_events_total",
    "Finished self-healing incidents.",
    ["kind", "action", "outcome"],
    registry=REGISTRY,
)
SELF_HEALING_MTTR: Final = Histogram(
    "x0tta6bl4_self_healing_mttr_seconds",
    "Fault start to verified repair (traffic flowing again, end to end), for repaired "
    "incidents: the outage a user of an affected destination saw, detection included.",
    buckets=REPAIR_BUCKETS,
    registry=REGISTRY,
)
SELF_HEALING_MTTD: Final = Histogram(
    "x0tta6bl4_self_healing_mttd_seconds",
    "Fault start (as the node estimates it) to detection, where the start is known.",
    buckets=REPAIR_BUCKETS,
    registry=REGISTRY,
)
SELF_HEALING_TIME_TO_CLEAR: Final = Histogram(
    "x0tta6bl4_self_healing_time_to_clear_seconds",
    "Fault start to the fault going away by itself, for cleared incidents (not repairs).",
    buckets=REPAIR_BUCKETS,
    registry=REGISTRY,
)
MAPEK_CYCLE: Final = Histogram(
    "x0tta6bl4_mapek_cycle_seconds",
    "CPU time of one MAPE-K phase per cycle.",
    ["phase"],
    buckets=CYCLE_BUCKETS,
    registry=REGISTRY,
)

# --- links, routes, packets ---------------------------------------------------------------

LINK_RTT: Final = Gauge(
    "x0tta6bl4_link_rtt_seconds", "Smoothed link round-trip time.", ["peer"], registry=REGISTRY
)
LINK_LOSS: Final = Gauge(
    "x0tta6bl4_link_loss_ratio", "Link loss ratio, 0..1.", ["peer"], registry=REGISTRY
)
LINK_COST: Final = Gauge(
    "x0tta6bl4_link_cost",
    "Link cost used by routing, penalties included.",
    ["peer"],
    registry=REGISTRY,
)
HANDSHAKES: Final = Counter(
    "x0tta6bl4_handshakes_total",
    "Completed or failed handshakes.",
    ["role", "outcome"],
    registry=REGISTRY,
)
PACKETS_DROPPED: Final = Counter(
    "x0tta6bl4_packets_dropped_total",
    "Packets dropped, by reason (malformed, replay, unauthenticated, policy, ...).",
    ["reason"],
    registry=REGISTRY,
)
POLICY_DECISIONS: Final = Counter(
    "x0tta6bl4_policy_decisions_total",
    "Inbound packets judged by the access policy, by deciding rule (line:N or "
    "default-deny) and decision.",
    ["rule", "decision"],
    registry=REGISTRY,
)
ROUTES: Final = Gauge(
    "x0tta6bl4_routes", "Routes in the table by state.", ["state"], registry=REGISTRY
)


# --- recorders ------------------------------------------------------------------------------


class HealingEventLike(Protocol):
    @property
    def kind(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def outcome(self) -> str: ...
    @property
    def mttr(self) -> float | None: ...
    @property
    def mttd(self) -> float | None: ...
    @property
    def time_to_clear(self) -> float | None: ...


class LinkLike(Protocol):
    @property
    def peer(self) -> str: ...
    @property
    def rtt(self) -> float | None: ...
    @property
    def loss(self) -> float: ...
    @property
    def cost(self) -> int: ...


class RouteLike(Protocol):
    @property
    def next_hop(self) -> str | None: ...


def record_self_healing_event(event: HealingEventLike) -> None:
    """Count a finished incident; observe its MTTR (if repaired), time to clear (if
    cleared) and MTTD (if known).

    Passed as ``on_event`` to the healing loop by the runtime.
    """
    SELF_HEALING_EVENTS.labels(
        kind=str(event.kind), action=str(event.action), outcome=str(event.outcome)
    ).inc()
    mttr = event.mttr
    if mttr is not None:
        SELF_HEALING_MTTR.observe(max(0.0, mttr))
    cleared = event.time_to_clear
    if cleared is not None:
        SELF_HEALING_TIME_TO_CLEAR.observe(max(0.0, cleared))
    mttd = event.mttd
    if mttd is not None:
        SELF_HEALING_MTTD.observe(max(0.0, mttd))


def record_mapek_cycle(phase_durations: Mapping[str, float]) -> None:
    """Observe one cycle's phase durations (seconds), e.g. ``HealingLoop.on_cycle``."""
    for phase, seconds in phase_durations.items():
        MAPEK_CYCLE.labels(phase=phase).observe(max(0.0, seconds))


def record_link(obs: LinkLike) -> None:
    """Set the link gauges; an unknown RTT leaves the last value rather than a fake 0."""
    if obs.rtt is not None:
        LINK_RTT.labels(peer=obs.peer).set(obs.rtt)
    LINK_LOSS.labels(peer=obs.peer).set(obs.loss)
    LINK_COST.labels(peer=obs.peer).set(obs.cost)


def forget_link(peer: str) -> None:
    """Drop a departed neighbour's series, so label sets do not grow forever."""
    for gauge in (LINK_RTT, LINK_LOSS, LINK_COST):
        with contextlib.suppress(KeyError):  # never recorded for this peer
            gauge.remove(peer)


def record_routes(routes: Mapping[str, RouteLike]) -> None:
    """Set ``x0tta6bl4_routes{state}`` from a routing table observation."""
    reachable = sum(1 for r in routes.values() if r.next_hop is not None)
    ROUTES.labels(state="reachable").set(reachable)
    ROUTES.labels(state="unreachable").set(len(routes) - reachable)


def record_policy_decision(rule: str, allowed: bool) -> None:
    POLICY_DECISIONS.labels(rule=rule, decision="allow" if allowed else "deny").inc()


def record_handshake(role: str, outcome: str) -> None:
    """``role``: initiator | responder; ``outcome``: ok | failed | ... ."""
    HANDSHAKES.labels(role=role, outcome=outcome).inc()


# Last cumulative value seen per (source, reason): nodes report totals, Prometheus
# counters want increments. Keyed by source so several nodes in one process (the
# simulator) do not overwrite each other's baseline.
_last_drops: dict[tuple[str, str], int] = {}


def record_drops(counters: Mapping[str, int], *, source: str = "") -> None:
    """Add to ``packets_dropped_total{reason}`` from cumulative per-reason drop counts.

    ``counters`` maps reason -> total drops so far (the caller passes the drop counters
    of a ``NodeObservation``). A total that went down means the source restarted; its
    whole value counts as new.
    """
    for reason, total in counters.items():
        key = (source, reason)
        last = _last_drops.get(key, 0)
        delta = total - last if total >= last else total
        _last_drops[key] = total
        if delta > 0:
            PACKETS_DROPPED.labels(reason=reason).inc(delta)
