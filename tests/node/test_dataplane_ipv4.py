"""Overlay IPv4 in TUN mode: every node's 100.64.0.0/10 address is computed from its name,
packets to a peer's address go to that peer, and a receiver takes an IPv4 packet only
from the address of the node its end-to-end session authenticated (it used to check the
source of IPv6 packets only, so a node could speak for another over IPv4).

``TunPlane`` is real; the agent around it is a small stand-in recording what the plane
asks of it, and the device records what would be written to the kernel."""

from __future__ import annotations

import contextlib
import struct
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from tests.identity.helpers import names_sharing_an_ipv4_address
from x0tta6bl4.crypto.hybrid import HybridPrivateKey
from x0tta6bl4.crypto.sign import SigningKey
from x0tta6bl4.identity.cert import node_spiffe_id
from x0tta6bl4.identity.types import VerifiedIdentity
from x0tta6bl4.node.dataplane import IP_PORT, TunPlane, node_overlay_ipv4, node_overlay_ipv6
from x0tta6bl4.node.runsettings import RunTun
from x0tta6bl4.policy.types import Decision

TD = "x0tta6bl4.mesh"
ALLOW = Decision(True, None, "line:1", "test: allowed")


@dataclass
class _Device:
    written: list[bytes] = field(default_factory=list)
    queued: list[bytes] = field(default_factory=list)  # what the kernel has for us to read

    def write(self, pkt: bytes) -> None:
        self.written.append(pkt)

    def read(self) -> bytes:
        if not self.queued:
            raise BlockingIOError
        return self.queued.pop(0)


@dataclass
class _Host:
    """What TunPlane uses of the agent."""

    name: str
    names: list[str]
    ipv4: bool = True
    counters: dict[str, int] = field(default_factory=dict)
    sent: list[tuple[str, int, bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.settings = SimpleNamespace(tun=RunTun(enabled=True, ipv4=self.ipv4))
        self.bundle = SimpleNamespace(trust_domain=TD)
        self.mesh = SimpleNamespace(known_names=lambda: list(self.names))

    def count(self, what: str, n: int = 1) -> None:
        self.counters[what] = self.counters.get(what, 0) + n

    def decide(self, src: Any, proto: Any, port: Any) -> Decision:
        return ALLOW

    def decide_outbound(self, dst: Any, proto: Any, port: Any) -> Decision | None:
        return ALLOW

    def peer_identity(self, name: str) -> VerifiedIdentity | None:
        return None

    def send(self, dst: str, port: int, payload: bytes) -> None:
        self.sent.append((dst, port, payload))

    def batch(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


def _identity(name: str) -> VerifiedIdentity:
    return VerifiedIdentity(
        spiffe_id=node_spiffe_id(TD, name),
        trust_domain=TD,
        name=name,
        tags=(),
        static_key=HybridPrivateKey.generate().public_key(),
        signing_key=SigningKey.generate().public_key(),
        serial=1,
        fingerprint=bytes(32),
        not_before=0.0,
        not_after=2e9,
    )


def _icmp4(src: Any, dst: Any) -> bytes:
    """A virtio-net header (no offload) and an IPv4 ICMP echo request."""
    icmp = struct.pack(">BBHHH", 8, 0, 0, 7, 1) + b"ping"
    total = 20 + len(icmp)
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, 1, 0, src.packed, dst.packed)
    return bytes(10) + ip + icmp


def _plane(host: _Host) -> tuple[TunPlane, _Device]:
    plane = TunPlane(host)  # type: ignore[arg-type]
    dev = _Device()
    plane.tun = dev  # type: ignore[assignment]
    return plane, dev


def test_an_ipv4_packet_from_the_senders_own_address_is_delivered() -> None:
    host = _Host("a", ["a", "d"])
    plane, dev = _plane(host)
    pkt = _icmp4(node_overlay_ipv4(TD, "d"), node_overlay_ipv4(TD, "a"))
    plane.inbound("d", _identity("d"), pkt)
    assert dev.written == [pkt], host.counters


def test_an_ipv4_packet_speaking_for_another_node_is_dropped() -> None:
    host = _Host("a", ["a", "c", "d"])
    plane, dev = _plane(host)
    # d's session, c's source address: d would be speaking for c.
    plane.inbound("d", _identity("d"), _icmp4(node_overlay_ipv4(TD, "c"), plane.address4))
    plane.inbound("d", None, _icmp4(node_overlay_ipv4(TD, "d"), plane.address4))
    assert dev.written == []
    assert host.counters == {"tun_spoofed_source": 2}


def test_ipv4_for_another_address_or_with_ipv4_off_is_not_for_us() -> None:
    host = _Host("a", ["a", "c", "d"])
    plane, dev = _plane(host)
    plane.inbound(
        "d", _identity("d"), _icmp4(node_overlay_ipv4(TD, "d"), node_overlay_ipv4(TD, "c"))
    )
    off = _Host("a", ["a", "d"], ipv4=False)
    plane_off, dev_off = _plane(off)
    assert plane_off.address4 is None
    plane_off.inbound(
        "d", _identity("d"), _icmp4(node_overlay_ipv4(TD, "d"), node_overlay_ipv4(TD, "a"))
    )
    assert dev.written == dev_off.written == []
    assert host.counters == off.counters == {"tun_not_for_us": 1}


def test_a_packet_to_a_peers_ipv4_address_goes_to_that_peer() -> None:
    host = _Host("a", ["a", "b", "d"])
    plane, _ = _plane(host)
    pkt = _icmp4(plane.address4, node_overlay_ipv4(TD, "d"))
    plane.outbound(pkt)
    assert host.sent == [("d", IP_PORT, pkt)]
    v6 = plane._lookup(node_overlay_ipv6(TD, "b"))
    assert v6 == "b"


def test_an_ipv4_address_two_names_share_goes_to_neither() -> None:
    x, y = names_sharing_an_ipv4_address(TD)
    host = _Host("a", ["a", x, y])
    plane, _ = _plane(host)
    plane.outbound(_icmp4(plane.address4, node_overlay_ipv4(TD, x)))
    assert host.sent == []
    assert host.counters == {"tun_ipv4_ambiguous": 1}
    # Their IPv6 addresses stay distinct and usable.
    assert plane._lookup(node_overlay_ipv6(TD, x)) == x


def _ack4(src: Any, dst: Any, ack: int) -> bytes:
    """A virtio-net header and a bare IPv4 TCP ACK (5201 -> 40000)."""
    tcp = struct.pack(">HHIIHHHH", 5201, 40000, 1, ack, (5 << 12) | 0x10, 512, 0, 0)
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, 6, 0, src.packed, dst.packed)
    return bytes(10) + ip + tcp


def test_a_burst_of_acks_read_from_the_device_goes_out_as_its_last() -> None:
    # A receiver that has just written a burst of data finds the kernel's ACKs for it
    # queued on the device: the last one says what the others do.
    host = _Host("a", ["a", "d"])
    plane, dev = _plane(host)
    me, peer = plane.address4, node_overlay_ipv4(TD, "d")
    acks = [_ack4(me, peer, n) for n in (1000, 2000, 3000)]
    ping = _icmp4(me, peer)
    dev.queued = [acks[0], ping, acks[1], acks[2]]
    plane._readable()
    assert host.sent == [("d", IP_PORT, ping), ("d", IP_PORT, acks[2])]
    assert host.counters == {"tun_acks_thinned": 2}
