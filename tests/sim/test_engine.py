"""The engine under toy cores: clock and ordering, timers, crash/restart, observers,
counters, determinism, and the trace's serialization."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from x0tta6bl4.sansio import (
    Action,
    AppSend,
    Datagram,
    Deliver,
    Event,
    Input,
    LinkDown,
    LinkDownReason,
    LinkUp,
    Send,
    SessionUp,
    SetTimer,
    Timer,
)
from x0tta6bl4.sim import LinkSpec, SimError, Simulator, Trace, line, ring
from x0tta6bl4.sim.engine import NodeFactory

# --- toy cores ------------------------------------------------------------------


class Echo:
    """App send -> ping; ping -> pong; pong -> Deliver + Event. Keeps a log of inputs."""

    instances: list[Echo] = []

    def __init__(self, name: str, rng: random.Random, now: float) -> None:
        self.name = name
        self.rng = rng
        self.created = now
        self.started: float | None = None
        self.log: list[tuple[float, Input]] = []
        Echo.instances.append(self)

    def start(self, now: float) -> list[Action]:
        self.started = now
        return [Event("up", {"name": self.name})]

    def handle(self, now: float, inp: Input) -> list[Action]:
        self.log.append((now, inp))
        if isinstance(inp, AppSend):
            return [Send(inp.dst, b"P" + inp.payload)]
        if isinstance(inp, Datagram):
            if inp.data[:1] == b"P":
                return [Send(inp.addr, b"R" + inp.data[1:])]
            return [Deliver(str(inp.addr), 7, inp.data[1:]), Event("pong", {"from": inp.addr})]
        return []


class Timers:
    """Sets timers from a script at start; records each firing."""

    script: list[SetTimer] = []

    def __init__(self, name: str, rng: random.Random, now: float) -> None:
        self.fired: list[tuple[float, Any]] = []

    def start(self, now: float) -> list[Action]:
        return list(Timers.script)

    def handle(self, now: float, inp: Input) -> list[Action]:
        assert isinstance(inp, Timer)
        self.fired.append((now, inp.key))
        return [Event("fired", {"key": inp.key})]


class Gossip:
    """Every 50 ms sends a counter to each neighbour; logs what it hears (drives loss and
    jitter through the seeded RNGs, and its own RNG through the node's)."""

    neighbours: dict[str, tuple[str, ...]] = {}

    def __init__(self, name: str, rng: random.Random, now: float) -> None:
        self.name = name
        self.rng = rng
        self.n = 0
        self.heard = 0

    def start(self, now: float) -> list[Action]:
        return [SetTimer(now + self.rng.random() * 0.05, "tick")]

    def handle(self, now: float, inp: Input) -> list[Action]:
        if isinstance(inp, Datagram):
            self.heard += 1
            return [Event("rx", {"from": inp.addr, "n": int(inp.data)})]
        self.n += 1
        out: list[Action] = [Send(p, str(self.n).encode()) for p in Gossip.neighbours[self.name]]
        out.append(SetTimer(now + 0.05, "tick"))
        return out


def factory(cls: type) -> NodeFactory:
    return cls


def pair(latency: float = 0.01, **kw: Any) -> Simulator:
    sim = Simulator(seed=1)
    sim.add_node("a", Echo)
    sim.add_node("b", Echo)
    sim.add_link("a", "b", LinkSpec(latency=latency, **kw))
    return sim


def core(sim: Simulator, name: str) -> Any:
    c = sim.core(name)
    assert c is not None
    return c


# --- clock, ordering, delivery ----------------------------------------------------------


def test_ping_pong_takes_two_latencies_and_is_observed() -> None:
    seen: list[tuple[float, str, Action]] = []
    sim = pair(latency=0.01)
    sim.on_action.append(lambda t, n, a: seen.append((t, n, a)))
    sim.send_app(1.0, "a", "b", 7, b"hi")
    assert sim.run(2.0) == 5  # 2 starts, app send, ping, pong
    assert sim.now == 2.0
    delivers = [(round(t, 9), n, a) for t, n, a in seen if isinstance(a, Deliver)]
    assert delivers == [(1.02, "a", Deliver("b", 7, b"hi"))]
    assert [type(a).__name__ for _, _, a in seen] == [
        "Event",
        "Event",
        "Send",
        "Send",
        "Deliver",
        "Event",
    ]
    assert sim.stats["a"].delivered == 1
    ((t, node, _, fields),) = sim.trace.select(kind="pong")
    assert (round(t, 9), node, fields) == (1.02, "a", {"from": "b"})


def test_counters_bytes_and_packets() -> None:
    sim = pair()
    sim.send_app(0.0, "a", "b", 7, b"12345")
    sim.run(1.0)
    a, b = sim.stats["a"], sim.stats["b"]
    assert (a.sent_packets, a.sent_bytes, a.recv_packets, a.recv_bytes) == (1, 6, 1, 6)
    assert (b.sent_packets, b.sent_bytes, b.recv_packets, b.recv_bytes) == (1, 6, 1, 6)
    assert sum(a.dropped.values()) == 0
    assert a.as_dict()["dropped"]["loss"] == 0


def test_same_instant_events_run_in_scheduling_order() -> None:
    sim = pair()
    order: list[int] = []

    def mark(i: int) -> Callable[[Simulator], None]:
        return lambda _: order.append(i)

    for i in range(20):
        sim.schedule(0.5, mark(i))
    sim.run(1.0)
    assert order == list(range(20))


def test_start_runs_after_setup_so_links_added_later_carry_it() -> None:
    class Hello(Echo):
        def start(self, now: float) -> list[Action]:
            return [Send("b" if self.name == "a" else "a", b"Px")]

    sim = Simulator(seed=0)
    sim.add_node("a", Hello)
    sim.add_node("b", Hello)
    sim.add_link("a", "b")  # after add_node: start has not run yet
    sim.run(1.0)
    assert sum(s.dropped["no_link"] for s in sim.stats.values()) == 0
    assert sim.stats["a"].recv_packets == 2  # b's hello and b's reply to a's hello


def test_run_continues_where_it_stopped() -> None:
    sim = pair(latency=0.5)
    sim.send_app(0.0, "a", "b", 7, b"x")
    sim.run(0.7)  # ping arrived at 0.5, pong in flight
    assert sim.stats["a"].delivered == 0
    sim.run(1.0)
    assert sim.stats["a"].delivered == 1
    assert sim.events_processed == 5


# --- timers ---------------------------------------------------------------------


def run_timers(script: list[SetTimer], until: float = 10.0) -> list[tuple[float, Any]]:
    Timers.script = script
    sim = Simulator(seed=0)
    sim.add_node("t", Timers)
    sim.run(until)
    return core(sim, "t").fired  # type: ignore[no-any-return]


def test_latest_set_timer_for_a_key_wins() -> None:
    assert run_timers([SetTimer(1.0, "k"), SetTimer(2.0, "k")]) == [(2.0, "k")]
    assert run_timers([SetTimer(2.0, "k"), SetTimer(1.0, "k")]) == [(1.0, "k")]


def test_distinct_keys_fire_in_time_order_and_ties_in_set_order() -> None:
    fired = run_timers([SetTimer(3.0, "c"), SetTimer(1.0, ("a", 1)), SetTimer(1.0, "b")])
    assert fired == [(1.0, ("a", 1)), (1.0, "b"), (3.0, "c")]


def test_timer_in_the_past_fires_now_and_stale_ones_are_not_counted() -> None:
    Timers.script = [SetTimer(-5.0, "k"), SetTimer(4.0, "j"), SetTimer(5.0, "j")]
    sim = Simulator(seed=0)
    sim.add_node("t", Timers)
    assert sim.run(10.0) == 3  # start, k, j@5; the replaced j@4 is not an event
    assert core(sim, "t").fired == [(0.0, "k"), (5.0, "j")]


def test_pending_timers_are_listed_with_their_times() -> None:
    Timers.script = [SetTimer(3.0, "c"), SetTimer(1.0, ("a", 1)), SetTimer(2.0, "c")]
    sim = Simulator(seed=0)
    sim.add_node("t", Timers)
    assert sim.timers("t") == []  # start has not run yet
    sim.run(0.5)
    assert sim.timers("t") == [("c", 2.0), (("a", 1), 1.0)]  # replaced c keeps its place
    sim.run(1.5)
    assert sim.timers("t") == [("c", 2.0)]
    sim.crash("t")
    assert sim.timers("t") == []


def test_a_timer_can_rearm_itself_from_its_handler() -> None:
    sim = Simulator(seed=3)
    Gossip.neighbours = {"g": ()}
    sim.add_node("g", Gossip)
    sim.run(1.0)
    assert 19 <= core(sim, "g").n <= 20


# --- crash and restart ---------------------------------------------------------


def test_crash_drops_timers_inflight_packets_and_state() -> None:
    Echo.instances = []
    sim = pair(latency=0.1)
    sim.send_app(0.0, "a", "b", 7, b"x")  # ping reaches b at 0.1, pong back at 0.2
    sim.schedule(0.15, lambda s: s.crash("a"))  # pong in flight to a
    sim.send_app(0.3, "b", "a", 7, b"y")  # to a crashed node
    sim.send_app(0.3, "a", "b", 7, b"z")  # from a crashed node
    sim.run(1.0)
    assert not sim.is_alive("a")
    assert sim.core("a") is None
    assert sim.stats["b"].dropped["crashed"] == 2  # the in-flight pong, the new ping
    assert sim.stats["a"].dropped["crashed"] == 1  # the app send on a dead node
    assert sim.stats["a"].crashes == 1
    drops = sim.trace.select(kind="sim.drop")
    assert [(round(t, 3), n, f["reason"], f["peer"]) for t, n, _, f in drops] == [
        (0.2, "b", "crashed", "a"),
        (0.3, "b", "crashed", "a"),
        (0.3, "a", "crashed", "b"),
    ]
    assert sim.trace.select(kind="sim.crash") == [(0.15, "a", "sim.crash", {})]


def test_crashed_node_timers_never_fire_even_after_restart() -> None:
    Timers.script = [SetTimer(1.0, "k"), SetTimer(3.0, "late")]
    sim = Simulator(seed=0)
    sim.add_node("t", Timers)
    sim.schedule(2.0, lambda s: s.crash("t"))
    sim.schedule(2.5, lambda s: s.restart("t"))
    sim.run(10.0)
    fired = [(t, f["key"]) for t, _, _, f in sim.trace.select(kind="fired")]
    # The first life's "late" timer died with it (else it would fire twice at 3.0); the
    # new life re-armed both from start, "k" already due.
    assert fired == [(1.0, "k"), (2.5, "k"), (3.0, "late")]


def test_restart_gives_fresh_state_new_rng_and_calls_start() -> None:
    Echo.instances = []
    sim = pair()
    sim.send_app(0.0, "a", "b", 7, b"x")
    sim.run(1.0)
    old = core(sim, "a")
    assert old.log
    sim.crash("a")
    sim.restart("a")
    new = core(sim, "a")
    assert new is not old and new.log == [] and new.started == 1.0 and new.created == 1.0
    assert sim.stats["a"].restarts == 1 and sim.stats["a"].delivered == 1  # stats persist
    assert sim.trace.select(kind="sim.restart") == [(1.0, "a", "sim.restart", {"incarnation": 1})]
    sim.send_app(1.0, "a", "b", 7, b"y")
    sim.run(2.0)
    assert sim.stats["a"].delivered == 2


def test_restart_with_a_new_factory_replaces_the_core() -> None:
    class Other(Echo):
        pass

    sim = pair()
    sim.crash("b")
    sim.restart("b", Other)
    assert type(sim.core("b")) is Other
    sim.crash("b")
    sim.restart("b")  # the new factory stays
    assert type(sim.core("b")) is Other


def test_apply_carries_out_actions_from_a_direct_call() -> None:
    seen: list[tuple[float, str, str]] = []
    sim = pair(latency=0.01)
    sim.on_action.append(lambda t, n, a: seen.append((t, n, type(a).__name__)))
    sim.run(1.0)
    seen.clear()
    sim.apply("a", [Send("b", b"Pdirect"), Event("poke"), SetTimer(5.0, "k")])
    assert seen == [(1.0, "a", "Send"), (1.0, "a", "Event")]
    assert sim.timers("a") == [("k", 5.0)]
    sim.run(2.0)
    assert (1.02, "a", "Deliver") in [(round(t, 9), n, k) for t, n, k in seen]
    sim.crash("b")
    with pytest.raises(SimError, match="down"):
        sim.apply("b", [])


def test_node_rngs_are_derived_from_seed_name_and_incarnation() -> None:
    def first_draws(seed: int) -> dict[str, float]:
        sim = Simulator(seed)
        for n in ("a", "b"):
            sim.add_node(n, Echo)
        out = {n: core(sim, n).rng.random() for n in ("a", "b")}
        sim.crash("a")
        sim.restart("a")
        out["a1"] = core(sim, "a").rng.random()
        return out

    one, again, other = first_draws(5), first_draws(5), first_draws(6)
    assert one == again
    assert len(set(one.values())) == 3  # names and incarnations get distinct streams
    assert all(one[k] != other[k] for k in one)


def test_crash_and_restart_misuse_is_refused() -> None:
    sim = pair()
    with pytest.raises(SimError, match="running"):
        sim.restart("a")
    sim.crash("a")
    with pytest.raises(SimError, match="already down"):
        sim.crash("a")
    with pytest.raises(SimError, match="unknown node"):
        sim.crash("zz")


# --- observers --------------------------------------------------------------------


def test_observers_see_actions_and_engine_records() -> None:
    actions: list[tuple[float, str, str]] = []
    records: list[tuple[float, str, str]] = []
    sim = pair(latency=0.1)
    sim.on_action.append(lambda t, n, a: actions.append((t, n, type(a).__name__)))
    sim.on_record.append(lambda t, n, k, f: records.append((t, n, k)))
    sim.send_app(0.0, "a", "b", 7, b"x")
    sim.schedule(0.15, lambda s: s.net.set_up("a", "b", False))
    sim.run(1.0)
    assert ("sim.link_down" in [k for _, _, k in records]) and (0.2, "b", "sim.drop") in records
    assert [x for x in actions if x[2] == "Send"] == [(0.0, "a", "Send"), (0.1, "b", "Send")]


def test_untraced_drops_still_reach_record_observers() -> None:
    records: list[tuple[str, dict[str, Any]]] = []
    sim = Simulator(seed=0, trace_drops=False)
    sim.add_node("a", Echo)
    sim.on_record.append(lambda t, n, k, f: records.append((k, f)))
    sim.send_app(0.0, "a", "b", 7, b"x")
    sim.run(1.0)
    assert records == [("sim.drop", {"reason": "no_link", "peer": "b", "bytes": 2})]
    assert sim.trace.select(kind="sim.drop") == [] and sim.drops["no_link"] == 1


def test_an_observer_may_crash_the_node_mid_action_list() -> None:
    class Chatty(Echo):
        def start(self, now: float) -> list[Action]:
            return [Event("one"), Send("b", b"Px"), Event("two")] if self.name == "a" else []

    sim = Simulator(seed=0)
    sim.add_node("a", Chatty)
    sim.add_node("b", Chatty)
    sim.add_link("a", "b")

    def on_action(t: float, n: str, a: Action) -> None:
        if isinstance(a, Event) and a.kind == "one":
            sim.crash(n)

    sim.on_action.append(on_action)
    sim.run(1.0)
    assert sim.stats["a"].sent_packets == 0
    assert [r[2] for r in sim.trace] == ["one", "sim.crash"]


# --- errors -------------------------------------------------------------------------


def test_bad_calls_raise_sim_errors() -> None:
    sim = pair()
    with pytest.raises(SimError, match="already exists"):
        sim.add_node("a", Echo)
    with pytest.raises(SimError, match="non-empty str"):
        sim.add_node("", Echo)
    with pytest.raises(SimError, match="unknown node"):
        sim.send_app(0.0, "nope", "a", 1, b"")
    sim.run(1.0)
    with pytest.raises(SimError, match="before now"):
        sim.run(0.5)
    with pytest.raises(SimError, match="before now"):
        sim.schedule(0.5, lambda s: None)
    with pytest.raises(SimError, match="before now"):
        sim.send_app(0.5, "a", "b", 1, b"")


def test_control_actions_are_ignored_not_traced_or_observed() -> None:
    class Signals(Echo):
        def start(self, now: float) -> list[Action]:
            return [
                SessionUp("b", "beta"),
                LinkUp("b"),
                Event("between"),
                LinkDown("b", LinkDownReason.DEAD),
            ]

    seen: list[str] = []
    sim = Simulator(seed=0)
    sim.add_node("a", Signals)
    sim.on_action.append(lambda t, n, a: seen.append(type(a).__name__))
    sim.run(1.0)
    assert seen == ["Event"]
    assert [r[2] for r in sim.trace] == ["between"]


def test_a_core_returning_a_non_action_is_refused() -> None:
    class Bad(Echo):
        def start(self, now: float) -> list[Action]:
            return ["oops"]  # type: ignore[list-item]

    sim = Simulator(seed=0)
    sim.add_node("x", Bad)
    with pytest.raises(SimError, match="non-action"):
        sim.run(1.0)


def test_core_exceptions_propagate_with_the_sim_time() -> None:
    class Boom(Echo):
        def handle(self, now: float, inp: Input) -> list[Action]:
            raise RuntimeError("core bug")

    sim = Simulator(seed=0)
    sim.add_node("x", Boom)
    sim.send_app(2.5, "x", "y", 1, b"")
    with pytest.raises(RuntimeError, match="core bug") as info:
        sim.run(5.0)
    assert any("t=2.5" in note for note in info.value.__notes__)


# --- determinism --------------------------------------------------------------------


def gossip_digest(seed: int, until: float = 2.0) -> tuple[str, int]:
    topo = ring(6, LinkSpec(latency=0.005, jitter=0.004, loss=0.1))
    Gossip.neighbours = {n: topo.neighbours(n) for n in topo.nodes}
    sim = Simulator(seed)
    sim.add_topology(topo, factory(Gossip))
    sim.schedule(0.5, lambda s: s.crash("n0002"))
    sim.schedule(1.0, lambda s: s.restart("n0002"))
    sim.run(until)
    return sim.trace.digest(), sim.drops["loss"]


def test_same_seed_same_trace_different_seed_different_outcomes() -> None:
    d1, loss1 = gossip_digest(42)
    d2, loss2 = gossip_digest(42)
    d3, loss3 = gossip_digest(43)
    assert d1 == d2 and loss1 == loss2
    assert d3 != d1
    assert loss1 > 0 and loss3 > 0


def test_trace_digest_does_not_depend_on_the_process_hash_seed() -> None:
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from test_engine import gossip_digest; print(gossip_digest(42)[0])"
    )
    here = os.path.dirname(__file__)
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code, here], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == gossip_digest(42)[0]


