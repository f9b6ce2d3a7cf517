"""A SendSegments on real UDP: one large message's datagrams arrive as they were built, in
order; consecutive Sends to one address arrive as built too, whether the runner may
segment them in one send (equal sizes, the last no larger) or not (mixed sizes); a bad
address loses nothing after it; and a GRO batch reaches a core that takes segments as
one buffer, holding exactly the datagrams that were sent."""

from __future__ import annotations

import asyncio
import contextlib
import socket

from x0tta6bl4.node import udpfast
from x0tta6bl4.node.udp import UdpRunner
from x0tta6bl4.sansio import (
    Action,
    Deliver,
    Input,
    Send,
    SendSegments,
    SetTimer,
    Timer,
    segments,
)


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
        _send([SendSegments(addr, bytearray().join(grams), 1400)])
        assert _recv(rx, len(grams)) == list(grams)


def test_mixed_sizes_still_arrive_as_built() -> None:
    rx, addr = _receiver()
    with rx:
        grams = (b"a" * 100, b"b" * 1400, b"c" * 1400, b"d" * 700, b"e" * 1400)
        _send([Send(addr, g) for g in grams])
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
                    SendSegments("no-such-node", b"x" * 10 + b"y" * 10, 10),
                    SendSegments(addr, b"ok1ok2", 3),
                    SetTimer(runner.now + 0.01, "t"),
                ]
            )
            await asyncio.sleep(0.1)
            runner.close()

        asyncio.run(main())
        assert _recv(rx, 2) == [b"ok1", b"ok2"]
    assert core.fired == 1


class _TakesSegments:
    """A core that takes GRO batches whole: keeps what it was given."""

    def __init__(self) -> None:
        self.batches: list[tuple[bytes, int]] = []
        self.single: list[bytes] = []

    def start(self, now: float) -> list[Action]:
        return []

    def handle(self, now: float, inp: Input) -> list[Action]:
        self.single.append(inp.data)  # type: ignore[union-attr]
        return []

    def handle_segments(self, now: float, addr: object, data: bytes, size: int) -> list[Action]:
        self.batches.append((data, size))
        return []


def test_a_gro_batch_reaches_the_core_as_one_buffer() -> None:
    core = _TakesSegments()
    grams = [bytes([i]) * 1200 for i in range(20)] + [b"last"]

    async def main() -> None:
        runner = UdpRunner(core)
        _, port = await runner.bind("127.0.0.1", 0)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            # one GSO send: on loopback the receiver gets it back as one GRO batch
            udpfast.send_segments(tx, b"".join(grams), 1200, ("127.0.0.1", port))
            for _ in range(100):
                await asyncio.sleep(0.01)
                got = sum(len(segments(d, s)) for d, s in core.batches) + len(core.single)
                if got >= len(grams):
                    break
        runner.close()

    asyncio.run(main())
    taken = [g for d, s in core.batches for g in segments(d, s)] + core.single
    assert taken == grams  # in order, none lost, none cut wrongly
    assert core.batches, "loopback delivered no GRO batch: the segments path went untested"
    assert all(type(d) is bytes for d, _ in core.batches)  # a copy, not the runner's buffer


def test_sends_held_in_a_block_leave_together_at_its_end() -> None:
    # A TUN read batch of a UDP flow's packets: one message each, applied one by one.
    # Held, they leave in one GSO send, in order, and nothing leaves before the block ends.
    rx, addr = _receiver()
    with rx:
        rx.setblocking(False)
        grams = [bytes([i]) * 1200 for i in range(20)]
        early: list[bytes] = []

        async def main() -> None:
            runner = UdpRunner(_Idle())
            await runner.bind("127.0.0.1", 0)
            gso_before = udpfast.stats.gso_sends
            with runner.held():
                for g in grams:
                    runner.apply([Send(addr, g)])
                with runner.held():  # nested: joins the outer block
                    runner.apply([Send(addr, b"last")])
                await asyncio.sleep(0.02)
                with contextlib.suppress(BlockingIOError):
                    early.append(rx.recv(65535))
            await asyncio.sleep(0.05)
            if udpfast.kernel_supports_gso():
                assert udpfast.stats.gso_sends == gso_before + 1
            runner.close()

        asyncio.run(main())
        rx.settimeout(2.0)
        assert early == []
        assert _recv(rx, len(grams) + 1) == [*grams, b"last"]


def test_in_a_held_block_large_messages_and_deliveries_do_not_wait() -> None:
    # Only single datagrams wait for the block's end. A large message goes at once,
    # after the datagrams held before it (order kept), and a delivery happens at once:
    # holding a burst of 60 KB deliveries to the end added megabytes to the receiver.
    rx, addr = _receiver()
    with rx:
        delivered: list[bytes] = []
        seen_during: list[int] = []
        big = [bytes([i]) * 1400 for i in range(10)]

        async def main() -> None:
            runner = UdpRunner(_Idle(), on_deliver=lambda d: delivered.append(d.payload))
            await runner.bind("127.0.0.1", 0)
            with runner.held():
                runner.apply([Send(addr, b"first")])
                runner.apply([Deliver("x", 7, b"payload")])
                seen_during.append(len(delivered))
                runner.apply([SendSegments(addr, bytearray().join(big), 1400)])
                runner.apply([Send(addr, b"last")])
            await asyncio.sleep(0.05)
            runner.close()

        asyncio.run(main())
        assert seen_during == [1] and delivered == [b"payload"]
        assert _recv(rx, 12) == [b"first", *big, b"last"]
