"""Topology builders and validation."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from x0tta6bl4.sansio import Action, Input
from x0tta6bl4.sim import (
    Edge,
    LinkSpec,
    SimError,
    Simulator,
    Topology,
    TopologyError,
    diamond,
    grid,
    line,
    node_names,
    random_geometric,
    ring,
)


def test_names_are_zero_padded_and_ordered() -> None:
    assert node_names(3) == ["n0000", "n0001", "n0002"]
    assert node_names(12345)[-1] == "n12344"
    assert node_names(20000) == sorted(node_names(20000))


def test_line() -> None:
    t = line(4)
    assert t.nodes == ("n0000", "n0001", "n0002", "n0003")
    assert [(e.a, e.b) for e in t.edges] == [
        ("n0000", "n0001"),
        ("n0001", "n0002"),
        ("n0002", "n0003"),
    ]
    assert [t.degree(n) for n in t.nodes] == [1, 2, 2, 1]
    assert t.is_connected()
    assert line(1).edges == () and line(1).is_connected()


def test_ring() -> None:
    t = ring(5)
    assert len(t) == 5 and len(t.edges) == 5
    assert all(t.degree(n) == 2 for n in t.nodes)
    assert t.neighbours("n0000") == ("n0001", "n0004")


def test_diamond() -> None:
    t = diamond(LinkSpec(latency=0.002))
    assert t.nodes == ("a", "b", "c", "d")
    assert {frozenset((e.a, e.b)) for e in t.edges} == {
        frozenset(p) for p in [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")]
    }
    assert t.neighbours("a") == ("b", "c") and t.neighbours("d") == ("b", "c")
    assert all(e.spec.latency == 0.002 for e in t.edges)


def test_grid() -> None:
    t = grid(4, 3)
    assert len(t) == 12 and len(t.edges) == 3 * 3 + 4 * 2
    degrees = sorted(t.degree(n) for n in t.nodes)
    assert degrees == [2] * 4 + [3] * 6 + [4] * 2
    assert t.neighbours("n0005") == ("n0001", "n0004", "n0006", "n0009")
    assert t.is_connected()


def test_builders_reject_bad_sizes() -> None:
    with pytest.raises(TopologyError, match="line"):
        line(0)
    with pytest.raises(TopologyError, match="ring"):
        ring(2)
    with pytest.raises(TopologyError, match="grid"):
        grid(0, 3)
    with pytest.raises(TopologyError, match="random_geometric"):
        random_geometric(0, 1)
    with pytest.raises(TopologyError, match="mean_degree"):
        random_geometric(10, 1, mean_degree=0.0)
    with pytest.raises(TopologyError, match="latency"):
        random_geometric(10, 1, latency=(0.02, 0.01))


@pytest.mark.parametrize(
    ("nodes", "edges", "match"),
    [
        (("a", "a"), (), "duplicate node"),
        (("a", ""), (), "non-empty str"),
        (("a", "b"), (Edge("a", "c"),), "unknown node 'c'"),
        (("a",), (Edge("a", "a"),), "self-loop"),
        (("a", "b"), (Edge("a", "b"), Edge("b", "a")), "repeated edge"),
    ],
)
def test_topology_validation(nodes: tuple[str, ...], edges: tuple[Edge, ...], match: str) -> None:
    with pytest.raises(TopologyError, match=match):
        Topology(nodes, edges)


def test_topology_errors_are_sim_errors_and_value_errors() -> None:
    assert issubclass(TopologyError, SimError) and issubclass(TopologyError, ValueError)
    with pytest.raises(TopologyError, match="positions missing"):
        Topology(("a", "b"), (), {"a": (0.0, 0.0)})
    with pytest.raises(TopologyError, match="unknown node"):
        line(2).neighbours("zz")


def test_components_and_with_spec() -> None:
    t = Topology(("c", "a", "b", "d"), (Edge("d", "c"), Edge("a", "b")))
    assert t.components() == [["c", "d"], ["a", "b"]]
    assert not t.is_connected()
    slow = t.with_spec(latency=0.5)
    assert all(e.spec.latency == 0.5 for e in slow.edges) and slow.nodes == t.nodes


def test_random_geometric_is_deterministic_per_seed() -> None:
    a, b, c = random_geometric(200, 7), random_geometric(200, 7), random_geometric(200, 8)
    assert a == b
    assert a.edges != c.edges


def test_random_geometric_hits_the_mean_degree_and_latency_range() -> None:
    t = random_geometric(1000, seed=3, mean_degree=5.0)
    assert len(t) == 1000
    assert t.is_connected()
    assert 4.5 <= t.mean_degree() <= 5.6
    lat = [e.spec.latency for e in t.edges]
    assert min(lat) >= 0.001 and max(lat) == pytest.approx(0.020)
    assert t.positions is not None
    assert all(0.0 <= x < 1.0 and 0.0 <= y < 1.0 for x, y in t.positions.values())
    # Latency grows with distance.
    by_dist = sorted(t.edges, key=lambda e: math.dist(t.positions[e.a], t.positions[e.b]))  # type: ignore[index]
    assert by_dist[0].spec.latency < by_dist[-1].spec.latency


def test_random_geometric_small_cases() -> None:
    assert random_geometric(1, 0).edges == ()
    two = random_geometric(2, 0, mean_degree=0.01)  # too sparse: joined anyway
    assert len(two.edges) == 1 and two.is_connected()
    dense = random_geometric(6, 0, mean_degree=50.0)
    assert len(dense.edges) == 15


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 150), seed=st.integers(0, 2**32), mean_degree=st.floats(0.2, 8.0))
def test_random_geometric_is_always_connected(n: int, seed: int, mean_degree: float) -> None:
    t = random_geometric(n, seed, mean_degree)
    assert t.is_connected()
    assert all(e.a < e.b for e in t.edges)  # builder emits (lower index, higher index)


class Quiet:
    def __init__(self, name: str, rng: random.Random, now: float) -> None:
        pass

    def start(self, now: float) -> list[Action]:
        return []

    def handle(self, now: float, inp: Input) -> list[Action]:
        return []


def test_a_topology_installs_into_a_simulator() -> None:
    t = grid(3, 3, LinkSpec(latency=0.004))
    sim = Simulator(seed=0)
    sim.add_topology(t, Quiet)
    assert sim.nodes == list(t.nodes)
    assert sim.net.links() == [(e.a, e.b) for e in t.edges]
    assert sim.net.link("n0004", "n0001").latency == 0.004


def test_the_diamond_builder_is_not_shadowed_by_a_module() -> None:
    # A submodule named like a package attribute replaces it once imported.
    import x0tta6bl4.sim.failover_demo  # noqa: F401
    from x0tta6bl4.sim import diamond

    assert callable(diamond) and len(diamond().nodes) == 4
