"""The agent's local API: JSON lines over a Unix socket (no root needed, no network port).

One request line per connection; the answer is one line, or for ``listen`` and ``trace``
an acknowledgement and then a stream of lines until the client hangs up::

    {"op": "status"}                                  -> {"ok": true, "status": {...}}
    {"op": "send", "dst": N, "port": P, "data": B64}  -> {"ok": true}
    {"op": "ping", "dst": N, "timeout": S}            -> {"ok": true, "rtt_s", "hops", "via"}
    {"op": "listen", "port": P}                       -> {"ok": true}, {"src", "port", "data"}...
    {"op": "trace"}                                   -> {"ok": true}, {"t", "kind", "fields"}...

Errors: ``{"ok": false, "error": "<one sentence>"}``. The socket is created mode 0600: only
the agent's user (and root) may use the node's identity to send.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import structlog

from x0tta6bl4.errors import X0tError
from x0tta6bl4.node.dataplane import IP_PORT

if TYPE_CHECKING:
    from x0tta6bl4.node.agent import Agent, Inbound

log = structlog.get_logger("x0tta6bl4.node.api")

MAX_REQUEST: Final = 256 * 1024
"""Longest request line (a 65,535-byte payload is about 87 KB of base64)."""
MAX_PING_TIMEOUT: Final = 30.0


class ApiError(X0tError):
    """A request the API refuses; the message goes back to the client."""


_KINDS: Final = {int: "an integer", str: "a string"}


def _field(req: dict[str, Any], name: str, kind: type) -> Any:
    v = req.get(name)
    if not isinstance(v, kind) or isinstance(v, bool):
        raise ApiError(f"field '{name}' must be {_KINDS.get(kind, kind.__name__)}")
    return v


def _port(req: dict[str, Any]) -> int:
    port = _field(req, "port", int)
    if not 1 <= port < IP_PORT:
        raise ApiError(f"port {port} out of range 1..{IP_PORT - 1} ({IP_PORT} carries TUN traffic)")
    return int(port)


class LocalApi:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._server: asyncio.AbstractServer | None = None
        self._path: Path | None = None
        self._clients: set[asyncio.Task[None]] = set()

    async def start(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a socket left by a killed run
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(path), limit=MAX_REQUEST
            )
        finally:
            os.umask(old)
        self._path = path

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for t in list(self._clients):
                t.cancel()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        if self._path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            try:
                line = await reader.readline()
            except (ValueError, asyncio.LimitOverrunError):
                await self._reply(writer, {"ok": False, "error": "request line too long"})
                return
            if not line:
                return
            try:
                try:
                    req = json.loads(line)
                except RecursionError:
                    raise ApiError("not JSON: nested too deeply") from None
                except UnicodeDecodeError:
                    raise ApiError("not JSON: not UTF-8") from None
                if not isinstance(req, dict):
                    raise ApiError("a request is a JSON object")
                await self._dispatch(req, reader, writer)
            except json.JSONDecodeError as exc:
                await self._reply(writer, {"ok": False, "error": f"not JSON: {exc.msg}"})
            except (X0tError, ValueError) as exc:
                await self._reply(writer, {"ok": False, "error": str(exc)})
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
        writer.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")
        await writer.drain()

    async def _dispatch(
        self, req: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        agent = self.agent
        op = req.get("op")
        if op == "status":
            await self._reply(writer, {"ok": True, "status": agent.status()})
        elif op == "send":
            dst = _field(req, "dst", str)
            port = _port(req)
            try:
                data = base64.b64decode(_field(req, "data", str), validate=True)
            except binascii.Error:
                raise ApiError("field 'data' is not base64") from None
            agent.send(dst, port, data)
            await self._reply(writer, {"ok": True, "bytes": len(data)})
        elif op == "ping":
            dst = _field(req, "dst", str)
            timeout = req.get("timeout", 2.0)
            if not isinstance(timeout, int | float) or isinstance(timeout, bool):
                raise ApiError("field 'timeout' must be a number of seconds")
            if not 0 < timeout <= MAX_PING_TIMEOUT:
                raise ApiError(f"timeout must be in (0, {MAX_PING_TIMEOUT:g}] seconds")
            via = agent.mesh.next_hop(dst)
            result = await agent.ping(dst, timeout)
            if result is None:
                await self._reply(
                    writer,
                    {
                        "ok": False,
                        "error": f"no answer from {dst} within {timeout:g} s",
                        "via": via,
                    },
                )
            else:
                rtt, hops = result
                await self._reply(
                    writer,
                    {"ok": True, "rtt_s": rtt, "hops": hops, "via": agent.mesh.next_hop(dst)},
                )
        elif op == "listen":
            await self._listen(_port(req), reader, writer)
        elif op == "trace":
            await self._trace(reader, writer)
        else:
            raise ApiError(f"unknown op {op!r} (status, send, ping, listen, trace)")

    async def _stream(
        self,
        q: asyncio.Queue[Any],
        render: Callable[[Any], dict[str, Any]],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """Acknowledge, then write one line per queued item until the client hangs up."""
        await self._reply(writer, {"ok": True})
        hangup = asyncio.ensure_future(reader.read())
        while True:
            get = asyncio.ensure_future(q.get())
            done, _ = await asyncio.wait({get, hangup}, return_when=asyncio.FIRST_COMPLETED)
            if get not in done:
                get.cancel()
                return
            await self._reply(writer, render(get.result()))

    async def _listen(
        self, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        from x0tta6bl4.node.agent import SUBSCRIBER_QUEUE

        q: asyncio.Queue[Inbound] = asyncio.Queue(SUBSCRIBER_QUEUE)
        self.agent.listeners.setdefault(port, set()).add(q)

        def render(item: Inbound) -> dict[str, Any]:
            data = base64.b64encode(item.payload).decode()
            return {"src": item.src, "port": item.port, "data": data}

        try:
            await self._stream(q, render, reader, writer)
        finally:
            qs = self.agent.listeners.get(port)
            if qs is not None:
                qs.discard(q)
                if not qs:
                    del self.agent.listeners[port]

    async def _trace(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from x0tta6bl4.node.agent import SUBSCRIBER_QUEUE

        q: asyncio.Queue[tuple[float, str, dict[str, Any]]] = asyncio.Queue(SUBSCRIBER_QUEUE)
        self.agent.trace_subscribers.add(q)

        def render(item: tuple[float, str, dict[str, Any]]) -> dict[str, Any]:
            t, kind, fields = item
            return {"t": t, "kind": kind, "fields": json.loads(json.dumps(fields, default=str))}

        try:
            await self._stream(q, render, reader, writer)
        finally:
            self.agent.trace_subscribers.discard(q)
