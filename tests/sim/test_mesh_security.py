"""What a relay can and cannot do, and the path MTU, on the real mesh in the simulator.

line(3): n0000 - n0001 - n0002. Packets from n0000 to n0002 are sealed end to end and
relayed by n0001, which also holds a link session with each of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from x0tta6bl4.channel.constants import MSG_RELAY
from x0tta6bl4.errors import MessageTooLarge
from x0tta6bl4.mesh.node import FORWARD_OVERHEAD, FRAME_FORWARD, RELAY_OVERHEAD, MeshNode
from x0tta6bl4.sansio import Action, AppSend, Deliver, Event, Send
from x0tta6bl4.sim import Simulator, build_mesh, line
from x0tta6bl4.sim.meshsim import mesh_of, meshes, path

SEED = 5
SRC, RELAY, DST = "n0000", "n0001", "n0002"
MARKER = b"PLAINTEXT-CANARY-"
PORT = 4242


class HostileRelay(MeshNode):
    """A compromised relay: it records every frame its link sessions decrypt and may
    rewrite the end-to-end datagrams it forwards. It holds real link sessions, so it
    sees all that a relay can."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.frames: list[bytes] = []
        self.tamper: Callable[[bytes], bytes] | None = None

    def _on_frame(self, now: float, peer: str, frame: bytes, out: list[Action]) -> None:
        self.frames.append(frame)
        if frame and frame[0] == FRAME_FORWARD and self.tamper is not None:
            head = FORWARD_OVERHEAD
            frame = frame[:head] + self.tamper(frame[head:])
        super()._on_frame(now, peer, frame, out)

    def _on_relay(self, now: float, addr: Any, data: bytes, out: list[Action]) -> None:
        # End-to-end data crosses relays in RELAY datagrams, outside link sessions.
        self.frames.append(data)
        if self.tamper is not None:
            data = data[:RELAY_OVERHEAD] + self.tamper(data[RELAY_OVERHEAD:])
        super()._on_relay(now, addr, data, out)


def _line() -> tuple[Simulator, dict[str, MeshNode]]:
    topo = line(3)
    sim = build_mesh(topo, seed=SEED, node_types={RELAY: HostileRelay}).sim
    # Cores exist from add_node on, so hooks can be set before anything runs.
    nodes: dict[str, MeshNode] = {}
    for n in topo.nodes:
        m = mesh_of(sim.core(n))
        assert m is not None
        nodes[n] = m
    while path(meshes(sim), SRC, DST) is None:
        assert sim.now < 5.0, "line(3) did not converge"
        sim.run(round(sim.now + 0.1, 6))
    return sim, nodes


def _payload(i: int) -> bytes:
    return MARKER + b"%04d-" % i + bytes(range(32))


class _Wire:
    """Every Send datagram and every Deliver at DST."""

    def __init__(self, sim: Simulator) -> None:
        self.sends: list[tuple[str, bytes]] = []
        self.delivered: list[tuple[float, bytes]] = []
        sim.on_action.append(self)

    def __call__(self, t: float, node: str, act: Action) -> None:
        if type(act) is Send:
            self.sends.append((node, act.data))
        elif type(act) is Deliver and node == DST:
            assert act.src == SRC and act.port == PORT
            self.delivered.append((t, act.payload))


def test_relay_never_sees_plaintext() -> None:
    sim, nodes = _line()
    relay = nodes[RELAY]
    assert isinstance(relay, HostileRelay)
    frames = relay.frames
    wire = _Wire(sim)
    t0 = sim.now
    sent = [_payload(i) for i in range(40)]
    for i, p in enumerate(sent):
        sim.send_app(t0 + 0.02 * i, SRC, DST, PORT, p)
    sim.run(t0 + 3.0)

    # Everything arrived, intact: the test is not vacuous.
    assert [p for _, p in wire.delivered] == sent
    forwards = [f for f in frames if f[0] == FRAME_FORWARD or f[1] == MSG_RELAY]
    assert len(forwards) >= len(sent)  # the relay handled every data packet (and more)
    assert nodes[RELAY].counters["relayed"] >= len(sent)
    # ...and not one frame it decrypted from its link sessions, nor one byte anyone put
    # on the wire, contains the plaintext (or any 16-byte window of it).
    windows = {p[i : i + 16] for p in sent for i in range(len(p) - 15)}
    for f in frames:
        assert MARKER not in f
        assert not any(w in f for w in windows)
    assert wire.sends
    for _, data in wire.sends:
        assert MARKER not in data


