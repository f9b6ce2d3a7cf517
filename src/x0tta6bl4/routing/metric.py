"""The routing metric's one shared constant, so link costs and route metrics agree."""

from __future__ import annotations

from typing import Final

INFINITY: Final = 0xFFFF
"""An unusable link's cost and an unreachable destination's metric (a retraction)."""
