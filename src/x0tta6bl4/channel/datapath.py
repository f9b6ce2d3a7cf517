"""Sessions and what travels on them: receiving DATA (the per-packet path), sealing and
queueing payloads, installing a freshly made session, session expiry, roaming (an
authenticated packet from a new address moves its peer there), and the glue between
FRAGMENT datagrams and the reassembler (with its repair: NACKs out, resends for NACKs in,
repeated requests answered from the kept answer).

A payload too large for one datagram (up to ``MAX_DATA_PAYLOAD``) is sealed as ONE DATA
message and sent as DATA_FRAGMENTs (:func:`~.fragment.data_segments`: one buffer, one
``SendSegments``); they are reassembled apart from handshake messages
(:class:`~.fragment.DataReassembler`), only for a session we hold and a counter its replay
window accepts, then opened like any DATA. They are never repaired: a lost fragment loses
its payload (``data_incomplete``).

The per-packet path is :meth:`DataPath.on_data`; ``SecureEndpoint.handle`` calls it
directly for any datagram that starts with DATA's header, and it stays lean: one dict
lookup, the session's age, ``Session.open``.

Liveness, after WireGuard's timers: a receiver of data that has sent nothing for
``KEEPALIVE_TIMEOUT`` answers with a keepalive, so a sender that hears nothing for
``REPLY_TIMEOUT`` knows the peer may have lost the session (the endpoint then starts a
handshake). DATA for an index nobody holds is answered, rate-limited per source, with
NO_SESSION echoing it, so its sender learns at once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from enum import StrEnum

from x0tta6bl4.channel import constants as C
from x0tta6bl4.channel.drops import DropReason, Stats, Tally, addr_label
from x0tta6bl4.channel.fragment import (
    DATA_FRAGMENT_INDEX_AT,
    INDEX_BYTES,
    DataReassembler,
    Reassembler,
    SentMessages,
    data_segments,
    split,
)
from x0tta6bl4.channel.peers import Peer, PeerOrigin, PeerState, PeerTable
from x0tta6bl4.channel.session import Session
from x0tta6bl4.channel.timers import ChannelTimer, ChannelTimerKind
from x0tta6bl4.channel.wire import (
    DATA_FRAGMENT_FIELDS,
    DATA_INDEX,
    FRAGMENT_MESSAGE_ID,
    HDR_DATA_FRAGMENT,
    Confirm,
    FragmentNack,
    NoSession,
    data_prefix,
    decode_data_fragment,
    decode_fragment_nack,
    encode,
)
from x0tta6bl4.crypto.entropy import SecretSource, random_u32
from x0tta6bl4.errors import CryptoError, DecodeError, ReplayError
from x0tta6bl4.identity.types import VerifiedIdentity
from x0tta6bl4.ratelimit import TokenBucket
from x0tta6bl4.sansio import (
    Action,
    Addr,
    Deliver,
    Event,
    PeerMoved,
    Send,
    SendSegments,
    SessionUp,
    SetTimer,
)

# Module globals for the per-packet path (a global load beats an attribute chain).
_DATA_OVERHEAD = C.DATA_OVERHEAD
_REJECT_AFTER_TIME = C.REJECT_AFTER_TIME
_KEEPALIVE_TIMEOUT = C.KEEPALIVE_TIMEOUT
_TAG = C.AEAD_TAG_SIZE
_TAG_MASK = C.SENT_TAG_WINDOW - 1  # a power of two
_receiver_index = DATA_INDEX.unpack_from
_HDR_DATA_FRAGMENT = HDR_DATA_FRAGMENT
_DF_FIELDS = DATA_FRAGMENT_FIELDS


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


class NoSessionGate:
    """Whether to answer DATA that no session opens with NO_SESSION. Only a stream: the
    same unknown receiver index twice from one source (a corrupted or stray datagram is
    not answered), and then at most ``NO_SESSION_RATE`` per second per source. The table
    is bounded (least recently seen out)."""

    __slots__ = ("_max", "_seen")

    def __init__(self, max_sources: int = C.MAX_RATE_LIMITED_SOURCES) -> None:
        self._max = max_sources
        self._seen: OrderedDict[Addr, tuple[int, TokenBucket]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def allow(self, now: float, addr: Addr, index: int) -> bool:
        seen = self._seen
        entry = seen.get(addr)
        if entry is not None:
            seen.move_to_end(addr)
            if entry[0] == index:
                return entry[1].take(now)
            seen[addr] = (index, entry[1])  # the bucket stays: no reset by switching
            return False
        seen[addr] = (index, TokenBucket(C.NO_SESSION_RATE, C.NO_SESSION_BURST))
        while len(seen) > self._max:
            seen.popitem(last=False)
        return False


class DataPath:
    __slots__ = (
        "_data_reasm",
        "_max_datagram",
        "_no_session",
        "_ns",
        "_one_datagram",
        "_prefix",
        "_reasm",
        "_secrets",
        "_sent",
        "_sessions",
        "_stats",
        "_table",
    )

    def __init__(
        self,
        table: PeerTable,
        stats: Stats,
        *,
        max_datagram: int,
        secrets: SecretSource,
        timer_namespace: str,
        segment_prefix: Callable[[Addr], bytes] | None = None,
    ) -> None:
        self._table = table
        self._sessions = table.sessions  # the same dict: no hop through the table per packet
        self._stats = stats
        self._max_datagram = max_datagram
        self._one_datagram = max_datagram - C.DATA_OVERHEAD  # the largest payload sent whole
        self._prefix = segment_prefix  # the layer below's header before each fragment
        self._secrets = secrets
        self._ns = timer_namespace
        self._reasm = Reassembler()
        self._data_reasm = DataReassembler()  # payloads in DATA_FRAGMENTs: their own bounds
        self._sent = SentMessages()  # what we sent fragmented, to resend for NACKs
        self._no_session = NoSessionGate()

    # --- receiving ----------------------------------------------------------------------

    def on_data(self, now: float, addr: Addr, data: bytes, *, ack: bool = False) -> list[Action]:
        """A DATA datagram: open it on the session its receiver index names. ``ack``: it
        came in a CONFIRM on a session we already made, so an empty one (a resend of the
        initiator's first packet) is answered: our answer to the first was lost."""
        if len(data) < _DATA_OVERHEAD:
            return self._stats.drop(DropReason.MALFORMED, addr)
        entry = self._sessions.get(_receiver_index(data)[0])
        if entry is None:
            return [
                *self._stats.drop(DropReason.UNKNOWN_INDEX, addr),
                *self.answer_no_session(now, addr, data),
            ]
        peer, session = entry
        if now - session.created >= _REJECT_AFTER_TIME:
            return self._stats.drop(DropReason.EXPIRED_SESSION, addr)
        roaming = addr != peer.addr
        top = session.received_top if roaming else 0
        try:
            payload = session.open(data)  # the replay check first, then the AEAD
        except ReplayError:
            return self._stats.drop(DropReason.REPLAY, addr)
        except CryptoError:
            return self._stats.drop(DropReason.DECRYPT_FAILED, addr)
        peer.last_received = now
        peer.unanswered_since = None
        if session.biscuit is not None:  # the responder has the session: stop CONFIRMing
            session.biscuit = None
            if peer.acks_sent == 0:  # CONFIRM sent once, at the session's making
                peer.observe_rtt(now - session.created)
        moved = self.roam(now, peer, session, addr, top) if roaming else None
        if payload:
            ident = peer.identity
            out: list[Action] = [
                Deliver(ident.name if ident is not None else addr_label(addr), 0, payload)
            ]
            if now - peer.last_sent >= _KEEPALIVE_TIMEOUT:
                out += self.keepalive(now, peer)  # one-way traffic: say we still hold it
        elif ack:
            out = self.keepalive(now, peer)
        else:
            out = []
        return moved + out if moved else out

    # --- roaming ------------------------------------------------------------------------

    def roam(self, now: float, peer: Peer, session: Session, addr: Addr, top: int) -> list[Action]:
        """An authenticated packet of ``peer`` on ``session`` came from ``addr``, not from
        its address: move the peer there (WireGuard's endpoint update), if the packet is
        the newest the peer sent us. ``top`` is the session's highest received counter
        before this packet. Only a packet that passed the replay window and the AEAD gets
        here, so nothing unauthenticated or replayed moves a peer; an older packet (one
        reordered behind a newer one, or a straggler on the previous session once the
        current one is in use) does not move it back either."""
        if session.received_top <= top:
            return []  # not above the highest counter received: it is older news
        cur = peer.current
        if session is not cur and cur is not None and cur.received_top >= 0:
            return []  # the peer already sends on the current session
        old = peer.addr
        moved, absorbed = self._table.move(peer, addr)
        if not moved:
            self._stats.count(Tally.MOVE_REFUSED)
            return []
        self._stats.count(Tally.PEER_MOVED)
        name = peer.name or ""
        out: list[Action] = [
            PeerMoved(old, addr, name),
            Event(
                "peer_moved",
                {
                    "peer": name,
                    "old_addr": addr_label(old),
                    "new_addr": addr_label(addr),
                    "absorbed": absorbed is not None,
                },
            ),
        ]
        return out + self._rearm(now, peer)

    def _rearm(self, now: float, peer: Peer) -> list[Action]:
        """Set again, under the peer's new address, the timers it had under its old one
        (those still fire, find no peer there, and do nothing), and send what an absorbed
        entry had queued."""
        ns, addr = self._ns, peer.addr
        out: list[Action] = []
        att = peer.attempt
        if att is not None:
            out.append(SetTimer(att.deadline, ChannelTimer(ns, ChannelTimerKind.HANDSHAKE, addr)))
        cur = peer.current
        if cur is not None and cur.biscuit is not None:
            out.append(SetTimer(peer.ack_at, ChannelTimer(ns, ChannelTimerKind.ACK, addr)))
        if peer.queue:
            while len(peer.queue) > C.MAX_QUEUED_PER_PEER:
                peer.queue.popleft()
                self._stats.count(Tally.QUEUE_OVERFLOW)
            if cur is not None and can_send(cur, now):
                out += self.flush(now, peer, cur)
            else:
                out.append(SetTimer(now, ChannelTimer(ns, ChannelTimerKind.CONFIRM, addr)))
        return out + self.expiry_timer(peer)

    def answer_no_session(self, now: float, addr: Addr, data: bytes) -> list[Action]:
        """NO_SESSION for ``data``, a DATA datagram whose index no session of ours has, if
        we hold no session with ``addr`` at all (else it has ours to use) and the gate
        lets it through. Never larger than what it answers."""
        peer = self._table.by_addr.get(addr)
        if peer is not None and (peer.current is not None or peer.previous is not None):
            return []
        if not self._no_session.allow(now, addr, _receiver_index(data)[0]):
            return []
        self._stats.count(Tally.NO_SESSION_SENT)
        return [Send(addr, encode(NoSession.echo(data)))]

    # --- sending ------------------------------------------------------------------------

    def emit(
        self,
        now: float,
        addr: Addr,
        message: bytes,
        *,
        message_id: int | None = None,
        answer: bool = False,
        request_id: int | None = None,
    ) -> list[Action]:
        """``message`` to ``addr``, cut into FRAGMENTs if it does not fit one datagram, and
        then kept a while to resend what a NACK asks for. ``message_id`` reuses an id (a
        retry of the same message); ``answer``: it answers someone else's request (kept in
        the answers pool), the fragmented request ``request_id`` if that is given."""
        if len(message) <= self._max_datagram:
            return [Send(addr, message)]
        if message_id is None:
            message_id = random_u32(self._secrets)  # unguessable: nobody can pre-plant it
        datagrams = split(message, message_id, self._max_datagram)
        self._sent.add(now, addr, message_id, datagrams, answer=answer, request_id=request_id)
        return [Send(addr, d) for d in datagrams]

    def seal(self, now: float, peer: Peer, session: Session, payload: bytes) -> list[Action]:
        """``payload`` on ``session``; inside CONFIRM while the responder has not answered."""
        data = session.seal(payload)
        # Keep the tag: a peer that lost the session echoes it in NO_SESSION.
        session.sent_tags[session.send_count & _TAG_MASK] = data[-_TAG:]
        peer.last_sent = now
        if payload and peer.unanswered_since is None:
            peer.unanswered_since = now
        biscuit = session.biscuit
        if biscuit is None:
            return [Send(peer.addr, data)]
        return self.emit(now, peer.addr, encode(Confirm(biscuit, data)))

    def seal_large(self, now: float, peer: Peer, session: Session, payload: bytes) -> list[Action]:
        """``payload``, too large for one datagram, as ONE DATA message in DATA_FRAGMENTs.
        While the responder has not answered on ``session``, a CONFIRM with an empty
        packet goes first (the responder makes the session from it; fragments for a
        session it does not hold yet are dropped). Raises :class:`MessageTooLarge` past
        ``MAX_DATA_PAYLOAD``."""
        out = self.seal(now, peer, session, b"") if session.biscuit is not None else []
        counter, ciphertext = session.seal_detached(payload)
        session.sent_tags[session.send_count & _TAG_MASK] = ciphertext[-_TAG:]
        peer.last_sent = now
        if peer.unanswered_since is None:
            peer.unanswered_since = now
        addr = peer.addr
        prefix = self._prefix(addr) if self._prefix is not None else b""
        buf, size = data_segments(
            session.remote_index, counter, ciphertext, self._max_datagram, prefix
        )
        out.append(SendSegments(addr, buf, size))  # one action and one buffer
        return out

    def seal_any(self, now: float, peer: Peer, session: Session, payload: bytes) -> list[Action]:
        """``payload`` of any size up to ``MAX_DATA_PAYLOAD`` on ``session``."""
        if len(payload) > self._one_datagram:
            return self.seal_large(now, peer, session, payload)
        return self.seal(now, peer, session, payload)

    def keepalive(self, now: float, peer: Peer) -> list[Action]:
        cur = peer.current
        if cur is None or not can_send(cur, now):
            return []
        self._stats.count(Tally.KEEPALIVE_SENT)
        return self.seal(now, peer, cur, b"")

    def enqueue(self, peer: Peer, payload: bytes) -> None:
        """Hold ``payload`` until a session exists (bounded: the oldest goes first)."""
        peer.queue.append(payload)
        while len(peer.queue) > C.MAX_QUEUED_PER_PEER:
            peer.queue.popleft()
            self._stats.count(Tally.QUEUE_OVERFLOW)

    def flush(self, now: float, peer: Peer, session: Session) -> list[Action]:
        out: list[Action] = []
        while peer.queue:
            out += self.seal_any(now, peer, session, peer.queue.popleft())
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
        peer.unanswered_since = None  # the peer just answered (RESP, or its CONFIRM)
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
            out += self.seal(now, peer, session, b"")
        out += self.flush(now, peer, session)
        if role is Role.INITIATOR:
            peer.acks_sent = 0
            peer.ack_at = now + C.ACK_RETRY_BASE
            key = ChannelTimer(self._ns, ChannelTimerKind.ACK, peer.addr)
            out.append(SetTimer(peer.ack_at, key))
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
            return now + C.TIMER_EPSILON >= s.created + C.REJECT_AFTER_TIME

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
        return len(self._reasm) + len(self._data_reasm)

    def on_data_fragment(self, now: float, addr: Addr, data: bytes) -> list[Action]:
        """A DATA_FRAGMENT: kept only for a session we hold (by its receiver index) and a
        counter that session's replay window would accept, so a stranger keeps nothing
        here and a replay costs nothing; once whole, the DATA is opened like any other
        (authenticated there, and only there)."""
        try:
            frag = decode_data_fragment(data)
        except DecodeError:
            return self._stats.drop(DropReason.BAD_FRAGMENT, addr)
        entry = self._sessions.get(frag.receiver_index)
        if entry is None:
            return self._stats.drop(DropReason.UNKNOWN_INDEX, addr)
        session = entry[1]
        if now - session.created >= _REJECT_AFTER_TIME:
            return self._stats.drop(DropReason.EXPIRED_SESSION, addr)
        if not session.fresh(frag.counter):
            return self._stats.drop(DropReason.REPLAY, addr)
        try:
            added = self._data_reasm.add(now, addr, frag)
        except DecodeError:
            return self._stats.drop(DropReason.BAD_FRAGMENT, addr)
        if added.refused:
            return self._stats.drop(DropReason.REASSEMBLY_FULL, addr)
        out: list[Action] = []
        if added.evicted:
            self._stats.count(Tally.REASSEMBLY_EVICTED, added.evicted)
        if added.duplicate:
            self._stats.count(Tally.DUPLICATE_FRAGMENT)
        if added.arm is not None:
            key = ChannelTimer(self._ns, ChannelTimerKind.DATA_REASSEMBLY, None)
            out.append(SetTimer(added.arm, key))
        if added.message is None:
            return out
        return out + self.on_data(now, addr, added.message)

    def whole_from_segments(
        self, now: float, data: bytes, size: int, offset: int = 0
    ) -> bytes | None:
        """The DATA message that the datagrams of ``size`` bytes laid back to back in
        ``data`` are, when they are every DATA_FRAGMENT of one message, in order, for a
        session we hold at a counter its window accepts (what a UDP GRO batch of one large
        payload usually is); None otherwise, and then the caller takes them one by one.
        Each fragment starts ``offset`` bytes into its segment (after a relay's header).
        Checks what ``on_data_fragment`` checks before it keeps anything, one column of
        header bytes at a time (a strided slice), so the work does not grow with the
        number of fragments; the AEAD in ``on_data`` authenticates the whole."""
        total = len(data)
        count = -(-total // size) if size > 0 else 0
        at = offset
        end = at + C.DATA_FRAGMENT_HEADER_SIZE
        if (
            count < 2
            or total - (count - 1) * size <= end
            or data[at : at + 4] != _HDR_DATA_FRAGMENT
        ):
            return None
        receiver, counter, _, declared, length = _DF_FIELDS.unpack_from(data, at + 4)
        if declared != count:
            return None
        # header 4 | receiver index 4 | counter 8 | index 1 | count 1 | length 2 | chunk:
        # all but the index the same in every fragment, and the index runs 0, 1, 2, ...
        idx = at + DATA_FRAGMENT_INDEX_AT
        if data[idx::size] != INDEX_BYTES[:count]:
            return None
        for k in (*range(at, idx), *range(idx + 1, end)):
            if data[k::size] != data[k : k + 1] * count:
                return None
        entry = self._sessions.get(receiver)
        if entry is None or now - entry[1].created >= _REJECT_AFTER_TIME:
            return None
        if not entry[1].fresh(counter):
            return None
        prefix = data_prefix(receiver) + counter.to_bytes(8, "little")
        view = memoryview(data)
        chunk = size - end
        whole = b"".join([prefix, *[view[o : o + chunk] for o in range(end, total, size)]])
        if len(whole) - len(prefix) != length + C.AEAD_TAG_SIZE:
            return None
        return whole

    def on_data_reassembly_timer(self, now: float) -> list[Action]:
        """Drop the partial payloads that lost a fragment; set the timer for the next."""
        gone, arm = self._data_reasm.expire(now)
        out: list[Action] = []
        for src in gone:
            out += self._stats.drop(DropReason.DATA_INCOMPLETE, src)
        if arm is not None:
            key = ChannelTimer(self._ns, ChannelTimerKind.DATA_REASSEMBLY, None)
            out.append(SetTimer(arm, key))
        return out

    def reassemble(
        self, now: float, addr: Addr, data: bytes
    ) -> tuple[list[Action], bytes | None, int]:
        """Take one FRAGMENT: the actions it causes, the whole message once complete, and
        its message id. Sources we hold a session with or wait on use the reassembler's
        protected pool. Another copy of a request we answered a moment ago (a retry: our
        answer was lost) is answered again from the answer we kept, as soon as the copy
        has brought as many bytes as that answer holds."""
        peer = self._table.by_addr.get(addr)
        known = peer is not None and peer.state is not PeerState.IDLE
        try:
            added = self._reasm.add(now, addr, data, known=known)
        except DecodeError:
            return self._stats.drop(DropReason.BAD_FRAGMENT, addr), None, 0
        if added.refused:
            return self._stats.drop(DropReason.REASSEMBLY_FULL, addr), None, 0
        message_id: int = FRAGMENT_MESSAGE_ID.unpack_from(data)[0]
        out: list[Action] = []
        if added.evicted:
            self._stats.count(Tally.REASSEMBLY_EVICTED, added.evicted)
        if added.duplicate:
            self._stats.count(Tally.DUPLICATE_FRAGMENT)
        if added.started is not None:
            key = ChannelTimer(self._ns, ChannelTimerKind.REASSEMBLY, addr, message_id)
            out.append(SetTimer(added.started, key))
        if added.nack_at is not None:
            key = ChannelTimer(self._ns, ChannelTimerKind.NACK, addr, message_id)
            out.append(SetTimer(added.nack_at, key))
        if added.echo_bytes:
            size = self._sent.answer_size(now, addr, message_id)
            if size is not None and added.echo_bytes >= size:
                again = self._sent.answer(now, addr, message_id)
                if again:
                    self._reasm.answered(now, addr, message_id)
                    self._stats.count(Tally.ANSWER_RESENT)
                    self._stats.count(Tally.FRAGMENTS_RESENT, len(again))
                    out += [Send(addr, d) for d in again]
        return out, added.message, message_id

    def on_reassembly_timer(self, now: float, addr: Addr, message_id: int) -> list[Action]:
        if self._reasm.expire(now, addr, message_id):
            return self._stats.drop(DropReason.REASSEMBLY_TIMEOUT, addr)
        return []

    def on_nack_timer(self, now: float, addr: Addr, message_id: int) -> list[Action]:
        """A partial's NACK timer: ask its sender for what is missing, if it is time."""
        peer = self._table.by_addr.get(addr)
        tick = self._reasm.nack_tick(now, addr, message_id, peer.rtt if peer else None)
        out: list[Action] = []
        if tick.nack:
            self._stats.count(Tally.NACK_SENT)
            out.append(Send(addr, encode(FragmentNack(message_id, tick.nack))))
        if tick.next is not None:
            key = ChannelTimer(self._ns, ChannelTimerKind.NACK, addr, message_id)
            out.append(SetTimer(tick.next, key))
        return out

    def last_progress_from(self, peer: Peer) -> float:
        """When ``peer`` last showed that a fragmented exchange with it is under way: a
        fragment of a message still being reassembled, or a NACK we resent for."""
        arrived = self._reasm.last_arrival(peer.addr)
        return peer.nack_heard_at if arrived is None else max(arrived, peer.nack_heard_at)

    def forget_answers(self, addr: Addr) -> None:
        """``addr`` confirmed a session with us: what we answered it is no longer needed."""
        self._sent.forget_answers(addr)

    def on_nack(self, now: float, addr: Addr, data: bytes) -> list[Action]:
        """FRAGMENT_NACK: resend the fragments it names, of a message we sent to ``addr``."""
        try:
            nack = decode_fragment_nack(data)
        except DecodeError:
            return self._stats.drop(DropReason.MALFORMED, addr)
        again = self._sent.resend(now, addr, nack.message_id, nack.missing)
        if again is None:
            return self._stats.drop(DropReason.UNKNOWN_MESSAGE, addr)
        if not again:
            return self._stats.drop(DropReason.RESEND_BUDGET, addr)
        self._stats.count(Tally.FRAGMENTS_RESENT, len(again))
        peer = self._table.by_addr.get(addr)
        if peer is not None:
            peer.nack_heard_at = now
        return [Send(addr, d) for d in again]
