"""The peer table: who we talk to, their sessions, our handshake attempts, and which
session or handshake index belongs to whom.

A peer entry is made only by our own calls (``add_peer``, ``connect``, ``send``) or by a
*confirmed* inbound handshake, never by anything that merely arrives; one identity holds
at most ``MAX_ADDRS_PER_IDENTITY`` inbound entries, and inbound entries are forgotten
when idle. Limits are read from :mod:`.constants` at call time.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from x0tta6bl4.channel import constants as C
from x0tta6bl4.channel.handshake import Initiator
from x0tta6bl4.channel.session import Session
from x0tta6bl4.crypto.entropy import SecretSource, random_u32
from x0tta6bl4.identity.types import VerifiedIdentity
from x0tta6bl4.sansio import Addr

AcceptIdentity = Callable[[Addr, VerifiedIdentity], bool]


class PeerOrigin(StrEnum):
    DECLARED = "declared"  # made by our own call: kept until we forget it
    INBOUND = "inbound"  # made by a confirmed inbound handshake: forgotten when idle


class PeerState(StrEnum):
    """Where a peer stands, from its current session and our initiation (a previous
    session, kept only to receive stragglers, does not count)."""

    IDLE = "idle"  # no current session, no initiation of ours
    HANDSHAKING = "handshaking"  # our initiation runs; no session yet
    CONFIRMING = "confirming"  # our new session waits for the responder's first packet
    ESTABLISHED = "established"  # a session both sides have confirmed
    REKEYING = "rekeying"  # a session, and our initiation of the next one runs


class AttemptPhase(StrEnum):
    FETCHING_CERT = "fetching_cert"  # no usable certificate for the peer: CERT_REQUEST out
    AWAITING_RESP = "awaiting_resp"  # our INIT is out (a certificate refresh may run beside it)


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """What the endpoint knows about one peer, for status, routing and healing."""

    addr: Addr
    identity: VerifiedIdentity | None  # authenticated by a completed handshake
    established: bool  # a confirmed session that may still send
    session_age: float | None  # seconds since the current session was made
    rekeys: int  # sessions replaced by newer ones
    handshakes: int  # handshakes completed (either role)
    last_received: float | None  # monotonic time of the last authenticated packet
    failures: int  # consecutive handshake attempts that gave up
    handshaking: bool  # an initiation of ours is in progress
    state: PeerState
    rtt: float | None = None  # smoothed round trip, from handshake exchanges


@dataclass(slots=True)
class InitInFlight:
    """Our INIT that awaits a RESP. Retries resend it unchanged while it is young."""

    index: int  # its sender index, claimed in the table
    initiator: Initiator  # the handshake secrets (abandoned when the INIT is replaced)
    identity: VerifiedIdentity  # the responder it is sealed to
    cert_der: bytes  # the responder's certificate we verified
    mac1: bytes  # the INIT's mac1: a COOKIE answering it is sealed with this as AD
    message: bytes  # the INIT as sent
    message_id: int  # its fragments' id: every copy uses it, so fragments combine
    created: float
    full: bool  # it carries our certificate (only such an INIT is worth resending)
    cookie: bytes | None  # the cookie its mac2 was made with
    sent_at: float  # its last transmission
    sends: int = 1


@dataclass(frozen=True, slots=True)
class CertRequestInFlight:
    """Our CERT_REQUEST that awaits a CERT (or a COOKIE)."""

    index: int  # its request id, claimed in the table
    check: bytes  # its check: a COOKIE answering it is sealed with this as AD
    sent_at: float  # a COOKIE answering it times the round trip


class Attempt:
    """Our initiation towards one peer: CERT_REQUEST while we lack its certificate, then
    INIT retries until a RESP, giving up after ``REKEY_ATTEMPT_TIME``."""

    __slots__ = (
        "attempts",
        "backoff",
        "cert_fetched",
        "cert_requests",
        "deadline",
        "deferred_at",
        "earlier_init",
        "heard_at",
        "init",
        "last_sent",
        "rekey",
        "silent",
        "started",
        "used_cookie",
    )

    def __init__(self, started: float, rekey: bool) -> None:
        self.started = started  # the give-up clock (connect restarts it)
        self.rekey = rekey  # a session existed when it began
        self.attempts = 0  # messages sent in this attempt
        self.backoff = 0  # messages sent since the last (re)start
        self.deadline = started  # of the next retry
        self.last_sent = started
        self.deferred_at = started  # a retry was last put off (an answer was arriving)
        self.used_cookie = False  # the last message carried a mac2
        self.init: InitInFlight | None = None
        # The INIT the current one replaced, still answerable: on a lossy path its RESP
        # may be arriving (being repaired) when a retry makes a new INIT.
        self.earlier_init: InitInFlight | None = None
        # Our CERT_REQUESTs in flight, newest last: a retry does not void the earlier
        # ones, so a CERT still being repaired for one of them is taken when it completes.
        self.cert_requests: list[CertRequestInFlight] = []
        self.cert_fetched = False  # the peer's certificate came in this attempt
        self.heard_at = -math.inf  # the peer last answered us (a COOKIE, a CERT)
        self.silent = 0  # our messages in a row since which the peer said nothing

    def init_for(self, index: int) -> InitInFlight | None:
        for init in (self.init, self.earlier_init):
            if init is not None and init.index == index:
                return init
        return None

    def cert_request_for(self, index: int) -> CertRequestInFlight | None:
        for req in self.cert_requests:
            if req.index == index:
                return req
        return None

    @property
    def phase(self) -> AttemptPhase:
        return AttemptPhase.FETCHING_CERT if self.init is None else AttemptPhase.AWAITING_RESP


class Peer:
    __slots__ = (
        "ack_at",
        "acks_sent",
        "addr",
        "attempt",
        "cert_der",
        "current",
        "expect_name",
        "failures",
        "handshakes",
        "identity",
        "knows_our_cert",
        "last_received",
        "last_sent",
        "nack_heard_at",
        "no_session_at",
        "origin",
        "previous",
        "queue",
        "rekeys",
        "rtt",
        "unanswered_since",
    )

    def __init__(self, addr: Addr, origin: PeerOrigin) -> None:
        self.addr = addr
        self.origin = origin
        self.expect_name: str | None = None  # the name it must present (add_peer)
        self.cert_der: bytes | None = None  # the peer's certificate, to initiate with
        self.identity: VerifiedIdentity | None = None
        self.current: Session | None = None  # sends; the newest session
        self.previous: Session | None = None  # receives stragglers until it expires
        self.attempt: Attempt | None = None
        self.queue: deque[bytes] = deque()  # payloads waiting for a session
        self.knows_our_cert = False  # an INIT may name our certificate by fingerprint
        self.rekeys = 0
        self.handshakes = 0
        self.failures = 0
        self.last_received: float | None = None
        self.acks_sent = 0  # CONFIRMs resent on the current, unanswered session
        self.ack_at = 0.0  # when that CONFIRM is next resent (its ACK timer)
        self.last_sent = -math.inf  # our last DATA to it
        # Our first payload since the peer's last authenticated packet: data that long
        # unanswered means the peer may have lost the session (REPLY_TIMEOUT).
        self.unanswered_since: float | None = None
        self.no_session_at = -math.inf  # a NO_SESSION from it last started a handshake
        self.nack_heard_at = -math.inf  # it last NACKed a message of ours (and got a resend)
        self.rtt: float | None = None  # smoothed round trip, from handshake exchanges

    def observe_rtt(self, sample: float) -> None:
        if sample < 0:
            return
        rtt = self.rtt
        self.rtt = sample if rtt is None else rtt + C.RTT_SMOOTHING * (sample - rtt)

    @property
    def name(self) -> str | None:
        """The authenticated name, else the expected one (for events)."""
        if self.identity is not None:
            return self.identity.name
        return self.expect_name

    @property
    def state(self) -> PeerState:
        cur = self.current
        if self.attempt is not None:
            return PeerState.HANDSHAKING if cur is None else PeerState.REKEYING
        if cur is None:
            return PeerState.IDLE
        return PeerState.CONFIRMING if cur.biscuit is not None else PeerState.ESTABLISHED

    def identities(self) -> list[VerifiedIdentity]:
        """Who we hold sessions with here and whom our INITs in flight are sealed to (a
        RESP to one of those makes a session without verifying anything again)."""
        out = [] if self.identity is None else [self.identity]
        att = self.attempt
        if att is not None:
            out += [i.identity for i in (att.init, att.earlier_init) if i is not None]
        return out

    def sessions(self) -> list[Session]:
        out: list[Session] = []
        if self.current is not None:
            out.append(self.current)
        if self.previous is not None:
            out.append(self.previous)
        return out


class RevokedAddr:
    """An address whose last certificate was revoked (``PeerTable.hold_revoked``)."""

    __slots__ = ("fingerprint", "holds", "until")

    def __init__(self, fingerprint: bytes) -> None:
        self.fingerprint = fingerprint  # of the revoked certificate met there
        self.holds = 1  # times that certificate was met there in a row
        self.until = -math.inf  # monotonic: no handshake of ours goes there before


class PeerTable:
    """Peers by address and by authenticated name, sessions by local index, the indices
    of our INITs and CERT_REQUESTs in flight, and the addresses we do not dial because
    their last certificate was revoked."""

    __slots__ = (
        "_accept_identity",
        "_inbound",
        "_secrets",
        "by_addr",
        "by_name",
        "pending",
        "revoked_addrs",
        "sessions",
    )

    def __init__(self, secrets: SecretSource, accept_identity: AcceptIdentity | None) -> None:
        self._secrets = secrets
        self._accept_identity = accept_identity
        self.by_addr: dict[Addr, Peer] = {}
        self.by_name: dict[str, Addr] = {}
        self._inbound: dict[bytes, list[Addr]] = {}  # identity -> its inbound addresses
        # Every session we hold, by its local index: the data path's one lookup.
        self.sessions: dict[int, tuple[Peer, Session]] = {}
        self.pending: dict[int, Peer] = {}  # our INIT / CERT_REQUEST indices
        # Addresses whose last certificate was revoked (bounded): see hold_revoked.
        self.revoked_addrs: OrderedDict[Addr, RevokedAddr] = OrderedDict()

    # --- entries ----------------------------------------------------------------

    def declare(self, addr: Addr) -> Peer | None:
        """The entry for ``addr``, made if needed: for our own calls only (add_peer,
        connect, send), never for anything that arrives. None if the table is full."""
        peer = self.by_addr.get(addr)
        if peer is None:
            if len(self.by_addr) >= C.MAX_PEERS:
                return None
            peer = self.by_addr[addr] = Peer(addr, PeerOrigin.DECLARED)
        elif peer.origin is PeerOrigin.INBOUND:
            peer.origin = PeerOrigin.DECLARED
            self._untrack_inbound(peer)
        return peer

    def admit(self, addr: Addr, ident: VerifiedIdentity) -> Peer | None:
        """The entry for ``addr`` after a *confirmed* handshake by ``ident``. One identity
        holds at most ``MAX_ADDRS_PER_IDENTITY`` inbound entries (its own oldest goes), so
        even a certified node cannot fill the table; entries expire when idle."""
        peer = self.by_addr.get(addr)
        if peer is not None:
            return peer
        addrs = self._inbound.get(ident.fingerprint, [])
        if len(addrs) >= C.MAX_ADDRS_PER_IDENTITY:
            self.forget(self.by_addr[addrs[0]])
        if len(self.by_addr) >= C.MAX_PEERS:
            return None
        peer = self.by_addr[addr] = Peer(addr, PeerOrigin.INBOUND)
        return peer  # listed under its identity by bind()

    # --- addresses whose certificate was revoked ---------------------------------

    def hold_revoked(self, addr: Addr, fingerprint: bytes, now: float) -> RevokedAddr:
        """The certificate met at ``addr`` is revoked: no handshake of ours goes there
        (:meth:`revoked_hold`) until :meth:`bind` sees a session there with a certificate
        that verifies, or the hold runs out (``REVOKED_HOLD``, doubled each time the same
        certificate is met there again, up to ``REVOKED_HOLD_MAX``)."""
        held = self.revoked_addrs
        entry = held.get(addr)
        if entry is None or entry.fingerprint != fingerprint:
            entry = held[addr] = RevokedAddr(fingerprint)
        else:
            entry.holds += 1
        period = min(C.REVOKED_HOLD_MAX, C.REVOKED_HOLD * 2.0 ** (entry.holds - 1))
        entry.until = now + period
        held.move_to_end(addr)
        while len(held) > C.MAX_REVOKED_ADDRS:
            held.popitem(last=False)
        return entry

    def revoked_hold(self, addr: Addr, now: float) -> bool:
        """Whether ``addr`` is held: its last certificate was revoked and the hold runs."""
        entry = self.revoked_addrs.get(addr)
        return entry is not None and now < entry.until

    def forget(self, peer: Peer) -> None:
        self.cancel(peer)
        for s in peer.sessions():
            self.discard(s)
        peer.current = peer.previous = None
        del self.by_addr[peer.addr]
        ident = peer.identity
        if ident is not None and self.by_name.get(ident.name) == peer.addr:
            del self.by_name[ident.name]
        self._untrack_inbound(peer)

    def move(self, peer: Peer, addr: Addr) -> tuple[bool, Peer | None]:
        """Re-key ``peer`` (authenticated, with a session) under ``addr``, where an
        authenticated packet of its own just came from (see ``DataPath.on_data``).

        An entry already at ``addr`` is *absorbed* if it holds no session and ``addr`` may
        be this identity's (its ``expect_name``, the ``accept_identity`` hook): our
        initiation there is cancelled, its queue and its declaration are taken over. The
        move is refused (nothing changes) if that entry holds a session (another
        authenticated peer's session is never torn down, nor two merged) or if ``addr``
        may not be this identity's. Returns whether it moved, and the absorbed entry."""
        ident = peer.identity
        if ident is None:  # pragma: no cover - a session always has a bound identity
            return False, None
        other = self.by_addr.get(addr)
        if other is not None and (other.current is not None or other.previous is not None):
            return False, None
        if not self.acceptable(addr, other, ident):
            return False, None
        old = peer.addr
        by_name = self.by_name
        if other is not None:
            self.cancel(other)  # the peer answers at that address now
            oname = other.identity.name if other.identity is not None else None
            if oname is not None and oname != ident.name and by_name.get(oname) == addr:
                del by_name[oname]
            self._untrack_inbound(other)
            if other.origin is PeerOrigin.DECLARED and peer.origin is PeerOrigin.INBOUND:
                self._untrack_inbound(peer)
                peer.origin = PeerOrigin.DECLARED  # our own call declared that address
            if peer.expect_name is None:
                peer.expect_name = other.expect_name
            peer.queue.extend(other.queue)  # the caller trims it to the queue's bound
            other.queue.clear()
        del self.by_addr[old]
        self.by_addr[addr] = peer
        if self.revoked_addrs:  # an authenticated peer with a valid certificate is there now
            self.revoked_addrs.pop(addr, None)
        if by_name.get(ident.name) == old:
            by_name[ident.name] = addr
        if peer.origin is PeerOrigin.INBOUND:
            addrs = self._inbound.get(ident.fingerprint)
            if addrs is not None and old in addrs:
                addrs[addrs.index(old)] = addr
        peer.addr = addr
        return True, other

    def bind(self, peer: Peer, ident: VerifiedIdentity, cert_der: bytes) -> None:
        """``ident`` (with ``cert_der``) has just completed a handshake at ``peer``."""
        if peer.identity is not None and peer.identity.fingerprint != ident.fingerprint:
            self._untrack_inbound(peer)
        peer.identity = ident
        peer.cert_der = cert_der
        peer.knows_our_cert = True
        # A session with a verified (so not revoked) certificate: it may be dialled again.
        if self.revoked_addrs:
            self.revoked_addrs.pop(peer.addr, None)
        self.by_name[ident.name] = peer.addr
        if peer.origin is PeerOrigin.INBOUND:
            addrs = self._inbound.setdefault(ident.fingerprint, [])
            if peer.addr not in addrs:
                addrs.append(peer.addr)

    def _untrack_inbound(self, peer: Peer) -> None:
        ident = peer.identity
        addrs = self._inbound.get(ident.fingerprint) if ident is not None else None
        if ident is not None and addrs is not None and peer.addr in addrs:
            addrs.remove(peer.addr)
            if not addrs:
                del self._inbound[ident.fingerprint]

    def acceptable(self, addr: Addr, peer: Peer | None, ident: VerifiedIdentity) -> bool:
        """Whether ``ident`` may answer for ``addr`` (the peer's ``expect_name`` and the
        ``accept_identity`` hook; e.g. an end-to-end address must be that node's name)."""
        if peer is not None and peer.expect_name is not None and ident.name != peer.expect_name:
            return False
        return self._accept_identity is None or self._accept_identity(addr, ident)

    # --- indices ------------------------------------------------------------------

    def new_index(self) -> int:
        """A random index no session or pending message of ours uses."""
        while True:
            index = random_u32(self._secrets)
            if index not in self.sessions and index not in self.pending:
                return index

    def claim(self, peer: Peer) -> int:
        """A new index for one of ``peer``'s INITs or CERT_REQUESTs."""
        index = self.new_index()
        self.pending[index] = peer
        return index

    def release(self, index: int) -> None:
        self.pending.pop(index, None)

    def pending_for(self, addr: Addr, index: int) -> Peer | None:
        """The peer whose INIT or CERT_REQUEST in flight has ``index``, if it is at ``addr``."""
        peer = self.pending.get(index)
        if peer is None or peer.addr != addr:
            return None
        att = peer.attempt
        if att is None:
            return None
        if att.init_for(index) is None and att.cert_request_for(index) is None:
            return None
        return peer

    def cancel(self, peer: Peer) -> None:
        """End our initiation towards ``peer``: release its indices, wipe its secrets."""
        att = peer.attempt
        if att is None:
            return
        for init in (att.init, att.earlier_init):
            if init is not None:
                self.release(init.index)
                init.initiator.abandon()
        att.init = att.earlier_init = None
        self.release_cert_requests(att)
        peer.attempt = None

    def release_cert_requests(self, att: Attempt) -> None:
        for req in att.cert_requests:
            self.release(req.index)
        att.cert_requests.clear()

    # --- sessions -----------------------------------------------------------------

    def register(self, peer: Peer, session: Session) -> None:
        self.sessions[session.local_index] = (peer, session)

    def discard(self, session: Session | None) -> None:
        if session is not None:
            self.sessions.pop(session.local_index, None)
            session.wipe()
