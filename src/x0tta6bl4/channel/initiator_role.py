"""The endpoint as initiator: starting a handshake, retrying it with backoff and giving
up, fetching the peer's certificate first if we lack it, taking the RESP, COOKIE and
CERT answers, and resending CONFIRM until the responder answers on the new session.

An attempt (:class:`~.peers.Attempt`) is in one of two phases: ``FETCHING_CERT`` (a
CERT_REQUEST is out) or ``AWAITING_RESP`` (an INIT is out; every
``CERT_REFRESH_AFTER``-th unanswered INIT also asks for the certificate again, since the
peer may have renewed it with a new static key). A retry resends an INIT that carries
our certificate unchanged (same index, same fragment message id) for ``INIT_REUSE_TIME``,
so the fragments of every copy combine at the responder and a responder that already
answered resends its RESP; otherwise a retry makes a new message, and the one it replaces
stays answerable (its answer may still be arriving, being repaired). Retries wait at least
``RETRY_RTT_FACTOR`` round trips once one is measured (from COOKIE answers and CONFIRM
acknowledgements), are put off while fragments or NACKs show an exchange under way, and
back off only while the peer is silent. The attempt ends with a session, or with
``handshake_failed`` after ``REKEY_ATTEMPT_TIME`` (its ``rekey`` field: a session existed
when the attempt began, so a rekey failed).

A NO_SESSION from the peer that echoes a packet we recently sent on our current session
means it lost that session (it restarted): we start a handshake at once (or hurry the
running one), at most once per ``NO_SESSION_HANDSHAKE_INTERVAL``, and keep the old
session until the new one is confirmed: the message is unauthenticated, so it may cost
a handshake, never a session.
"""

from __future__ import annotations

import hmac as _hmac
import random

from x0tta6bl4.channel import constants as C
from x0tta6bl4.channel.certexchange import CertExchange
from x0tta6bl4.channel.cookie import ZERO_MAC, CookieJar, check_mac1, cookie_key
from x0tta6bl4.channel.datapath import DataPath, Role, can_send
from x0tta6bl4.channel.drops import DropReason, Stats, Tally, addr_label
from x0tta6bl4.channel.handshake import Initiator, SessionKeys
from x0tta6bl4.channel.peers import (
    Attempt,
    CertRequestInFlight,
    InitInFlight,
    Peer,
    PeerTable,
)
from x0tta6bl4.channel.timers import ChannelTimer, ChannelTimerKind
from x0tta6bl4.channel.wire import (
    decode_cert,
    decode_cookie,
    decode_no_session,
    decode_resp,
    mac_trailer,
)
from x0tta6bl4.crypto.aead import Aead
from x0tta6bl4.crypto.entropy import SecretSource, random_u32
from x0tta6bl4.crypto.hybrid import HybridPrivateKey
from x0tta6bl4.crypto.kdf import sha256
from x0tta6bl4.errors import (
    CertificateRejected,
    CryptoError,
    DecodeError,
    HandshakeError,
    RejectReason,
)
from x0tta6bl4.identity.types import VerifiedIdentity
from x0tta6bl4.sansio import Action, Addr, Event, SetTimer


