"""A real mesh in the simulator, ready to use: :func:`build_mesh` and :class:`MeshRun`.

    run = build_mesh(random_geometric(30, seed=1), seed=1, loss=0.02, jitter=0.005)
    run.wait_converged()
    flow = run.add_flow("n0001", "n0020", rate_pps=20)
    run.at(run.now + 2.0, kill(run.route("n0001", "n0020").hops[1]))
    run.run(run.now + 10.0)
    run.flow_stats(), run.user_outages(), run.healing_events

Every node is a ``HealingNode(MeshNode)`` (or a bare ``MeshNode`` without healing) with
real certificates and the real handshake (``meshsim``). The pieces stay available for
finer control: ``run.sim`` is the :class:`Simulator`, ``run.mesh`` the ``MeshSim`` that
collects healing events, ``run.flows`` the :class:`FlowSet`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from x0tta6bl4.healing import HealingConfig, HealingEvent
from x0tta6bl4.mesh.node import MeshConfig, MeshNode, node_id

from .engine import Simulator
from .flows import Flow, FlowSet, FlowStats
from .meshsim import MeshSim, build_world, mesh_of, meshes, route_path, trace_path
from .outage import FaultOutage, OutageTracker
from .scenario import (
    FAULT_KINDS,
    FaultRecord,
    Scenario,
    ScenarioAction,
    _records,
    every,
    schedule,
)
from .topology import Topology
from .types import LinkSpec, PathResult, SimError

__all__ = ["MeshRun", "build_mesh"]


class MeshRun:
    """A simulator running a mesh of real nodes, with global probes only the simulator
    can take (paths, convergence), constant-rate flows and the user outage of faults."""

    def __init__(self, sim: Simulator, mesh: MeshSim, *, trace_deliveries: bool = False) -> None:
        self.sim = sim
        self.mesh = mesh
        self.topology = mesh.topology
        self.flows = FlowSet(sim, trace=trace_deliveries)
        self._tracker: OutageTracker | None = None
        self._cursor = 0

    # -- time and faults ------------------------------------------------------------------

    @property
    def seed(self) -> int:
        return self.sim.seed

    @property
    def now(self) -> float:
        return self.sim.now

    def run(self, until: float) -> MeshRun:
        """Run the simulator to virtual time ``until``."""
        self.sim.run(until)
        return self

    def run_for(self, seconds: float) -> MeshRun:
        return self.run(self.sim.now + seconds)

    def at(self, t: float, *actions: ScenarioAction) -> MeshRun:
        """Scenario ``actions`` (``kill``, ``cut``, ``partition``, ``random_flaps``, ...)
        at virtual time ``t`` (not in the past); they run when the simulator gets there."""
        schedule(self.sim, t, *actions)
        return self

    def every(
        self,
        interval: float,
        fn: Callable[[MeshRun], object],
        *,
        start: float | None = None,
        until: float | None = None,
    ) -> MeshRun:
        """Call ``fn(run)`` at ``start`` (default now) and every ``interval`` after, up to
        ``until`` (default: as long as the run goes): probes and invariant checks."""
        every(self.sim, interval, lambda _sim: fn(self), start=start, until=until)
        return self

    def faults(self) -> list[FaultRecord]:
        """Every fault so far, from the trace (crashes, link downs, partitions, degrades)."""
        return _records(self.sim.trace, FAULT_KINDS)

    # -- nodes and paths -------------------------------------------------------------------

    def nodes(self) -> dict[str, MeshNode]:
        """The running mesh nodes by name (a crashed node is absent)."""
        return meshes(self.sim)

    def node(self, name: str) -> MeshNode | None:
        return mesh_of(self.sim.core(name))

    def path(self, src: str, dst: str) -> PathResult:
        """Where a packet from ``src`` to ``dst`` goes now (links and partitions checked)."""
        return trace_path(self.sim, src, dst)

    def route(self, src: str, dst: str) -> PathResult:
        """The routing view of ``src -> dst`` (next hops only, links not checked)."""
        return route_path(self.nodes(), src, dst)

    def paths(self, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], PathResult]:
        """:meth:`path` of every pair, at this instant."""
        nodes = self.nodes()
        return {(a, b): trace_path(self.sim, a, b, nodes) for a, b in pairs}

    def reachability(self, pairs: Iterable[tuple[str, str]]) -> float:
        """Fraction of ``pairs`` with both ends running whose packets would arrive now
        (1.0 when no such pair)."""
        nodes = self.nodes()
        live = [(a, b) for a, b in pairs if a in nodes and b in nodes]
        ok = sum(1 for a, b in live if trace_path(self.sim, a, b, nodes).ok)
        return ok / len(live) if live else 1.0

    def converged(self) -> bool:
        """Every running node has a route to every other running node.

        Short-circuits at the first node that lacks one and starts the next call there,
        so a check while the mesh is still converging costs one node's table.
        """
        nodes = self.nodes()
        names = list(nodes)
        n = len(names)
        want = n - 1
        ids: set[bytes] | None = None
        start = self._cursor % n if n else 0
        for k in range(n):
            i = (start + k) % n
            sel = nodes[names[i]].router.selected()
            ok = len(sel) >= want
            if ok and len(sel) > want:
                # Routes to dead nodes linger until they expire: count live ones only.
                if ids is None:
                    ids = {node_id(x) for x in names}
                ok = sum(1 for d in sel if d in ids) >= want
            if not ok:
                self._cursor = i
                return False
        return True

    def wait_converged(self, limit: float = 60.0, step: float = 0.1) -> float | None:
        """Run in ``step`` increments until :meth:`converged`, at most ``limit`` seconds;
        the time it happened (a multiple of ``step`` after now), or None."""
        if not (step > 0 and limit >= 0):
            raise SimError(f"wait_converged: need step > 0 and limit >= 0, got {step}, {limit}")
        t0 = self.sim.now
        for k in range(math.floor(limit / step + 1e-9) + 1):
            if k:
                self.sim.run(t0 + k * step)
            if self.converged():
                return self.sim.now
        return None

    # -- flows ------------------------------------------------------------------------------

    def add_flow(
        self,
        src: str,
        dst: str,
        rate_pps: float,
        size: int = 64,
        start: float | None = None,
        stop: float = math.inf,
    ) -> Flow:
        """A constant-rate flow ``src -> dst`` from ``start`` (default now) until before
        ``stop``; see :mod:`.flows`. The first flow also starts watching faults for
        :meth:`user_outages`."""
        flow = self.flows.add(src, dst, rate_pps, size=size, start=start, stop=stop)
        if self._tracker is None:
            self._tracker = OutageTracker(self.sim, self.flows)
        return flow

    def flow_stats(self, *, grace: float = 1.0, min_gap: float | None = None) -> list[FlowStats]:
        """Every flow's figures now (packets sent up to ``now - grace``)."""
        return self.flows.stats(grace=grace, min_gap=min_gap)

    def user_outages(self) -> list[FaultOutage]:
        """Every fault since the first flow was added, with the outage of each flow it
        hit (ground truth from deliveries) beside the healing events about it."""
        if self._tracker is None:
            return []
        return self._tracker.report(self.mesh.healing_events)

    # -- counters ------------------------------------------------------------------------------

    @property
    def healing_events(self) -> list[tuple[str, HealingEvent]]:
        """``(node, event)`` of every incident the nodes' healing loops closed so far."""
        return self.mesh.healing_events

    def control_bytes(self) -> int:
        """Bytes every node has sent so far (control and, with flows, application)."""
        return sum(s.sent_bytes for s in self.sim.stats.values())

    def __repr__(self) -> str:
        return (
            f"MeshRun({len(self.topology)} nodes, seed {self.seed}, t={self.now:g}, "
            f"{len(self.flows)} flows)"
        )


