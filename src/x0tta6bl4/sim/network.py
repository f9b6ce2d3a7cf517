"""The in-memory network: links with latency, jitter, loss, capacity and MTU; partitions;
link flaps; a per-node tamper hook.

A link is undirected (one up/down state) but each direction has its own parameters,
FIFO and random stream. A packet from ``a`` to ``b`` is checked in this order: link
exists, link up, ``b`` alive, same partition group, size within MTU, room in the
transmit queue; then it is serialized (if capacity is finite), may be lost on the wire,
and arrives after ``latency + U(0, jitter)``. Jitter is drawn per packet, so packets may
overtake each other by at most the jitter. A packet still in flight when its link goes
down, its destination crashes or a partition separates the two ends is dropped on
arrival.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from heapq import heappush
from typing import TYPE_CHECKING, Any, Final

from x0tta6bl4.errors import X0tError

from .trace import GLOBAL

if TYPE_CHECKING:
    from .engine import Simulator, _Node

# Drop reasons, as plain strings: they key counters and appear in the trace.
LOSS: Final = "loss"
LINK_DOWN: Final = "link_down"
PARTITION: Final = "partition"
QUEUE_OVERFLOW: Final = "queue_overflow"
CRASHED: Final = "crashed"
NO_LINK: Final = "no_link"
MTU: Final = "mtu"
DROP_REASONS: Final = (LOSS, LINK_DOWN, PARTITION, QUEUE_OVERFLOW, CRASHED, NO_LINK, MTU)

# Heap event kind for a datagram arrival; the engine owns the other kinds.
ARRIVE: Final = 0

Tamper = Callable[[str, bytes], bytes]
"""``fn(dst, data) -> data``: rewrites every datagram a node sends."""


class SimError(X0tError, ValueError):
    """The simulator was asked for something impossible (unknown node, bad parameter)."""


def derive_rng(seed: int, *labels: str) -> random.Random:
    """An independent, reproducible stream for ``(seed, labels)``.

    sha256 rather than ``hash()``: string hashing is salted per process.
    """
    h = hashlib.sha256(repr((seed, *labels)).encode()).digest()
    return random.Random(int.from_bytes(h[:16], "big"))


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """Parameters of one link direction.

    ``capacity`` is bytes/s (``inf``: no serialization delay); ``queue`` is the transmit
    queue limit in bytes when capacity is finite; ``mtu`` is the largest datagram in bytes.
    """

    latency: float = 0.001
    jitter: float = 0.0
    loss: float = 0.0
    capacity: float = math.inf
    mtu: int = 1500
    queue: int = 64 * 1024

    def __post_init__(self) -> None:
        if not (math.isfinite(self.latency) and self.latency >= 0):
            raise SimError(f"latency must be a finite number >= 0, got {self.latency!r}")
        if not (math.isfinite(self.jitter) and self.jitter >= 0):
            raise SimError(f"jitter must be a finite number >= 0, got {self.jitter!r}")
        if not 0.0 <= self.loss <= 1.0:
            raise SimError(f"loss must be a probability in [0, 1], got {self.loss!r}")
        if not self.capacity > 0:
            raise SimError(
                f"capacity must be > 0 bytes/s (inf for unlimited), got {self.capacity!r}"
            )
        if not (isinstance(self.mtu, int) and self.mtu > 0):
            raise SimError(f"mtu must be a positive int, got {self.mtu!r}")
        if not (isinstance(self.queue, int) and self.queue > 0):
            raise SimError(f"queue must be a positive int of bytes, got {self.queue!r}")


class Link:
    """One direction ``src -> dst`` of a link, with its live state."""

    __slots__ = (
        "_cap",
        "_qlim",
        "busy_until",
        "dst",
        "epoch",
        "jitter",
        "latency",
        "loss",
        "mtu",
        "rng",
        "spec",
        "src",
        "up",
    )

    def __init__(self, src: str, dst: str, spec: LinkSpec, rng: random.Random) -> None:
        self.src = src
        self.dst = dst
        self.rng = rng
        self.up = True
        # Bumped on every down transition; in-flight packets carry the epoch they left
        # in, so a packet that was on the wire when the link failed is dropped on arrival.
        self.epoch = 0
        self.busy_until = 0.0
        self.set_spec(spec)

    def set_spec(self, spec: LinkSpec) -> None:
        # Flattened copies: the send path reads plain slots, not a dataclass chain.
        self.spec = spec
        self.latency = spec.latency
        self.jitter = spec.jitter
        self.loss = spec.loss
        self.mtu = spec.mtu
        self._cap = 0.0 if math.isinf(spec.capacity) else spec.capacity
        # Tolerance so float error in the backlog estimate cannot tail-drop a packet
        # that exactly fills the queue.
        self._qlim = spec.queue + 1e-6

    def backlog(self, now: float) -> float:
        """Bytes queued or being serialized at ``now``."""
        return max(0.0, self.busy_until - now) * self._cap

    def __repr__(self) -> str:
        return f"Link({self.src}->{self.dst}, up={self.up}, {self.spec})"


class Network:
    """Links, partitions and tamper hooks of one ``Simulator`` (reach it as ``sim.net``)."""

    def __init__(self, sim: Simulator) -> None:
        self._sim = sim
        self._heap = sim._heap
        self._next = sim._count.__next__
        self._out: dict[str, dict[str, Link]] = {}
        # Canonical (first-added) order of each undirected pair, so records name it one way.
        self._pairs: dict[tuple[str, str], tuple[Link, Link]] = {}
        self._groups: dict[str, int] | None = None
        self._tamper: dict[str, Tamper] = {}

    # --- topology -------------------------------------------------------------

    def add_link(
        self, a: str, b: str, spec: LinkSpec | None = None, *, reverse: LinkSpec | None = None
    ) -> None:
        """Connect ``a`` and ``b``; ``reverse`` gives the ``b -> a`` direction its own spec."""
        nodes = self._sim._nodes
        for n in (a, b):
            if n not in nodes:
                raise SimError(f"add_link({a!r}, {b!r}): unknown node {n!r}")
        if a == b:
            raise SimError(f"add_link: a node cannot link to itself ({a!r})")
        if self._find(a, b) is not None:
            raise SimError(f"add_link: link {a!r}-{b!r} already exists")
        fwd_spec = spec if spec is not None else LinkSpec()
        rev_spec = reverse if reverse is not None else fwd_spec
        seed = self._sim.seed
        fwd = Link(a, b, fwd_spec, derive_rng(seed, "link", a, b))
        rev = Link(b, a, rev_spec, derive_rng(seed, "link", b, a))
        self._out.setdefault(a, {})[b] = fwd
        self._out.setdefault(b, {})[a] = rev
        self._pairs[(a, b)] = (fwd, rev)

    def _find(self, a: str, b: str) -> tuple[tuple[str, str], tuple[Link, Link]] | None:
        links = self._pairs.get((a, b))
        if links is not None:
            return (a, b), links
        links = self._pairs.get((b, a))
        if links is not None:
            return (b, a), links
        return None

    def _pair(self, a: str, b: str) -> tuple[tuple[str, str], tuple[Link, Link]]:
        found = self._find(a, b)
        if found is None:
            raise SimError(f"no link between {a!r} and {b!r}")
        return found

    def link(self, a: str, b: str) -> Link:
        """The ``a -> b`` direction."""
        self._pair(a, b)
        return self._out[a][b]

    def has_link(self, a: str, b: str) -> bool:
        return self._find(a, b) is not None

    def links(self) -> list[tuple[str, str]]:
        """Every undirected link, in the order added."""
        return list(self._pairs)

    def neighbours(self, name: str) -> list[str]:
        return list(self._out.get(name, {}))

    # --- faults ---------------------------------------------------------------

    def set_up(self, a: str, b: str, up: bool) -> None:
        """Bring the ``a``-``b`` link up or down (both directions); no-op if unchanged."""
        (ca, cb), (fwd, rev) = self._pair(a, b)
        if fwd.up == up:
            return
        now = self._sim.now
        for d in (fwd, rev):
            d.up = up
            if not up:
                d.epoch += 1
                d.busy_until = now  # the transmit queue is lost with the link
        self._sim._record(now, ca, "sim.link_up" if up else "sim.link_down", {"peer": cb})

    def is_up(self, a: str, b: str) -> bool:
        return self._pair(a, b)[1][0].up

    def degrade(
        self,
        a: str,
        b: str,
        *,
        latency: float | None = None,
        jitter: float | None = None,
        loss: float | None = None,
        capacity: float | None = None,
        mtu: int | None = None,
        queue: int | None = None,
        both: bool = True,
    ) -> None:
        """Change parameters of ``a -> b`` (and ``b -> a`` if ``both``); ``None`` keeps a value."""
        changes: dict[str, Any] = {
            k: v
            for k, v in (
                ("latency", latency),
                ("jitter", jitter),
                ("loss", loss),
                ("capacity", capacity),
                ("mtu", mtu),
                ("queue", queue),
            )
            if v is not None
        }
        self._pair(a, b)
        dirs = [self._out[a][b]]
        if both:
            dirs.append(self._out[b][a])
        for d in dirs:
            d.set_spec(dataclasses.replace(d.spec, **changes))
        self._sim._record(self._sim.now, a, "sim.degrade", {"peer": b, "both": both, **changes})

    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        """Only nodes in the same group can talk; nodes in no group form one more group.

        Replaces any earlier partition.
        """
        nodes = self._sim._nodes
        gmap: dict[str, int] = {}
        listed: list[list[str]] = []
        for i, g in enumerate(groups):
            members = sorted(set(g))
            for n in members:
                if n not in nodes:
                    raise SimError(f"partition: unknown node {n!r}")
                if n in gmap:
                    raise SimError(f"partition: node {n!r} is in two groups")
                gmap[n] = i
            listed.append(members)
        self._groups = gmap
        self._sim._record(self._sim.now, GLOBAL, "sim.partition", {"groups": sorted(listed)})

    def heal(self) -> None:
        """Remove the partition (no-op if there is none)."""
        if self._groups is None:
            return
        self._groups = None
        self._sim._record(self._sim.now, GLOBAL, "sim.heal", {})

    def partitioned(self, a: str, b: str) -> bool:
        g = self._groups
        return g is not None and g.get(a, -1) != g.get(b, -1)

    def flap(
        self,
        a: str,
        b: str,
        *,
        period: float,
        until: float,
        start: float | None = None,
        down_for: float | None = None,
    ) -> None:
        """Take the link down at ``start`` (default now) and every ``period`` after, each
        time for ``down_for`` (default half the period), never past ``until``, where it is
        left up."""
        self._pair(a, b)
        sim = self._sim
        t0 = sim.now if start is None else start
        down = period / 2 if down_for is None else down_for
        if not (period > 0 and 0 < down <= period):
            raise SimError(
                f"flap: need period > 0 and 0 < down_for <= period, got {period}, {down}"
            )
        if t0 < sim.now or until < t0:
            raise SimError(f"flap: need now <= start <= until, got {t0}, {until}")

        def go_down(_: Simulator) -> None:
            self.set_up(a, b, False)

        def go_up(_: Simulator) -> None:
            self.set_up(a, b, True)

        # Scheduled up front (bounded by until/period): a flap is a fixed script, not a
        # process that could be lost if another fault touches the link.
        k = 0
        while (t := t0 + k * period) < until:
            sim.schedule(t, go_down)
            sim.schedule(min(t + down, until), go_up)
            k += 1

    def set_tamper(self, node: str, fn: Tamper | None) -> None:
        """Rewrite every datagram ``node`` sends with ``fn(dst, data)``; ``None`` removes it."""
        if node not in self._sim._nodes:
            raise SimError(f"set_tamper: unknown node {node!r}")
        if fn is None:
            self._tamper.pop(node, None)
        else:
            self._tamper[node] = fn

    # --- the send path ----------------------------------------------------------

    def transmit(self, node: _Node, now: float, dst: Any, data: bytes) -> None:
        """Put one datagram from ``node`` on the wire (or drop and count it)."""
        src = node.name
        if self._tamper:
            fn = self._tamper.get(src)
            if fn is not None:
                data = fn(dst, data)
        size = len(data)
        st = node.stats
        st.sent_packets += 1
        st.sent_bytes += size
        out = self._out.get(src)
        link = out.get(dst) if out is not None else None
        if link is None:
            self._sim._drop(now, src, dst, size, NO_LINK)
            return
        if not link.up:
            self._sim._drop(now, src, dst, size, LINK_DOWN)
            return
        dnode = self._sim._nodes[dst]
        if not dnode.alive:
            self._sim._drop(now, src, dst, size, CRASHED)
            return
        g = self._groups
        if g is not None and g.get(src, -1) != g.get(dst, -1):
            self._sim._drop(now, src, dst, size, PARTITION)
            return
        if size > link.mtu:
            self._sim._drop(now, src, dst, size, MTU)
            return
        t = now
        cap = link._cap
        if cap:
            busy = link.busy_until
            if busy > now:
                if (busy - now) * cap + size > link._qlim:
                    self._sim._drop(now, src, dst, size, QUEUE_OVERFLOW)
                    return
                t = busy
            t += size / cap
            link.busy_until = t
        # Wire loss after serialization: a lost packet still used the transmitter.
        if link.loss and link.rng.random() < link.loss:
            self._sim._drop(now, src, dst, size, LOSS)
            return
        t += link.latency
        if link.jitter:
            t += link.rng.random() * link.jitter
        heappush(self._heap, (t, self._next(), ARRIVE, dnode, src, data, link, link.epoch))
