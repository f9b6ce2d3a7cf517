"""Scripted fault scenarios over a topology.

    result = (
        Scenario(diamond(), seed=7, node_factory=make_node)
        .at(5.0, kill("b"))
        .at(9.0, restart("b"))
        .at(12.0, partition([{"a", "b"}, {"c", "d"}]))
        .at(15.0, heal())
        .run(until=30.0)
    )
    result.faults  # when each fault began: MTTD is measured from these

Each action is a small frozen dataclass with ``apply(sim)``, run as a simulator event at
its time; actions at the same time run in the order they were added. :func:`schedule`
puts actions on a simulator that is already running: it is how ``Scenario.build`` installs
its script, and how ``runner`` scripts faults it can only choose mid-run (the busiest
relay, the busiest link), so every fault in the simulator is one of these actions.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from .engine import NodeFactory, Simulator
from .topology import Topology
from .trace import Trace
from .types import SimError

__all__ = [
    "AppSendAction",
    "Cut",
    "Degrade",
    "FaultRecord",
    "Flap",
    "Heal",
    "Kill",
    "Partition",
    "Restart",
    "Restore",
    "Scenario",
    "ScenarioAction",
    "ScenarioResult",
    "app_send",
    "cut",
    "degrade",
    "flap",
    "heal",
    "kill",
    "partition",
    "restart",
    "restore",
    "schedule",
]


class ScenarioAction(Protocol):
    def apply(self, sim: Simulator) -> None: ...


@dataclass(frozen=True, slots=True)
class Kill:
    node: str

    def apply(self, sim: Simulator) -> None:
        sim.crash(self.node)


@dataclass(frozen=True, slots=True)
class Restart:
    node: str

    def apply(self, sim: Simulator) -> None:
        sim.restart(self.node)


@dataclass(frozen=True, slots=True)
class Cut:
    a: str
    b: str

    def apply(self, sim: Simulator) -> None:
        sim.net.set_up(self.a, self.b, False)


@dataclass(frozen=True, slots=True)
class Restore:
    a: str
    b: str

    def apply(self, sim: Simulator) -> None:
        sim.net.set_up(self.a, self.b, True)


@dataclass(frozen=True, slots=True)
class Partition:
    groups: tuple[frozenset[str], ...]

    def apply(self, sim: Simulator) -> None:
        sim.net.partition(self.groups)


@dataclass(frozen=True, slots=True)
class Heal:
    def apply(self, sim: Simulator) -> None:
        sim.net.heal()


@dataclass(frozen=True, slots=True)
class Flap:
    a: str
    b: str
    period: float
    until: float
    down_for: float | None = None

    def apply(self, sim: Simulator) -> None:
        sim.net.flap(self.a, self.b, period=self.period, until=self.until, down_for=self.down_for)


@dataclass(frozen=True, slots=True)
class Degrade:
    """Set link parameters; ``None`` keeps the current value."""

    a: str
    b: str
    latency: float | None = None
    jitter: float | None = None
    loss: float | None = None
    capacity: float | None = None
    mtu: int | None = None
    both: bool = True
    dup: float | None = None

    def apply(self, sim: Simulator) -> None:
        sim.net.degrade(
            self.a,
            self.b,
            latency=self.latency,
            jitter=self.jitter,
            loss=self.loss,
            capacity=self.capacity,
            mtu=self.mtu,
            dup=self.dup,
            both=self.both,
        )


@dataclass(frozen=True, slots=True)
class AppSendAction:
    src: str
    dst: str
    port: int
    payload: bytes

    def apply(self, sim: Simulator) -> None:
        sim.send_app(sim.now, self.src, self.dst, self.port, self.payload)


def kill(node: str) -> Kill:
    """Crash ``node``: state, timers and packets in flight to it are lost."""
    return Kill(node)


def restart(node: str) -> Restart:
    """Start a fresh core for a crashed ``node``."""
    return Restart(node)


def cut(a: str, b: str) -> Cut:
    """Take the ``a``-``b`` link down."""
    return Cut(a, b)


def restore(a: str, b: str) -> Restore:
    """Bring the ``a``-``b`` link back up."""
    return Restore(a, b)


def partition(groups: Iterable[Iterable[str]]) -> Partition:
    """Split the network; nodes not listed form one more group."""
    return Partition(tuple(frozenset(g) for g in groups))


def heal() -> Heal:
    """End the partition."""
    return Heal()


def flap(a: str, b: str, *, period: float, until: float, down_for: float | None = None) -> Flap:
    """Link down for ``down_for`` (default period/2) every ``period`` until ``until``."""
    return Flap(a, b, period, until, down_for)


def degrade(
    a: str,
    b: str,
    *,
    latency: float | None = None,
    jitter: float | None = None,
    loss: float | None = None,
    capacity: float | None = None,
    mtu: int | None = None,
    both: bool = True,
    dup: float | None = None,
) -> Degrade:
    """Worsen (or improve) the ``a``-``b`` link."""
    return Degrade(a, b, latency, jitter, loss, capacity, mtu, both, dup)


def app_send(src: str, dst: str, port: int, payload: bytes) -> AppSendAction:
    """The application on ``src`` sends ``payload`` to node ``dst`` on ``port``."""
    return AppSendAction(src, dst, port, payload)


def schedule(sim: Simulator, t: float, *actions: ScenarioAction) -> None:
    """Run each of ``actions`` as its own simulator event at ``t`` (in the order given)."""
    for a in actions:
        sim.schedule(t, _checked(a).apply)


def _checked(action: ScenarioAction) -> ScenarioAction:
    # Scripts are often built from data; fail when scripted, not mid-run.
    if not callable(getattr(action, "apply", None)):
        raise SimError(f"scenario action needs an apply(sim) method: {action!r}")
    return action


# Engine record kinds that start a fault, and those that end one.
FAULT_KINDS: Final = {
    "sim.crash": "crash",
    "sim.link_down": "link_down",
    "sim.partition": "partition",
    "sim.degrade": "degrade",
}
REPAIR_KINDS: Final = {"sim.restart": "restart", "sim.link_up": "link_up", "sim.heal": "heal"}


@dataclass(frozen=True, slots=True)
class FaultRecord:
    """A fault (or repair) as it happened: ``t`` is when it took effect."""

    t: float
    kind: str
    node: str
    fields: dict[str, Any] = field(default_factory=dict)


def _records(trace: Trace, kinds: dict[str, str]) -> list[FaultRecord]:
    return [FaultRecord(t, kinds[k], node, f) for t, node, k, f in trace.records if k in kinds]


@dataclass
class ScenarioResult:
    sim: Simulator
    until: float
    faults: list[FaultRecord]
    """Every fault start, from the trace: crashes, link downs (cuts and each flap),
    partitions, degradations."""
    repairs: list[FaultRecord]

    @property
    def trace(self) -> Trace:
        return self.sim.trace

    @functools.cached_property
    def digest(self) -> str:
        return self.sim.trace.digest()


class Scenario:
    """A topology, a seed, a node factory and a timed script of actions."""

    def __init__(
        self,
        topology: Topology,
        seed: int,
        node_factory: NodeFactory,
        *,
        trace_drops: bool = True,
    ) -> None:
        self.topology = topology
        self.seed = seed
        self.node_factory = node_factory
        self.trace_drops = trace_drops
        self._script: list[tuple[float, ScenarioAction]] = []

    def at(self, t: float, *actions: ScenarioAction) -> Scenario:
        """Run ``actions`` at virtual time ``t``; returns ``self`` for chaining."""
        if not t >= 0:
            raise SimError(f"scenario time must be >= 0, got {t!r}")
        for a in actions:
            self._script.append((t, _checked(a)))
        return self

    @property
    def script(self) -> list[tuple[float, ScenarioAction]]:
        return list(self._script)

    def build(self) -> Simulator:
        """A fresh simulator with the topology installed and the script scheduled."""
        sim = Simulator(self.seed, trace_drops=self.trace_drops)
        sim.add_topology(self.topology, self.node_factory)
        for t, action in self._script:
            schedule(sim, t, action)
        return sim

    def run(self, until: float) -> ScenarioResult:
        """Build and run to ``until``; each call starts from scratch, so reruns are identical."""
        sim = self.build()
        sim.run(until)
        return ScenarioResult(
            sim=sim,
            until=until,
            faults=_records(sim.trace, FAULT_KINDS),
            repairs=_records(sim.trace, REPAIR_KINDS),
        )
