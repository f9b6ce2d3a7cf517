"""``SecureEndpoint``: the sans-IO secure channel to many peers over one datagram socket.

It composes the codec (:mod:`.wire`), fragmentation (:mod:`.fragment`), cookies
(:mod:`.cookie`), the handshake (:mod:`.handshake`) and sessions (:mod:`.session`), and is
driven like every core here::

    endpoint.handle(now, Datagram(addr, data)) -> [Send, Deliver, SetTimer, Event]
    endpoint.handle(now, Timer(key))           -> [...]
    endpoint.send(now, addr, payload)          -> [...]   (may raise MessageTooLarge)
    endpoint.connect(now, addr)                -> [...]

Addresses are opaque hashables: ``(host, port)`` for links between neighbours, a node name
for end-to-end sessions routed through the mesh. Timer keys are tuples that start with
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

from x0tta6bl4.crypto.aead import Aead
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
from x0tta6bl4.protocol import constants as C
from x0tta6bl4.protocol.cookie import (
    ZERO_MAC,
    CookieGenerator,
    CookieJar,
    LoadMeter,
    cert_check_key,
    certreq_check_key,
    certreq_cookie_key,
    check_mac1,
    cookie_key,
)
from x0tta6bl4.protocol.events import (
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
from x0tta6bl4.protocol.fragment import Reassembler, split
from x0tta6bl4.protocol.handshake import Initiator, Responder, SessionKeys
from x0tta6bl4.protocol.session import Session
from x0tta6bl4.protocol.wire import (
    CERT_REQUEST_USED,
    HDR_CERT,
    HDR_CERT_REQUEST,
    HDR_DATA,
    INIT_CACHED_SIZE,
    INIT_MAX_SIZE,
    INIT_MIN_SIZE,
    RESP_SIZE,
    Cert,
    CertRequest,
    check_header,
    decode_cert,
    decode_cert_request,
    decode_cookie,
    encode,
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


class _Unconfirmed:
    """A responder session waiting for the initiator's first packet."""

    __slots__ = ("cert_der", "identity", "session", "started", "timestamp")

    def __init__(
        self,
        session: Session,
        identity: VerifiedIdentity,
        cert_der: bytes,
        timestamp: int,
        started: float,
    ) -> None:
        self.session = session
        self.identity = identity
        self.cert_der = cert_der
        self.timestamp = timestamp
        self.started = started


