"""Simulator benchmarks: cold convergence, control traffic and wall-clock cost of random
meshes of 10, 100 and 1,000 nodes, and the failover distribution of random relay kills.

Everything runs the real protocol, healing loop and cryptography with default timers.
Times are virtual seconds except the wall-clock figure.
"""

from __future__ import annotations

import dataclasses
import math

from bench.report import Suite
from x0tta6bl4.sim.runner import convergence_stats, failover_samples, percentile

SEED = 1
FAILOVER_MESHES = 4  # 4 meshes x 25 kills = 100 relay kills


def run(quick: bool = False) -> Suite:
    suite = Suite("sim")
    sizes = (10, 100) if quick else (10, 100, 1000)
    steady: dict[int, float] = {}
    for n in sizes:
        print(f"  ... {n} nodes, 60 virtual s", flush=True)
        s = convergence_stats(n, SEED, 60.0)
        steady[n] = s.steady_bytes_per_node_s
        suite.details[f"convergence_{n}"] = dataclasses.asdict(s)
        suite.add(
            f"sim_converge_s_{n}", f"cold convergence, {n} nodes", s.converge_s, "s (virtual)"
        )
        suite.add(
            f"sim_control_bytes_per_node_s_{n}" if n >= 100 else "",
            f"control traffic per node, {n} nodes (steady: convergence + 5 s to 60 s)",
            s.steady_bytes_per_node_s,
            "B/s",
            f"whole run incl. start-up handshakes: {s.total_bytes_per_node_s:,.0f} B/s",
        )
        suite.add(
            f"sim_wall_s_per_60s_{n}" if n == 1000 else "",
            f"wall clock to simulate 60 virtual s, {n} nodes",
            s.wall_s,
            "s",
        )
    if 100 in steady and 1000 in steady:
        suite.add(
            "sim_control_growth_100_to_1000",
            "control traffic per node, 1,000 / 100 nodes (linear growth would be <= 10)",
            steady[1000] / steady[100],
            "ratio",
        )
    meshes = 1 if quick else FAILOVER_MESHES
    kills = 10 if quick else 25
    samples: list[float] = []
    for m in range(meshes):
        print(f"  ... failover: mesh {m + 1}/{meshes}, {kills} relay kills", flush=True)
        samples += failover_samples(100, kills, seed=SEED + m)
    finite = [x for x in samples if math.isfinite(x)]
    suite.details["failover_samples_s"] = samples
    suite.add("", "relay kills measured (100-node meshes)", len(samples), "kills")
    suite.add("", "kills never repaired within the limit", len(samples) - len(finite), "kills")
    suite.add("sim_failover_p50_s", "failover p50", percentile(samples, 50), "s (virtual)")
    suite.add("sim_failover_p99_s", "failover p99", percentile(samples, 99), "s (virtual)")
    suite.add("sim_failover_max_s", "failover max", max(samples), "s (virtual)")
    return suite
