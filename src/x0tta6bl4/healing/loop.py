"""The MAPE-K loop of one node, and the sans-IO core that runs it on a timer.

:class:`HealingLoop` does Monitor, Analyse, Plan and Execute once per ``cycle(now)``.
:class:`HealingNode` wraps a mesh node core: it forwards every input to it, runs the
loop on its own timer key ``HealingTimer.CYCLE``, runs a cycle at once when the node
reports ``LinkUp``/``LinkDown``, and adds an ``Event("healing", ...)`` action per
finished :class:`~x0tta6bl4.healing.events.HealingEvent`, so simulator traces carry
every repair with its times.
"""

from __future__ import annotations

import enum
import random
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

from x0tta6bl4.healing.analyse import analyse, track_incidents
from x0tta6bl4.healing.events import (
    FaultKind,
    Finding,
    HealingEvent,
    Outcome,
    RuntimeStats,
)
from x0tta6bl4.healing.execute import Executor
from x0tta6bl4.healing.knowledge import HealingConfig, Incident, Knowledge
from x0tta6bl4.healing.monitor import Monitor, Snapshot
from x0tta6bl4.healing.plan import plan
from x0tta6bl4.mesh.observe import HealableNode
from x0tta6bl4.sansio import (
    Action,
    Addr,
    Core,
    Datagram,
    Event,
    Input,
    LinkDown,
    LinkUp,
    SetTimer,
    Timer,
    segments,
)

PHASES: Final = ("monitor", "analyse", "plan", "execute")


