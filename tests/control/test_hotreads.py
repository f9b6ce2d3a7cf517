"""The hot read answered before routing (``control.hotreads``): only when the routed
handler would give the same answer, byte for byte, and never for a key or a node the
replica has not checked or loaded itself."""

from __future__ import annotations

from typing import Any

from tests.control.report_helpers import bearer, make_node, revoke_node, usable_key
from x0tta6bl4.control.hotreads import HotReads


class _Downstream:
    """The rest of the application, as HotReads sees it: records what reached it."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        await send({"type": "http.response.start", "status": 599, "headers": []})
        await send({"type": "http.response.body", "body": b"routed"})


def _call(control: Any, path: str, key: str | None, query: bytes = b"") -> tuple[int, bytes, int]:
    """GET ``path`` through HotReads in front of a recording downstream app, in the
    running application's event loop: (status, body, downstream calls)."""
    downstream = _Downstream()
    middleware = HotReads(downstream)
    headers = [(b"authorization", f"Bearer {key}".encode())] if key else []
    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "query_string": query,
        "headers": headers,
        "app": control.client.app,
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        raise AssertionError("a GET is answered without reading a body")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def run() -> None:
        await middleware(scope, receive, send)

    control.client.portal.call(run)
    status = sent[0]["status"]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return status, body, downstream.calls


def test_a_cached_read_is_answered_before_routing_with_the_routed_bytes(control) -> None:  # type: ignore[no-untyped-def]
    make_node(control, "h-1", ["role:web"])
    key = usable_key(control, "viewer")
    routed = control.client.get("/v1/nodes/h-1", headers=bearer(key))
    assert routed.status_code == 200
    status, body, calls = _call(control, "/v1/nodes/h-1", key)
    assert (status, calls) == (200, 0)
    assert body == routed.content
    # Through the whole application too: same bytes, same content type.
    again = control.client.get("/v1/nodes/h-1", headers=bearer(key))
    assert again.content == routed.content
    assert again.headers["content-type"] == routed.headers["content-type"]


def test_anything_the_replica_has_not_checked_goes_through_the_router(control) -> None:  # type: ignore[no-untyped-def]
    make_node(control, "h-2")
    key = usable_key(control, "viewer")
    assert control.client.get("/v1/nodes/h-2", headers=bearer(key)).status_code == 200
    # no key, a wrong key, a node never loaded, a query string, another method's path
    assert _call(control, "/v1/nodes/h-2", None)[2] == 1
    assert _call(control, "/v1/nodes/h-2", key[:-2] + "zz")[2] == 1
    assert _call(control, "/v1/nodes/h-3", key)[2] == 1
    assert _call(control, "/v1/nodes/h-2", key, query=b"x=1")[2] == 1
    assert _call(control, "/v1/nodes/h-2/tags", key)[2] == 1
    assert _call(control, "/v1/nodes/Bad_Name", key)[2] == 1
    # and the router still gives its answers for them
    assert control.client.get("/v1/nodes/h-2").status_code == 401
    assert control.client.get("/v1/nodes/h-3", headers=bearer(key)).status_code == 404


def test_a_revocation_is_seen_by_the_fast_path_as_by_the_router(control) -> None:  # type: ignore[no-untyped-def]
    a = make_node(control, "h-4")
    key = usable_key(control, "viewer")
    before = control.client.get("/v1/nodes/h-4", headers=bearer(key)).json()
    assert before["status"] == "active"
    revoke_node(control, a)
    # The revocation list version moved: the cached answer is no longer served by either.
    after = control.client.get("/v1/nodes/h-4", headers=bearer(key)).json()
    assert after["status"] == "revoked"
    status, body, calls = _call(control, "/v1/nodes/h-4", key)
    assert (status, calls) == (200, 0)
    assert b'"revoked"' in body
