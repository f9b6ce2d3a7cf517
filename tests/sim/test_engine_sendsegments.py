"""A SendSegments in the simulator: each datagram crosses the link on its own, in order, and
observers see one Send apiece (the simulator has no offload to model); ``wire`` lists
what a list of actions puts on the wire."""

from __future__ import annotations

import random

import pytest

from x0tta6bl4.sansio import Action, AppSend, Datagram, Input, Send, SendSegments, outgoing
from x0tta6bl4.sim import LinkSpec, Simulator


class Batcher:
    """App send -> the payload's bytes as a batch of one-byte datagrams; keeps what came."""

    def __init__(self, name: str, rng: random.Random, now: float) -> None:
        self.got: list[bytes] = []

    def start(self, now: float) -> list[Action]:
        return []

    def handle(self, now: float, inp: Input) -> list[Action]:
        if isinstance(inp, AppSend):
            return [SendSegments(inp.dst, inp.payload, 1)]
        if isinstance(inp, Datagram):
            self.got.append(inp.data)
        return []


def test_a_batch_crosses_one_datagram_at_a_time_and_is_observed_as_sends() -> None:
    sim = Simulator(seed=1)
    sim.add_node("a", Batcher)
    sim.add_node("b", Batcher)
    sim.add_link("a", "b", LinkSpec(latency=0.01))
    seen: list[Action] = []
    sim.on_action.append(lambda t, n, a: seen.append(a))
    sim.send_app(1.0, "a", "b", 7, b"batch")
    sim.run(2.0)
    b = sim.core("b")
    assert isinstance(b, Batcher)
    assert b.got == [b"b", b"a", b"t", b"c", b"h"]
    assert seen == [Send("b", bytes([x])) for x in b"batch"]
    assert sim.stats["a"].sent_packets == 5


def test_wire_flattens_sends_and_batches_in_order() -> None:
    actions: list[Action] = [
        Send("x", b"1"),
        SendSegments("y", b"2233", 2),
        SendSegments("z", bytearray(b"5"), 9),
        Send("x", b"4"),
    ]
    assert outgoing(actions) == [("x", b"1"), ("y", b"22"), ("y", b"33"), ("z", b"5"), ("x", b"4")]


def test_segments_need_data_and_a_positive_size() -> None:
    with pytest.raises(ValueError, match="positive size"):
        SendSegments("x", b"", 4)
    with pytest.raises(ValueError, match="size 0"):
        SendSegments("x", b"abc", 0)
    assert SendSegments("x", b"abcde", 2).count == 3
