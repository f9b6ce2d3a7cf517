"""Ordinary loss is not degradation: links with a few per cent of random loss, reported
the way the link estimator reports it (the fraction lost among the last 16 hellos, so
in steps of 1/16), must never have their cost changed; real degradation must still be
penalised within a stated time; a link that oscillates between good and bad changes
cost at most once per dwell, the dwell growing while it keeps oscillating.

Each test drives the whole loop (Monitor, Analyse, Plan, Execute) through a
RecordingNode at a fixed cadence: 1 s is the loop's idle pace, 0.05 s its pace while an
incident is open (or any other, 0.1 s gives the same verdicts: evidence is counted in
hellos, baselines learn per second).
"""

from __future__ import annotations

import itertools
import random

import pytest

from tests.healing.helpers import HelloLoss, RecordingNode, link, route
from x0tta6bl4.healing import ActionKind, FaultKind, HealingConfig, HealingLoop

TABLE = [route("B", "B"), route("C", "B"), route("E", "E")]


def drive(
    node: RecordingNode,
    loop: HealingLoop,
    hellos: HelloLoss,
    t0: float,
    t1: float,
    dt: float,
) -> None:
    """Observe B (lossy) and E (clean) every ``dt`` from ``t0`` to ``t1``."""
    for i in range(round((t1 - t0) / dt)):
        now = round(t0 + i * dt, 6)
        node.set([link("B", loss=hellos.at(now)), link("E")], TABLE)
        loop.cycle(now)


def make() -> tuple[RecordingNode, HealingLoop]:
    node = RecordingNode()
    return node, HealingLoop(node, rng=random.Random(0), config=HealingConfig())


def penalties(node: RecordingNode) -> list[tuple[float, float]]:
    """(time, factor) of every cost change the loop made."""
    return [(c[1], c[3]) for c in node.called("set_link_penalty")]


@pytest.mark.parametrize("dt", [1.0, 0.05])
@pytest.mark.parametrize("loss", [0.01, 0.02, 0.03, 0.05])
@pytest.mark.parametrize("seed", [1, 2])
def test_random_loss_of_a_few_per_cent_changes_no_cost_in_120_s(
    seed: int, loss: float, dt: float
) -> None:
    # Before the fix the loss threshold adapted down to baseline + 0.10, below two lost
    # hellos in 16 (0.125): every window with two losses (4 % of them at 2 % loss) made
    # the link "degraded", doubling its cost, and the next clean one lifted it again.
    node, loop = make()
    drive(node, loop, HelloLoss(seed, loss), 0.0, 120.0, dt)
    assert penalties(node) == []
    assert not [e for e in loop.events if e.kind == FaultKind.DEGRADED_LINK]
    assert not loop.open_incidents


@pytest.mark.parametrize("loss", [0.1, 0.15])
def test_a_lossy_but_steady_link_is_its_own_normal(loss: float) -> None:
    # 10-15 % loss all along: the threshold adapts up to the link's baseline + margin,
    # and ten minutes bring no verdict.
    for seed in (1, 2):
        node, loop = make()
        drive(node, loop, HelloLoss(seed, loss), 0.0, 600.0, 1.0)
        assert penalties(node) == []


# Detection delays measured over seeds 1-10 and the three cadences (seconds after the
# jump, including up to 1.6 s for the estimator's own 16-hello window to show it):
#   30 %: 1-14 (median 5), 40 %: 1-9 (median 3), 50 % (gray failure): 1-3.2 (median 2).
# The slow cases are runs where the "40 %" hellos happened to arrive 15 of 16 for a
# couple of seconds. The bounds hold for seeds 1-5 with a margin. Before the fix the
# first report over the threshold raised the cost, within one cycle, but at the price
# of the false alarms above.
DETECTION_BOUND = {0.3: 15.0, 0.4: 6.0, 0.5: 4.0}


