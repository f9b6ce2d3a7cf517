"""The metric contract of issue 11: every name alerts and dashboards use is declared on
our one registry, with those labels and that type, and every name follows Prometheus's
conventions (prefix, ``_total`` counters, base units)."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry

from x0tta6bl4.observability import metrics as m

# name (as scraped; counters with _total) -> (type, label names)
CONTRACT: dict[str, tuple[str, tuple[str, ...]]] = {
    # existing, node
    "x0tta6bl4_self_healing_events_total": ("counter", ("kind", "action", "outcome")),
    "x0tta6bl4_self_healing_mttr_seconds": ("histogram", ()),
    "x0tta6bl4_self_healing_mttd_seconds": ("histogram", ()),
    "x0tta6bl4_self_healing_time_to_clear_seconds": ("histogram", ()),
    "x0tta6bl4_mapek_cycle_seconds": ("histogram", ("phase",)),
    "x0tta6bl4_link_rtt_seconds": ("gauge", ("peer",)),
    "x0tta6bl4_link_loss_ratio": ("gauge", ("peer",)),
    "x0tta6bl4_link_cost": ("gauge", ("peer",)),
    "x0tta6bl4_handshakes_total": ("counter", ("role", "outcome")),
    "x0tta6bl4_packets_dropped_total": ("counter", ("reason",)),
    "x0tta6bl4_policy_decisions_total": ("counter", ("rule", "decision")),
    "x0tta6bl4_routes": ("gauge", ("state",)),
    # new, node (build_info, certificates, lists and policy: both processes)
    "x0tta6bl4_build_info": ("gauge", ("role", "version")),
    "x0tta6bl4_neighbours": ("gauge", ()),
    "x0tta6bl4_sessions": ("gauge", ("kind",)),
    "x0tta6bl4_handshake_failures_total": ("counter", ("reason",)),
    "x0tta6bl4_rekeys_total": ("counter", ("outcome",)),
    "x0tta6bl4_dataplane_packets_total": ("counter", ("direction",)),
    "x0tta6bl4_dataplane_bytes_total": ("counter", ("direction",)),
    "x0tta6bl4_certificate_expiry_timestamp_seconds": ("gauge", ("role",)),
    "x0tta6bl4_revocation_list_version": ("gauge", ("role",)),
    "x0tta6bl4_revocation_list_next_update_timestamp_seconds": ("gauge", ("role",)),
    "x0tta6bl4_policy_version": ("gauge", ("role",)),
    "x0tta6bl4_control_last_sync_timestamp_seconds": ("gauge", ("channel",)),
    # new, control plane
    "x0tta6bl4_http_requests_total": ("counter", ("method", "route", "status")),
    "x0tta6bl4_http_request_duration_seconds": ("histogram", ("method", "route")),
    "x0tta6bl4_db_pool_connections": ("gauge", ("state",)),
    "x0tta6bl4_db_pool_size": ("gauge", ()),
    "x0tta6bl4_dependency_up": ("gauge", ("dependency",)),
    "x0tta6bl4_push_events_total": ("counter", ("kind",)),
    "x0tta6bl4_push_lag_seconds": ("histogram", ("kind",)),
    "x0tta6bl4_push_streams": ("gauge", ()),
    "x0tta6bl4_enrollments_total": ("counter", ("outcome",)),
    "x0tta6bl4_renewals_total": ("counter", ("outcome",)),
    "x0tta6bl4_certificates": ("gauge", ("status",)),
    "x0tta6bl4_certificates_expiring": ("gauge", ("within",)),
    "x0tta6bl4_nodes": ("gauge", ("state",)),
}


def _declared() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every family on REGISTRY: scraped name -> (type, label names)."""
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    seen: set[int] = set()
    for collector in list(m.REGISTRY._collector_to_names):  # the registry's own index
        if id(collector) in seen:
            continue
        seen.add(id(collector))
        labels = tuple(getattr(collector, "_labelnames", ()))
        for family in collector.describe():
            name = family.name + ("_total" if family.type == "counter" else "")
            out[name] = (family.type, labels)
    return out


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_the_contract_metric_is_declared_with_its_labels_and_type(name: str) -> None:
    declared = _declared()
    assert name in declared, f"{name} is not on x0tta6bl4.observability.metrics.REGISTRY"
    assert declared[name] == CONTRACT[name]


def test_every_declared_name_follows_the_conventions() -> None:
    declared = _declared()
    assert declared, "nothing declared"
    for name, (kind, labels) in declared.items():
        assert re.fullmatch(r"x0tta6bl4_[a-z0-9_]+", name), name
        assert name.endswith("_total") == (kind == "counter"), name
        # Base units only: seconds and bytes, never milli- or minutes; ratios 0..1.
        assert not re.search(r"_(ms|millis|milliseconds|minutes|hours|percent|kb|mb)(_|$)", name)
        if "timestamp" in name:
            assert name.endswith("_timestamp_seconds"), name
        for label in labels:
            assert re.fullmatch(r"[a-z][a-z0-9_]*", label) and not label.startswith("__")


def test_histograms_expose_buckets_sum_and_count() -> None:
    m.record_push("policy", 0.02)
    count = m.REGISTRY.get_sample_value("x0tta6bl4_push_lag_seconds_count", {"kind": "policy"})
    assert count is not None and count >= 1
    assert (
        m.REGISTRY.get_sample_value(
            "x0tta6bl4_push_lag_seconds_bucket", {"kind": "policy", "le": "0.025"}
        )
        or 0
    ) >= 1
    assert m.REGISTRY.get_sample_value("x0tta6bl4_push_lag_seconds_sum", {"kind": "policy"})


def test_unlabelled_gauges_are_absent_until_set() -> None:
    """Both processes serve one registry: a gauge one of them owns stays out of the
    other's scrape instead of showing a made-up 0."""
    gauge = m.OptionalGauge("x0tta6bl4_test_optional", "test", registry=CollectorRegistry())
    assert gauge.collect() == []
    gauge.set(3)
    assert [s.value for f in gauge.collect() for s in f.samples] == [3.0]
    gauge.clear()
    assert gauge.collect() == []
