"""Named scenarios over the real mesh (``MeshNode`` + healing) and the numbers they yield.

    summary = run_scenario("relay-kill", nodes=50, seed=1)
    summary.convergence_s, summary.recovery_s, summary.healing_events

Every scenario starts cold, waits for convergence (checked every 0.1 s), lets the mesh
settle for :data:`SETTLE` seconds and then applies its fault at ``fault_at``; times in
the summary are virtual seconds. Without ``until`` a run ends :data:`TAIL` seconds after
its fault is over; with ``until`` it ends exactly there, whatever it was doing.

The mesh is built by a :class:`~.scenario.Scenario` and every fault is one of its actions
(``kill``, ``partition``, ``flap``, ...), put on the clock with :func:`~.scenario.schedule`
once the run has looked at the converged mesh and chosen where the fault goes.

Everything measured here is a global view only the simulator has. The checks are kept
cheap enough for 1,000-node meshes: a convergence check stops at the first node that
lacks a route (and starts the next check at that node), reachability looks at a fixed
sample of pairs, and recovery checks look only at the pairs still broken.

Any scenario runs on any :data:`~.topology.TOPOLOGY_KINDS` topology of any size, with
loss and jitter on every link; with ``flows=N`` it also sends constant-rate traffic
between N sampled pairs from convergence on, and reports delivery and, per fault, the
user outage those flows saw (ground truth) beside the healing layer's MTTD and MTTR.

Also here, for the benchmark: :func:`failover_samples` / :func:`failover_stats` (repeated
random relay kills in one mesh) and :func:`convergence` / :func:`convergence_stats` (a
60 s run: convergence time, control traffic, wall-clock cost).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Final

from x0tta6bl4.healing import HealingEvent
from x0tta6bl4.mesh.node import MeshNode
from x0tta6bl4.sim.engine import Simulator
from x0tta6bl4.sim.flows import FlowStats
from x0tta6bl4.sim.meshrun import MeshRun, build_mesh
from x0tta6bl4.sim.meshsim import build_world, route_path, sample_pairs, trace_path
from x0tta6bl4.sim.outage import FaultOutage
from x0tta6bl4.sim.scenario import (
    ScenarioAction,
    cut,
    degrade,
    every,
    flap,
    heal,
    kill,
    partition,
    restart,
    schedule,
)
from x0tta6bl4.sim.topology import TOPOLOGY_KINDS, Topology, build_topology, diamond
from x0tta6bl4.sim.trace import Trace
from x0tta6bl4.sim.types import SimError, derive_rng, percentile

__all__ = [
    "SCENARIOS",
    "TOPOLOGY_KINDS",
    "ConvergenceStats",
    "FailoverStats",
    "SimSummary",
    "convergence",
    "convergence_stats",
    "failover_samples",
    "failover_stats",
    "flow_pairs",
    "percentile",
    "run_scenario",
]

SCENARIOS: Final = ("converge", "relay-kill", "partition", "flap", "degrade", "diamond")

CONVERGE_CHECK: Final = 0.1
"""Convergence is checked this often (virtual seconds)."""
RECOVERY_CHECK: Final = 0.01
"""After a fault, the broken pairs are re-checked this often."""
REACH_EVERY: Final = 0.5
"""Reachability of the sampled pairs is recorded this often."""
CONVERGE_LIMIT: Final = 60.0
"""Give up waiting for a cold start to converge after this long."""
RECONVERGE_LIMIT: Final = 10.0
"""Give up waiting for re-convergence after a restart after this long (failover runs)."""
RECOVERY_LIMIT: Final = 30.0
"""Give up waiting for broken pairs after this long."""
SETTLE: Final = 2.0
"""Quiet time between convergence and the fault: link estimates and timers settle."""
TAIL: Final = 10.0
"""Time a run goes on after its fault is over (when ``until`` is not given)."""
PAIRS: Final = 200
"""Sampled (src, dst) pairs for reachability, relay and link choice."""
RELAY_CANDIDATES: Final = 8
"""relay-kill considers this many of the busiest relays."""
PARTITION_FOR: Final = 5.0
FLAP_PERIOD: Final = 1.0
FLAP_FOR: Final = 20.0
DEGRADE_FOR: Final = 20.0
DEGRADE_LOSS: Final = (0.05, 0.6)
DEGRADE_STEPS: Final = 12
FLOW_RATE: Final = 20.0
"""Packets per second of each flow (``flows=N``): a 50 ms resolution on outages."""
FLOW_SIZE: Final = 64


@dataclass
class SimSummary:
    """What one scenario run measured. Times are virtual seconds unless named wall.

    ``reachability`` is ``(t, fraction)`` every :data:`REACH_EVERY` s: the fraction of the
    sampled pairs whose next-hop chain arrives, among pairs with both ends alive.
    ``control_bytes_per_node_s`` is every byte every node sent (handshakes, hellos,
    routing; and the flows' packets, when there are flows) / nodes / virtual seconds.
    ``recovery_s`` is, for a kill, the time from the kill until every affected pair (both
    ends alive, old path through the victim, still connected in the graph) is reachable
    again; for a partition, from the heal until every sampled pair is reachable; None if
    the scenario has no such fault or it did not recover within :data:`RECOVERY_LIMIT`.
    ``route_changes`` counts next-hop changes summed over all nodes from the fault on.
    ``topology``, ``loss`` and ``jitter`` say what network it ran on. With flows,
    ``flows`` has each flow's figures (packets sent until 1 s before the end) and
    ``outages`` every fault with the user outage of the flows it hit.
    """

    scenario: str
    nodes: int
    seed: int
    virtual_s: float
    wall_s: float
    convergence_s: float | None
    reachability: list[tuple[float, float]]
    healing_events: list[tuple[str, HealingEvent]]
    control_bytes_per_node_s: float
    drops: dict[str, int]
    trace_digest: str
    fault: str | None = None
    fault_at: float | None = None
    recovery_s: float | None = None
    route_changes: int = 0
    details: dict[str, float | int | str | None] = field(default_factory=dict)
    trace: Trace = field(default_factory=Trace, repr=False, compare=False)
    topology: str = "random-geometric"
    loss: float = 0.0
    jitter: float = 0.0
    flows: list[FlowStats] = field(default_factory=list)
    outages: list[FaultOutage] = field(default_factory=list)

    @property
    def mttrs(self) -> list[float]:
        """MTTR of every repaired healing event, in event order."""
        return [m for _, e in self.healing_events if (m := e.mttr) is not None]

    @property
    def delivery_ratio(self) -> float:
        """Distinct packets delivered / sent over every flow (nan without flows)."""
        sent = sum(f.sent for f in self.flows)
        return sum(f.delivered for f in self.flows) / sent if sent else math.nan


Observers = tuple[
    Callable[[HealingEvent], None] | None, Callable[[Mapping[str, float]], None] | None
]


class _Run(MeshRun):
    """One scenario's mesh plus the probes the scenarios need: a fixed sample of pairs,
    reachability sampled on a timer, an end time every wait respects."""

    def __init__(
        self,
        topology: Topology,
        seed: int,
        *,
        until: float | None = None,
        healing: bool = True,
        reach_every: float | None = REACH_EVERY,
        pairs: int = PAIRS,
        observers: Observers | None = None,
        loss: float | None = None,
        jitter: float | None = None,
        flows: int = 0,
        kind: str = "random-geometric",
    ) -> None:
        # Outside the wall clock: certificates are issued once per process and cached.
        build_world(topology.nodes, seed)
        self.wall0 = time.perf_counter()
        on_event, on_cycle = observers if observers is not None else (None, None)
        # Drops are counted either way; per-packet drop records would dominate the trace
        # (and memory) of a big run for no extra insight. The script starts empty: each
        # scenario adds its fault with `at` once it has looked at the converged mesh.
        built = build_mesh(
            topology,
            seed=seed,
            healing=healing,
            loss=loss,
            jitter=jitter,
            on_event=on_event,
            on_cycle=on_cycle,
        )
        super().__init__(built.sim, built.mesh)
        self.kind = kind
        self.loss = loss or 0.0
        self.jitter = jitter or 0.0
        self.end = math.inf if until is None else until
        self.pairs = sample_pairs(list(topology.nodes), pairs, seed)
        self.flow_pairs = flow_pairs(list(topology.nodes), flows, seed)
        self.reach: list[tuple[float, float]] = []
        self.samplers: list[Callable[[float, dict[str, MeshNode]], None]] = []
        self._changes_mark: dict[MeshNode, int] = {}
        self.loops = 0
        if reach_every is not None:
            every(self.sim, reach_every, self._sample, start=0.0, until=self.end)

    def start_flows(self) -> None:
        """Start the scenario's flows now (at convergence), until the end of the run."""
        if self.over:
            return  # the run ended before convergence: nothing left to send in
        for a, b in self.flow_pairs:
            self.add_flow(a, b, FLOW_RATE, size=FLOW_SIZE, stop=self.end)

    # -- time -----------------------------------------------------------------------

    @property
    def over(self) -> bool:
        return self.sim.now >= self.end

    def run_to(self, t: float) -> None:
        t = min(t, self.end)
        if t > self.sim.now:
            self.sim.run(t)

    def at(self, t: float, *actions: ScenarioAction) -> _Run:
        """Scenario ``actions`` at ``t`` unless the run ends first. At ``t <= now`` they
        take effect before this returns, so the probes that follow already see them."""
        if t > self.end:
            return self
        now = self.sim.now
        schedule(self.sim, max(t, now), *actions)
        if t <= now:
            self.sim.run(now)
        return self

    # -- probes ---------------------------------------------------------------------

    def _arrives(self, nodes: dict[str, MeshNode], a: str, b: str) -> bool:
        # The packet's view: a route over a link that is down or cut does not count.
        p = trace_path(self.sim, a, b, nodes)
        if p.kind == "loop":
            self.loops += 1  # a protocol bug, counted and reported rather than raised
        return p.ok

    def _sample(self, sim: Simulator) -> None:
        nodes = self.nodes()
        live = [(a, b) for a, b in self.pairs if a in nodes and b in nodes]
        ok = sum(1 for a, b in live if self._arrives(nodes, a, b))
        self.reach.append((sim.now, ok / len(live) if live else 1.0))
        for fn in self.samplers:
            fn(sim.now, nodes)

    def wait_converged(
        self, limit: float = CONVERGE_LIMIT, step: float = CONVERGE_CHECK
    ) -> float | None:
        """Step in ``step`` increments until converged; the time, or None (also when the
        run ends first)."""
        t0 = self.now
        k = 0
        while True:
            if self.converged():
                return self.now
            k += 1
            t = t0 + k * step
            if t > t0 + limit or self.over:
                return None
            self.run_to(t)

    def wait_reachable(
        self, pairs: Iterable[tuple[str, str]], t0: float, limit: float = RECOVERY_LIMIT
    ) -> float | None:
        """Step in :data:`RECOVERY_CHECK` increments until every pair is reachable,
        re-checking only the pairs still broken; seconds since ``t0``, or None."""
        broken = list(pairs)
        k = 0
        base = self.now
        while True:
            nodes = self.nodes()
            broken = [(a, b) for a, b in broken if not self._arrives(nodes, a, b)]
            if not broken:
                return self.now - t0
            k += 1
            t = base + k * RECOVERY_CHECK
            if t > t0 + limit or self.over:
                return None
            self.run_to(t)

    def sampled_paths(self) -> list[list[str]]:
        """The routing path of every sampled pair that has one (both ends running)."""
        nodes = self.nodes()
        out = []
        for a, b in self.pairs:
            if a in nodes and b in nodes:
                p = route_path(nodes, a, b)
                if p.ok:
                    out.append(list(p.hops))
        return out

    def affected_by(
        self, relay: str, paths: list[list[str]] | None = None
    ) -> list[tuple[str, str]]:
        """Sampled pairs whose current path crosses ``relay`` and that stay connected in
        the graph without it (a pair cut off by the kill can never recover); ``paths``
        are :meth:`sampled_paths` already taken at this instant."""
        comp = _components_without(self.topology, node=relay)
        out = []
        for p in self.sampled_paths() if paths is None else paths:
            a, b = p[0], p[-1]
            if relay in p[1:-1] and comp[a] == comp[b]:
                out.append((a, b))
        return out

    def _route_changes(self) -> dict[MeshNode, int]:
        # O(nodes x destinations), so only called a couple of times per run.
        return {m: sum(m.router.route_changes.values()) for m in self.nodes().values()}

    def mark_changes(self) -> None:
        """Remember every node's route-change count now (at the fault)."""
        self._changes_mark = self._route_changes()

    def changes_since_mark(self) -> int:
        """Next-hop changes since :meth:`mark_changes`, over the nodes alive now (keyed by
        node object: a restarted node is a new object counting from zero)."""
        mark = self._changes_mark
        return sum(c - mark.get(m, 0) for m, c in self._route_changes().items())

    def summary(
        self,
        scenario: str,
        convergence_s: float | None,
        *,
        fault: str | None = None,
        fault_at: float | None = None,
        recovery_s: float | None = None,
        route_changes: int = 0,
        details: dict[str, float | int | str | None] | None = None,
    ) -> SimSummary:
        sim = self.sim
        n = len(self.topology)
        flows = self.flow_stats()
        extra: dict[str, float | int | str | None] = {}
        if flows:
            extra["flows"] = len(flows)
        if self.loops:
            extra["routing_loops_seen"] = self.loops
        return SimSummary(
            scenario=scenario,
            nodes=n,
            seed=self.seed,
            virtual_s=sim.now,
            wall_s=time.perf_counter() - self.wall0,
            convergence_s=convergence_s,
            reachability=list(self.reach),
            healing_events=list(self.mesh.healing_events),
            control_bytes_per_node_s=self.control_bytes() / n / sim.now if sim.now > 0 else 0.0,
            drops=dict(sim.drops),
            trace_digest=sim.trace.digest(),
            fault=fault,
            fault_at=fault_at,
            recovery_s=recovery_s,
            route_changes=route_changes,
            details={**(details or {}), "sampled_pairs": len(self.pairs), **extra},
            trace=sim.trace,
            topology=self.kind,
            loss=self.loss,
            jitter=self.jitter,
            flows=flows,
            outages=self.user_outages(),
        )


def _edge(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


def _relay_load(paths: list[list[str]]) -> Counter[str]:
    """How many of ``paths`` each node relays (ends excluded)."""
    load: Counter[str] = Counter()
    for p in paths:
        load.update(p[1:-1])
    return load


def _link_load(paths: list[list[str]]) -> Counter[tuple[str, str]]:
    """How many of ``paths`` cross each link (as a sorted name pair)."""
    load: Counter[tuple[str, str]] = Counter()
    for p in paths:
        load.update(_edge(x, y) for x, y in pairwise(p))
    return load


def _components_without(
    topology: Topology, node: str | None = None, edge: tuple[str, str] | None = None
) -> dict[str, int]:
    """Connected component index of every node once ``node`` (index -1) or ``edge`` is
    removed from the graph (O(N + E))."""
    comp: dict[str, int] = {} if node is None else {node: -1}
    for start in topology.nodes:
        if start in comp:
            continue
        c = len(comp)
        comp[start] = c
        stack = [start]
        while stack:
            x = stack.pop()
            for m in topology.neighbours(x):
                if m not in comp and (edge is None or _edge(x, m) != edge):
                    comp[m] = c
                    stack.append(m)
    return comp


def _bfs_order(topology: Topology) -> list[str]:
    seen = {topology.nodes[0]: None}
    queue = [topology.nodes[0]]
    for x in queue:  # grows while iterated: a breadth-first walk, each node once
        for m in topology.neighbours(x):
            if m not in seen:
                seen[m] = None
                queue.append(m)
    rest = [n for n in topology.nodes if n not in seen]  # other components, if any
    return queue + rest


def flow_pairs(names: Sequence[str], k: int, seed: int) -> list[tuple[str, str]]:
    """``k`` distinct ordered pairs of ``names`` (all of them if there are fewer), from
    their own seeded stream, in the order drawn."""
    n = len(names)
    if k >= n * (n - 1):
        return [(a, b) for a in names for b in names if a != b]
    rng = derive_rng(seed, "flows")
    pairs: dict[tuple[str, str], None] = {}
    # Bounded: each draw is new with probability >= 1 / (n * (n - 1)) while k are missing.
    for _ in range(1000 * n * n):
        if len(pairs) == k:
            break
        a, b = rng.sample(names, 2)
        pairs[(a, b)] = None
    return list(pairs)


def _start(run: _Run) -> tuple[float | None, float]:
    """Cold start: convergence time (or None) and when the fault goes in; the flows, if
    any, start at convergence."""
    conv = run.wait_converged()
    run.start_flows()
    base = conv if conv is not None else run.now
    return conv, base + SETTLE


def _finish(run: _Run, natural_end: float) -> None:
    run.run_to(natural_end if math.isinf(run.end) else run.end)


# -- scenarios --------------------------------------------------------------------------


def _converge(run: _Run) -> SimSummary:
    conv = run.wait_converged()
    run.start_flows()
    base = conv if conv is not None else run.now
    _finish(run, base + TAIL)
    return run.summary("converge", conv)


def _kill_relay(run: _Run, scenario: str, conv: float | None, t: float, relay: str) -> SimSummary:
    affected = run.affected_by(relay)
    run.at(t, kill(relay))
    rec = run.wait_reachable(affected, t) if affected else None
    if rec is None:
        # Not recovered in time: the fault is still being repaired, not finished.
        _finish(run, t + RECOVERY_LIMIT + TAIL)
    else:
        _finish(run, t + rec + TAIL)
    return run.summary(
        scenario,
        conv,
        fault=f"kill {relay}",
        fault_at=t,
        recovery_s=rec,
        route_changes=run.changes_since_mark(),
        details={"relay": relay, "affected_pairs": len(affected)},
    )


def _relay_kill(run: _Run) -> SimSummary:
    conv, t = _start(run)
    run.run_to(t)
    if run.over:
        return run.summary("relay-kill", conv)
    # The busiest relays of a random geometric mesh are often cut vertices, whose paths
    # can never come back; among the busiest few, take the one with the most paths that
    # can be rerouted, so there is a failover to measure.
    paths = run.sampled_paths()
    load = _relay_load(paths)
    best: tuple[int, int, str] | None = None
    for relay, total in sorted(load.items(), key=lambda kv: (-kv[1], kv[0]))[:RELAY_CANDIDATES]:
        n = len(run.affected_by(relay, paths))
        if best is None or (n, total) > best[:2]:
            best = (n, total, relay)
    if best is None or best[0] == 0:
        _finish(run, t + TAIL)
        return run.summary("relay-kill", conv, details={"relay": None})
    relay = best[2]
    run.mark_changes()
    s = _kill_relay(run, "relay-kill", conv, t, relay)
    s.details["relay_paths"] = best[1]
    return s


def _diamond(run: _Run) -> SimSummary:
    conv, t = _start(run)
    run.run_to(t)
    if run.over:
        return run.summary("diamond", conv)
    src, dst = run.topology.nodes[0], run.topology.nodes[-1]
    relay = run.nodes()[src].next_hop(dst)
    if relay is None:
        _finish(run, t + TAIL)
        return run.summary("diamond", conv, details={"relay": None})
    run.mark_changes()
    return _kill_relay(run, "diamond", conv, t, relay)


def _partition(run: _Run) -> SimSummary:
    conv, t = _start(run)
    pos = run.topology.positions
    if pos is not None:
        ordered = sorted(run.topology.nodes, key=lambda n: (pos[n][0], n))
        split = "by x"
    else:  # no geometry: the first half in breadth-first order from the first node
        ordered = _bfs_order(run.topology)
        split = "by hops"
    left = ordered[: len(ordered) // 2]
    run.at(t, partition([left]))
    healed = t + PARTITION_FOR
    run.at(healed, heal())
    run.run_to(t)
    run.mark_changes()
    run.run_to(healed)
    rec = None
    if not run.over:
        rec = run.wait_reachable(run.pairs, healed)
    _finish(run, healed + (rec if rec is not None else RECOVERY_LIMIT) + TAIL)
    return run.summary(
        "partition",
        conv,
        fault=f"partition {len(left)}|{len(ordered) - len(left)} {split} for {PARTITION_FOR:g} s",
        fault_at=t,
        recovery_s=rec,
        route_changes=run.changes_since_mark(),
        details={"healed_at": healed, "left": len(left)},
    )


def _busy_link(run: _Run) -> tuple[tuple[str, str], int] | None:
    """The busiest link (most sampled paths) among those that are not bridges.

    A bridge's paths cannot move anywhere, so flapping or degrading it says nothing
    about damping or rerouting; among the :data:`RELAY_CANDIDATES` busiest links, the
    one carrying the most paths that stay connected without it is taken."""
    sampled = run.sampled_paths()
    load = _link_load(sampled)
    # Walked once for every candidate: each path's ends and the links it crosses.
    paths = [(p[0], p[-1], {_edge(x, y) for x, y in pairwise(p)}) for p in sampled]
    best: tuple[int, int, tuple[str, str]] | None = None
    for link, total in sorted(load.items(), key=lambda kv: (-kv[1], kv[0]))[:RELAY_CANDIDATES]:
        comp = _components_without(run.topology, edge=link)
        n = sum(1 for a, b, links in paths if comp[a] == comp[b] and link in links)
        if n and (best is None or (n, total) > best[:2]):
            best = (n, total, link)
    return None if best is None else (best[2], best[1])


def _link_fault(
    run: _Run, scenario: str
) -> tuple[float | None, float, tuple[tuple[str, str], int]] | SimSummary:
    """Cold start, then the busy link a link fault goes on: ``(conv, t, busy)``, or the
    finished summary when the run ended first or no link qualifies."""
    conv, t = _start(run)
    run.run_to(t)
    if run.over:
        return run.summary(scenario, conv)
    busy = _busy_link(run)
    if busy is None:
        _finish(run, t + TAIL)
        return run.summary(scenario, conv, details={"link": None})
    return conv, t, busy


def _flap(run: _Run) -> SimSummary:
    started = _link_fault(run, "flap")
    if isinstance(started, SimSummary):
        return started
    conv, t, busy = started
    (a, b), paths_before = busy
    run.mark_changes()
    run.at(t, flap(a, b, period=FLAP_PERIOD, until=t + FLAP_FOR))
    run.run_to(t + FLAP_FOR)
    during = run.changes_since_mark()
    _finish(run, t + FLAP_FOR + TAIL)
    return run.summary(
        "flap",
        conv,
        fault=f"flap {a}-{b} every {FLAP_PERIOD:g} s for {FLAP_FOR:g} s",
        fault_at=t,
        route_changes=run.changes_since_mark(),
        details={
            "link": f"{a}-{b}",
            "paths_before": paths_before,
            "route_changes_during_flap": during,
        },
    )


def _degrade(run: _Run) -> SimSummary:
    started = _link_fault(run, "degrade")
    if isinstance(started, SimSummary):
        return started
    conv, t, busy = started
    link, paths_before = busy
    a, b = link
    lo, hi = DEGRADE_LOSS
    step = DEGRADE_FOR / DEGRADE_STEPS
    for i in range(DEGRADE_STEPS):
        run.at(t + i * step, degrade(a, b, loss=lo + (hi - lo) * i / (DEGRADE_STEPS - 1)))
    cut_at = t + DEGRADE_FOR
    run.at(cut_at, cut(a, b))
    moved: list[float] = []

    def watch_link(now: float, nodes: dict[str, MeshNode]) -> None:
        # The first sample, while the link is still up, at which no sampled path uses it.
        if moved or not t <= now < cut_at:
            return
        for p in run.sampled_paths():
            if link in {_edge(x, y) for x, y in pairwise(p)}:
                return
        moved.append(now)

    run.samplers.append(watch_link)
    run.mark_changes()
    _finish(run, cut_at + TAIL)
    return run.summary(
        "degrade",
        conv,
        fault=(f"degrade {a}-{b} loss {lo:g}->{hi:g} over {DEGRADE_FOR:g} s, then cut"),
        fault_at=t,
        route_changes=run.changes_since_mark(),
        details={
            "link": f"{a}-{b}",
            "paths_before": paths_before,
            "moved_off_at": moved[0] if moved else None,
            "cut_at": cut_at,
        },
    )


_RUNNERS: Final[dict[str, Callable[[_Run], SimSummary]]] = {
    "converge": _converge,
    "relay-kill": _relay_kill,
    "partition": _partition,
    "flap": _flap,
    "degrade": _degrade,
    "diamond": _diamond,
}


def run_scenario(
    name: str,
    *,
    nodes: int,
    seed: int,
    until: float | None = None,
    observers: Observers | None = None,
    topology: str = "random-geometric",
    degree: float | None = None,
    loss: float = 0.0,
    jitter: float = 0.0,
    flows: int = 0,
) -> SimSummary:
    """Run scenario ``name`` (one of :data:`SCENARIOS`) on a mesh of ``nodes`` nodes of
    kind ``topology`` (one of :data:`TOPOLOGY_KINDS`, built by
    :func:`~.topology.build_topology` with ``degree``; ``diamond`` ignores both: it
    always has four nodes). Every link loses ``loss`` of its datagrams and delays each by
    up to ``jitter`` seconds more. ``flows`` constant-rate flows (:data:`FLOW_RATE` pps)
    between sampled pairs run from convergence to the end. ``observers`` (on each
    finished HealingEvent, on each MAPE-K cycle's phase durations) reach every node's
    healing loop."""
    fn = _RUNNERS.get(name)
    if fn is None:
        raise SimError(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
    if until is not None and not until > 0:
        raise SimError(f"until must be > 0, got {until!r}")
    if not 0.0 <= loss < 1.0:
        raise SimError(f"loss must be in [0, 1), got {loss!r}")
    if not (math.isfinite(jitter) and jitter >= 0.0):
        raise SimError(f"jitter must be a finite number >= 0, got {jitter!r}")
    if flows < 0:
        raise SimError(f"flows must be >= 0, got {flows!r}")
    if name == "diamond":
        topo = diamond()
        kind = "diamond"
    else:
        if nodes < 2:
            raise SimError(f"scenario {name!r} needs at least 2 nodes, got {nodes}")
        topo = build_topology(topology, nodes, seed, degree=degree)
        kind = topology
    run = _Run(
        topo,
        seed,
        until=until,
        observers=observers,
        # None keeps each link as built: the default run is exactly what it always was.
        loss=loss or None,
        jitter=jitter or None,
        flows=flows,
        kind=kind,
    )
    return fn(run)


# -- benchmark helpers ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FailoverStats:
    """Repeated random relay kills in one mesh (see :func:`failover_stats`).

    ``samples[i]`` is the failover time of kill ``i`` (``inf``: not within
    :data:`RECOVERY_LIMIT`); ``relays[i]`` the node killed, ``affected[i]`` how many
    sampled pairs it cut; ``reconverge_s[i]`` how long full convergence took after its
    restart (None: not within :data:`RECONVERGE_LIMIT`, and the next kill went ahead).
    """

    nodes: int
    seed: int
    samples: list[float]
    relays: list[str]
    affected: list[int]
    reconverge_s: list[float | None]


def failover_stats(
    nodes: int = 100,
    kills: int = 100,
    seed: int = 0,
    *,
    settle: float = SETTLE,
) -> FailoverStats:
    """``kills`` random relay kills in one random geometric mesh of ``nodes`` nodes.

    Each round: let the mesh settle ``settle`` seconds; pick a random node that relays at
    least one sampled path whose ends stay connected without it; kill it; time until
    every such pair is reachable again (checked every :data:`RECOVERY_CHECK` s, looking
    only at the pairs still broken); restart it; wait for full re-convergence (checked
    every :data:`CONVERGE_CHECK` s, at most :data:`RECONVERGE_LIMIT` s); next round.
    """
    run = _Run(build_topology("random-geometric", nodes, seed), seed, reach_every=None)
    run.wait_converged()
    rng = derive_rng(seed, "failover")
    samples: list[float] = []
    relays: list[str] = []
    affected_n: list[int] = []
    reconverge: list[float | None] = []
    for _ in range(kills):
        run.run_to(run.now + settle)
        paths = run.sampled_paths()
        candidates = sorted(_relay_load(paths))
        rng.shuffle(candidates)
        relay: str | None = None
        affected: list[tuple[str, str]] = []
        for c in candidates:
            affected = run.affected_by(c, paths)
            if affected:
                relay = c
                break
        if relay is None:
            break  # nothing relays a path that could move: no failover to measure
        t = run.now
        run.at(t, kill(relay))
        rec = run.wait_reachable(affected, t)
        samples.append(math.inf if rec is None else rec)
        relays.append(relay)
        affected_n.append(len(affected))
        t_restart = run.now
        run.at(t_restart, restart(relay))
        back = run.wait_converged(limit=RECONVERGE_LIMIT)
        reconverge.append(None if back is None else back - t_restart)
    return FailoverStats(nodes, seed, samples, relays, affected_n, reconverge)


def failover_samples(
    nodes: int = 100,
    kills: int = 100,
    seed: int = 0,
    *,
    settle: float = SETTLE,
) -> list[float]:
    """Failover times (virtual seconds) of ``kills`` random relay kills in one mesh;
    :func:`failover_stats` has the details (which relays, re-convergence)."""
    return failover_stats(nodes, kills, seed, settle=settle).samples


@dataclass(frozen=True, slots=True)
class ConvergenceStats:
    """One cold-started random mesh run for ``duration`` virtual seconds.

    ``converge_s`` is ``inf`` if it never converged. ``steady_bytes_per_node_s`` is the
    control traffic from ``steady_from`` (convergence + 5 s) to the end, per node per
    second; ``total_bytes_per_node_s`` covers the whole run, start-up handshakes included.
    ``wall_s`` is the wall-clock time of the run (certificate issuance excluded).
    ``loss`` and ``jitter`` were set on every link.
    """

    nodes: int
    seed: int
    duration: float
    converge_s: float
    steady_from: float
    steady_bytes_per_node_s: float
    total_bytes_per_node_s: float
    wall_s: float
    loss: float = 0.0
    jitter: float = 0.0


def convergence_stats(
    nodes: int, seed: int, duration: float = 60.0, *, loss: float = 0.0, jitter: float = 0.0
) -> ConvergenceStats:
    """See :class:`ConvergenceStats`. If the steady window (convergence + 5 s to the
    end) would be shorter than 10 s, or the mesh never converges, it is the last 10 s."""
    if duration <= 10.0:
        raise SimError(f"duration must be > 10 s, got {duration!r}")
    run = _Run(
        build_topology("random-geometric", nodes, seed),
        seed,
        until=duration,
        reach_every=None,
        loss=loss or None,
        jitter=jitter or None,
    )
    conv = run.wait_converged(limit=duration)
    steady_from = duration - 10.0
    if conv is not None:
        steady_from = min(conv + 5.0, steady_from)
    run.run_to(steady_from)
    at_steady = run.control_bytes()
    run.run_to(duration)
    wall = time.perf_counter() - run.wall0
    total = run.control_bytes()
    return ConvergenceStats(
        nodes=nodes,
        seed=seed,
        duration=duration,
        converge_s=math.inf if conv is None else conv,
        steady_from=steady_from,
        steady_bytes_per_node_s=(total - at_steady) / nodes / (duration - steady_from),
        total_bytes_per_node_s=total / nodes / duration,
        wall_s=wall,
        loss=loss,
        jitter=jitter,
    )


def convergence(nodes: int, seed: int) -> tuple[float, float, float]:
    """``(converge_s, control_bytes_per_node_s, wall_s_per_60s)`` of a 60 s random mesh.

    The control traffic is the *steady* figure: bytes sent by all nodes from convergence
    + 5 s to 60 s, per node per second (the whole-run figure, start-up included, is in
    :func:`convergence_stats`). Wall time is for the 60 virtual seconds.
    """
    s = convergence_stats(nodes, seed, 60.0)
    return s.converge_s, s.steady_bytes_per_node_s, s.wall_s
