"""The endpoint as initiator: starting a handshake, retrying it with backoff and giving
up, fetching the peer's certificate first if we lack it, taking the RESP, COOKIE and
CERT answers, and resending CONFIRM until the responder answers on the new session.

An attempt (:class:`~.peers.Attempt`) is in one of two phases: ``FETCHING_CERT`` (a
CERT_REQUEST is out) or ``AWAITING_RESP`` (an INIT is out; every
``CERT_REFRESH_AFTER``-th unanswered INIT also asks for the certificate again, since the
peer may have renewed it with a new static key). Each retry replaces the message in
flight and its index; the attempt ends with a session, or with ``handshake_failed``
after ``REKEY_ATTEMPT_TIME``.
"""

from __future__ import annotations

import random

from x0tta6bl4.channel import constants as C
from x0tta6bl4.channel.certexchange import CertExchange
from x0tta6bl4.channel.cookie import ZERO_MAC, CookieJar, check_mac1, cookie_key
from x0tta6bl4.channel.datapath import DataPath, Role, can_send
from x0tta6bl4.channel.drops import DropReason, Stats, Tally, addr_label
from x0tta6bl4.channel.handshake import Initiator, SessionKeys
from x0tta6bl4.channel.peers import Attempt, CertRequestInFlight, InitInFlight, Peer, PeerTable
from x0tta6bl4.channel.timers import ChannelTimer, ChannelTimerKind
from x0tta6bl4.channel.wire import decode_cert, decode_cookie, decode_resp, mac_trailer
from x0tta6bl4.crypto.aead import Aead
from x0tta6bl4.crypto.entropy import SecretSource
from x0tta6bl4.crypto.hybrid import HybridPrivateKey
from x0tta6bl4.errors import CertificateRejected, CryptoError, DecodeError, HandshakeError
from x0tta6bl4.identity.types import VerifiedIdentity
from x0tta6bl4.sansio import Action, Addr, Event, SetTimer

_EPS = 1e-9  # a timer firing at its deadline counts as due despite float rounding


def retry_delay(sent: int, jitter: float) -> float:
    """Seconds until the next message of an attempt that has sent ``sent`` since its last
    (re)start: exponential from ``HANDSHAKE_RETRY_BASE`` up to the cap, stretched by
    ``jitter`` in [0, 1)."""
    base = C.HANDSHAKE_RETRY_BASE * C.HANDSHAKE_RETRY_FACTOR ** max(0, sent - 1)
    return min(C.HANDSHAKE_RETRY_CAP, base) * (1.0 + C.HANDSHAKE_RETRY_JITTER * jitter)


