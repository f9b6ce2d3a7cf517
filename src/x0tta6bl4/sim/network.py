"""The in-memory network: links with latency, jitter, loss, duplication, capacity and MTU;
partitions; link flaps; a per-node tamper hook and an arrival intercept.

A link is undirected (one up/down state) but each direction has its own parameters,
FIFO and random stream. A packet from ``a`` to ``b`` is checked in this order: link
exists, link up, ``b`` alive, same partition group, size within MTU, room in the
transmit queue; then it is serialized (if capacity is finite), may be lost on the wire,
may be duplicated, and arrives after ``latency + U(0, jitter)``. Jitter is drawn per
packet, so packets may overtake each other by at most the jitter. A packet still in
flight when its link goes down, its destination crashes or a partition separates the two
ends is dropped on arrival.

The network hands arrivals to its simulator through ``post_arrival``; it never touches
the simulator's event heap.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from x0tta6bl4.sansio import Addr

from .trace import GLOBAL
from .types import (
    CRASHED,
    LINK_DOWN,
    LOSS,
    MTU,
    NO_LINK,
    PARTITION,
    QUEUE_OVERFLOW,
    LinkSpec,
    NodeStats,
    SimError,
    derive_rng,
)

__all__ = ["Intercept", "Link", "Network", "NetworkHost", "NodeState", "Tamper"]

Tamper = Callable[[Addr, bytes], bytes]
"""``fn(dst, data) -> data``: rewrites every datagram a node sends."""

Intercept = Callable[[Addr, str, bytes], bytes | None]
"""``fn(src, dst, data) -> data or None``: sees every datagram as it arrives at a live node
(after link, crash and partition checks) and returns what to hand to the core, or
``None`` to drop it (counted as ``intercepted``): an on-path attacker or a test's tap."""


class NodeState(Protocol):
    """One node as the network sees it: its name, whether it runs, its counters."""

    @property
    def name(self) -> str: ...

    @property
    def alive(self) -> bool: ...

    @property
    def stats(self) -> NodeStats: ...


class NetworkHost(Protocol):
    """What the network needs from the simulator that owns it (``Simulator`` is one).

    A protocol rather than an import, so the engine depends on the network and not the
    other way round.
    """

    @property
    def seed(self) -> int: ...

    @property
    def now(self) -> float: ...

    def node_states(self) -> Mapping[str, NodeState]:
        """The live table of nodes by name (kept current across crashes and restarts)."""
        ...

    def schedule(self, at: float, fn: Callable[[Any], None]) -> None: ...

    def record(self, t: float, node: str, kind: str, fields: dict[str, Any]) -> None: ...

    def count_drop(self, t: float, src: Addr, dst: Addr, data: bytes, reason: str) -> None: ...

    def post_arrival(
        self, at: float, node: str, src: Addr, data: bytes, link: Link | None = None
    ) -> None: ...


