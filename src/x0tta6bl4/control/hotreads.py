"""The hot read answered before routing: ``GET /v1/nodes/{name}`` from the replica's cache.

A cached node detail costs microseconds to find, but FastAPI's routing (a regular
expression per route), dependency resolution and response objects cost several times
that per request, which under 50 concurrent readers shows up as queueing in the tail.
This ASGI middleware answers such a read itself, and only when the routed handler would
give the very same answer:

* the path is exactly ``/v1/nodes/<name>``, method GET, no query string;
* the bearer key is in this replica's verified-key cache (``auth.KeyCache``: a key seen
  and checked within ``KEY_CACHE_S``; every role may read a node), so a revoked key stops
  working here exactly when it stops working through the router;
* the node's encoded detail is in the replica's cache and may be served
  (``routers.nodes.cached_detail``: fresh, or stale for a short while with one refresh
  started).

Anything else (first use of a key, a miss, any error case) goes through FastAPI as before,
which fills both caches. The answer is byte for byte the routed one (a test compares).
"""

from __future__ import annotations

from typing import Any

from x0tta6bl4.api.reports import NODE_NAME_PATTERN

_PREFIX = "/v1/nodes/"
_ROUTE_PATH = "/v1/nodes/{name}"


class HotReads:
    """``app.add_middleware(HotReads)``; see the module's notes."""

    def __init__(self, app: Any) -> None:
        import re

        self.app = app
        self._name = re.compile(NODE_NAME_PATTERN)
        self._route: Any = None  # the routed APIRoute, for whoever labels by route

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "GET"
            and scope["path"].startswith(_PREFIX)
            and not scope.get("query_string")
        ):
            body = self._cached(scope)
            if body is not None:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [
                            (b"content-length", str(len(body)).encode()),
                            (b"content-type", b"application/json"),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        if self._route is not None:
            await self.app(scope, receive, send)
            return

        async def learn(message: Any) -> None:
            # The route, learned from the router as it answers (FastAPI nests included
            # routes, so app.routes may not list it): before any read from the cache
            # this answer may have filled.
            if self._route is None and getattr(scope.get("route"), "path", None) == _ROUTE_PATH:
                self._route = scope["route"]
            await send(message)

        await self.app(scope, receive, learn)

    def _cached(self, scope: Any) -> bytes | None:
        from x0tta6bl4.control.routers.nodes import cached_detail

        name = scope["path"][len(_PREFIX) :]
        if not self._name.fullmatch(name):
            return None
        app = scope.get("app")
        c = getattr(getattr(app, "state", None), "ctl", None)
        if c is None:
            return None
        token = _bearer(scope["headers"])
        if token is None or c.key_cache.get(token) is None:
            return None
        body = cached_detail(app, c, name)
        if body is not None and self._route is not None:
            # Known by now: a cached answer exists only after the router gave one.
            scope["route"] = self._route
        return body


def _bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    for key, value in headers:
        if key == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token if scheme.lower() == "bearer" and token else None
    return None