class InitiatorRole:
    __slots__ = (
        "_cert_der",
        "_certs",
        "_data",
        "_fingerprint",
        "_jar",
        "_jitter",
        "_last_timestamp",
        "_max_datagram",
        "_ns",
        "_secrets",
        "_static",
        "_stats",
        "_table",
        "_wall_offset",
    )

    def __init__(
        self,
        *,
        cert_der: bytes,
        static_private: HybridPrivateKey,
        fingerprint: bytes,
        wall_offset: float,
        max_datagram: int,
        secrets: SecretSource,
        jitter: random.Random,
        timer_namespace: str,
        table: PeerTable,
        certs: CertExchange,
        data: DataPath,
        stats: Stats,
    ) -> None:
        self._cert_der = cert_der
        self._static = static_private
        self._fingerprint = fingerprint
        self._wall_offset = wall_offset
        self._max_datagram = max_datagram
        self._secrets = secrets
        self._jitter = jitter  # retry jitter only: not secret, seeded in simulations
        self._ns = timer_namespace
        self._table = table
        self._certs = certs
        self._data = data
        self._stats = stats
        self._jar = CookieJar()  # cookies responders gave us, by address
        self._last_timestamp = 0

    # --- starting and retrying ----------------------------------------------------------

    def start(self, now: float, peer: Peer) -> list[Action]:
        peer.attempt = Attempt(now, rekey=peer.current is not None)
        started = Event(
            "handshake_started",
            {"peer": peer.name, "addr": addr_label(peer.addr), "rekey": peer.attempt.rekey},
        )
        return [started, *self.resend(now, peer)]

    def connect(self, now: float, peer: Peer) -> list[Action]:
        """Start now; if an attempt runs, restart its give-up clock and send a fresh
        message unless one went out less than a retry base ago."""
        att = peer.attempt
        if att is None:
            return self.start(now, peer)
        att.started = now
        att.backoff = 0
        if now - att.last_sent >= C.HANDSHAKE_RETRY_BASE:
            return self.resend(now, peer)
        att.deadline = att.last_sent + C.HANDSHAKE_RETRY_BASE  # soon, but no flood
        return [SetTimer(att.deadline, self._timer(peer.addr))]

    def resend(self, now: float, peer: Peer) -> list[Action]:
        """Send (or resend) our INIT, or a CERT_REQUEST if we lack a usable certificate."""
        att = peer.attempt
        assert att is not None
        if att.init is not None:  # a new INIT replaces the one in flight
            self._table.release(att.init.index)
            att.init.initiator.abandon()
            att.init = None
        att.attempts += 1
        att.backoff += 1
        att.last_sent = now
        cookie = self._jar.get(now, peer.addr)
        att.used_cookie = cookie is not None
        responder = self._responder_identity(peer, now)
        out: list[Action]
        if responder is None:
            out = self._request_cert(peer, cookie)
        else:
            ident, der = responder
            index = self._table.claim(peer)
            initiator = Initiator(
                static_private=self._static,
                fingerprint=self._fingerprint,
                responder_static=ident.static_key,
                responder_fingerprint=ident.fingerprint,
                sender_index=index,
                secrets=self._secrets,
            )
            full = att.attempts > 1 or not peer.knows_our_cert
            message = initiator.create_init(
                timestamp=self._timestamp(now),
                fingerprint=None if full else self._fingerprint,
                cert_der=self._cert_der if full else None,
                cookie=cookie,
            )
            mac1, _ = mac_trailer(message)
            att.init = InitInFlight(index, initiator, ident, der, mac1)
            out = self._data.emit(peer.addr, message)
            if att.backoff % C.CERT_REFRESH_AFTER == 0:
                out += self._request_cert(peer, cookie)
        att.deadline = now + retry_delay(att.backoff, self._jitter.random())
        out.append(SetTimer(att.deadline, self._timer(peer.addr)))
        return out

    def on_handshake_timer(self, now: float, peer: Peer) -> list[Action]:
        att = peer.attempt
        if att is None or now + _EPS < att.deadline:
            return []
        if now - att.started >= C.REKEY_ATTEMPT_TIME:
            self._table.cancel(peer)
            peer.failures += 1
            dropped = len(peer.queue)
            if dropped:
                self._stats.count(Tally.QUEUE_DROPPED, dropped)
                peer.queue.clear()
            return [
                Event(
                    "handshake_failed",
                    {
                        "peer": peer.name,
                        "addr": addr_label(peer.addr),
                        "attempts": att.attempts,
                        "reason": "timeout",
                        "queued_dropped": dropped,
                    },
                )
            ]
        if att.used_cookie:  # unanswered with mac2: the cookie may be stale (peer restarted)
            self._jar.forget(peer.addr)
        return self.resend(now, peer)

    def on_confirm_timer(self, now: float, peer: Peer) -> list[Action]:
        """We held payloads while the peer's CONFIRM for our RESP was due: send them on a
        session if one came, else initiate ourselves."""
        if not peer.queue or peer.attempt is not None:
            return []
        cur = peer.current
        if cur is not None and can_send(cur, now):
            return self._data.flush(peer, cur)
        return self.start(now, peer)

    def _timer(self, addr: Addr) -> ChannelTimer:
        return ChannelTimer(self._ns, ChannelTimerKind.HANDSHAKE, addr)

    def _timestamp(self, now: float) -> int:
        """INIT's wall-clock timestamp in ns, strictly increasing: a responder refuses one
        no newer than the last it confirmed from us."""
        ts = max(int((now + self._wall_offset) * 1e9), self._last_timestamp + 1)
        self._last_timestamp = ts
        return ts

    def _responder_identity(self, peer: Peer, now: float) -> tuple[VerifiedIdentity, bytes] | None:
        """The peer's certificate, verified and acceptable for its address, or None (and
        forget it: perhaps renewed, so ask the peer for its current one)."""
        der = peer.cert_der
        if der is None:
            return None
        try:
            ident = self._certs.verify(der, now)
        except CertificateRejected as exc:
            self._stats.count(DropReason.cert_rejected(exc.reason))
            peer.cert_der = None
            return None
        if not self._table.acceptable(peer.addr, peer, ident):
            self._stats.count(DropReason.UNEXPECTED_IDENTITY)
            peer.cert_der = None
            return None
        return ident, der

    def _request_cert(self, peer: Peer, cookie: bytes | None) -> list[Action]:
        att = peer.attempt
        assert att is not None
        if att.cert_request is not None:  # a new request replaces the one in flight
            self._table.release(att.cert_request.index)
        index = self._table.claim(peer)
        message, check = self._certs.request(index, cookie)
        att.cert_request = CertRequestInFlight(index, check)
        return self._data.emit(peer.addr, message)

    # --- answers: RESP, COOKIE, CERT -------------------------------------------------------

    def on_resp(self, now: float, addr: Addr, data: bytes) -> list[Action]:
        try:
            resp = decode_resp(data)
        except DecodeError:
            return self._stats.drop(DropReason.MALFORMED, addr)
        peer = self._table.pending_for(addr, resp.receiver_index)
        att = peer.attempt if peer is not None else None
        init = att.init if att is not None else None
        if peer is None or att is None or init is None or resp.receiver_index != init.index:
            return self._stats.drop(DropReason.UNKNOWN_INDEX, addr)
        # RESP's mac1 is keyed by our ephemeral key: cheap to check, and it names nobody.
        if not check_mac1(data, init.initiator.resp_mac1_key):
            return self._stats.drop(DropReason.BAD_MAC1, addr)
        if resp.mac2 != ZERO_MAC:  # we never hand out cookies for RESP
            return self._stats.drop(DropReason.BAD_MAC2, addr)
        try:
            keys: SessionKeys = init.initiator.consume_resp(data)
        except DecodeError:
            return self._stats.drop(DropReason.MALFORMED, addr)
        except (CryptoError, HandshakeError):
            return self._stats.drop(DropReason.DECRYPT_FAILED, addr)
        self._table.cancel(peer)
        session = keys.session(now, self._max_datagram)
        session.biscuit = resp.biscuit
        self._table.register(peer, session)
        return self._data.establish(
            now, peer, session, init.identity, init.cert_der, Role.INITIATOR, now - att.started
        )

    def on_cookie(self, now: float, addr: Addr, data: bytes) -> list[Action]:
        try:
            msg = decode_cookie(data)
        except DecodeError:
            return self._stats.drop(DropReason.MALFORMED, addr)
        peer = self._table.pending_for(addr, msg.receiver_index)
        if peer is None:
            return self._stats.drop(DropReason.UNKNOWN_INDEX, addr)
        att = peer.attempt
        assert att is not None
        req = att.cert_request
        for_cert_request = req is not None and msg.receiver_index == req.index
        if req is not None and for_cert_request:
            seal, ad = self._certs.request_cookie_seal, req.check
        else:
            init = att.init
            assert init is not None  # pending_for matched one of the two
            seal = Aead(cookie_key(init.identity.static_key.to_bytes()))
            ad = init.mac1
        try:
            cookie = seal.open(msg.nonce, msg.sealed_cookie, ad)
        except CryptoError:
            return self._stats.drop(DropReason.DECRYPT_FAILED, addr)
        self._jar.put(now, addr, cookie)
        self._stats.count(Tally.COOKIE_RECEIVED)
        if for_cert_request:  # a certificate request costs nothing: ask again now
            return self._request_cert(peer, cookie)
        return []  # the next INIT retry carries mac2 (no extra load on a busy responder)

    def on_cert(self, now: float, addr: Addr, data: bytes) -> list[Action]:
        try:
            msg = decode_cert(data)
        except DecodeError:
            return self._stats.drop(DropReason.MALFORMED, addr)
        if not self._certs.authentic(msg):
            return self._stats.drop(DropReason.BAD_CHECK, addr)
        peer = self._table.pending_for(addr, msg.request_id)
        att = peer.attempt if peer is not None else None
        req = att.cert_request if att is not None else None
        if peer is None or att is None or req is None or msg.request_id != req.index:
            return self._stats.drop(DropReason.UNKNOWN_INDEX, addr)
        try:
            ident = self._certs.verify(msg.cert_der, now)
        except CertificateRejected as exc:
            return self._stats.drop(DropReason.cert_rejected(exc.reason), addr)
        if ident.fingerprint == self._fingerprint:
            return self._stats.drop(DropReason.REFLECTED, addr)
        if not self._table.acceptable(addr, peer, ident):
            return self._stats.drop(DropReason.UNEXPECTED_IDENTITY, addr, peer=ident.name)
        out = self._certs.remember(ident, msg.cert_der)
        self._table.release(req.index)
        att.cert_request = None
        if att.init is not None and msg.cert_der == att.init.cert_der:
            return out  # a refresh that found the certificate unchanged: keep trying INIT
        peer.cert_der = msg.cert_der
        return out + self.resend(now, peer)

    # --- our new session, until the responder answers on it -------------------------------

    def on_ack_timer(self, now: float, peer: Peer) -> list[Action]:
        """Our new session's CONFIRM is unanswered: resend it, and after ``ACK_RETRIES``
        give the session up and handshake again (the responder never made it, or has
        since lost it)."""
        cur = peer.current
        if cur is None or cur.biscuit is None:
            return []
        if peer.acks_sent >= C.ACK_RETRIES:
            self._stats.count(Tally.CONFIRM_UNANSWERED)
            self._table.discard(cur)
            peer.current, peer.previous = peer.previous, None
            out: list[Action] = [
                Event("session_unconfirmed", {"peer": peer.name, "addr": addr_label(peer.addr)})
            ]
            return out + (self.start(now, peer) if peer.attempt is None else [])
        peer.acks_sent += 1
        delay = min(C.HANDSHAKE_RETRY_CAP, C.ACK_RETRY_BASE * 2**peer.acks_sent)
        key = ChannelTimer(self._ns, ChannelTimerKind.ACK, peer.addr)
        return [*self._data.seal(peer, cur, b""), SetTimer(now + delay, key)]
