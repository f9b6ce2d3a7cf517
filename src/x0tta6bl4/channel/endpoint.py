"""``SecureEndpoint``: the sans-IO secure channel to many peers over one datagram socket.

It is driven like every core here::

    endpoint.handle(now, Datagram(addr, data)) -> [Send, Deliver, SetTimer, Event, SessionUp,
                                                   PeerMoved]
    endpoint.handle(now, Timer(key))           -> [...]
    endpoint.handle(now, RevocationListUpdated(crl)) -> [Event, ...]
    endpoint.handle(now, CertificateRenewed(der))    -> [Event]
    endpoint.send(now, addr, payload)          -> [...]   (may raise MessageTooLarge)
    endpoint.connect(now, addr)                -> [...]

Addresses are opaque hashables: ``(host, port)`` for links between neighbours, a node's
8-byte id for end-to-end sessions routed through the mesh. Timer keys are
:class:`~.timers.ChannelTimer` values carrying ``timer_namespace``, so two endpoints in
one node never collide. Each confirmed session is announced by ``SessionUp`` (for the
layer above), then ``Event("handshake_complete")`` (the trace); a peer whose newest
authenticated packet came from a new address is moved there (roaming), announced by
``PeerMoved`` then ``Event("peer_moved")``. A payload up to ``MAX_DATA_PAYLOAD`` (65,535
bytes) is sealed as one DATA message and, if it does not fit one datagram, sent in
DATA_FRAGMENTs (:attr:`SecureEndpoint.max_payload`, :attr:`max_unfragmented_payload`).
Nothing raises out of ``handle``: bad input is dropped, counted in
:attr:`SecureEndpoint.counters` under a :class:`~.drops.DropReason` and reported as
``Event("dropped", reason=...)``.

A newer revocation list (``RevocationListUpdated``) is held and checked on every
certificate from then on, and every peer whose certificate serial it lists (the one its
sessions were made with, or the one an INIT in flight is sealed to) is dropped at once:
sessions wiped, our handshake cancelled, queued payloads dropped (``peer_revoked``), the
entry forgotten (``Event("peer_revoked")``). A responder keeps nothing of a handshake
before CONFIRM, and re-verifies the certificate there, so it needs no sweep. The address
of a revoked peer is held (bounded, ``MAX_REVOKED_ADDRS``), as is the address of a peer
whose certificate, fetched for our handshake, turns out revoked (that attempt ends at
once): ``connect`` and ``send`` start no handshake there (``addr_revoked``) until the peer
completes a handshake of its own with a certificate that verifies.

``CertificateRenewed(der)`` replaces our own certificate without a restart, if it is for
our name and static key, verifies, and expires no earlier (else ``renewal_refused`` and
the old one stays): INITs and CERT answers carry the new one from then on, every peer is
sent it in full once, and an INIT sealed to the previous one (a peer that cached it) is
still answered until that one expires. Sessions are kept; their next rekey uses it.

This class is the facade: it routes each input to the module that owns it.

* :mod:`.peers`: the peer table, peer and attempt states, session and handshake indices
* :mod:`.datapath`: DATA (the per-packet path), sealing, queues, sessions, fragments and
  their repair (NACKs), keepalives, NO_SESSION answers
* :mod:`.initiator_role`: initiating, retries, RESP / COOKIE / CERT, CONFIRM resends, and
  acting on NO_SESSION (the peer lost our session)
* :mod:`.responder_role`: answering INIT statelessly, CONFIRM makes the session
* :mod:`.certexchange`: certificate verification and cache, CERT_REQUEST / CERT
* :mod:`.drops`, :mod:`.timers`: drop reasons and counters; timer keys
"""

from __future__ import annotations

import random
from collections.abc import Callable

