"""Enrollment as both sides speak it: the join token, the request and answer schemas, and
the sealed envelopes.

A node joins with a token an operator gave it, ``x0tj1.<id>.<secret>.<fingerprint>``: the
fingerprint is SHA-256 of the control plane's enrollment key (a hybrid X25519 + ML-KEM-768
key), so the token also tells the node whom to trust. The node generates its own keys;
private keys never leave it.

1. ``GET /v1/enroll/key`` → :class:`EnrollKey`. The node refuses a key whose SHA-256 is not
   the token's fingerprint.
2. ``POST /v1/enroll/challenge`` :class:`ChallengeRequest` (the node's static public key) →
   :class:`Challenge`: the service encapsulated a secret to that key and returns the
   ciphertext and a ticket (the secret, sealed to the service itself, so any replica can
   check it later and none keeps state). Only the holder of the static private key learns
   the secret.
3. ``POST /v1/enroll`` :class:`SealedMessage` holding :class:`EnrollInner`, sealed with HPKE
   to the enrollment key (:func:`seal_request`): the token, a CSR (its ML-DSA-65 signature
   proves possession of the signing key), the ticket, a MAC under the secret over the CSR
   (proves possession of the static key: :func:`kem_proof`) and a fresh response key. The
   answer, :class:`EnrollResult`, comes back sealed under that response key
   (:func:`seal_response`): only the holder of the enrollment key could have read it, so
   opening it authenticates the answer to the node, whatever sits in between.

Renewal (``POST /v1/renew``, a request the node signs with its current certificate's key):
:class:`RenewRequest` → :class:`RenewResult`; the running agent reads these without
pydantic (``api.renewal``).

Every decoder here raises :class:`EnrollError` subclasses only, whatever the input.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass, field
from typing import TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from x0tta6bl4.api.renewal import MAX_BUNDLE_PEM, MAX_CRL_PEM, renew_after
from x0tta6bl4.crypto import hpke
from x0tta6bl4.crypto.hybrid import (
    CIPHERTEXT_SIZE,
    PUBLIC_KEY_SIZE,
    HybridPrivateKey,
    HybridPublicKey,
)
from x0tta6bl4.crypto.kdf import hmac_sha256, sha256
from x0tta6bl4.errors import DecryptError, X0tError
from x0tta6bl4.identity.cert import MAX_CERT_PEM_SIZE
from x0tta6bl4.identity.request import MAX_REQUEST_PEM_SIZE, CertificateRequest
from x0tta6bl4.policy.signed import MAX_SIGNED_SIZE

TOKEN_PREFIX = "x0tj1"
TOKEN_ID_HEX = 16
TOKEN_SECRET_BYTES = 32
TOKEN_SECRET_CHARS = 43  # base64url of 32 bytes, unpadded
FINGERPRINT_HEX = 64
MAX_TOKEN_TEXT = 256

ENROLL_INFO = b"x0tta6bl4 enroll v1"
PROOF_LABEL = b"x0tta6bl4 enroll kem proof v1"
RESPONSE_AAD = b"x0tta6bl4 enroll response v1"
RESPONSE_KEY_SIZE = 32
PROOF_SIZE = 32
NONCE_SIZE = 12
# A challenge's ticket lives this long: enough for a slow node to build and seal a CSR.
TICKET_LIFETIME_S = 120
# How many bootstrap peers an enrollment answer carries.
MAX_BOOTSTRAP_PEERS = 16

# Bounds of the base64 fields (characters).
MAX_TICKET_CHARS = 256
MAX_URL = 2048
# The sealed request: a CSR (~7.5 KB as PEM), a token, a ticket and two keys, plus the
# HPKE overhead, in base64; the answer also carries a revocation list and a policy.
MAX_SEALED_REQUEST_CHARS = 64 << 10
MAX_SEALED_RESPONSE_CHARS = 4 << 20

M = TypeVar("M", bound=BaseModel)
_ID_RE = re.compile(r"[0-9a-f]{16}")
_SECRET_RE = re.compile(r"[A-Za-z0-9_-]{43}")
_FP_RE = re.compile(r"[0-9a-f]{64}")
_B64 = r"^[A-Za-z0-9+/]*={0,2}$"
_HEX64 = r"^[0-9a-f]{64}$"


def _b64_chars(n: int) -> int:
    return 4 * ((n + 2) // 3)


class EnrollError(X0tError):
    """Enrollment input that cannot be used; the message says which part and why."""


class TokenFormatError(EnrollError):
    """Text that is not a join token."""


class EnvelopeError(EnrollError):
    """A sealed request or answer that does not open, or whose contents do not parse."""


# --- the join token ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JoinTokenText:
    """A parsed join token. The secret stays out of the repr."""

    token_id: str
    secret: str = field(repr=False)
    fingerprint: str

    @classmethod
    def new(cls, fingerprint: str) -> JoinTokenText:
        """A fresh token for the enrollment key with this fingerprint (64 hex)."""
        secret = base64.urlsafe_b64encode(os.urandom(TOKEN_SECRET_BYTES)).rstrip(b"=").decode()
        return cls(os.urandom(TOKEN_ID_HEX // 2).hex(), secret, _check_fp(fingerprint))

    @classmethod
    def parse(cls, text: str) -> JoinTokenText:
        """``x0tj1.<id>.<secret>.<fingerprint>``; surrounding whitespace is ignored (pasted
        tokens end in a newline). TokenFormatError naming the bad part otherwise."""
        if not isinstance(text, str):
            raise TokenFormatError("a join token is text")
        if len(text) > MAX_TOKEN_TEXT:
            raise TokenFormatError(f"a join token is at most {MAX_TOKEN_TEXT} characters")
        parts = text.strip().split(".")
        if len(parts) != 4 or parts[0] != TOKEN_PREFIX:
            raise TokenFormatError(
                f"not a join token: expected {TOKEN_PREFIX}.<id>.<secret>.<fingerprint>"
            )
        _, token_id, secret, fp = parts
        if not _ID_RE.fullmatch(token_id):
            raise TokenFormatError(f"join token id must be {TOKEN_ID_HEX} lowercase hex digits")
        if not _SECRET_RE.fullmatch(secret) or _b64url(secret) is None:
            raise TokenFormatError(
                f"join token secret must be {TOKEN_SECRET_CHARS} base64url characters "
                f"({TOKEN_SECRET_BYTES} bytes)"
            )
        if not _FP_RE.fullmatch(fp):
            raise TokenFormatError(
                f"join token fingerprint must be {FINGERPRINT_HEX} lowercase hex digits"
            )
        return cls(token_id, secret, fp)

    def __str__(self) -> str:
        return f"{TOKEN_PREFIX}.{self.token_id}.{self.secret}.{self.fingerprint}"

    @property
    def secret_hash(self) -> bytes:
        """What the control plane stores: SHA-256 of the secret's text."""
        return secret_hash(self.secret)


