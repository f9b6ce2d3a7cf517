"""``SecureEndpoint``: the sans-IO secure channel to many peers over one datagram socket.

It composes the codec (:mod:`.wire`), fragmentation (:mod:`.fragment`), cookies
(:mod:`.cookie`), the handshake (:mod:`.handshake`) and sessions (:mod:`.session`), and is
driven like every core here::

    endpoint.handle(now, Datagram(addr, data)) -> [Send, Deliver, SetTimer, Event]
    endpoint.handle(now, Timer(key))           -> [...]
    endpoint.send(now, addr, payload)          -> [...]   (may raise MessageTooLarge)
    endpoint.connect(now, addr)                -> [...]

Addresses are opaque hashables: ``(host, port)`` for links between neighbours, a node's
8-byte id for end-to-end sessions routed through the mesh. Timer keys are tuples that start with
``timer_namespace``, so two endpoints in one node never collide. Nothing raises out of
``handle``: bad input is dropped, counted in :attr:`SecureEndpoint.counters` and reported
as an ``Event("dropped", reason=...)``.
"""

from __future__ import annotations

import hmac as _hmac
import random
import struct
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from x0tta6bl4.channel import constants as C
from x0tta6bl4.channel.biscuit import BiscuitKeeper
from x0tta6bl4.channel.cookie import (
    ZERO_MAC,
    CookieGenerator,
    CookieJar,
    LoadMeter,
    RateLimiter,
    cert_check_key,
    certreq_check_key,
    certreq_cookie_key,
    check_mac1,
    cookie_key,
)
from x0tta6bl4.channel.fragment import Reassembler, split
from x0tta6bl4.channel.handshake import Initiator, Responder, SessionKeys
from x0tta6bl4.channel.session import Session
from x0tta6bl4.channel.wire import (
    CERT_REQUEST_USED,
    HDR_CERT,
    HDR_CERT_REQUEST,
    HDR_CONFIRM,
    HDR_DATA,
    INIT_CACHED_SIZE,
    INIT_MAX_SIZE,
    INIT_MIN_SIZE,
    RESP_SIZE,
    BiscuitState,
    Cert,
    CertRequest,
    check_header,
    decode_cert,
    decode_cert_request,
    decode_confirm,
    decode_cookie,
    decode_resp,
    encode,
)
from x0tta6bl4.crypto.aead import Aead
from x0tta6bl4.crypto.entropy import SYSTEM_SECRETS, SecretSource, random_u32
from x0tta6bl4.crypto.hybrid import HybridPrivateKey
from x0tta6bl4.crypto.kdf import mac16, sha256
from x0tta6bl4.errors import (
    CertificateRejected,
    CryptoError,
    DecodeError,
    HandshakeError,
    IdentityError,
    MessageTooLarge,
    RejectReason,
    ReplayError,
    X0tError,
)
from x0tta6bl4.identity.cert import NodeCertificate
from x0tta6bl4.identity.types import CertVerifier, VerifiedIdentity
from x0tta6bl4.sansio import (
    Action,
    Addr,
    Datagram,
    Deliver,
    Event,
    Input,
    Send,
    SetTimer,
    Timer,
)

_U32 = struct.Struct("<I")
_MAC_END = -C.MAC_SIZE  # mac2 is the last 16 bytes of INIT and RESP
_EPS = 1e-9
_DATA_OVERHEAD = C.DATA_OVERHEAD
_REJECT_AFTER_TIME = C.REJECT_AFTER_TIME


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


class _Attempt:
    """Our initiation towards one peer: certificate request, then INIT retries."""

    __slots__ = (
        "attempts",
        "backoff",
        "cr_check",
        "cr_index",
        "deadline",
        "identity",
        "index",
        "init_mac1",
        "initiator",
        "last_sent",
        "rekey",
        "responder_der",
        "started",
        "used_cookie",
    )

    def __init__(self, started: float, rekey: bool) -> None:
        self.started = started
        self.rekey = rekey
        self.attempts = 0  # messages sent in this attempt
        self.backoff = 0  # messages sent since the last (re)start: drives the retry delay
        self.index = 0  # of the INIT in flight (0: none)
        self.cr_index = 0  # of the CERT_REQUEST in flight (0: none)
        self.deadline = started
        self.last_sent = started
        self.initiator: Initiator | None = None  # None while asking for the certificate
        self.identity: VerifiedIdentity | None = None
        self.responder_der: bytes | None = None
        self.cr_check = b""
        self.init_mac1 = b""
        self.used_cookie = False


class _Peer:
    __slots__ = (
        "acks_sent",
        "addr",
        "cert_der",
        "current",
        "declared",
        "expect_name",
        "failures",
        "handshakes",
        "hs",
        "identity",
        "knows_our_cert",
        "last_received",
        "previous",
        "queue",
        "rekeys",
    )

    def __init__(self, addr: Addr, declared: bool) -> None:
        self.addr = addr
        # Made by us (add_peer, connect, send) rather than by a confirmed inbound
        # handshake: only inbound entries are forgotten when idle.
        self.declared = declared
        self.expect_name: str | None = None
        self.cert_der: bytes | None = None  # the peer's certificate, to initiate with
        self.identity: VerifiedIdentity | None = None
        self.current: Session | None = None
        self.previous: Session | None = None
        self.hs: _Attempt | None = None
        self.queue: deque[bytes] = deque()
        self.knows_our_cert = False
        self.rekeys = 0
        self.handshakes = 0
        self.failures = 0
        self.last_received: float | None = None
        self.acks_sent = 0  # CONFIRMs resent on the current, unanswered session

    def sessions(self) -> list[Session]:
        out: list[Session] = []
        if self.current is not None:
            out.append(self.current)
        if self.previous is not None:
            out.append(self.previous)
        return out


