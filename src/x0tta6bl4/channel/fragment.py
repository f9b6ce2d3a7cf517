"""Split handshake messages into FRAGMENTs and reassemble them with bounded memory.

INIT (about 2.4 KB, 9 KB with a certificate), RESP (2.3 KB) and CERT (about 7 KB) do not
fit a 1280-byte datagram. A message is cut into chunks of ``max_datagram - 12`` bytes,
each sent as ``FRAGMENT(message_id, index, count, total_length, chunk)``.

Fragments are unauthenticated, so reassembly state must not be something a stranger can
take from a real peer. Message ids are random (from the secret source), so nobody can
plant partials under a sender's next id. Partials live in two pools: *known* sources
(the caller says so: a peer we hold a session with or wait on) and *unknown* ones. Each
pool has its own bound and each source at most ``MAX_REASSEMBLIES_PER_SOURCE``. When a
bound is reached, a new partial may evict only the stalest partial of its own pool (or
source), the one that heard from its sender least recently, and only if that was at least
``REASSEMBLY_MIN_EVICT_AGE`` ago: a real message's fragments (and the repairs it asks for)
arrive within round trips, so a flood of spoofed first fragments can at worst make *new*
reassemblies wait (``Added.refused``), never take one that is arriving. No
partial holds more bytes than its declared ``total_length`` (at most
``MAX_MESSAGE_SIZE``), and each is forgotten after ``REASSEMBLY_TIMEOUT``: the caller sets
one timer per started reassembly and calls :meth:`Reassembler.expire` when it fires.

**Repair** (selective repeat). A lost fragment used to lose its message. Now a partial
that has heard nothing for ``NACK_QUIET`` asks its sender for what is missing
(``FRAGMENT_NACK``, a bitmap), and again, after twice the round trip it measured (backing
off), while fragments stay missing: at most ``MAX_NACKS_PER_MESSAGE`` times, and never
with more NACK bytes than the partial has received (no amplification towards a spoofed
source). The caller sets a second timer per partial for this and calls
:meth:`Reassembler.nack_tick`. The sender keeps what it sent in :class:`SentMessages` for
``SENT_MESSAGE_TTL`` and resends only the fragments asked for, at most
``MAX_RESENDS_PER_MESSAGE`` times. Retries reuse the message id, so old and new fragments
combine.

A completed message is remembered for ``REASSEMBLY_TIMEOUT``. Another copy of it is
reassembled as before (a replay is refused where it always was) but never NACKed for; it
*echoes* a request we may have answered: once such a copy, ``REPEAT_HOLDOFF`` after the
last, has brought as many bytes as our kept answer holds, the caller resends that answer
(the request was retried because the answer was lost) and reports it with
:meth:`Reassembler.answered`. So a retry is answered at once, and never with more bytes
than it brought.

**Payloads larger than a datagram** travel as ONE DATA message (one AEAD seal) cut into
``DATA_FRAGMENT``s (:func:`data_segments`), which name the session (the DATA's receiver
index) and the DATA's counter, and are reassembled by :class:`DataReassembler`, apart
from the messages above: the caller lets a fragment in only for a session it holds and
a counter its replay window would accept, so a stranger (who cannot see the random
index) keeps nothing, and a replayed fragment costs nothing. Data partials have their
own bounds (per session, in number, in declared bytes), evict only partials quiet for
``DATA_REASSEMBLY_MIN_EVICT_AGE`` (a lost fragment leaves one for good; a live one hears
every few milliseconds), and expire after ``DATA_REASSEMBLY_TIMEOUT`` on one timer for
them all. They are never NACKed or resent: a payload, like an IP packet, is best effort.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, cast

from x0tta6bl4.channel.constants import (
    AEAD_TAG_SIZE,
    DATA_FRAGMENT_HEADER_SIZE,
    DATA_REASSEMBLY_MIN_EVICT_AGE,
    DATA_REASSEMBLY_TIMEOUT,
    FRAGMENT_HEADER_SIZE,
    FRAGMENT_NACK_SIZE,
    MAX_COMPLETED,
    MAX_DATA_FRAGMENTS,
    MAX_DATA_PAYLOAD,
    MAX_DATA_REASSEMBLIES,
    MAX_DATA_REASSEMBLIES_PER_SESSION,
    MAX_DATA_REASSEMBLY_BYTES,
    MAX_FRAGMENTS,
    MAX_MESSAGE_SIZE,
    MAX_NACKS_PER_MESSAGE,
    MAX_REASSEMBLIES_KNOWN,
    MAX_REASSEMBLIES_PER_SOURCE,
    MAX_REASSEMBLIES_UNKNOWN,
    MAX_RESENDS_PER_MESSAGE,
    MAX_SENT_ANSWERS,
    MAX_SENT_OWN,
    MAX_SENT_PER_DEST,
    MIN_DATAGRAM,
    NACK_QUIET,
    NACK_RETRY_CAP,
    NACK_RETRY_FLAT,
    NACK_RETRY_MIN,
    NACK_RTT_DEFAULT,
    REASSEMBLY_MIN_EVICT_AGE,
    REASSEMBLY_TIMEOUT,
    REPEAT_HOLDOFF,
    SENT_MESSAGE_TTL,
    TIMER_EPSILON,
)
from x0tta6bl4.channel.wire import (
    DATA_FRAGMENT_FIELDS,
    HDR_DATA_FRAGMENT,
    DataFragment,
    Fragment,
    data_prefix,
    decode_fragment,
    encode_fragment,
)
from x0tta6bl4.errors import BadLength, DecodeError, MessageTooLarge
from x0tta6bl4.sansio import Addr


def split(message: bytes, message_id: int, max_datagram: int) -> list[bytes]:
    """``[message]`` if it fits in ``max_datagram``, else its FRAGMENT datagrams."""
    if max_datagram < MIN_DATAGRAM:
        raise ValueError(f"max_datagram must be at least {MIN_DATAGRAM}")
    size = len(message)
    if size <= max_datagram:
        return [message]
    chunk = max_datagram - FRAGMENT_HEADER_SIZE
    count = math.ceil(size / chunk)
    if size > MAX_MESSAGE_SIZE or count > MAX_FRAGMENTS:
        raise MessageTooLarge(size, min(MAX_MESSAGE_SIZE, MAX_FRAGMENTS * chunk))
    return [
        encode_fragment(Fragment(message_id, i, count, size, message[i * chunk : (i + 1) * chunk]))
        for i in range(count)
    ]


@dataclass(slots=True)
class _Partial:
    count: int
    total: int
    deadline: float
    chunks: list[bytes | None]
    known: bool
    started: float
    received: int = 0
    size: int = 0
    last: float = 0.0  # when a fragment last arrived
    nacks: int = 0
    nack_at: float | None = None  # when we last NACKed
    rtt: float | None = None  # from our first NACK to the next arrival
    # Another copy of a message completed lately: never NACKed; counts the bytes it has
    # brought (after ``echo_from``) towards resending our answer.
    echo: bool = False
    echo_from: float = 0.0
    echo_bytes: int = 0


@dataclass(slots=True)
class _Done:
    at: float  # completed, or last answered again
    expires: float


@dataclass(frozen=True, slots=True)
class Added:
    """What one fragment did: completed a ``message``, started a reassembly that
    expires at ``started`` (set a timer) and should be checked for missing fragments at
    ``nack_at`` (set another), evicted older ones, was a duplicate, or was refused because
    its pool or source is full of partials too young to evict. ``echo_bytes``: the
    fragment belongs to another copy of a message completed lately, which has brought
    this many bytes since it was last answered (see the module docstring)."""

    message: bytes | None = None
    started: float | None = None
    evicted: int = 0
    duplicate: bool = False
    refused: bool = False
    nack_at: float | None = None
    echo_bytes: int = 0


@dataclass(frozen=True, slots=True)
class Tick:
    """A partial's NACK timer: the ``nack`` bitmap to ask for (0: nothing now), and when
    to look again (``next``; None: the partial is gone)."""

    nack: int = 0
    next: float | None = None


class Reassembler:
    __slots__ = (
        "_done",
        "_max_known",
        "_max_per_source",
        "_max_unknown",
        "_pending",
        "_per_source",
        "_pool_size",
        "_timeout",
    )

    def __init__(
        self,
        *,
        timeout: float = REASSEMBLY_TIMEOUT,
        max_per_source: int = MAX_REASSEMBLIES_PER_SOURCE,
        max_unknown: int = MAX_REASSEMBLIES_UNKNOWN,
        max_known: int = MAX_REASSEMBLIES_KNOWN,
    ) -> None:
        self._timeout = timeout
        self._max_per_source = max_per_source
        self._max_unknown = max_unknown
        self._max_known = max_known
        # insertion order is age order: the first entry is the oldest
        self._pending: dict[tuple[Addr, int], _Partial] = {}
        self._per_source: dict[Addr, int] = {}
        self._pool_size = {False: 0, True: 0}
        # Messages completed lately, oldest first (bounded): their copies are echoes.
        self._done: OrderedDict[tuple[Addr, int], _Done] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pending)

    def buffered_bytes(self) -> int:
        return sum(p.size for p in self._pending.values())

    def held(self, *, known: bool) -> int:
        """Partials held now in one pool."""
        return self._pool_size[known]

    def add(self, now: float, src: Addr, data: bytes, *, known: bool = False) -> Added:
        """Take one FRAGMENT datagram from ``src`` (``known``: a source we hold a session
        with or wait on). Raises a ``DecodeError`` for a malformed fragment or one that
        contradicts its earlier siblings."""
        frag = decode_fragment(data)
        key = (src, frag.message_id)
        partial = self._pending.get(key)
        started: float | None = None
        nack_at: float | None = None
        evicted = 0
        if partial is None:
            room = self._make_room(now, src, known)
            if room is None:
                return Added(refused=True)
            evicted = room
            done = self._done.get(key)
            echo = done is not None and now < done.expires
            partial = _Partial(
                count=frag.count,
                total=frag.total_length,
                deadline=now + self._timeout,
                chunks=[None] * frag.count,
                known=known,
                started=now,
                last=now,
                echo=echo,
                echo_from=done.at + REPEAT_HOLDOFF if done is not None else 0.0,
            )
            self._pending[key] = partial
            self._per_source[src] = self._per_source.get(src, 0) + 1
            self._pool_size[known] += 1
            started = partial.deadline
            if not echo:
                nack_at = now + NACK_QUIET
        elif partial.count != frag.count or partial.total != frag.total_length:
            raise DecodeError("fragment disagrees with its message's count or length")
        echo_bytes = 0
        if partial.echo and now >= partial.echo_from:
            partial.echo_bytes += len(frag.chunk)  # what this copy brought, repeats too
            echo_bytes = partial.echo_bytes
        existing = partial.chunks[frag.index]
        if existing is not None:
            if existing != frag.chunk:
                raise DecodeError("fragment conflicts with an earlier copy")
            return Added(
                started=started,
                evicted=evicted,
                duplicate=True,
                nack_at=nack_at,
                echo_bytes=echo_bytes,
            )
        if partial.size + len(frag.chunk) > partial.total:
            raise BadLength("fragments exceed the declared message length")
        partial.chunks[frag.index] = frag.chunk
        partial.received += 1
        partial.size += len(frag.chunk)
        if partial.nack_at is not None and partial.rtt is None and partial.last <= partial.nack_at:
            partial.rtt = now - partial.nack_at  # the first arrival since our NACK
        partial.last = now
        if partial.received < partial.count:
            return Added(started=started, evicted=evicted, nack_at=nack_at, echo_bytes=echo_bytes)
        self._forget(key)
        if partial.size != partial.total:
            raise BadLength("reassembled message is shorter than declared")
        self._remember_done(now, key, partial.echo)
        message = b"".join(c for c in partial.chunks if c is not None)
        return Added(message=message, started=started, evicted=evicted, echo_bytes=echo_bytes)

    def answered(self, now: float, src: Addr, message_id: int) -> None:
        """The caller answered an echo of ``(src, message_id)`` again: count anew, and
        only after ``REPEAT_HOLDOFF`` (the rest of the same copy is on its way)."""
        key = (src, message_id)
        done = self._done.get(key)
        if done is not None:
            done.at = now
        p = self._pending.get(key)
        if p is not None:
            p.echo_bytes = 0
            p.echo_from = now + REPEAT_HOLDOFF

    def nack_tick(self, now: float, src: Addr, message_id: int, rtt: float | None = None) -> Tick:
        """The NACK timer of the partial ``(src, message_id)`` fired: the fragments to ask
        for now, if any, and when to look again. ``rtt`` is the caller's estimate of the
        round trip to ``src``, used until the partial has measured its own."""
        p = self._pending.get((src, message_id))
        if p is None or p.echo or now >= p.deadline:
            return Tick()  # gone, never NACKed, or about to expire
        if p.nack_at is None or p.last > p.nack_at:
            due = p.last + NACK_QUIET  # fragments came lately: wait until they stop
        else:  # nothing came since our NACK: ask again after a round trip or two
            due = p.nack_at + self._nack_backoff(p, rtt)
        if now + TIMER_EPSILON < due:
            return Tick(next=min(due, p.deadline))
        if p.nacks >= MAX_NACKS_PER_MESSAGE or (p.nacks + 1) * FRAGMENT_NACK_SIZE > p.size:
            return Tick()  # asked enough (or it brought too little to answer): let it expire
        p.nacks += 1
        p.nack_at = now
        missing = 0
        for i, c in enumerate(p.chunks):
            if c is None:
                missing |= 1 << i
        return Tick(nack=missing, next=min(now + self._nack_backoff(p, rtt), p.deadline))

    @staticmethod
    def _nack_backoff(p: _Partial, rtt: float | None) -> float:
        r = p.rtt if p.rtt is not None else rtt if rtt is not None else NACK_RTT_DEFAULT
        wait = max(NACK_RETRY_MIN, 2.0 * r) * 2.0 ** max(0, p.nacks - NACK_RETRY_FLAT)
        return min(NACK_RETRY_CAP, wait)

    def _remember_done(self, now: float, key: tuple[Addr, int], echo: bool) -> None:
        done = self._done
        old = done.pop(key, None)
        # a completed echo keeps the time of the last answer (its own holdoff)
        done[key] = _Done(old.at if echo and old is not None else now, now + self._timeout)
        while len(done) > MAX_COMPLETED:
            done.popitem(last=False)
        first = next(iter(done.values()))
        while now >= first.expires:  # oldest first: drop what expired
            done.popitem(last=False)
            first = next(iter(done.values()))

    def last_arrival(self, src: Addr) -> float | None:
        """When a fragment last came for a partial from ``src`` (echoes aside), if any."""
        if src not in self._per_source:
            return None
        times = [p.last for (a, _), p in self._pending.items() if a == src and not p.echo]
        return max(times, default=None)

    def expire(self, now: float, src: Addr, message_id: int) -> bool:
        """Drop the reassembly ``(src, message_id)`` if it is past its deadline."""
        key = (src, message_id)
        partial = self._pending.get(key)
        if partial is None or now < partial.deadline:
            return False
        self._forget(key)
        return True

    def _make_room(self, now: float, src: Addr, known: bool) -> int | None:
        """Evict what a new partial from ``src`` needs (returns how many), or None if
        that would take a partial younger than ``REASSEMBLY_MIN_EVICT_AGE``."""
        evicted = 0
        if self._per_source.get(src, 0) >= self._max_per_source:
            if not self._evict_oldest(now, lambda k, p: k[0] == src):
                return None
            evicted += 1
        limit = self._max_known if known else self._max_unknown
        if self._pool_size[known] >= limit:
            if not self._evict_oldest(now, lambda k, p: p.known == known):
                return None
            evicted += 1
        return evicted

    def _evict_oldest(
        self, now: float, eligible: Callable[[tuple[Addr, int], _Partial], bool]
    ) -> bool:
        """Evict the eligible partial that heard from its sender least recently, if that
        was at least ``REASSEMBLY_MIN_EVICT_AGE`` ago: one still arriving (or being
        repaired) is never taken, however long ago it started."""
        stalest: tuple[Addr, int] | None = None
        last = now
        for k, p in self._pending.items():
            if p.last < last and eligible(k, p):
                stalest, last = k, p.last
        if stalest is None or now - last < REASSEMBLY_MIN_EVICT_AGE:
            return False
        self._forget(stalest)
        return True

    def _forget(self, key: tuple[Addr, int]) -> None:
        partial = self._pending.pop(key)
        self._pool_size[partial.known] -= 1
        src = key[0]
        left = self._per_source[src] - 1
        if left:
            self._per_source[src] = left
        else:
            del self._per_source[src]


@dataclass(slots=True)
class _Sent:
    datagrams: list[bytes]
    size: int  # bytes of all its datagrams
    expires: float
    budget: int  # resends left
    answer: bool  # the answer to someone else's request (the answers pool)


class SentMessages:
    """Fragmented messages we sent lately, kept to resend the fragments a NACK asks for,
    and our answers to fragmented requests, to resend when a request comes again.

    Bounded: an entry lives ``SENT_MESSAGE_TTL``, answers at most
    ``MAX_RESENDS_PER_MESSAGE`` NACKs or repeats, and each pool (our own messages; answers
    to others' requests) and each destination holds a fixed number, the oldest going
    first. A message is only ever resent to the destination it went to: a NACK names our
    random message id, which nobody off the path can guess. Answers sit in their own
    pool, so a flood of requests cannot push out the messages of our own initiations."""

    __slots__ = ("_answer_for", "_by_dest", "_max", "_per_dest", "_pools")

    def __init__(
        self,
        *,
        max_own: int = MAX_SENT_OWN,
        max_answers: int = MAX_SENT_ANSWERS,
        max_per_dest: int = MAX_SENT_PER_DEST,
    ) -> None:
        # insertion order is age order in each pool
        self._pools: dict[bool, OrderedDict[tuple[Addr, int], _Sent]] = {
            False: OrderedDict(),
            True: OrderedDict(),
        }
        self._max = {False: max_own, True: max_answers}
        self._per_dest = max_per_dest
        # (pool, destination) -> its message ids in the pool, oldest first
        self._by_dest: dict[tuple[bool, Addr], list[int]] = {}
        # (destination, its request's message id) -> the message id of our answer
        self._answer_for: OrderedDict[tuple[Addr, int], int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pools[False]) + len(self._pools[True])

    def add(
        self,
        now: float,
        addr: Addr,
        message_id: int,
        datagrams: list[bytes],
        *,
        answer: bool = False,
        request_id: int | None = None,
    ) -> None:
        """Keep ``datagrams`` (the fragments of ``message_id``, sent to ``addr``); a
        message sent again under the same id replaces the kept one (and its budget).
        ``request_id``: the message id of the fragmented request this answers."""
        pool = self._pools[answer]
        key = (addr, message_id)
        if key in pool:
            self._drop(answer, key)
        self._expire(now, answer)
        ids = self._by_dest.get((answer, addr))
        if ids is not None and len(ids) >= self._per_dest:
            self._drop(answer, (addr, ids[0]))
        while len(pool) >= self._max[answer]:
            self._drop(answer, next(iter(pool)))
        size = sum(len(d) for d in datagrams)
        pool[key] = _Sent(datagrams, size, now + SENT_MESSAGE_TTL, MAX_RESENDS_PER_MESSAGE, answer)
        self._by_dest.setdefault((answer, addr), []).append(message_id)
        if request_id is not None:
            self._answer_for[(addr, request_id)] = message_id
            self._answer_for.move_to_end((addr, request_id))
            while len(self._answer_for) > self._max[True]:
                self._answer_for.popitem(last=False)

    def resend(self, now: float, addr: Addr, message_id: int, missing: int) -> list[bytes] | None:
        """The fragments of ``missing`` (a bitmap) of our message ``message_id`` to
        ``addr``; None if we keep no such message, [] if it was resent enough."""
        entry = self._get(now, addr, message_id)
        if entry is None:
            return None
        if entry.budget <= 0:
            return []
        entry.budget -= 1
        return [d for i, d in enumerate(entry.datagrams) if missing >> i & 1]

    def answer_size(self, now: float, addr: Addr, request_id: int) -> int | None:
        """The bytes of our kept answer to ``addr``'s request ``request_id``, if any."""
        entry = self._answer_entry(now, addr, request_id)
        return None if entry is None else entry.size

    def answer(self, now: float, addr: Addr, request_id: int) -> list[bytes] | None:
        """Every fragment of our kept answer to ``addr``'s request ``request_id``; None if
        there is none, [] if it was resent enough."""
        entry = self._answer_entry(now, addr, request_id)
        if entry is None:
            return None
        if entry.budget <= 0:
            return []
        entry.budget -= 1
        return list(entry.datagrams)

    def forget_answers(self, addr: Addr) -> None:
        """``addr`` proved it got what we answered (its CONFIRM): keep none of it."""
        for message_id in list(self._by_dest.get((True, addr), ())):
            self._drop(True, (addr, message_id))

    def _answer_entry(self, now: float, addr: Addr, request_id: int) -> _Sent | None:
        message_id = self._answer_for.get((addr, request_id))
        if message_id is None:
            return None
        entry = self._pools[True].get((addr, message_id))
        if entry is None or now >= entry.expires:
            return None
        return entry

    def _get(self, now: float, addr: Addr, message_id: int) -> _Sent | None:
        key = (addr, message_id)
        entry = self._pools[False].get(key) or self._pools[True].get(key)
        if entry is None or now >= entry.expires:
            return None
        return entry

    def _drop(self, answer: bool, key: tuple[Addr, int]) -> None:
        del self._pools[answer][key]
        ids = self._by_dest[(answer, key[0])]
        ids.remove(key[1])
        if not ids:
            del self._by_dest[(answer, key[0])]

    def _expire(self, now: float, answer: bool) -> None:
        pool = self._pools[answer]
        while pool:
            key, first = next(iter(pool.items()))
            if now < first.expires:
                break
            self._drop(answer, key)


# --- payloads larger than one datagram ---------------------------------------------------


DATA_FRAGMENT_INDEX_AT: Final = 16  # header 4 | receiver index 4 | counter 8 | index 1 | ...
INDEX_BYTES: Final = bytes(range(MAX_DATA_FRAGMENTS))
"""Fragment ``i``'s index byte at position ``i``: a message's index column, whole."""


def data_segments(
    receiver_index: int, counter: int, ciphertext: bytes, max_datagram: int, prefix: bytes = b""
) -> tuple[bytearray, int]:
    """The DATA_FRAGMENT datagrams of the DATA message ``data_prefix(receiver_index) |
    counter | ciphertext`` (at least two: the caller sends a message that fits whole),
    laid back to back in one buffer, each after ``prefix`` (the layer below's header, a
    relay's). Returns the buffer and the segment size: every segment is exactly that long
    but the last."""
    if max_datagram < MIN_DATAGRAM:
        raise ValueError(f"max_datagram must be at least {MIN_DATAGRAM}")
    size = len(ciphertext)
    chunk = max_datagram - DATA_FRAGMENT_HEADER_SIZE
    count = -(-size // chunk)
    length = size - AEAD_TAG_SIZE
    if length > MAX_DATA_PAYLOAD or count > MAX_DATA_FRAGMENTS:
        raise MessageTooLarge(length, MAX_DATA_PAYLOAD)
    if count < 2:
        raise ValueError("a DATA message that fits one datagram is sent whole")
    # Every fragment's header is the same but for its index byte: one header object
    # before every chunk, one join, then the index column in one strided assignment.
    head = (
        prefix
        + HDR_DATA_FRAGMENT
        + DATA_FRAGMENT_FIELDS.pack(receiver_index, counter, 0, count, length)
    )
    ct = memoryview(ciphertext)
    parts: list[bytes | memoryview] = [head, head] * count
    parts[1::2] = [ct[start : start + chunk] for start in range(0, size, chunk)]
    buf = bytearray().join(parts)
    seg = len(head) + chunk
    buf[len(prefix) + DATA_FRAGMENT_INDEX_AT :: seg] = INDEX_BYTES[:count]
    return buf, seg


@dataclass(slots=True)
class _DataPartial:
    chunks: list[bytes | None]
    size: int  # declared: the ciphertext's length
    deadline: float
    last: float  # when a fragment last arrived
    src: Addr  # where it last came from
    got: int = 0  # bytes received
    received: int = 0  # fragments received


@dataclass(frozen=True, slots=True)
class DataAdded:
    """What one DATA_FRAGMENT did: completed the DATA ``message`` (header rebuilt from the
    fragment's fields, ready to open), was a duplicate, evicted quiet partials, or was
    refused (no room but partials still arriving). ``arm``: set the reassembler's one
    timer for then (none was pending)."""

    message: bytes | None = None
    duplicate: bool = False
    evicted: int = 0
    refused: bool = False
    arm: float | None = None


class DataReassembler:
    """Partial DATA messages by (receiver index, counter), bounded per session, in number
    and in declared bytes; see the module docstring. The caller checks that the session
    exists and that its replay window accepts the counter before :meth:`add`, sets one
    timer whenever ``DataAdded.arm`` or :meth:`expire` asks, and calls :meth:`expire`
    when it fires."""

    __slots__ = (
        "_armed",
        "_bytes",
        "_max_bytes",
        "_max_partials",
        "_max_per_session",
        "_min_evict_age",
        "_pending",
        "_per_session",
        "_timeout",
    )

    def __init__(
        self,
        *,
        timeout: float = DATA_REASSEMBLY_TIMEOUT,
        max_per_session: int = MAX_DATA_REASSEMBLIES_PER_SESSION,
        max_partials: int = MAX_DATA_REASSEMBLIES,
        max_bytes: int = MAX_DATA_REASSEMBLY_BYTES,
        min_evict_age: float = DATA_REASSEMBLY_MIN_EVICT_AGE,
    ) -> None:
        self._timeout = timeout
        self._max_per_session = max_per_session
        self._max_partials = max_partials
        self._max_bytes = max_bytes
        self._min_evict_age = min_evict_age
        # insertion order is deadline order (one timeout for all): the first ends first
        self._pending: dict[tuple[int, int], _DataPartial] = {}
        self._per_session: dict[int, int] = {}
        self._bytes = 0  # declared sizes of the partials held
        self._armed: float | None = None  # the timer pending, if any

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def declared_bytes(self) -> int:
        """The declared sizes of the partials held (what they may grow to)."""
        return self._bytes

    def add(self, now: float, src: Addr, frag: DataFragment) -> DataAdded:
        """Take one DATA_FRAGMENT from ``src``. Raises a ``DecodeError`` for one that
        contradicts its siblings (the partial stays: the other copy may be the forgery)."""
        index = frag.receiver_index
        key = (index, frag.counter)
        partial = self._pending.get(key)
        size = frag.length + AEAD_TAG_SIZE
        arm: float | None = None
        evicted = 0
        if partial is None:
            room = self._make_room(now, index, size)
            if room is None:
                return DataAdded(refused=True)
            evicted = room
            partial = _DataPartial([None] * frag.count, size, now + self._timeout, now, src)
            self._pending[key] = partial
            self._per_session[index] = self._per_session.get(index, 0) + 1
            self._bytes += size
            if self._armed is None:
                arm = self._armed = partial.deadline
        elif len(partial.chunks) != frag.count or partial.size != size:
            raise DecodeError("data fragment disagrees with its message's count or length")
        chunk = frag.chunk
        existing = partial.chunks[frag.index]
        if existing is not None:
            if existing != chunk:
                raise DecodeError("data fragment conflicts with an earlier copy")
            return DataAdded(duplicate=True, evicted=evicted, arm=arm)
        if partial.got + len(chunk) > size:
            raise BadLength("data fragments exceed the declared payload length")
        partial.chunks[frag.index] = chunk
        partial.got += len(chunk)
        partial.received += 1
        partial.last = now
        partial.src = src
        if partial.received < len(partial.chunks):
            return DataAdded(evicted=evicted, arm=arm)
        self._forget(key)
        if partial.got != size:
            raise BadLength("reassembled payload is shorter than declared")
        head = data_prefix(index) + frag.counter.to_bytes(8, "little")
        whole = b"".join((head, *cast("list[bytes]", partial.chunks)))  # all arrived
        return DataAdded(message=whole, evicted=evicted, arm=arm)

    def expire(self, now: float) -> tuple[list[Addr], float | None]:
        """The timer fired: drop the partials past their deadline (returns where each
        last came from) and say when to fire next (None: nothing is held)."""
        gone: list[Addr] = []
        pending = self._pending
        while pending:
            key, first = next(iter(pending.items()))
            if now + TIMER_EPSILON < first.deadline:
                break
            self._forget(key)
            gone.append(first.src)
        self._armed = next(iter(pending.values())).deadline if pending else None
        return gone, self._armed

    def _make_room(self, now: float, index: int, size: int) -> int | None:
        """Evict what a new partial of session ``index`` with ``size`` declared bytes
        needs (returns how many), or None if that would take a partial still arriving."""
        evicted = 0
        if self._per_session.get(index, 0) >= self._max_per_session:
            if not self._evict_quietest(now, index):
                return None
            evicted += 1
        while len(self._pending) >= self._max_partials or self._bytes + size > self._max_bytes:
            if not self._evict_quietest(now, None):
                return None
            evicted += 1
        return evicted

    def _evict_quietest(self, now: float, index: int | None) -> bool:
        """Evict the partial (of session ``index``, or of any) that heard from its sender
        least recently, if that was at least ``min_evict_age`` ago."""
        quietest: tuple[int, int] | None = None
        last = now
        for k, p in self._pending.items():
            if p.last < last and (index is None or k[0] == index):
                quietest, last = k, p.last
        if quietest is None or now - last < self._min_evict_age:
            return False
        self._forget(quietest)
        return True

    def _forget(self, key: tuple[int, int]) -> None:
        partial = self._pending.pop(key)
        self._bytes -= partial.size
        index = key[0]
        left = self._per_session[index] - 1
        if left:
            self._per_session[index] = left
        else:
            del self._per_session[index]