def _flip_last(inner: bytes) -> bytes:
    # The last byte is in the AEAD tag: the ciphertext stays well formed, only the
    # authentication can tell.
    return inner[:-1] + bytes([inner[-1] ^ 0x01])


def test_tampering_relay_causes_counted_drops_never_wrong_delivery() -> None:
    sim, nodes = _line()
    wire = _Wire(sim)
    t0 = sim.now
    honest = [_payload(i) for i in range(5)]
    for i, p in enumerate(honest):
        sim.send_app(t0 + 0.05 * i, SRC, DST, PORT, p)
    sim.run(t0 + 2.0)
    assert [p for _, p in wire.delivered] == honest  # the e2e session is up

    e2e = nodes[DST].e2e.counters
    failed_before = e2e.get("decrypt_failed", 0)
    relay = nodes[RELAY]
    assert isinstance(relay, HostileRelay)
    relay.tamper = _flip_last
    t1 = sim.now
    tampered = [_payload(100 + i) for i in range(20)]
    for i, p in enumerate(tampered):
        sim.send_app(t1 + 0.05 * i, SRC, DST, PORT, p)
    sim.run(t1 + 2.0)

    # Nothing new was delivered, nothing altered ever was, and every forged packet was
    # dropped and counted by the destination's end-to-end endpoint.
    assert [p for _, p in wire.delivered] == honest
    assert e2e.get("decrypt_failed", 0) - failed_before >= len(tampered)

    # An honest relay again: the session survived the forgeries and carries traffic.
    relay.tamper = None
    t2 = sim.now
    after = [_payload(200 + i) for i in range(5)]
    for i, p in enumerate(after):
        sim.send_app(t2 + 0.05 * i, SRC, DST, PORT, p)
    sim.run(t2 + 2.0)
    assert [p for _, p in wire.delivered] == honest + after


def test_payload_over_path_mtu_is_refused_never_truncated() -> None:
    sim, nodes = _line()
    src = nodes[SRC]
    limit = src.max_app_payload
    # payloads past one datagram are split by the channel, up to one IPv4 packet
    assert src.config.max_datagram < limit <= 65535

    # send_app raises...
    with pytest.raises(MessageTooLarge) as exc:
        src.send_app(sim.now, DST, PORT, b"\x00" * (limit + 1))
    assert (exc.value.size, exc.value.limit) == (limit + 1, limit)
    # ...handle(AppSend) answers with an event and sends nothing.
    acts = src.handle(sim.now, AppSend(DST, PORT, b"\x00" * (limit + 1)))
    assert [type(a) for a in acts] == [Event]
    ev = acts[0]
    assert isinstance(ev, Event) and ev.kind == "app_send_refused"
    assert ev.fields["dst"] == DST and str(limit) in ev.fields["reason"]
    assert src.counters["app_send_refused"] == 1

    # Through the simulator: the oversize one is refused, the largest allowed one
    # crosses two hops whole.
    wire = _Wire(sim)
    t0 = sim.now
    biggest = bytes(i % 251 for i in range(limit))
    sim.send_app(t0, SRC, DST, PORT, biggest + b"!")
    sim.send_app(t0 + 0.1, SRC, DST, PORT, biggest)
    sim.run(t0 + 2.0)
    assert [p for _, p in wire.delivered] == [biggest]
    refused = [r for r in sim.trace.select(kind="app_send_refused") if r[0] >= t0]
    assert len(refused) == 1 and refused[0][1] == SRC
    assert sim.drops["mtu"] == 0
    assert max(len(d) for _, d in wire.sends) <= src.config.max_datagram