from x0tta6bl4.channel import constants as C
from x0tta6bl4.channel.certexchange import CertExchange
from x0tta6bl4.channel.cookie import CookieGenerator
from x0tta6bl4.channel.datapath import DataPath, can_send, wants_rekey
from x0tta6bl4.channel.drops import DropReason, Stats, Tally, addr_label
from x0tta6bl4.channel.initiator_role import InitiatorRole
from x0tta6bl4.channel.peers import AcceptIdentity, Peer, PeerInfo, PeerTable
from x0tta6bl4.channel.responder_role import ResponderRole
from x0tta6bl4.channel.timers import ChannelTimer, ChannelTimerKind
from x0tta6bl4.channel.wire import HDR_DATA, check_header
from x0tta6bl4.channel.wirecost import handshake_wire_cost
from x0tta6bl4.crypto.entropy import SYSTEM_SECRETS, SecretSource
from x0tta6bl4.crypto.hybrid import HybridPrivateKey
from x0tta6bl4.crypto.kdf import sha256
from x0tta6bl4.errors import (
    DecodeError,
    IdentityError,
    MessageTooLarge,
    RenewalRefused,
    X0tError,
)
from x0tta6bl4.identity.cert import NodeCertificate
from x0tta6bl4.identity.types import CertVerifier, VerifiedIdentity
from x0tta6bl4.identity.verify import verify_renewal
from x0tta6bl4.sansio import (
    Action,
    Addr,
    CertificateRenewed,
    Datagram,
    Event,
    Input,
    RevocationCheck,
    RevocationListUpdated,
    SetTimer,
    Timer,
)

__all__ = ["PeerInfo", "SecureEndpoint", "handshake_wire_cost"]

