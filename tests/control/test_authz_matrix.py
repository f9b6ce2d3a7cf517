"""The authorization policy of every route, as a table, checked against the running app.

``MIN_ROLE`` says who may call each (method, path): ``public`` (nobody needs to show
anything), ``node`` (a request signed by an enrolled node's current certificate; API keys
are refused), or the lowest API-key role (viewer < operator < admin; node signatures are
refused). The routes are enumerated from ``app.routes``: a route added without an entry
here (or an entry whose route is gone) fails ``test_every_route_has_a_policy_entry``.

``test_authorization_matrix`` then calls every route as each of: no credentials, a
viewer, an operator and an admin key, a node-signed request, and a revoked key, on SQLite
and on PostgreSQL + Redis (the ``control`` fixture; the whole matrix takes a few seconds
on either). Refusals must be 401 (no or wrong kind of credentials, revoked key) or 403 (a
role too low, naming the role needed) with a ``detail``, and change nothing in the
database; allowed calls must get anything but 401/403 (2xx, or 404/409/422 for a request
the route itself turns down).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.control.enroll_helpers import build_sealed, create_token
from tests.control.nodes_helper import TestNode, enroll
from x0tta6bl4.api.push import stream_path, sync_path
from x0tta6bl4.crypto.hybrid import HybridPrivateKey
from x0tta6bl4.identity.request import CertificateRequest

PUBLIC = "public"
NODE = "node"
VIEWER, OPERATOR, ADMIN = "viewer", "operator", "admin"

# The policy. (method, path template) -> who may call it.
MIN_ROLE: dict[tuple[str, str], str] = {
    # Liveness, readiness, metrics and the API description: for load balancers, scrapers
    # and humans; they reveal nothing a caller could not learn by connecting.
    ("GET", "/health"): PUBLIC,
    ("GET", "/ready"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", "/docs/oauth2-redirect"): PUBLIC,
    ("GET", "/redoc"): PUBLIC,
    # The topology page and its static files: no data in them (the page reads the API
    # with the viewer key the user gives it).
    ("GET", "/ui"): PUBLIC,
    ("GET", "/ui/"): PUBLIC,
    ("GET", "/ui/{asset:path}"): PUBLIC,
    # Enrollment: the join token inside the sealed request is the credential.
    ("GET", "/v1/enroll/key"): PUBLIC,
    ("POST", "/v1/enroll/challenge"): PUBLIC,
    ("POST", "/v1/enroll"): PUBLIC,
    # The revocation list is CA-signed: anyone may fetch and verify it.
    ("GET", "/v1/crl"): PUBLIC,
    ("GET", "/v1/crl/version"): PUBLIC,
    # What nodes call, signed with their certified key.
    ("POST", "/v1/reports"): NODE,
    ("POST", "/v1/renew"): NODE,
    ("GET", "/v1/stream"): NODE,
    ("GET", "/v1/sync"): NODE,
    # Reading the fleet.
    ("GET", "/v1/nodes"): VIEWER,
    ("GET", "/v1/nodes/{name}"): VIEWER,
    ("GET", "/v1/topology"): VIEWER,
    ("GET", "/v1/events"): VIEWER,
    ("GET", "/v1/tokens"): VIEWER,
    ("GET", "/v1/policies"): VIEWER,
    ("GET", "/v1/policies/current"): VIEWER,
    ("GET", "/v1/policies/{version}"): VIEWER,
    ("POST", "/v1/policies/validate"): VIEWER,
    ("POST", "/v1/policies/dry-run"): VIEWER,
    ("GET", "/v1/revocations"): VIEWER,
    # Changing the fleet.
    ("PATCH", "/v1/nodes/{name}"): OPERATOR,
    ("POST", "/v1/tokens"): OPERATOR,
    ("DELETE", "/v1/tokens/{token_id}"): OPERATOR,
    ("POST", "/v1/policies"): OPERATOR,
    ("POST", "/v1/policies/{version}/rollback"): OPERATOR,
    ("POST", "/v1/revocations"): OPERATOR,
    # Who may do all of that, and what they did.
    ("POST", "/v1/api-keys"): ADMIN,
    ("GET", "/v1/api-keys"): ADMIN,
    ("DELETE", "/v1/api-keys/{key_id}"): ADMIN,
    ("GET", "/v1/audit"): ADMIN,
}

CALLERS = ("none", VIEWER, OPERATOR, ADMIN, NODE, "revoked")
_RANK = {VIEWER: 1, OPERATOR: 2, ADMIN: 3}
# An allowed caller may still be turned down by the route itself, never with 401/403.
ALLOWED_STATUSES = frozenset(range(200, 300)) | {404, 409, 422}

POLICY = "version 1\nallow from tag:role:web to tag:role:db port tcp/5432\n"


def app_routes() -> set[tuple[str, str]]:
    """(method, path) of every route of the app. HEAD is left out: Starlette adds it to
    every GET route, and it answers exactly as GET does."""
    from fastapi.routing import iter_route_contexts

    from x0tta6bl4.control.app import create_app

    app = create_app()
    out: set[tuple[str, str]] = set()
    # FastAPI 0.16x keeps included routers as lazy entries; this walks into them.
    for route in iter_route_contexts(app.routes):
        assert route.path is not None, route
        for method in route.methods or ():
            if method != "HEAD":
                out.add((method, route.path))
    return out


@dataclass(frozen=True)
class Expect:
    status: int | None  # None: allowed (anything in ALLOWED_STATUSES)
    detail: str = ""  # a fragment the refusal's detail must contain


ALLOWED = Expect(None)


def expected(min_role: str, caller: str) -> Expect:
    if min_role == PUBLIC:
        return ALLOWED
    if min_role == NODE:
        return ALLOWED if caller == NODE else Expect(401, "node request not signed")
    if caller in ("none", NODE):
        return Expect(401, "an API key is required")
    if caller == "revoked":
        return Expect(401, "this API key was revoked")
    if _RANK[caller] >= _RANK[min_role]:
        return ALLOWED
    return Expect(403, f"this needs the {min_role} role; the key has {caller}")


def test_every_route_has_a_policy_entry() -> None:
    routes = app_routes()
    missing = sorted(routes - MIN_ROLE.keys())
    stale = sorted(MIN_ROLE.keys() - routes)
    assert not missing, f"routes without an entry in MIN_ROLE (add their policy): {missing}"
    assert not stale, f"MIN_ROLE entries for routes that do not exist: {stale}"


def test_summaries_name_the_role() -> None:
    """The convention: each route's summary says who may call it, as the table does."""
    from fastapi.routing import APIRoute, iter_route_contexts

    from x0tta6bl4.control.app import create_app

    wrong = []
    for route in iter_route_contexts(create_app().routes):
        if not isinstance(route.original_route, APIRoute) or route.path is None:
            continue
        for method in route.methods or ():
            role = MIN_ROLE[(method, route.path)]
            summary = route.summary or ""
            if role == PUBLIC:
                continue  # summaries say "public", "no auth" or nothing (health)
            want = "(node-signed)" if role == NODE else f"({role})"
            if want not in summary:
                wrong.append(f"{method} {route.path}: {summary!r} does not say {want}")
    assert not wrong, "\n".join(wrong)


