"""The sliding replay window against a simple set-based model."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from x0tta6bl4.channel.replay import ReplayWindow


class Model:
    def __init__(self, size: int, limit: int) -> None:
        self.size, self.limit = size, limit
        self.seen: set[int] = set()
        self.top = -1

    def accept(self, c: int) -> bool:
        if c < 0 or c >= self.limit or c in self.seen or c <= self.top - self.size:
            return False
        self.seen.add(c)
        self.top = max(self.top, c)
        return True


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 300),
    st.lists(
        st.one_of(
            st.integers(0, 700),
            st.integers(2**64 - 2**13 - 50, 2**64 + 5),
            st.integers(-3, 0),
        ),
        max_size=400,
    ),
)
def test_window_agrees_with_set_model(size: int, counters: list[int]) -> None:
    limit = 2**64 - 2**13 - 1
    w, m = ReplayWindow(size, limit), Model(size, limit)
    for c in counters:
        expected = m.accept(c)
        assert w.check(c) == expected
        assert w.update(c) == expected
        assert w.top == m.top


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 20000), max_size=300), st.integers(2048, 5000))
def test_large_windows_and_jumps(counters: list[int], size: int) -> None:
    w, m = ReplayWindow(size, 2**64), Model(size, 2**64)
    for c in sorted(counters) + counters:
        assert w.update(c) == m.accept(c)


def test_in_order_stream_and_replays() -> None:
    w = ReplayWindow()
    assert w.size >= 2048
    for c in range(10000):
        assert w.update(c)
    assert not w.update(9999)
    assert not w.update(10000 - w.size)  # fell out of the window
    assert w.update(10000 + 10**12)  # a big jump is cheap
    assert not w.check(10000)


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ReplayWindow(0)
