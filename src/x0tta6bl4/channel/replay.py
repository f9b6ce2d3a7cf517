"""Sliding anti-replay window over 64-bit counters (RFC 6479's idea, a Python int bitmap).

Bit ``i`` of the bitmap says whether counter ``top - i`` was accepted. A counter above
``top`` slides the window; one more than ``size - 1`` below ``top`` is too old. Shifting
a few-thousand-bit int costs a couple of hundred nanoseconds, and the bitmap is trimmed
only when it has grown to twice the window, so the common in-order case is cheap.
"""

from __future__ import annotations

from x0tta6bl4.channel.constants import REJECT_AFTER_MESSAGES, REPLAY_WINDOW


class ReplayWindow:
    __slots__ = ("_bits", "_limit", "_mask", "_size", "_top")

    def __init__(self, size: int = REPLAY_WINDOW, limit: int = REJECT_AFTER_MESSAGES) -> None:
        if size < 1:
            raise ValueError("replay window size must be positive")
        self._size = size
        self._mask = (1 << size) - 1
        self._limit = limit  # counters at or above this are never accepted
        self._top = -1
        self._bits = 0

    @property
    def size(self) -> int:
        return self._size

    @property
    def top(self) -> int:
        """The highest counter accepted so far (-1 before the first)."""
        return self._top

    def check(self, counter: int) -> bool:
        """Whether ``counter`` would be accepted; changes nothing (call before decrypting)."""
        if counter >= self._limit or counter < 0:
            return False
        diff = self._top - counter
        if diff < 0:
            return True
        if diff >= self._size:
            return False
        return not (self._bits >> diff) & 1

    def update(self, counter: int) -> bool:
        """Accept ``counter`` (after it authenticated). False if it is a replay or too old."""
        if counter >= self._limit or counter < 0:
            return False
        diff = self._top - counter
        if diff < 0:
            if -diff >= self._size:  # a jump past the whole window: never shift that far
                self._bits = 1
            else:
                bits = (self._bits << -diff) | 1
                if bits.bit_length() > 2 * self._size:
                    bits &= self._mask
                self._bits = bits
            self._top = counter
            return True
        if diff >= self._size:
            return False
        bit = 1 << diff
        if self._bits & bit:
            return False
        self._bits |= bit
        return True