@pytest.mark.parametrize("dt", [1.0, 0.05])
@pytest.mark.parametrize("loss", sorted(DETECTION_BOUND))
def test_real_degradation_is_penalised_within_a_bounded_time(loss: float, dt: float) -> None:
    for seed in range(1, 6):
        node, loop = make()
        hellos = HelloLoss(seed, 0.02)
        drive(node, loop, hellos, 0.0, 60.0, dt)
        assert penalties(node) == []
        hellos.loss = loss
        drive(node, loop, hellos, 60.0, 60.0 + DETECTION_BOUND[loss], dt)
        raised = penalties(node)
        assert raised, f"{loss:.0%} loss not penalised within {DETECTION_BOUND[loss]} s"
        t, factor = raised[0]
        assert factor >= 2.0
        incident = next(i for i in loop.open_incidents if i.kind is FaultKind.DEGRADED_LINK)
        assert incident.detected_at == t and ActionKind.RAISE_COST in incident.actions


def test_a_recovered_link_has_its_penalty_lifted_once() -> None:
    node, loop = make()
    hellos = HelloLoss(7, 0.02)
    drive(node, loop, hellos, 0.0, 30.0, 0.1)
    hellos.loss = 0.5
    drive(node, loop, hellos, 30.0, 45.0, 0.1)
    hellos.loss = 0.02
    drive(node, loop, hellos, 45.0, 120.0, 0.1)
    changes = penalties(node)
    assert changes[0][1] >= 2.0 and changes[-1][1] == 1.0
    assert [f for _, f in changes].count(1.0) == 1
    # lifted within 15 s of the recovery (evidence back at zero, dwell respected)
    assert 45.0 < changes[-1][0] < 60.0


def oscillate(
    node: RecordingNode, loop: HealingLoop, hellos: HelloLoss, t0: float, t1: float
) -> None:
    """8 s bad (50 % loss), 8 s good (2 %), from ``t0`` to ``t1``."""
    for k in range(round((t1 - t0) / 8.0)):
        hellos.loss = 0.5 if k % 2 else 0.02
        drive(node, loop, hellos, t0 + k * 8.0, t0 + (k + 1) * 8.0, 0.1)


def test_an_oscillating_link_changes_cost_at_most_once_per_growing_dwell() -> None:
    # Four minutes of 8 s bad / 8 s good: each bad spell is detected and each good one
    # recovers, so without a dwell the cost would be raised and lifted every 16 s (30
    # changes). Measured with the dwell: 10 changes, the gaps growing 5, 5, 5, 6, 10,
    # 10, 20, 25, 40, 42 s.
    config = HealingConfig()
    node, loop = make()
    oscillate(node, loop, HelloLoss(11, 0.02), 0.0, 240.0)
    times = [t for t, _ in penalties(node)]
    assert len(times) >= 4  # it is penalised, and lifted at times
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= config.cost_dwell - 1e-9
    assert len(times) <= 12, times
    assert max(gaps[len(gaps) // 2 :]) >= 4 * config.cost_dwell
    assert loop.knowledge.links["B"].cost_dwell >= 8 * config.cost_dwell


def test_cost_dwell_starts_over_after_a_calm_spell() -> None:
    config = HealingConfig()
    node, loop = make()
    hellos = HelloLoss(5, 0.02)
    oscillate(node, loop, hellos, 0.0, 128.0)  # the dwell grows
    lk = loop.knowledge.links["B"]
    assert lk.cost_dwell > config.cost_dwell
    hellos.loss = 0.02
    drive(node, loop, hellos, 128.0, 400.0, 1.0)  # calm: lifted, then unchanged 120 s
    assert lk.penalty == 1.0
    n = len(penalties(node))
    hellos.loss = 0.5
    drive(node, loop, hellos, 400.0, 410.0, 0.1)
    fresh = penalties(node)[n:]
    assert fresh and fresh[0][1] >= 2.0  # penalised again, and treated as a new link:
    assert lk.cost_dwell == config.cost_dwell  # the next change may come 5 s later
