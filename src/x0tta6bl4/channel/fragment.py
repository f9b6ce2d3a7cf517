"""Split handshake messages into FRAGMENTs and reassemble them with bounded memory.

INIT (about 2.4 KB, 9 KB with a certificate), RESP (2.3 KB) and CERT (about 7 KB) do not
fit a 1280-byte datagram. A message is cut into chunks of ``max_datagram - 12`` bytes,
each sent as ``FRAGMENT(message_id, index, count, total_length, chunk)``.

Fragments are unauthenticated, so reassembly state must not be something a stranger can
take from a real peer. Message ids are random (from the secret source), so nobody can
plant partials under a sender's next id. Partials live in two pools: *known* sources
(the caller says so: a peer we hold a session with or wait on) and *unknown* ones. Each
pool has its own bound and each source at most ``MAX_REASSEMBLIES_PER_SOURCE``. When a
bound is reached, a new partial may evict only the oldest partial of its own pool (or
source), and only one that is at least ``REASSEMBLY_MIN_EVICT_AGE`` old: a real message's
fragments arrive within a round trip, so a flood of spoofed first fragments can at worst
make *new* reassemblies wait (``Added.refused``), never take one that is arriving. No
partial holds more bytes than its declared ``total_length`` (at most
``MAX_MESSAGE_SIZE``), and each is forgotten after ``REASSEMBLY_TIMEOUT``: the caller sets
one timer per started reassembly and calls :meth:`Reassembler.expire` when it fires.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from x0tta6bl4.channel.constants import (
    FRAGMENT_HEADER_SIZE,
    MAX_FRAGMENTS,
    MAX_MESSAGE_SIZE,
    MAX_REASSEMBLIES_KNOWN,
    MAX_REASSEMBLIES_PER_SOURCE,
    MAX_REASSEMBLIES_UNKNOWN,
    MIN_DATAGRAM,
    REASSEMBLY_MIN_EVICT_AGE,
    REASSEMBLY_TIMEOUT,
)
from x0tta6bl4.channel.wire import Fragment, decode_fragment, encode_fragment
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


@dataclass(frozen=True, slots=True)
class Added:
    """What one fragment did: completed a ``message``, started a reassembly that
    expires at ``started`` (set a timer), evicted older ones, was a duplicate, or was
    refused because its pool or source is full of partials too young to evict."""

    message: bytes | None = None
    started: float | None = None
    evicted: int = 0
    duplicate: bool = False
    refused: bool = False


class Reassembler:
    __slots__ = (
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
        evicted = 0
        if partial is None:
            room = self._make_room(now, src, known)
            if room is None:
                return Added(refused=True)
            evicted = room
            partial = _Partial(
                count=frag.count,
                total=frag.total_length,
                deadline=now + self._timeout,
                chunks=[None] * frag.count,
                known=known,
                started=now,
            )
            self._pending[key] = partial
            self._per_source[src] = self._per_source.get(src, 0) + 1
            self._pool_size[known] += 1
            started = partial.deadline
        elif partial.count != frag.count or partial.total != frag.total_length:
            raise DecodeError("fragment disagrees with its message's count or length")
        existing = partial.chunks[frag.index]
        if existing is not None:
            if existing != frag.chunk:
                raise DecodeError("fragment conflicts with an earlier copy")
            return Added(started=started, evicted=evicted, duplicate=True)
        if partial.size + len(frag.chunk) > partial.total:
            raise BadLength("fragments exceed the declared message length")
        partial.chunks[frag.index] = frag.chunk
        partial.received += 1
        partial.size += len(frag.chunk)
        if partial.received < partial.count:
            return Added(started=started, evicted=evicted)
        self._forget(key)
        if partial.size != partial.total:
            raise BadLength("reassembled message is shorter than declared")
        message = b"".join(c for c in partial.chunks if c is not None)
        return Added(message=message, started=started, evicted=evicted)

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
        for k, p in self._pending.items():  # insertion order is age order
            if eligible(k, p):
                if now - p.started < REASSEMBLY_MIN_EVICT_AGE:
                    return False
                self._forget(k)
                return True
        return False

    def _forget(self, key: tuple[Addr, int]) -> None:
        partial = self._pending.pop(key)
        self._pool_size[partial.known] -= 1
        src = key[0]
        left = self._per_source[src] - 1
        if left:
            self._per_source[src] = left
        else:
            del self._per_source[src]
