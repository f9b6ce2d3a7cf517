"""Shared builders and probes for the real-mesh tests in ``tests/sim``.

Imported as ``from tests.sim.helpers import ...``.
"""

from __future__ import annotations

from x0tta6bl4.sansio import Action, Deliver, Event
from x0tta6bl4.sim import Edge, LinkSpec, Simulator, Topology
from x0tta6bl4.sim.meshsim import meshes, path


def two_paths(spec: LinkSpec) -> Topology:
    """a-b-d (2 hops) and a-c-e-d (3 hops), every link ``spec``: a prefers b while a-b
    is good."""
    pairs = (("a", "b"), ("b", "d"), ("a", "c"), ("c", "e"), ("e", "d"))
    return Topology(("a", "b", "c", "d", "e"), tuple(Edge(x, y, spec) for x, y in pairs))


def converge(sim: Simulator, limit: float, step: float = 0.1) -> float:
    """Run in ``step`` increments until every node's next hops lead to every other node
    (a routing loop raises); the time, or AssertionError past ``limit``."""
    names = sim.nodes
    while sim.now < limit:
        sim.run(round(sim.now + step, 6))
        nodes = meshes(sim)
        if all(path(nodes, a, b) for a in names for b in names if a != b):
            return sim.now
    raise AssertionError(f"no convergence within {limit} s")


def delivered_payloads(sim: Simulator, port: int) -> set[bytes]:
    """The payloads any node delivers on ``port`` from now on (filled as the run goes)."""
    got: set[bytes] = set()

    def tap(t: float, node: str, d: Deliver) -> None:
        if d.port == port:
            got.add(d.payload)

    sim.on_deliver.append(tap)
    return got


def healing_actions(sim: Simulator) -> list[tuple[float, str, str, str]]:
    """``(t, node, subject, action)`` of every healing action any node takes from now on
    (filled as the run goes)."""
    out: list[tuple[float, str, str, str]] = []

    def observe(t: float, node: str, act: Action) -> None:
        if type(act) is Event and act.kind == "healing.action":
            out.append((t, node, str(act.fields["subject"]), str(act.fields["action"])))

    sim.on_action.append(observe)
    return out
