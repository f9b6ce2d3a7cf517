"""Monitor: hand-built observation sequences in, features out."""

from __future__ import annotations

import math

import pytest

from tests.healing.helpers import link, obs, route
from x0tta6bl4.healing import HealingConfig, Knowledge, Monitor, RuntimeStats
from x0tta6bl4.healing.knowledge import EwmaBaseline, count_since


def monitor(**cfg: object) -> Monitor:
    return Monitor(Knowledge(HealingConfig(**cfg)))  # type: ignore[arg-type]


def test_link_features_pass_through_and_last_heard() -> None:
    m = monitor()
    snap = m.update(obs(1.0, [link("B", rtt=0.02, loss=0.1, jitter=0.003, last_heard=0.95)]))
    b = snap.links["B"]
    assert (b.rtt, b.loss, b.jitter, b.last_heard) == (0.02, 0.1, 0.003, 0.95)
    assert b.alive and b.ever_alive and b.present
    assert snap.seq == 1 and snap.now == 1.0 and snap.loop_lag is None
    assert snap.memory_bytes is None


def test_alive_transitions_counted_within_the_flap_window() -> None:
    m = monitor(flap_window=5.0)
    for i in range(10):
        snap = m.update(obs(float(i), [link("B", alive=i % 2 == 0)]))
    assert snap.links["B"].alive_transitions == 6  # at t = 4..9, the window [4, 9]
    snap = m.update(obs(30.0, [link("B", alive=True)]))
    assert snap.links["B"].alive_transitions == 1  # only the 9 -> 30 change


def test_route_changes_reachability_and_routes_via() -> None:
    m = monitor()
    s1 = m.update(obs(0.0, [link("B")], [route("B", "B"), route("C", "B"), route("D", "B")]))
    assert s1.reachable == {"B", "C", "D"}
    assert s1.links["B"].routes_via == 2  # C and D, not B itself
    assert s1.route_flaps == {}
    s2 = m.update(obs(1.0, [link("B")], [route("B", "B"), route("C", None, 1)]))
    assert s2.reachable == {"B"}
    assert s2.unreachable_since == {"C": 1.0, "D": 1.0}  # D vanished from the table
    assert s2.links["B"].routes_via == 0
    # Losing a destination is not flapping (a partition or a dead neighbour is).
    assert s2.route_flaps == {}
    s3 = m.update(obs(2.0, [link("B")], [route("B", "B"), route("C", "E", 4), route("D", "E")]))
    assert s3.reachable == {"B", "C", "D"} and s3.unreachable_since == {}
    # The counter went 1 -> 4: one of those is regaining C, two were hop switches made
    # between the observations.
    assert s3.route_flaps["C"].changes == 2
    assert "E" in s3.route_flaps["C"].hops


def test_route_counter_reset_counts_only_the_hop_change() -> None:
    m = monitor()
    m.update(obs(0.0, [], [route("C", "B", 10)]))
    snap = m.update(obs(1.0, [], [route("C", "E", 0)]))  # the node restarted
    assert snap.route_flaps["C"].changes == 1


def test_route_knowledge_pruned_after_the_window() -> None:
    m = monitor(flap_window=2.0)
    m.update(obs(0.0, [], [route("C", "B")]))
    m.update(obs(1.0, [], [route("C", "E", 1)]))
    assert "C" in m.knowledge.routes
    snap = m.update(obs(5.0, [], [route("C", "E", 1)]))
    assert snap.route_flaps == {} and "C" not in m.knowledge.routes


def test_unreachable_destinations_forgotten_after_partition_memory() -> None:
    m = monitor(partition_memory=10.0)
    m.update(obs(0.0, [], [route("C", "B")]))
    assert m.update(obs(1.0, [], [])).unreachable_since == {"C": 1.0}
    assert m.update(obs(20.0, [], [])).unreachable_since == {}


