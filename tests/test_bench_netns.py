"""bench/netns.py's pure parts: the outage read from probe arrivals, the profile summary
and the targets (the namespace runs themselves need root and are not unit tests)."""

from __future__ import annotations

from bench.netns import _is_met, _outage, _profile_top

STEP = 0.02


def _arrivals(sent_times: list[float], latency: float = 0.001) -> list[list[float]]:
    return [[i, t, t + latency] for i, t in enumerate(sent_times)]


def test_the_outage_is_the_largest_gap_after_the_cut() -> None:
    sent = [i * STEP for i in range(50)] + [1.4 + i * STEP for i in range(50)]
    out = _outage(_arrivals(sent), t_cut=0.99, t_cut_done=1.0, stream={"sent": 150,
                  "last_send": sent[-1]})  # fmt: skip
    assert out["recovered"] is True
    assert abs(out["outage_s"] - (1.4 - 0.98)) < 1e-9
    assert out["lost"] == 50
    assert out["largest_gap_before_cut_s"] < STEP + 1e-9


def test_a_stream_that_never_recovers_is_a_lower_bound_to_its_end() -> None:
    sent = [i * STEP for i in range(50)]  # nothing after 0.98 s arrived
    out = _outage(_arrivals(sent), t_cut=0.99, t_cut_done=1.0, stream={"sent": 200,
                  "last_send": 4.0})  # fmt: skip
    assert out["recovered"] is False
    assert abs(out["outage_s"] - (4.0 - 0.981)) < 1e-9


def test_probes_in_flight_at_the_cut_are_not_a_recovery() -> None:
    sent = [i * STEP for i in range(51)]  # the last one sent at 1.0, just before the cut
    out = _outage(_arrivals(sent, latency=0.01), t_cut=1.001, t_cut_done=1.04,
                  stream={"sent": 200, "last_send": 4.0})  # fmt: skip
    assert out["recovered"] is False
    assert out["outage_s"] > 2.9


def test_profile_top_counts_innermost_frames_and_whole_stacks() -> None:
    raw = (
        "main (x0tta6bl4/node/agent.py:1);apply (x0tta6bl4/node/udp.py:170) 6\n"
        "main (x0tta6bl4/node/agent.py:1);apply (x0tta6bl4/node/udp.py:150) 2\n"
        "main (x0tta6bl4/node/agent.py:1);seal (x0tta6bl4/crypto/aead.py:32) 2\n"
        " 3\n"  # py-spy writes empty stacks too: skipped
    )
    top = _profile_top(raw)
    assert top["samples"] == 10
    assert top["self"][0] == {"function": "apply (x0tta6bl4/node/udp.py)", "samples": 8,
                              "pct": 80.0}  # fmt: skip
    assert top["lines"][0]["function"] == "apply (x0tta6bl4/node/udp.py:170)"
    assert top["inclusive_x0tta6bl4"][0]["samples"] == 10


def test_targets() -> None:
    assert _is_met("netns_failover_s", 1.0) and not _is_met("netns_failover_s", 1.01)
    assert _is_met("overlay_tcp_mbit_s", 1000.0) and not _is_met("overlay_tcp_mbit_s", 999)
    assert not _is_met("agent_rss_mb", 74.0)
