"""Scripted scenarios over a flooding toy core."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from x0tta6bl4.sansio import (
    Action,
    AppSend,
    Core,
    Datagram,
    Deliver,
    Event,
    Input,
    Send,
    SetTimer,
)
from x0tta6bl4.sim import (
    FaultRecord,
    LinkSpec,
    Scenario,
    SimError,
    Simulator,
    Topology,
    app_send,
    cut,
    degrade,
    diamond,
    flap,
    heal,
    kill,
    line,
    partition,
    random_geometric,
    restart,
    restore,
    schedule,
)
from x0tta6bl4.sim.engine import NodeFactory


class Flood:
    """Floods each app message to every neighbour once (dedup by origin and sequence);
    the destination delivers it. Beacons every 100 ms so timers keep running."""

    def __init__(self, name: str, neighbours: tuple[str, ...], rng: random.Random) -> None:
        self.name = name
        self.neighbours = neighbours
        self.rng = rng
        self.seq = 0
        self.seen: set[tuple[str, int]] = set()

    def start(self, now: float) -> list[Action]:
        return [SetTimer(now + self.rng.random() * 0.1, "beacon")]

    def handle(self, now: float, inp: Input) -> list[Action]:
        if isinstance(inp, AppSend):
            self.seq += 1
            msg = f"{self.name}|{self.seq}|{inp.dst}|{inp.port}|".encode() + inp.payload
            self.seen.add((self.name, self.seq))
            return [Send(n, msg) for n in self.neighbours]
        if isinstance(inp, Datagram):
            if inp.data == b"beacon":
                return []
            origin, seq, dst, port, payload = inp.data.split(b"|", 4)
            key = (origin.decode(), int(seq))
            if key in self.seen:
                return []
            self.seen.add(key)
            if dst.decode() == self.name:
                return [
                    Deliver(key[0], int(port), payload),
                    Event("got", {"from": key[0], "seq": key[1]}),
                ]
            return [Send(n, inp.data) for n in self.neighbours if n != inp.addr]
        out: list[Action] = [Send(n, b"beacon") for n in self.neighbours]
        out.append(SetTimer(now + 0.1, "beacon"))
        return out


def flood_factory(topo: Topology) -> NodeFactory:
    def make(name: str, rng: random.Random, now: float) -> Core:
        return Flood(name, topo.neighbours(name), rng)

    return make


def got(sim: Simulator) -> list[tuple[float, str, str]]:
    return [(round(t, 9), node, f["from"]) for t, node, _, f in sim.trace.select(kind="got")]


def test_a_scripted_run_records_every_fault_and_repair() -> None:
    topo = diamond(LinkSpec(latency=0.01))
    result = (
        Scenario(topo, seed=3, node_factory=flood_factory(topo))
        .at(1.0, kill("b"))
        .at(2.0, restart("b"))
        .at(3.0, cut("a", "c"), app_send("a", "d", 80, b"via-b"))
        .at(4.0, restore("a", "c"))
        .at(5.0, partition([{"a", "b"}, {"c", "d"}]))
        .at(6.0, heal())
        .at(7.0, flap("c", "d", period=1.0, until=9.0, down_for=0.5))
        .at(10.0, degrade("a", "b", loss=1.0, latency=0.05))
        .run(until=12.0)
    )
    assert [(f.t, f.kind, f.node) for f in result.faults] == [
        (1.0, "crash", "b"),
        (3.0, "link_down", "a"),
        (5.0, "partition", "*"),
        (7.0, "link_down", "c"),
        (8.0, "link_down", "c"),
        (10.0, "degrade", "a"),
    ]
    assert [(f.t, f.kind) for f in result.repairs] == [
        (2.0, "restart"),
        (4.0, "link_up"),
        (6.0, "heal"),
        (7.5, "link_up"),
        (8.5, "link_up"),
    ]
    assert result.faults[-1] == FaultRecord(
        10.0, "degrade", "a", {"peer": "b", "both": True, "latency": 0.05, "loss": 1.0}
    )
    assert got(result.sim) == [(3.02, "d", "a")]  # around the cut, through b
    assert result.trace is result.sim.trace
    assert result.digest == result.trace.digest()
    assert result.sim.now == 12.0


def test_the_same_scenario_reruns_byte_identically_and_the_seed_matters() -> None:
    topo = random_geometric(40, seed=5, spec=LinkSpec(jitter=0.003, loss=0.05))

    def scenario(seed: int) -> Scenario:
        s = Scenario(topo, seed=seed, node_factory=flood_factory(topo))
        s.at(0.5, app_send("n0000", "n0039", 1, b"hello"), kill("n0010"))
        s.at(1.0, partition([set(topo.nodes[:20])]), app_send("n0001", "n0030", 1, b"blocked?"))
        s.at(1.5, heal(), restart("n0010"))
        return s

    s = scenario(11)
    first, second = s.run(until=2.0), s.run(until=2.0)
    assert first.digest == second.digest
    assert first.trace.dumps() == second.trace.dumps()
    assert scenario(12).run(until=2.0).digest != first.digest


def test_partition_blocks_the_flood_and_heal_lets_it_through() -> None:
    topo = line(4, LinkSpec(latency=0.01))
    r = (
        Scenario(topo, seed=0, node_factory=flood_factory(topo))
        .at(1.0, partition([{"n0000", "n0001"}]))
        .at(1.1, app_send("n0000", "n0003", 5, b"x"))
        .at(2.0, heal())
        .at(2.1, app_send("n0000", "n0003", 5, b"y"))
        .run(until=3.0)
    )
    assert got(r.sim) == [(2.13, "n0003", "n0000")]
    assert r.sim.drops["partition"] > 0


def test_a_killed_relay_blocks_until_restarted() -> None:
    topo = line(3, LinkSpec(latency=0.01))
    r = (
        Scenario(topo, seed=0, node_factory=flood_factory(topo))
        .at(1.0, kill("n0001"))
        .at(1.5, app_send("n0000", "n0002", 5, b"lost"))
        .at(2.0, restart("n0001"))
        .at(2.5, app_send("n0000", "n0002", 5, b"ok"))
        .run(until=3.0)
    )
    assert got(r.sim) == [(2.52, "n0002", "n0000")]
    assert r.sim.stats["n0001"].crashes == 1 and r.sim.stats["n0001"].restarts == 1


def test_script_order_and_any_object_with_apply() -> None:
    calls: list[tuple[float, str]] = []

    class Probe:
        def __init__(self, tag: str) -> None:
            self.tag = tag

        def apply(self, sim: Simulator) -> None:
            calls.append((sim.now, self.tag))

    topo = diamond()
    s = Scenario(topo, seed=0, node_factory=flood_factory(topo))
    s.at(2.0, Probe("late")).at(1.0, Probe("x"), Probe("y")).at(1.0, Probe("z"))
    s.run(until=3.0)
    assert calls == [(1.0, "x"), (1.0, "y"), (1.0, "z"), (2.0, "late")]
    assert [t for t, _ in s.script] == [2.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    "bad",
    [
        lambda s: s.at(-1.0, heal()),
        lambda s: s.at(1.0, "kill b"),
    ],
)
def test_script_validation(bad: Callable[[Scenario], object]) -> None:
    topo = diamond()
    with pytest.raises(SimError):
        bad(Scenario(topo, seed=0, node_factory=flood_factory(topo)))


def test_a_bad_action_fails_at_its_time_with_a_clear_error() -> None:
    topo = diamond()
    s = Scenario(topo, seed=0, node_factory=flood_factory(topo)).at(1.0, cut("a", "d"))
    with pytest.raises(SimError, match="no link between 'a' and 'd'") as info:
        s.run(until=2.0)
    assert any("t=1.0" in n for n in info.value.__notes__)


def test_schedule_puts_actions_on_a_running_simulator() -> None:
    topo = line(3)
    sim = Scenario(topo, seed=0, node_factory=flood_factory(topo)).build()
    sim.run(1.0)
    schedule(sim, 1.5, kill("n0001"))
    schedule(sim, 2.0, restart("n0001"), cut("n0000", "n0001"))
    sim.run(3.0)
    faults = ("sim.crash", "sim.restart", "sim.link_down")
    kinds = [(t, k) for t, _, k, _ in sim.trace if k in faults]
    assert kinds == [(1.5, "sim.crash"), (2.0, "sim.restart"), (2.0, "sim.link_down")]
    with pytest.raises(SimError, match="apply"):
        schedule(sim, 4.0, "kill n0001")  # type: ignore[arg-type]


def test_scenario_without_drop_records() -> None:
    topo = diamond(LinkSpec(loss=0.5))
    r = Scenario(topo, seed=0, node_factory=flood_factory(topo), trace_drops=False).run(until=2.0)
    assert r.sim.drops["loss"] > 0
    assert r.trace.select(kind="sim.drop") == []
