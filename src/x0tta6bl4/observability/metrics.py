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
from typing import Any, Final, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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


# --- gauges absent until set ----------------------------------------------------------------


class OptionalGauge(Collector):
    """A gauge without labels that exports nothing until first set.

    Both processes serve the one registry: a plain ``Gauge`` would show a node's
    ``x0tta6bl4_neighbours 0`` on the control plane (and its pool size on every node),
    a 0 that would be a lie. This one appears once the process that owns it sets it.
    """

    def __init__(self, name: str, documentation: str, *, registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self._value: float | None = None
        registry.register(self)

    def set(self, value: float) -> None:
        self._value = float(value)

    def clear(self) -> None:
        self._value = None

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily(self.name, self.documentation)]

    def collect(self) -> list[Metric]:
        value = self._value
        if value is None:
            return []
        return [GaugeMetricFamily(self.name, self.documentation, value=value)]


# --- both processes ---------------------------------------------------------------------------

BUILD_INFO: Final = Gauge(
    "x0tta6bl4_build_info",
    "Always 1; its labels say which process this is (role node|control) and its version.",
    ["role", "version"],
    registry=REGISTRY,
)
CERTIFICATE_EXPIRY: Final = Gauge(
    "x0tta6bl4_certificate_expiry_timestamp_seconds",
    "notAfter of a certificate, Unix seconds: role=node the node's own certificate in use "
    "(updated on renewal), role=ca the CA certificate (set by the control plane).",
    ["role"],
    registry=REGISTRY,
)
REVOCATION_LIST_VERSION: Final = Gauge(
    "x0tta6bl4_revocation_list_version",
    "Version of the revocation list held (role=node) or newest in the database as this "
    "replica's pusher last read it (role=control).",
    ["role"],
    registry=REGISTRY,
)
REVOCATION_LIST_NEXT_UPDATE: Final = Gauge(
    "x0tta6bl4_revocation_list_next_update_timestamp_seconds",
    "nextUpdate of that revocation list, Unix seconds; past it the list is stale.",
    ["role"],
    registry=REGISTRY,
)
POLICY_VERSION: Final = Gauge(
    "x0tta6bl4_policy_version",
    "Version of the access policy in force on the node (role=node) or newest in the "
    "database as this replica's pusher last read it (role=control).",
    ["role"],
    registry=REGISTRY,
)

# --- node ---------------------------------------------------------------------------------------

NEIGHBOURS: Final = OptionalGauge(
    "x0tta6bl4_neighbours",
    "Live link neighbours: heard within the dead interval, with an established session.",
    registry=REGISTRY,
)
SESSIONS: Final = Gauge(
    "x0tta6bl4_sessions",
    "Established secure-channel sessions: kind=link (with neighbours, hop by hop), "
    "kind=e2e (end to end, with any node).",
    ["kind"],
    registry=REGISTRY,
)
HANDSHAKE_FAILURES: Final = Counter(
    "x0tta6bl4_handshake_failures_total",
    "Handshakes this node started that ended without a session, by reason: timeout (no "
    "answer within the attempt time) or revoked (the peer's certificate is revoked).",
    ["reason"],
    registry=REGISTRY,
)
REKEYS: Final = Counter(
    "x0tta6bl4_rekeys_total",
    "Session rekeys: ok = a session replaced by a newer one; failed = a handshake "
    "started while a session existed that ended without a new one.",
    ["outcome"],
    registry=REGISTRY,
)
DATAPLANE_PACKETS: Final = Counter(
    "x0tta6bl4_dataplane_packets_total",
    "Application payloads (messages, or IP packets in TUN mode) the node handed to the "
    "mesh for end-to-end delivery (tx) or received end to end (rx, before the policy).",
    ["direction"],
    registry=REGISTRY,
)
DATAPLANE_BYTES: Final = Counter(
    "x0tta6bl4_dataplane_bytes_total",
    "Bytes of those payloads (IP packets without the virtio-net header), tx or rx.",
    ["direction"],
    registry=REGISTRY,
)
CONTROL_LAST_SYNC: Final = Gauge(
    "x0tta6bl4_control_last_sync_timestamp_seconds",
    "Unix time of the last successful exchange with the control plane, by channel: "
    "stream (an event or keep-alive on the open push stream), poll (/v1/sync answered), "
    "report (a status report accepted).",
    ["channel"],
    registry=REGISTRY,
)

# --- control plane ----------------------------------------------------------------------------

