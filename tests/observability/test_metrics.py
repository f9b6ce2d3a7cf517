"""The metrics module: declared once on REGISTRY, read back with get_sample_value."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator

import pytest
import structlog

from x0tta6bl4.healing import ActionKind, HealingEvent, HealingLoop
from x0tta6bl4.mesh.observe import LinkObservation, NodeObservation, RouteObservation
from x0tta6bl4.observability import metrics as m
from x0tta6bl4.observability.logging import configure_logging
from x0tta6bl4.sansio import Action


def value(name: str, labels: dict[str, str] | None = None) -> float:
    v = m.REGISTRY.get_sample_value(name, labels or {})
    return 0.0 if v is None else v


def test_every_declared_metric_is_on_our_registry() -> None:
    names = {metric.name for metric in m.REGISTRY.collect()}
    assert {
        "x0tta6bl4_self_healing_events",
        "x0tta6bl4_self_healing_mttr_seconds",
        "x0tta6bl4_self_healing_mttd_seconds",
        "x0tta6bl4_self_healing_time_to_clear_seconds",
        "x0tta6bl4_mapek_cycle_seconds",
        "x0tta6bl4_link_rtt_seconds",
        "x0tta6bl4_link_loss_ratio",
        "x0tta6bl4_link_cost",
        "x0tta6bl4_handshakes",
        "x0tta6bl4_packets_dropped",
        "x0tta6bl4_routes",
    } <= names
    assert m.REPAIR_BUCKETS[0] == 0.05 and m.REPAIR_BUCKETS[-1] == 60.0


def test_recording_an_event_increments_counter_and_histograms() -> None:
    labels = {"kind": "dead_neighbour", "action": "reroute+rehandshake", "outcome": "repaired"}
    before = value("x0tta6bl4_self_healing_events_total", labels)
    mttr_n = value("x0tta6bl4_self_healing_mttr_seconds_count")
    mttr_sum = value("x0tta6bl4_self_healing_mttr_seconds_sum")
    mttd_n = value("x0tta6bl4_self_healing_mttd_seconds_count")
    le_1 = value("x0tta6bl4_self_healing_mttr_seconds_bucket", {"le": "1.0"})
    event = HealingEvent(
        "dead_neighbour",
        "B",
        10.0,
        (ActionKind.REROUTE, ActionKind.REHANDSHAKE),
        10.45,
        "repaired",
        9.7,
    )
    m.record_self_healing_event(event)
    assert value("x0tta6bl4_self_healing_events_total", labels) == before + 1
    assert value("x0tta6bl4_self_healing_mttr_seconds_count") == mttr_n + 1
    # MTTR runs from the fault's start (9.7) to the verified repair (10.45)
    assert value("x0tta6bl4_self_healing_mttr_seconds_sum") == pytest.approx(mttr_sum + 0.75)
    assert value("x0tta6bl4_self_healing_mttr_seconds_bucket", {"le": "1.0"}) == le_1 + 1
    assert value("x0tta6bl4_self_healing_mttd_seconds_count") == mttd_n + 1


def test_failed_event_has_no_mttr_observation() -> None:
    labels = {"kind": "partition", "action": "wait", "outcome": "failed"}
    before = value("x0tta6bl4_self_healing_events_total", labels)
    mttr_n = value("x0tta6bl4_self_healing_mttr_seconds_count")
    mttd_n = value("x0tta6bl4_self_healing_mttd_seconds_count")
    m.record_self_healing_event(HealingEvent("partition", "A", 1.0, (), None, "failed"))
    assert value("x0tta6bl4_self_healing_events_total", labels) == before + 1
    assert value("x0tta6bl4_self_healing_mttr_seconds_count") == mttr_n
    assert value("x0tta6bl4_self_healing_mttd_seconds_count") == mttd_n


def test_cleared_event_observes_time_to_clear_not_mttr() -> None:
    labels = {"kind": "dead_neighbour", "action": "reroute", "outcome": "cleared"}
    before = value("x0tta6bl4_self_healing_events_total", labels)
    mttr_n = value("x0tta6bl4_self_healing_mttr_seconds_count")
    clear_n = value("x0tta6bl4_self_healing_time_to_clear_seconds_count")
    clear_sum = value("x0tta6bl4_self_healing_time_to_clear_seconds_sum")
    event = HealingEvent(
        "dead_neighbour", "B", 10.0, (ActionKind.REROUTE,), None, "cleared", 9.6, cleared_at=15.6
    )
    m.record_self_healing_event(event)
    assert value("x0tta6bl4_self_healing_events_total", labels) == before + 1
    assert value("x0tta6bl4_self_healing_mttr_seconds_count") == mttr_n
    assert value("x0tta6bl4_self_healing_time_to_clear_seconds_count") == clear_n + 1
    assert value("x0tta6bl4_self_healing_time_to_clear_seconds_sum") == pytest.approx(
        clear_sum + 6.0
    )


def test_mapek_cycle_phases() -> None:
    n = value("x0tta6bl4_mapek_cycle_seconds_count", {"phase": "analyse"})
    m.record_mapek_cycle({"monitor": 1e-4, "analyse": 2e-4, "plan": 1e-5, "execute": 0.0})
    assert value("x0tta6bl4_mapek_cycle_seconds_count", {"phase": "analyse"}) == n + 1


def test_link_gauges_and_forgetting() -> None:
    lo = LinkObservation("peerZ", True, 0.02, 0.001, 0.1, 1.0, 192, 96, 5.0, 0)
    m.record_link(lo)
    assert value("x0tta6bl4_link_rtt_seconds", {"peer": "peerZ"}) == 0.02
    assert value("x0tta6bl4_link_loss_ratio", {"peer": "peerZ"}) == 0.1
    assert value("x0tta6bl4_link_cost", {"peer": "peerZ"}) == 192
    m.record_link(LinkObservation("peerZ", False, None, None, 1.0, None, 0xFFFF, 0xFFFF, None, 0))
    assert value("x0tta6bl4_link_rtt_seconds", {"peer": "peerZ"}) == 0.02  # kept, not faked
    m.forget_link("peerZ")
    m.forget_link("peerZ")  # twice is fine
    assert m.REGISTRY.get_sample_value("x0tta6bl4_link_cost", {"peer": "peerZ"}) is None


def test_drops_from_cumulative_counters() -> None:
    base = value("x0tta6bl4_packets_dropped_total", {"reason": "replay"})
    m.record_drops({"replay": 5}, source="n1")
    m.record_drops({"replay": 7}, source="n1")
    m.record_drops({"replay": 3}, source="n2")  # another node: its own baseline
    assert value("x0tta6bl4_packets_dropped_total", {"reason": "replay"}) == base + 10
    m.record_drops({"replay": 2}, source="n1")  # n1 restarted
    assert value("x0tta6bl4_packets_dropped_total", {"reason": "replay"}) == base + 12


def test_routes_and_handshakes() -> None:
    table = {"B": RouteObservation("B", "B", 96, 0), "C": RouteObservation("C", None, 0, 1)}
    m.record_routes(table)
    assert value("x0tta6bl4_routes", {"state": "reachable"}) == 1
    assert value("x0tta6bl4_routes", {"state": "unreachable"}) == 1
    before = value("x0tta6bl4_handshakes_total", {"role": "initiator", "outcome": "ok"})
    m.record_handshake("initiator", "ok")
    assert value("x0tta6bl4_handshakes_total", {"role": "initiator", "outcome": "ok"}) == before + 1


class _Node:
    """Just enough of a HealableNode for the wiring test: a neighbour that has died."""

    name = "A"

    def __init__(self) -> None:
        self.alive = True

    def observe(self, now: float) -> NodeObservation:
        lo = LinkObservation("B", self.alive, 0.01, 0.0, 0.0, now, 96, 96, 1.0, 0)
        return NodeObservation(now, "A", {"B": lo}, {}, 1e12, 1e6)

    def set_link_penalty(self, now: float, peer: str, factor: float) -> list[Action]:
        return []

    def drop_neighbour(self, now: float, peer: str) -> list[Action]:
        return []

    def reconnect(self, now: float, peer: str) -> list[Action]:
        return []

    def damp_link(self, now: float, peer: str, until: float | None) -> list[Action]:
        return []

    def probe(self, now: float, dst: str) -> list[Action]:
        return []

    def request_renewal(self, now: float) -> list[Action]:
        return []


def test_wired_as_the_loops_callbacks() -> None:
    # B dies and comes back: nothing was routed through it, so nothing could be verified
    # repaired; the incident clears (the fault went away)
    labels = {"kind": "dead_neighbour", "action": "reroute+rehandshake", "outcome": "cleared"}
    before = value("x0tta6bl4_self_healing_events_total", labels)
    cycles = value("x0tta6bl4_mapek_cycle_seconds_count", {"phase": "monitor"})
    node = _Node()
    loop = HealingLoop(
        node,
        rng=random.Random(0),
        on_event=m.record_self_healing_event,
        on_cycle=m.record_mapek_cycle,
    )
    loop.cycle(0.0)
    node.alive = False
    loop.cycle(0.1)
    node.alive = True
    loop.cycle(0.2)
    assert value("x0tta6bl4_self_healing_events_total", labels) == before + 1
    assert value("x0tta6bl4_mapek_cycle_seconds_count", {"phase": "monitor"}) == cycles + 3


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    # The handler holds the captured stderr of this test: take it out again.
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


@pytest.mark.usefixtures("restore_logging")
def test_configure_logging_json_and_console(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(json=True)
    configure_logging(json=True)  # idempotent: one handler, one line per record
    structlog.get_logger("x0t.test").info("repaired", peer="B", mttr=0.5)
    logging.getLogger("stdlib.test").warning("plain %s", "record")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert len(lines) == 2
    assert lines[0]["event"] == "repaired" and lines[0]["peer"] == "B"
    assert lines[0]["level"] == "info" and "timestamp" in lines[0]
    assert lines[1]["event"] == "plain record" and lines[1]["level"] == "warning"
    configure_logging(json=False)
    structlog.get_logger("x0t.test").info("hello", peer="C")
    err = capsys.readouterr().err
    assert "hello" in err and "peer" in err and not err.lstrip().startswith("{")
