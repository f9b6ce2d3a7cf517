"""Policy management: validate, dry-run, versioned signed documents, rollback."""

from __future__ import annotations

import base64
import json
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.control.nodes_helper import enroll, steady_keys
from x0tta6bl4.control.models import AuditEntry
from x0tta6bl4.control.policies import InvalidSource, check_source, with_version
from x0tta6bl4.policy import Outcome, Policy, SignedPolicy, accept_policy

POLICY = """version 1
# the web tier may reach the database
allow from tag:role:web to tag:role:db port tcp/5432
allow from any to any proto icmp
"""


def _post(control, path, body, key=None):  # type: ignore[no-untyped-def]
    # ASCII JSON: any text travels as escapes, as a client may send it.
    headers = {**control.auth(key), "Content-Type": "application/json"}
    return control.client.post(path, content=json.dumps(body), headers=headers)


def _create(control, source=POLICY, comment=""):  # type: ignore[no-untyped-def]
    r = _post(control, "/v1/policies", {"source": source, "comment": comment})
    assert r.status_code == 201, r.text
    return r.json()


@pytest.fixture(autouse=True)
def _keys(request: pytest.FixtureRequest) -> None:
    if "control" in request.fixturenames:
        steady_keys(request.getfixturevalue("control"))


# --- validate ----------------------------------------------------------------------------


def test_validate_reports_the_line_and_column(control) -> None:  # type: ignore[no-untyped-def]
    viewer = control.new_key("viewer")
    bad = "version 1\nallow from tag:role:web too tag:role:db\n"
    r = _post(control, "/v1/policies/validate", {"source": bad}, viewer)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["valid"] is False and body["rules"] == 0
    assert body["errors"] == [{"line": 2, "column": 25, "message": "expected 'to', got 'too'"}]

    ok = _post(control, "/v1/policies/validate", {"source": POLICY}, viewer).json()
    assert ok == {"valid": True, "errors": [], "rules": 2}


@pytest.mark.parametrize(
    ("source", "line", "column", "fragment"),
    [
        ("", 1, 1, "empty"),
        ("allow from any to any\n", 1, 1, "version"),
        ("version 1\nallow from tag:web to any\n", 2, 12, "key:value"),
        ("version 1\nallow from any to any port tcp/99999\n", 2, 32, "above 65535"),
        ("version 1\nallow from any to any \u00e9\n", 2, 23, "U+00E9"),
    ],
)
def test_validate_errors(control, source, line, column, fragment) -> None:  # type: ignore[no-untyped-def]
    body = _post(control, "/v1/policies/validate", {"source": source}).json()
    assert body["valid"] is False
    (err,) = body["errors"]
    assert (err["line"], err["column"]) == (line, column), err
    assert fragment in err["message"]


def test_validate_needs_a_key_and_bounds_the_text(control) -> None:  # type: ignore[no-untyped-def]
    r = control.client.post("/v1/policies/validate", json={"source": POLICY})
    assert r.status_code == 401 and "API key" in r.json()["detail"]
    r = _post(control, "/v1/policies/validate", {"source": "x" * (1 << 20 + 1)})
    assert r.status_code == 422 and "source" in r.json()["detail"]
    r = _post(control, "/v1/policies/validate", {"text": POLICY})
    assert r.status_code == 422 and "source" in r.json()["detail"]


# --- create, read --------------------------------------------------------------------------


def test_create_signs_the_next_version_with_the_ca(control) -> None:  # type: ignore[no-untyped-def]
    operator = control.new_key("operator")
    r = _post(control, "/v1/policies", {"source": POLICY, "comment": "first"}, operator)
    assert r.status_code == 201, r.text
    first = r.json()
    assert first["version"] == 1 and first["rules"] == 2 and first["comment"] == "first"
    assert r.headers["location"] == "/v1/policies/1"
    # The operator wrote "version 7": the service numbers versions, so this is 2.
    second = _create(control, POLICY.replace("version 1", "version 7"))
    assert second["version"] == 2
    assert second["source"].startswith("version 2\n")

    bundle = control.ctx.ca.ca.bundle()
    signed = base64.b64decode(second["signed"])
    doc = SignedPolicy.from_bytes(signed, bundle)
    assert doc.version == 2
    # Rule ids keep the operator's line numbers.
    assert [r.id for r in doc.policy.rules] == ["line:3", "line:4"]
    # A node holding version 1 accepts it; one holding 2 refuses 1 (older).
    held = SignedPolicy.from_bytes(base64.b64decode(first["signed"]), bundle)
    assert accept_policy(held, signed, bundle).outcome is Outcome.ACCEPTED
    refused = accept_policy(doc, base64.b64decode(first["signed"]), bundle)
    assert refused.outcome is Outcome.REFUSED and refused.error is not None
    assert refused.error.reason == "older"

    audit = control.client.portal.call(_audit_actions, control.ctx.db)
    assert audit.count("policy.create") == 2


async def _audit_actions(db):  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    async with db.session() as s:
        return list((await s.execute(select(AuditEntry.action))).scalars())


