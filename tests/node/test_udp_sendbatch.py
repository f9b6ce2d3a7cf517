"""A SendBatch on real UDP: one large message's datagrams arrive as they were built, in
order, whether the kernel may segment them in one send (equal sizes, the last no larger)
or not (mixed sizes, sent the careful way), and a bad address loses nothing after it."""

from __future__ import annotations

import asyncio
import socket

from x0tta6bl4.node.udp import UdpRunner
from x0tta6bl4.sansio import Action, Input, SendBatch, SetTimer, Timer


class _Idle:
    def start(self, now: float) -> list[Action]:
        return []

    def handle(self, now: float, inp: Input) -> list[Action]:
        return []


def _receiver() -> tuple[socket.socket, tuple[str, int]]:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(2.0)
    return rx, rx.getsockname()


def _send(actions: list[Action]) -> None:
    async def main() -> None:
        runner = UdpRunner(_Idle())
        await runner.bind("127.0.0.1", 0)
        runner.apply(actions)
        await asyncio.sleep(0.05)
        runner.close()

    asyncio.run(main())


def _recv(rx: socket.socket, n: int) -> list[bytes]:
    return [rx.recv(65535) for _ in range(n)]


def test_equal_datagrams_arrive_whole_and_in_order() -> None:
    rx, addr = _receiver()
    with rx:
        grams = (*(bytes([i]) * 1400 for i in range(44)), b"tail" * 10)
        _send([SendBatch(addr, grams)])
        assert _recv(rx, len(grams)) == list(grams)


def test_mixed_sizes_still_arrive_as_built() -> None:
    rx, addr = _receiver()
    with rx:
        grams = (b"a" * 100, b"b" * 1400, b"c" * 1400, b"d" * 700, b"e" * 1400)
        _send([SendBatch(addr, grams)])
        assert _recv(rx, len(grams)) == list(grams)


class _Fires:
    def __init__(self) -> None:
        self.fired = 0

    def start(self, now: float) -> list[Action]:
        return []

    def handle(self, now: float, inp: Input) -> list[Action]:
        if isinstance(inp, Timer):
            self.fired += 1
        return []


def test_an_unroutable_batch_loses_nothing_after_it() -> None:
    rx, addr = _receiver()
    core = _Fires()
    with rx:

        async def main() -> None:
            runner = UdpRunner(core)
            await runner.bind("127.0.0.1", 0)
            runner.apply(
                [
                    SendBatch("no-such-node", (b"x" * 10, b"y" * 10)),
                    SendBatch(addr, (b"ok1", b"ok2")),
                    SetTimer(runner.now + 0.01, "t"),
                ]
            )
            await asyncio.sleep(0.1)
            runner.close()

        asyncio.run(main())
        assert _recv(rx, 2) == [b"ok1", b"ok2"]
    assert core.fired == 1
