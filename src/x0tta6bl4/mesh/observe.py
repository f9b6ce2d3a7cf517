"""What a mesh node lets its self-healing loop see, and what it lets it do.

The healing layer (``healing/``) sits above ``mesh/`` and drives a node only
through this surface, so the MAPE-K loop stays a pure function of observations and
knowledge, and the node stays the single owner of its protocol state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from x0tta6bl4.sansio import Action


@dataclass(frozen=True, slots=True)
class LinkObservation:
    """One neighbour link as the node sees it now."""

    peer: str  # neighbour node name
    alive: bool  # heard within the dead interval and a session is established
    rtt: float | None  # smoothed round-trip time, seconds
    jitter: float | None  # smoothed RTT variation, seconds
    loss: float  # 0..1, from the hello reception history (both directions)
    last_heard: float | None  # monotonic seconds
    cost: int  # link cost the router uses now (penalties included)
    base_cost: int  # link cost without healing penalties
    session_age: float | None  # seconds since the current session was established
    handshake_failures: int  # consecutive failed handshakes
    damped_until: float | None = None  # held down by the healing layer until then
    # the fate of the neighbour's last n hellos up to the last one heard (bits, n):
    # that one in bit 0, 1 = heard (LinkEstimator.hello_record); dates a loss rise
    hellos: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class RouteObservation:
    dst: str  # destination node name
    next_hop: str | None  # None: unreachable
    metric: int
    changes: int  # next-hop changes since the node started


@dataclass(frozen=True, slots=True)
class NodeObservation:
    """Everything the Monitor phase reads in one cycle."""

    now: float
    name: str
    links: Mapping[str, LinkObservation]
    routes: Mapping[str, RouteObservation]
    cert_not_after: float  # wall-clock POSIX seconds
    wall_now: float
    counters: Mapping[str, int] = field(default_factory=dict)
    # destination -> monotonic time its last reachability probe was answered end to end
    verified: Mapping[str, float] = field(default_factory=dict)


class HealableNode(Protocol):
    """The protocol core operations the Execute phase may call."""

    name: str

    def observe(self, now: float) -> NodeObservation: ...

    def set_link_penalty(self, now: float, peer: str, factor: float) -> list[Action]:
        """Multiply the link's cost by ``factor`` (1.0 removes the penalty)."""
        ...

    def drop_neighbour(self, now: float, peer: str) -> list[Action]:
        """Treat the link as dead now: retract routes through it and reroute."""
        ...

    def reconnect(self, now: float, peer: str) -> list[Action]:
        """Start a fresh handshake with the neighbour."""
        ...

    def damp_link(self, now: float, peer: str, until: float | None) -> list[Action]:
        """Hold the link out of routing until ``until`` (None lifts the damping)."""
        ...

    def probe(self, now: float, dst: str) -> list[Action]:
        """Send an end-to-end reachability probe to ``dst``; the answer's arrival time
        shows in ``NodeObservation.verified[dst]``."""
        ...

    def request_renewal(self, now: float) -> list[Action]:
        """Ask the control plane for a new certificate (an Event the runtime acts on)."""
        ...
