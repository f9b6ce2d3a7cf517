"""What every part of the simulator shares: drop reasons, link parameters, per-node
counters, path probe results, percentiles, the simulator's error and its seeded random
streams.

This module imports nothing else of ``sim``, so the others import in one direction:
``types`` <- ``network`` <- ``engine`` <- ``scenario`` / ``meshsim`` / ``flows`` <-
``outage`` <- ``meshrun`` <- ``runner``, and ``topology`` needs only ``types``.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from x0tta6bl4.errors import X0tError

__all__ = [
    "CRASHED",
    "DROP_REASONS",
    "INTERCEPTED",
    "LINK_DOWN",
    "LOSS",
    "MTU",
    "NO_LINK",
    "PARTITION",
    "PATH_KINDS",
    "QUEUE_OVERFLOW",
    "LinkSpec",
    "NodeStats",
    "PathKind",
    "PathResult",
    "SimError",
    "derive_rng",
    "percentile",
]

# Drop reasons, as plain strings: they key counters and appear in the trace.
LOSS: Final = "loss"
LINK_DOWN: Final = "link_down"
PARTITION: Final = "partition"
QUEUE_OVERFLOW: Final = "queue_overflow"
CRASHED: Final = "crashed"
NO_LINK: Final = "no_link"
MTU: Final = "mtu"
INTERCEPTED: Final = "intercepted"  # an intercept hook dropped it on arrival
DROP_REASONS: Final = (
    LOSS,
    LINK_DOWN,
    PARTITION,
    QUEUE_OVERFLOW,
    CRASHED,
    NO_LINK,
    MTU,
    INTERCEPTED,
)


class SimError(X0tError, ValueError):
    """The simulator was asked for something impossible (unknown node, bad parameter)."""


def derive_rng(seed: int, *labels: str) -> random.Random:
    """An independent, reproducible stream for ``(seed, labels)``.

    sha256 rather than ``hash()``: string hashing is salted per process.
    """
    h = hashlib.sha256(repr((seed, *labels)).encode()).digest()
    return random.Random(int.from_bytes(h[:16], "big"))


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """Parameters of one link direction.

    ``capacity`` is bytes/s (``inf``: no serialization delay); ``queue`` is the transmit
    queue limit in bytes when capacity is finite; ``mtu`` is the largest datagram in bytes;
    ``dup`` is the probability that a datagram that survived loss arrives twice (each
    copy with its own jitter), as a misbehaving path would deliver it.
    """

    latency: float = 0.001
    jitter: float = 0.0
    loss: float = 0.0
    capacity: float = math.inf
    mtu: int = 1500
    queue: int = 64 * 1024
    dup: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.latency) and self.latency >= 0):
            raise SimError(f"latency must be a finite number >= 0, got {self.latency!r}")
        if not (math.isfinite(self.jitter) and self.jitter >= 0):
            raise SimError(f"jitter must be a finite number >= 0, got {self.jitter!r}")
        if not 0.0 <= self.loss <= 1.0:
            raise SimError(f"loss must be a probability in [0, 1], got {self.loss!r}")
        if not self.capacity > 0:
            raise SimError(
                f"capacity must be > 0 bytes/s (inf for unlimited), got {self.capacity!r}"
            )
        if not (isinstance(self.mtu, int) and self.mtu > 0):
            raise SimError(f"mtu must be a positive int, got {self.mtu!r}")
        if not (isinstance(self.queue, int) and self.queue > 0):
            raise SimError(f"queue must be a positive int of bytes, got {self.queue!r}")
        if not 0.0 <= self.dup <= 1.0:
            raise SimError(f"dup must be a probability in [0, 1], got {self.dup!r}")


class NodeStats:
    """Counters for one node name, kept across crashes and restarts.

    ``sent_*`` counts every Send the core emitted (after tamper), delivered or not;
    ``recv_*`` counts datagrams handed to the core; ``dropped`` is keyed by reason and
    charged to the sending node (for app sends, to the node asked to send).
    """

    __slots__ = (
        "crashes",
        "delivered",
        "dropped",
        "recv_bytes",
        "recv_packets",
        "restarts",
        "sent_bytes",
        "sent_packets",
    )

    def __init__(self) -> None:
        self.sent_packets = 0
        self.sent_bytes = 0
        self.recv_packets = 0
        self.recv_bytes = 0
        self.delivered = 0
        self.crashes = 0
        self.restarts = 0
        self.dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__} | {
            "dropped": dict(self.dropped)
        }

    def __repr__(self) -> str:
        return f"NodeStats({self.as_dict()})"


PathKind = Literal["ok", "no_route", "loop", "dead_link", "dead_node"]
PATH_KINDS: Final[tuple[PathKind, ...]] = ("ok", "no_route", "loop", "dead_link", "dead_node")


@dataclass(frozen=True, slots=True)
class PathResult:
    """Where a packet from ``hops[0]`` toward a destination would go, hop by hop.

    ``kind`` says how the walk ended: ``ok`` (``hops[-1]`` is the destination),
    ``no_route`` (``hops[-1]`` has no next hop), ``loop`` (``hops[-1]`` was already
    visited: a routing loop, a protocol bug reported as a result so a probe can count it),
    ``dead_link`` (the last step uses a link that is missing, down or cut by a partition)
    or ``dead_node`` (``hops[-1]`` is not running; for a walk of one hop, the source).
    """

    kind: PathKind
    hops: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.kind == "ok"

    @property
    def links(self) -> int:
        """Links walked (``len(hops) - 1``)."""
        return len(self.hops) - 1


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in [0, 100]) of ``values``; nan when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]