# --- the trace ------------------------------------------------------------------------


def test_trace_lines_are_canonical_json_with_integer_nanoseconds() -> None:
    tr = Trace()
    tr.append(1.5, "n1", "k", {"b": 2, "a": [1, 2], "s": {"y", "x"}, "raw": b"\x01\xff"})
    tr.append(1e-9 * 3, "*", "sim.heal", {})
    lines = list(tr.lines())
    assert lines[0] == (
        '{"fields":{"a":[1,2],"b":2,"raw":"01ff","s":["x","y"]},'
        '"kind":"k","node":"n1","t":1500000000}'
    )
    assert json.loads(lines[1])["t"] == 3
    assert tr.digest() == hashlib.sha256(tr.dumps().encode()).hexdigest()
    back = Trace.loads(tr.dumps())
    assert [(r[0], r[1], r[2]) for r in back] == [(1.5, "n1", "k"), (3e-9, "*", "sim.heal")]


def test_trace_refuses_fields_without_a_canonical_form(tmp_path: Any) -> None:
    tr = Trace()
    tr.append(0.0, "n", "k", {"obj": object()})
    with pytest.raises(TypeError, match="not JSON-able"):
        tr.digest()
    ok = Trace([(0.0, "n", "k", {"x": 1})])
    path = tmp_path / "trace.jsonl"
    ok.write(path)
    assert path.read_text() == ok.dumps()
    assert len(ok) == 1 and ok[0][3] == {"x": 1}


def test_engine_records_line_up_with_time() -> None:
    sim = Simulator(seed=9)
    sim.add_topology(line(3), factory(Echo))
    sim.schedule(1.0, lambda s: s.crash("n0001"))
    sim.schedule(1.0, lambda s: s.net.partition([{"n0000"}]))
    sim.schedule(2.0, lambda s: s.net.heal())
    sim.run(3.0)
    kinds = [(t, n, k) for t, n, k, _ in sim.trace if k.startswith("sim.")]
    assert kinds == [
        (1.0, "n0001", "sim.crash"),
        (1.0, "*", "sim.partition"),
        (2.0, "*", "sim.heal"),
    ]
    times = [r[0] for r in sim.trace]
    assert times == sorted(times)
