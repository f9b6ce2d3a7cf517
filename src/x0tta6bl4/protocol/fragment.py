"""Split handshake messages into FRAGMENTs and reassemble them with bounded memory.

INIT (about 2.4 KB, 9 KB with a certificate), RESP (2.3 KB) and CERT (about 7 KB) do not
fit a 1280-byte datagram. A message is cut into chunks of ``max_datagram - 12`` bytes,
each sent as ``FRAGMENT(message_id, index, count, total_length, chunk)``.

The receiver holds at most ``MAX_REASSEMBLIES_PER_SOURCE`` partial messages per source
address and ``MAX_REASSEMBLIES_TOTAL`` overall (the oldest is evicted), never more bytes
than a message's declared ``total_length`` (at most ``MAX_MESSAGE_SIZE``), and forgets a
partial message after ``REASSEMBLY_TIMEOUT``. The caller sets one timer per started
reassembly and calls :meth:`Reassembler.expire` when it fires.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from x0tta6bl4.errors import BadLength, DecodeError, MessageTooLarge
from x0tta6bl4.protocol.constants import (
    FRAGMENT_HEADER_SIZE,
    MAX_FRAGMENTS,
    MAX_MESSAGE_SIZE,
    MAX_REASSEMBLIES_PER_SOURCE,
    MAX_REASSEMBLIES_TOTAL,
    MIN_DATAGRAM,
    REASSEMBLY_TIMEOUT,
)
from x0tta6bl4.protocol.events import Addr
from x0tta6bl4.protocol.wire import Fragment, decode_fragment, encode_fragment


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
    received: int = 0
    size: int = 0


@dataclass(frozen=True, slots=True)
class Added:
    """What one fragment did: completed a ``message``, started a reassembly that
    expires at ``started`` (set a timer), evicted older ones, or was a duplicate."""

    message: bytes | None = None
    started: float | None = None
    evicted: int = 0
    duplicate: bool = False


class Reassembler:
    __slots__ = ("_max_per_source", "_max_total", "_pending", "_per_source", "_timeout")

    def __init__(
        self,
        *,
        timeout: float = REASSEMBLY_TIMEOUT,
        max_per_source: int = MAX_REASSEMBLIES_PER_SOURCE,
        max_total: int = MAX_REASSEMBLIES_TOTAL,
    ) -> None:
        self._timeout = timeout
        self._max_per_source = max_per_source
        self._max_total = max_total
        # insertion order is age order: the first entry is the oldest
        self._pending: dict[tuple[Addr, int], _Partial] = {}
        self._per_source: dict[Addr, int] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def buffered_bytes(self) -> int:
        return sum(p.size for p in self._pending.values())

    def add(self, now: float, src: Addr, data: bytes) -> Added:
        """Take one FRAGMENT datagram from ``src``. Raises a ``DecodeError`` for a
        malformed fragment or one that contradicts its earlier siblings."""
        frag = decode_fragment(data)
        key = (src, frag.message_id)
        partial = self._pending.get(key)
        started: float | None = None
        evicted = 0
        if partial is None:
            evicted = self._make_room(src)
            partial = _Partial(
                count=frag.count,
                total=frag.total_length,
                deadline=now + self._timeout,
                chunks=[None] * frag.count,
            )
            self._pending[key] = partial
            self._per_source[src] = self._per_source.get(src, 0) + 1
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

    def _make_room(self, src: Addr) -> int:
        evicted = 0
        if self._per_source.get(src, 0) >= self._max_per_source:
            oldest = next(k for k in self._pending if k[0] == src)
            self._forget(oldest)
            evicted += 1
        if len(self._pending) >= self._max_total:
            self._forget(next(iter(self._pending)))
            evicted += 1
        return evicted

    def _forget(self, key: tuple[Addr, int]) -> None:
        del self._pending[key]
        src = key[0]
        left = self._per_source[src] - 1
        if left:
            self._per_source[src] = left
        else:
            del self._per_source[src]
