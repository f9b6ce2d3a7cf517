"""Signed status reports: stored, idempotent for events, refused from revoked nodes."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tests.control.report_helpers import (
    admin,
    make_node,
    neighbour,
    post_report,
    report,
    revoke_node,
    route,
    signed_request,
)
from x0tta6bl4.api.reports import MAX_EVENTS
from x0tta6bl4.control.routers.reports import StatusReport


def _events(control: Any, node: str | None = None) -> list[dict[str, Any]]:
    q = f"?node={node}" if node else ""
    r = control.client.get(f"/v1/events{q}", headers=admin(control))
    assert r.status_code == 200, r.text
    return r.json()["events"]  # type: ignore[no-any-return]


def _node(control: Any, name: str) -> dict[str, Any]:
    r = control.client.get(f"/v1/nodes/{name}", headers=admin(control))
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _ev(kind: str, at: float, **detail: Any) -> dict[str, Any]:
    return {"kind": kind, "at": at, "detail": detail}


def test_report_is_stored_and_updates_the_node(control) -> None:  # type: ignore[no-untyped-def]
    a = make_node(control, "a1", ["role:web"])
    make_node(control, "b1")
    t = time.time()
    r = post_report(
        control,
        a,
        endpoints=["10.0.0.1:7100", "[fd00::1]:7100"],
        neighbours=[neighbour("b1", rtt_ms=2.5, loss=0.01, cost=100)],
        routes=[route("b1", "b1", 100)],
        sessions=3,
        policy_version=4,
        crl_version=2,
        events=[_ev("dead_neighbour", t - 5, subject="c1", outcome="repaired", mttr_s=0.4)],
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted_events": 1, "duplicate_events": 0}
    detail = _node(control, "a1")
    assert detail["online"] is True
    assert detail["last_seen"] >= t - 1
    assert detail["endpoints"] == ["10.0.0.1:7100", "[fd00::1]:7100"]
    assert detail["report"]["neighbours"] == 1
    assert detail["report"]["sessions"] == 3
    assert detail["report"]["policy_version"] == 4
    assert detail["report"]["crl_version"] == 2
    (ev,) = _events(control, "a1")
    assert ev["kind"] == "dead_neighbour" and ev["node"] == "a1"
    assert ev["detail"] == {"subject": "c1", "outcome": "repaired", "mttr_s": 0.4}
    assert abs(ev["at"] - (t - 5)) < 1e-6


def test_resending_events_stores_them_once(control) -> None:  # type: ignore[no-untyped-def]
    a = make_node(control, "a2")
    t = time.time() - 10
    events = [_ev("dead_neighbour", t, subject="x"), _ev("degraded_link", t + 1, subject="y")]
    first = post_report(control, a, events=events)
    assert first.json() == {"accepted_events": 2, "duplicate_events": 0}
    # The node did not see the answer and resends, with one new event.
    again = post_report(control, a, events=[*events, _ev("dead_neighbour", t + 2, subject="z")])
    assert again.status_code == 200, again.text
    assert again.json() == {"accepted_events": 1, "duplicate_events": 2}
    stored = _events(control, "a2")
    assert len(stored) == 3
    assert sorted(e["detail"]["subject"] for e in stored) == ["x", "y", "z"]


def test_a_newer_report_wins_over_a_late_older_one(control) -> None:  # type: ignore[no-untyped-def]
    a = make_node(control, "a3")
    t = time.time()
    assert post_report(control, a, at=t, sessions=5).status_code == 200
    assert post_report(control, a, at=t - 30, sessions=1).status_code == 200  # a late retry
    detail = _node(control, "a3")
    assert detail["report"]["sessions"] == 5


def test_report_from_the_future_is_refused(control) -> None:  # type: ignore[no-untyped-def]
    a = make_node(control, "a4")
    r = post_report(control, a, at=time.time() + 3600)
    assert r.status_code == 400
    assert r.json()["detail"].startswith("at:")
    r = post_report(control, a, events=[_ev("dead_neighbour", time.time() + 3600)])
    assert r.status_code == 400
    assert r.json()["detail"].startswith("events.0.at:")
    assert _events(control, "a4") == []


def test_report_from_a_revoked_node_is_refused(control) -> None:  # type: ignore[no-untyped-def]
    a = make_node(control, "a5")
    assert post_report(control, a).status_code == 200
    revoke_node(control, a)
    r = post_report(control, a, events=[_ev("dead_neighbour", time.time())])
    assert r.status_code == 401
    assert "revoked" in r.json()["detail"]
    assert _events(control, "a5") == []


def test_unsigned_or_tampered_reports_change_nothing(control) -> None:  # type: ignore[no-untyped-def]
    a = make_node(control, "a6")
    body = report(events=[_ev("dead_neighbour", time.time())])
    r = control.client.post("/v1/reports", json=body)
    assert r.status_code == 401
    assert "not signed" in r.json()["detail"]
    # An operator's API key is not a node's signature.
    r = control.client.post("/v1/reports", json=body, headers=admin(control))
    assert r.status_code == 401
    # Signed for another body.
    import json

    from x0tta6bl4.api.signing import sign_request

    headers = sign_request(a.key, a.serial, "POST", "/v1/reports", b"{}")
    headers["content-type"] = "application/json"
    r = control.client.post("/v1/reports", content=json.dumps(body).encode(), headers=headers)
    assert r.status_code == 401
    assert _events(control, "a6") == []
    detail = _node(control, "a6")
    assert detail["last_seen"] is None and detail["report"] is None


def test_a_replayed_report_is_refused(control) -> None:  # type: ignore[no-untyped-def]
    import json

    from x0tta6bl4.api.signing import sign_request

    a = make_node(control, "a7")
    body = json.dumps(report()).encode()
    headers = sign_request(a.key, a.serial, "POST", "/v1/reports", body)
    headers["content-type"] = "application/json"
    assert control.client.post("/v1/reports", content=body, headers=headers).status_code == 200
    r = control.client.post("/v1/reports", content=body, headers=headers)
    assert r.status_code == 401
    assert "replayed" in r.json()["detail"]


def test_oversized_or_malformed_reports_are_422_naming_the_field(control) -> None:  # type: ignore[no-untyped-def]
    a = make_node(control, "a8")
    too_many = [_ev("dead_neighbour", time.time() - i) for i in range(MAX_EVENTS + 1)]
    r = post_report(control, a, events=too_many)
    assert r.status_code == 422
    assert "events" in r.json()["detail"]
    r = post_report(control, a, neighbours=[neighbour("b", loss=2.0)])
    assert r.status_code == 422
    assert "neighbours.0.loss" in r.json()["detail"]
    r = post_report(control, a, endpoints=["no-port"])
    assert r.status_code == 422
    assert "endpoints" in r.json()["detail"]
    r = post_report(control, a, events=[_ev("Bad Kind", time.time())])
    assert r.status_code == 422
    assert "events.0.kind" in r.json()["detail"]


def test_a_signed_get_is_not_a_report(control) -> None:  # type: ignore[no-untyped-def]
    a = make_node(control, "a9")
    assert signed_request(control, a, "GET", "/v1/reports").status_code == 405


# --- the wire schema itself -----------------------------------------------------------

_names = st.from_regex(r"[a-z0-9][a-z0-9.-]{0,20}", fullmatch=True)
_detail = st.dictionaries(
    st.text(max_size=16),
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**53), 2**53),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=40),
    ),
    max_size=8,
)
_reports = st.fixed_dictionaries(
    {
        "at": st.floats(0, 4e9),
        "endpoints": st.lists(
            st.builds(lambda h, p: f"{h}:{p}", _names, st.integers(1, 65535)), max_size=4
        ),
        "neighbours": st.lists(
            st.fixed_dictionaries(
                {
                    "name": _names,
                    "rtt_ms": st.none() | st.floats(0, 1e5),
                    "loss": st.floats(0, 1),
                    "cost": st.integers(0, 0xFFFF),
                    "up": st.booleans(),
                }
            ),
            max_size=5,
        ),
        "routes": st.lists(
            st.fixed_dictionaries(
                {
                    "destination": _names,
                    "next_hop": st.none() | _names,
                    "metric": st.integers(0, 0xFFFF),
                }
            ),
            max_size=5,
        ),
        "sessions": st.integers(0, 1000),
        "policy_version": st.none() | st.integers(0, 2**31 - 1),
        "crl_version": st.none() | st.integers(0, 2**31 - 1),
        "events": st.lists(
            st.fixed_dictionaries(
                {
                    "kind": st.from_regex(r"[a-z][a-z0-9_.-]{0,20}", fullmatch=True),
                    "at": st.floats(0, 4e9),
                    "detail": _detail,
                }
            ),
            max_size=5,
        ),
    }
)


@settings(max_examples=200, deadline=None)
@given(_reports)
def test_schema_round_trips_valid_reports(body: dict[str, Any]) -> None:
    parsed = StatusReport.model_validate(body)
    again = StatusReport.model_validate_json(parsed.model_dump_json())
    assert again == parsed


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.floats() | st.text(max_size=20) | st.integers(),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
        ),
        max_leaves=30,
    )
)
def test_schema_rejects_garbage_without_crashing(value: Any) -> None:
    with contextlib.suppress(ValidationError):
        StatusReport.model_validate(value)