class Link:
    """One direction ``src -> dst`` of a link, with its live state."""

    __slots__ = (
        "_cap",
        "_qlim",
        "busy_until",
        "dst",
        "dup",
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
        self.dup = spec.dup
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
    """Links, partitions and hooks of one simulator (reach it as ``sim.net``)."""

    def __init__(self, host: NetworkHost) -> None:
        self._host = host
        # Fetched once: the send path uses these for every datagram.
        self._nodes = host.node_states()
        self._drop = host.count_drop
        self._post = host.post_arrival
        self._out: dict[str, dict[str, Link]] = {}
        # Canonical (first-added) order of each undirected pair, so records name it one way.
        self._pairs: dict[tuple[str, str], tuple[Link, Link]] = {}
        self.groups: dict[str, int] | None = None
        """Partition group of each listed node, or ``None`` while there is no partition
        (read on every arrival; change it with ``partition`` and ``heal``)."""
        self.intercept: Intercept | None = None
        """See ``set_intercept``; read on every arrival."""
        self._tamper: dict[str, Tamper] = {}

    # --- topology -------------------------------------------------------------

    def add_link(
        self, a: str, b: str, spec: LinkSpec | None = None, *, reverse: LinkSpec | None = None
    ) -> None:
        """Connect ``a`` and ``b``; ``reverse`` gives the ``b -> a`` direction its own spec."""
        host = self._host
        for n in (a, b):
            if n not in self._nodes:
                raise SimError(f"add_link({a!r}, {b!r}): unknown node {n!r}")
        if a == b:
            raise SimError(f"add_link: a node cannot link to itself ({a!r})")
        if self._find(a, b) is not None:
            raise SimError(f"add_link: link {a!r}-{b!r} already exists")
        fwd_spec = spec if spec is not None else LinkSpec()
        rev_spec = reverse if reverse is not None else fwd_spec
        seed = host.seed
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
        now = self._host.now
        for d in (fwd, rev):
            d.up = up
            if not up:
                d.epoch += 1
                d.busy_until = now  # the transmit queue is lost with the link
        self._host.record(now, ca, "sim.link_up" if up else "sim.link_down", {"peer": cb})

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
        dup: float | None = None,
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
                ("dup", dup),
            )
            if v is not None
        }
        self._pair(a, b)
        dirs = [self._out[a][b]]
        if both:
            dirs.append(self._out[b][a])
        for d in dirs:
            d.set_spec(dataclasses.replace(d.spec, **changes))
        self._host.record(self._host.now, a, "sim.degrade", {"peer": b, "both": both, **changes})

    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        """Only nodes in the same group can talk; nodes in no group form one more group.

        Replaces any earlier partition.
        """
        host = self._host
        gmap: dict[str, int] = {}
        listed: list[list[str]] = []
        for i, g in enumerate(groups):
            members = sorted(set(g))
            for n in members:
                if n not in self._nodes:
                    raise SimError(f"partition: unknown node {n!r}")
                if n in gmap:
                    raise SimError(f"partition: node {n!r} is in two groups")
                gmap[n] = i
            listed.append(members)
        self.groups = gmap
        host.record(host.now, GLOBAL, "sim.partition", {"groups": sorted(listed)})

    def heal(self) -> None:
        """Remove the partition (no-op if there is none)."""
        if self.groups is None:
            return
        self.groups = None
        self._host.record(self._host.now, GLOBAL, "sim.heal", {})

    def partitioned(self, a: str, b: str) -> bool:
        g = self.groups
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
        host = self._host
        t0 = host.now if start is None else start
        down = period / 2 if down_for is None else down_for
        if not (period > 0 and 0 < down <= period):
            raise SimError(
                f"flap: need period > 0 and 0 < down_for <= period, got {period}, {down}"
            )
        if t0 < host.now or until < t0:
            raise SimError(f"flap: need now <= start <= until, got {t0}, {until}")

        def go_down(_: object) -> None:
            self.set_up(a, b, False)

        def go_up(_: object) -> None:
            self.set_up(a, b, True)

        # Scheduled up front (bounded by until/period): a flap is a fixed script, not a
        # process that could be lost if another fault touches the link.
        k = 0
        while (t := t0 + k * period) < until:
            host.schedule(t, go_down)
            host.schedule(min(t + down, until), go_up)
            k += 1

    def set_tamper(self, node: str, fn: Tamper | None) -> None:
        """Rewrite every datagram ``node`` sends with ``fn(dst, data)``; ``None`` removes it."""
        if node not in self._nodes:
            raise SimError(f"set_tamper: unknown node {node!r}")
        if fn is None:
            self._tamper.pop(node, None)
        else:
            self._tamper[node] = fn

    def set_intercept(self, fn: Intercept | None) -> None:
        """Hand every arriving datagram to ``fn(src, dst, data)`` first (see ``Intercept``);
        ``None`` removes it. Unlike a tamper hook it acts at arrival time, on every sender
        (injected datagrams included), and may drop."""
        self.intercept = fn

    # --- the send path ----------------------------------------------------------

    def transmit(self, node: NodeState, now: float, dst: Addr, data: bytes) -> None:
        """Put one datagram from ``node`` on the wire, or drop and count it."""
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
        link = out.get(dst) if out is not None else None  # type: ignore[call-overload]
        drop = self._drop
        if link is None:
            drop(now, src, dst, data, NO_LINK)
            return
        name = link.dst  # dst as a node name, now that a link proves it is one
        if not link.up:
            drop(now, src, name, data, LINK_DOWN)
            return
        if not self._nodes[name].alive:
            drop(now, src, name, data, CRASHED)
            return
        g = self.groups
        if g is not None and g.get(src, -1) != g.get(name, -1):
            drop(now, src, name, data, PARTITION)
            return
        if size > link.mtu:
            drop(now, src, name, data, MTU)
            return
        t = now
        cap = link._cap
        if cap:
            busy = link.busy_until
            if busy > now:
                if (busy - now) * cap + size > link._qlim:
                    drop(now, src, name, data, QUEUE_OVERFLOW)
                    return
                t = busy
            t += size / cap
            link.busy_until = t
        rng = link.rng
        # Wire loss after serialization: a lost packet still used the transmitter.
        if link.loss and rng.random() < link.loss:
            drop(now, src, name, data, LOSS)
            return
        t += link.latency
        jitter = link.jitter
        self._post(t + rng.random() * jitter if jitter else t, name, src, data, link)
        # Drawn only on links that duplicate, so the others keep their random streams.
        if link.dup and rng.random() < link.dup:
            self._post(t + rng.random() * jitter if jitter else t, name, src, data, link)
