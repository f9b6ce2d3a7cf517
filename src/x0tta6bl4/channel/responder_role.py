"""The endpoint as responder: answering INIT without keeping anything of it, and making
the session only when the initiator's CONFIRM hands back our biscuit with DATA that
authenticates under the keys inside it.

Before any KEM work an INIT must pass mac1 (keyed by our static key), under load a
cookie in mac2 and a per-source rate limit, and must not be one already decapsulated.
Nothing an unauthenticated INIT does creates, evicts, cancels or replaces state an
authenticated peer relies on; the only trace it leaves is ``answered`` (bounded, and it
can only delay our own initiation towards that address by ``CONFIRM_GRACE``).
"""

from __future__ import annotations

from collections import OrderedDict

from x0tta6bl4.channel import constants as C
from x0tta6bl4.channel.biscuit import BiscuitKeeper
from x0tta6bl4.channel.certexchange import CertExchange
from x0tta6bl4.channel.cookie import (
    ZERO_MAC,
    CookieGenerator,
    LoadMeter,
    RateLimiter,
    check_mac1,
    cookie_key,
)
from x0tta6bl4.channel.datapath import DataPath, Role
from x0tta6bl4.channel.drops import DropReason, Stats, Tally
from x0tta6bl4.channel.handshake import Responder, SessionKeys
from x0tta6bl4.channel.peers import AttemptPhase, PeerTable
from x0tta6bl4.channel.wire import BiscuitState, decode_confirm, decode_init_envelope
from x0tta6bl4.crypto.aead import Aead
from x0tta6bl4.crypto.entropy import SecretSource
from x0tta6bl4.crypto.hybrid import HybridPrivateKey
from x0tta6bl4.errors import (
    CertificateRejected,
    CryptoError,
    DecodeError,
    HandshakeError,
    ReplayError,
)
from x0tta6bl4.sansio import Action, Addr, Deliver, Send


