"""User outage from ground truth: per fault, how long the flows it hit got nothing.

The simulator knows when each fault took effect (its ``sim.*`` record) and, through
flows, when traffic actually arrived. When a fault is recorded, :class:`OutageTracker`
walks every active flow's routing path (the routing view of that instant: no node has
reacted yet) and keeps the flows whose path crosses what failed:

* ``crash`` of X: X relays the flow (a flow from or to X is *lost*, not affected);
* ``link_down`` / ``degrade`` of a-b: the path uses a-b;
* ``partition``: the path crosses the new boundary, or the ends are on two sides;

and that were flowing: a flow that had delivered nothing for :data:`~.flows.GAP_PACKETS`
send intervals was already in an outage, which is not this fault's (``already_down``).

A flow's user outage is then fault time -> first delivery of a packet it sent at or after
the fault (:meth:`Flow.first_delivery_after`): what a user of that flow would see,
whatever the healing layer believes. Its resolution is the flow's send interval.

Beside it, :meth:`OutageTracker.report` puts the healing layer's own account of the fault:
the :class:`HealingEvent`\\ s its nodes reported about the failed element (MTTD, MTTR,
outcome), so the two can be compared. A flapping-link incident is about a series of
faults, not one, and is in no fault's account (``MeshRun.healing_events`` has it).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Final

from x0tta6bl4.healing import FaultKind, HealingEvent

from .engine import Simulator
from .flows import GAP_PACKETS, Flow, FlowSet
from .meshsim import meshes, route_path
from .scenario import FAULT_KINDS, REPAIR_KINDS, FaultRecord

__all__ = ["FaultOutage", "FlowOutage", "OutageTracker", "fault_target"]

_EPS: Final = 1e-9


@dataclass(frozen=True, slots=True)
class FlowOutage:
    """One flow hit by one fault.

    ``hops`` is its routing path when the fault struck; ``last_before`` its last delivery
    before the fault; ``recovered_at`` the delivery time of the first packet sent at or
    after the fault, and ``outage_s = recovered_at - fault time`` (None for both: nothing
    got through by the end of the run or of the flow).
    """

    flow: int
    src: str
    dst: str
    hops: tuple[str, ...]
    last_before: float | None
    recovered_at: float | None
    outage_s: float | None


@dataclass(frozen=True, slots=True)
class FaultOutage:
    """One fault: the flows it hit, what they saw, and what healing reported.

    ``target`` names what failed (``n0042``, ``n0001-n0002``, ``partition``). ``lost`` are
    flows from or to a killed node; ``already_down`` flows it would have hit that had
    delivered nothing for :data:`~.flows.GAP_PACKETS` send intervals before it (already
    in an outage: not this fault's). ``healing`` are the ``(node, HealingEvent)`` pairs
    about this fault: detected at or after it and before it was over (the target's
    restart, link up or heal, or its next fault), by a node next to the failed element
    (any node, for a partition).
    """

    fault: FaultRecord
    target: str
    affected: tuple[FlowOutage, ...]
    lost: tuple[int, ...]
    healing: tuple[tuple[str, HealingEvent], ...]
    already_down: tuple[int, ...] = ()

    @property
    def t(self) -> float:
        return self.fault.t

    @property
    def outages(self) -> list[float]:
        """Outage of every affected flow, ``inf`` for one that never recovered."""
        return [math.inf if f.outage_s is None else f.outage_s for f in self.affected]

    @property
    def unrecovered(self) -> int:
        return sum(1 for f in self.affected if f.outage_s is None)

    @property
    def outage_max(self) -> float | None:
        """The worst affected flow's outage (``inf`` if one never recovered); None if the
        fault hit no flow."""
        o = self.outages
        return max(o) if o else None

    @property
    def outage_median(self) -> float | None:
        o = self.outages
        return statistics.median(o) if o else None

    @property
    def mttd_max(self) -> float | None:
        return _max(e.mttd for _, e in self.healing)

    @property
    def mttr_max(self) -> float | None:
        return _max(e.mttr for _, e in self.healing)

    @property
    def mttr_median(self) -> float | None:
        v = [m for _, e in self.healing if (m := e.mttr) is not None]
        return statistics.median(v) if v else None

    def as_dict(self) -> dict[str, Any]:
        """Flat, JSON-able figures (benchmark details, reports)."""
        return {
            "t": self.t,
            "kind": self.fault.kind,
            "target": self.target,
            "affected": len(self.affected),
            "lost": len(self.lost),
            "already_down": len(self.already_down),
            "unrecovered": self.unrecovered,
            "outage_max_s": self.outage_max,
            "outage_median_s": self.outage_median,
            "healing_events": len(self.healing),
            "mttd_max_s": self.mttd_max,
            "mttr_max_s": self.mttr_max,
            "mttr_median_s": self.mttr_median,
            "healing_outcomes": sorted({str(e.outcome) for _, e in self.healing}),
        }


def _max(values: Iterable[float | None]) -> float | None:
    v = [x for x in values if x is not None]
    return max(v) if v else None


def fault_target(fault: FaultRecord) -> str:
    """What a fault (or its repair) hit, as one name: the node, ``a-b`` for a link (as
    the trace names it), or ``partition``."""
    if fault.kind in ("crash", "restart"):
        return fault.node
    if fault.kind in ("link_down", "link_up", "degrade"):
        return f"{fault.node}-{fault.fields['peer']}"
    return "partition" if fault.kind in ("partition", "heal") else fault.kind


@dataclass(frozen=True, slots=True)
class _Struck:
    fault: FaultRecord
    affected: tuple[tuple[Flow, tuple[str, ...], float | None], ...]
    lost: tuple[int, ...]
    already_down: tuple[int, ...]


class OutageTracker:
    """Watches a simulator's fault records and notes, at each, the flows it hits.

    Installed by ``MeshRun`` with its first flow; every ``sim.*`` fault record after that
    costs one routing walk per active flow.
    """

    def __init__(self, sim: Simulator, flows: FlowSet) -> None:
        self.sim = sim
        self.flows = flows
        self.struck: list[_Struck] = []
        self.repairs: list[FaultRecord] = []
        sim.on_record.append(self._on_record)

    def _on_record(self, t: float, node: str, kind: str, fields: dict[str, Any]) -> None:
        fkind = FAULT_KINDS.get(kind)
        if fkind is None:
            rkind = REPAIR_KINDS.get(kind)
            if rkind is not None:  # bounds which healing events are about a fault
                self.repairs.append(FaultRecord(t, rkind, node, fields))
            return
        fault = FaultRecord(t, fkind, node, fields)
        nodes = meshes(self.sim)
        affected: list[tuple[Flow, tuple[str, ...], float | None]] = []
        lost: list[int] = []
        down: list[int] = []
        for flow in self.flows:
            if not (flow.start <= t < flow.stop) or not flow.arrivals:
                continue  # not carrying traffic yet (or any more): nothing to interrupt
            if fkind == "crash" and node in (flow.src, flow.dst):
                lost.append(flow.id)
                continue
            hops = route_path(nodes, flow.src, flow.dst).hops
            if not _hits(fault, flow, hops):
                continue
            last = next(reversed(flow.arrivals.values()))  # delivery order
            if t - last > GAP_PACKETS * flow.interval:
                # Already in an outage (an earlier fault's, or its own trouble): this
                # fault did not interrupt it, so its gap is not this fault's to report.
                down.append(flow.id)
            else:
                affected.append((flow, hops, last))
        self.struck.append(_Struck(fault, tuple(affected), tuple(lost), tuple(down)))

    def report(self, healing_events: Sequence[tuple[str, HealingEvent]]) -> list[FaultOutage]:
        """Every fault seen so far, with each affected flow's outage as of now."""
        out: list[FaultOutage] = []
        for i, s in enumerate(self.struck):
            t = s.fault.t
            flows: list[FlowOutage] = []
            for flow, hops, last in s.affected:
                first = flow.first_delivery_after(t)
                at = None if first is None else first[0]
                outage = None if at is None else at - t
                flows.append(FlowOutage(flow.id, flow.src, flow.dst, hops, last, at, outage))
            target = fault_target(s.fault)
            # Healing events about this fault are detected before it is over: before the
            # next fault on the same target and before the target is repaired.
            later = [
                x.fault.t
                for x in self.struck[i + 1 :]
                if x.fault.t > t and fault_target(x.fault) == target
            ]
            later += [r.t for r in self.repairs if r.t > t and fault_target(r) == target]
            horizon = min(later, default=math.inf)
            healing = tuple(
                (n, e)
                for n, e in healing_events
                if t - _EPS <= e.detected_at < horizon and _about(s.fault, n, e)
            )
            out.append(FaultOutage(s.fault, target, tuple(flows), s.lost, healing, s.already_down))
        return out


def _hits(fault: FaultRecord, flow: Flow, hops: tuple[str, ...]) -> bool:
    kind = fault.kind
    if kind == "crash":
        return fault.node in hops[1:]  # the walk stops at the dead node
    if kind in ("link_down", "degrade"):
        link = {fault.node, fault.fields["peer"]}
        return any({x, y} == link for x, y in pairwise(hops))
    if kind == "partition":
        group = _groups(fault.fields["groups"])  # unlisted nodes: one more group, -1
        if group.get(flow.src, -1) != group.get(flow.dst, -1):
            return True
        return any(group.get(x, -1) != group.get(y, -1) for x, y in pairwise(hops))
    return False


def _groups(groups: Iterable[Iterable[str]]) -> Mapping[str, int]:
    return {n: i for i, g in enumerate(groups) for n in g}


def _about(fault: FaultRecord, node: str, e: HealingEvent) -> bool:
    """Whether healing event ``e`` reported by ``node`` is about ``fault``."""
    if e.kind == FaultKind.FLAPPING_LINK:
        # About a series of outages (dated from the first, held until the damping
        # ends), reported on its own: no one fault's account.
        return False
    kind = fault.kind
    if kind == "crash":
        return e.subject == fault.node
    if kind in ("link_down", "degrade"):
        return {node, e.subject} == {fault.node, fault.fields["peer"]}
    return True  # a partition: every node that lost someone reports it