def secret_hash(secret: str) -> bytes:
    return sha256(secret.encode())


def _b64url(secret: str) -> bytes | None:
    """The 32 bytes of a canonical unpadded base64url secret, else None."""
    try:
        raw = base64.urlsafe_b64decode(secret + "=")
    except (binascii.Error, ValueError):
        return None
    if len(raw) != TOKEN_SECRET_BYTES:
        return None
    # 43 characters carry 258 bits: the last two must be zero, or two texts would be one key.
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != secret:
        return None
    return raw


def _check_fp(fp: str) -> str:
    if not isinstance(fp, str) or not _FP_RE.fullmatch(fp):
        raise TokenFormatError(f"fingerprint must be {FINGERPRINT_HEX} lowercase hex digits")
    return fp


def key_fingerprint(public_key: bytes) -> str:
    """SHA-256 of the enrollment key's 1,216 bytes, as the token carries it."""
    return sha256(public_key).hex()


# --- schemas ----------------------------------------------------------------------------


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Answer(BaseModel):
    # A newer service may add fields; an older node ignores them.
    model_config = ConfigDict(extra="ignore", frozen=True)


class EnrollKey(_Answer):
    public_key: str = Field(
        min_length=_b64_chars(PUBLIC_KEY_SIZE),
        max_length=_b64_chars(PUBLIC_KEY_SIZE),
        pattern=_B64,
        description="Base64 of the 1,216-byte hybrid (ML-KEM-768 + X25519) enrollment key.",
    )
    fingerprint: str = Field(pattern=_HEX64, description="SHA-256 of the key, hex.")