# --- the matrix --------------------------------------------------------------------------


@dataclass
class World:
    """What the requests refer to: keys of each role, a revoked key, nodes, a token."""

    control: Any
    keys: dict[str, str]
    caller_node: TestNode
    victim: TestNode
    enroll_token: str
    spare_token_id: str
    counter: Callable[[], int] = field(default_factory=lambda: itertools.count().__next__)

    def path(self, template: str) -> str:
        return {
            "/v1/nodes/{name}": "/v1/nodes/matrix-target",
            "/v1/tokens/{token_id}": f"/v1/tokens/{self.spare_token_id}",
            "/v1/api-keys/{key_id}": "/v1/api-keys/000000000000",  # no such key: 404
            "/v1/policies/{version}": "/v1/policies/1",
            "/v1/policies/{version}/rollback": "/v1/policies/1/rollback",
            "/v1/stream": stream_path(0, 0),
            "/v1/sync": sync_path(0, 0),
            "/ui/{asset:path}": "/ui/app.js",
        }.get(template, template)

    def body(self, method: str, template: str) -> Any:
        """A valid body for the route, so an allowed call gets as far as the route goes.
        Built per call: enrollment needs a fresh challenge and name each time."""
        n = self.counter()
        node = self.caller_node
        bodies: dict[tuple[str, str], Callable[[], Any]] = {
            ("POST", "/v1/enroll/challenge"): lambda: {
                "static_key": _b64(HybridPrivateKey.generate().public_key().to_bytes())
            },
            ("POST", "/v1/enroll"): lambda: build_sealed(
                self.control.client, self.enroll_token, f"matrix-enrolled-{n}"
            )[0],
            ("POST", "/v1/reports"): lambda: {"at": _now(), "sessions": 1},
            ("POST", "/v1/renew"): lambda: {
                "csr": CertificateRequest.build(
                    node.name, list(node.tags), node.static_key.public_key(), node.signing_key
                ).pem.decode()
            },
            ("PATCH", "/v1/nodes/{name}"): lambda: {"tags": ["role:db"]},
            ("POST", "/v1/tokens"): lambda: {"tags": ["role:web"], "comment": "matrix"},
            ("POST", "/v1/policies"): lambda: {"source": POLICY, "comment": "matrix"},
            ("POST", "/v1/policies/validate"): lambda: {"source": POLICY},
            ("POST", "/v1/policies/dry-run"): lambda: {
                "source": POLICY,
                "to": "matrix-target",
                "proto": "tcp",
                "port": 5432,
            },
            ("POST", "/v1/policies/{version}/rollback"): lambda: {"comment": "matrix"},
            # The victim, never the calling node: its certificate must stay valid.
            ("POST", "/v1/revocations"): lambda: {"serial": self.victim.serial_hex},
            ("POST", "/v1/api-keys"): lambda: {"name": f"matrix-{n}", "role": "viewer"},
        }
        make = bodies.get((method, template))
        return None if make is None else make()


