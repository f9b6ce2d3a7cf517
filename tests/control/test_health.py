"""The service starts with zero set-up and says whether it can serve."""

from __future__ import annotations

import stat


def test_health_and_ready_on_a_fresh_data_dir(control) -> None:  # type: ignore[no-untyped-def]
    assert control.client.get("/health").json() == {"status": "ok"}
    ready = control.client.get("/ready")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready" and body["database"] == "ok"
    if control.settings.redis_url:
        assert body["redis"] == "ok"


def test_first_start_creates_the_ca_with_private_files(control) -> None:  # type: ignore[no-untyped-def]
    ca_dir = control.settings.resolved_ca_dir
    for name in ("ca.key", "enroll.key"):
        mode = stat.S_IMODE((ca_dir / name).stat().st_mode)
        assert mode == 0o600, f"{name} is {oct(mode)}"
    assert stat.S_IMODE(ca_dir.stat().st_mode) == 0o700


def test_metrics_are_prometheus_text(control) -> None:  # type: ignore[no-untyped-def]
    r = control.client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
