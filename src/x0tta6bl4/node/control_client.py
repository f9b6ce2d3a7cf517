"""HTTP to the control plane, from the node: plain or node-signed JSON requests and the
server-sent event stream.

Standard library ``http.client`` (blocking; the agent runs it in a worker thread), so a
node carries no HTTP stack of its own; TLS in front of the service is ordinary HTTPS.
Every request the node makes after enrollment is signed with its certified ML-DSA-65 key
(``api.signing``); the service answers 401 with the reason when it refuses one.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from x0tta6bl4.api.signing import sign_request
from x0tta6bl4.crypto.sign import SigningKey
from x0tta6bl4.errors import X0tError
from x0tta6bl4.observability import tracing

# Bodies larger than this from the service are refused (a signed policy, a CRL, an
# enrollment result are all well under it).
MAX_RESPONSE = 4 << 20
MAX_EVENT = 1 << 20


class ControlError(X0tError):
    """The control plane refused a request or could not be reached. ``status`` is the
    HTTP status (0 when there was no answer)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Signer:
    key: SigningKey
    serial: int


class ControlClient:
    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ControlError(f"control-plane URL must be http(s)://HOST[:PORT], not {url!r}")
        self.url = url.rstrip("/")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._base = parts.path.rstrip("/")
        self.timeout = timeout

    def _connection(self, timeout: float | None) -> http.client.HTTPConnection:
        t = self.timeout if timeout is None else timeout
        if self._https:
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=t, context=_tls_context()
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=t)

    def _headers(
        self, method: str, path: str, body: bytes, signer: Signer | None
    ) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if body:
            headers["Content-Type"] = "application/json"
        if signer is not None:
            headers.update(sign_request(signer.key, signer.serial, method, path, body))
        tracing.inject(headers)  # traceparent while tracing is on: one trace across both
        return headers

    def request(
        self,
        method: str,
        path: str,
        payload: Any = None,
        *,
        signer: Signer | None = None,
        timeout: float | None = None,
        bearer: str | None = None,
    ) -> Any:
        """Send JSON, return the decoded JSON answer; ControlError on any failure.
        ``bearer``: an operator's API key (the node itself signs instead)."""
        full = self._base + path
        body = b"" if payload is None else json.dumps(payload).encode()
        headers = self._headers(method, full, body, signer)
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        conn = self._connection(timeout)
        try:
            conn.request(method, full, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read(MAX_RESPONSE + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise ControlError(f"control plane {self.url} unreachable: {exc}") from None
        finally:
            conn.close()
        if len(data) > MAX_RESPONSE:
            raise ControlError(f"answer to {method} {path} larger than {MAX_RESPONSE} bytes")
        try:
            decoded = json.loads(data) if data else None
        except ValueError:
            raise ControlError(
                f"{method} {path}: answer is not JSON (HTTP {resp.status})", resp.status
            ) from None
        if resp.status >= 400:
            detail = decoded.get("detail") if isinstance(decoded, dict) else decoded
            raise ControlError(f"{method} {path}: HTTP {resp.status}: {detail}", resp.status)
        return decoded

    def events(
        self,
        path: str,
        *,
        signer: Signer | None = None,
        timeout: float = 30.0,
        on_keepalive: Callable[[], None] | None = None,
    ) -> Iterator[tuple[str, Any]]:
        """Server-sent events from ``path`` as ``(event, decoded JSON data)``; returns when
        the stream ends, raises ControlError when it cannot start or goes quiet for longer
        than ``timeout`` (the service sends keep-alive comments well within it, each
        reported to ``on_keepalive``, called in the reading thread)."""
        full = self._base + path
        conn = self._connection(timeout)
        try:
            headers = self._headers("GET", full, b"", signer)
            headers["Accept"] = "text/event-stream"
            conn.request("GET", full, headers=headers)
            resp = conn.getresponse()
            if resp.status != 200:
                data = resp.read(MAX_RESPONSE)
                raise ControlError(
                    f"GET {path}: HTTP {resp.status}: {data[:300].decode(errors='replace')}",
                    resp.status,
                )
            event, lines = "message", list[str]()
            while True:
                raw = resp.readline(MAX_EVENT)
                if not raw:
                    return
                line = raw.decode(errors="replace").rstrip("\r\n")
                if line == "":
                    decoded = _decode(lines)
                    if decoded is not None:  # a malformed event is skipped
                        yield event, decoded[0]
                    event, lines = "message", []
                elif line.startswith(":"):  # keep-alive comment
                    if on_keepalive is not None:
                        on_keepalive()
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    lines.append(line[5:].lstrip())
        except (OSError, http.client.HTTPException) as exc:
            raise ControlError(f"event stream {path} from {self.url} broke: {exc}") from None
        finally:
            conn.close()


def _decode(lines: list[str]) -> tuple[Any] | None:
    if not lines:
        return None
    try:
        return (json.loads("\n".join(lines)),)
    except ValueError:
        return None


def _tls_context() -> Any:
    # Imported here: the lean agent leaves the system OpenSSL unloaded unless its control
    # plane is https (node/__main__.py), so nothing may import ssl before that is known.
    import ssl

    return ssl.create_default_context()