def build_mesh(
    topology: Topology,
    *,
    seed: int,
    healing: bool = True,
    link: LinkSpec | None = None,
    loss: float | None = None,
    jitter: float | None = None,
    mesh_config: MeshConfig | None = None,
    healing_config: HealingConfig | None = None,
    trace_drops: bool = False,
    trace_deliveries: bool = False,
    node_types: Mapping[str, type[MeshNode]] | None = None,
    on_event: Callable[[HealingEvent], None] | None = None,
    on_cycle: Callable[[Mapping[str, float]], None] | None = None,
) -> MeshRun:
    """A simulator at time 0 with a real node on every node of ``topology`` and its links.

    ``link`` replaces every link's parameters; ``loss`` and ``jitter`` then set just those
    on every link (a random geometric graph keeps its distance-based latencies).
    ``healing=False`` runs bare ``MeshNode``\\ s. ``trace_drops`` puts a record per dropped
    datagram in the trace and ``trace_deliveries`` one per flow delivery (both off: a
    big run would be mostly those). ``node_types`` builds named nodes from another
    ``MeshNode`` class; ``on_event`` / ``on_cycle`` see every node's healing events and
    MAPE-K cycles. Certificates are issued once per process per (names, seed).
    """
    changes: dict[str, Any] = {}
    if link is not None:
        changes = {f: getattr(link, f) for f in LinkSpec.__dataclass_fields__}
    if loss is not None:
        changes["loss"] = loss
    if jitter is not None:
        changes["jitter"] = jitter
    topo = topology.with_spec(**changes) if changes else topology
    mesh = MeshSim(
        build_world(topo.nodes, seed),
        topo,
        healing=healing,
        mesh_config=mesh_config,
        healing_config=healing_config,
        on_event=on_event,
        on_cycle=on_cycle,
        node_types=dict(node_types or {}),
    )
    sim = Scenario(topo, seed, mesh.factory(), trace_drops=trace_drops).build()
    return MeshRun(sim, mesh, trace_deliveries=trace_deliveries)
