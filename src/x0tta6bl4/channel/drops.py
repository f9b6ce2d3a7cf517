"""Why the endpoint dropped something, and how it counts and traces it.

Every drop is counted in ``SecureEndpoint.counters`` under its :class:`DropReason` and
reported as ``Event("dropped", {"reason": ..., "addr": ...})``. Other things worth
counting (cookies sent, payloads pushed out of a full queue, ...) are :class:`Tally`
entries in the same ``counters``. Both are ``StrEnum``: a member *is* its string, so
``counters["replay"]`` and a trace's ``"reason": "replay"`` read as they always did.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from x0tta6bl4.errors import RejectReason, X0tError
from x0tta6bl4.sansio import Action, Addr, Event


class DropReason(StrEnum):
    # --- any datagram -----------------------------------------------------------
    MALFORMED = "malformed"  # does not decode, or a type that may not appear here
    BAD_FRAGMENT = "bad_fragment"  # a FRAGMENT that is malformed or contradicts its siblings
    REASSEMBLY_FULL = "reassembly_full"  # its pool is full of partials too young to evict
    REASSEMBLY_TIMEOUT = "reassembly_timeout"  # a partial message never completed
    DATA_INCOMPLETE = "data_incomplete"  # a fragmented payload lost a fragment: dropped whole
    UNKNOWN_MESSAGE = "unknown_message"  # a NACK for a message we did not send, or no longer keep
    RESEND_BUDGET = "resend_budget"  # a NACK for a message that has been resent enough
    # --- DATA and sessions --------------------------------------------------------
    UNKNOWN_INDEX = "unknown_index"  # no session or pending handshake has this index
    EXPIRED_SESSION = "expired_session"  # the session is past REJECT_AFTER_TIME
    REPLAY = "replay"  # a DATA counter or an INIT (by mac1) seen before
    DECRYPT_FAILED = "decrypt_failed"  # AEAD or decapsulation failed
    # A NO_SESSION that matches no packet we recently sent on our current session with
    # its sender (forged, or too late), or one that came sooner than we act on them.
    UNMATCHED_NO_SESSION = "unmatched_no_session"
    NO_SESSION_RATE_LIMITED = "no_session_rate_limited"
    # --- handshake ------------------------------------------------------------------
    BAD_MAC1 = "bad_mac1"
    BAD_MAC2 = "bad_mac2"  # a mac2 made with no cookie of ours (or one on a RESP)
    BAD_CHECK = "bad_check"  # CERT_REQUEST / CERT not made for our trust domain
    RATE_LIMITED = "rate_limited"  # under load, this source spent its INIT budget
    UNKNOWN_FINGERPRINT = "unknown_fingerprint"  # an INIT names a certificate we lack
    REFLECTED = "reflected"  # our own certificate came back to us
    UNEXPECTED_IDENTITY = "unexpected_identity"  # expect_name or accept_identity said no
    STALE_TIMESTAMP = "stale_timestamp"  # an INIT no newer than one already confirmed
    SIMULTANEOUS_OPEN_LOST = "simultaneous_open_lost"  # our own INIT wins the tie-break
    STALE_BISCUIT = "stale_biscuit"  # a CONFIRM too long after its RESP
    BAD_BISCUIT = "bad_biscuit"  # a biscuit we did not seal, or for another session
    # A certificate failed verification, one member per RejectReason.
    CERT_REJECTED_EXPIRED = "cert_rejected:expired"
    CERT_REJECTED_NOT_YET_VALID = "cert_rejected:not_yet_valid"
    CERT_REJECTED_UNKNOWN_CA = "cert_rejected:unknown_ca"
    CERT_REJECTED_BAD_SIGNATURE = "cert_rejected:bad_signature"
    CERT_REJECTED_REVOKED = "cert_rejected:revoked"
    CERT_REJECTED_WRONG_TRUST_DOMAIN = "cert_rejected:wrong_trust_domain"
    CERT_REJECTED_NOT_SVID = "cert_rejected:not_svid"
    CERT_REJECTED_MALFORMED = "cert_rejected:malformed"
    CERT_REJECTED_REVOCATION_LIST_STALE = "cert_rejected:revocation_list_stale"
    CERT_REJECTED_REVOCATION_LIST_MISSING = "cert_rejected:revocation_list_missing"
    # A payload queued for a peer whose certificate a newer revocation list revoked (or
    # whose certificate, fetched for our handshake, turned out revoked).
    PEER_REVOKED = "peer_revoked"
    # --- our own calls and inputs -----------------------------------------------------
    # A payload for, or a handshake to, an address whose last certificate was revoked:
    # not sent, no handshake started (until the peer handshakes with another certificate).
    ADDR_REVOKED = "addr_revoked"
    # CertificateRenewed with a certificate that may not replace ours (the event's
    # ``why``: other_name, other_static_key, older, rejected:<reason>, malformed).
    RENEWAL_REFUSED = "renewal_refused"
    PEER_LIMIT = "peer_limit"  # the peer table is full
    UNKNOWN_TIMER = "unknown_timer"  # a timer key that is not one of ours
    UNSUPPORTED_INPUT = "unsupported_input"  # an input type the endpoint does not take
    INTERNAL_ERROR = "internal_error"  # a bug: an untyped exception, counted not raised

    @staticmethod
    def cert_rejected(reason: RejectReason) -> DropReason:
        return _CERT_REJECTED[reason]


_CERT_REJECTED: dict[RejectReason, DropReason] = {
    r: DropReason(f"cert_rejected:{r.value}") for r in RejectReason
}


class Tally(StrEnum):
    """Counted in ``counters`` but not a dropped datagram (no ``dropped`` event)."""

    COOKIE_SENT = "cookie_sent"  # an INIT or CERT_REQUEST answered with a COOKIE
    COOKIE_RECEIVED = "cookie_received"
    CERT_SENT = "cert_sent"
    QUEUE_OVERFLOW = "queue_overflow"  # a queued payload pushed out by a newer one
    QUEUE_DROPPED = "queue_dropped"  # payloads thrown away when a handshake gave up
    REASSEMBLY_EVICTED = "reassembly_evicted"  # old partials evicted for new ones
    DUPLICATE_FRAGMENT = "duplicate_fragment"
    CONFIRM_UNANSWERED = "confirm_unanswered"  # our new session given up after ACK_RETRIES
    NO_SESSION_SENT = "no_session_sent"  # DATA we could not open answered with NO_SESSION
    NO_SESSION_ACTED = "no_session_acted"  # a matching NO_SESSION started or hurried a handshake
    KEEPALIVE_SENT = "keepalive_sent"  # received data answered with a passive keepalive
    NO_REPLY_HANDSHAKE = "no_reply_handshake"  # sent data, heard nothing: a new handshake
    NACK_SENT = "nack_sent"  # fragments of a partial message asked for again
    FRAGMENTS_RESENT = "fragments_resent"  # fragments resent for a NACK or a repeated request
    ANSWER_RESENT = "answer_resent"  # a repeated request answered from the kept answer
    PEER_MOVED = "peer_moved"  # an authenticated packet moved its peer to a new address
    MOVE_REFUSED = "move_refused"  # ... but another peer's session holds that address
    # A peer dropped (sessions, handshake, queue) because a newer revocation list
    # revoked its certificate.
    REVOKED_TEARDOWN = "revoked_teardown"
    # Our handshake ended at once: the certificate the peer sent was revoked.
    REVOKED_ATTEMPT_ENDED = "revoked_attempt_ended"
    CERT_RENEWED = "cert_renewed"  # CertificateRenewed: our new certificate is in use


def addr_label(addr: Addr | None) -> Any:
    """A JSON-friendly, deterministic rendering of an address for events."""
    if addr is None or isinstance(addr, str | int):
        return addr
    return repr(addr)


class Stats:
    """The endpoint's ``counters``, and the one place that makes ``dropped`` events."""

    __slots__ = ("counters",)

    def __init__(self) -> None:
        self.counters: dict[str, int] = {}

    def count(self, key: DropReason | Tally, n: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n

    def drop(self, reason: DropReason, addr: Addr | None, **fields: Any) -> list[Action]:
        self.count(reason)
        return [Event("dropped", {"reason": reason, "addr": addr_label(addr), **fields})]

    def drop_unmapped(self, exc: X0tError) -> list[Action]:
        """A typed error that no handler maps to a :class:`DropReason`: still only a drop,
        keyed ``error:<type>`` so the gap is visible (and fixed by mapping it)."""
        key = f"error:{type(exc).__name__}"
        self.counters[key] = self.counters.get(key, 0) + 1
        return [Event("dropped", {"reason": key, "addr": None})]
