"""Sessions and what travels on them: receiving DATA (the per-packet path), sealing and
queueing payloads, installing a freshly made session, session expiry, and the glue
between FRAGMENT datagrams and the reassembler.

The per-packet path is :meth:`DataPath.on_data`; ``SecureEndpoint.handle`` calls it
directly for any datagram that starts with DATA's header, and it stays lean: one dict
lookup, the session's age, ``Session.open``.
"""

from __future__ import annotations

from enum import StrEnum

from x0tta6bl4.channel import constants as C
from x0tta6bl4.channel.drops import DropReason, Stats, Tally, addr_label
from x0tta6bl4.channel.fragment import Reassembler, split
from x0tta6bl4.channel.peers import Peer, PeerOrigin, PeerState, PeerTable
from x0tta6bl4.channel.session import Session
from x0tta6bl4.channel.timers import ChannelTimer, ChannelTimerKind
from x0tta6bl4.channel.wire import DATA_INDEX, FRAGMENT_MESSAGE_ID, Confirm, encode
from x0tta6bl4.crypto.entropy import SecretSource, random_u32
from x0tta6bl4.errors import CryptoError, DecodeError, ReplayError
from x0tta6bl4.identity.types import VerifiedIdentity
from x0tta6bl4.sansio import Action, Addr, Deliver, Event, Send, SessionUp, SetTimer

# Module globals for the per-packet path (a global load beats an attribute chain).
_DATA_OVERHEAD = C.DATA_OVERHEAD
_REJECT_AFTER_TIME = C.REJECT_AFTER_TIME
_receiver_index = DATA_INDEX.unpack_from
_EPS = 1e-9  # a timer firing at its deadline counts as due despite float rounding


class Role(StrEnum):
    INITIATOR = "initiator"
    RESPONDER = "responder"


def can_send(s: Session, now: float) -> bool:
    """Whether ``s`` may carry a new payload now."""
    return (
        s.confirmed
        and now - s.created < C.REJECT_AFTER_TIME
        and s.send_count < C.REJECT_AFTER_MESSAGES
    )


def wants_rekey(s: Session, now: float) -> bool:
    """Whether a sender on ``s`` should start the next handshake (the responder 10 s
    later than the initiator, so the initiator normally goes first)."""
    limit = C.REKEY_AFTER_TIME if s.initiator else C.REKEY_AFTER_TIME + C.RESPONDER_REKEY_DELAY
    return now - s.created >= limit or s.send_count >= C.REKEY_AFTER_MESSAGES