def test_create_refusals(control) -> None:  # type: ignore[no-untyped-def]
    viewer = control.new_key("viewer")
    r = _post(control, "/v1/policies", {"source": POLICY}, viewer)
    assert r.status_code == 403 and "operator" in r.json()["detail"]
    r = _post(control, "/v1/policies", {"source": "version 1\nallow from nobody to any\n"})
    assert r.status_code == 422
    assert r.json()["detail"].startswith("source line 2, column 12: expected a selector")
    r = _post(control, "/v1/policies", {"source": POLICY, "comment": "c" * 257})
    assert r.status_code == 422 and "comment" in r.json()["detail"]
    r = _post(control, "/v1/policies", {"source": POLICY, "comment": "a\u0000"})
    assert r.status_code == 422 and "comment" in r.json()["detail"]
    # Comments may hold anything but NUL, which no database text column can store.
    r = _post(control, "/v1/policies", {"source": POLICY + "# a\u0000b\n"})
    assert r.status_code == 422
    assert r.json()["detail"] == "source line 5, column 4: unexpected character U+0000"
    assert control.client.get("/v1/policies", headers=control.auth()).json()["items"] == []


def test_current_get_and_paging(control) -> None:  # type: ignore[no-untyped-def]
    viewer = control.new_key("viewer")
    h = control.auth(viewer)
    r = control.client.get("/v1/policies/current", headers=h)
    assert r.status_code == 404 and "no policy" in r.json()["detail"]
    for i in range(5):
        _create(control, comment=f"c{i}")
    cur = control.client.get("/v1/policies/current", headers=h).json()
    assert cur["version"] == 5 and cur["comment"] == "c4"
    three = control.client.get("/v1/policies/3", headers=h).json()
    assert three["version"] == 3 and three["source"].startswith("version 3\n")
    r = control.client.get("/v1/policies/99", headers=h)
    assert r.status_code == 404 and "99" in r.json()["detail"]
    assert control.client.get("/v1/policies/0", headers=h).status_code == 422

    page = control.client.get("/v1/policies?limit=2", headers=h).json()
    assert [p["version"] for p in page["items"]] == [5, 4] and page["next_before"] == 4
    page = control.client.get("/v1/policies?limit=2&before=4", headers=h).json()
    assert [p["version"] for p in page["items"]] == [3, 2] and page["next_before"] == 2
    page = control.client.get("/v1/policies?limit=2&before=2", headers=h).json()
    assert [p["version"] for p in page["items"]] == [1] and page["next_before"] is None
    assert "source" not in page["items"][0]


def test_concurrent_creates_get_distinct_versions(control) -> None:  # type: ignore[no-untyped-def]
    results: list[int] = []
    errors: list[str] = []

    def worker(i: int) -> None:
        r = _post(control, "/v1/policies", {"source": POLICY, "comment": f"w{i}"})
        if r.status_code == 201:
            results.append(r.json()["version"])
        else:
            errors.append(r.text)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(results) == [1, 2, 3, 4, 5, 6]


# --- rollback ------------------------------------------------------------------------------


