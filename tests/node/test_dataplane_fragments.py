"""IP packets the host's kernel fragmented (a UDP datagram or a ping larger than the TUN
MTU) cross the overlay under the policy like whole ones: the first fragment carries the
transport header and is decided on it; the later ones, which carry no ports, follow
their first fragment's verdict, at the sender and at the receiver. A later fragment
whose first one was not let through goes nowhere.

They used to be lost: an IPv4 later fragment has no ports, so a port rule could not
match it and the sender dropped it as default-deny; an IPv6 fragment's next header is
the fragment header, which the receiver took for an unknown protocol."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Any

import pytest

from tests.node.test_dataplane_ipv4 import TD, _Host, _identity, _plane
from x0tta6bl4.identity.types import VerifiedIdentity
from x0tta6bl4.node.dataplane import IP_PORT, node_overlay_ipv4, node_overlay_ipv6
from x0tta6bl4.policy import Policy, Proto, Subject
from x0tta6bl4.policy.types import Decision

POLICY = Policy.parse("version 1\nallow from any to any port udp/5000\n")
UDP = 17


@dataclass
class _PolicyHost(_Host):
    """Decides with a real policy, as the agent does, and knows every peer's identity."""

    def decide(self, src: VerifiedIdentity | None, proto: Proto, port: int | None) -> Decision:
        assert src is not None
        me = Subject.from_identity(_identity(self.name))
        return POLICY.decide(Subject.from_identity(src), me, proto, port)

    def decide_outbound(self, dst: Any, proto: Proto | None, port: int | None) -> Decision | None:
        if proto is None:
            return None
        me = Subject.from_identity(_identity(self.name))
        return POLICY.decide(me, Subject.from_identity(dst), proto, port)

    def peer_identity(self, name: str) -> VerifiedIdentity | None:
        return _identity(name)


def _fragments4(src: Any, dst: Any, dport: int, size: int, ident: int) -> list[bytes]:
    """A UDP datagram of ``size`` payload bytes as the kernel fragments it for a 1,280
    MTU: each with a virtio-net header (no offload)."""
    udp = struct.pack(">HHHH", 40000, dport, 8 + size, 0) + bytes(size)
    step = 1256  # a multiple of 8 that fits 1,280 with the 20-byte header
    out = []
    for off in range(0, len(udp), step):
        part = udp[off : off + step]
        more = 0x2000 if off + step < len(udp) else 0
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(part), ident, more | off // 8,
                         64, UDP, 0, src.packed, dst.packed)  # fmt: skip
        out.append(bytes(10) + ip + part)
    return out


