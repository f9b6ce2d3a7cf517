"""Certificate renewal as the running agent speaks it: plain standard library, because the
agent never imports pydantic (``node/runsettings.py``). The service documents the same
messages with the pydantic models ``api.enroll.RenewRequest`` / ``RenewResult``; a test
holds the two to the same shape.

``POST /v1/renew`` (signed by the node with its current certificate's key) with
``{"csr": PEM}`` answers ``{"certificate", "bundle", "crl": PEM, "renew_after": float}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from x0tta6bl4.errors import X0tError
from x0tta6bl4.identity.cert import CLOCK_SKEW_ALLOWANCE, MAX_CERT_PEM_SIZE

RENEW_PATH = "/v1/renew"
MAX_CRL_PEM = 2 << 20
MAX_BUNDLE_PEM = 256 << 10


class RenewAnswerError(X0tError):
    """An answer to a renewal that is not the documented shape."""


def renew_after(not_before: float, not_after: float) -> float:
    """When a certificate should be renewed: half way through its lifetime, counted from
    when it was issued (the CA back-dates ``not_before`` by the clock-skew allowance)."""
    issued = min(not_before + CLOCK_SKEW_ALLOWANCE.total_seconds(), not_after)
    return issued + (not_after - issued) / 2


def renew_request(csr_pem: bytes) -> dict[str, str]:
    return {"csr": csr_pem.decode("ascii")}


@dataclass(frozen=True, slots=True)
class RenewAnswer:
    certificate: bytes
    bundle: bytes
    crl: bytes
    renew_after: float


def _pem(data: dict[str, Any], key: str, limit: int) -> bytes:
    value = data.get(key)
    if not isinstance(value, str):
        raise RenewAnswerError(f"renewal answer: {key} is missing or not text")
    if len(value) > limit:
        raise RenewAnswerError(f"renewal answer: {key} is longer than {limit} characters")
    try:
        return value.encode("ascii")
    except UnicodeEncodeError:
        raise RenewAnswerError(f"renewal answer: {key} is not ASCII PEM") from None


def decode_renew_answer(data: object) -> RenewAnswer:
    """The decoded JSON answer, bounds-checked; RenewAnswerError naming the field."""
    if not isinstance(data, dict):
        raise RenewAnswerError("renewal answer: not a JSON object")
    after = data.get("renew_after")
    if isinstance(after, bool) or not isinstance(after, int | float) or not math.isfinite(after):
        raise RenewAnswerError("renewal answer: renew_after is not a number")
    return RenewAnswer(
        _pem(data, "certificate", MAX_CERT_PEM_SIZE),
        _pem(data, "bundle", MAX_BUNDLE_PEM),
        _pem(data, "crl", MAX_CRL_PEM),
        float(after),
    )
