"""One-way end-to-end traffic to a node that crashed and came back.

The sender keeps its end-to-end session; the restarted node has none, so every packet
on it is dropped as ``unknown_index``. Nothing else would start a new handshake until
the session is 120 s old (the rekey timer). These tests send one way only, as a sensor
reporting to a collector does, and require the restarted node to be reachable again
within about a second (one node) or a few seconds (a mass restart).
"""

from __future__ import annotations

import random

from tests.sim.helpers import converge
from x0tta6bl4.sansio import Action, Deliver
from x0tta6bl4.sim import Simulator, build_mesh, line, random_geometric

PORT = 9
PERIOD = 0.05  # one packet every 50 ms, one way


def _record(sim: Simulator) -> dict[tuple[str, str], list[float]]:
    """(src, dst) -> times of the application deliveries on PORT."""
    got: dict[tuple[str, str], list[float]] = {}

    def on_action(t: float, node: str, act: Action) -> None:
        if type(act) is Deliver and act.port == PORT:
            got.setdefault((act.src, node), []).append(t)

    sim.on_action.append(on_action)
    return got


def _stream(sim: Simulator, src: str, dst: str, start: float, end: float) -> None:
    t = start
    while t < end:
        sim.send_app(t, src, dst, PORT, b"reading")
        t = round(t + PERIOD, 6)


def test_one_way_traffic_reaches_a_restarted_node_within_a_second() -> None:
    topo = line(4)
    sim = build_mesh(topo, seed=5).sim
    src, dst = "n0000", "n0003"
    t0 = round(converge(sim, 20.0) + 0.5, 6)
    got = _record(sim)
    crash_at, restart_at = t0 + 2.0, t0 + 3.0
    end = restart_at + 6.0
    _stream(sim, src, dst, t0, end)
    sim.schedule(crash_at, lambda s: s.crash(dst))
    sim.schedule(restart_at, lambda s: s.restart(dst))
    sim.run(end + 1.0)

    times = got.get((src, dst), [])
    assert len([t for t in times if t < crash_at]) >= 30  # the session worked before
    after = [t for t in times if t >= restart_at]
    assert after, "nothing reached the restarted node"
    gap = after[0] - restart_at
    assert gap <= 1.5, f"first delivery {gap:.2f} s after the restart"
    # From then on the stream flows: the lossless line loses nothing once recovered.
    settled = after[0] + 0.5
    sent_later = round((end - settled) / PERIOD)
    assert len([t for t in after if t >= settled + 0.1]) >= sent_later - 4


def test_mass_restart_survivors_reach_every_restarted_node_again() -> None:
    seed = 3
    topo = random_geometric(40, seed)
    names = list(topo.nodes)
    sim = build_mesh(topo, seed=seed).sim
    t0 = round(converge(sim, 20.0) + 1.0, 6)
    rng = random.Random(seed)
    victims = rng.sample(names, 10)
    survivors = [n for n in names if n not in victims]
    pairs = [(rng.choice(survivors), v) for v in victims]
    got = _record(sim)
    kill_at = t0 + 2.0
    restart_at = kill_at + 2.0
    end = restart_at + 8.0
    for s, v in pairs:
        _stream(sim, s, v, t0, end)

    def kill_all(s: Simulator) -> None:
        for v in victims:
            s.crash(v)

    def restart_all(s: Simulator) -> None:
        for v in victims:
            s.restart(v)

    sim.schedule(kill_at, kill_all)
    sim.schedule(restart_at, restart_all)
    sim.run(end)

    gaps: dict[tuple[str, str], float | None] = {}
    for pair in pairs:
        times = got.get(pair, [])
        assert [t for t in times if t < kill_at], f"{pair} never had a session"
        after = [t for t in times if t >= restart_at]
        gaps[pair] = after[0] - restart_at if after else None
    late = {p: g for p, g in gaps.items() if g is None or g > 4.0}
    assert not late, f"survivor -> restarted node not flowing 4 s after the restart: {late}"
