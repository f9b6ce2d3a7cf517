"""The discrete-event engine: one virtual clock, one heap, any sans-IO core.

Heap entries are plain tuples ``(time, seq, kind, ...)``; ``seq`` is unique and
increasing, so ties at one instant run in the order they were scheduled and tuple
comparison never looks past it. Timers are cancelled lazily: each node remembers the
``seq`` of the latest ``SetTimer`` per key and a firing whose ``seq`` differs is stale.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Hashable, Iterable
from heapq import heappop, heappush
from typing import TYPE_CHECKING, Any, Final, Protocol

from x0tta6bl4.sansio import (
    Action,
    AppSend,
    Datagram,
    Deliver,
    Event,
    Input,
    Send,
    SetTimer,
    Timer,
)

from .network import (
    ARRIVE,
    CRASHED,
    DROP_REASONS,
    LINK_DOWN,
    PARTITION,
    LinkSpec,
    Network,
    SimError,
    derive_rng,
)
from .trace import Trace

if TYPE_CHECKING:
    from .topology import Topology

__all__ = ["NodeFactory", "NodeStats", "SimCore", "Simulator"]

TIMER: Final = 1
APP: Final = 2
CALL: Final = 3
START: Final = 4


class SimCore(Protocol):
    """What the simulator drives: a sans-IO core addressed by its node name."""

    def start(self, now: float) -> Iterable[Action]: ...

    def handle(self, now: float, inp: Input) -> Iterable[Action]: ...


NodeFactory = Callable[[str, random.Random, float], SimCore]
"""``make_node(name, rng, now) -> core``; called again (fresh state) on restart."""

ActionObserver = Callable[[float, str, Action], None]
"""``fn(t, node, action)`` for every Send, Deliver and Event a core emits."""

RecordObserver = Callable[[float, str, str, dict[str, Any]], None]
"""``fn(t, node, kind, fields)`` for every engine-level trace record (``sim.*``)."""


class NodeStats:
    """Counters for one node name, kept across crashes and restarts.

    ``sent_*`` counts every Send the core emitted (after tamper), delivered or not;
    ``recv_*`` counts datagrams handed to the core; ``dropped`` is keyed by reason and
    charged to the sending node (for app sends, to the node asked to send).
    """

    __slots__ = (
        "crashes",
        "delivered",
        "dropped",
        "recv_bytes",
        "recv_packets",
        "restarts",
        "sent_bytes",
        "sent_packets",
    )

    def __init__(self) -> None:
        self.sent_packets = 0
        self.sent_bytes = 0
        self.recv_packets = 0
        self.recv_bytes = 0
        self.delivered = 0
        self.crashes = 0
        self.restarts = 0
        self.dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__} | {
            "dropped": dict(self.dropped)
        }

    def __repr__(self) -> str:
        return f"NodeStats({self.as_dict()})"


class _Node:
    """One incarnation of a node; a restart makes a new one, so events that captured
    the old one (timers, in-flight packets) see ``alive`` false and are dropped."""

    __slots__ = ("alive", "core", "incarnation", "name", "stats", "timers")

    def __init__(self, name: str, core: SimCore | None, stats: NodeStats, incarnation: int) -> None:
        self.name = name
        self.core = core
        self.stats = stats
        self.incarnation = incarnation
        self.alive = core is not None
        self.timers: dict[Hashable, int] = {}


class Simulator:
    """A seeded, deterministic simulation of named nodes joined by ``net`` links.

    ``trace_drops=False`` keeps drops out of the trace (they are still counted and still
    reach ``on_record`` observers), for long runs where per-packet records would
    dominate memory.
    """

    def __init__(self, seed: int, *, trace_drops: bool = True) -> None:
        self.seed = seed
        self.now = 0.0
        self.trace = Trace()
        self.trace_drops = trace_drops
        self.on_action: list[ActionObserver] = []
        self.on_record: list[RecordObserver] = []
        self.stats: dict[str, NodeStats] = {}
        self.drops: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self.events_processed = 0
        self._heap: list[tuple[Any, ...]] = []
        self._count = itertools.count()
        self._nodes: dict[str, _Node] = {}
        self._factories: dict[str, NodeFactory] = {}
        self.net = Network(self)

    # --- set-up -----------------------------------------------------------------

    def add_node(self, name: str, factory: NodeFactory) -> None:
        """Create the node now; its ``start`` runs as the first event at this instant, so
        links added before ``run`` already carry whatever it sends first."""
        if not isinstance(name, str) or not name:
            raise SimError(f"node name must be a non-empty str, got {name!r}")
        if name in self._nodes:
            raise SimError(f"node {name!r} already exists")
        stats = NodeStats()
        self.stats[name] = stats
        self._factories[name] = factory
        node = _Node(
            name, factory(name, derive_rng(self.seed, "node", name, "0"), self.now), stats, 0
        )
        self._nodes[name] = node
        heappush(self._heap, (self.now, next(self._count), START, node))

    def add_link(
        self, a: str, b: str, spec: LinkSpec | None = None, *, reverse: LinkSpec | None = None
    ) -> None:
        self.net.add_link(a, b, spec, reverse=reverse)

    def add_topology(self, topology: Topology, factory: NodeFactory) -> None:
        """Every node of ``topology`` (in its order) with ``factory``, then every edge."""
        for name in topology.nodes:
            self.add_node(name, factory)
        for e in topology.edges:
            self.net.add_link(e.a, e.b, e.spec)

    @property
    def nodes(self) -> list[str]:
        return list(self._nodes)

    def core(self, name: str) -> SimCore | None:
        """The live core of ``name``, or ``None`` while it is crashed."""
        return self._get(name).core

    def is_alive(self, name: str) -> bool:
        return self._get(name).alive

    def _get(self, name: str) -> _Node:
        node = self._nodes.get(name)
        if node is None:
            raise SimError(f"unknown node {name!r}")
        return node

    # --- scheduling -------------------------------------------------------------

    def _check_time(self, at: float, what: str) -> None:
        if not at >= self.now:
            raise SimError(f"{what}: time {at!r} is before now ({self.now!r})")

    def schedule(self, at: float, fn: Callable[[Simulator], None]) -> None:
        """Call ``fn(sim)`` at virtual time ``at`` (scenario actions, test probes)."""
        self._check_time(at, "schedule")
        heappush(self._heap, (at, next(self._count), CALL, fn))

    def send_app(self, at: float, src: str, dst: str, port: int, payload: bytes) -> None:
        """At ``at``, hand ``AppSend(dst, port, payload)`` to whatever core ``src`` runs then."""
        self._check_time(at, "send_app")
        self._get(src)
        heappush(self._heap, (at, next(self._count), APP, src, AppSend(dst, port, payload)))

    def call(self, at: float, name: str, fn: Callable[[SimCore, float], Iterable[Action]]) -> None:
        """At ``at``, run ``fn(core, now)`` on the core ``name`` runs then and carry out the
        actions it returns (operator commands, healing hooks, test probes). Nothing
        happens if the node is down at that time."""
        self._check_time(at, "call")
        self._get(name)

        def run(sim: Simulator) -> None:
            node = sim._nodes[name]
            if node.alive and node.core is not None:
                sim._apply(node, sim.now, fn(node.core, sim.now))

        self.schedule(at, run)

    @property
    def pending(self) -> int:
        """Heap entries not yet run (stale timers included)."""
        return len(self._heap)

    # --- faults -----------------------------------------------------------------

    def crash(self, name: str) -> None:
        """Stop ``name``: its state, pending timers and packets in flight to it are lost."""
        node = self._get(name)
        if not node.alive:
            raise SimError(f"crash({name!r}): node is already down")
        node.alive = False
        node.core = None
        node.timers.clear()
        node.stats.crashes += 1
        self._record(self.now, name, "sim.crash", {})

    def restart(self, name: str) -> None:
        """Bring ``name`` back with a fresh core from its factory and call ``start`` now.

        The new core's RNG is derived from the incarnation number, so a restarted node
        does not replay the random choices (nonces, ephemeral keys) of its previous life.
        """
        old = self._get(name)
        if old.alive:
            raise SimError(f"restart({name!r}): node is running; crash it first")
        inc = old.incarnation + 1
        rng = derive_rng(self.seed, "node", name, str(inc))
        node = _Node(name, self._factories[name](name, rng, self.now), old.stats, inc)
        self._nodes[name] = node
        node.stats.restarts += 1
        self._record(self.now, name, "sim.restart", {"incarnation": inc})
        self._start(node, self.now)

    # --- records ----------------------------------------------------------------

    def _record(self, t: float, node: str, kind: str, fields: dict[str, Any]) -> None:
        self.trace.records.append((t, node, kind, fields))
        for fn in self.on_record:
            fn(t, node, kind, fields)

    def _drop(self, t: float, src: str, dst: Any, size: int, reason: str) -> None:
        self._nodes[src].stats.dropped[reason] += 1
        self.drops[reason] += 1
        if self.trace_drops:
            self._record(t, src, "sim.drop", {"reason": reason, "peer": dst, "bytes": size})
        elif self.on_record:
            # Untraced drops still reach observers: metrics must not depend on tracing.
            fields = {"reason": reason, "peer": dst, "bytes": size}
            for fn in self.on_record:
                fn(t, src, "sim.drop", fields)

    # --- the loop ---------------------------------------------------------------

    def _start(self, node: _Node, now: float) -> None:
        assert node.core is not None
        acts = node.core.start(now)
        if acts:
            self._apply(node, now, acts)

    def _apply(self, node: _Node, now: float, actions: Iterable[Action]) -> None:
        obs = self.on_action
        name = node.name
        a: Any  # dispatched on the exact type below; mypy cannot narrow through `cls`
        for a in actions:
            cls = type(a)
            if cls is Send:
                self.net.transmit(node, now, a.addr, a.data)
            elif cls is SetTimer:
                seq = next(self._count)
                node.timers[a.key] = seq
                at = a.at
                heappush(self._heap, (at if at > now else now, seq, TIMER, node, a.key))
                continue  # timers are the core's business, not an observable effect
            elif cls is Deliver:
                node.stats.delivered += 1
            elif cls is Event:
                # By reference, not copied: cores must not mutate fields once emitted.
                self.trace.records.append((now, name, a.kind, a.fields))
            else:
                raise SimError(f"node {name!r} returned a non-action: {a!r}")
            if obs:
                for fn in obs:
                    fn(now, name, a)
                if not node.alive:  # an observer crashed it
                    return

    def run(self, until: float) -> int:
        """Run every event at or before ``until``; leave ``now == until``.

        Returns the number of events processed by this call.
        """
        if not until >= self.now:
            raise SimError(f"run(until={until!r}) is before now ({self.now!r})")
        heap = self._heap
        apply = self._apply
        net = self.net
        n = 0
        ev: tuple[Any, ...] = ()
        try:
            while heap and heap[0][0] <= until:
                ev = heappop(heap)
                n += 1
                t = ev[0]
                self.now = t
                kind = ev[2]
                if kind == ARRIVE:
                    _, _, _, node, src, data, link, epoch = ev
                    if not node.alive:
                        self._drop(t, src, node.name, len(data), CRASHED)
                    elif link.epoch != epoch:
                        self._drop(t, src, node.name, len(data), LINK_DOWN)
                    elif net._groups is not None and net.partitioned(src, node.name):
                        self._drop(t, src, node.name, len(data), PARTITION)
                    else:
                        st = node.stats
                        st.recv_packets += 1
                        st.recv_bytes += len(data)
                        acts = node.core.handle(t, Datagram(src, data))
                        if acts:
                            apply(node, t, acts)
                elif kind == TIMER:
                    node = ev[3]
                    key = ev[4]
                    timers = node.timers
                    if timers.get(key) == ev[1]:  # else stale, replaced, or node crashed
                        del timers[key]
                        acts = node.core.handle(t, Timer(key))
                        if acts:
                            apply(node, t, acts)
                    else:
                        n -= 1  # a stale timer is bookkeeping, not an event
                elif kind == APP:
                    src = ev[3]
                    inp = ev[4]
                    node = self._nodes[src]
                    core = node.core  # None exactly while crashed
                    if core is not None:
                        acts = core.handle(t, inp)
                        if acts:
                            apply(node, t, acts)
                    else:
                        self._drop(t, src, inp.dst, len(inp.payload), CRASHED)
                elif kind == CALL:
                    ev[3](self)
                else:  # START
                    node = ev[3]
                    if node.alive:
                        self._start(node, t)
        except Exception as e:
            e.add_note(f"while simulating event kind={ev[2] if ev else None} at t={self.now!r}")
            raise
        finally:
            self.events_processed += n
        self.now = until
        return n
