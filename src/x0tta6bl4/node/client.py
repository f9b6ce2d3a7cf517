"""A small SDK for the agent's local API (``node/api.py``): send and receive datagrams
through the mesh without a TUN device or root.

    from x0tta6bl4.node.client import NodeClient
    node = NodeClient("/var/lib/x0t/web-1/agent.sock")
    node.send("db-1", 7000, b"hello")
    for msg in node.listen(7000):
        print(msg.src, msg.data)

Blocking sockets on purpose: scripts and tests use it without an event loop.
"""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from x0tta6bl4.errors import X0tError


class NodeApiError(X0tError):
    """The agent refused a request, or is not running; the message says which."""


@dataclass(frozen=True, slots=True)
class Message:
    src: str
    port: int
    data: bytes


@dataclass(frozen=True, slots=True)
class PingResult:
    rtt: float
    hops: int
    via: str | None


class NodeClient:
    def __init__(self, socket_path: str | Path, timeout: float = 10.0) -> None:
        self.path = str(socket_path)
        self.timeout = timeout

    def _open(self, req: dict[str, Any], timeout: float | None = None) -> tuple[socket.socket, Any]:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout if timeout is None else timeout)
        try:
            s.connect(self.path)
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
            raise NodeApiError(
                f"no agent is listening on {self.path} (is 'x0t node run' up?)"
            ) from None
        except OSError as exc:
            s.close()
            raise NodeApiError(f"cannot reach the agent at {self.path}: {exc.strerror}") from None
        s.sendall(json.dumps(req).encode() + b"\n")
        return s, s.makefile("rb")

    def _call(self, req: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        s, f = self._open(req, timeout)
        try:
            line = f.readline()
        except TimeoutError:
            raise NodeApiError(f"the agent at {self.path} did not answer in time") from None
        finally:
            f.close()
            s.close()
        if not line:
            raise NodeApiError(f"the agent at {self.path} closed the connection")
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok"):
            raise NodeApiError(str(reply.get("error", "request refused")))
        return reply

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self._call({"op": "status"})["status"]
        return status

    def send(self, dst: str, port: int, data: bytes) -> None:
        self._call(
            {"op": "send", "dst": dst, "port": port, "data": base64.b64encode(data).decode()}
        )

    def ping(self, dst: str, timeout: float = 2.0) -> PingResult:
        r = self._call({"op": "ping", "dst": dst, "timeout": timeout}, timeout=timeout + 5.0)
        return PingResult(float(r["rtt_s"]), int(r["hops"]), r.get("via"))

    def _stream(self, req: dict[str, Any], timeout: float | None) -> Iterator[dict[str, Any]]:
        s, f = self._open(req, None)
        try:
            first = f.readline()
            if not first or not json.loads(first).get("ok"):
                err = json.loads(first).get("error") if first else "connection closed"
                raise NodeApiError(str(err))
            s.settimeout(timeout)
            while True:
                try:
                    line = f.readline()
                except TimeoutError:
                    return
                if not line:
                    return
                yield json.loads(line)
        finally:
            f.close()
            s.close()

    def listen(self, port: int, timeout: float | None = None) -> Iterator[Message]:
        """Messages to ``port`` as they arrive; stops after ``timeout`` seconds of silence."""
        for m in self._stream({"op": "listen", "port": port}, timeout):
            yield Message(str(m["src"]), int(m["port"]), base64.b64decode(m["data"]))

    def trace(self, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """The core's trace events as they happen."""
        yield from self._stream({"op": "trace"}, timeout)


__all__ = ["Message", "NodeApiError", "NodeClient", "PingResult"]