class ResponderRole:
    __slots__ = (
        "_answered",
        "_biscuits",
        "_certs",
        "_cookie_gen",
        "_cookie_seal",
        "_data",
        "_fingerprint",
        "_handshake",
        "_max_datagram",
        "_previous",
        "_ratelimit",
        "_secrets",
        "_seen_inits",
        "_static_pub",
        "_stats",
        "_table",
        "_timestamps",
        "load",
    )

    def __init__(
        self,
        *,
        static_private: HybridPrivateKey,
        fingerprint: bytes,
        max_datagram: int,
        under_load_threshold: float,
        secrets: SecretSource,
        cookie_gen: CookieGenerator,
        table: PeerTable,
        certs: CertExchange,
        data: DataPath,
        stats: Stats,
    ) -> None:
        self._fingerprint = fingerprint
        self._static_pub = static_private.public_key().to_bytes()
        self._max_datagram = max_datagram
        self._secrets = secrets
        self._cookie_gen = cookie_gen
        self._table = table
        self._certs = certs
        self._data = data
        self._stats = stats
        self._handshake = Responder(static_private, fingerprint)
        self._cookie_seal = Aead(cookie_key(self._static_pub))
        self._biscuits = BiscuitKeeper(secrets)
        self._ratelimit = RateLimiter()
        self.load = LoadMeter(under_load_threshold)  # mac2 required once it says so
        # INITs already decapsulated (by mac1, which covers the whole message): a replayed
        # INIT is refused before any KEM work.
        self._seen_inits: OrderedDict[bytes, None] = OrderedDict()
        # Where we recently sent a RESP: sending there waits CONFIRM_GRACE for its CONFIRM
        # before initiating. Unauthenticated, so it can only delay us, and it is bounded.
        self._answered: OrderedDict[Addr, float] = OrderedDict()
        # The newest confirmed INIT timestamp per initiator certificate: replays refused.
        self._timestamps: OrderedDict[bytes, int] = OrderedDict()
        # After a renewal: our previous certificate's fingerprint and until when (monotonic)
        # an INIT sealed to it is still answered (a peer holding that certificate).
        self._previous: tuple[bytes, float] | None = None

    def renew(self, fingerprint: bytes, previous_until: float) -> None:
        """Our certificate was renewed (same static key). INITs sealed to the previous
        certificate (peers that cached it) are answered until ``previous_until``, when it
        expires: those peers could not tell the difference before then."""
        self._previous = (self._fingerprint, previous_until)
        self._fingerprint = fingerprint
        self._handshake.set_fingerprint(fingerprint)

    def _own(self, fp: bytes) -> bool:
        prev = self._previous
        return fp == self._fingerprint or (prev is not None and fp == prev[0])

    def answered_at(self, addr: Addr) -> float | None:
        """When we last sent a RESP to ``addr`` that no CONFIRM has followed yet."""
        return self._answered.get(addr)

    # --- INIT ---------------------------------------------------------------------------

    def on_init(
        self, now: float, addr: Addr, data: bytes, message_id: int | None = None
    ) -> list[Action]:
        """Answer an INIT without keeping anything of it: the responder's half of the
        handshake leaves in RESP's biscuit. The RESP is kept a while, as the answer to the
        INIT's fragments ``message_id``, so that a retry of the same INIT (our RESP was
        lost) is answered again without any KEM work (bounded like every kept message)."""
        try:
            sender_index, mac1, mac2 = decode_init_envelope(data)
        except DecodeError:
            return self._stats.drop(DropReason.MALFORMED, addr)
        if not check_mac1(data, self._handshake.mac1_key):
            return self._stats.drop(DropReason.BAD_MAC1, addr)
        mac2_ok = False
        if mac2 != ZERO_MAC:
            if not self._cookie_gen.check_mac2(now, addr, data):
                return self._stats.drop(DropReason.BAD_MAC2, addr)
            mac2_ok = True
        if self.load.hit(now):
            if not mac2_ok:
                self._stats.count(Tally.COOKIE_SENT)
                reply = self._cookie_gen.reply(now, addr, sender_index, self._cookie_seal, mac1)
                return [Send(addr, reply)]
            if not self._ratelimit.allow(now, addr):
                return self._stats.drop(DropReason.RATE_LIMITED, addr)
        if mac1 in self._seen_inits:
            return self._stats.drop(DropReason.REPLAY, addr)
        self._seen_inits[mac1] = None
        while len(self._seen_inits) > C.MAX_SEEN_INITS:
            self._seen_inits.popitem(last=False)
        prev = self._previous
        if prev is not None and now > prev[1]:
            prev = self._previous = None  # the previous certificate expired
        try:
            hs = self._handshake.consume_init(data, also=None if prev is None else prev[0])
        except DecodeError:
            return self._stats.drop(DropReason.MALFORMED, addr)
        except CryptoError:
            return self._stats.drop(DropReason.DECRYPT_FAILED, addr)
        payload = hs.payload
        out: list[Action] = []
        if payload.fingerprint is not None:
            cached = self._certs.lookup(payload.fingerprint)
            if cached is None:
                return self._stats.drop(DropReason.UNKNOWN_FINGERPRINT, addr)
            der = cached
        else:
            assert payload.cert_der is not None
            der = payload.cert_der
        try:
            ident = self._certs.verify_offered(der, now)
        except CertificateRejected as exc:
            return self._stats.drop(DropReason.cert_rejected(exc.reason), addr)
        fp = ident.fingerprint
        if self._own(fp):
            return self._stats.drop(DropReason.REFLECTED, addr)
        if payload.cert_der is not None:
            out += self._certs.remember(ident, der)
        else:
            self._certs.touch(fp)
        peer = self._table.by_addr.get(addr)
        if not self._table.acceptable(addr, peer, ident):
            return [*out, *self._stats.drop(DropReason.UNEXPECTED_IDENTITY, addr, peer=ident.name)]
        ts = payload.timestamp
        if ts <= self._timestamps.get(fp, -1):
            return [*out, *self._stats.drop(DropReason.STALE_TIMESTAMP, addr, peer=ident.name)]
        att = peer.attempt if peer is not None else None
        if (
            att is not None
            and att.phase is AttemptPhase.AWAITING_RESP
            and self._static_pub < ident.static_key.to_bytes()
        ):
            # Simultaneous open: the lower static key's INIT wins and the other side
            # answers it. Dropping an INIT changes nothing; the other side keeps its own
            # attempt until an authenticated session from us makes it moot.
            drop = self._stats.drop(DropReason.SIMULTANEOUS_OPEN_LOST, addr, peer=ident.name)
            return [*out, *drop]
        index = self._table.new_index()

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
        return out + self._data.emit(now, addr, resp, answer=True, request_id=message_id)

    # --- CONFIRM ------------------------------------------------------------------------

    def on_confirm(self, now: float, addr: Addr, data: bytes) -> list[Action]:
        """The initiator's first packets: its biscuit back, and DATA under the new keys.
        Only when that DATA authenticates does the responder create anything."""
        try:
            msg = decode_confirm(data)
        except DecodeError:
            return self._stats.drop(DropReason.MALFORMED, addr)
        index = msg.receiver_index
        if index in self._table.sessions:  # a later CONFIRM on a session we already made
            return self._data.on_data(now, addr, msg.data, ack=True)
        try:
            state = self._biscuits.open(now, msg.biscuit)
        except HandshakeError:
            return self._stats.drop(DropReason.STALE_BISCUIT, addr)
        except (CryptoError, DecodeError):
            return self._stats.drop(DropReason.BAD_BISCUIT, addr)
        if state.local_index != index:
            return self._stats.drop(DropReason.BAD_BISCUIT, addr)
        fp = state.fingerprint
        der = self._certs.lookup(fp)
        if der is None:
            return self._stats.drop(DropReason.UNKNOWN_FINGERPRINT, addr)
        if state.timestamp <= self._timestamps.get(fp, -1):
            return self._stats.drop(DropReason.STALE_TIMESTAMP, addr)
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
            return self._stats.drop(DropReason.DECRYPT_FAILED, addr)
        try:  # authenticated from here on; the certificate may have expired meanwhile
            ident = self._certs.verify(der, now)
        except CertificateRejected as exc:
            session.wipe()
            return self._stats.drop(DropReason.cert_rejected(exc.reason), addr)
        peer = self._table.admit(addr, ident)
        if peer is None:
            session.wipe()
            return self._stats.drop(DropReason.PEER_LIMIT, addr)
        if not self._table.acceptable(addr, peer, ident):
            session.wipe()
            return self._stats.drop(DropReason.UNEXPECTED_IDENTITY, addr, peer=ident.name)
        self._timestamps[fp] = state.timestamp
        self._timestamps.move_to_end(fp)
        while len(self._timestamps) > C.MAX_TIMESTAMP_ENTRIES:
            self._timestamps.popitem(last=False)
        session.confirmed = True
        self._table.register(peer, session)
        peer.last_received = now
        self._answered.pop(addr, None)
        self._data.forget_answers(addr)  # it has our RESP: a replay of its INIT gets nothing
        self._table.cancel(peer)  # an authenticated session exists: our own initiation is moot
        out = self._data.establish(
            now, peer, session, ident, der, Role.RESPONDER, now - state.created
        )
        if payload:
            out.append(Deliver(ident.name, 0, payload))
        return out
