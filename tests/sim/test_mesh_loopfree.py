"""Loop freedom of the real mesh as an invariant, checked after every event.

Hypothesis draws small connected graphs and fault scripts (kill, restart, cut, restore,
partition, heal at random times). Every node core is wrapped so that after each input
it handles (datagram, timer, start) the next-hop chain from every live node toward
every node is followed; ``sim.mesh.path`` raises on a cycle. Crashes, link changes and
partitions do not touch routing tables by themselves: their effect on routes shows up
in the next core event, which is checked.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from x0tta6bl4.mesh.node import MeshNode
from x0tta6bl4.sansio import Action, Core, Input
from x0tta6bl4.sim import Edge, LinkSpec, Simulator, Topology, node_names, schedule
from x0tta6bl4.sim.meshsim import MeshSim, build_world, mesh_of, path

WORLD_SEED = 11  # one certificate set per node count, shared by every example


class _Checked:
    """A core that runs ``check`` after every input it handles."""

    def __init__(self, inner: Core, check: Callable[[], None]) -> None:
        self.inner = inner
        self.check = check

    def start(self, now: float) -> Iterable[Action]:
        acts = self.inner.start(now)
        self.check()
        return acts

    def handle(self, now: float, inp: Input) -> Iterable[Action]:
        acts = self.inner.handle(now, inp)
        self.check()
        return acts


@dataclass(frozen=True)
class Fault:
    at: float
    op: str
    a: int
    b: int


OPS = ("kill", "restart", "cut", "restore", "partition", "heal")


@dataclass(frozen=True)
class _Chosen:
    """``fault`` as a scenario action: what it hits is chosen when it runs."""

    topo: Topology
    fault: Fault

    def apply(self, sim: Simulator) -> None:
        _apply(sim, self.topo, self.fault)


@st.composite
def graphs(draw: st.DrawFn) -> Topology:
    n = draw(st.integers(4, 7))
    names = node_names(n)
    # A random spanning tree keeps it connected; extra edges add the cycles that make
    # loops possible at all.
    pairs = {(draw(st.integers(0, i - 1)), i) for i in range(1, n)}
    others = [(i, j) for i in range(n) for j in range(i + 1, n) if (i, j) not in pairs]
    extra = draw(st.lists(st.sampled_from(others), max_size=n, unique=True)) if others else []
    latency = st.sampled_from((0.001, 0.004, 0.012, 0.030))
    edges = tuple(
        Edge(names[i], names[j], LinkSpec(latency=draw(latency)))
        for i, j in sorted(pairs | set(extra))
    )
    return Topology(tuple(names), edges)


faults = st.lists(
    st.builds(
        Fault,
        at=st.integers(20, 60).map(lambda k: k / 10),  # 2.0 .. 6.0 s
        op=st.sampled_from(OPS),
        a=st.integers(0, 63),
        b=st.integers(0, 63),
    ),
    min_size=1,
    max_size=6,
)


def _apply(sim: Simulator, topo: Topology, f: Fault) -> None:
    """Apply ``f`` if it makes sense now (kill a live node, restore a cut link...)."""
    names = list(topo.nodes)
    alive = [n for n in names if sim.is_alive(n)]
    dead = [n for n in names if not sim.is_alive(n)]
    links = [(e.a, e.b) for e in topo.edges]
    if f.op == "kill" and len(alive) > 2:
        sim.crash(alive[f.a % len(alive)])
    elif f.op == "restart" and dead:
        sim.restart(dead[f.a % len(dead)])
    elif f.op == "cut":
        up = [lk for lk in links if sim.net.is_up(*lk)]
        if up:
            sim.net.set_up(*up[f.a % len(up)], False)
    elif f.op == "restore":
        down = [lk for lk in links if not sim.net.is_up(*lk)]
        if down:
            sim.net.set_up(*down[f.a % len(down)], True)
    elif f.op == "partition":
        # Bit i of b puts node i in the first group; the rest form the other.
        group = [n for i, n in enumerate(names) if f.b >> i & 1]
        sim.net.partition([group])
    elif f.op == "heal":
        sim.net.heal()


@settings(
    # X0T_LOOPFREE_EXAMPLES runs a deeper search than the suite's (600-1,500 by hand)
    max_examples=int(os.environ.get("X0T_LOOPFREE_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(topo=graphs(), script=faults, seed=st.integers(0, 2**16))
def test_no_routing_loop_after_any_event(topo: Topology, script: list[Fault], seed: int) -> None:
    world = build_world(topo.nodes, WORLD_SEED)
    mesh = MeshSim(world, topo, healing=True)
    make = mesh.factory()
    live: dict[str, MeshNode] = {}
    sim = Simulator(seed, trace_drops=False)
    checks = [0]
    names = list(topo.nodes)

    def check() -> None:
        nodes = {n: m for n, m in live.items() if sim.is_alive(n)}
        for src in nodes:
            for dst in names:
                if dst != src:
                    path(nodes, src, dst)  # raises AssertionError on a cycle
        checks[0] += 1

    def factory(name: str, rng: random.Random, now: float) -> Core:
        core = make(name, rng, now)
        m = mesh_of(core)
        assert m is not None
        live[name] = m  # a restart replaces the entry with the new incarnation
        return _Checked(core, check)

    sim.add_topology(topo, factory)
    for f in script:
        schedule(sim, f.at, _Chosen(topo, f))
    end = max(f.at for f in script) + 2.0
    sim.run(end)
    assert checks[0] > 100  # the invariant was really exercised


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("back_after", [0.0, 0.1])
def test_a_node_restarted_before_its_neighbours_notice_forms_no_loop(
    seed: int, back_after: float
) -> None:
    # n0000 dies and is back before its neighbours noticed. n0001 hears the new
    # incarnation first; its route to n0003 gone, its query used to reset on n0002's
    # reply, a route still running through the old n0000, and the new n0000, with no
    # routes of its own yet, took n0001's: n0000 -> n0001 -> n0002 -> n0000 until n0002
    # noticed (found by a 1,500-example run of the test above; every seed looped, for a
    # restart at once and in 7 of 10 seeds 0.1 s after). A node now makes no query reset
    # for RESTART_GHOST after a neighbour restarted.
    spec = LinkSpec(latency=0.001)
    topo = Topology(
        ("n0000", "n0001", "n0002", "n0003"),
        (
            Edge("n0000", "n0001", spec),
            Edge("n0000", "n0002", LinkSpec(latency=0.004)),
            Edge("n0000", "n0003", spec),
            Edge("n0001", "n0002", spec),
        ),
    )
    script = [Fault(2.0, "kill", 0, 0), Fault(round(2.0 + back_after, 1), "restart", 0, 0)]
    test_no_routing_loop_after_any_event.hypothesis.inner_test(  # type: ignore[attr-defined]
        topo=topo, script=script, seed=seed
    )