def _b64(raw: bytes) -> str:
    from x0tta6bl4.api.enroll import b64

    return b64(raw)


def _now() -> float:
    import time

    return time.time()


@dataclass
class Answer:
    status: int
    detail: str
    headers: dict[str, str]


_BUILT = object()  # sentinel: the world's valid path or body for the route


def call(
    world: World,
    method: str,
    template: str,
    caller: str,
    *,
    path: str | None = None,
    payload: Any = _BUILT,
) -> Answer:
    """One request to the route as ``caller``; ``path`` (with its query) and ``payload``
    replace the valid ones the world builds."""
    client = world.control.client
    path = path or world.path(template)
    if payload is _BUILT:
        payload = world.body(method, template)
    body = b"" if payload is None else json.dumps(payload).encode()
    headers: dict[str, str] = {}
    if body:
        headers["content-type"] = "application/json"
    if caller == NODE:
        headers.update(world.caller_node.headers(method, path, body))
    elif caller != "none":
        headers["authorization"] = f"Bearer {world.keys[caller]}"
    if template == "/v1/stream":
        # The stream never ends by itself: read the status, then hang up.
        with client.stream(method, path, headers=headers) as r:
            raw = r.read() if r.status_code != 200 else b""
            r.close()
            return Answer(r.status_code, _detail(raw), dict(r.headers))
    r = client.request(method, path, content=body or None, headers=headers)
    return Answer(r.status_code, _detail(r.content), dict(r.headers))


def _detail(raw: bytes) -> str:
    try:
        data = json.loads(raw)
    except ValueError:
        return ""
    detail = data.get("detail") if isinstance(data, dict) else None
    return detail if isinstance(detail, str) else json.dumps(detail)


