"""Requests a node signs with its certified ML-DSA-65 key.

A node authenticates to the control plane by signing each request: method, path with
query, a timestamp, a fresh nonce and the SHA-256 of the body, under a fixed context. The
service looks the serial up in its inventory, checks the certificate is current and not
revoked, verifies the signature, refuses timestamps outside a window and nonces it has
seen (replays). Headers, not body fields, so GETs and event streams are signed the same way.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

from x0tta6bl4.crypto.sign import SigningKey, VerifyKey
from x0tta6bl4.errors import BadSignature, X0tError

SERIAL_HEADER = "x-x0t-serial"
TIMESTAMP_HEADER = "x-x0t-timestamp"
NONCE_HEADER = "x-x0t-nonce"
SIGNATURE_HEADER = "x-x0t-signature"
SIGNED_HEADERS = (SERIAL_HEADER, TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER)
CONTEXT = b"x0tta6bl4 node request v1"
# How far a request's clock may be from the service's, either way.
MAX_SKEW_S = 120.0
NONCE_BYTES = 16
# ML-DSA-65 signatures are 3,309 bytes; base64 makes 4,412 characters.
_MAX_SIGNATURE_CHARS = 4_500
_MAX_SERIAL_HEX = 40


class SignedRequestError(X0tError):
    """A signed request that cannot be accepted; the message says why (for a 401)."""


@dataclass(frozen=True, slots=True)
class SignedHeaders:
    serial: int
    timestamp: int
    nonce: str
    signature: bytes


def _message(method: str, path: str, timestamp: int, nonce: str, body: bytes) -> bytes:
    return "\n".join(
        (method.upper(), path, str(timestamp), nonce, hashlib.sha256(body).hexdigest())
    ).encode()


def sign_request(
    key: SigningKey,
    serial: int,
    method: str,
    path: str,
    body: bytes = b"",
    *,
    now: float | None = None,
) -> dict[str, str]:
    """Headers that authenticate ``method path`` with ``body`` as the holder of ``key``.
    ``path`` includes the query string exactly as sent."""
    ts = int(time.time() if now is None else now)
    nonce = base64.urlsafe_b64encode(os.urandom(NONCE_BYTES)).rstrip(b"=").decode()
    sig = key.sign(_message(method, path, ts, nonce, body), CONTEXT)
    return {
        SERIAL_HEADER: format(serial, "x"),
        TIMESTAMP_HEADER: str(ts),
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: base64.b64encode(sig).decode(),
    }


def parse_signed_headers(headers: Mapping[str, str]) -> SignedHeaders:
    """The four headers, bounds-checked; SignedRequestError naming what is wrong."""
    missing = [h for h in SIGNED_HEADERS if not headers.get(h)]
    if missing:
        raise SignedRequestError(f"missing header(s): {', '.join(missing)}")
    serial_hex = headers[SERIAL_HEADER]
    if len(serial_hex) > _MAX_SERIAL_HEX:
        raise SignedRequestError(f"{SERIAL_HEADER} is longer than {_MAX_SERIAL_HEX} characters")
    try:
        serial = int(serial_hex, 16)
    except ValueError:
        raise SignedRequestError(f"{SERIAL_HEADER} is not hexadecimal") from None
    ts_text = headers[TIMESTAMP_HEADER]
    if not (ts_text.isascii() and ts_text.isdigit() and len(ts_text) <= 12):
        raise SignedRequestError(f"{TIMESTAMP_HEADER} is not a Unix time in seconds")
    nonce = headers[NONCE_HEADER]
    if not (16 <= len(nonce) <= 64 and nonce.isascii()):
        raise SignedRequestError(f"{NONCE_HEADER} must be 16 to 64 ASCII characters")
    sig_text = headers[SIGNATURE_HEADER]
    if len(sig_text) > _MAX_SIGNATURE_CHARS:
        raise SignedRequestError(f"{SIGNATURE_HEADER} is too long")
    try:
        signature = base64.b64decode(sig_text, validate=True)
    except (binascii.Error, ValueError):
        raise SignedRequestError(f"{SIGNATURE_HEADER} is not base64") from None
    return SignedHeaders(serial, int(ts_text), nonce, signature)


def verify_request(
    signed: SignedHeaders,
    key: VerifyKey,
    method: str,
    path: str,
    body: bytes,
    *,
    now: float | None = None,
) -> None:
    """Checks the clock window and the signature; replay (the nonce) is the caller's."""
    t = time.time() if now is None else now
    if abs(signed.timestamp - t) > MAX_SKEW_S:
        raise SignedRequestError(
            f"request timestamp is {signed.timestamp - t:+.0f} s from the service's clock "
            f"(allowed ±{MAX_SKEW_S:.0f} s)"
        )
    try:
        key.verify(
            signed.signature, _message(method, path, signed.timestamp, signed.nonce, body), CONTEXT
        )
    except BadSignature:
        raise SignedRequestError("request signature does not verify") from None
