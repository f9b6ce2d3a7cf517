"""First contact over a long, mildly lossy path.

A first end-to-end contact fetches the responder's certificate (about 7 KB, six
fragments) and sends an INIT carrying ours (about 9 KB, eight fragments), every datagram
relayed hop by hop. Over 30 hops at 1 % loss per link a single datagram arrives with
probability 0.74, a whole INIT in one go with probability 0.09: first contact has to
repair what was lost, not start again.
"""

from __future__ import annotations

import statistics

from x0tta6bl4.sansio import Action, Deliver
from x0tta6bl4.sim import LinkSpec, Simulator, line
from x0tta6bl4.sim.meshsim import MeshSim, build_world, meshes, path

PORT = 7
PERIOD = 0.1


def first_delivery(hops: int, seed: int, loss: float = 0.01, limit: float = 30.0) -> float | None:
    """Seconds from the first application send to the first delivery end to end, over a
    converged line of ``hops`` links, one packet every ``PERIOD``; None if none by ``limit``."""
    topo = line(hops + 1, LinkSpec(loss=loss))
    sim = Simulator(seed, trace_drops=False)
    sim.add_topology(topo, MeshSim(build_world(topo.nodes, 1), topo, healing=False).factory())
    src, dst = topo.nodes[0], topo.nodes[-1]
    while not path(meshes(sim), src, dst):
        assert sim.now < 30.0, "the line did not converge"
        sim.run(round(sim.now + 0.1, 6))
    t0 = round(sim.now + 0.5, 6)
    got: list[float] = []

    def on_action(t: float, node: str, act: Action) -> None:
        if node == dst and type(act) is Deliver and act.port == PORT:
            got.append(t)

    sim.on_action.append(on_action)
    k = 0
    while t0 + k * PERIOD < t0 + limit:
        sim.send_app(round(t0 + k * PERIOD, 6), src, dst, PORT, b"packet %d" % k)
        k += 1
    while not got and sim.now < t0 + limit:
        sim.run(round(sim.now + 0.25, 6))
    return got[0] - t0 if got else None


def test_first_contact_over_30_lossy_hops_takes_seconds_not_minutes() -> None:
    times = [first_delivery(30, seed) for seed in (1, 2, 3, 4, 5)]
    assert None not in times, times
    done = [t for t in times if t is not None]
    assert statistics.median(done) <= 3.0, times
    assert max(done) <= 8.0, times


def test_first_contact_over_60_lossy_hops_succeeds() -> None:
    t = first_delivery(60, seed=1)
    assert t is not None and t <= 20.0, t