def make_world(control: Any) -> World:
    keys = {role: control.new_key(role, f"matrix-{role}") for role in (VIEWER, OPERATOR, ADMIN)}
    # Revoked before its first use, so no replica has it cached as valid.
    revoked = control.new_key(VIEWER, "matrix-revoked")
    r = control.client.delete(f"/v1/api-keys/{revoked.split('_')[1]}", headers=control.auth())
    assert r.status_code == 200, r.text
    keys["revoked"] = revoked
    caller = enroll(control, "matrix-node", ["role:web"])
    enroll(control, "matrix-target", ["role:db"])
    victim = enroll(control, "matrix-victim", ["role:db"])
    r = control.client.post("/v1/policies", json={"source": POLICY}, headers=control.auth())
    assert r.status_code == 201, r.text
    token = create_token(control, max_uses=100)["token"]
    spare = create_token(control, comment="to revoke")["id"]
    return World(control, keys, caller, victim, token, spare)


def row_counts(control: Any) -> dict[str, int]:
    from sqlalchemy import func, select

    from x0tta6bl4.control.models import Base

    async def run() -> dict[str, int]:
        async with control.ctx.db.session() as s:
            return {
                t.name: int((await s.execute(select(func.count()).select_from(t))).scalar_one())
                for t in Base.metadata.sorted_tables
            }

    counts: dict[str, int] = control.client.portal.call(run)
    return counts


def test_authorization_matrix(control) -> None:  # type: ignore[no-untyped-def]
    world = make_world(control)
    cells = [
        (method, template, caller, expected(min_role, caller))
        for (method, template), min_role in sorted(MIN_ROLE.items(), key=lambda kv: kv[0][::-1])
        for caller in CALLERS
    ]
    failures: list[str] = []

    # Refusals first, all of them, and nothing in the database may change meanwhile.
    before = row_counts(control)
    for method, template, caller, want in cells:
        if want.status is None:
            continue
        got = call(world, method, template, caller)
        cell = f"{method} {template} as {caller}"
        if got.status != want.status:
            failures.append(f"{cell}: {got.status} {got.detail!r}, expected {want.status}")
        elif want.detail not in got.detail:
            failures.append(f"{cell}: detail {got.detail!r} does not say {want.detail!r}")
        elif (
            got.status == 401
            and MIN_ROLE[(method, template)] != NODE
            and got.headers.get("www-authenticate") != "Bearer"
        ):
            failures.append(f"{cell}: 401 without WWW-Authenticate: Bearer")
    after = row_counts(control)
    changed = {t: (before[t], after[t]) for t in before if before[t] != after[t]}
    assert not changed, f"refused requests changed rows (before, after): {changed}"

    for method, template, caller, want in cells:
        if want.status is not None:
            continue
        got = call(world, method, template, caller)
        if got.status not in ALLOWED_STATUSES:
            failures.append(
                f"{method} {template} as {caller} (allowed): {got.status} {got.detail!r}"
            )
    assert not failures, f"{len(failures)} cells disagree with MIN_ROLE:\n" + "\n".join(failures)


def test_the_table_matches_the_documented_roles() -> None:
    """docs/control.md's role table, restated: viewers only read (validate and dry-run
    store nothing), operators change the fleet, only admins manage keys and read the
    audit log."""

    def granted(role: str) -> set[tuple[str, str]]:
        return {k for k, v in MIN_ROLE.items() if v in _RANK and _RANK[role] >= _RANK[v]}

    viewer_writes = {k for k in granted(VIEWER) if k[0] != "GET"}
    assert viewer_writes == {("POST", "/v1/policies/validate"), ("POST", "/v1/policies/dry-run")}
    admin_only = {k for k, v in MIN_ROLE.items() if v == ADMIN}
    assert {p for _, p in admin_only} == {"/v1/api-keys", "/v1/api-keys/{key_id}", "/v1/audit"}
    assert not admin_only & granted(OPERATOR)