# An API answer: a millisecond (cached read) to seconds (a write waiting for the database).
HTTP_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
# Commit to a node's stream: milliseconds on one replica, up to the poll interval (1 s by
# default) across replicas without Redis, more under load.
PUSH_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

HTTP_REQUESTS: Final = Counter(
    "x0tta6bl4_http_requests_total",
    "HTTP requests answered, by method, route template (unmatched: no route) and status.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_REQUEST_DURATION: Final = Histogram(
    "x0tta6bl4_http_request_duration_seconds",
    "Request received to response headers sent (for the event stream: to the stream "
    "opening), by method and route template.",
    ["method", "route"],
    buckets=HTTP_BUCKETS,
    registry=REGISTRY,
)
DB_POOL_CONNECTIONS: Final = Gauge(
    "x0tta6bl4_db_pool_connections",
    "Database connections of this replica's pool: checked_out (in use), idle (pooled), "
    "overflow (opened past the pool size).",
    ["state"],
    registry=REGISTRY,
)
DB_POOL_SIZE: Final = OptionalGauge(
    "x0tta6bl4_db_pool_size",
    "Configured size of this replica's database pool (overflow comes on top).",
    registry=REGISTRY,
)
DEPENDENCY_UP: Final = Gauge(
    "x0tta6bl4_dependency_up",
    "1 when the dependency answered this replica's last check (every few seconds and at "
    "each /ready), else 0; redis only when configured.",
    ["dependency"],
    registry=REGISTRY,
)
PUSH_EVENTS: Final = Counter(
    "x0tta6bl4_push_events_total",
    "Documents written to node event streams by this replica, by kind (policy|revocation).",
    ["kind"],
    registry=REGISTRY,
)
PUSH_LAG: Final = Histogram(
    "x0tta6bl4_push_lag_seconds",
    "A new version's creation in the database (just before its commit) to its write to "
    "an open node stream on this replica, by kind (policy|revocation).",
    ["kind"],
    buckets=PUSH_BUCKETS,
    registry=REGISTRY,
)
PUSH_STREAMS: Final = OptionalGauge(
    "x0tta6bl4_push_streams",
    "Node event streams open on this replica.",
    registry=REGISTRY,
)
ENROLLMENTS: Final = Counter(
    "x0tta6bl4_enrollments_total",
    "Enrollment requests (POST /v1/enroll) by outcome: ok (certificate issued) or refused.",
    ["outcome"],
    registry=REGISTRY,
)
RENEWALS: Final = Counter(
    "x0tta6bl4_renewals_total",
    "Renewal requests of authenticated nodes (POST /v1/renew) by outcome: ok or refused.",
    ["outcome"],
    registry=REGISTRY,
)
CERTIFICATES: Final = Gauge(
    "x0tta6bl4_certificates",
    "Certificates in the CA's inventory by status: valid (unrevoked, not yet expired), "
    "expired, revoked; refreshed from the database every few seconds.",
    ["status"],
    registry=REGISTRY,
)
# Windows for certificates by expiry: a node renews at half its certificate's lifetime,
# so an active node's current certificate close to its end means renewal is failing.
EXPIRY_WINDOWS: Final = (("1h", 3600.0), ("24h", 86400.0), ("7d", 604800.0))
CERTIFICATES_EXPIRING: Final = Gauge(
    "x0tta6bl4_certificates_expiring",
    "Current certificates of active nodes (unrevoked, not yet expired) whose notAfter "
    "falls within the window (1h, 24h, 7d) from now; refreshed with x0tta6bl4_certificates.",
    ["within"],
    registry=REGISTRY,
)
NODES: Final = Gauge(
    "x0tta6bl4_nodes",
    "Active (unrevoked) enrolled nodes by state: fresh (last report within 3 report "
    "intervals) or stale (older, or none yet); refreshed from the database periodically.",
    ["state"],
    registry=REGISTRY,
)


# --- recorders of the new metrics ------------------------------------------------------------

# Bound label values: anything else a client sends is "other".
_HTTP_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)


def record_build_info(role: str, version: str) -> None:
    BUILD_INFO.labels(role=role, version=version).set(1)


