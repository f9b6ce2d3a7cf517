"""The control plane's /metrics over the real app (SQLite, and PostgreSQL + Redis): our
registry, requests by route template, the database pool, dependencies, enrollments and
renewals, pushes and their lag, and the inventory gauges."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select, update

from tests.control.enroll_helpers import attempt, create_token, enroll_ok, renew
from tests.control.nodes_helper import TestNode, enroll
from tests.control.test_stream import Stream
from x0tta6bl4.api.push import stream_path
from x0tta6bl4.control.models import Certificate

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
REFRESH_S = 0.2


@pytest.fixture
def control_settings(control_settings: Any) -> Any:
    # The inventory gauges are recounted every 15 s by default; often here.
    control_settings.metrics_refresh_s = REFRESH_S
    return control_settings


def scrape(control: Any) -> Samples:
    """Every sample of GET /metrics, keyed by (name, sorted labels)."""
    r = control.client.get("/metrics")
    assert r.status_code == 200, r.text
    out: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_metrics_serves_our_registry(control: Any) -> None:
    text = control.client.get("/metrics").text
    # Declared on x0tta6bl4.observability.metrics.REGISTRY, not prometheus_client's global.
    assert "# TYPE x0tta6bl4_self_healing_events_total counter" in text
    assert "# TYPE x0tta6bl4_http_requests_total counter" in text
    s = scrape(control)
    from x0tta6bl4 import __version__

    assert value(s, "x0tta6bl4_build_info", role="control", version=__version__) == 1.0
    ca_not_after = control.ctx.ca.ca.certificate.not_valid_after_utc.timestamp()
    assert value(s, "x0tta6bl4_certificate_expiry_timestamp_seconds", role="ca") == ca_not_after
    # Node-only gauges stay absent here rather than claiming 0 neighbours.
    assert not [k for k in s if k[0] == "x0tta6bl4_neighbours"]


def test_requests_are_counted_by_route_template(control: Any) -> None:
    before = scrape(control)
    for i in range(3):
        r = control.client.get(f"/v1/nodes/missing-{i}", headers=control.auth())
        assert r.status_code == 404
    assert control.client.get("/health").status_code == 200
    after = scrape(control)
    key = {"method": "GET", "route": "/v1/nodes/{name}", "status": "404"}

    def delta(**labels: str) -> float:
        n = "x0tta6bl4_http_requests_total"
        return (value(after, n, **labels) or 0.0) - (value(before, n, **labels) or 0.0)

    assert delta(**key) == 3
    assert delta(method="GET", route="/health", status="200") == 1
    hist = "x0tta6bl4_http_request_duration_seconds_count"
    labels = {"method": "GET", "route": "/v1/nodes/{name}"}
    assert (value(after, hist, **labels) or 0) - (value(before, hist, **labels) or 0) == 3
    # No raw path became a label.
    assert not [k for k in after if any("missing-" in v for _, v in k[1])]


def test_reads_answered_from_the_cache_are_counted_too(control: Any) -> None:
    enroll(control, "hot-1")
    n = "x0tta6bl4_http_requests_total"
    labels = {"method": "GET", "route": "/v1/nodes/{name}", "status": "200"}
    before = value(scrape(control), n, **labels) or 0
    for _ in range(5):  # the first fills the caches; the rest may come from HotReads
        assert control.client.get("/v1/nodes/hot-1", headers=control.auth()).status_code == 200
    assert (value(scrape(control), n, **labels) or 0) - before == 5


def test_unknown_paths_do_not_grow_the_label_set(control: Any) -> None:
    before = scrape(control)
    for _ in range(20):
        assert control.client.get(f"/no/such/{secrets.token_hex(4)}").status_code == 404
    r = control.client.request("BREW", "/health")  # an unknown method is "other"
    assert r.status_code == 405
    after = scrape(control)
    n = "x0tta6bl4_http_requests_total"
    labels = {"method": "GET", "route": "unmatched", "status": "404"}
    assert (value(after, n, **labels) or 0) - (value(before, n, **labels) or 0) == 20
    assert (value(after, n, method="other", route="/health", status="405") or 0) >= 1
    new_keys = {k for k in after if k[0] == n} - {k for k in before if k[0] == n}
    assert len(new_keys) <= 2  # at most the unmatched and the "other" series


def test_pool_and_dependency_gauges(control: Any) -> None:
    assert control.client.get("/ready").status_code == 200
    s = scrape(control)
    assert value(s, "x0tta6bl4_dependency_up", dependency="database") == 1.0
    if control.settings.redis_url:  # without Redis the series is never set by this app
        assert value(s, "x0tta6bl4_dependency_up", dependency="redis") == 1.0
    size = value(s, "x0tta6bl4_db_pool_size")
    assert size is not None and size > 0
    if control.settings.database_url:  # PostgreSQL: the configured pool
        assert size == control.settings.db_pool_size
    for state in ("checked_out", "idle", "overflow"):
        v = value(s, "x0tta6bl4_db_pool_connections", state=state)
        assert v is not None and v >= 0, state
    assert (value(s, "x0tta6bl4_db_pool_connections", state="idle") or 0) >= 1  # /ready's


def test_enrollments_and_renewals_by_outcome(control: Any) -> None:
    before = scrape(control)
    result, keys = enroll_ok(control, "metrics-1", ["role:web"])
    token = create_token(control, tags=["role:web"], name_pattern="metrics-*")["token"]
    refused = attempt(control.client, token, "other-name", ["role:web"])
    assert refused.status == 403
    from x0tta6bl4.identity.cert import NodeCertificate

    cert = NodeCertificate.from_pem(result.certificate.encode())
    assert renew(control.client, cert, keys).status_code == 200
    assert renew(control.client, cert, keys, tags=["role:db"]).status_code == 403
    after = scrape(control)

    def delta(name: str, outcome: str) -> float:
        return (value(after, name, outcome=outcome) or 0) - (
            value(before, name, outcome=outcome) or 0
        )

    assert delta("x0tta6bl4_enrollments_total", "ok") == 1
    assert delta("x0tta6bl4_enrollments_total", "refused") == 1
    assert delta("x0tta6bl4_renewals_total", "ok") == 1
    assert delta("x0tta6bl4_renewals_total", "refused") == 1


def test_a_pushed_revocation_observes_its_lag(control: Any) -> None:
    node = enroll(control, "web-1", ["role:web"])
    other = enroll(control, "web-2", ["role:web"])
    before = scrape(control)
    s = Stream(control, node, stream_path())
    assert s.next()[0] == "hello"
    assert s.next()[0] == "crl"  # the catch-up: counted, no lag observed
    wait_for(lambda: value(scrape(control), "x0tta6bl4_push_streams") == 1.0, "the stream counted")
    r = control.client.post("/v1/revocations", json={"node": other.name}, headers=control.auth())
    assert r.status_code == 200, r.text
    event, data = s.next()
    assert event == "crl" and data["version"] == r.json()["crl_version"]
    after = scrape(control)

    def delta(name: str) -> float:
        return (value(after, name, kind="revocation") or 0) - (
            value(before, name, kind="revocation") or 0
        )

    assert delta("x0tta6bl4_push_events_total") == 2  # catch-up + the news
    assert delta("x0tta6bl4_push_lag_seconds_count") == 1
    lag = delta("x0tta6bl4_push_lag_seconds_sum")
    assert 0 < lag < 5.0
    # Revoking the stream's own node ends it: nothing is left open at teardown.
    r = control.client.post("/v1/revocations", json={"node": node.name}, headers=control.auth())
    assert r.status_code == 200, r.text
    kinds = [s.next()[0] for _ in range(3)]
    assert kinds == ["crl", "revoked", "<end>"]
    wait_for(lambda: value(scrape(control), "x0tta6bl4_push_streams") == 0.0, "the stream closed")


def test_inventory_gauges_match_the_database(control: Any) -> None:
    c = control.ctx
    nodes = [enroll(control, f"inv-{i}", ["role:web"]) for i in range(3)]
    old = enroll(control, "inv-old", ["role:web"])

    async def expire() -> None:  # the CA cannot backdate: age the inventory row instead
        async with c.db.session() as s:
            await s.execute(
                update(Certificate)
                .where(Certificate.serial == old.serial_hex)
                .values(not_after=time.time() - 1)
            )
            # Two live current certificates: one ending within the hour, one in 3 days.
            for n, left in ((nodes[1], 1800.0), (nodes[2], 3 * 86400.0)):
                await s.execute(
                    update(Certificate)
                    .where(Certificate.serial == n.serial_hex)
                    .values(not_after=time.time() + left)
                )
            await s.commit()

    control.client.portal.call(expire)
    r = control.client.post(
        "/v1/revocations", json={"serial": nodes[0].serial_hex}, headers=control.auth()
    )
    assert r.status_code == 200, r.text
    crl_version = r.json()["crl_version"]
    _report(control, nodes[1])

    async def inventory() -> dict[str, int]:
        now = time.time()
        async with c.db.session() as s:
            rows = (await s.execute(select(Certificate.status, Certificate.not_after))).all()
        counts = {"valid": 0, "expired": 0, "revoked": 0}
        for status, not_after in rows:
            counts[
                "revoked" if status == "revoked" else "valid" if not_after > now else "expired"
            ] += 1
        return counts

    truth = control.client.portal.call(inventory)
    assert truth == {"valid": 2, "expired": 1, "revoked": 1}

    def gauges() -> tuple[dict[str, float | None], dict[str, float | None], float | None]:
        s = scrape(control)
        certs = {k: value(s, "x0tta6bl4_certificates", status=k) for k in truth}
        states = {k: value(s, "x0tta6bl4_nodes", state=k) for k in ("fresh", "stale")}
        return certs, states, value(s, "x0tta6bl4_revocation_list_version", role="control")

    wait_for(
        lambda: gauges() == (dict(truth), {"fresh": 1.0, "stale": 3.0}, float(crl_version)),
        "the gauges to catch up with the database",
    )
    s = scrape(control)
    next_update = value(
        s, "x0tta6bl4_revocation_list_next_update_timestamp_seconds", role="control"
    )

    # inv-0 is revoked and inv-old expired: only inv-1 (30 min left) and inv-2 (3 days).
    expiring = {
        w: value(s, "x0tta6bl4_certificates_expiring", within=w) for w in ("1h", "24h", "7d")
    }
    assert expiring == {"1h": 1.0, "24h": 1.0, "7d": 2.0}
    listed = control.client.get("/v1/crl/version").json()
    assert next_update == listed["next_update"] and listed["version"] == crl_version


def _report(control: Any, node: TestNode) -> None:
    body = json.dumps({"at": time.time(), "endpoints": [], "neighbours": [], "routes": []})
    headers = node.headers("POST", "/v1/reports", body.encode())
    headers["content-type"] = "application/json"
    r = control.client.post("/v1/reports", content=body.encode(), headers=headers)
    assert r.status_code == 200, r.text
