"""One token bucket for every rate limit in the project (channel and healing).

Plain arithmetic on the ``now`` passed in, so it fits the sans-IO cores; time going
backwards refills nothing.
"""

from __future__ import annotations


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; starts full."""

    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, rate: float, burst: float) -> None:
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._last: float | None = None

    def _refill(self, now: float) -> None:
        last = self._last
        if last is not None and now > last:
            self._tokens = min(self._burst, self._tokens + (now - last) * self._rate)
        if last is None or now > last:
            self._last = now

    def ready(self, now: float) -> bool:
        """Refill up to ``now``; is there a token to take?"""
        self._refill(now)
        return self._tokens >= 1.0

    def take(self, now: float) -> bool:
        """Spend one token if there is one."""
        self._refill(now)
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def full(self, now: float) -> bool:
        """Whether the bucket would be full at ``now`` (an idle entry one may forget)."""
        last = self._last if self._last is not None else now
        return self._tokens + max(0.0, now - last) * self._rate >= self._burst


__all__ = ["TokenBucket"]
