"""What the control plane pushes to nodes: the server-sent event stream and its polling
fallback, as both sides read and write them.

``GET /v1/stream?policy=N&crl=M`` (node-signed) is a ``text/event-stream``; each event is
``event: NAME`` and one ``data:`` line of JSON:

    hello    {"node", "serial", "policy", "crl"}   first, once: the versions the service holds
    policy   {"version", "signed"}                 a newer CA-signed policy (base64 of the
                                                   document ``x0t policy sign`` writes)
    crl      {"version", "pem"}                    a newer CA-signed revocation list (PEM)
    revoked  {"serial", "reason"}                  the stream's own certificate was revoked;
                                                   the service closes the stream
    expired  {"serial", "reason"}                  the stream's certificate expired; closed

plus ``: ka`` comment lines every ``KEEPALIVE_S`` seconds. ``N`` and ``M`` are the versions
the node already holds, so it is sent only newer documents. ``GET /v1/sync?policy=N&crl=M``
(node-signed) answers ``{"policy": {...} | null, "crl": {...} | null}`` with only what is
newer: the fallback while the stream is down.

A document too large to travel in one event line (``MAX_INLINE_EVENT``) is announced with
``signed``/``pem`` null; the node then fetches it with ``/v1/sync``.

Everything pushed is CA-signed, so a node verifies it exactly as it verifies the files of
its state directory; nothing here is trusted for more than its shape. This module is plain
standard library (no pydantic): the running agent decodes these events, and it never
imports pydantic (``node/runsettings.py``).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from x0tta6bl4.errors import X0tError
from x0tta6bl4.identity.crl import MAX_CRL_SIZE
from x0tta6bl4.policy.signed import MAX_SIGNED_SIZE

STREAM_PATH = "/v1/stream"
SYNC_PATH = "/v1/sync"

EVENT_HELLO = "hello"
EVENT_POLICY = "policy"
EVENT_CRL = "crl"
EVENT_REVOKED = "revoked"
EVENT_EXPIRED = "expired"

# The service sends a comment this often; a client that hears nothing for a few times
# this long treats the stream as broken.
KEEPALIVE_S = 10.0
KEEPALIVE_FRAME = b": ka\n\n"

# Versions (policy and CRL numbers) a message may carry: positive, fits a signed 64-bit.
MAX_VERSION = (1 << 63) - 1
# An event's data line must stay well under the node client's line limit (1 MiB).
MAX_INLINE_EVENT = 512 * 1024
# Bounds of the encoded documents: base64 of the largest signed policy, PEM of the
# largest revocation list (``RevocationList.from_pem``'s own bound).
MAX_SIGNED_B64 = 4 * ((MAX_SIGNED_SIZE + 2) // 3)
MAX_CRL_PEM = 2 * MAX_CRL_SIZE
_MAX_NAME = 64
_MAX_SERIAL_HEX = 40
_MAX_REASON = 64


class PushFormatError(X0tError):
    """A pushed message does not have the agreed shape; the message says what."""


@dataclass(frozen=True, slots=True)
class PushedPolicy:
    """A policy announcement: the signed document, or None when it must be fetched."""

    version: int
    signed: bytes | None

    def to_wire(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "signed": None if self.signed is None else base64.b64encode(self.signed).decode(),
        }


@dataclass(frozen=True, slots=True)
class PushedCrl:
    """A revocation-list announcement: the PEM, or None when it must be fetched."""

    version: int
    pem: bytes | None

    def to_wire(self) -> dict[str, Any]:
        return {"version": self.version, "pem": None if self.pem is None else self.pem.decode()}


@dataclass(frozen=True, slots=True)
class Hello:
    node: str
    serial: str
    policy: int  # 0: the service holds no policy yet
    crl: int

    def to_wire(self) -> dict[str, Any]:
        return {"node": self.node, "serial": self.serial, "policy": self.policy, "crl": self.crl}


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """``revoked`` or ``expired``: why the service closes the stream."""

    serial: str
    reason: str

    def to_wire(self) -> dict[str, Any]:
        return {"serial": self.serial, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class SyncResult:
    policy: PushedPolicy | None
    crl: PushedCrl | None

    def to_wire(self) -> dict[str, Any]:
        return {
            "policy": None if self.policy is None else self.policy.to_wire(),
            "crl": None if self.crl is None else self.crl.to_wire(),
        }


def format_event(event: str, data: dict[str, Any]) -> bytes:
    """One server-sent event: compact JSON never holds a raw newline, so one data line."""
    payload = json.dumps(data, separators=(",", ":"))
    return f"event: {event}\ndata: {payload}\n\n".encode()


def held_query(policy: int, crl: int) -> str:
    """``?policy=N&crl=M``: what the node holds (0: nothing)."""
    return f"?policy={_version(policy, 'policy', zero=True)}&crl={_version(crl, 'crl', zero=True)}"


def stream_path(policy: int = 0, crl: int = 0) -> str:
    return STREAM_PATH + held_query(policy, crl)


def sync_path(policy: int = 0, crl: int = 0) -> str:
    return SYNC_PATH + held_query(policy, crl)


# --- decoding (bounded; raises only PushFormatError) --------------------------------------


def _object(data: object, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise PushFormatError(f"{what}: expected a JSON object, got {type(data).__name__}")
    return data


def _version(value: object, field: str, *, zero: bool = False) -> int:
    low = 0 if zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_VERSION:
        raise PushFormatError(f"{field}: expected an integer from {low} to 2**63-1")
    return value


def _text(value: object, field: str, limit: int) -> str:
    if not isinstance(value, str) or not value.isascii() or len(value) > limit:
        raise PushFormatError(f"{field}: expected ASCII text of at most {limit} characters")
    return value


def decode_policy(data: object) -> PushedPolicy:
    obj = _object(data, "policy")
    version = _version(obj.get("version"), "policy.version")
    raw = obj.get("signed")
    if raw is None:
        return PushedPolicy(version, None)
    text = _text(raw, "policy.signed", MAX_SIGNED_B64)
    try:
        signed = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise PushFormatError("policy.signed: not base64") from None
    if not signed:
        raise PushFormatError("policy.signed: empty")
    return PushedPolicy(version, signed)


def decode_crl(data: object) -> PushedCrl:
    obj = _object(data, "crl")
    version = _version(obj.get("version"), "crl.version")
    raw = obj.get("pem")
    if raw is None:
        return PushedCrl(version, None)
    text = _text(raw, "crl.pem", MAX_CRL_PEM)
    if not text:
        raise PushFormatError("crl.pem: empty")
    return PushedCrl(version, text.encode())


def decode_hello(data: object) -> Hello:
    obj = _object(data, "hello")
    return Hello(
        _text(obj.get("node"), "hello.node", _MAX_NAME),
        _text(obj.get("serial"), "hello.serial", _MAX_SERIAL_HEX),
        _version(obj.get("policy"), "hello.policy", zero=True),
        _version(obj.get("crl"), "hello.crl", zero=True),
    )


def decode_end(data: object) -> StreamEnd:
    obj = _object(data, "stream end")
    return StreamEnd(
        _text(obj.get("serial"), "serial", _MAX_SERIAL_HEX),
        _text(obj.get("reason", ""), "reason", _MAX_REASON),
    )


def decode_sync(data: object) -> SyncResult:
    obj = _object(data, "sync")
    policy = obj.get("policy")
    crl = obj.get("crl")
    return SyncResult(
        None if policy is None else decode_policy(policy),
        None if crl is None else decode_crl(crl),
    )