_MessageHandler = Callable[[float, Addr, bytes], list[Action]]
_PeerTimerHandler = Callable[[float, Peer], list[Action]]


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
        timer_namespace: str = "x0t.secure",
        segment_prefix: Callable[[Addr], bytes] | None = None,
        accept_identity: AcceptIdentity | None = None,
        secrets: SecretSource = SYSTEM_SECRETS,
        jitter: random.Random | None = None,
    ) -> None:
        """``secrets`` feeds every secret (keys, KEM randomness, cookie and biscuit keys,
        indices, message ids): the OS CSPRNG unless the simulator passes its seeded
        source. ``jitter`` only spreads retry timers (not secret; seeded in simulations).
        ``segment_prefix(addr)``: the bytes the layer below puts before each fragment of
        a large payload to ``addr`` (a mesh's relay header), written into the one buffer
        of its ``SendSegments`` so that nobody copies each datagram again."""
        if max_datagram < C.MIN_DATAGRAM:
            raise ValueError(f"max_datagram must be at least {C.MIN_DATAGRAM}")
        own = NodeCertificate.from_der(cert_der)
        if own.static_key != static_private.public_key():
            raise IdentityError("static private key does not match the certificate")
        self.name = own.name
        self._own = own
        self._static_pub = static_private.public_key()
        self._wall_offset = wall_offset
        self._fingerprint = sha256(cert_der)
        self._max_datagram = max_datagram
        self._ns = timer_namespace
        self._now = 0.0
        stats = self._stats = Stats()
        self.counters: dict[str, int] = stats.counters
        table = self._table = PeerTable(secrets, accept_identity)
        self._peers = table.by_addr
        self._revoked_addrs = table.revoked_addrs
        self._revoked_hold = table.revoked_hold
        data = self._data = DataPath(
            table,
            stats,
            max_datagram=max_datagram,
            secrets=secrets,
            timer_namespace=self._ns,
            segment_prefix=segment_prefix,
        )
        cookie_gen = CookieGenerator(secrets)  # one cookie secret for INIT and CERT_REQUEST
        certs = self._certs = CertExchange(
            cert_der,
            verifier,
            trust_domain=trust_domain,
            wall_offset=wall_offset,
            cookie_gen=cookie_gen,
            emit=data.emit,
            stats=stats,
        )
        self._initiator = InitiatorRole(
            cert_der=cert_der,
            static_private=static_private,
            fingerprint=self._fingerprint,
            wall_offset=wall_offset,
            max_datagram=max_datagram,
            secrets=secrets,
            jitter=jitter if jitter is not None else random.Random(),  # jitter, not secret
            timer_namespace=self._ns,
            table=table,
            certs=certs,
            data=data,
            stats=stats,
        )
        self._responder = ResponderRole(
            static_private=static_private,
            fingerprint=self._fingerprint,
            max_datagram=max_datagram,
            under_load_threshold=under_load_threshold,
            secrets=secrets,
            cookie_gen=cookie_gen,
            table=table,
            certs=certs,
            data=data,
            stats=stats,
        )
        # The per-packet paths, bound once: handle() and send() call them with no hop.
        self._on_data = data.on_data
        self._declare = table.declare
        self._seal = data.seal
        self._seal_large = data.seal_large
        self._one_datagram = max_datagram - C.DATA_OVERHEAD  # the largest payload sent whole
        self._message_handlers: dict[int, _MessageHandler] = {
            C.MSG_RESP: self._initiator.on_resp,
            C.MSG_COOKIE: self._initiator.on_cookie,
            C.MSG_CERT_REQUEST: certs.on_request,
            C.MSG_CERT: self._initiator.on_cert,
            C.MSG_CONFIRM: self._responder.on_confirm,
        }  # INIT is dispatched with its fragments' id; DATA and FRAGMENT come before
        # Small messages that never travel in fragments (inside one they are malformed).
        self._datagram_handlers: dict[int, _MessageHandler] = {
            C.MSG_NO_SESSION: self._initiator.on_no_session,
            C.MSG_FRAGMENT_NACK: data.on_nack,
            C.MSG_DATA_FRAGMENT: data.on_data_fragment,
        }
        self._peer_timers: dict[str, _PeerTimerHandler] = {
            ChannelTimerKind.HANDSHAKE: self._initiator.on_handshake_timer,
            ChannelTimerKind.CONFIRM: self._initiator.on_confirm_timer,
            ChannelTimerKind.ACK: self._initiator.on_ack_timer,
            ChannelTimerKind.EXPIRE: data.on_expire_timer,
        }

    # --- public API ---------------------------------------------------------------

    @property
    def timer_namespace(self) -> str:
        """The namespace of every timer key this endpoint sets."""
        return self._ns

    @property
    def max_payload(self) -> int:
        """The largest payload ``send`` accepts: ``MAX_DATA_PAYLOAD`` (65,535), whatever
        the datagram size (a larger payload travels in fragments)."""
        return C.MAX_DATA_PAYLOAD

    @property
    def max_unfragmented_payload(self) -> int:
        """The largest payload that travels in one datagram (``max_datagram`` minus the 32
        bytes of DATA's header and tag); anything larger costs fragments."""
        return self._one_datagram

    @property
    def fingerprint(self) -> bytes:
        """SHA-256 of our certificate (the renewed one after ``CertificateRenewed``)."""
        return self._fingerprint

    @property
    def cert_der(self) -> bytes:
        """Our certificate, the one handshakes and CERT answers present."""
        return self._certs.own

    @property
    def cert_not_after(self) -> float:
        """When our certificate expires (wall-clock POSIX seconds)."""
        return self._own.not_after

    def revoked_addr(self, addr: Addr, now: float | None = None) -> bool:
        """Whether ``addr`` is held because its last certificate was revoked: no handshake
        of ours goes there (``connect`` and ``send`` refuse, ``addr_revoked``) until the
        peer there completes one of its own with a certificate that verifies, or the hold
        runs out (``REVOKED_HOLD``, growing to ``REVOKED_HOLD_MAX``; then one attempt
        looks again)."""
        return bool(self._revoked_addrs) and self._revoked_hold(
            addr, self._now if now is None else now
        )

    @property
    def sessions_in_use(self) -> int:
        """Session indices currently allocated (confirmed or not)."""
        return len(self._table.sessions)

    @property
    def reassemblies_pending(self) -> int:
        """Partially received fragmented messages held now."""
        return self._data.reassemblies_pending

    @property
    def revocation_list(self) -> RevocationCheck | None:
        """The newest revocation list given in ``RevocationListUpdated``, if any."""
        return self._certs.revocations

    def set_under_load(self, value: bool | None) -> None:
        """Force (True/False) or let the token bucket decide (None) whether mac2 is required."""
        self._responder.load.forced = value

    def start(self, now: float) -> list[Action]:
        """``sansio.Core``: an endpoint waits for ``connect``/``send``; nothing to start."""
        return []

    def add_peer(
        self, addr: Addr, *, cert_der: bytes | None = None, expect_name: str | None = None
    ) -> None:
        """Declare a peer, optionally with its certificate (checked at use) and the node
        name it must present (for end-to-end sessions, where the address is that name)."""
        peer = self._table.declare(addr)
        if peer is None:
            raise IdentityError(f"peer table full ({C.MAX_PEERS})")
        if cert_der is not None:
            peer.cert_der = cert_der
            held = self._revoked_addrs.get(addr)
            if held is not None and held.fingerprint != sha256(cert_der):
                del self._revoked_addrs[addr]  # told of another certificate there
        if expect_name is not None:
            peer.expect_name = expect_name

    def identity(self, addr: Addr) -> VerifiedIdentity | None:
        """The verified identity of the peer at ``addr`` (None: none, or not yet
        authenticated); ``peer(addr).identity`` without building the rest, per packet."""
        p = self._peers.get(addr)
        return None if p is None else p.identity

    def peer(self, addr: Addr, now: float | None = None) -> PeerInfo | None:
        p = self._peers.get(addr)
        if p is None:
            return None
        t = self._now if now is None else now
        cur = p.current
        return PeerInfo(
            addr=addr,
            identity=p.identity,
            established=cur is not None and can_send(cur, t),
            session_age=None if cur is None else t - cur.created,
            rekeys=p.rekeys,
            handshakes=p.handshakes,
            last_received=p.last_received,
            failures=p.failures,
            handshaking=p.attempt is not None,
            state=p.state,
            rtt=p.rtt,
        )

    def addr_of(self, name: str) -> Addr | None:
        return self._table.by_name.get(name)

    def peers(self) -> list[Addr]:
        return list(self._peers)

    def connect(self, now: float, addr: Addr) -> list[Action]:
        """Start a handshake now. If one is already running, restart its give-up clock
        and send a fresh INIT unless one went out less than a retry base ago."""
        self._now = now
        if self._revoked_addrs and self._revoked_hold(addr, now):
            return self._stats.drop(DropReason.ADDR_REVOKED, addr)
        peer = self._table.declare(addr)
        if peer is None:
            return self._stats.drop(DropReason.PEER_LIMIT, addr)
        return self._initiator.connect(now, peer)

    def send(self, now: float, addr: Addr, payload: bytes) -> list[Action]:
        """Seal ``payload`` for ``addr`` on the current session, or queue it (bounded,
        drop-oldest) and start a handshake. A payload larger than one datagram holds goes
        as one DATA message in fragments; past ``MAX_DATA_PAYLOAD`` it raises
        ``MessageTooLarge`` (never truncates)."""
        self._now = now
        seal = self._seal
        if len(payload) > self._one_datagram:
            if len(payload) > C.MAX_DATA_PAYLOAD:
                raise MessageTooLarge(len(payload), C.MAX_DATA_PAYLOAD)
            seal = self._seal_large
        peer = self._declare(addr)
        if peer is None:
            return self._stats.drop(DropReason.PEER_LIMIT, addr)
        cur = peer.current
        if cur is not None and can_send(cur, now):
            out = seal(now, peer, cur, payload)
            if peer.attempt is None:
                if wants_rekey(cur, now):
                    out += self._initiator.start(now, peer)
                elif (u := peer.unanswered_since) is not None and now - u >= C.REPLY_TIMEOUT:
                    # Nothing authenticated back for a while, though a receiver answers
                    # data with keepalives: it may have lost the session. Handshake; the
                    # old session keeps carrying data until the new one is confirmed.
                    self._stats.count(Tally.NO_REPLY_HANDSHAKE)
                    out += self._initiator.start(now, peer)
            return out
        if self._revoked_addrs and self._revoked_hold(addr, now):
            # no session there (a session would have cleared the hold)
            return self._stats.drop(DropReason.ADDR_REVOKED, addr)
        self._data.enqueue(peer, payload)
        if peer.attempt is not None:
            return []
        answered = self._responder.answered_at(addr)
        if answered is not None and now - answered < C.CONFIRM_GRACE:
            # we just answered an INIT from there: its CONFIRM should be on its way
            key = ChannelTimer(self._ns, ChannelTimerKind.CONFIRM, addr)
            return [SetTimer(answered + C.CONFIRM_GRACE, key)]
        return self._initiator.start(now, peer)

    def handle(self, now: float, inp: Input) -> list[Action]:
        """Process one input. Never raises: bad input is dropped and counted."""
        self._now = now
        try:
            if isinstance(inp, Datagram):
                data = inp.data
                if data[:4] == HDR_DATA:  # the per-packet path first
                    return self._on_data(now, inp.addr, data)
                return self._on_message(now, inp.addr, data)
            if isinstance(inp, Timer):
                return self._on_timer(now, inp.key)
            if isinstance(inp, RevocationListUpdated):
                return self._on_revocation_list(inp.crl)
            if isinstance(inp, CertificateRenewed):
                return self._on_certificate_renewed(now, inp.cert_der)
            return self._stats.drop(DropReason.UNSUPPORTED_INPUT, None)
        except X0tError as exc:  # a typed error not mapped below: still only a drop
            return self._stats.drop_unmapped(exc)
        except Exception as exc:  # a bug: count it loudly rather than crash the loop
            return self._stats.drop(DropReason.INTERNAL_ERROR, None, error=type(exc).__name__)

    def handle_segments(
        self, now: float, addr: Addr, data: bytes, size: int, offset: int = 0
    ) -> list[Action]:
        """Datagrams of ``size`` bytes laid back to back in ``data`` (the last may be
        shorter) from ``addr``, received together (a UDP GRO batch), ours from ``offset``
        bytes into each (a relay's header before it). When they are the DATA_FRAGMENTs of
        one message, in order, the message is rebuilt at once and opened like a DATA;
        anything else goes through :meth:`handle` one by one. Same outcome either way,
        less work per datagram."""
        self._now = now
        if size <= 0 or offset < 0:
            raise ValueError(f"segment size {size} and offset {offset}: need size > 0, offset >= 0")
        if len(data) > size:
            try:
                whole = self._data.whole_from_segments(now, data, size, offset)
            except Exception as exc:  # a bug: count it, and take the careful way
                self._stats.drop(DropReason.INTERNAL_ERROR, None, error=type(exc).__name__)
                whole = None
            if whole is not None:
                try:
                    return self._on_data(now, addr, whole)
                except X0tError as exc:
                    return self._stats.drop_unmapped(exc)
        out: list[Action] = []
        for o in range(0, len(data), size):
            out += self.handle(now, Datagram(addr, data[o + offset : o + size]))
        return out

    # --- revocation -------------------------------------------------------------------

    def _on_revocation_list(self, crl: RevocationCheck) -> list[Action]:
        if not self._certs.take_revocations(crl):
            held = self._certs.revocations
            fields = {"version": crl.version, "held": None if held is None else held.version}
            return [Event("revocation_list_ignored", fields)]
        out: list[Action] = []
        for peer in list(self._peers.values()):
            for ident in peer.identities():
                if crl.is_revoked(ident.serial):
                    out += self._drop_revoked(peer, ident)
                    break
        return out

    def _drop_revoked(self, peer: Peer, ident: VerifiedIdentity) -> list[Action]:
        """Forget ``peer`` whole: its keys wiped and its handshake cancelled, so not even a
        RESP already on its way can make a session; what was queued for it goes too."""
        addr = addr_label(peer.addr)
        queued = len(peer.queue)
        fields = {
            "peer": ident.name,
            "addr": addr,
            "session": peer.current is not None or peer.previous is not None,
            "handshake": peer.attempt is not None,
            "queued_dropped": queued,
        }
        peer.queue.clear()
        self._table.forget(peer)
        # Dialling it again would only fetch the revoked certificate and refuse it.
        self._table.hold_revoked(peer.addr, ident.fingerprint, self._now)
        self._stats.count(Tally.REVOKED_TEARDOWN)
        out: list[Action] = [Event("peer_revoked", fields)]
        if queued:
            self._stats.count(DropReason.PEER_REVOKED, queued)
            out.append(
                Event("dropped", {"reason": DropReason.PEER_REVOKED, "addr": addr, "count": queued})
            )
        return out

    # --- our own certificate, renewed -------------------------------------------------

    def _on_certificate_renewed(self, now: float, der: bytes) -> list[Action]:
        if der == self._certs.own:
            return []
        try:
            new = verify_renewal(
                self._own,
                der,
                lambda d: self._certs.verify(d, now),
                static_key=self._static_pub,
            )
        except RenewalRefused as exc:
            return self._stats.drop(DropReason.RENEWAL_REFUSED, None, why=exc.label)
        old = self._own
        self._own = new
        self._fingerprint = new.fingerprint
        self._certs.set_own(der)
        self._initiator.renew(der, new.fingerprint)
        # A peer that cached the old certificate seals its INITs to it until it expires.
        self._responder.renew(new.fingerprint, old.not_after - self._wall_offset)
        for peer in self._peers.values():
            peer.knows_our_cert = False  # the next INIT carries the new one in full
        self._stats.count(Tally.CERT_RENEWED)
        fields = {"not_after": new.not_after, "previous_not_after": old.not_after}
        return [Event("certificate_renewed", fields)]

    # --- routing inputs -------------------------------------------------------------

    def _on_message(self, now: float, addr: Addr, data: bytes) -> list[Action]:
        """Any datagram but DATA: a FRAGMENT, or a whole handshake message."""
        try:
            msg_type = check_header(data)
        except DecodeError:
            return self._stats.drop(DropReason.MALFORMED, addr)
        if msg_type != C.MSG_FRAGMENT:
            small = self._datagram_handlers.get(msg_type)
            if small is not None:
                return small(now, addr, data)
            return self._dispatch(now, addr, msg_type, data, None)
        out, message, message_id = self._data.reassemble(now, addr, data)
        if message is None:
            return out
        try:
            msg_type = check_header(message)
        except DecodeError:
            return [*out, *self._stats.drop(DropReason.MALFORMED, addr)]
        return out + self._dispatch(now, addr, msg_type, message, message_id)

    def _dispatch(
        self, now: float, addr: Addr, msg_type: int, data: bytes, message_id: int | None
    ) -> list[Action]:
        if msg_type == C.MSG_INIT:
            return self._responder.on_init(now, addr, data, message_id)
        handler = self._message_handlers.get(msg_type)
        if handler is None:
            return self._stats.drop(DropReason.MALFORMED, addr)
        return handler(now, addr, data)

    def _on_timer(self, now: float, key: object) -> list[Action]:
        if not isinstance(key, ChannelTimer) or key.namespace != self._ns:
            return self._stats.drop(DropReason.UNKNOWN_TIMER, None)
        if key.kind == ChannelTimerKind.REASSEMBLY:
            return self._data.on_reassembly_timer(now, key.addr, key.message_id)
        if key.kind == ChannelTimerKind.NACK:
            return self._data.on_nack_timer(now, key.addr, key.message_id)
        if key.kind == ChannelTimerKind.DATA_REASSEMBLY:
            return self._data.on_data_reassembly_timer(now)
        peer = self._peers.get(key.addr)
        if peer is None:  # forgotten since: nothing left to do
            return []
        handler = self._peer_timers.get(key.kind)
        if handler is None:
            return self._stats.drop(DropReason.UNKNOWN_TIMER, None)
        return handler(now, peer)