def test_session_resets_costs_and_handshake_failures() -> None:
    m = monitor()
    m.update(obs(0.0, [link("B", session_age=50.0, base_cost=96)]))
    m.update(obs(1.0, [link("B", session_age=51.0, base_cost=100)]))  # same session, noise
    snap = m.update(obs(2.0, [link("B", session_age=0.5, base_cost=300, handshake_failures=2)]))
    b = snap.links["B"]
    assert b.session_resets == 1
    assert b.cost_changes == 1  # 96 -> 100 is noise, 100 -> 300 a step
    assert b.handshake_failures == 2


def test_runtime_stats_are_recorded_when_supplied() -> None:
    m = monitor()
    snap = m.update(obs(0.0), RuntimeStats(loop_lag=0.25, memory_bytes=1 << 20))
    assert snap.loop_lag == 0.25 and snap.memory_bytes == 1 << 20
    assert list(m.knowledge.loop_lag) == [(0.0, 0.25)]
    assert list(m.knowledge.memory) == [(0.0, 1 << 20)]
    snap = m.update(obs(1.0), RuntimeStats(loop_lag=math.nan, memory_bytes=-1))
    assert snap.loop_lag is None and snap.memory_bytes is None


def test_bad_numbers_from_a_node_are_dropped_not_learned() -> None:
    m = monitor()
    snap = m.update(obs(0.0, [link("B", rtt=math.nan, loss=math.inf, jitter=-1.0)]))
    b = snap.links["B"]
    assert b.rtt is None and b.jitter is None and b.loss == 1.0
    assert m.knowledge.links["B"].rtt_base.n == 0


def test_vanished_live_link_reads_as_dead_and_is_forgotten_later() -> None:
    m = monitor(forget_after=10.0)
    m.update(obs(0.0, [link("B")]))
    snap = m.update(obs(1.0, []))
    b = snap.links["B"]
    assert not b.present and not b.alive and b.ever_alive and b.alive_transitions == 1
    m.update(obs(20.0, []))
    assert "B" not in m.knowledge.links


def test_never_alive_absent_link_has_no_features() -> None:
    m = monitor()
    m.update(obs(0.0, [link("B", alive=False)]))
    assert "B" not in m.update(obs(1.0, [])).links


def test_peers_bounded_by_lru() -> None:
    m = monitor(max_peers=2)
    m.update(obs(0.0, [link("B"), link("C")]))
    m.update(obs(1.0, [link("C"), link("D")]))
    assert list(m.knowledge.links) == ["C", "D"]
    snap = m.update(obs(2.0, [link("B"), link("C"), link("D")]))
    assert set(snap.links) == set(m.knowledge.links) == {"C", "D"}


def test_anomaly_score_rises_on_a_creeping_link_and_baseline_holds() -> None:
    m = monitor()
    for i in range(40):
        m.update(obs(i * 0.1, [link("B", loss=0.0, rtt=0.010)]))
    lk = m.knowledge.links["B"]
    assert lk.anomaly == 0.0
    assert lk.loss_threshold < 0.2  # a clean link's threshold tightens toward 0 + margin
    for i in range(40, 60):
        snap = m.update(obs(i * 0.1, [link("B", loss=0.0, rtt=0.010 + (i - 39) * 0.002)]))
    b = snap.links["B"]
    assert b.anomaly > 3.0 and b.pressure >= 1.0
    assert b.degrading_since is not None and b.degrading_since < snap.now
    assert b.rtt is not None and lk.rtt_base.mean < 0.4 * b.rtt  # drift not taken as normal


def test_dead_link_resets_its_score() -> None:
    m = monitor()
    for i in range(30):
        m.update(obs(i * 0.1, [link("B", loss=0.0)]))
    for i in range(10):
        snap = m.update(obs(3.0 + i * 0.1, [link("B", loss=0.5)]))
    b = snap.links["B"]
    assert b.loss_evidence > 0 and b.pressure > 0 and b.degrading_since is not None
    evidence = b.loss_evidence
    snap = m.update(obs(4.0, [link("B", alive=False, loss=1.0)]))
    b = snap.links["B"]
    assert b.anomaly == 0.0 and b.pressure == 0.0 and b.degrading_since is None
    # the evidence is kept for when it is back (and not fed by the dead link's 100 %)
    assert b.loss_evidence == evidence


