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

Periodic checks go on the clock with ``Scenario.every(interval, fn)`` (or :func:`every` on
a running simulator); ``random_flaps(links, rate, until=...)`` is an action that flaps
links at random (seeded) times.

Each action is a small frozen dataclass with ``apply(sim)``, run as a simulator event at
its time; actions at the same time run in the order they were added. :func:`schedule`
puts actions on a simulator that is already running: it is how ``Scenario.build`` installs
its script, and how ``runner`` scripts faults it can only choose mid-run (the busiest
relay, the busiest link), so every fault in the simulator is one of these actions.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from .engine import NodeFactory, Simulator
from .topology import Topology
from .trace import Trace
from .types import SimError, derive_rng

__all__ = [
    "AppSendAction",
    "Cut",
    "Degrade",
    "FaultRecord",
    "Flap",
    "Heal",
    "Kill",
    "Partition",
    "RandomFlaps",
    "Restart",
    "Restore",
    "Scenario",
    "ScenarioAction",
    "ScenarioResult",
    "app_send",
    "cut",
    "degrade",
    "every",
    "flap",
    "heal",
    "kill",
    "partition",
    "random_flaps",
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


MAX_FLAPS_PER_LINK: Final = 10_000
"""Bound on the flaps one link gets from one :class:`RandomFlaps` (a guard, not a knob)."""


@dataclass(frozen=True, slots=True)
class RandomFlaps:
    """Each of ``links`` (every link when empty) fails at random: up for an exponential
    time of mean ``1 / rate`` seconds, then down for a time uniform in ``down_for``,
    again and again until ``until``, where it is left up.

    The script is drawn when the action runs, from the simulator's seed, the link and
    the start time, so one seed gives one script; each down and up is a scheduled event
    recorded like any cut (``sim.link_down`` / ``sim.link_up``).
    """

    links: tuple[tuple[str, str], ...]
    rate: float
    until: float
    down_for: tuple[float, float] = (0.2, 2.0)

    def apply(self, sim: Simulator) -> None:
        start = sim.now
        for a, b in self.links or tuple(sim.net.links()):
            sim.net.link(a, b)  # unknown links fail now, not mid-script
            rng = derive_rng(sim.seed, "random_flaps", a, b, repr(start))
            lo, hi = self.down_for
            t = start + rng.expovariate(self.rate)
            for _ in range(MAX_FLAPS_PER_LINK):
                if t >= self.until:
                    break
                back = min(t + rng.uniform(lo, hi), self.until)
                sim.schedule(t, Cut(a, b).apply)
                sim.schedule(back, Restore(a, b).apply)
                t = back + rng.expovariate(self.rate)


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


def random_flaps(
    links: Iterable[tuple[str, str]] | None,
    rate: float,
    *,
    until: float,
    down_for: tuple[float, float] = (0.2, 2.0),
) -> RandomFlaps:
    """Flap ``links`` (``None``: every link) at random, ``rate`` failures per link per
    second on average, each down for ``U(down_for)`` seconds, until ``until``."""
    lo, hi = down_for
    if not (rate > 0 and math.isfinite(rate)):
        raise SimError(f"random_flaps: rate must be a finite number > 0, got {rate!r}")
    if not (0 < lo <= hi and math.isfinite(hi)):
        raise SimError(f"random_flaps: need 0 < down_for[0] <= down_for[1], got {down_for!r}")
    if not math.isfinite(until):
        raise SimError(f"random_flaps: until must be finite, got {until!r}")
    return RandomFlaps(tuple((a, b) for a, b in links or ()), rate, until, (lo, hi))


def app_send(src: str, dst: str, port: int, payload: bytes) -> AppSendAction:
    """The application on ``src`` sends ``payload`` to node ``dst`` on ``port``."""
    return AppSendAction(src, dst, port, payload)


def schedule(sim: Simulator, t: float, *actions: ScenarioAction) -> None:
    """Run each of ``actions`` as its own simulator event at ``t`` (in the order given)."""
    for a in actions:
        sim.schedule(t, _checked(a).apply)


def every(
    sim: Simulator,
    interval: float,
    fn: Callable[[Simulator], object],
    *,
    start: float | None = None,
    until: float | None = None,
) -> None:
    """Call ``fn(sim)`` at ``start`` (default now) and every ``interval`` after, up to and
    including ``until`` (default: for as long as the simulator runs).

    One call is pending at a time, so an open-ended check costs one heap entry; times
    are ``start + k * interval``, so they do not drift.
    """
    _check_interval(interval)
    t0 = sim.now if start is None else start
    end = math.inf if until is None else until

    def tick(s: Simulator, k: int = 0) -> None:
        fn(s)
        nxt = t0 + (k + 1) * interval
        if nxt <= end:
            s.schedule(nxt, lambda s2: tick(s2, k + 1))

    if t0 <= end:
        sim.schedule(t0, tick)


def _check_interval(interval: float) -> None:
    if not (interval > 0 and math.isfinite(interval)):
        raise SimError(f"every: interval must be a finite number > 0, got {interval!r}")


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
        self._checks: list[tuple[float, Callable[[Simulator], object], float, float | None]] = []

    def at(self, t: float, *actions: ScenarioAction) -> Scenario:
        """Run ``actions`` at virtual time ``t``; returns ``self`` for chaining."""
        if not t >= 0:
            raise SimError(f"scenario time must be >= 0, got {t!r}")
        for a in actions:
            self._script.append((t, _checked(a)))
        return self

    def every(
        self,
        interval: float,
        fn: Callable[[Simulator], object],
        *,
        start: float = 0.0,
        until: float | None = None,
    ) -> Scenario:
        """Call ``fn(sim)`` at ``start`` and every ``interval`` after (see :func:`every`):
        probes, invariant checks, samplers. Returns ``self`` for chaining."""
        _check_interval(interval)
        if not start >= 0:
            raise SimError(f"every: start must be >= 0, got {start!r}")
        self._checks.append((interval, fn, start, until))
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
        for interval, fn, start, until in self._checks:
            every(sim, interval, fn, start=start, until=until)
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