def _retry_delay(attempts: int, jitter: float) -> float:
    base = C.HANDSHAKE_RETRY_BASE * C.HANDSHAKE_RETRY_FACTOR ** max(0, attempts - 1)
    return min(C.HANDSHAKE_RETRY_CAP, base) * (1.0 + C.HANDSHAKE_RETRY_JITTER * jitter)


class SecureEndpoint:
    """Post-quantum secure datagrams to many peers. See the module docstring."""

    def __init__(
        self,
        cert_der: bytes,
        static_private: HybridPrivateKey,
        verifier: CertVerifier,
        *,
        wall_offset: float,
        trust_domain: str,
        max_datagram: int = C.DEFAULT_MAX_DATAGRAM,
        under_load_threshold: float = C.UNDER_LOAD_THRESHOLD,
        timer_namespace: Hashable = "x0t.secure",
        accept_identity: Callable[[Addr, VerifiedIdentity], bool] | None = None,
        secrets: SecretSource = SYSTEM_SECRETS,
        jitter: random.Random | None = None,
    ) -> None:
        """``secrets`` feeds every secret (keys, KEM randomness, cookie and biscuit keys,
        indices, message ids): the OS CSPRNG unless the simulator passes its seeded
        source. ``jitter`` only spreads retry timers (not secret; seeded in simulations)."""
        if max_datagram < C.MIN_DATAGRAM:
            raise ValueError(f"max_datagram must be at least {C.MIN_DATAGRAM}")
        own = NodeCertificate.from_der(cert_der)
        if own.static_key != static_private.public_key():
            raise IdentityError("static private key does not match the certificate")
        self.name = own.name
        self._cert_der = cert_der
        self._fingerprint = sha256(cert_der)
        self._static = static_private
        self._static_pub = static_private.public_key().to_bytes()
        self._verifier = verifier
        self._secrets = secrets
        # Retry jitter is not secret: a seeded Random is fine (the simulator seeds it).
        self._jitter = jitter if jitter is not None else random.Random()  # jitter, not secret
        self._wall_offset = wall_offset
        self._trust_domain = trust_domain
        self._max_datagram = max_datagram
        self._ns = timer_namespace
        self._accept_identity = accept_identity
        self._responder = Responder(static_private, self._fingerprint)
        self._cookie_gen = CookieGenerator(secrets)
        self._biscuits = BiscuitKeeper(secrets)
        self._ratelimit = RateLimiter()
        # INITs already decapsulated (by mac1, which covers the whole message): a replayed
        # INIT is refused before any KEM work.
        self._seen_inits: OrderedDict[bytes, None] = OrderedDict()
        # Certificates that failed verification, by SHA-256 of their DER, until when.
        self._rejected: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self._cookie_seal = Aead(cookie_key(self._static_pub))
        self._certreq_cookie = Aead(certreq_cookie_key(trust_domain))
        self._certreq_key = certreq_check_key(trust_domain)
        self._cert_key = cert_check_key(trust_domain)
        self._jar = CookieJar()
        self._load = LoadMeter(under_load_threshold)
        self._reasm = Reassembler()
        self._peers: dict[Addr, _Peer] = {}
        self._by_name: dict[str, Addr] = {}
        self._inbound: dict[bytes, list[Addr]] = {}  # identity -> its inbound addresses
        # Where we recently sent a RESP: sending there waits CONFIRM_GRACE for its CONFIRM
        # before initiating. Unauthenticated, so it can only delay us, and it is bounded.
        self._answered: OrderedDict[Addr, float] = OrderedDict()
        self._sessions: dict[int, tuple[_Peer, Session]] = {}
        self._pending: dict[int, _Peer] = {}  # our INIT / CERT_REQUEST indices
        self._certs: OrderedDict[bytes, bytes] = OrderedDict()  # fingerprint -> DER
        self._timestamps: OrderedDict[bytes, int] = OrderedDict()  # fingerprint -> ns
        self._last_timestamp = 0
        self._now = 0.0
        self.counters: dict[str, int] = {}

    # --- public API ---------------------------------------------------------------

    @property
    def max_payload(self) -> int:
        """The largest payload ``send`` accepts."""
        return self._max_datagram - C.DATA_OVERHEAD

    @property
    def fingerprint(self) -> bytes:
        return self._fingerprint

    @property
    def sessions_in_use(self) -> int:
        """Session indices currently allocated (confirmed or not)."""
        return len(self._sessions)

    @property
    def reassemblies_pending(self) -> int:
        """Partially received fragmented messages held now."""
        return len(self._reasm)

    def set_under_load(self, value: bool | None) -> None:
        """Force (True/False) or let the token bucket decide (None) whether mac2 is required."""
        self._load.forced = value

    def add_peer(
        self, addr: Addr, *, cert_der: bytes | None = None, expect_name: str | None = None
    ) -> None:
        """Declare a peer, optionally with its certificate (checked at use) and the node
        name it must present (for end-to-end sessions, where the address is that name)."""
        peer = self._peer(addr)
        if peer is None:
            raise IdentityError(f"peer table full ({C.MAX_PEERS})")
        if cert_der is not None:
            peer.cert_der = cert_der
        if expect_name is not None:
            peer.expect_name = expect_name

    def peer(self, addr: Addr, now: float | None = None) -> PeerInfo | None:
        p = self._peers.get(addr)
        if p is None:
            return None
        t = self._now if now is None else now
        cur = p.current
        return PeerInfo(
            addr=addr,
            identity=p.identity,
            established=cur is not None and self._can_send(cur, t),
            session_age=None if cur is None else t - cur.created,
            rekeys=p.rekeys,
            handshakes=p.handshakes,
            last_received=p.last_received,
            failures=p.failures,
            handshaking=p.hs is not None,
        )

    def addr_of(self, name: str) -> Addr | None:
        return self._by_name.get(name)

    def peers(self) -> list[Addr]:
        return list(self._peers)

    def connect(self, now: float, addr: Addr) -> list[Action]:
        """Start a handshake now. If one is already running, restart its give-up clock
        and send a fresh INIT unless one went out less than a retry base ago."""
        self._now = now
        peer = self._peer(addr)
        if peer is None:
            return self._drop("peer_limit", addr)
        att = peer.hs
        if att is None:
            return self._start(now, peer)
        att.started = now
        att.backoff = 0
        if now - att.last_sent >= C.HANDSHAKE_RETRY_BASE:
            return self._attempt(now, peer)
        att.deadline = att.last_sent + C.HANDSHAKE_RETRY_BASE  # soon, but no flood
        return [SetTimer(att.deadline, (self._ns, "hs", addr))]

    def send(self, now: float, addr: Addr, payload: bytes) -> list[Action]:
        """Seal ``payload`` for ``addr`` on the current session, or queue it (bounded,
        drop-oldest) and start a handshake. Raises ``MessageTooLarge`` (never truncates)."""
        self._now = now
        if len(payload) > self._max_datagram - C.DATA_OVERHEAD:
            raise MessageTooLarge(len(payload), self._max_datagram - C.DATA_OVERHEAD)
        peer = self._peer(addr)
        if peer is None:
            return self._drop("peer_limit", addr)
        cur = peer.current
        if cur is not None and self._can_send(cur, now):
            out = self._seal(peer, cur, payload)
            if peer.hs is None and self._wants_rekey(cur, now):
                out += self._start(now, peer)
            return out
        self._enqueue(peer, payload)
        if peer.hs is not None:
            return []
        answered = self._answered.get(addr)
        if answered is not None and now - answered < C.CONFIRM_GRACE:
            # we just answered an INIT from there: its CONFIRM should be on its way
            return [SetTimer(answered + C.CONFIRM_GRACE, (self._ns, "confirm", addr))]
        return self._start(now, peer)

    def handle(self, now: float, inp: Input) -> list[Action]:
        """Process one input. Never raises: bad input is dropped and counted."""
        self._now = now
        try:
            if isinstance(inp, Datagram):
                return self._on_datagram(now, inp.addr, inp.data)
            if isinstance(inp, Timer):
                return self._on_timer(now, inp.key)
            return self._drop("unsupported_input", None)
        except X0tError as exc:  # a typed error not mapped below: still only a drop
            return self._drop(f"error:{type(exc).__name__}", None)
        except Exception as exc:  # a bug: count it loudly rather than crash the loop
            return self._drop("internal_error", None, error=type(exc).__name__)

    # --- bookkeeping --------------------------------------------------------------

    def _count(self, reason: str, n: int = 1) -> None:
        self.counters[reason] = self.counters.get(reason, 0) + n

    def _drop(self, reason: str, addr: Addr | None, **fields: Any) -> list[Action]:
        self._count(reason)
        return [Event("dropped", {"reason": reason, "addr": _label(addr), **fields})]

    def _peer(self, addr: Addr) -> _Peer | None:
        """The entry for ``addr``, made if needed: for our own calls only (add_peer,
        connect, send), never for anything that arrives."""
        peer = self._peers.get(addr)
        if peer is None:
            if len(self._peers) >= C.MAX_PEERS:
                return None
            peer = self._peers[addr] = _Peer(addr, declared=True)
        elif not peer.declared:
            peer.declared = True
            self._untrack_inbound(peer)
        return peer

    def _admit(self, addr: Addr, ident: VerifiedIdentity) -> _Peer | None:
        """The entry for ``addr`` after a *confirmed* handshake by ``ident``. One identity
        holds at most ``MAX_ADDRS_PER_IDENTITY`` inbound entries (its own oldest goes), so
        even a certified node cannot fill the table; entries expire when idle."""
        peer = self._peers.get(addr)
        if peer is not None:
            return peer
        addrs = self._inbound.get(ident.fingerprint, [])
        if len(addrs) >= C.MAX_ADDRS_PER_IDENTITY:
            self._forget_peer(self._peers[addrs[0]])
        if len(self._peers) >= C.MAX_PEERS:
            return None
        peer = self._peers[addr] = _Peer(addr, declared=False)
        return peer  # listed under its identity by _established

    def _forget_peer(self, peer: _Peer) -> None:
        self._cancel(peer)
        for s in peer.sessions():
            self._discard(s)
        peer.current = peer.previous = None
        del self._peers[peer.addr]
        ident = peer.identity
        if ident is not None and self._by_name.get(ident.name) == peer.addr:
            del self._by_name[ident.name]
        self._untrack_inbound(peer)

    def _untrack_inbound(self, peer: _Peer) -> None:
        ident = peer.identity
        addrs = self._inbound.get(ident.fingerprint) if ident is not None else None
        if ident is not None and addrs is not None and peer.addr in addrs:
            addrs.remove(peer.addr)
            if not addrs:
                del self._inbound[ident.fingerprint]

    def _acceptable(self, addr: Addr, peer: _Peer | None, ident: VerifiedIdentity) -> bool:
        """Whether ``ident`` may answer for ``addr`` (the peer's ``expect_name`` and the
        ``accept_identity`` hook; e.g. an end-to-end address must be that node's name)."""
        if peer is not None and peer.expect_name is not None and ident.name != peer.expect_name:
            return False
        return self._accept_identity is None or self._accept_identity(addr, ident)

    def _peer_name(self, peer: _Peer) -> str | None:
        if peer.identity is not None:
            return peer.identity.name
        return peer.expect_name

    def _wall(self, now: float) -> float:
        return now + self._wall_offset

    def _timestamp(self, now: float) -> int:
        ts = max(int(self._wall(now) * 1e9), self._last_timestamp + 1)
        self._last_timestamp = ts
        return ts

    def _new_index(self) -> int:
        while True:
            index = random_u32(self._secrets)
            if index not in self._sessions and index not in self._pending:
                return index

    def _emit(self, addr: Addr, message: bytes) -> list[Action]:
        if len(message) <= self._max_datagram:
            return [Send(addr, message)]
        message_id = random_u32(self._secrets)  # unguessable: nobody can pre-plant it
        return [Send(addr, d) for d in split(message, message_id, self._max_datagram)]

    def _seal(self, peer: _Peer, session: Session, payload: bytes) -> list[Action]:
        """``payload`` on ``session``; inside CONFIRM while the responder has not answered."""
        data = session.seal(payload)
        if session.biscuit is None:
            return [Send(peer.addr, data)]
        return self._emit(peer.addr, HDR_CONFIRM + session.biscuit + data)

    def _enqueue(self, peer: _Peer, payload: bytes) -> None:
        peer.queue.append(payload)
        while len(peer.queue) > C.MAX_QUEUED_PER_PEER:
            peer.queue.popleft()
            self._count("queue_overflow")

    def _flush(self, peer: _Peer, session: Session) -> list[Action]:
        out: list[Action] = []
        while peer.queue:
            out += self._seal(peer, session, peer.queue.popleft())
        return out

    @staticmethod
    def _can_send(s: Session, now: float) -> bool:
        return (
            s.confirmed
            and now - s.created < C.REJECT_AFTER_TIME
            and s.send_count < C.REJECT_AFTER_MESSAGES
        )

    @staticmethod
    def _wants_rekey(s: Session, now: float) -> bool:
        limit = C.REKEY_AFTER_TIME if s.initiator else C.REKEY_AFTER_TIME + C.RESPONDER_REKEY_DELAY
        return now - s.created >= limit or s.send_count >= C.REKEY_AFTER_MESSAGES

    def _verify_offered(self, der: bytes, now: float) -> VerifiedIdentity:
        """Verify a certificate someone sent us, remembering failures for a while: a
        replayed bad certificate costs a hash, not an ML-DSA verification."""
        key = sha256(der)
        hit = self._rejected.get(key)
        if hit is not None:
            if now < hit[1]:
                raise CertificateRejected(RejectReason(hit[0]), "rejected recently (cached)")
            del self._rejected[key]
        try:
            return self._verify(der, now)
        except CertificateRejected as exc:
            self._rejected[key] = (exc.reason.value, now + C.REJECTED_CERT_TTL)
            while len(self._rejected) > C.MAX_REJECTED_CERTS:
                self._rejected.popitem(last=False)
            raise

    def _verify(self, der: bytes, now: float) -> VerifiedIdentity:
        ident = self._verifier(der, self._wall(now))
        if ident.trust_domain != self._trust_domain:
            raise CertificateRejected(
                RejectReason.WRONG_TRUST_DOMAIN,
                f"{ident.spiffe_id} is not in {self._trust_domain!r}",
            )
        return ident

    def _cache_cert(self, ident: VerifiedIdentity, der: bytes) -> list[Action]:
        fp = ident.fingerprint
        known = fp in self._certs
        self._certs[fp] = der
        self._certs.move_to_end(fp)
        while len(self._certs) > C.MAX_CERT_CACHE:
            self._certs.popitem(last=False)
        if known:
            return []
        return [Event("cert_cached", {"peer": ident.name, "size": len(der)})]

    def _register(self, peer: _Peer, session: Session) -> None:
        self._sessions[session.local_index] = (peer, session)

    def _discard(self, session: Session | None) -> None:
        if session is not None:
            self._sessions.pop(session.local_index, None)
            session.wipe()

    def _expiry_timer(self, peer: _Peer) -> list[Action]:
        sessions = peer.sessions()
        if not sessions:
            return []
        at = min(s.created for s in sessions) + C.REJECT_AFTER_TIME
        return [SetTimer(at, (self._ns, "expire", peer.addr))]

    # --- initiating -----------------------------------------------------------------

    def _start(self, now: float, peer: _Peer) -> list[Action]:
        peer.hs = _Attempt(now, rekey=peer.current is not None)
        started = Event(
            "handshake_started",
            {
                "peer": self._peer_name(peer),
                "addr": _label(peer.addr),
                "rekey": peer.hs.rekey,
            },
        )
        return [started, *self._attempt(now, peer)]

    def _cancel(self, peer: _Peer) -> None:
        att = peer.hs
        if att is not None:
            self._pending.pop(att.index, None)
            self._pending.pop(att.cr_index, None)
            if att.initiator is not None:
                att.initiator.abandon()
            peer.hs = None

    def _responder_identity(self, peer: _Peer, now: float) -> tuple[VerifiedIdentity, bytes] | None:
        der = peer.cert_der
        if der is None:
            return None
        try:
            ident = self._verify(der, now)
        except CertificateRejected as exc:
            self._count(f"cert_rejected:{exc.reason.value}")
            peer.cert_der = None  # perhaps renewed: ask the peer for its current one
            return None
        if not self._acceptable(peer.addr, peer, ident):
            self._count("unexpected_identity")
            peer.cert_der = None
            return None
        return ident, der

    def _attempt(self, now: float, peer: _Peer) -> list[Action]:
        """Send (or resend) our INIT, or a CERT_REQUEST if we lack the peer's certificate.
        Every ``CERT_REFRESH_AFTER``-th unanswered INIT also asks for the certificate
        again, in parallel: the peer may have renewed its certificate and static key."""
        att = peer.hs
        assert att is not None
        self._pending.pop(att.index, None)
        att.index = 0
        if att.initiator is not None:
            att.initiator.abandon()
            att.initiator = None
        att.attempts += 1
        att.backoff += 1
        att.last_sent = now
        cookie = self._jar.get(now, peer.addr)
        att.used_cookie = cookie is not None
        responder = self._responder_identity(peer, now)
        out: list[Action]
        if responder is None:
            out = self._cert_request(peer, cookie)
        else:
            ident, der = responder
            att.identity, att.responder_der = ident, der
            att.index = index = self._new_index()
            self._pending[index] = peer
            init = Initiator(
                static_private=self._static,
                fingerprint=self._fingerprint,
                responder_static=ident.static_key,
                responder_fingerprint=ident.fingerprint,
                sender_index=index,
                secrets=self._secrets,
            )
            full = att.attempts > 1 or not peer.knows_our_cert
            message = init.create_init(
                timestamp=self._timestamp(now),
                fingerprint=None if full else self._fingerprint,
                cert_der=self._cert_der if full else None,
                cookie=cookie,
            )
            att.initiator = init
            att.init_mac1 = message[-2 * C.MAC_SIZE : _MAC_END]
            out = self._emit(peer.addr, message)
            if att.backoff % C.CERT_REFRESH_AFTER == 0:
                out += self._cert_request(peer, cookie)
        att.deadline = now + _retry_delay(att.backoff, self._jitter.random())
        out.append(SetTimer(att.deadline, (self._ns, "hs", peer.addr)))
        return out

    def _cert_request(self, peer: _Peer, cookie: bytes | None) -> list[Action]:
        att = peer.hs
        assert att is not None
        self._pending.pop(att.cr_index, None)
        att.cr_index = index = self._new_index()
        self._pending[index] = peer
        body = HDR_CERT_REQUEST + _U32.pack(index)
        mac2 = mac16(cookie, body) if cookie is not None else ZERO_MAC
        check = mac16(self._certreq_key, body + mac2)
        att.cr_check = check
        return [Send(peer.addr, encode(CertRequest(index, mac2, check)))]

    def _on_hs_timer(self, now: float, peer: _Peer) -> list[Action]:
        att = peer.hs
        if att is None or now + _EPS < att.deadline:
            return []
        if now - att.started >= C.REKEY_ATTEMPT_TIME:
            self._cancel(peer)
            peer.failures += 1
            dropped = len(peer.queue)
            if dropped:
                self._count("queue_dropped", dropped)
                peer.queue.clear()
            return [
                Event(
                    "handshake_failed",
                    {
                        "peer": self._peer_name(peer),
                        "addr": _label(peer.addr),
                        "attempts": att.attempts,
                        "reason": "timeout",
                        "queued_dropped": dropped,
                    },
                )
            ]
        if att.used_cookie:  # unanswered with mac2: the cookie may be stale (peer restarted)
            self._jar.forget(peer.addr)
        return self._attempt(now, peer)

    # --- datagrams --------------------------------------------------------------------

    def _on_datagram(self, now: float, addr: Addr, data: bytes) -> list[Action]:
        if data[:4] == HDR_DATA:  # the hot path first
            return self._on_data(now, addr, data)
        try:
            msg_type = check_header(data)
        except DecodeError:
            return self._drop("malformed", addr)
        if msg_type == C.MSG_DATA:
            return self._on_data(now, addr, data)
        if msg_type == C.MSG_FRAGMENT:
            return self._on_fragment(now, addr, data)
        return self._dispatch(now, addr, msg_type, data)

    def _dispatch(self, now: float, addr: Addr, msg_type: int, data: bytes) -> list[Action]:
        if msg_type == C.MSG_INIT:
            return self._on_init(now, addr, data)
        if msg_type == C.MSG_RESP:
            return self._on_resp(now, addr, data)
        if msg_type == C.MSG_COOKIE:
            return self._on_cookie(now, addr, data)
        if msg_type == C.MSG_CERT_REQUEST:
            return self._on_cert_request(now, addr, data)
        if msg_type == C.MSG_CERT:
            return self._on_cert(now, addr, data)
        if msg_type == C.MSG_CONFIRM:
            return self._on_confirm(now, addr, data)
        return self._drop("malformed", addr)  # DATA or FRAGMENT inside a FRAGMENT

    def _on_fragment(self, now: float, addr: Addr, data: bytes) -> list[Action]:
        peer = self._peers.get(addr)
        known = peer is not None and (peer.hs is not None or peer.current is not None)
        try:
            added = self._reasm.add(now, addr, data, known=known)
        except DecodeError:
            return self._drop("bad_fragment", addr)
        out: list[Action] = []
        if added.refused:
            return self._drop("reassembly_full", addr)
        if added.evicted:
            self._count("reassembly_evicted", added.evicted)
        if added.duplicate:
            self._count("duplicate_fragment")
        if added.started is not None:
            message_id = _U32.unpack_from(data, C.HEADER_SIZE)[0]
            out.append(SetTimer(added.started, (self._ns, "reasm", addr, message_id)))
        if added.message is not None:
            try:
                msg_type = check_header(added.message)
            except DecodeError:
                return [*out, *self._drop("malformed", addr)]
            out += self._dispatch(now, addr, msg_type, added.message)
        return out

    def _on_data(self, now: float, addr: Addr, data: bytes) -> list[Action]:
        if len(data) < _DATA_OVERHEAD:
            return self._drop("malformed", addr)
        entry = self._sessions.get(_U32.unpack_from(data, 4)[0])
        if entry is None:
            return self._drop("unknown_index", addr)
        peer, session = entry
        if now - session.created >= _REJECT_AFTER_TIME:
            return self._drop("expired_session", addr)
        try:
            payload = session.open(data)
        except ReplayError:
            return self._drop("replay", addr)
        except CryptoError:
            return self._drop("decrypt_failed", addr)
        peer.last_received = now
        if session.biscuit is not None:  # the responder has the session: stop CONFIRMing
            session.biscuit = None
        if payload:
            ident = peer.identity
            return [Deliver(ident.name if ident is not None else _label(addr), 0, payload)]
        return []

    # --- responder ----------------------------------------------------------------------

    def _on_init(self, now: float, addr: Addr, data: bytes) -> list[Action]:
        """Answer an INIT without keeping anything of it: the responder's half of the
        handshake leaves in RESP's biscuit. Nothing here creates, evicts, cancels or
        replaces state that an authenticated peer relies on."""
        if not INIT_MIN_SIZE <= len(data) <= INIT_MAX_SIZE:
            return self._drop("malformed", addr)
        if not check_mac1(data, self._responder.mac1_key):
            return self._drop("bad_mac1", addr)
        mac2_ok = False
        if data[_MAC_END:] != ZERO_MAC:
            if not self._cookie_gen.check_mac2(now, addr, data):
                return self._drop("bad_mac2", addr)
            mac2_ok = True
        mac1 = data[-2 * C.MAC_SIZE : _MAC_END]
        if self._load.hit(now):
            if not mac2_ok:
                self._count("cookie_sent")
                sender_index = _U32.unpack_from(data, C.HEADER_SIZE)[0]
                reply = self._cookie_gen.reply(now, addr, sender_index, self._cookie_seal, mac1)
                return [Send(addr, reply)]
            if not self._ratelimit.allow(now, addr):
                return self._drop("rate_limited", addr)
        if mac1 in self._seen_inits:
            return self._drop("replay", addr)
        self._seen_inits[mac1] = None
        while len(self._seen_inits) > C.MAX_SEEN_INITS:
            self._seen_inits.popitem(last=False)
        try:
            hs = self._responder.consume_init(data)
        except DecodeError:
            return self._drop("malformed", addr)
        except CryptoError:
            return self._drop("decrypt_failed", addr)
        payload = hs.payload
        out: list[Action] = []
        if payload.fingerprint is not None:
            cached = self._certs.get(payload.fingerprint)
            if cached is None:
                return self._drop("unknown_fingerprint", addr)
            der = cached
        else:
            assert payload.cert_der is not None
            der = payload.cert_der
        try:
            ident = self._verify_offered(der, now)
        except CertificateRejected as exc:
            return self._drop(f"cert_rejected:{exc.reason.value}", addr)
        fp = ident.fingerprint
        if fp == self._fingerprint:
            return self._drop("reflected", addr)
        if payload.cert_der is not None:
            out += self._cache_cert(ident, der)
        else:
            self._certs.move_to_end(fp)
        peer = self._peers.get(addr)
        if not self._acceptable(addr, peer, ident):
            return [*out, *self._drop("unexpected_identity", addr, peer=ident.name)]
        ts = payload.timestamp
        if ts <= self._timestamps.get(fp, -1):
            return [*out, *self._drop("stale_timestamp", addr, peer=ident.name)]
        att = peer.hs if peer is not None else None
        if (
            att is not None
            and att.initiator is not None
            and self._static_pub < ident.static_key.to_bytes()
        ):
            # Simultaneous open: the lower static key's INIT wins and the other side
            # answers it. Dropping an INIT changes nothing; the other side keeps its own
            # attempt until an authenticated session from us makes it moot.
            return [*out, *self._drop("simultaneous_open_lost", addr, peer=ident.name)]
        index = self._new_index()

        def seal_state(keys: SessionKeys) -> bytes:
            state = BiscuitState(
                local_index=keys.local_index,
                remote_index=keys.remote_index,
                created=now,
                timestamp=ts,
                fingerprint=fp,
                send_key=keys.send_key,
                recv_key=keys.recv_key,
            )
            return self._biscuits.seal(now, state)

        resp, _keys = hs.create_resp(
            initiator_static=ident.static_key,
            initiator_fingerprint=fp,
            sender_index=index,
            secrets=self._secrets,
            biscuit=seal_state,
        )
        self._answered[addr] = now
        self._answered.move_to_end(addr)
        while len(self._answered) > C.MAX_COOKIE_JAR:
            self._answered.popitem(last=False)
        return out + self._emit(addr, resp)

    def _on_confirm(self, now: float, addr: Addr, data: bytes) -> list[Action]:
        """The initiator's first packets: its biscuit back, and DATA under the new keys.
        Only when that DATA authenticates does the responder create anything."""
        try:
            msg = decode_confirm(data)
        except DecodeError:
            return self._drop("malformed", addr)
        index = _U32.unpack_from(msg.data, C.HEADER_SIZE)[0]
        if index in self._sessions:  # a later CONFIRM on a session we already made
            return self._on_data(now, addr, msg.data)
        try:
            state = self._biscuits.open(now, msg.biscuit)
        except HandshakeError:
            return self._drop("stale_biscuit", addr)
        except (CryptoError, DecodeError):
            return self._drop("bad_biscuit", addr)
        if state.local_index != index:
            return self._drop("bad_biscuit", addr)
        fp = state.fingerprint
        der = self._certs.get(fp)
        if der is None:
            return self._drop("unknown_fingerprint", addr)
        if state.timestamp <= self._timestamps.get(fp, -1):
            return self._drop("stale_timestamp", addr)
        session = SessionKeys(
            local_index=state.local_index,
            remote_index=state.remote_index,
            send_key=state.send_key,
            recv_key=state.recv_key,
            initiator=False,
        ).session(state.created, self._max_datagram)
        try:
            payload = session.open(msg.data)
        except (CryptoError, ReplayError, DecodeError):
            session.wipe()
            return self._drop("decrypt_failed", addr)
        try:  # authenticated from here on; the certificate may have expired meanwhile
            ident = self._verify(der, now)
        except CertificateRejected as exc:
            session.wipe()
            return self._drop(f"cert_rejected:{exc.reason.value}", addr)
        peer = self._admit(addr, ident)
        if peer is None:
            session.wipe()
            return self._drop("peer_limit", addr)
        if not self._acceptable(addr, peer, ident):
            session.wipe()
            return self._drop("unexpected_identity", addr, peer=ident.name)
        self._timestamps[fp] = state.timestamp
        self._timestamps.move_to_end(fp)
        while len(self._timestamps) > C.MAX_TIMESTAMP_ENTRIES:
            self._timestamps.popitem(last=False)
        session.confirmed = True
        self._register(peer, session)
        peer.last_received = now
        self._answered.pop(addr, None)
        self._cancel(peer)  # an authenticated session exists: our own initiation is moot
        out = self._established(now, peer, session, ident, der, "responder", now - state.created)
        if payload:
            out.append(Deliver(ident.name, 0, payload))
        return out

    def _established(
        self,
        now: float,
        peer: _Peer,
        session: Session,
        ident: VerifiedIdentity,
        der: bytes,
        role: str,
        duration: float,
    ) -> list[Action]:
        rekey = peer.current is not None
        self._discard(peer.previous)
        peer.previous, peer.current = peer.current, session
        if peer.identity is not None and peer.identity.fingerprint != ident.fingerprint:
            self._untrack_inbound(peer)
        peer.identity = ident
        peer.cert_der = der
        peer.knows_our_cert = True
        peer.handshakes += 1
        peer.failures = 0
        self._by_name[ident.name] = peer.addr
        if not peer.declared:
            addrs = self._inbound.setdefault(ident.fingerprint, [])
            if peer.addr not in addrs:
                addrs.append(peer.addr)
        fields = {"peer": ident.name, "addr": _label(peer.addr), "role": role}
        out: list[Action] = [Event("handshake_complete", {**fields, "duration": duration})]
        if rekey:
            peer.rekeys += 1
            out.append(Event("session_rekeyed", fields))
        if role == "initiator" or not peer.queue:
            # The initiator's first packet authenticates it and hands back the biscuit;
            # the responder's first packet tells the initiator to stop sending CONFIRM.
            out += self._seal(peer, session, b"")
        out += self._flush(peer, session)
        if role == "initiator":
            peer.acks_sent = 0
            out.append(SetTimer(now + C.ACK_RETRY_BASE, (self._ns, "ack", peer.addr)))
        out += self._expiry_timer(peer)
        return out

    # --- initiator: RESP, COOKIE, CERT ----------------------------------------------------

    def _pending_for(self, addr: Addr, index: int) -> _Peer | None:
        peer = self._pending.get(index)
        if peer is None or peer.addr != addr or peer.hs is None:
            return None
        if index != peer.hs.index and index != peer.hs.cr_index:
            return None
        return peer

    def _on_resp(self, now: float, addr: Addr, data: bytes) -> list[Action]:
        try:
            resp = decode_resp(data)
        except DecodeError:
            return self._drop("malformed", addr)
        peer = self._pending_for(addr, resp.receiver_index)
        att = peer.hs if peer is not None else None
        if (
            peer is None
            or att is None
            or att.initiator is None
            or att.identity is None
            or att.responder_der is None
            or resp.receiver_index != att.index
        ):
            return self._drop("unknown_index", addr)
        # RESP's mac1 is keyed by our ephemeral key: cheap to check, and it names nobody.
        if not check_mac1(data, att.initiator.resp_mac1_key):
            return self._drop("bad_mac1", addr)
        if resp.mac2 != ZERO_MAC:  # we never hand out cookies for RESP
            return self._drop("bad_mac2", addr)
        try:
            keys: SessionKeys = att.initiator.consume_resp(data)
        except DecodeError:
            return self._drop("malformed", addr)
        except (CryptoError, HandshakeError):
            return self._drop("decrypt_failed", addr)
        self._cancel(peer)
        session = keys.session(now, self._max_datagram)
        session.biscuit = resp.biscuit
        self._register(peer, session)
        return self._established(
            now, peer, session, att.identity, att.responder_der, "initiator", now - att.started
        )

    def _on_cookie(self, now: float, addr: Addr, data: bytes) -> list[Action]:
        try:
            msg = decode_cookie(data)
        except DecodeError:
            return self._drop("malformed", addr)
        peer = self._pending_for(addr, msg.receiver_index)
        if peer is None:
            return self._drop("unknown_index", addr)
        att = peer.hs
        assert att is not None
        for_cert_request = msg.receiver_index == att.cr_index
        if for_cert_request:
            seal, ad = self._certreq_cookie, att.cr_check
        else:
            assert att.identity is not None
            seal = Aead(cookie_key(att.identity.static_key.to_bytes()))
            ad = att.init_mac1
        try:
            cookie = seal.open(msg.nonce, msg.sealed_cookie, ad)
        except CryptoError:
            return self._drop("decrypt_failed", addr)
        self._jar.put(now, addr, cookie)
        self._count("cookie_received")
        if for_cert_request:  # a certificate request costs nothing: ask again now
            return self._cert_request(peer, cookie)
        return []  # the next INIT retry carries mac2 (no extra load on a busy responder)

    def _on_cert_request(self, now: float, addr: Addr, data: bytes) -> list[Action]:
        if len(data) != C.CERT_REQUEST_SIZE:
            return self._drop("malformed", addr)
        used = CERT_REQUEST_USED - C.MAC_SIZE
        if not _hmac.compare_digest(
            mac16(self._certreq_key, data[:used]), data[used:CERT_REQUEST_USED]
        ):
            return self._drop("bad_check", addr)
        try:
            req = decode_cert_request(data)
        except DecodeError:
            return self._drop("malformed", addr)
        if req.mac2 == ZERO_MAC:
            self._count("cookie_sent")
            return [
                Send(
                    addr,
                    self._cookie_gen.reply(
                        now, addr, req.request_id, self._certreq_cookie, req.check
                    ),
                )
            ]
        if not self._cookie_gen.check_mac2(now, addr, data[: C.HEADER_SIZE + 4 + C.MAC_SIZE]):
            return self._drop("bad_mac2", addr)
        self._count("cert_sent")
        body = HDR_CERT + _U32.pack(req.request_id) + struct.pack("<H", len(self._cert_der))
        body += self._cert_der
        message = encode(Cert(req.request_id, self._cert_der, mac16(self._cert_key, body)))
        return self._emit(addr, message)

    def _on_cert(self, now: float, addr: Addr, data: bytes) -> list[Action]:
        try:
            msg = decode_cert(data)
        except DecodeError:
            return self._drop("malformed", addr)
        if not _hmac.compare_digest(mac16(self._cert_key, data[:_MAC_END]), msg.check):
            return self._drop("bad_check", addr)
        peer = self._pending_for(addr, msg.request_id)
        if peer is None or peer.hs is None or msg.request_id != peer.hs.cr_index:
            return self._drop("unknown_index", addr)
        att = peer.hs
        try:
            ident = self._verify(msg.cert_der, now)
        except CertificateRejected as exc:
            return self._drop(f"cert_rejected:{exc.reason.value}", addr)
        if ident.fingerprint == self._fingerprint:
            return self._drop("reflected", addr)
        if not self._acceptable(addr, peer, ident):
            return self._drop("unexpected_identity", addr, peer=ident.name)
        out = self._cache_cert(ident, msg.cert_der)
        self._pending.pop(att.cr_index, None)
        att.cr_index = 0
        if att.initiator is not None and msg.cert_der == att.responder_der:
            return out  # a refresh that found the certificate unchanged: keep trying INIT
        peer.cert_der = msg.cert_der
        return out + self._attempt(now, peer)

    # --- timers -------------------------------------------------------------------------

    def _on_timer(self, now: float, key: Hashable) -> list[Action]:
        if not isinstance(key, tuple) or len(key) < 3 or key[0] != self._ns:
            return self._drop("unknown_timer", None)
        kind, addr = key[1], key[2]
        if kind == "reasm" and len(key) == 4:
            if self._reasm.expire(now, addr, key[3]):
                return self._drop("reassembly_timeout", addr)
            return []
        peer = self._peers.get(addr)
        if peer is None:
            return []
        if kind == "hs":
            return self._on_hs_timer(now, peer)
        if kind == "expire":
            return self._on_expire_timer(now, peer)
        if kind == "confirm":
            return self._on_confirm_timer(now, peer)
        if kind == "ack":
            return self._on_ack_timer(now, peer)
        return self._drop("unknown_timer", None)

    def _on_expire_timer(self, now: float, peer: _Peer) -> list[Action]:
        def dead(s: Session) -> bool:
            return now + _EPS >= s.created + C.REJECT_AFTER_TIME

        if peer.previous is not None and dead(peer.previous):
            self._discard(peer.previous)
            peer.previous = None
        if peer.current is not None and dead(peer.current):
            self._discard(peer.current)
            peer.current = None
        if not peer.declared and not peer.sessions() and peer.hs is None and not peer.queue:
            self._forget_peer(peer)  # an inbound peer that went quiet
            return []
        return self._expiry_timer(peer)

    def _on_ack_timer(self, now: float, peer: _Peer) -> list[Action]:
        """Our new session's CONFIRM is unanswered: resend it, and after
        ``ACK_RETRIES`` give the session up and handshake again (the responder never
        made it, or has since lost it)."""
        cur = peer.current
        if cur is None or cur.biscuit is None:
            return []
        if peer.acks_sent >= C.ACK_RETRIES:
            self._count("confirm_unanswered")
            self._discard(cur)
            peer.current, peer.previous = peer.previous, None
            out: list[Action] = [
                Event(
                    "session_unconfirmed",
                    {"peer": self._peer_name(peer), "addr": _label(peer.addr)},
                )
            ]
            return out + (self._start(now, peer) if peer.hs is None else [])
        peer.acks_sent += 1
        delay = min(C.HANDSHAKE_RETRY_CAP, C.ACK_RETRY_BASE * 2**peer.acks_sent)
        return [
            *self._seal(peer, cur, b""),
            SetTimer(now + delay, (self._ns, "ack", peer.addr)),
        ]

    def _on_confirm_timer(self, now: float, peer: _Peer) -> list[Action]:
        if not peer.queue or peer.hs is not None:
            return []
        cur = peer.current
        if cur is not None and self._can_send(cur, now):
            return self._flush(peer, cur)
        return self._start(now, peer)


