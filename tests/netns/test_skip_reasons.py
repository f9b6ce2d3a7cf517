"""Without root or iproute2 the namespace tests skip and say why (no privileges needed)."""

from __future__ import annotations

import os
import sys

import pytest

from tests.netns import helpers


def test_not_root_is_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    reason = helpers.unavailable_reason()
    assert reason is not None and "root" in reason


def test_missing_ip_is_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(helpers, "_which", lambda tool: None)
    reason = helpers.unavailable_reason()
    assert reason is not None and "`ip`" in reason


def test_other_systems_are_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    reason = helpers.unavailable_reason()
    assert reason is not None and "Linux" in reason