class _Peer:
    __slots__ = (
        "addr",
        "cert_der",
        "current",
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
        "unconfirmed",
    )

    def __init__(self, addr: Addr) -> None:
        self.addr = addr
        self.expect_name: str | None = None
        self.cert_der: bytes | None = None  # the peer's certificate, to initiate with
        self.identity: VerifiedIdentity | None = None
        self.current: Session | None = None
        self.previous: Session | None = None
        self.unconfirmed: list[_Unconfirmed] = []
        self.hs: _Attempt | None = None
        self.queue: deque[bytes] = deque()
        self.knows_our_cert = False
        self.rekeys = 0
        self.handshakes = 0
        self.failures = 0
        self.last_received: float | None = None

    def sessions(self) -> list[Session]:
        out = [u.session for u in self.unconfirmed]
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
        rng: random.Random,
        wall_offset: float,
        trust_domain: str,
        max_datagram: int = C.DEFAULT_MAX_DATAGRAM,
        under_load_threshold: float = C.UNDER_LOAD_THRESHOLD,
        timer_namespace: Hashable = "x0t.secure",
        accept_identity: Callable[[Addr, VerifiedIdentity], bool] | None = None,
    ) -> None:
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
        self._rng = rng
        self._wall_offset = wall_offset
        self._trust_domain = trust_domain
        self._max_datagram = max_datagram
        self._ns = timer_namespace
        self._accept_identity = accept_identity
        self._responder = Responder(static_private)
        self._cookie_gen = CookieGenerator(rng)
        self._cookie_seal = Aead(cookie_key(self._static_pub))
        self._certreq_cookie = Aead(certreq_cookie_key(trust_domain))
        self._certreq_key = certreq_check_key(trust_domain)
        self._cert_key = cert_check_key(trust_domain)
        self._jar = CookieJar()
        self._load = LoadMeter(under_load_threshold)
        self._reasm = Reassembler()
        self._peers: dict[Addr, _Peer] = {}
        self._by_name: dict[str, Addr] = {}
        self._sessions: dict[int, tuple[_Peer, Session]] = {}
        self._pending: dict[int, _Peer] = {}  # our INIT / CERT_REQUEST indices
        self._certs: OrderedDict[bytes, bytes] = OrderedDict()  # fingerprint -> DER
        self._timestamps: OrderedDict[bytes, int] = OrderedDict()  # fingerprint -> ns
        self._last_timestamp = 0
        self._message_id = rng.getrandbits(32)
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
            out: list[Action] = [Send(addr, cur.seal(payload))]
            if peer.hs is None and self._wants_rekey(cur, now):
                out += self._start(now, peer)
            return out
        self._enqueue(peer, payload)
        if peer.hs is not None:
            return []
        young = [u for u in peer.unconfirmed if now - u.started < C.CONFIRM_GRACE]
        if young:  # the initiator's first packet should be on its way: wait for it
            at = max(u.started for u in young) + C.CONFIRM_GRACE
            return [SetTimer(at, (self._ns, "confirm", addr))]
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
        peer = self._peers.get(addr)
        if peer is None:
            if len(self._peers) >= C.MAX_PEERS:
                return None
            peer = self._peers[addr] = _Peer(addr)
        return peer

    def _acceptable(self, peer: _Peer, ident: VerifiedIdentity) -> bool:
        """Whether ``ident`` may answer for ``peer``'s address (``expect_name`` and the
        ``accept_identity`` hook; e.g. an end-to-end address must be that node's name)."""
        if peer.expect_name is not None and ident.name != peer.expect_name:
            return False
        return self._accept_identity is None or self._accept_identity(peer.addr, ident)

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
            index = self._rng.getrandbits(32)
            if index and index not in self._sessions and index not in self._pending:
                return index

    def _emit(self, addr: Addr, message: bytes) -> list[Action]:
        if len(message) <= self._max_datagram:
            return [Send(addr, message)]
        self._message_id = (self._message_id + 1) & 0xFFFFFFFF
        return [Send(addr, d) for d in split(message, self._message_id, self._max_datagram)]

    def _enqueue(self, peer: _Peer, payload: bytes) -> None:
        peer.queue.append(payload)
        while len(peer.queue) > C.MAX_QUEUED_PER_PEER:
            peer.queue.popleft()
            self._count("queue_overflow")

    def _flush(self, peer: _Peer, session: Session) -> list[Action]:
        out: list[Action] = []
        while peer.queue:
            out.append(Send(peer.addr, session.seal(peer.queue.popleft())))
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
        if not self._acceptable(peer, ident):
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
                responder_static=ident.static_key,
                sender_index=index,
                rng=self._rng,
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
        att.deadline = now + _retry_delay(att.backoff, self._rng.random())
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
        return self._drop("malformed", addr)  # DATA or FRAGMENT inside a FRAGMENT

    def _on_fragment(self, now: float, addr: Addr, data: bytes) -> list[Action]:
        try:
            added = self._reasm.add(now, addr, data)
        except DecodeError:
            return self._drop("bad_fragment", addr)
        out: list[Action] = []
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
        out: list[Action] = []
        if not session.confirmed:
            out += self._confirm(now, peer, session)
        if payload:
            ident = peer.identity
            out.append(Deliver(ident.name if ident is not None else _label(addr), 0, payload))
        return out

    # --- responder ----------------------------------------------------------------------

    def _on_init(self, now: float, addr: Addr, data: bytes) -> list[Action]:
        if not INIT_MIN_SIZE <= len(data) <= INIT_MAX_SIZE:
            return self._drop("malformed", addr)
        if not check_mac1(data, self._responder.mac1_key):
            return self._drop("bad_mac1", addr)
        mac2_ok = False
        if data[_MAC_END:] != ZERO_MAC:
            if not self._cookie_gen.check_mac2(now, addr, data):
                return self._drop("bad_mac2", addr)
            mac2_ok = True
        if self._load.hit(now) and not mac2_ok:
            self._count("cookie_sent")
            sender_index = _U32.unpack_from(data, C.HEADER_SIZE)[0]
            mac1 = data[-2 * C.MAC_SIZE : _MAC_END]
            return [
                Send(addr, self._cookie_gen.reply(now, addr, sender_index, self._cookie_seal, mac1))
            ]
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
            ident = self._verify(der, now)
        except CertificateRejected as exc:
            return self._drop(f"cert_rejected:{exc.reason.value}", addr)
        fp = ident.fingerprint
        if fp == self._fingerprint:
            return self._drop("reflected", addr)
        if payload.cert_der is not None:
            out += self._cache_cert(ident, der)
        else:
            self._certs.move_to_end(fp)
        peer = self._peer(addr)
        if peer is None:
            return [*out, *self._drop("peer_limit", addr)]
        if not self._acceptable(peer, ident):
            return [*out, *self._drop("unexpected_identity", addr, peer=ident.name)]
        ts = payload.timestamp
        if ts <= self._timestamps.get(fp, -1) or any(
            u.timestamp == ts and u.identity.fingerprint == fp for u in peer.unconfirmed
        ):
            return [*out, *self._drop("stale_timestamp", addr, peer=ident.name)]
        att = peer.hs
        if att is not None:  # simultaneous open: the lower static key keeps initiating
            if att.initiator is not None and self._static_pub < ident.static_key.to_bytes():
                return [*out, *self._drop("simultaneous_open_lost", addr, peer=ident.name)]
            self._cancel(peer)
            out.append(
                Event(
                    "handshake_abandoned",
                    {"peer": ident.name, "addr": _label(addr), "reason": "simultaneous_open"},
                )
            )
        index = self._new_index()
        resp, keys = hs.create_resp(
            initiator_static=ident.static_key, sender_index=index, rng=self._rng
        )
        session = keys.session(now, self._max_datagram)
        self._register(peer, session)
        peer.unconfirmed.append(_Unconfirmed(session, ident, der, ts, now))
        while len(peer.unconfirmed) > C.MAX_UNCONFIRMED_PER_PEER:
            self._discard(peer.unconfirmed.pop(0).session)
        out += self._emit(addr, resp)
        out += self._expiry_timer(peer)
        return out

    def _confirm(self, now: float, peer: _Peer, session: Session) -> list[Action]:
        """The initiator's first packet on a responder session: it is authenticated."""
        pending = next(u for u in peer.unconfirmed if u.session is session)
        peer.unconfirmed.remove(pending)
        ident = pending.identity
        stale = [u for u in peer.unconfirmed if u.identity.fingerprint == ident.fingerprint]
        for u in stale:  # older (or forged) attempts by the same initiator
            if u.timestamp < pending.timestamp:
                peer.unconfirmed.remove(u)
                self._discard(u.session)
        fp = ident.fingerprint
        self._timestamps[fp] = max(pending.timestamp, self._timestamps.get(fp, -1))
        self._timestamps.move_to_end(fp)
        while len(self._timestamps) > C.MAX_TIMESTAMP_ENTRIES:
            self._timestamps.popitem(last=False)
        session.confirmed = True
        self._cancel(peer)  # a fresh session exists: our own initiation is moot
        return self._established(
            now, peer, session, ident, pending.cert_der, "responder", now - pending.started
        )

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
        peer.identity = ident
        peer.cert_der = der
        peer.knows_our_cert = True
        peer.handshakes += 1
        peer.failures = 0
        self._by_name[ident.name] = peer.addr
        fields = {"peer": ident.name, "addr": _label(peer.addr), "role": role}
        out: list[Action] = [Event("handshake_complete", {**fields, "duration": duration})]
        if rekey:
            peer.rekeys += 1
            out.append(Event("session_rekeyed", fields))
        if role == "initiator":
            out.append(Send(peer.addr, session.seal(b"")))  # confirms the keys to R
        out += self._flush(peer, session)
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
        if len(data) != RESP_SIZE:
            return self._drop("malformed", addr)
        if not check_mac1(data, self._responder.mac1_key):
            return self._drop("bad_mac1", addr)
        if data[_MAC_END:] != ZERO_MAC:  # we never hand out cookies for RESP
            return self._drop("bad_mac2", addr)
        peer = self._pending_for(addr, _U32.unpack_from(data, C.HEADER_SIZE + 4)[0])
        if peer is None:
            return self._drop("unknown_index", addr)
        att = peer.hs
        assert att is not None
        index = att.index
        if (
            att.initiator is None
            or att.identity is None
            or att.responder_der is None
            or _U32.unpack_from(data, C.HEADER_SIZE + 4)[0] != index
        ):
            return self._drop("unknown_index", addr)
        try:
            keys: SessionKeys = att.initiator.consume_resp(data)
        except DecodeError:
            return self._drop("malformed", addr)
        except (CryptoError, HandshakeError):
            return self._drop("decrypt_failed", addr)
        self._cancel(peer)
        session = keys.session(now, self._max_datagram)
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
        if not self._acceptable(peer, ident):
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
        return self._drop("unknown_timer", None)

    def _on_expire_timer(self, now: float, peer: _Peer) -> list[Action]:
        def dead(s: Session) -> bool:
            return now + _EPS >= s.created + C.REJECT_AFTER_TIME

        for u in [u for u in peer.unconfirmed if dead(u.session)]:
            peer.unconfirmed.remove(u)
            self._discard(u.session)
        if peer.previous is not None and dead(peer.previous):
            self._discard(peer.previous)
            peer.previous = None
        if peer.current is not None and dead(peer.current):
            self._discard(peer.current)
            peer.current = None
        return self._expiry_timer(peer)

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
    cookie = C.HEADER_SIZE + C.INDEX_SIZE + C.COOKIE_NONCE_SIZE + C.COOKIE_SIZE + C.AEAD_TAG_SIZE
    return {
        "first_contact": [
            cost("CERT_REQUEST", "I->R", C.CERT_REQUEST_SIZE),
            cost("COOKIE", "R->I", cookie),
            cost("CERT_REQUEST + mac2", "I->R", C.CERT_REQUEST_SIZE),
            cost("CERT", "R->I", cert),
            cost("INIT (certificate)", "I->R", init_full),
            cost("RESP", "R->I", RESP_SIZE),
            cost("DATA keepalive", "I->R", C.DATA_OVERHEAD),
        ],
        "cached": [
            cost("INIT (fingerprint)", "I->R", INIT_CACHED_SIZE),
            cost("RESP", "R->I", RESP_SIZE),
            cost("DATA keepalive", "I->R", C.DATA_OVERHEAD),
        ],
    }


def _label(addr: Addr | None) -> Any:
    """A JSON-friendly, deterministic rendering of an address for events."""
    if addr is None or isinstance(addr, str | int):
        return addr
    return repr(addr)
