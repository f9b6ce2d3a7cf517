"""Self-healing: a MAPE-K loop (monitor, analyse, plan, execute over shared knowledge)
in every node. Pure decisions over ``mesh.observe``; no sockets, clocks or sleeps.
"""

from x0tta6bl4.healing.analyse import analyse, track_incidents
from x0tta6bl4.healing.events import (
    NO_ACTION,
    ActionKind,
    FaultKind,
    Finding,
    HealingEvent,
    IncidentKey,
    Outcome,
    PlannedAction,
    RuntimeStats,
)
from x0tta6bl4.healing.execute import (
    BreakerState,
    CircuitBreaker,
    ExecutionResult,
    Executor,
)
from x0tta6bl4.healing.knowledge import (
    HealingConfig,
    Incident,
    Knowledge,
    LinkKnowledge,
    RepairStats,
)
from x0tta6bl4.healing.loop import (
    PHASES,
    TIMER_KEY,
    DrivableNode,
    HealingLoop,
    HealingNode,
    HealingTimer,
    event_fields,
)
from x0tta6bl4.healing.monitor import LinkFeatures, Monitor, RouteFlap, Snapshot
from x0tta6bl4.healing.plan import damp_hold, penalty_factor, plan, reconnect_delay

__all__ = [
    "NO_ACTION",
    "PHASES",
    "TIMER_KEY",
    "ActionKind",
    "BreakerState",
    "CircuitBreaker",
    "DrivableNode",
    "ExecutionResult",
    "Executor",
    "FaultKind",
    "Finding",
    "HealingConfig",
    "HealingEvent",
    "HealingLoop",
    "HealingNode",
    "HealingTimer",
    "Incident",
    "IncidentKey",
    "Knowledge",
    "LinkFeatures",
    "LinkKnowledge",
    "Monitor",
    "Outcome",
    "PlannedAction",
    "RepairStats",
    "RouteFlap",
    "RuntimeStats",
    "Snapshot",
    "analyse",
    "damp_hold",
    "event_fields",
    "penalty_factor",
    "plan",
    "reconnect_delay",
    "track_incidents",
]
