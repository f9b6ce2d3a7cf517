"""Route-flap damping with a decaying figure of merit (RFC 2439): every alive transition
adds to a link's merit, which halves every ``damp_half_life``; the link is held down
from ``damp_suppress`` until the merit has decayed to ``damp_reuse``. A flap while held
adds merit and so extends the hold; old flaps fade, so a link that has been stable for
a while is not damped again for them.

The loop runs every 0.1 s against a RecordingNode that keeps the ``damped_until`` it
was given, as a MeshNode does (the node ends a hold by itself at that time).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest

from tests.healing.helpers import RecordingNode, link, route
from x0tta6bl4.healing import (
    ActionKind,
    FaultKind,
    HealingConfig,
    HealingLoop,
    damp_hold,
)

CONFIG = HealingConfig()


def flapping(period: float, down: float, start: float, stop: float) -> Callable[[float], bool]:
    """alive(t): down for ``down`` s at the start of every ``period`` from ``start`` to
    ``stop`` (exclusive), up otherwise."""

    def alive(t: float) -> bool:
        if not start <= t < stop:
            return True
        return (t - start) % period >= down - 1e-9

    return alive


def make() -> tuple[RecordingNode, HealingLoop]:
    node = RecordingNode()
    return node, HealingLoop(node, rng=random.Random(0), config=CONFIG)


def held(node: RecordingNode, now: float) -> bool:
    until = node.links["B"].damped_until if "B" in node.links else None
    return until is not None and until > now


def drive(
    node: RecordingNode,
    loop: HealingLoop,
    alive: Callable[[float], bool],
    t0: float,
    t1: float,
    on_step: Callable[[float], None] | None = None,
) -> None:
    for i in range(round((t1 - t0) / 0.1)):
        now = round(t0 + i * 0.1, 6)
        up = alive(now)
        # a node routes around a link that is down or held down
        hop = "B" if up and not held(node, now) else "E"
        node.set([link("B", alive=up), link("E")], [route("B", hop)])
        if on_step is not None:
            on_step(now)  # what the node does at ``now``, before the loop looks
        loop.cycle(now)


def damp_times(node: RecordingNode) -> list[float]:
    return [c[1] for c in node.called("damp_link")]


def test_a_flap_while_held_down_extends_the_hold() -> None:
    # Down 1 s every 5 s for a minute. Before the fix the first hold-down (4 s) ended
    # on its timer while the link still flapped: the link came back into routing,
    # failed again, and only then was it damped again.
    node, loop = make()
    alive = flapping(5.0, 1.0, 0.0, 60.0)
    lapses: list[float] = []

    def check(now: float) -> None:
        if damp_times(node) and now < 60.0 and not held(node, now):
            lapses.append(now)

    drive(node, loop, alive, 0.0, 60.0, check)
    first = damp_times(node)[0]
    assert first < 12.0  # suppressed after its third outage at the latest
    assert lapses == [], f"the hold lapsed while the link still flapped: {lapses[:5]}"
    # every later damp_link call moved the end further out: extensions, never a restart
    untils = [c[3] for c in node.called("damp_link")]
    assert untils == sorted(untils) and len(set(untils)) == len(untils)
    # the flapping incident: damped, and repaired once routes stopped flapping over B
    [flaps] = [e for e in loop.events if e.kind == FaultKind.FLAPPING_LINK]
    assert flaps.outcome == "repaired" and flaps.actions == (ActionKind.DAMP,)


def test_a_link_stable_after_flapping_is_not_damped_again() -> None:
    # Down 1 s every 2 s for 12 s, then stable. Before the fix the hold-downs doubled
    # (4 s, 8 s) and a third (16 s) began 5 s after the last flap, for old flaps,
    # moving traffic off a link that had become healthy.
    node, loop = make()
    alive = flapping(2.0, 1.0, 0.0, 12.0)
    drive(node, loop, alive, 0.0, 120.0)
    last_flap = 11.0  # the last up transition
    calls = damp_times(node)
    assert calls, "a link flapping every 2 s must be damped"
    assert max(calls) <= last_flap + 0.1, calls  # nothing after the flapping stopped
    until = node.links["B"].damped_until
    assert until is not None
    # Held until the merit of the flaps (12 transitions, decaying) is back at reuse:
    # ~24 s after the last flap here, never more than damp_hold_max.
    assert last_flap + 10.0 < until <= last_flap + CONFIG.damp_hold_max
    lk = loop.knowledge.links["B"]
    assert lk.merit(until, CONFIG) == pytest.approx(CONFIG.damp_reuse)
    assert not held(node, until + 0.1)


def test_old_flaps_fade_and_a_later_outage_is_not_damped() -> None:
    node, loop = make()
    drive(node, loop, flapping(2.0, 1.0, 0.0, 10.0), 0.0, 10.0)
    assert damp_times(node)
    n = len(damp_times(node))
    until = node.links["B"].damped_until
    assert until is not None
    # stable for longer than the decay horizon, then one ordinary outage
    drive(node, loop, flapping(100.0, 1.0, until + 60.0, until + 61.0), 10.0, until + 90.0)
    assert len(damp_times(node)) == n
    lk = loop.knowledge.links["B"]
    assert lk.merit(until + 90.0, CONFIG) < CONFIG.damp_suppress


def test_a_link_that_fails_every_20_s_is_never_damped() -> None:
    # Each outage adds 2 and the merit halves every 10 s: it peaks at 2 / (1 - 1/4) =
    # 2.7 < 3 (the cut-off). Such a link is better routed over, between its outages,
    # than held.
    node, loop = make()
    drive(node, loop, flapping(20.0, 1.0, 0.0, 300.0), 0.0, 300.0)
    assert damp_times(node) == []


def test_the_longer_a_link_flapped_the_longer_it_is_held() -> None:
    # Down 0.5 s every 1 s, for 6 s or for a minute: the merit after 6 s is ~9 (held
    # ~26 s after the last flap); after a minute it is at its cap, held damp_hold_max.
    holds = []
    for flap_for in (6.0, 60.0):
        node, loop = make()
        drive(node, loop, flapping(1.0, 0.5, 0.0, flap_for), 0.0, flap_for + 80.0)
        until = node.links["B"].damped_until
        assert until is not None
        holds.append(until - (flap_for - 0.5))  # after the last (up) transition
    short, long = holds
    assert CONFIG.damp_half_life < short < long == pytest.approx(CONFIG.damp_hold_max)


def test_damp_hold_follows_the_merit_and_is_capped() -> None:
    assert damp_hold(CONFIG.damp_reuse, CONFIG) == 0.0
    assert damp_hold(CONFIG.damp_reuse * 2, CONFIG) == pytest.approx(CONFIG.damp_half_life)
    assert damp_hold(CONFIG.damp_suppress, CONFIG) == pytest.approx(
        CONFIG.damp_half_life * math.log2(CONFIG.damp_suppress / CONFIG.damp_reuse)
    )
    assert damp_hold(1e9, CONFIG) == CONFIG.damp_hold_max


def test_a_link_coming_up_for_the_first_time_is_no_flap() -> None:
    # A neighbour listed before its handshake completes (not alive) and then up: no
    # outage happened, so no merit. It used to count as a transition, so one outage
    # soon after start-up weighed as two and a single restart could get a link damped,
    # and a flapping incident dated its fault from the start-up.
    node, loop = make()
    table = [route("B", "B"), route("E", "E")]
    node.set([link("B", alive=False), link("E")], [])
    loop.cycle(0.0)
    node.set([link("B"), link("E")], table)
    loop.cycle(0.1)
    lk = loop.knowledge.links["B"]
    assert lk.flap_merit == 0.0 and not lk.alive_changes
    node.set([link("B", alive=False), link("E")], [])
    loop.cycle(1.0)
    assert lk.flap_merit == pytest.approx(1.0) and list(lk.alive_changes) == [1.0]
