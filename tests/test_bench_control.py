"""The control-plane bench's parsing of its load generators' output."""

from __future__ import annotations

from bench.control import _ms


def test_wrk_latencies_in_every_unit_become_milliseconds() -> None:
    assert _ms("850.00us") == 0.85
    assert _ms("12.36ms") == 12.36
    assert _ms("1.20s") == 1200.0
