"""Observations as a node would report them, for the healing tests (inputs, not mocks)."""

from __future__ import annotations

import dataclasses
import random
from collections import deque
from typing import Any

from x0tta6bl4.mesh.observe import LinkObservation, NodeObservation, RouteObservation
from x0tta6bl4.routing.linkquality import RECORD_LEN
from x0tta6bl4.sansio import Action, Event, Input, SetTimer


def link(peer: str, *, alive: bool = True, **kw: object) -> LinkObservation:
    fields: dict[str, object] = {
        "rtt": 0.01,
        "jitter": 0.001,
        "loss": 0.0,
        "last_heard": None,
        "cost": 96,
        "base_cost": 96,
        "session_age": 1.0,
        "handshake_failures": 0,
    }
    fields.update(kw)
    return LinkObservation(peer=peer, alive=alive, **fields)  # type: ignore[arg-type]


def route(dst: str, hop: str | None, changes: int = 0) -> RouteObservation:
    return RouteObservation(dst, hop, 96 if hop else 0xFFFF, changes)


def obs(
    now: float,
    links: list[LinkObservation] | None = None,
    routes: list[RouteObservation] | None = None,
    *,
    not_after: float = 1e9,
    wall: float = 1e6,
    verified: dict[str, float] | None = None,
) -> NodeObservation:
    return NodeObservation(
        now=now,
        name="A",
        links={lo.peer: lo for lo in links or []},
        routes={r.dst: r for r in routes or []},
        cert_not_after=not_after,
        wall_now=wall + now,
        verified=dict(verified or {}),
    )


class HelloLoss:
    """A neighbour's hellos every ``interval`` seconds, each lost with probability
    ``loss`` (from a seeded RNG), and the loss the link estimator reports for them: the
    fraction lost among the last ``window`` hellos (16, so in steps of 1/16)."""

    def __init__(self, seed: int, loss: float, *, window: int = 16, interval: float = 0.1):
        self.rng = random.Random(seed)
        self.loss = loss
        self.window = window
        self.interval = interval
        # True: lost; the last `window` make the reported loss, all of them the record
        self.fates: deque[bool] = deque(maxlen=max(window, RECORD_LEN))
        self.sent = 0

    def at(self, now: float) -> float:
        """The reported loss at ``now`` (hellos are sent at interval, 2*interval, ...)."""
        while (self.sent + 1) * self.interval <= now + 1e-9:
            self.send(self.rng.random() < self.loss)
        recent = list(self.fates)[-self.window :]
        return sum(recent) / len(recent) if recent else 0.0

    def send(self, lost: bool) -> None:
        self.sent += 1
        self.fates.append(lost)

    def record(self) -> tuple[tuple[int, int], float | None]:
        """The hello record as the link estimator keeps it (up to the last hello heard,
        that one in bit 0) and when that hello was heard (None: none was)."""
        fates = list(self.fates)
        while fates and fates[-1]:
            fates.pop()
        if not fates:
            return (0, 0), None
        bits = 0
        for lost in fates:
            bits = (bits << 1) | (not lost)
        last = self.sent - (len(self.fates) - len(fates))
        return (bits, len(fates)), last * self.interval


class RecordingNode:
    """A scripted HealableNode (and sans-IO core): the test sets what ``observe``
    returns and reads back every call the loop made.

    Probes are answered ``echo_delay`` seconds after they were sent if the destination
    has a route then and is not in ``black_holes`` (a route that leads nowhere, as a
    stale one across a partition does); ``echo_delay = None`` answers none. Answers show
    in ``observe().verified`` as on a MeshNode (the latest answer per destination).
    """

    def __init__(self, name: str = "A") -> None:
        self.name = name
        self.links: dict[str, LinkObservation] = {}
        self.routes: dict[str, RouteObservation] = {}
        self.not_after = 1e12
        self.wall_offset = 1e6
        self.calls: list[tuple[Any, ...]] = []
        self.inputs: list[Input] = []
        self.refuse: dict[str, Exception] = {}
        self.echo_delay: float | None = 0.01
        self.black_holes: set[str] = set()
        self.verified: dict[str, float] = {}
        self._echoes: list[tuple[float, str]] = []

    def set(self, links: list[LinkObservation], routes: list[RouteObservation]) -> None:
        # damping the node was told about stays visible, as on a real node
        damped = {p: lo.damped_until for p, lo in self.links.items()}
        self.links = {
            lo.peer: dataclasses.replace(lo, damped_until=lo.damped_until or damped.get(lo.peer))
            for lo in links
        }
        self.routes = {r.dst: r for r in routes}

    def observe(self, now: float) -> NodeObservation:
        due = [(t, dst) for t, dst in self._echoes if t <= now]
        self._echoes = [(t, dst) for t, dst in self._echoes if t > now]
        for t, dst in sorted(due):
            self.verified[dst] = t
        return NodeObservation(
            now,
            self.name,
            dict(self.links),
            dict(self.routes),
            self.not_after,
            now + 1e6,
            verified=dict(self.verified),
        )

    def _record(self, *call: object) -> list[Action]:
        self.calls.append(call)
        exc = self.refuse.get(str(call[0]))
        if exc is not None:
            raise exc
        return []

    def set_link_penalty(self, now: float, peer: str, factor: float) -> list[Action]:
        return self._record("set_link_penalty", now, peer, factor)

    def drop_neighbour(self, now: float, peer: str) -> list[Action]:
        return self._record("drop_neighbour", now, peer)

    def reconnect(self, now: float, peer: str) -> list[Action]:
        return self._record("reconnect", now, peer)

    def damp_link(self, now: float, peer: str, until: float | None) -> list[Action]:
        if peer in self.links:
            self.links[peer] = dataclasses.replace(self.links[peer], damped_until=until)
        return self._record("damp_link", now, peer, until)

    def probe(self, now: float, dst: str) -> list[Action]:
        out = self._record("probe", now, dst)
        route = self.routes.get(dst)
        if (
            self.echo_delay is not None
            and route is not None
            and route.next_hop is not None
            and dst not in self.black_holes
        ):
            # a later probe replaces the nonce: an earlier one's answer would be stale
            self._echoes = [(t, d) for t, d in self._echoes if d != dst]
            self._echoes.append((now + self.echo_delay, dst))
        return out

    def request_renewal(self, now: float) -> list[Action]:
        return [*self._record("request_renewal", now), Event("renewal_requested", {})]

    def start(self, now: float) -> list[Action]:
        return [SetTimer(now + 1.0, ("hello",))]

    def handle(self, now: float, inp: Input) -> list[Action]:
        self.inputs.append(inp)
        return [Event("handled", {})]

    def called(self, method: str) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] == method]
