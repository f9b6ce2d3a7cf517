"""The discrete-event engine: one virtual clock, one heap, any sans-IO core.

Heap entries are plain tuples ``(time, seq, kind, ...)``; ``seq`` is unique and
increasing, so ties at one instant run in the order they were scheduled and tuple
comparison never looks past it. Timers are cancelled lazily: each node remembers the
``seq`` of the latest ``SetTimer`` per key and a firing whose ``seq`` differs is stale.
Only the engine builds heap entries: the network hands it arrivals through
``post_arrival``, scenario actions and probes come through ``schedule``.

Cores speak ``x0tta6bl4.sansio.Core``; control actions (``SessionUp``, ``LinkUp``,
``LinkDown``) are for a layer above the core and the engine ignores them.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Hashable, Iterable, Mapping
from heapq import heappop, heappush
from typing import Any, Final

from x0tta6bl4.sansio import (
    CONTROL_TYPES,
    Action,
    Addr,
    AppSend,
    Core,
    Datagram,
    Deliver,
    Event,
    Send,
    SendSegments,
    SetTimer,
    Timer,
)

from .network import Link, Network, NodeState
from .topology import Topology
from .trace import Trace
from .types import (
    CRASHED,
    DROP_REASONS,
    INTERCEPTED,
    LINK_DOWN,
    PARTITION,
    LinkSpec,
    NodeStats,
    SimError,
    derive_rng,
)

__all__ = ["DeliverObserver", "DropObserver", "NodeFactory", "NodeStats", "Simulator"]

# Heap event kinds. The heap format is the engine's alone: the network posts arrivals
# through ``post_arrival``.
ARRIVE: Final = 0
TIMER: Final = 1
APP: Final = 2
CALL: Final = 3
START: Final = 4

NodeFactory = Callable[[str, random.Random, float], Core]
"""``make_node(name, rng, now) -> core``; called again (fresh state) on restart."""

ActionObserver = Callable[[float, str, Action], None]
"""``fn(t, node, action)`` for every Send, Deliver and Event a core emits."""

DeliverObserver = Callable[[float, str, Deliver], None]
"""``fn(t, node, deliver)`` for every ``Deliver`` a core emits: a tap for application
traffic that, unlike an ``ActionObserver``, costs nothing per datagram sent."""

RecordObserver = Callable[[float, str, str, dict[str, Any]], None]
"""``fn(t, node, kind, fields)`` for every engine-level trace record (``sim.*``)."""

DropObserver = Callable[[float, Addr, Addr, bytes, str], None]
"""``fn(t, src, dst, data, reason)`` for every datagram dropped (for an app send to a
crashed node, ``data`` is the payload)."""


class _Node:
    """One incarnation of a node; a restart makes a new one, so events that captured
    the old one (timers, in-flight packets) see ``alive`` false and are dropped."""

    __slots__ = ("alive", "core", "incarnation", "name", "stats", "timers")

    def __init__(self, name: str, core: Core | None, stats: NodeStats, incarnation: int) -> None:
        self.name = name
        self.core = core
        self.stats = stats
        self.incarnation = incarnation
        self.alive = core is not None
        self.timers: dict[Hashable, int] = {}


class Simulator:
    """A seeded, deterministic simulation of named nodes joined by ``net`` links.

    ``trace_drops=False`` keeps drops out of the trace (they are still counted and still
    reach ``on_record`` and ``on_drop`` observers), for long runs where per-packet
    records would dominate memory.

    Observers: ``on_action`` sees every Send, Deliver and Event; ``on_deliver`` only
    Delivers (a tap for application traffic, free when empty); ``on_record`` every
    ``sim.*`` record; ``on_drop`` every drop.

    Besides the event loop, drivers outside it get: ``apply`` (carry out actions a core
    returned to a direct call), ``post_arrival`` (a datagram arrives, from a link or
    injected from anywhere), ``timers`` (what a node has pending) and ``restart`` with a
    new factory (replace a node's core).
    """

    def __init__(self, seed: int, *, trace_drops: bool = True) -> None:
        self.seed = seed
        self.now = 0.0
        self.trace = Trace()
        self.trace_drops = trace_drops
        self.on_action: list[ActionObserver] = []
        self.on_deliver: list[DeliverObserver] = []
        self.on_record: list[RecordObserver] = []
        self.on_drop: list[DropObserver] = []
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

    def has_node(self, name: str) -> bool:
        return name in self._nodes

    def node_states(self) -> Mapping[str, NodeState]:
        """Every node's current incarnation by name, for the network (read-only)."""
        return self._nodes

    def core(self, name: str) -> Core | None:
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

    def call(self, at: float, name: str, fn: Callable[[Core, float], Iterable[Action]]) -> None:
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

    def apply(self, name: str, actions: Iterable[Action]) -> None:
        """Carry out, now, ``actions`` that ``name``'s core returned from a call made outside
        the event loop (a driver calling ``SecureEndpoint.send`` directly, say), exactly
        as if it had returned them from ``handle``."""
        node = self._get(name)
        if not node.alive:
            raise SimError(f"apply({name!r}): node is down")
        self._apply(node, self.now, actions)

    def post_arrival(
        self, at: float, node: str, src: Addr, data: bytes, link: Link | None = None
    ) -> None:
        """At ``at``, hand ``Datagram(src, data)`` to the incarnation of ``node`` running now.

        The packet is dropped on arrival (and counted) if that incarnation has crashed by
        then, if ``link`` (the one it travels on, if any) went down meanwhile, or if a
        partition separates ``src`` from ``node``; the network's intercept sees the rest.
        Without a link it is an injected datagram: ``src`` may be any address.
        """
        # Checks inlined: the network posts every datagram it delivers through here.
        if not at >= self.now:
            raise SimError(f"post_arrival: time {at!r} is before now ({self.now!r})")
        dnode = self._nodes.get(node)
        if dnode is None:
            raise SimError(f"unknown node {node!r}")
        epoch = link.epoch if link is not None else 0
        heappush(self._heap, (at, next(self._count), ARRIVE, dnode, src, data, link, epoch))

    def timers(self, name: str) -> list[tuple[Hashable, float]]:
        """``(key, at)`` of every timer pending for ``name``, in the order first set."""
        node = self._get(name)
        if not node.timers:
            return []
        # Scans the heap: for tests and inspection, kept off the hot path.
        at_of = {ev[1]: ev[0] for ev in self._heap if ev[2] == TIMER and ev[3] is node}
        return [(key, at_of[seq]) for key, seq in node.timers.items()]

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
        self.record(self.now, name, "sim.crash", {})

    def restart(self, name: str, factory: NodeFactory | None = None) -> None:
        """Bring ``name`` back with a fresh core from its factory and call ``start`` now;
        a new ``factory`` replaces the old one from here on (new software, new keys).

        The new core's RNG is derived from the incarnation number, so a restarted node
        does not replay the random choices (nonces, ephemeral keys) of its previous life.
        """
        old = self._get(name)
        if old.alive:
            raise SimError(f"restart({name!r}): node is running; crash it first")
        if factory is not None:
            self._factories[name] = factory
        inc = old.incarnation + 1
        rng = derive_rng(self.seed, "node", name, str(inc))
        node = _Node(name, self._factories[name](name, rng, self.now), old.stats, inc)
        self._nodes[name] = node
        node.stats.restarts += 1
        self.record(self.now, name, "sim.restart", {"incarnation": inc})
        self._start(node, self.now)

    # --- records ----------------------------------------------------------------

    def record(self, t: float, node: str, kind: str, fields: dict[str, Any]) -> None:
        """Append an engine-level record (kind ``sim.*``) to the trace and tell
        ``on_record`` observers."""
        self.trace.records.append((t, node, kind, fields))
        for fn in self.on_record:
            fn(t, node, kind, fields)

    def count_drop(self, t: float, src: Addr, dst: Addr, data: bytes, reason: str) -> None:
        """Count a dropped datagram against ``src`` (when it is a node: injected datagrams
        may come from anywhere), trace it unless ``trace_drops`` is off, tell observers."""
        if isinstance(src, str):
            who = src
            node = self._nodes.get(src)
            if node is not None:
                node.stats.dropped[reason] += 1
        else:
            who = repr(src)  # an injected datagram's foreign source address
        self.drops[reason] += 1
        size = len(data)
        if self.trace_drops:
            self.record(t, who, "sim.drop", {"reason": reason, "peer": dst, "bytes": size})
        elif self.on_record:
            # Untraced drops still reach observers: metrics must not depend on tracing.
            fields = {"reason": reason, "peer": dst, "bytes": size}
            for fn in self.on_record:
                fn(t, who, "sim.drop", fields)
        for obs in self.on_drop:
            obs(t, src, dst, data, reason)

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
            if cls is SendSegments:
                # One Send apiece, observers included: the simulator has no offload.
                self._apply(node, now, [Send(a.addr, d) for d in a.datagrams()])
                if not node.alive:
                    return
                continue
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
                if self.on_deliver:
                    for tap in self.on_deliver:
                        tap(now, name, a)
                    if not node.alive:  # a tap crashed it
                        return
            elif cls is Event:
                # By reference, not copied: cores must not mutate fields once emitted.
                self.trace.records.append((now, name, a.kind, a.fields))
            elif cls in CONTROL_TYPES:
                continue  # signals for a layer above the core; a runtime ignores them
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
                        self.count_drop(t, src, node.name, data, CRASHED)
                    elif link is not None and link.epoch != epoch:
                        self.count_drop(t, src, node.name, data, LINK_DOWN)
                    elif net.groups is not None and net.partitioned(src, node.name):
                        self.count_drop(t, src, node.name, data, PARTITION)
                    else:
                        if net.intercept is not None:
                            data = net.intercept(src, node.name, data)
                        if data is None:
                            self.count_drop(t, src, node.name, ev[5], INTERCEPTED)
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
                        self.count_drop(t, src, inp.dst, inp.payload, CRASHED)
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