class DataPath:
    __slots__ = ("_max_datagram", "_ns", "_reasm", "_secrets", "_sessions", "_stats", "_table")

    def __init__(
        self,
        table: PeerTable,
        stats: Stats,
        *,
        max_datagram: int,
        secrets: SecretSource,
        timer_namespace: str,
    ) -> None:
        self._table = table
        self._sessions = table.sessions  # the same dict: no hop through the table per packet
        self._stats = stats
        self._max_datagram = max_datagram
        self._secrets = secrets
        self._ns = timer_namespace
        self._reasm = Reassembler()

    # --- receiving ----------------------------------------------------------------------

    def on_data(self, now: float, addr: Addr, data: bytes) -> list[Action]:
        """A DATA datagram: open it on the session its receiver index names."""
        if len(data) < _DATA_OVERHEAD:
            return self._stats.drop(DropReason.MALFORMED, addr)
        entry = self._sessions.get(_receiver_index(data)[0])
        if entry is None:
            return self._stats.drop(DropReason.UNKNOWN_INDEX, addr)
        peer, session = entry
        if now - session.created >= _REJECT_AFTER_TIME:
            return self._stats.drop(DropReason.EXPIRED_SESSION, addr)
        try:
            payload = session.open(data)
        except ReplayError:
            return self._stats.drop(DropReason.REPLAY, addr)
        except CryptoError:
            return self._stats.drop(DropReason.DECRYPT_FAILED, addr)
        peer.last_received = now
        if session.biscuit is not None:  # the responder has the session: stop CONFIRMing
            session.biscuit = None
        if payload:
            ident = peer.identity
            return [Deliver(ident.name if ident is not None else addr_label(addr), 0, payload)]
        return []

    # --- sending ------------------------------------------------------------------------

    def emit(self, addr: Addr, message: bytes) -> list[Action]:
        """``message`` to ``addr``, cut into FRAGMENTs if it does not fit one datagram."""
        if len(message) <= self._max_datagram:
            return [Send(addr, message)]
        message_id = random_u32(self._secrets)  # unguessable: nobody can pre-plant it
        return [Send(addr, d) for d in split(message, message_id, self._max_datagram)]

    def seal(self, peer: Peer, session: Session, payload: bytes) -> list[Action]:
        """``payload`` on ``session``; inside CONFIRM while the responder has not answered."""
        data = session.seal(payload)
        biscuit = session.biscuit
        if biscuit is None:
            return [Send(peer.addr, data)]
        return self.emit(peer.addr, encode(Confirm(biscuit, data)))

    def enqueue(self, peer: Peer, payload: bytes) -> None:
        """Hold ``payload`` until a session exists (bounded: the oldest goes first)."""
        peer.queue.append(payload)
        while len(peer.queue) > C.MAX_QUEUED_PER_PEER:
            peer.queue.popleft()
            self._stats.count(Tally.QUEUE_OVERFLOW)

    def flush(self, peer: Peer, session: Session) -> list[Action]:
        out: list[Action] = []
        while peer.queue:
            out += self.seal(peer, session, peer.queue.popleft())
        return out

    # --- sessions -----------------------------------------------------------------------

    def establish(
        self,
        now: float,
        peer: Peer,
        session: Session,
        ident: VerifiedIdentity,
        der: bytes,
        role: Role,
        duration: float,
    ) -> list[Action]:
        """Make ``session`` (registered, authenticated as ``ident``) the peer's current one:
        report it, send its first packet and whatever was queued, and set its timers."""
        rekey = peer.current is not None
        self._table.discard(peer.previous)
        peer.previous, peer.current = peer.current, session
        self._table.bind(peer, ident, der)
        peer.handshakes += 1
        peer.failures = 0
        fields = {"peer": ident.name, "addr": addr_label(peer.addr), "role": role}
        # The control action for the layer above, then the same news for the trace.
        out: list[Action] = [
            SessionUp(peer.addr, ident.name),
            Event("handshake_complete", {**fields, "duration": duration}),
        ]
        if rekey:
            peer.rekeys += 1
            out.append(Event("session_rekeyed", fields))
        if role is Role.INITIATOR or not peer.queue:
            # The initiator's first packet authenticates it and hands back the biscuit;
            # the responder's first packet tells the initiator to stop sending CONFIRM.
            out += self.seal(peer, session, b"")
        out += self.flush(peer, session)
        if role is Role.INITIATOR:
            peer.acks_sent = 0
            key = ChannelTimer(self._ns, ChannelTimerKind.ACK, peer.addr)
            out.append(SetTimer(now + C.ACK_RETRY_BASE, key))
        out += self.expiry_timer(peer)
        return out

    def expiry_timer(self, peer: Peer) -> list[Action]:
        sessions = peer.sessions()
        if not sessions:
            return []
        at = min(s.created for s in sessions) + C.REJECT_AFTER_TIME
        return [SetTimer(at, ChannelTimer(self._ns, ChannelTimerKind.EXPIRE, peer.addr))]

    def on_expire_timer(self, now: float, peer: Peer) -> list[Action]:
        """Wipe the peer's sessions past ``REJECT_AFTER_TIME``; forget an inbound peer
        that has nothing left."""

        def dead(s: Session) -> bool:
            return now + _EPS >= s.created + C.REJECT_AFTER_TIME

        if peer.previous is not None and dead(peer.previous):
            self._table.discard(peer.previous)
            peer.previous = None
        if peer.current is not None and dead(peer.current):
            self._table.discard(peer.current)
            peer.current = None
        if (
            peer.origin is PeerOrigin.INBOUND
            and peer.state is PeerState.IDLE
            and peer.previous is None
            and not peer.queue
        ):
            self._table.forget(peer)  # an inbound peer that went quiet
            return []
        return self.expiry_timer(peer)

    # --- fragments ------------------------------------------------------------------------

    @property
    def reassemblies_pending(self) -> int:
        return len(self._reasm)

    def reassemble(self, now: float, addr: Addr, data: bytes) -> tuple[list[Action], bytes | None]:
        """Take one FRAGMENT: the actions it causes, and the whole message once complete.
        Sources we hold a session with or wait on use the reassembler's protected pool."""
        peer = self._table.by_addr.get(addr)
        known = peer is not None and peer.state is not PeerState.IDLE
        try:
            added = self._reasm.add(now, addr, data, known=known)
        except DecodeError:
            return self._stats.drop(DropReason.BAD_FRAGMENT, addr), None
        if added.refused:
            return self._stats.drop(DropReason.REASSEMBLY_FULL, addr), None
        out: list[Action] = []
        if added.evicted:
            self._stats.count(Tally.REASSEMBLY_EVICTED, added.evicted)
        if added.duplicate:
            self._stats.count(Tally.DUPLICATE_FRAGMENT)
        if added.started is not None:
            message_id = FRAGMENT_MESSAGE_ID.unpack_from(data)[0]
            key = ChannelTimer(self._ns, ChannelTimerKind.REASSEMBLY, addr, message_id)
            out.append(SetTimer(added.started, key))
        return out, added.message

    def on_reassembly_timer(self, now: float, addr: Addr, message_id: int) -> list[Action]:
        if self._reasm.expire(now, addr, message_id):
            return self._stats.drop(DropReason.REASSEMBLY_TIMEOUT, addr)
        return []