def retry_delay(
    sent: int, jitter: float, rtt: float | None = None, *, answering: bool = False
) -> float:
    """Seconds until the next message of an attempt that has sent ``sent`` since its last
    (re)start: exponential from a base up to the cap, stretched by ``jitter`` in [0, 1).
    The base is ``HANDSHAKE_RETRY_BASE``, or ``RETRY_RTT_FACTOR`` round trips ``rtt`` when
    that is longer: a long path gets time to repair a fragmented message before it is sent
    again. A peer that is ``answering`` in this attempt (over a lossy path) is retried
    without backing off and, on a short path, sooner (down to ``HANDSHAKE_RETRY_MIN``)."""
    floor = C.HANDSHAKE_RETRY_MIN if answering and rtt is not None else C.HANDSHAKE_RETRY_BASE
    first = floor if rtt is None else max(floor, C.RETRY_RTT_FACTOR * rtt)
    if answering:
        return first * (1.0 + C.HANDSHAKE_RETRY_JITTER * jitter)
    cap = max(C.HANDSHAKE_RETRY_CAP, first)
    delay = first * C.HANDSHAKE_RETRY_FACTOR ** max(0, sent - 1)
    return min(cap, delay) * (1.0 + C.HANDSHAKE_RETRY_JITTER * jitter)


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
        "_previous_fingerprint",
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
        self._previous_fingerprint: bytes | None = None  # ours, before the last renewal

    def renew(self, cert_der: bytes, fingerprint: bytes) -> None:
        """Our certificate was renewed (same static key): new INITs carry (or name) it.
        An INIT already in flight is still resent unchanged while young (the same
        message, so its fragments combine), and its answer is still taken."""
        self._previous_fingerprint = self._fingerprint
        self._cert_der = cert_der
        self._fingerprint = fingerprint

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
        return self._hurry(now, peer, C.HANDSHAKE_RETRY_BASE)

    def _hurry(self, now: float, peer: Peer, spacing: float) -> list[Action]:
        """Resend the running attempt's message now (backoff from the start), unless one
        went out less than ``spacing`` ago: then soon, but no flood."""
        att = peer.attempt
        assert att is not None
        att.backoff = att.silent = 0
        if now - att.last_sent >= spacing:
            return self.resend(now, peer)
        att.deadline = att.last_sent + spacing
        return [SetTimer(att.deadline, self._timer(peer.addr))]

    def resend(self, now: float, peer: Peer) -> list[Action]:
        """Send (or resend) our INIT, or a CERT_REQUEST if we lack a usable certificate."""
        att = peer.attempt
        assert att is not None
        # Did the peer answer anything since our last message? Then it is there and a
        # retry is about loss: no backing off. Silence backs off (it may be gone). A cookie
        # request never does: it costs the peer a 52-byte COOKIE at most.
        since = att.last_sent
        heard = att.heard_at > since or self._data.last_progress_from(peer) > since
        att.silent = 0 if heard else att.silent + 1
        att.attempts += 1
        att.backoff += 1
        att.last_sent = now
        cookie = self._jar.get(now, peer.addr)
        att.used_cookie = cookie is not None
        responder = self._responder_identity(peer, now)
        out: list[Action]
        if responder is None:
            self._drop_init(att)
            out = self._request_cert(now, peer, cookie)
            heard = heard or cookie is None
        else:
            ident, der = responder
            init = att.init
            if (
                init is not None
                and init.full
                and init.cookie == cookie
                and init.cert_der == der
                and now - init.created < C.INIT_REUSE_TIME
            ):
                # The same INIT again: its fragments combine with what the responder holds,
                # and a responder that answered it resends its RESP.
                init.sends += 1
                init.sent_at = now
                out = self._data.emit(now, peer.addr, init.message, message_id=init.message_id)
            else:
                self._drop_init(att)
                out = self._new_init(now, peer, att, ident, der, cookie)
            if att.backoff % C.CERT_REFRESH_AFTER == 0 and not att.cert_fetched:
                out += self._request_cert(now, peer, cookie)
        delay = retry_delay(att.silent, self._jitter.random(), peer.rtt, answering=heard)
        att.deadline = now + delay
        out.append(SetTimer(att.deadline, self._timer(peer.addr)))
        return out

    def _drop_init(self, att: Attempt) -> None:
        """A new INIT replaces the one in flight, which stays answerable (one only)."""
        if att.init is None:
            return
        old = att.earlier_init
        if old is not None:
            self._table.release(old.index)
            old.initiator.abandon()
        att.earlier_init, att.init = att.init, None

    def _new_init(
        self,
        now: float,
        peer: Peer,
        att: Attempt,
        ident: VerifiedIdentity,
        der: bytes,
        cookie: bytes | None,
    ) -> list[Action]:
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
        message_id = random_u32(self._secrets)
        att.init = InitInFlight(
            index=index,
            initiator=initiator,
            identity=ident,
            cert_der=der,
            mac1=mac1,
            message=message,
            message_id=message_id,
            created=now,
            full=full,
            cookie=cookie,
            sent_at=now,
        )
        return self._data.emit(now, peer.addr, message, message_id=message_id)

    def on_handshake_timer(self, now: float, peer: Peer) -> list[Action]:
        att = peer.attempt
        if att is None or now + C.TIMER_EPSILON < att.deadline:
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
                        "rekey": att.rekey,  # a session existed: a failed rekey
                        "queued_dropped": dropped,
                    },
                )
            ]
        arrived = self._data.last_progress_from(peer)
        if arrived > max(att.last_sent, att.deferred_at):
            # Our message or its answer is being repaired (fragments or NACKs came): a new
            # message now would start that over. Look again later; more must come by then.
            att.deferred_at = now
            delay = retry_delay(1, self._jitter.random(), peer.rtt, answering=True)
            att.deadline = now + delay
            return [SetTimer(att.deadline, self._timer(peer.addr))]
        if att.used_cookie and arrived <= att.last_sent and att.heard_at <= att.last_sent:
            # unanswered with mac2, not even a fragment or a NACK: the cookie may be stale
            # (the peer restarted with a new secret)
            self._jar.forget(peer.addr)
        return self.resend(now, peer)

    def on_confirm_timer(self, now: float, peer: Peer) -> list[Action]:
        """We held payloads while the peer's CONFIRM for our RESP was due: send them on a
        session if one came, else initiate ourselves."""
        if not peer.queue or peer.attempt is not None:
            return []
        cur = peer.current
        if cur is not None and can_send(cur, now):
            return self._data.flush(now, peer, cur)
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

    def _request_cert(self, now: float, peer: Peer, cookie: bytes | None) -> list[Action]:
        """A new CERT_REQUEST (a new request id); the last few stay answerable, since the
        CERT for one of them may still be arriving (being repaired) on a lossy path."""
        att = peer.attempt
        assert att is not None
        reqs = att.cert_requests
        while len(reqs) >= C.CERT_REQUESTS_IN_FLIGHT:
            self._table.release(reqs.pop(0).index)
        index = self._table.claim(peer)
        message, check = self._certs.request(index, cookie)
        reqs.append(CertRequestInFlight(index, check, now))
        return self._data.emit(now, peer.addr, message)

    # --- answers: RESP, COOKIE, CERT -------------------------------------------------------

    def on_resp(self, now: float, addr: Addr, data: bytes) -> list[Action]:
        try:
            resp = decode_resp(data)
        except DecodeError:
            return self._stats.drop(DropReason.MALFORMED, addr)
        peer = self._table.pending_for(addr, resp.receiver_index)
        att = peer.attempt if peer is not None else None
        init = att.init_for(resp.receiver_index) if att is not None else None
        if peer is None or att is None or init is None:
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
        req = att.cert_request_for(msg.receiver_index)
        for_cert_request = req is not None
        if req is not None:
            seal, ad = self._certs.request_cookie_seal, req.check
            sends, sent_at = 1, req.sent_at  # a new request id per transmission
        else:
            init = att.init_for(msg.receiver_index)
            assert init is not None  # pending_for matched one of them
            seal = Aead(cookie_key(init.identity.static_key.to_bytes()))
            ad = init.mac1
            sends, sent_at = init.sends, init.sent_at
        try:
            cookie = seal.open(msg.nonce, msg.sealed_cookie, ad)
        except CryptoError:
            return self._stats.drop(DropReason.DECRYPT_FAILED, addr)
        att.heard_at = now
        if sends == 1:  # Karn: only an answer to a message sent once times the path
            peer.observe_rtt(now - sent_at)
        known = self._jar.get(now, addr) == cookie  # a late answer to an earlier request
        self._jar.put(now, addr, cookie)
        self._stats.count(Tally.COOKIE_RECEIVED)
        if for_cert_request and not known:  # a certificate request costs nothing: ask now
            return self._request_cert(now, peer, cookie)
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
        req = att.cert_request_for(msg.request_id) if att is not None else None
        if peer is None or att is None or req is None:
            return self._stats.drop(DropReason.UNKNOWN_INDEX, addr)
        try:
            ident = self._certs.verify(msg.cert_der, now)
        except CertificateRejected as exc:
            out = self._stats.drop(DropReason.cert_rejected(exc.reason), addr)
            if exc.reason is RejectReason.REVOKED:
                out += self._end_revoked(now, peer, sha256(msg.cert_der))
            return out
        if ident.fingerprint in (self._fingerprint, self._previous_fingerprint):
            return self._stats.drop(DropReason.REFLECTED, addr)
        if not self._table.acceptable(addr, peer, ident):
            return self._stats.drop(DropReason.UNEXPECTED_IDENTITY, addr, peer=ident.name)
        out = self._certs.remember(ident, msg.cert_der)
        self._table.release_cert_requests(att)
        att.cert_fetched = True  # current: no need to refresh it in this attempt
        att.heard_at = now
        if att.init is not None and msg.cert_der == att.init.cert_der:
            return out  # a refresh that found the certificate unchanged: keep trying INIT
        peer.cert_der = msg.cert_der
        return out + self.resend(now, peer)

    def _end_revoked(self, now: float, peer: Peer, fingerprint: bytes) -> list[Action]:
        """The certificate the peer sent for our handshake is revoked: a retry would only
        fetch it again (about 7 KB) and refuse it again, until the attempt gives up. End
        the attempt now, drop what was queued, and dial that address no more until the
        peer itself handshakes with a certificate that verifies, or the hold runs out
        (``PeerTable.hold_revoked``)."""
        att = peer.attempt
        attempts = att.attempts if att is not None else 0
        rekey = att.rekey if att is not None else peer.current is not None
        self._table.cancel(peer)
        peer.cert_der = None
        peer.failures += 1
        hold = self._table.hold_revoked(peer.addr, fingerprint, now)
        self._stats.count(Tally.REVOKED_ATTEMPT_ENDED)
        dropped = len(peer.queue)
        if dropped:
            self._stats.count(DropReason.PEER_REVOKED, dropped)
            peer.queue.clear()
        return [
            Event(
                "handshake_failed",
                {
                    "peer": peer.name,
                    "addr": addr_label(peer.addr),
                    "attempts": attempts,
                    "reason": "revoked",
                    "rekey": rekey,
                    "queued_dropped": dropped,
                    "hold": round(hold.until - now, 3),
                },
            )
        ]

    # --- the peer says it lost our session ---------------------------------------------------

    def on_no_session(self, now: float, addr: Addr, data: bytes) -> list[Action]:
        """NO_SESSION: if it echoes a packet we recently sent on our current session with
        ``addr``, the peer lost that session: handshake now (or hurry the running attempt),
        at most once per ``NO_SESSION_HANDSHAKE_INTERVAL``. The old session stays: this
        message is unauthenticated and may cost a handshake, never a session."""
        try:
            msg = decode_no_session(data)
        except DecodeError:
            return self._stats.drop(DropReason.MALFORMED, addr)
        peer = self._table.by_addr.get(addr)
        cur = peer.current if peer is not None else None
        if peer is None or cur is None or cur.remote_index != msg.receiver_index:
            return self._stats.drop(DropReason.UNMATCHED_NO_SESSION, addr)
        sent = cur.sent_tag(msg.counter)
        if sent is None or not _hmac.compare_digest(sent, msg.tag):
            return self._stats.drop(DropReason.UNMATCHED_NO_SESSION, addr)
        if now - peer.no_session_at < C.NO_SESSION_HANDSHAKE_INTERVAL:
            return self._stats.drop(DropReason.NO_SESSION_RATE_LIMITED, addr)
        peer.no_session_at = now
        peer.knows_our_cert = False  # it lost its state, our certificate with it
        self._stats.count(Tally.NO_SESSION_ACTED)
        out: list[Action] = [
            Event("peer_lost_session", {"peer": peer.name, "addr": addr_label(addr)})
        ]
        if peer.attempt is None:
            return out + self.start(now, peer)
        return out + self._hurry(now, peer, C.HANDSHAKE_RETRY_MIN)

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
        peer.ack_at = now + min(C.HANDSHAKE_RETRY_CAP, C.ACK_RETRY_BASE * 2**peer.acks_sent)
        key = ChannelTimer(self._ns, ChannelTimerKind.ACK, peer.addr)
        return [*self._data.seal(now, peer, cur, b""), SetTimer(peer.ack_at, key)]
