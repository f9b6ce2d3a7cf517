"""The mesh under real conditions: a 100-node random geometric mesh with 2 % loss and
up to 5 ms of jitter on every link, and first contact over a lossy 30-hop line.

* ``sim_lossy_converge_s_100``: cold start until every node has a route to every other
  (median over :data:`CONVERGE_SEEDS`);
* ``sim_lossy_control_ratio_100``: steady control bytes per node with that loss and
  jitter / without (same meshes, same seeds; median);
* ``sim_lossy_delivery_ratio_100``: 50 constant-rate flows between random pairs, packets
  delivered / sent once each flow has made first contact, and beside it the same over
  what path loss allows (the product of ``1 - loss`` over the hops of the path each
  flow was on, sampled every second);
* ``sim_user_outage_p50_s`` / ``_p99_s``: random relay kills in the same meshes
  (:data:`KILLS` in each of the :data:`FLOW_SEEDS` meshes), the worst affected flow's
  outage per kill, from deliveries (ground truth);
* ``sim_first_contact_s_line30_loss1``: seconds from the first send to the first
  delivery over 30 hops at 1 % loss per link (median over :data:`LINE_SEEDS`; seeds
  that never delivered are counted, and make the median infinite if they are half).

Everything runs the real protocol, healing loop and cryptography with default timers;
times are virtual seconds unless called wall. The issue's targets are in
:data:`TARGETS`; each figure's note says whether it is met.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

from bench.report import Suite
from x0tta6bl4.sim import (
    Flow,
    LinkSpec,
    MeshRun,
    Topology,
    build_mesh,
    derive_rng,
    kill,
    line,
    percentile,
    random_geometric,
    restart,
    route_path,
)
from x0tta6bl4.sim.flows import GAP_PACKETS
from x0tta6bl4.sim.runner import convergence_stats, flow_pairs

NODES: Final = 100
LOSS: Final = 0.02
JITTER: Final = 0.005
CONVERGE_SEEDS: Final = (1, 2, 3)
CONVERGE_RUN: Final = 30.0  # virtual s per convergence / control-traffic run
FLOW_SEEDS: Final = (1, 2, 3, 4, 5, 6)  # one mesh each: delivery, then relay kills
# Six meshes, 90 kills: a p99 over 30 kills is nearly their maximum, and two meshes once
# read 1.15 s where four more put it at 1.2-1.3.
FLOWS: Final = 50
FLOW_RATE: Final = 20.0  # pps: outages resolved to 50 ms
FIRST_CONTACT_WAIT: Final = 20.0  # at most this long for every flow's first delivery
WINDOW: Final = 20.0  # virtual s of delivery measured
KILLS: Final = 15  # relay kills per mesh
SETTLE: Final = 2.0
RECOVERY_LIMIT: Final = 10.0
RECONVERGE_LIMIT: Final = 10.0
STEP: Final = 0.05  # recovery checks
LINE_HOPS: Final = 30
LINE_LOSS: Final = 0.01
LINE_SEEDS: Final = (1, 2, 3, 4, 5)
LINE_RATE: Final = 10.0
LINE_LIMIT: Final = 30.0  # virtual s to wait for a route, then for a first delivery

TARGETS: Final = {
    "sim_lossy_converge_s_100": ("<=", 3.0),
    "sim_lossy_delivery_vs_path_loss_100": (">=", 0.95),
    "sim_user_outage_p99_s": ("<=", 1.0),
    "sim_first_contact_s_line30_loss1": ("<=", 3.0),
}


def _is_met(key: str, value: float) -> bool:
    op, bound = TARGETS[key]
    return value <= bound if op == "<=" else value >= bound


def _target(key: str, value: float) -> str:
    op, bound = TARGETS[key]
    return f"target {op} {bound:g}: {'met' if _is_met(key, value) else 'NOT met'}"


def _met(key: str, value: float) -> dict[str, Any]:
    op, bound = TARGETS[key]
    return {"target": f"{op} {bound:g}", "value": value, "met": _is_met(key, value)}


# -- convergence and control traffic -----------------------------------------------------------


def _convergence(suite: Suite, seeds: tuple[int, ...]) -> None:
    conv: list[float] = []
    ratios: list[float] = []
    runs: list[dict[str, Any]] = []
    for seed in seeds:
        lossy = convergence_stats(NODES, seed, CONVERGE_RUN, loss=LOSS, jitter=JITTER)
        clean = convergence_stats(NODES, seed, CONVERGE_RUN)
        conv.append(lossy.converge_s)
        ratios.append(lossy.steady_bytes_per_node_s / clean.steady_bytes_per_node_s)
        runs.append(
            {
                "seed": seed,
                "lossy_converge_s": lossy.converge_s,
                "clean_converge_s": clean.converge_s,
                "lossy_steady_bytes_per_node_s": lossy.steady_bytes_per_node_s,
                "clean_steady_bytes_per_node_s": clean.steady_bytes_per_node_s,
                "wall_s": round(lossy.wall_s + clean.wall_s, 1),
            }
        )
        print(
            f"  ... seed {seed}: lossy convergence {lossy.converge_s:.2f} s "
            f"(clean {clean.converge_s:.2f} s), control x{ratios[-1]:.2f}, "
            f"wall {lossy.wall_s + clean.wall_s:.1f} s",
            flush=True,
        )
    suite.details["lossy_convergence"] = runs
    key = "sim_lossy_converge_s_100"
    value = statistics.median(conv)
    suite.details.setdefault("targets", {})[key] = _met(key, value)
    suite.add(
        key,
        f"cold convergence, {NODES} nodes, {LOSS:.0%} loss, {JITTER * 1000:g} ms jitter (median)",
        value,
        "s (virtual)",
        f"seeds {list(seeds)}: {', '.join(f'{c:.2f}' for c in conv)}; {_target(key, value)}",
    )
    suite.add(
        "sim_lossy_control_ratio_100",
        f"control bytes per node with loss and jitter / without, {NODES} nodes (median)",
        statistics.median(ratios),
        "ratio",
        f"steady window, {CONVERGE_RUN:g} s runs; {', '.join(f'{r:.2f}' for r in ratios)}",
    )


# -- delivery and user outage ----------------------------------------------------------------------


@dataclass
class _MeshFigures:
    seed: int
    flows: int
    no_first_contact: int
    sent: int
    delivered: int
    allowed: float  # expected delivered / sent from path loss alone
    kill_worst: list[float]  # per kill: the worst affected flow's outage (inf: never)
    flow_outages: list[float]  # per kill and affected flow
    kills: list[dict[str, Any]]
    wall_s: float


def _hops_from(topology: Topology, src: str) -> dict[str, int]:
    dist = {src: 0}
    queue = deque([src])
    while queue:
        x = queue.popleft()
        for m in topology.neighbours(x):
            if m not in dist:
                dist[m] = dist[x] + 1
                queue.append(m)
    return dist


def _connected_without(topology: Topology, relay: str, a: str, b: str) -> bool:
    seen = {relay, a}
    stack = [a]
    while stack:
        for m in topology.neighbours(stack.pop()):
            if m == b:
                return True
            if m not in seen:
                seen.add(m)
                stack.append(m)
    return False


def _delivery(run: MeshRun, flows: list[Flow]) -> tuple[int, int, int, float]:
    """Wait for first contact, then measure a window: ``(flows without first contact,
    sent, delivered, allowed ratio)`` over the flows that made it."""
    t_wait = run.now + FIRST_CONTACT_WAIT
    while run.now < t_wait and not all(f.arrivals for f in flows):
        run.run_for(0.5)
    live = [f for f in flows if f.arrivals]
    t0 = run.now
    shortest = {f.id: _hops_from(run.topology, f.src)[f.dst] for f in live}
    allowance: dict[int, list[float]] = {f.id: [] for f in live}

    def sample(r: MeshRun) -> None:
        nodes = r.nodes()
        for f in live:
            p = route_path(nodes, f.src, f.dst)
            hops = p.links if p.ok else shortest[f.id]
            allowance[f.id].append((1 - LOSS) ** hops)

    run.every(1.0, sample, start=t0, until=t0 + WINDOW - 0.5)
    run.run(t0 + WINDOW + 1.0)  # a second for the last packets in flight
    sent = delivered = 0
    for f in live:
        s, d = f.window(t0, t0 + WINDOW)
        sent += s
        delivered += d
    allowed = statistics.fmean(statistics.fmean(v) for v in allowance.values()) if live else 0
    return len(flows) - len(live), sent, delivered, allowed


def _relay_kills(run: MeshRun, flows: list[Flow], kills: int, seed: int) -> list[dict[str, Any]]:
    rng = derive_rng(seed, "bench-relay-kills")
    out: list[dict[str, Any]] = []
    for _ in range(kills):
        run.run_for(SETTLE)
        nodes = run.nodes()
        crossing: dict[str, list[Flow]] = {}
        for f in flows:
            last = next(reversed(f.arrivals.values()), None)  # the latest delivery
            if last is None or run.now - last > GAP_PACKETS / FLOW_RATE:
                continue  # not flowing now (as the outage report sees it): nothing to cut
            for h in route_path(nodes, f.src, f.dst).hops[1:-1]:
                if _connected_without(run.topology, h, f.src, f.dst):
                    crossing.setdefault(h, []).append(f)
        if not crossing:
            break
        relay = rng.choice(sorted(crossing))
        watched = crossing[relay]
        t = run.now
        run.at(t, kill(relay))
        for _ in range(round(RECOVERY_LIMIT / STEP)):
            run.run_for(STEP)
            if all(f.first_delivery_after(t) is not None for f in watched):
                break
        out.append({"t": t, "relay": relay, "watched": [f.id for f in watched]})
        run.at(run.now, restart(relay))
        run.wait_converged(limit=RECONVERGE_LIMIT)
    return out


def _flows_and_kills(seed: int, kills: int) -> _MeshFigures:
    w0 = time.perf_counter()
    run = build_mesh(random_geometric(NODES, seed), seed=seed, loss=LOSS, jitter=JITTER)
    run.wait_converged()
    pairs = flow_pairs(list(run.topology.nodes), FLOWS, seed)
    flows = [run.add_flow(a, b, FLOW_RATE) for a, b in pairs]
    missing, sent, delivered, allowed = _delivery(run, flows)
    script = _relay_kills(run, flows, kills, seed)
    worst: list[float] = []
    per_flow: list[float] = []
    details: list[dict[str, Any]] = []
    by_time = {o.t: o for o in run.user_outages() if o.fault.kind == "crash"}
    for k in script:
        o = by_time[k["t"]]
        # Only the flows that could be rerouted: a kill that cuts a flow's ends apart
        # is a partition, not a failover.
        mine = [f for f in o.affected if f.flow in k["watched"]]
        if not mine:
            continue
        outs = [math.inf if f.outage_s is None else f.outage_s for f in mine]
        per_flow += outs
        worst.append(max(outs))
        details.append({**o.as_dict(), "watched": len(mine), "worst_watched_s": max(outs)})
    return _MeshFigures(
        seed,
        len(flows),
        missing,
        sent,
        delivered,
        allowed,
        worst,
        per_flow,
        details,
        time.perf_counter() - w0,
    )


def _flow_section(suite: Suite, seeds: tuple[int, ...], kills: int) -> None:
    meshes: list[_MeshFigures] = []
    for seed in seeds:
        m = _flows_and_kills(seed, kills)
        meshes.append(m)
        print(
            f"  ... mesh seed {seed}: {m.flows} flows ({m.no_first_contact} without first "
            f"contact in {FIRST_CONTACT_WAIT:g} s), delivered {m.delivered}/{m.sent}, "
            f"{len(m.kill_worst)} relay kills, wall {m.wall_s:.1f} s",
            flush=True,
        )
    sent = sum(m.sent for m in meshes)
    got = sum(m.delivered for m in meshes)
    ratio = got / sent if sent else math.nan
    allowed = statistics.fmean(m.allowed for m in meshes)
    suite.details["lossy_flows"] = [
        {
            "seed": m.seed,
            "flows": m.flows,
            "no_first_contact": m.no_first_contact,
            "sent": m.sent,
            "delivered": m.delivered,
            "allowed_by_path_loss": m.allowed,
            "kills": m.kills,
            "wall_s": round(m.wall_s, 1),
        }
        for m in meshes
    ]
    suite.add(
        "sim_lossy_delivery_ratio_100",
        f"delivery, {FLOWS} flows x {FLOW_RATE:g} pps, {NODES} nodes, {LOSS:.0%} loss",
        ratio,
        "ratio",
        f"{WINDOW:g} s after first contact, {len(seeds)} meshes; path loss allows {allowed:.3f}",
    )
    key = "sim_lossy_delivery_vs_path_loss_100"
    vs = ratio / allowed if allowed else math.nan
    suite.details.setdefault("targets", {})[key] = _met(key, vs)
    suite.add(key, "delivery / what path loss allows", vs, "ratio", _target(key, vs))
    suite.add(
        "sim_lossy_no_first_contact_100",
        f"flows without a delivery {FIRST_CONTACT_WAIT:g} s after they started",
        sum(m.no_first_contact for m in meshes),
        "flows",
        f"of {sum(m.flows for m in meshes)}; left out of the delivery figures",
    )
    worst = [x for m in meshes for x in m.kill_worst]
    per_flow = [x for m in meshes for x in m.flow_outages]
    suite.details["user_outage_worst_per_kill_s"] = worst
    suite.details["user_outage_per_flow_s"] = per_flow
    never = sum(1 for x in worst if not math.isfinite(x))
    suite.add("", "relay kills with flows across them", len(worst), "kills")
    suite.add("", "kills after which some flow never recovered", never, "kills")
    suite.add(
        "sim_user_outage_p50_s",
        "user outage p50 (worst affected flow per relay kill, from deliveries)",
        percentile(worst, 50),
        "s (virtual)",
        f"per flow: p50 {percentile(per_flow, 50):.3f} over {len(per_flow)} flows",
    )
    key = "sim_user_outage_p99_s"
    p99 = percentile(worst, 99)
    suite.details.setdefault("targets", {})[key] = _met(key, p99)
    suite.add(
        key,
        "user outage p99 (worst affected flow per relay kill)",
        p99,
        "s (virtual)",
        f"per flow p99 {percentile(per_flow, 99):.3f}; {_target(key, p99)}",
    )
    mttd = [k["mttd_max_s"] for m in meshes for k in m.kills if k["mttd_max_s"] is not None]
    mttr = [k["mttr_max_s"] for m in meshes for k in m.kills if k["mttr_max_s"] is not None]
    if mttd and mttr:
        suite.add(
            "",
            "healing's account of the same kills: MTTD p50 (max over the relay's neighbours)",
            percentile(mttd, 50),
            "s (MTTD)",
            f"MTTR (max over them) p50 {percentile(mttr, 50):.3f} s, "
            f"p99 {percentile(mttr, 99):.3f} s",
        )


# -- first contact over a lossy line -----------------------------------------------------------


def first_contact(seed: int, hops: int = LINE_HOPS, loss: float = LINE_LOSS) -> tuple[float, float]:
    """``(route_s, first_contact_s)`` over a ``hops``-link line: when the first node had
    a route to the last, and seconds from the first send (0.5 s later) to the first
    delivery; ``inf`` for either that did not happen within :data:`LINE_LIMIT`."""
    run = build_mesh(line(hops + 1, LinkSpec(loss=loss)), seed=seed)
    src, dst = run.topology.nodes[0], run.topology.nodes[-1]
    for _ in range(round(LINE_LIMIT / 0.1)):
        if run.route(src, dst).ok:
            break
        run.run_for(0.1)
    else:
        return math.inf, math.inf
    route_s = run.now
    t0 = run.now + 0.5
    flow = run.add_flow(src, dst, LINE_RATE, start=t0)
    for _ in range(round((LINE_LIMIT + 0.5) / 0.25)):
        run.run_for(0.25)
        if flow.arrivals:
            return route_s, next(iter(flow.arrivals.values())) - t0
    return route_s, math.inf


def _first_contact_section(suite: Suite, seeds: tuple[int, ...]) -> None:
    times: list[float] = []
    routes: list[float] = []
    for seed in seeds:
        w0 = time.perf_counter()
        route_s, fc = first_contact(seed)
        routes.append(route_s)
        times.append(fc)
        print(
            f"  ... line seed {seed}: route after {route_s:.2f} s, first contact {fc:.2f} s, "
            f"wall {time.perf_counter() - w0:.1f} s",
            flush=True,
        )
    failed = sum(1 for t in times if not math.isfinite(t))
    key = "sim_first_contact_s_line30_loss1"
    value = statistics.median(times)
    suite.details["first_contact_line30"] = {"seeds": list(seeds), "s": times, "route_s": routes}
    suite.details.setdefault("targets", {})[key] = _met(key, value)
    suite.add(
        key,
        f"first contact over {LINE_HOPS} hops at {LINE_LOSS:.0%} loss per link (median)",
        value,
        "s (virtual)",
        f"{', '.join(f'{t:.2f}' for t in times)}; {failed} of {len(seeds)} never within "
        f"{LINE_LIMIT:g} s; {_target(key, value)}",
    )


def run(quick: bool = False) -> Suite:
    suite = Suite("sim_lossy")
    converge_seeds = CONVERGE_SEEDS[:1] if quick else CONVERGE_SEEDS
    flow_seeds, kills = (FLOW_SEEDS[:1], 3) if quick else (FLOW_SEEDS, KILLS)
    line_seeds = LINE_SEEDS[:2] if quick else LINE_SEEDS
    sections: list[tuple[str, Callable[[], None]]] = [
        ("convergence and control traffic", partial(_convergence, suite, converge_seeds)),
        ("flows and relay kills", partial(_flow_section, suite, flow_seeds, kills)),
        ("first contact over a lossy line", partial(_first_contact_section, suite, line_seeds)),
    ]
    walls: dict[str, float] = {}
    for name, fn in sections:
        print(f"  {name}:", flush=True)
        w0 = time.perf_counter()
        fn()
        walls[name] = round(time.perf_counter() - w0, 1)
        print(f"  ({name}: {walls[name]:.1f} s wall)", flush=True)
    suite.details["section_wall_s"] = walls
    return suite