def test_loss_evidence_accumulates_per_hello_not_per_report() -> None:
    # The same 50 % loss seen every 1 s or every 0.05 s is the same number of hellos:
    # the evidence after 2 s is the same, however often the loop looked.
    ev = []
    for dt in (1.0, 0.1, 0.05):
        m = monitor()
        m.update(obs(0.0, [link("B", loss=0.0)]))
        for i in range(1, round(2.0 / dt) + 1):
            snap = m.update(obs(round(i * dt, 6), [link("B", loss=0.5)]))
        ev.append(snap.links["B"].loss_evidence)
    assert ev[0] == pytest.approx(ev[1]) and ev[1] == pytest.approx(ev[2])
    assert 0 < ev[0] < m.config.loss_evidence_max


def test_lossy_link_threshold_adapts_up_within_bounds() -> None:
    m = monitor(degraded_loss_max=0.3, degraded_rtt_max=1.0)
    for i in range(300):  # five minutes at the idle pace (thresholds adapt per second)
        m.update(obs(float(i), [link("B", loss=0.15, rtt=0.4)]))
    lk = m.knowledge.links["B"]
    cfg = m.config
    assert lk.loss_threshold == pytest.approx(0.25, abs=1e-4)  # its normal 0.15 + 0.1
    assert lk.rtt_threshold == pytest.approx(cfg.degraded_rtt_max)  # 0.4 * 3 + 0.05, clamped


def test_thresholds_do_not_learn_from_a_degraded_link() -> None:
    m = monitor()
    for i in range(500):
        m.update(obs(i * 0.1, [link("B", loss=0.45)]))
    assert m.knowledge.links["B"].loss_threshold == m.config.degraded_loss


def test_certificate_validity_learned_and_reset_on_renewal() -> None:
    m = monitor()
    assert m.update(obs(0.0, not_after=1e6 + 100.0, wall=1e6)).cert_validity == 100.0
    assert m.update(obs(10.0, not_after=1e6 + 100.0, wall=1e6)).cert_validity == 100.0
    m.knowledge.cert.renewal_attempts = 3
    assert m.update(obs(20.0, not_after=1e6 + 500.0, wall=1e6)).cert_validity == 480.0
    assert m.knowledge.cert.renewal_attempts == 0
    fixed = monitor(cert_validity=1000.0)
    assert fixed.update(obs(0.0, not_after=1e6 + 100.0, wall=1e6)).cert_validity == 1000.0


def test_helpers() -> None:
    base = EwmaBaseline()
    assert base.z(1.0, 0.5) == 2.0  # mean 0, sigma floored
    for x in (1.0, 3.0):
        base.update(x, 0.01, 20)
    assert base.mean == 2.0  # cumulative mean at first
    assert base.z(0.0, 0.1) == 0.0  # one-sided
    from collections import deque

    assert count_since(deque([1.0, 2.0, 3.0]), 2.0) == 2


@pytest.mark.parametrize(
    "bad",
    [
        {"cycle_interval": 0.0},
        {"degraded_loss": 0.9},
        {"history_len": 0},
        {"anomaly_alpha": 2.0},
        {"cert_renew_fraction": 1.0},
        {"recover_ratio": 0.0},
        {"cost_dwell_backoff": 0.5},
        {"cost_dwell": 100.0},
        {"damp_reuse": 5.0},
        {"damp_half_life": 0.0},
        {"loss_shift": 0.6},
        {"loss_evidence": 20.0},
        {"hello_interval": 0.0},
        {"reconnect_jitter": 1.0},
        {"flap_window": math.nan},
        {"degraded_loss_min": 0.0, "degraded_loss": 0.0},
    ],
)
def test_config_rejects_nonsense(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        HealingConfig(**bad)  # type: ignore[arg-type]