class HealingLoop:
    """Monitor -> Analyse -> Plan -> Execute over shared Knowledge, once per ``cycle``.

    ``on_event`` receives every finished HealingEvent (the runtime passes the metrics
    recorder); ``on_cycle`` receives each cycle's phase durations in seconds, measured
    with ``perf_counter`` (our own CPU time, not the protocol clock).
    """

    def __init__(
        self,
        node: HealableNode,
        *,
        rng: random.Random,
        config: HealingConfig | None = None,
        on_event: Callable[[HealingEvent], None] | None = None,
        on_cycle: Callable[[Mapping[str, float]], None] | None = None,
        perf_counter: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.node = node
        self.rng = rng
        self.config = config if config is not None else HealingConfig()
        self.on_event = on_event
        self.on_cycle = on_cycle
        self.perf_counter = perf_counter
        self.knowledge = Knowledge(self.config)
        self.monitor = Monitor(self.knowledge)
        self.executor = Executor(node, self.config)
        self.last_snapshot: Snapshot | None = None
        self.last_findings: tuple[Finding, ...] = ()
        self.last_finished: tuple[HealingEvent, ...] = ()
        self.last_phase_durations: dict[str, float] = {}

    @property
    def events(self) -> tuple[HealingEvent, ...]:
        """Finished incidents, oldest first (the most recent ``event_history``)."""
        return tuple(self.knowledge.events)

    @property
    def open_incidents(self) -> tuple[Incident, ...]:
        return tuple(self.knowledge.incidents.values())

    def cycle(self, now: float, stats: RuntimeStats | None = None) -> list[Action]:
        """Run the four phases once; return the node's actions (and trace events)."""
        clock = self.perf_counter
        knowledge = self.knowledge
        t0 = clock()
        snap = self.monitor.update(self.node.observe(now), stats)
        t1 = clock()
        findings = analyse(snap, knowledge)
        was_open = dict(knowledge.incidents)
        finished = track_incidents(snap, findings, knowledge)
        t2 = clock()
        for event in finished:
            incident = was_open.get((FaultKind(event.kind), event.subject))
            if incident is None or incident.judges_actions:
                self._feedback(now, event)
        planned = plan(snap, findings, knowledge, self.rng)
        t3 = clock()
        result = self.executor.execute(now, planned)
        for action in result.executed:
            knowledge.note_executed(now, action)
        t4 = clock()

        self.last_snapshot = snap
        self.last_findings = tuple(findings)
        self.last_finished = tuple(finished)
        durations = (t1 - t0, t2 - t1, t3 - t2, t4 - t3)
        self.last_phase_durations = dict(zip(PHASES, durations, strict=True))
        if self.on_cycle is not None:
            self.on_cycle(self.last_phase_durations)
        if self.on_event is not None:
            for event in finished:
                self.on_event(event)
        return result.actions

    def _feedback(self, now: float, event: HealingEvent) -> None:
        # An incident's outcome is the measured verdict on the actions taken for it;
        # superseded incidents say nothing either way, nor do cleared ones (the fault
        # went away whatever the actions did), nor incidents no action could end
        # (Incident.judges_actions).
        if event.outcome in (Outcome.SUPERSEDED, Outcome.CLEARED):
            return
        ok = event.outcome == Outcome.REPAIRED
        for kind in event.actions:
            self.executor.report(now, kind, ok)


class DrivableNode(Core, HealableNode, Protocol):
    """A sans-IO mesh node core (``sansio.Core``) that is healable (``HealableNode``)."""


def event_fields(event: HealingEvent) -> dict[str, Any]:
    """The flat, JSON-able trace fields of a finished HealingEvent."""
    return {
        "kind": event.kind,
        "subject": event.subject,
        "action": event.action,
        "outcome": event.outcome,
        "fault_started_at": event.fault_started_at,
        "detected_at": event.detected_at,
        "repaired_at": event.repaired_at,
        "cleared_at": event.cleared_at,
        "verified": "+".join(event.verified),  # flat, like the action label
        "mttr": event.mttr,
        "mttd": event.mttd,
        "time_to_clear": event.time_to_clear,
    }


class HealingTimer(enum.StrEnum):
    CYCLE = "mapek.cycle"


TIMER_KEY: Final = HealingTimer.CYCLE

TRIGGERS: Final = (LinkUp, LinkDown)
"""Control actions from the node that run a MAPE-K cycle immediately."""


class HealingNode:
    """A node core with its healing loop: same ``start``/``handle`` shape as the core.

    ``RuntimeStats`` inputs (from the runtime only) are kept for the next cycles and not
    forwarded; every other input goes to the wrapped node.
    """

    def __init__(self, node: DrivableNode, loop: HealingLoop) -> None:
        if loop.node is not node:
            raise ValueError("HealingNode: the loop must heal the node it wraps")
        self.node = node
        self.loop = loop
        self._stats: RuntimeStats | None = None

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def events(self) -> tuple[HealingEvent, ...]:
        return self.loop.events

    @property
    def open_incidents(self) -> tuple[Incident, ...]:
        return self.loop.open_incidents

    def _next_timer(self, now: float) -> SetTimer:
        # Cycle fast while an incident is open, so its repair is seen (and its MTTR
        # measured) promptly; slowly otherwise, since link events trigger cycles anyway.
        cfg = self.loop.config
        busy = bool(self.loop.knowledge.incidents)
        return SetTimer(
            now + (cfg.active_cycle_interval if busy else cfg.cycle_interval), TIMER_KEY
        )

    def start(self, now: float) -> list[Action]:
        return [*self.node.start(now), self._next_timer(now)]

    def handle(self, now: float, inp: Input | RuntimeStats) -> list[Action]:
        # Exact type checks: this runs for every packet the node handles.
        kind = type(inp)
        if kind is RuntimeStats:
            self._stats = inp  # type: ignore[assignment]
            return []
        if kind is Timer and inp.key == TIMER_KEY:  # type: ignore[union-attr]
            actions = self._cycle(now)
            actions.append(self._next_timer(now))
            return actions
        out = self.node.handle(now, inp)  # type: ignore[arg-type]
        return self._after(now, out if type(out) is list else list(out))

    def _after(self, now: float, actions: list[Action]) -> list[Action]:
        # A link going down or up is worth a cycle at once rather than at the next tick:
        # detection stays prompt while the periodic cycle can run at a lower rate.
        for a in actions:
            if type(a) in TRIGGERS:
                actions.extend(self._cycle(now))
                actions.append(self._next_timer(now))
                break
        return actions

    def handle_segments(self, now: float, addr: Addr, data: bytes, size: int) -> list[Action]:
        """Datagrams received together (see ``MeshNode.handle_segments``)."""
        take = getattr(self.node, "handle_segments", None)
        if take is None:
            out: list[Action] = []
            for d in segments(data, size):
                out += self.handle(now, Datagram(addr, d))
            return out
        return self._after(now, take(now, addr, data, size))

    def _cycle(self, now: float) -> list[Action]:
        actions = self.loop.cycle(now, self._stats)
        actions.extend(Event("healing", event_fields(e)) for e in self.loop.last_finished)
        return actions
