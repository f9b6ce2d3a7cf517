"""Typed exceptions for every layer.

Each decoder and verifier raises one of these, never a bare ``ValueError`` or
``struct.error``, so callers can drop and count bad input by kind.
"""

from __future__ import annotations

import enum


class X0tError(Exception):
    """Base of every error this package raises on purpose."""


# --- crypto -----------------------------------------------------------------


class CryptoUnavailable(X0tError):
    """The post-quantum primitives this program depends on are missing."""


class CryptoError(X0tError):
    """A cryptographic operation failed."""


class InvalidKey(CryptoError):
    """Key material has the wrong length, type or value."""


class DecryptError(CryptoError):
    """AEAD authentication failed: the ciphertext, tag or associated data was altered."""


class BadSignature(CryptoError):
    """A signature did not verify."""


# --- wire decoding ------------------------------------------------------------


class DecodeError(X0tError):
    """Bytes that do not decode into the expected structure."""


class Truncated(DecodeError):
    """Fewer bytes than a length field or fixed layout requires."""


class BadLength(DecodeError):
    """A length field is out of its allowed range, or trailing bytes remain."""


class BadVersion(DecodeError):
    """The protocol version byte is not one we speak."""


class UnknownType(DecodeError):
    """The message type byte is not one we know."""


# --- identity -----------------------------------------------------------------


class IdentityError(X0tError):
    """Certificate authority or certificate handling failed."""


class RejectReason(enum.StrEnum):
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    UNKNOWN_CA = "unknown_ca"
    BAD_SIGNATURE = "bad_signature"
    REVOKED = "revoked"
    WRONG_TRUST_DOMAIN = "wrong_trust_domain"
    NOT_SVID = "not_svid"
    MALFORMED = "malformed"
    # The revocation list is past its nextUpdate (plus the allowed grace).
    REVOCATION_LIST_STALE = "revocation_list_stale"
    # No revocation list was given (None) where one, or NO_REVOCATION_LIST, was required.
    REVOCATION_LIST_MISSING = "revocation_list_missing"


class CertificateRejected(IdentityError):
    """A certificate failed verification; ``reason`` says which check."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class RenewalRefusal(enum.StrEnum):
    """Why a renewed certificate for this node was refused (the old one stays in use)."""

    MALFORMED = "malformed"  # not a node certificate at all
    OTHER_NAME = "other_name"  # for another node (or another trust domain)
    OTHER_STATIC_KEY = "other_static_key"  # not for the static key the node holds
    OTHER_SIGNING_KEY = "other_signing_key"  # not for the signing key the node holds
    OLDER = "older"  # expires before the certificate in use (an old one replayed)
    REJECTED = "rejected"  # failed verification (expired, unknown CA, revoked, ...)


class RenewalRefused(IdentityError):
    """A renewed certificate for this node was refused; ``reason`` says why and, for
    ``REJECTED``, ``rejected`` which verification check failed."""

    def __init__(
        self, reason: RenewalRefusal, detail: str, rejected: RejectReason | None = None
    ) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.rejected = rejected

    @property
    def label(self) -> str:
        """``other_name``, ``rejected:expired``, ...: for counters and traces."""
        if self.rejected is not None:
            return f"{self.reason.value}:{self.rejected.value}"
        return self.reason.value


class RevocationListError(IdentityError):
    """A revocation list is malformed, unsigned, or older than the one we hold."""


class KeyAlreadyCertified(IdentityError):
    """The CA already certified this key to another name (or it is the CA's own key)."""


class OverlayAddressTaken(IdentityError):
    """A new node name's derived overlay IPv4 address is already another node's."""


class CertificateRequestError(IdentityError):
    """A certificate request is malformed, not ML-DSA-65 signed, or does not verify."""


# --- protocol -----------------------------------------------------------------


class ProtocolError(X0tError):
    """A protocol message was well formed but not acceptable now."""


class HandshakeError(ProtocolError):
    """A handshake message failed authentication or did not fit the state."""


class ReplayError(ProtocolError):
    """A message was seen before, or is older than the replay window."""


class SessionExpired(ProtocolError):
    """The session's keys are past their reject time."""


class NoSession(ProtocolError):
    """There is no established session to send on (yet)."""


class MessageTooLarge(ProtocolError):
    """A payload does not fit the path MTU; it was refused, not truncated."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"payload of {size} bytes exceeds the path limit of {limit} bytes")
        self.size = size
        self.limit = limit


class NoRoute(ProtocolError):
    """No route to the destination node."""


class PolicyDenied(X0tError):
    """The access policy denies this flow."""


class PolicyError(X0tError):
    """An access policy is malformed, unsigned, wrongly signed or older than the one held
    (the subclasses in ``x0tta6bl4.policy`` say which)."""


# --- node IO ------------------------------------------------------------------


class NodeIOError(X0tError):
    """A device or socket operation of the node agent failed."""


class TunError(NodeIOError):
    """Opening, configuring, reading or writing the TUN device failed."""


class VnetHeaderError(DecodeError):
    """A virtio-net header is malformed or does not fit the packet it comes with."""


class DatagramTruncated(NodeIOError):
    """A received datagram (or GRO batch) was larger than the receive buffer."""