class ChallengeRequest(_Request):
    static_key: str = Field(
        min_length=_b64_chars(PUBLIC_KEY_SIZE),
        max_length=_b64_chars(PUBLIC_KEY_SIZE),
        pattern=_B64,
        description="Base64 of the node's 1,216-byte static hybrid public key.",
    )


class Challenge(_Answer):
    ciphertext: str = Field(
        min_length=_b64_chars(CIPHERTEXT_SIZE),
        max_length=_b64_chars(CIPHERTEXT_SIZE),
        pattern=_B64,
        description="Base64 of the hybrid encapsulation to the node's static key.",
    )
    ticket: str = Field(max_length=MAX_TICKET_CHARS, pattern=_B64)
    expires_at: float = Field(description="Unix time after which the ticket is refused.")


class SealedMessage(_Answer):
    sealed: str = Field(
        min_length=1, max_length=MAX_SEALED_RESPONSE_CHARS, pattern=_B64, description="Base64."
    )


class SealedRequest(_Request):
    sealed: str = Field(
        min_length=1,
        max_length=MAX_SEALED_REQUEST_CHARS,
        pattern=_B64,
        description="Base64 of an HPKE message sealed to the enrollment key.",
    )


class EnrollInner(_Request):
    """What the node seals to the enrollment key."""

    token: str = Field(min_length=1, max_length=MAX_TOKEN_TEXT)
    csr: str = Field(min_length=1, max_length=MAX_REQUEST_PEM_SIZE)
    ticket: str = Field(min_length=1, max_length=MAX_TICKET_CHARS, pattern=_B64)
    proof: str = Field(
        min_length=_b64_chars(PROOF_SIZE), max_length=_b64_chars(PROOF_SIZE), pattern=_B64
    )
    response_key: str = Field(
        min_length=_b64_chars(RESPONSE_KEY_SIZE),
        max_length=_b64_chars(RESPONSE_KEY_SIZE),
        pattern=_B64,
    )


class Peer(_Answer):
    name: str = Field(max_length=63)
    address: str = Field(max_length=64, description='"HOST:PORT" or "[V6]:PORT".')


class EnrollResult(_Answer):
    """What the node receives, sealed under its response key."""

    certificate: str = Field(max_length=MAX_CERT_PEM_SIZE, description="PEM.")
    bundle: str = Field(max_length=MAX_BUNDLE_PEM, description="The trust bundle, PEM.")
    crl: str = Field(max_length=MAX_CRL_PEM, description="The current revocation list, PEM.")
    policy: str | None = Field(
        default=None,
        max_length=_b64_chars(MAX_SIGNED_SIZE),
        pattern=_B64,
        description="Base64 of the current signed policy document, if there is one.",
    )
    peers: list[Peer] = Field(default_factory=list, max_length=MAX_BOOTSTRAP_PEERS)
    renew_after: float = Field(description="Unix time at half the certificate's lifetime.")
    control_url: str = Field(max_length=MAX_URL)


class RenewRequest(_Request):
    csr: str = Field(
        min_length=1,
        max_length=MAX_REQUEST_PEM_SIZE,
        description="PEM CSR for the caller's name and current tags (same or new keys).",
    )


class RenewResult(_Answer):
    certificate: str = Field(max_length=MAX_CERT_PEM_SIZE)
    bundle: str = Field(max_length=MAX_BUNDLE_PEM)
    crl: str = Field(max_length=MAX_CRL_PEM)
    renew_after: float


# --- helpers both sides use --------------------------------------------------------------


def b64decode(text: str, what: str, size: int | None = None) -> bytes:
    """Strict base64 (EnvelopeError naming ``what``); ``size``: the exact length."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise EnvelopeError(f"{what}: not base64") from None
    if size is not None and len(raw) != size:
        raise EnvelopeError(f"{what}: expected {size} bytes, got {len(raw)}")
    return raw


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def kem_proof(shared_secret: bytes, csr_der: bytes) -> bytes:
    """Proof of possession of the static key: only its holder could decapsulate the
    challenge's secret. Bound to the CSR, so it cannot vouch for another request."""
    return hmac_sha256(shared_secret, PROOF_LABEL, csr_der)


