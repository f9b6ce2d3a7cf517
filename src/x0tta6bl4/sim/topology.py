"""Topologies: node names in a fixed order plus undirected edges with a ``LinkSpec``.

Builders give small named shapes (``line``, ``ring``, ``diamond``, ``grid``) and two
seeded random graphs that are always connected (``random_geometric``,
``random_regular``); :func:`build_topology` picks one by kind name and size, for the
runner and ``x0t sim``.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from .types import LinkSpec, SimError

__all__ = [
    "TOPOLOGY_KINDS",
    "Edge",
    "LinkSpec",
    "Topology",
    "TopologyError",
    "build_topology",
    "diamond",
    "grid",
    "line",
    "node_names",
    "random_geometric",
    "random_regular",
    "ring",
]


class TopologyError(SimError):
    """A topology is malformed (duplicate or unknown node, self-loop, repeated edge)."""


@dataclass(frozen=True, slots=True)
class Edge:
    a: str
    b: str
    spec: LinkSpec = field(default_factory=LinkSpec)


@dataclass(frozen=True, slots=True)
class Topology:
    """Nodes (order is the order they are added to a simulator) and undirected edges."""

    nodes: tuple[str, ...]
    edges: tuple[Edge, ...]
    positions: Mapping[str, tuple[float, float]] | None = None
    _adj: dict[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Accept lists; store tuples so a Topology is immutable and hashable-ish.
        object.__setattr__(self, "nodes", tuple(self.nodes))
        object.__setattr__(self, "edges", tuple(self.edges))
        adj: dict[str, list[str]] = {}
        for n in self.nodes:
            if not isinstance(n, str) or not n:
                raise TopologyError(f"node names must be non-empty str, got {n!r}")
            if n in adj:
                raise TopologyError(f"duplicate node {n!r}")
            adj[n] = []
        seen: set[frozenset[str]] = set()
        for e in self.edges:
            if not isinstance(e, Edge):
                raise TopologyError(f"edges must be Edge instances, got {e!r}")
            for n in (e.a, e.b):
                if n not in adj:
                    raise TopologyError(f"edge {e.a!r}-{e.b!r} names unknown node {n!r}")
            if e.a == e.b:
                raise TopologyError(f"self-loop on {e.a!r}")
            key = frozenset((e.a, e.b))
            if key in seen:
                raise TopologyError(f"repeated edge {e.a!r}-{e.b!r}")
            seen.add(key)
            adj[e.a].append(e.b)
            adj[e.b].append(e.a)
        if self.positions is not None:
            missing = [n for n in self.nodes if n not in self.positions]
            if missing:
                raise TopologyError(f"positions missing for {missing[:5]}")
        object.__setattr__(self, "_adj", {n: tuple(v) for n, v in adj.items()})

    def __len__(self) -> int:
        return len(self.nodes)

    def neighbours(self, name: str) -> tuple[str, ...]:
        try:
            return self._adj[name]
        except KeyError:
            raise TopologyError(f"unknown node {name!r}") from None

    def degree(self, name: str) -> int:
        return len(self.neighbours(name))

    def mean_degree(self) -> float:
        return 2 * len(self.edges) / len(self.nodes) if self.nodes else 0.0

    def components(self) -> list[list[str]]:
        """Connected components, each in node order, ordered by their first node."""
        index = {n: i for i, n in enumerate(self.nodes)}
        seen: set[str] = set()
        out: list[list[str]] = []
        for start in self.nodes:
            if start in seen:
                continue
            seen.add(start)
            comp = [start]
            stack = [start]
            while stack:
                for m in self._adj[stack.pop()]:
                    if m not in seen:
                        seen.add(m)
                        comp.append(m)
                        stack.append(m)
            out.append(sorted(comp, key=index.__getitem__))
        return out

    def is_connected(self) -> bool:
        return len(self.components()) <= 1

    def with_spec(self, **changes: Any) -> Topology:
        """The same graph with ``changes`` (LinkSpec fields) applied to every edge."""
        edges = tuple(Edge(e.a, e.b, dataclasses.replace(e.spec, **changes)) for e in self.edges)
        return Topology(self.nodes, edges, self.positions)


def node_names(n: int) -> list[str]:
    """``n0000``, ``n0001``, ...; zero-padded so lexical order is numeric order."""
    width = max(4, len(str(n - 1)))
    return [f"n{i:0{width}d}" for i in range(n)]


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise TopologyError(msg)


def _from_pairs(names: Sequence[str], pairs: Iterable[tuple[int, int]], spec: LinkSpec) -> Topology:
    return Topology(tuple(names), tuple(Edge(names[i], names[j], spec) for i, j in pairs))


def line(n: int, spec: LinkSpec | None = None) -> Topology:
    """n0000 - n0001 - ... - n(n-1)."""
    _need(isinstance(n, int) and n >= 1, f"line needs n >= 1, got {n!r}")
    return _from_pairs(node_names(n), ((i, i + 1) for i in range(n - 1)), spec or LinkSpec())


def ring(n: int, spec: LinkSpec | None = None) -> Topology:
    """A line closed into a cycle."""
    _need(isinstance(n, int) and n >= 3, f"ring needs n >= 3, got {n!r}")
    return _from_pairs(node_names(n), ((i, (i + 1) % n) for i in range(n)), spec or LinkSpec())


def diamond(spec: LinkSpec | None = None) -> Topology:
    """a-b, a-c, b-d, c-d: two disjoint paths from a to d."""
    s = spec or LinkSpec()
    return Topology(
        ("a", "b", "c", "d"),
        (Edge("a", "b", s), Edge("a", "c", s), Edge("b", "d", s), Edge("c", "d", s)),
    )


def grid(w: int, h: int, spec: LinkSpec | None = None) -> Topology:
    """A w x h lattice; node ``y * w + x`` sits at column x, row y."""
    _need(
        isinstance(w, int) and isinstance(h, int) and w >= 1 and h >= 1,
        f"grid needs w, h >= 1, got {w!r}, {h!r}",
    )
    pairs: list[tuple[int, int]] = []
    for y in range(h):
        for x in range(w):
            i = y * w + x
            if x + 1 < w:
                pairs.append((i, i + 1))
            if y + 1 < h:
                pairs.append((i, i + w))
    return _from_pairs(node_names(w * h), pairs, spec or LinkSpec())


def _pair_probability(r: float) -> float:
    """P(two uniform points of the unit square are within r), for 0 <= r <= 1.

    Exact (boundary effects included), so the radius hits the target mean degree
    for small n too.
    """
    return math.pi * r * r - 8.0 / 3.0 * r**3 + 0.5 * r**4


def _radius_for(n: int, mean_degree: float) -> float:
    target = mean_degree / (n - 1)
    if target >= _pair_probability(1.0):
        return math.sqrt(2.0)  # every pair
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if _pair_probability(mid) < target:
            lo = mid
        else:
            hi = mid
    return hi


def random_geometric(
    n: int,
    seed: int,
    mean_degree: float = 5.0,
    *,
    spec: LinkSpec | None = None,
    latency: tuple[float, float] = (0.001, 0.020),
) -> Topology:
    """``n`` points uniform in the unit square, linked when closer than a radius chosen
    for ``mean_degree``; then each component but the largest is joined by its shortest
    link to a node outside it, until the graph is connected.

    Latency grows linearly with distance from ``latency[0]`` (distance 0) to
    ``latency[1]`` (the longest edge); the other link parameters come from ``spec``.
    """
    _need(isinstance(n, int) and n >= 1, f"random_geometric needs n >= 1, got {n!r}")
    _need(
        mean_degree > 0 and math.isfinite(mean_degree),
        f"mean_degree must be > 0, got {mean_degree!r}",
    )
    lat_lo, lat_hi = latency
    _need(0 <= lat_lo <= lat_hi, f"latency range must be 0 <= lo <= hi, got {latency!r}")
    base = spec or LinkSpec()
    rng = random.Random(seed)
    pts = [(rng.random(), rng.random()) for _ in range(n)]
    names = node_names(n)
    pairs: list[tuple[int, int]] = []
    if n > 1:
        r = _radius_for(n, mean_degree)
        pairs = _close_pairs(pts, r)
        pairs += _join_components(pts, n, pairs)

    def dist(i: int, j: int) -> float:
        return math.dist(pts[i], pts[j])

    longest = max((dist(i, j) for i, j in pairs), default=0.0)
    edges = []
    for i, j in pairs:
        frac = dist(i, j) / longest if longest > 0 else 0.0
        lat = lat_lo + (lat_hi - lat_lo) * frac
        edges.append(Edge(names[i], names[j], dataclasses.replace(base, latency=lat)))
    return Topology(tuple(names), tuple(edges), {names[i]: pts[i] for i in range(n)})


def _close_pairs(pts: Sequence[tuple[float, float]], r: float) -> list[tuple[int, int]]:
    """All (i, j), i < j, within distance r; bucketed in cells of side >= r, so the
    cost is about n * mean_degree rather than n**2."""
    m = max(1, min(int(1.0 / r), 1024)) if r > 0 else 1
    cells: dict[tuple[int, int], list[int]] = {}
    for i, (x, y) in enumerate(pts):
        cells.setdefault((min(int(x * m), m - 1), min(int(y * m), m - 1)), []).append(i)
    r2 = r * r
    out: list[tuple[int, int]] = []
    for i, (x, y) in enumerate(pts):
        cx, cy = min(int(x * m), m - 1), min(int(y * m), m - 1)
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for j in cells.get((cx + dx, cy + dy), ()):
                    if j > i:
                        px, py = pts[j]
                        if (px - x) ** 2 + (py - y) ** 2 <= r2:
                            out.append((i, j))
    out.sort()
    return out


def _join_components(
    pts: Sequence[tuple[float, float]], n: int, pairs: list[tuple[int, int]]
) -> list[tuple[int, int]]:
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    added: list[tuple[int, int]] = []
    while True:
        comps: dict[int, list[int]] = {}
        for i in range(n):
            comps.setdefault(find(i), []).append(i)
        if len(comps) == 1:
            return added
        # Largest first (ties: lowest index); every other component gets its shortest
        # link to outside itself. Each round at least halves the number of components.
        ordered = sorted(comps.values(), key=lambda c: (-len(c), c[0]))
        links: list[tuple[int, int]] = []
        for comp in ordered[1:]:
            inside = set(comp)
            best: tuple[float, int, int] | None = None
            for i in comp:
                xi, yi = pts[i]
                for j in range(n):
                    if j in inside:
                        continue
                    d = (pts[j][0] - xi) ** 2 + (pts[j][1] - yi) ** 2
                    if best is None or d < best[0]:
                        best = (d, i, j)
            assert best is not None
            links.append((min(best[1], best[2]), max(best[1], best[2])))
        for i, j in links:
            ri, rj = find(i), find(j)
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
                added.append((i, j))


REGULAR_ATTEMPTS: Final = 200
"""Fresh tries of the random pairing before ``random_regular`` gives up."""
_PAIR_TRIES: Final = 64  # random stub pairs tried per edge before a try restarts


def random_regular(n: int, degree: int, seed: int, *, spec: LinkSpec | None = None) -> Topology:
    """A connected random ``degree``-regular graph on ``n`` nodes, the same for one seed.

    Stubs are paired at random, skipping pairs that would make a self-loop or a repeated
    edge (Steger-Wormald); a try that gets stuck, or ends disconnected, starts over, at
    most :data:`REGULAR_ATTEMPTS` times. Every link gets ``spec``: there is no geometry.
    """
    _need(isinstance(n, int) and n >= 2, f"random_regular needs n >= 2, got {n!r}")
    _need(
        isinstance(degree, int) and 1 <= degree < n,
        f"random_regular needs 1 <= degree < n, got degree {degree!r} for n {n}",
    )
    _need(n * degree % 2 == 0, f"random_regular needs n * degree even, got {n} * {degree}")
    _need(degree >= 2 or n == 2, f"a {degree}-regular graph on {n} nodes is never connected")
    rng = random.Random(seed)
    names = node_names(n)
    for _ in range(REGULAR_ATTEMPTS):
        pairs = _pair_stubs(n, degree, rng)
        if pairs is None:
            continue
        topo = _from_pairs(names, sorted(pairs), spec or LinkSpec())
        if topo.is_connected():
            return topo
    raise TopologyError(
        f"no connected {degree}-regular graph on {n} nodes in {REGULAR_ATTEMPTS} tries"
    )


def _pair_stubs(n: int, degree: int, rng: random.Random) -> set[tuple[int, int]] | None:
    stubs = [i for i in range(n) for _ in range(degree)]
    pairs: set[tuple[int, int]] = set()
    while stubs:
        for _ in range(_PAIR_TRIES):
            i, j = rng.randrange(len(stubs)), rng.randrange(len(stubs))
            u, v = stubs[i], stubs[j]
            if u != v and (min(u, v), max(u, v)) not in pairs:
                break
        else:
            return None  # stuck: only self-loops or repeats left
        pairs.add((min(u, v), max(u, v)))
        for k in sorted((i, j), reverse=True):  # swap-remove, higher index first
            stubs[k] = stubs[-1]
            stubs.pop()
    return pairs


TOPOLOGY_KINDS: Final = ("random-geometric", "random-regular", "line", "grid", "ring")
"""Kinds :func:`build_topology` knows (and ``x0t sim --topology`` offers)."""


def build_topology(
    kind: str,
    nodes: int,
    seed: int,
    *,
    degree: float | None = None,
    spec: LinkSpec | None = None,
) -> Topology:
    """A topology of ``nodes`` nodes by kind name, the same for one seed.

    ``degree`` is the mean degree of ``random-geometric`` (default 5) and the degree of
    ``random-regular`` (default 4); the other kinds ignore it. ``grid`` is the most
    nearly square lattice with ``nodes`` nodes: ``ceil(sqrt(nodes))`` columns, the last
    row possibly short. ``spec`` sets every link (random geometric graphs keep their
    distance-based latency and take the rest from ``spec``).
    """
    if kind == "random-geometric":
        return random_geometric(nodes, seed, 5.0 if degree is None else degree, spec=spec)
    if kind == "random-regular":
        d = 4 if degree is None else degree
        _need(float(d).is_integer(), f"random-regular needs a whole degree, got {d!r}")
        return random_regular(nodes, int(d), seed, spec=spec)
    if kind == "line":
        return line(nodes, spec)
    if kind == "ring":
        return ring(nodes, spec)
    if kind == "grid":
        _need(isinstance(nodes, int) and nodes >= 1, f"grid needs nodes >= 1, got {nodes!r}")
        w = math.isqrt(nodes - 1) + 1  # ceil(sqrt(nodes))
        pairs = [(i, i + 1) for i in range(nodes - 1) if (i + 1) % w]
        pairs += [(i, i + w) for i in range(nodes - w)]
        return _from_pairs(node_names(nodes), sorted(pairs), spec or LinkSpec())
    raise TopologyError(f"unknown topology kind {kind!r}; choose from {', '.join(TOPOLOGY_KINDS)}")