# (method, route, status) -> the counter's and the histogram's children: ``labels()`` costs
# several microseconds a call, more than a cached read itself. Bounded like the labels.
_http_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def record_http_request(method: str, route: str, status: int, seconds: float) -> None:
    """One answered request; ``route`` is the path template (never the raw path)."""
    children = _http_children.get((method, route, status))
    if children is None:
        m = method if method in _HTTP_METHODS else "other"
        children = (
            HTTP_REQUESTS.labels(method=m, route=route, status=str(status)),
            HTTP_REQUEST_DURATION.labels(method=m, route=route),
        )
        if len(_http_children) < 10_000:  # an unknown method is "other": keyed by it too
            _http_children[(method, route, status)] = children
    children[0].inc()
    children[1].observe(max(0.0, seconds))


def record_db_pool(
    size: int | None, checked_out: int | None, idle: int | None, overflow: int | None
) -> None:
    """Pool gauges; None (a pool without that notion, e.g. SQLite's) leaves it unset."""
    if size is not None:
        DB_POOL_SIZE.set(size)
    for state, value in (("checked_out", checked_out), ("idle", idle), ("overflow", overflow)):
        if value is not None:
            DB_POOL_CONNECTIONS.labels(state=state).set(value)


def record_dependency(dependency: str, up: bool) -> None:
    DEPENDENCY_UP.labels(dependency=dependency).set(1 if up else 0)


def record_push(kind: str, lag_s: float | None) -> None:
    """A document written to a node stream; ``lag_s`` (commit to write) when it is news,
    None when it is a catch-up for a node that connected behind."""
    PUSH_EVENTS.labels(kind=kind).inc()
    if lag_s is not None:
        PUSH_LAG.labels(kind=kind).observe(max(0.0, lag_s))


def record_push_streams(open_streams: int) -> None:
    PUSH_STREAMS.set(open_streams)


def record_enrollment(ok: bool) -> None:
    ENROLLMENTS.labels(outcome="ok" if ok else "refused").inc()


def record_renewal(ok: bool) -> None:
    RENEWALS.labels(outcome="ok" if ok else "refused").inc()


def record_certificates(valid: int, expired: int, revoked: int) -> None:
    CERTIFICATES.labels(status="valid").set(valid)
    CERTIFICATES.labels(status="expired").set(expired)
    CERTIFICATES.labels(status="revoked").set(revoked)


def record_certificates_expiring(counts: Mapping[str, int]) -> None:
    """``counts``: window label (of EXPIRY_WINDOWS) -> certificates expiring within it."""
    for label, _seconds in EXPIRY_WINDOWS:
        CERTIFICATES_EXPIRING.labels(within=label).set(counts.get(label, 0))


def record_nodes(fresh: int, stale: int) -> None:
    NODES.labels(state="fresh").set(fresh)
    NODES.labels(state="stale").set(stale)


def record_certificate_expiry(role: str, not_after: float) -> None:
    CERTIFICATE_EXPIRY.labels(role=role).set(not_after)


def record_revocation_list(role: str, version: int, next_update: float) -> None:
    REVOCATION_LIST_VERSION.labels(role=role).set(version)
    REVOCATION_LIST_NEXT_UPDATE.labels(role=role).set(next_update)


def record_policy_version(role: str, version: int) -> None:
    POLICY_VERSION.labels(role=role).set(version)


def record_control_sync(channel: str, at: float) -> None:
    """``channel``: stream | poll | report; ``at``: Unix seconds."""
    CONTROL_LAST_SYNC.labels(channel=channel).set(at)


def record_mesh_state(neighbours: int, link_sessions: int, e2e_sessions: int) -> None:
    NEIGHBOURS.set(neighbours)
    SESSIONS.labels(kind="link").set(link_sessions)
    SESSIONS.labels(kind="e2e").set(e2e_sessions)


def record_handshake_failure(reason: str) -> None:
    """``reason``: timeout | revoked (the channel's ``handshake_failed`` reasons)."""
    HANDSHAKE_FAILURES.labels(reason=reason).inc()


def record_rekey(ok: bool) -> None:
    REKEYS.labels(outcome="ok" if ok else "failed").inc()


def record_dataplane(tx_packets: int, tx_bytes: int, rx_packets: int, rx_bytes: int) -> None:
    """Add increments gathered by the runtime (it counts in plain integers on the hot path
    and flushes them here from its housekeeping)."""
    for direction, packets, size in (("tx", tx_packets, tx_bytes), ("rx", rx_packets, rx_bytes)):
        if packets:
            DATAPLANE_PACKETS.labels(direction=direction).inc(packets)
            DATAPLANE_BYTES.labels(direction=direction).inc(size)
