"""The bench's own verdicts on its targets (they go into bench/results and the README)."""

from __future__ import annotations

from bench.sim_lossy import _is_met, _met, _target


def test_a_value_past_an_upper_bound_is_not_met() -> None:
    # "NOT met" also ends in " met": the verdict must come from the numbers
    assert _target("sim_user_outage_p99_s", 1.25).endswith("NOT met")
    assert _met("sim_user_outage_p99_s", 1.25)["met"] is False
    assert _met("sim_user_outage_p99_s", 0.9)["met"] is True


def test_a_lower_bound_is_met_at_or_above_it() -> None:
    assert _is_met("sim_lossy_delivery_vs_path_loss_100", 0.95)
    assert not _is_met("sim_lossy_delivery_vs_path_loss_100", 0.94)