def handshake_wire_cost(
    cert_size: int, max_datagram: int = C.DEFAULT_MAX_DATAGRAM
) -> dict[str, list[tuple[str, str, int, int]]]:
    """Datagrams and bytes on the wire per handshake, from the codec's own sizes:
    ``{"first_contact": [...], "cached": [...]}``, each entry ``(message, direction,
    datagrams, bytes)`` for certificates of ``cert_size`` bytes (fragment headers included)."""

    def cost(name: str, direction: str, size: int) -> tuple[str, str, int, int]:
        parts = split(bytes(size), 0, max_datagram)
        return name, direction, len(parts), sum(len(p) for p in parts)

    init_full = INIT_MIN_SIZE - 1 + cert_size  # INIT_MIN_SIZE has a one-byte certificate
    cert = C.HEADER_SIZE + C.INDEX_SIZE + 2 + cert_size + C.MAC_SIZE
    confirm = C.HEADER_SIZE + C.BISCUIT_SIZE + C.DATA_OVERHEAD
    cookie = C.HEADER_SIZE + C.INDEX_SIZE + C.COOKIE_NONCE_SIZE + C.COOKIE_SIZE + C.AEAD_TAG_SIZE
    return {
        "first_contact": [
            cost("CERT_REQUEST", "I->R", C.CERT_REQUEST_SIZE),
            cost("COOKIE", "R->I", cookie),
            cost("CERT_REQUEST + mac2", "I->R", C.CERT_REQUEST_SIZE),
            cost("CERT", "R->I", cert),
            cost("INIT (certificate)", "I->R", init_full),
            cost("RESP", "R->I", RESP_SIZE),
            cost("CONFIRM (keepalive)", "I->R", confirm),
            cost("DATA keepalive", "R->I", C.DATA_OVERHEAD),
        ],
        "cached": [
            cost("INIT (fingerprint)", "I->R", INIT_CACHED_SIZE),
            cost("RESP", "R->I", RESP_SIZE),
            cost("CONFIRM (keepalive)", "I->R", confirm),
            cost("DATA keepalive", "R->I", C.DATA_OVERHEAD),
        ],
    }


def _label(addr: Addr | None) -> Any:
    """A JSON-friendly, deterministic rendering of an address for events."""
    if addr is None or isinstance(addr, str | int):
        return addr
    return repr(addr)
