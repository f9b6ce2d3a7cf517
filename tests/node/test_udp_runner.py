"""The UDP runner under uvloop: timers reach the core at or after their time, and a send
error does not swallow the actions after it."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Hashable

import pytest

from x0tta6bl4.node.udp import UdpRunner
from x0tta6bl4.sansio import Action, Input, Send, SetTimer, Timer

uvloop = pytest.importorskip("uvloop", reason="uvloop is the agent's loop where available")


class _Recorder:
    """A core that arms timers at odd sub-millisecond offsets and records when they fire."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.fired: list[tuple[Hashable, float, float]] = []  # key, due, handled at
        self.due: dict[Hashable, float] = {}

    def start(self, now: float) -> list[Action]:
        out: list[Action] = []
        for i in range(self.n):
            at = now + 0.0103 + i * 0.0007
            self.due[i] = at
            out.append(SetTimer(at, i))
        return out

    def handle(self, now: float, inp: Input) -> list[Action]:
        if isinstance(inp, Timer):
            self.fired.append((inp.key, self.due[inp.key], now))
        return []


def test_no_timer_reaches_the_core_early_under_uvloop() -> None:
    core = _Recorder(40)

    async def main() -> None:
        runner = UdpRunner(core)
        await runner.bind("127.0.0.1", 0)
        await asyncio.sleep(0.2)
        runner.close()

    uvloop.run(main())
    assert len(core.fired) == 40  # none lost
    assert all(handled >= due for _, due, handled in core.fired)


class _SendsThenArms:
    def __init__(self, dead: tuple[str, int]) -> None:
        self.dead = dead
        self.timers = 0

    def start(self, now: float) -> list[Action]:
        return [Send(self.dead, b"x"), SetTimer(now + 0.01, "retry")]

    def handle(self, now: float, inp: Input) -> list[Action]:
        self.timers += 1
        if self.timers < 5:  # keep sending to a port nobody listens on, and re-arming
            return [Send(self.dead, b"x"), SetTimer(now + 0.01, "retry")]
        return []


def test_sending_to_a_closed_port_loses_no_timer() -> None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    dead = probe.getsockname()
    probe.close()  # nobody listens here: ICMP port unreachable comes back
    core = _SendsThenArms(dead)

    async def main() -> None:
        runner = UdpRunner(core)
        await runner.bind("127.0.0.1", 0)
        await asyncio.sleep(0.3)
        runner.close()

    uvloop.run(main())
    assert core.timers == 5