def make_inner(
    token: JoinTokenText | str,
    request: CertificateRequest,
    challenge: Challenge,
    shared_secret: bytes,
    response_key: bytes,
) -> EnrollInner:
    """The node's enrollment request, ready to seal."""
    if len(response_key) != RESPONSE_KEY_SIZE:
        raise EnrollError(f"the response key must be {RESPONSE_KEY_SIZE} bytes")
    return EnrollInner(
        token=str(token),
        csr=request.pem.decode(),
        ticket=challenge.ticket,
        proof=b64(kem_proof(shared_secret, request.der)),
        response_key=b64(response_key),
    )


def _field_errors(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:5]
    )


def seal_request(enroll_public: HybridPublicKey, inner: EnrollInner) -> SealedRequest:
    """The node's side: ``inner`` sealed to the control plane's enrollment key."""
    return SealedRequest(
        sealed=b64(hpke.seal(enroll_public, inner.model_dump_json().encode(), ENROLL_INFO))
    )


def open_request(enroll_private: HybridPrivateKey, message: SealedRequest) -> EnrollInner:
    """The service's side of :func:`seal_request`; EnvelopeError says whether the seal or
    the contents are wrong."""
    raw = b64decode(message.sealed, "sealed")
    try:
        plain = hpke.open_sealed(enroll_private, raw, ENROLL_INFO)
    except DecryptError:
        raise EnvelopeError(
            "sealed: not sealed to this control plane's enrollment key (or altered)"
        ) from None
    try:
        return EnrollInner.model_validate_json(plain)
    except ValidationError as exc:
        raise EnvelopeError(f"sealed request: {_field_errors(exc)}") from None


def _aead_seal(key: bytes, plaintext: bytes, aad: bytes) -> str:
    nonce = os.urandom(NONCE_SIZE)
    return b64(nonce + AESGCM(key).encrypt(nonce, plaintext, aad))


def _aead_open(key: bytes, text: str, aad: bytes, what: str) -> bytes:
    raw = b64decode(text, what)
    if len(raw) < NONCE_SIZE + 16:
        raise EnvelopeError(f"{what}: shorter than a nonce and a tag")
    try:
        return AESGCM(key).decrypt(raw[:NONCE_SIZE], raw[NONCE_SIZE:], aad)
    except InvalidTag:
        raise EnvelopeError(
            f"{what}: does not open under the response key (altered, or not from the "
            "holder of the enrollment key)"
        ) from None


def seal_response(response_key: bytes, result: EnrollResult) -> SealedMessage:
    """The service's answer, readable only by the node that chose ``response_key``."""
    if len(response_key) != RESPONSE_KEY_SIZE:
        raise EnrollError(f"the response key must be {RESPONSE_KEY_SIZE} bytes")
    return SealedMessage(
        sealed=_aead_seal(response_key, result.model_dump_json().encode(), RESPONSE_AAD)
    )


def open_response(response_key: bytes, message: SealedMessage | object) -> EnrollResult:
    """The node's side of :func:`seal_response`; takes the decoded JSON answer or a
    SealedMessage. EnvelopeError for anything that is not a sealed EnrollResult."""
    if not isinstance(message, SealedMessage):
        try:
            message = SealedMessage.model_validate(message)
        except ValidationError as exc:
            raise EnvelopeError(f"enrollment answer: {_field_errors(exc)}") from None
    plain = _aead_open(response_key, message.sealed, RESPONSE_AAD, "enrollment answer")
    try:
        return EnrollResult.model_validate_json(plain)
    except ValidationError as exc:
        raise EnvelopeError(f"enrollment answer: {_field_errors(exc)}") from None


def parse_answer(model: type[M], data: object, what: str) -> M:
    """A JSON answer as ``model``; EnvelopeError naming the field otherwise."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise EnvelopeError(f"{what}: {_field_errors(exc)}") from None


__all__ = [
    "ENROLL_INFO",
    "MAX_BOOTSTRAP_PEERS",
    "TICKET_LIFETIME_S",
    "Challenge",
    "ChallengeRequest",
    "EnrollError",
    "EnrollInner",
    "EnrollKey",
    "EnrollResult",
    "EnvelopeError",
    "JoinTokenText",
    "Peer",
    "RenewRequest",
    "RenewResult",
    "SealedMessage",
    "SealedRequest",
    "TokenFormatError",
    "b64",
    "b64decode",
    "kem_proof",
    "key_fingerprint",
    "make_inner",
    "open_request",
    "open_response",
    "parse_answer",
    "renew_after",
    "seal_request",
    "seal_response",
]
