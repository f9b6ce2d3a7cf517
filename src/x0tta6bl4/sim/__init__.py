"""Deterministic simulator: virtual clock, in-memory network, scripted faults.

The real mesh (``build_mesh``, ``MeshRun``, ``trace_path``, ``FaultOutage``, ...) is
imported on first use: it pulls in the whole protocol stack and its cryptography, which
a simulation of toy cores does not need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from x0tta6bl4.lazyimport import lazy_attributes

from .engine import DeliverObserver, DropObserver, NodeFactory, Simulator
from .flows import FLOW_PORT, Flow, FlowSet, FlowStats
from .network import Intercept, Link, Network, Tamper
from .scenario import (
    FaultRecord,
    Scenario,
    ScenarioAction,
    ScenarioResult,
    app_send,
    cut,
    degrade,
    every,
    flap,
    heal,
    kill,
    partition,
    random_flaps,
    restart,
    restore,
    schedule,
)
from .topology import (
    TOPOLOGY_KINDS,
    Edge,
    Topology,
    TopologyError,
    build_topology,
    diamond,
    grid,
    line,
    node_names,
    random_geometric,
    random_regular,
    ring,
)
from .trace import Trace, TraceRecord
from .types import (
    DROP_REASONS,
    LinkSpec,
    NodeStats,
    PathKind,
    PathResult,
    SimError,
    derive_rng,
    percentile,
)

if TYPE_CHECKING:
    from .meshrun import MeshRun, build_mesh
    from .meshsim import route_path, trace_path
    from .outage import FaultOutage, FlowOutage

# name -> module, imported on first access (PEP 562)
_LAZY = {
    "MeshRun": ".meshrun",
    "build_mesh": ".meshrun",
    "route_path": ".meshsim",
    "trace_path": ".meshsim",
    "FaultOutage": ".outage",
    "FlowOutage": ".outage",
}


__getattr__ = lazy_attributes(__name__, _LAZY)


__all__ = [
    "DROP_REASONS",
    "FLOW_PORT",
    "TOPOLOGY_KINDS",
    "DeliverObserver",
    "DropObserver",
    "Edge",
    "FaultOutage",
    "FaultRecord",
    "Flow",
    "FlowOutage",
    "FlowSet",
    "FlowStats",
    "Intercept",
    "Link",
    "LinkSpec",
    "MeshRun",
    "Network",
    "NodeFactory",
    "NodeStats",
    "PathKind",
    "PathResult",
    "Scenario",
    "ScenarioAction",
    "ScenarioResult",
    "SimError",
    "Simulator",
    "Tamper",
    "Topology",
    "TopologyError",
    "Trace",
    "TraceRecord",
    "app_send",
    "build_mesh",
    "build_topology",
    "cut",
    "degrade",
    "derive_rng",
    "diamond",
    "every",
    "flap",
    "grid",
    "heal",
    "kill",
    "line",
    "node_names",
    "partition",
    "percentile",
    "random_flaps",
    "random_geometric",
    "random_regular",
    "restart",
    "restore",
    "ring",
    "route_path",
    "schedule",
    "trace_path",
]
