"""Bare routing cores on the simulator: a ``Router`` or one side of a ``LinkEstimator``
pair wrapped as a sim core, so the routing tests use the same event loop as the mesh.

Imported as ``from helpers import ...`` (pytest puts this directory on ``sys.path``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from enum import StrEnum
from typing import Final

from x0tta6bl4.routing.babel import (
    ROUTE_TIMER,
    Outgoing,
    Router,
    RouterOutput,
    Tlv,
    decode_tlvs,
    encode_tlvs,
    pack_tlvs,
)
from x0tta6bl4.routing.linkquality import HELLO_INTERVAL, LinkEstimator, decode_hello, encode_hello
from x0tta6bl4.sansio import Action, Datagram, Input, Send, SetTimer, Timer

MTU: Final = 1200
"""Largest routing packet the router cores put on the wire."""

SentLog = list[tuple[float, str, str | None, Tlv]]
"""``(time, sender, recipient or None for everyone, tlv)`` for every TLV a router sent."""


# --- router output -----------------------------------------------------------------------


def split(out: Sequence[Outgoing | SetTimer]) -> tuple[list[Outgoing], list[SetTimer]]:
    """A router output's messages and timers, each in order."""
    msgs = [o for o in out if isinstance(o, Outgoing)]
    timers = [o for o in out if isinstance(o, SetTimer)]
    assert len(msgs) + len(timers) == len(out), out
    assert all(t.key == ROUTE_TIMER for t in timers), timers
    return msgs, timers


def messages(out: Sequence[Outgoing | SetTimer]) -> list[Outgoing]:
    """Only the messages of a router output."""
    return split(out)[0]


class TimerSlot:
    """The route timer a caller holds, kept as a runtime keeps it: the latest SetTimer
    replaces the earlier one."""

    def __init__(self) -> None:
        self.at = float("inf")
        """When the held timer fires (inf: none set yet)."""

    def feed(self, out: RouterOutput) -> list[Outgoing]:
        """Take the output's SetTimer (if any); return its messages."""
        msgs, timers = split(out)
        assert len(timers) <= 1, timers  # a router asks at most once per call
        for t in timers:
            self.at = t.at
        return msgs


# --- a router as a sim core ----------------------------------------------------------------


class RouterCore:
    """A bare ``Router`` driven by the simulator.

    ``Datagram`` goes to ``handle_packet``, or with ``wire=False`` is decoded and goes to
    ``Router.handle`` (the object path); ``Timer(ROUTE_TIMER)`` goes to ``handle_timer``.
    Each ``Outgoing`` becomes one ``Send`` per packet (``pack_tlvs`` at :data:`MTU`;
    one unsplit packet with ``wire=False``) to the named neighbour, or to every neighbour
    the router has when ``to`` is None; ``SetTimer`` passes through to the simulator.
    """

    def __init__(
        self,
        name: str,
        router: Router,
        *,
        wire: bool = True,
        sent: SentLog | None = None,
        on_packet: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.router = router
        self.wire = wire
        self.sent: SentLog = sent if sent is not None else []
        self.on_packet = on_packet
        """Called after each received packet is processed (test probes)."""
        self.timer = TimerSlot()

    def start(self, now: float) -> list[Action]:
        return self.actions(now, self.router.start(now))

    def handle(self, now: float, inp: Input) -> list[Action]:
        if isinstance(inp, Timer):
            assert inp.key == ROUTE_TIMER, inp
            return self.actions(now, self.router.handle_timer(now))
        if isinstance(inp, Datagram):
            assert isinstance(inp.addr, str)
            if self.wire:
                out = self.router.handle_packet(now, inp.addr, inp.data)
            else:
                out = self.router.handle(now, inp.addr, decode_tlvs(inp.data))
            acts = self.actions(now, out)
            if self.on_packet is not None:
                self.on_packet()
            return acts
        return []

    def actions(self, now: float, out: RouterOutput) -> list[Action]:
        """Sim actions for a router output, from the simulator or from a test's direct
        call (whose output must reach the simulator too: the timer lives there)."""
        msgs = self.timer.feed(out)
        acts: list[Action] = [o for o in out if isinstance(o, SetTimer)]
        for o in msgs:
            for t in o.tlvs:
                self.sent.append((now, self.name, o.to, t))
            packets = pack_tlvs(o.tlvs, MTU) if self.wire else [encode_tlvs(o.tlvs)]
            targets: Iterable[str] = self.router.neighbours() if o.to is None else [o.to]
            acts.extend(Send(dst, p) for dst in targets for p in packets)
        self.check_timer()
        return acts

    def check_timer(self) -> None:
        """The push contract: the timer we hold is never later than the router's work."""
        r = self.router
        if r._next_dump is not None:  # started
            assert self.timer.at <= r._deadline(), (self.name, self.timer.at, r._deadline())


# --- one side of a link-estimator pair as a sim core ---------------------------------------


class HelloTimer(StrEnum):
    SEND = "hello.send"


class HelloCore:
    """One end of a link: sends ``peer`` a hello every ``HELLO_INTERVAL`` jittered by
    +-10 % (as the mesh does), feeds the peer's hellos to its ``LinkEstimator``.

    ``clock_offset`` shifts this end's monotonic clock (the RTT echo must not care);
    ``drop(n)`` loses the n-th hello this end sends before it reaches the wire, a fixed
    loss pattern where the simulator's link loss would be random.
    """

    def __init__(
        self,
        peer: str,
        est: LinkEstimator,
        *,
        first_send: float,
        jitter: random.Random,
        clock_offset: float = 0.0,
        drop: Callable[[int], bool] = lambda n: False,
    ) -> None:
        self.peer = peer
        self.est = est
        self.first_send = first_send
        self.jitter = jitter
        self.clock_offset = clock_offset
        self.drop = drop
        self.sent = 0

    def clock(self, now: float) -> float:
        return now + self.clock_offset

    def start(self, now: float) -> list[Action]:
        return [SetTimer(self.first_send, HelloTimer.SEND)]

    def handle(self, now: float, inp: Input) -> list[Action]:
        if isinstance(inp, Datagram):
            self.est.on_hello(self.clock(now), decode_hello(inp.data))
            return []
        if not (isinstance(inp, Timer) and inp.key == HelloTimer.SEND):
            return []
        acts: list[Action] = []
        h = self.est.make_hello(self.clock(now))
        n = self.sent
        self.sent += 1
        if not self.drop(n):
            acts.append(Send(self.peer, encode_hello(h)))
        nxt = now + HELLO_INTERVAL + self.jitter.uniform(-0.1, 0.1) * HELLO_INTERVAL
        acts.append(SetTimer(nxt, HelloTimer.SEND))
        return acts
