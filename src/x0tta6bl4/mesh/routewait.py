"""Packets waiting for a route: what a node would have dropped as ``no_route``.

When a relay dies, the nodes behind it lose their route for as long as routing takes to
find another: a few hundred milliseconds, in which every packet that reaches the end of
the broken route used to be dropped. The first packet to get through afterwards was then
a new one from the source, which still had the whole path ahead of it. Held here instead,
the packets of that gap leave the moment a route appears, from as far along as they got,
and several of them at once: on a long lossy path one of them is likelier to arrive than
the single next one.

Bounded in every way a sender could push: packets are held only for a destination routing
knows (so made-up ids hold nothing), for :data:`ROUTE_WAIT` seconds, at most
:data:`PER_DESTINATION` packets for one destination and :data:`MAX_BYTES` in all. A
packet that does not fit is dropped, as it was before; nothing already held is evicted.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Final

__all__ = ["MAX_BYTES", "PER_DESTINATION", "ROUTE_WAIT", "Held", "RouteWait"]

ROUTE_WAIT: Final = 1.0
"""Seconds a packet may wait for a route: longer than routing takes to repair a relay
kill at 2 % loss (under 1 s), short enough that what leaves is still worth delivering."""
PER_DESTINATION: Final = 64
"""Packets held for one destination (a second of 64 pps; a faster flow keeps its first
64, which carry the gap's start)."""
MAX_BYTES: Final = 1 << 20
"""Bytes held for all destinations together."""


@dataclass(frozen=True, slots=True)
class Held:
    """What was held, as it would have left: ``data`` is one datagram, or ``count``
    datagrams of ``size`` bytes back to back (``size`` 0 for one); ``framed`` says it is a
    mesh frame to seal into a link session, not a RELAY datagram sent as it is."""

    until: float
    data: bytes
    size: int
    count: int
    framed: bool


class RouteWait:
    """Per destination, packets in arrival order until a route appears or they expire."""

    __slots__ = ("_by_dst", "_bytes", "_packets")

    def __init__(self) -> None:
        self._by_dst: dict[Hashable, deque[Held]] = {}
        self._packets: dict[Hashable, int] = {}
        self._bytes = 0

    def __bool__(self) -> bool:
        return bool(self._by_dst)

    @property
    def held_bytes(self) -> int:
        return self._bytes

    def held(self, dst: Hashable) -> int:
        """Packets held for ``dst``."""
        return self._packets.get(dst, 0)

    def hold(
        self,
        now: float,
        dst: Hashable,
        data: bytes,
        *,
        size: int = 0,
        count: int = 1,
        framed: bool = False,
    ) -> bool:
        """Hold ``data`` for ``dst`` if it fits; False (and nothing held) if it does not."""
        if count < 1 or (size and len(data) > size * count):
            raise ValueError(f"{len(data)} bytes are not {count} datagrams of {size}")
        self._expire(now, dst)
        if self._packets.get(dst, 0) + count > PER_DESTINATION:
            return False
        if self._bytes + len(data) > MAX_BYTES:
            return False
        self._by_dst.setdefault(dst, deque()).append(
            Held(now + ROUTE_WAIT, data, size, count, framed)
        )
        self._packets[dst] = self._packets.get(dst, 0) + count
        self._bytes += len(data)
        return True

    def destinations(self) -> list[Hashable]:
        return list(self._by_dst)

    def take(self, now: float, dst: Hashable) -> tuple[list[Held], int]:
        """Everything held for ``dst`` that is still in time, oldest first, and the count
        of packets that were not (both leave the queue)."""
        expired = self._expire(now, dst)
        q = self._by_dst.pop(dst, None)
        if q is None:
            return [], expired
        self._packets.pop(dst, None)
        self._bytes -= sum(len(h.data) for h in q)
        return list(q), expired

    def expire(self, now: float) -> int:
        """Drop everything past its time; the number of packets dropped."""
        return sum(self._expire(now, dst) for dst in list(self._by_dst))

    def next_expiry(self) -> float | None:
        return min((q[0].until for q in self._by_dst.values()), default=None)

    def _expire(self, now: float, dst: Hashable) -> int:
        q = self._by_dst.get(dst)
        if q is None:
            return 0
        dropped = 0
        while q and q[0].until <= now:
            h = q.popleft()
            dropped += h.count
            self._bytes -= len(h.data)
        if dropped:
            left = self._packets[dst] - dropped
            if q:
                self._packets[dst] = left
            else:
                del self._by_dst[dst]
                del self._packets[dst]
        return dropped