def _fragments6(src: Any, dst: Any, dport: int, size: int, ident: int) -> list[bytes]:
    udp = struct.pack(">HHHH", 40000, dport, 8 + size, 0) + bytes(size)
    step = 1232  # 1,280 less the IPv6 and fragment headers
    out = []
    for off in range(0, len(udp), step):
        part = udp[off : off + step]
        more = 1 if off + step < len(udp) else 0
        frag = struct.pack(">BBHI", UDP, 0, (off // 8) << 3 | more, ident)
        ip = struct.pack(">IHBB16s16s", 6 << 28, 8 + len(part), 44, 64, src.packed, dst.packed)
        out.append(bytes(10) + ip + frag + part)
    return out


def _addresses(version: int, a: str, b: str) -> tuple[ipaddress._BaseAddress, ...]:
    fn = node_overlay_ipv4 if version == 4 else node_overlay_ipv6
    return fn(TD, a), fn(TD, b)


FRAGMENTS = {4: _fragments4, 6: _fragments6}


@pytest.mark.parametrize("version", [4, 6])
def test_every_fragment_of_an_allowed_datagram_is_delivered(version: int) -> None:
    host = _PolicyHost("a", ["a", "d"])
    plane, dev = _plane(host)
    d_addr, a_addr = _addresses(version, "d", "a")
    frags = FRAGMENTS[version](d_addr, a_addr, 5000, 4000, 0x1234)
    assert len(frags) == 4
    for f in frags:
        plane.inbound("d", _identity("d"), f)
    assert dev.written == frags, host.counters
    assert not any(k.startswith("policy_denied") for k in host.counters), host.counters


@pytest.mark.parametrize("version", [4, 6])
def test_no_fragment_of_a_denied_datagram_is_delivered(version: int) -> None:
    host = _PolicyHost("a", ["a", "d"])
    plane, dev = _plane(host)
    d_addr, a_addr = _addresses(version, "d", "a")
    for f in FRAGMENTS[version](d_addr, a_addr, 6000, 4000, 0x1234):
        plane.inbound("d", _identity("d"), f)
    # a later fragment of an allowed datagram, whose first fragment never came
    stray = FRAGMENTS[version](d_addr, a_addr, 5000, 4000, 0x9999)[1]
    plane.inbound("d", _identity("d"), stray)
    assert dev.written == []
    assert host.counters == {"policy_denied:default-deny": 1, "tun_fragment_unmatched": 4}


@pytest.mark.parametrize("version", [4, 6])
def test_a_later_fragment_follows_its_own_senders_first_fragment(version: int) -> None:
    # c's allowed datagram does not open the way for d's fragment of the same id
    host = _PolicyHost("a", ["a", "c", "d"])
    plane, dev = _plane(host)
    c_addr, a_addr = _addresses(version, "c", "a")
    d_addr, _ = _addresses(version, "d", "a")
    plane.inbound("c", _identity("c"), FRAGMENTS[version](c_addr, a_addr, 5000, 2000, 77)[0])
    plane.inbound("d", _identity("d"), FRAGMENTS[version](d_addr, a_addr, 5000, 2000, 77)[1])
    assert len(dev.written) == 1
    assert host.counters == {"tun_fragment_unmatched": 1}


@pytest.mark.parametrize("version", [4, 6])
def test_every_fragment_of_an_allowed_datagram_is_sent(version: int) -> None:
    host = _PolicyHost("a", ["a", "d"])
    plane, _ = _plane(host)
    a_addr, d_addr = _addresses(version, "a", "d")
    frags = FRAGMENTS[version](a_addr, d_addr, 5000, 4000, 0x4321)
    for f in frags:
        plane.outbound(f)
    assert host.sent == [("d", IP_PORT, f) for f in frags], host.counters
    # and a denied one is refused at the sender, all of it
    host.sent.clear()
    for f in FRAGMENTS[version](a_addr, d_addr, 6000, 4000, 0x4322):
        plane.outbound(f)
    assert host.sent == []
    assert host.counters == {"policy_denied_at_sender:default-deny": 1,
                             "tun_fragment_unmatched": 3}  # fmt: skip


@pytest.mark.parametrize("version", [4, 6])
def test_a_fragmented_reply_to_a_tracked_flow_is_delivered_whole(version: int) -> None:
    # a asked d on udp/7000, which no rule allows a to receive: the answer comes back
    # as a reply, in fragments (a large DNS answer, say)
    host = _PolicyHost("a", ["a", "d"])
    plane, dev = _plane(host)
    a_addr, d_addr = _addresses(version, "a", "d")
    ask = FRAGMENTS[version](a_addr, d_addr, 7000, 100, 1)[0]
    ask = ask[:10] + _unfragmented(version, ask[10:])
    host.decide_outbound = lambda *_: None  # type: ignore[method-assign]  # let it go
    plane.outbound(ask)
    assert len(host.sent) == 1
    answer = [_swap_ports(version, f) for f in FRAGMENTS[version](d_addr, a_addr, 40000, 3000, 55)]
    for f in answer:
        plane.inbound("d", _identity("d"), f)
    assert dev.written == answer, host.counters
    assert host.counters == {}


def _unfragmented(version: int, ip: bytes) -> bytes:
    """A one-fragment packet made whole: the fragment fields cleared."""
    if version == 4:
        return ip[:6] + b"\x00\x00" + ip[8:]
    frag = ip[40:48]
    return ip[:4] + (len(ip) - 48).to_bytes(2, "big") + frag[:1] + ip[7:40] + ip[48:]


def _swap_ports(version: int, pkt: bytes) -> bytes:
    """d's answer from port 7000 to a's 40000: the builders send from 40000 to dport."""
    l4 = 10 + (20 if version == 4 else 48)
    (sport, dport) = struct.unpack_from(">HH", pkt, l4)
    if (sport, dport) != (40000, 40000):
        return pkt  # a later fragment: no ports
    return pkt[:l4] + struct.pack(">HH", 7000, 40000) + pkt[l4 + 4 :]