def test_rollback_is_a_new_version_with_old_content(control) -> None:  # type: ignore[no-untyped-def]
    _create(control)
    _create(control, "version 1\ndeny from any to any\n")
    r = _post(control, "/v1/policies/1/rollback", {"comment": "undo"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["version"] == 3 and body["rolled_back_from"] == 1 and body["comment"] == "undo"
    assert body["source"] == POLICY.replace("version 1", "version 3")
    doc = SignedPolicy.from_bytes(base64.b64decode(body["signed"]), control.ctx.ca.ca.bundle())
    assert doc.version == 3 and len(doc.policy.rules) == 2
    cur = control.client.get("/v1/policies/current", headers=control.auth()).json()
    assert cur["version"] == 3
    # No body: a default comment.
    r = control.client.post("/v1/policies/2/rollback", headers=control.auth())
    assert r.status_code == 201 and r.json()["comment"] == "rollback to 2"
    assert "policy.rollback" in control.client.portal.call(_audit_actions, control.ctx.db)


def test_rollback_refusals(control) -> None:  # type: ignore[no-untyped-def]
    r = _post(control, "/v1/policies/7/rollback", {})
    assert r.status_code == 404 and "no policy version 7" in r.json()["detail"]
    _create(control)
    r = _post(control, "/v1/policies/1/rollback", {})
    assert r.status_code == 409 and "current" in r.json()["detail"]
    viewer = control.new_key("viewer")
    _create(control)
    r = _post(control, "/v1/policies/1/rollback", {}, viewer)
    assert r.status_code == 403


# --- dry run -------------------------------------------------------------------------------


def _nodes(control) -> None:  # type: ignore[no-untyped-def]
    enroll(control, "web-1", ["role:web"])
    enroll(control, "web-2", ["role:web", "env:lab"])
    enroll(control, "db-1", ["role:db"])
    enroll(control, "db-2", ["role:db"])
    enroll(control, "ops-1", ["role:ops"])
    enroll(control, "gone-1", ["role:web"], status="revoked")


def test_dry_run_who_could_reach_db_after_the_change(control) -> None:  # type: ignore[no-untyped-def]
    _nodes(control)
    _create(control, "version 1\nallow from tag:role:ops to tag:role:db port tcp/5432\n")
    change = (
        "version 1\n"
        "deny from tag:env:lab to tag:role:db\n"
        "allow from tag:role:web to tag:role:db port tcp/5432\n"
    )
    viewer = control.new_key("viewer")
    r = _post(
        control,
        "/v1/policies/dry-run",
        {"source": change, "to": "db-1", "proto": "tcp", "port": 5432},
        viewer,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["current_version"] == 1 and body["targets"] == ["db-1"]
    assert [(p["node"], p["rule_id"]) for p in body["reachable"]] == [("web-1", "line:3")]
    assert body["reachable"][0]["rule"] == "allow from tag:role:web to tag:role:db port tcp/5432"
    assert [p["node"] for p in body["gained"]] == ["web-1"]
    # ops-1 could reach db-1 before (line 2 of version 1) and no longer can.
    (lost,) = body["lost"]
    assert (lost["node"], lost["was_rule_id"], lost["rule_id"]) == (
        "ops-1",
        "line:2",
        "default-deny",
    )
    # gone-1 is revoked: not a live node; web-2 is denied by line 2.
    assert body["evaluated"] == 4

    r = _post(
        control,
        "/v1/policies/dry-run",
        {"source": change, "to": "tag:role:db", "proto": "tcp", "port": 5432},
    )
    body = r.json()
    assert body["targets"] == ["db-1", "db-2"]
    assert sorted((p["node"], p["target"]) for p in body["gained"]) == [
        ("web-1", "db-1"),
        ("web-1", "db-2"),
    ]
    assert len(body["lost"]) == 2


def test_dry_run_without_a_current_policy(control) -> None:  # type: ignore[no-untyped-def]
    _nodes(control)
    r = _post(
        control,
        "/v1/policies/dry-run",
        {"source": "version 1\nallow from any to any proto icmp\n", "to": "web-1", "proto": "icmp"},
    )
    body = r.json()
    assert body["current_version"] is None
    assert sorted(p["node"] for p in body["gained"]) == ["db-1", "db-2", "ops-1", "web-2"]
    assert body["lost"] == []


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"to": "db-9", "proto": "tcp", "port": 1}, 404, "no active node is named 'db-9'"),
        ({"to": "gone-1", "proto": "tcp", "port": 1}, 404, "gone-1"),
        ({"to": "Bad Name", "proto": "tcp", "port": 1}, 422, "to:"),
        ({"to": "tag:web", "proto": "tcp", "port": 1}, 422, "to:"),
        ({"to": "db-1", "proto": "tcp"}, 422, "port: tcp needs a port"),
        ({"to": "db-1", "proto": "icmp", "port": 7}, 422, "port: icmp has no ports"),
        ({"to": "db-1", "proto": "sctp", "port": 7}, 422, "proto"),
        ({"to": "db-1", "proto": "tcp", "port": 70000}, 422, "port"),
    ],
)
def test_dry_run_refusals(control, body, status, fragment) -> None:  # type: ignore[no-untyped-def]
    _nodes(control)
    r = _post(control, "/v1/policies/dry-run", {"source": POLICY, **body})
    assert r.status_code == status, r.text
    assert fragment in r.json()["detail"]


def test_dry_run_invalid_source_names_the_position(control) -> None:  # type: ignore[no-untyped-def]
    r = _post(
        control,
        "/v1/policies/dry-run",
        {"source": "version 1\nallow from any\n", "to": "tag:role:db", "proto": "icmp"},
    )
    assert r.status_code == 422
    assert r.json()["detail"] == "source line 2, column 15: expected 'to', got end of line"


# --- the version rewrite (pure) -------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    blank=st.lists(st.sampled_from(["", "  ", "# c", "\t# x", "\r"]), max_size=3),
    version=st.integers(1, 10**17),
    new=st.integers(1, 2**31 - 1),
    rules=st.lists(
        st.sampled_from(
            ["allow from any to any", "deny from tag:a:b to any port tcp/1  # c", "", "# x"]
        ),
        max_size=4,
    ),
)
def test_with_version_changes_only_the_number(blank, version, new, rules) -> None:  # type: ignore[no-untyped-def]
    source = "\n".join([*blank, f"version {version}  # v", *rules]) + "\n"
    old = check_source(source)
    out = with_version(source, new)
    policy = Policy.parse(out)
    assert policy.version == new
    assert [(r.line, r.text) for r in policy.rules] == [(r.line, r.text) for r in old.rules]


def test_check_source_raises_with_position() -> None:
    with pytest.raises(InvalidSource) as info:
        check_source("version 1\n\n  deny frm any to any\n")
    assert (info.value.problem.line, info.value.problem.column) == (3, 8)
    # A lone surrogate (pydantic refuses them in a request; a caller of the library may
    # still pass one) is reported at its position, not raised as UnicodeEncodeError.
    with pytest.raises(InvalidSource) as info:
        check_source("version 1\nallow from any to any # \ud800\n")
    assert (info.value.problem.line, info.value.problem.column) == (2, 25)
    assert "not UTF-8" in str(info.value)
