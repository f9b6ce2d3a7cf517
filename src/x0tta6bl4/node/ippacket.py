"""Just enough IP parsing for the overlay: a packet's flow (addresses, protocol, ports)
for routing and policy, and a TCP reset for a denied connection. Every read is
bounds-checked; a packet too short or malformed for its header gives ``None``.
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from typing import Final, NamedTuple

from x0tta6bl4.policy import Proto

IPPROTO_ICMP: Final = 1
IPPROTO_TCP: Final = 6
IPPROTO_UDP: Final = 17
IPPROTO_ICMPV6: Final = 58
TCP_FIN: Final = 0x01
TCP_SYN: Final = 0x02
TCP_RST: Final = 0x04
TCP_ACK: Final = 0x10

IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address

# A packet's addresses are a handful of peers' over and over: one address object per
# distinct address, not two new ones per packet (6.6 us of a parse was building them).
# Bounded, so a host sending to many addresses costs no more than 2 x 4,096 objects.
_ipv4 = functools.lru_cache(maxsize=4096)(ipaddress.IPv4Address)
_ipv6 = functools.lru_cache(maxsize=4096)(ipaddress.IPv6Address)


class Flow(NamedTuple):
    """A packet's flow. A named tuple, not a frozen dataclass: one is built per packet,
    and a frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``."""

    version: int
    src: IPAddr
    dst: IPAddr
    proto: Proto | None  # None: a protocol the policy has no word for
    ip_proto: int
    sport: int | None  # TCP/UDP ports; the echo identifier for ICMP echo
    dport: int | None
    l4: int  # offset of the transport header
    frag_id: int | None = None  # a fragment's identification; None: a whole packet
    frag_later: bool = False  # a fragment after the first: no transport header, no ports

    def fragment_key(self) -> tuple[int, IPAddr, IPAddr, int | None]:
        """What pairs the fragments of one packet: its addresses and identification
        (unique per pair of addresses for IPv6, RFC 8200; for IPv4 a collision across
        protocols could pair a stray fragment, which no host can reassemble without its
        own first one)."""
        return (self.version, self.src, self.dst, self.frag_id)

    def reverse_key(self) -> tuple[int, IPAddr, IPAddr, int | None, int | None]:
        """The key of the reply direction, as ``key()`` of a reply would give it."""
        return (self.ip_proto, self.dst, self.src, self.dport, self.sport)

    def key(self) -> tuple[int, IPAddr, IPAddr, int | None, int | None]:
        return (self.ip_proto, self.src, self.dst, self.sport, self.dport)


def _ports(pkt: bytes | memoryview, l4: int, ip_proto: int) -> tuple[int | None, int | None]:
    if ip_proto in (IPPROTO_TCP, IPPROTO_UDP) and len(pkt) >= l4 + 4:
        sport, dport = struct.unpack_from(">HH", pkt, l4)
        return sport, dport
    if ip_proto in (IPPROTO_ICMP, IPPROTO_ICMPV6) and len(pkt) >= l4 + 6:
        # echo request/reply: the identifier stands in for both ports
        icmp_type = pkt[l4]
        if icmp_type in (0, 8, 128, 129):
            (ident,) = struct.unpack_from(">H", pkt, l4 + 4)
            return ident, ident
    return None, None


# IPv6 extension headers walked to find the transport header: hop-by-hop options,
# routing, destination options (length in 8-byte units after the first 8) and the
# authentication header (in 4-byte units after the first 8); the fragment header is 8.
_IPV6_HOP_BY_HOP: Final = 0
_IPV6_ROUTING: Final = 43
_IPV6_FRAGMENT: Final = 44
_IPV6_AH: Final = 51
_IPV6_DEST_OPTS: Final = 60
_IPV6_EXT_8: Final = frozenset((_IPV6_HOP_BY_HOP, _IPV6_ROUTING, _IPV6_DEST_OPTS))
MAX_IPV6_EXT_HEADERS: Final = 8
"""Longer chains are refused as malformed: no real stack sends them, and the walk stays
bounded whatever a packet claims."""

_PROTO: Final = {
    IPPROTO_TCP: Proto.TCP,
    IPPROTO_UDP: Proto.UDP,
    IPPROTO_ICMP: Proto.ICMP,
    IPPROTO_ICMPV6: Proto.ICMP,
}


def parse_flow(pkt: bytes | memoryview) -> Flow | None:
    n = len(pkt)
    if n < 1:
        return None
    version = pkt[0] >> 4
    if version == 4:
        if n < 20:
            return None
        ihl = (pkt[0] & 0x0F) * 4
        if ihl < 20 or n < ihl:
            return None
        ip_proto = pkt[9]
        src: IPAddr = _ipv4(bytes(pkt[12:16]))
        dst: IPAddr = _ipv4(bytes(pkt[16:20]))
        l4 = ihl
        if struct.unpack_from(">H", pkt, 6)[0] & 0x1FFF:  # a later fragment: no ports
            frag_id = struct.unpack_from(">H", pkt, 4)[0]
            return Flow(4, src, dst, _PROTO.get(ip_proto), ip_proto, None, None, l4, frag_id, True)
        if struct.unpack_from(">H", pkt, 6)[0] & 0x2000:  # the first of several
            sport, dport = _ports(pkt, l4, ip_proto)
            frag_id = struct.unpack_from(">H", pkt, 4)[0]
            return Flow(4, src, dst, _PROTO.get(ip_proto), ip_proto, sport, dport, l4, frag_id)
    elif version == 6:
        if n < 40:
            return None
        ip_proto = pkt[6]
        src = _ipv6(bytes(pkt[8:24]))
        dst = _ipv6(bytes(pkt[24:40]))
        l4 = 40
        if ip_proto in _IPV6_EXT_8 or ip_proto in (_IPV6_FRAGMENT, _IPV6_AH):
            return _ipv6_extended(pkt, src, dst, ip_proto)
    else:
        return None
    sport, dport = _ports(pkt, l4, ip_proto)
    return Flow(version, src, dst, _PROTO.get(ip_proto), ip_proto, sport, dport, l4)


def _ipv6_extended(pkt: bytes | memoryview, src: IPAddr, dst: IPAddr, nh: int) -> Flow | None:
    """An IPv6 packet whose first next header is an extension header: walk the chain
    (bounded, every length checked) to the transport header, or to a fragment header
    that says the transport header is in another fragment."""
    n, at = len(pkt), 40
    frag_id: int | None = None
    for _ in range(MAX_IPV6_EXT_HEADERS):
        if nh in _IPV6_EXT_8 or nh == _IPV6_AH:
            if n < at + 2:
                return None
            unit, extra = (4, 2) if nh == _IPV6_AH else (8, 1)
            nh, size = pkt[at], (pkt[at + 1] + extra) * unit
        elif nh == _IPV6_FRAGMENT:
            if n < at + 8:
                return None
            nh = pkt[at]
            offset_flags, frag_id = struct.unpack_from(">HI", pkt, at + 2)
            size = 8
            if offset_flags & 0xFFF8:  # a later fragment: what follows is payload
                return Flow(6, src, dst, _PROTO.get(nh), nh, None, None, at + size, frag_id, True)
        else:
            sport, dport = _ports(pkt, at, nh)
            return Flow(6, src, dst, _PROTO.get(nh), nh, sport, dport, at, frag_id)
        if n < at + size:
            return None
        at += size
    return None


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f">{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def tcp_reset_for(pkt: bytes | memoryview, flow: Flow) -> bytes | None:
    """The RST a closed port would send back for ``pkt`` (RFC 9293 §3.10.7.1), or None
    when ``pkt`` is no TCP segment or is itself a reset."""
    l4 = flow.l4
    # no ports: a later IPv4 fragment, whose bytes at l4 are payload, not a TCP header
    if flow.ip_proto != IPPROTO_TCP or flow.sport is None or len(pkt) < l4 + 20:
        return None
    sport, dport, seq, ack, off_flags = struct.unpack_from(">HHIIH", pkt, l4)
    flags = off_flags & 0x3F
    if flags & TCP_RST:
        return None
    data_off = (off_flags >> 12) * 4
    seg_len = max(0, len(pkt) - l4 - data_off) + (1 if flags & TCP_SYN else 0)
    seg_len += 1 if flags & TCP_FIN else 0
    if flags & TCP_ACK:
        r_seq, r_ack, r_flags = ack, 0, TCP_RST
    else:
        r_seq, r_ack, r_flags = 0, (seq + seg_len) & 0xFFFFFFFF, TCP_RST | TCP_ACK
    tcp = struct.pack(">HHIIHHHH", dport, sport, r_seq, r_ack, (5 << 12) | r_flags, 0, 0, 0)
    src, dst = flow.dst.packed, flow.src.packed  # the reply goes back
    if flow.version == 4:
        pseudo = src + dst + struct.pack(">BBH", 0, IPPROTO_TCP, len(tcp))
        tcp = tcp[:16] + struct.pack(">H", _checksum(pseudo + tcp)) + tcp[18:]
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, src, dst)
        ip = ip[:10] + struct.pack(">H", _checksum(ip)) + ip[12:]
        return ip + tcp
    pseudo = src + dst + struct.pack(">IxxxB", len(tcp), IPPROTO_TCP)
    tcp = tcp[:16] + struct.pack(">H", _checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack(">IHBB16s16s", 6 << 28, len(tcp), IPPROTO_TCP, 64, src, dst)
    return ip + tcp


# -- redundant TCP acknowledgements ------------------------------------------------------

_TCPOPT_EOL: Final = 0
_TCPOPT_NOP: Final = 1
_TCPOPT_TIMESTAMP: Final = 8
_TS_LEN: Final = 10


def _plain_options(opts: bytes | memoryview) -> bool:
    """Only padding and a timestamp: no SACK blocks, nothing else a receiver must see."""
    i, n = 0, len(opts)
    while i < n:
        kind = opts[i]
        if kind == _TCPOPT_EOL:
            return True
        if kind == _TCPOPT_NOP:
            i += 1
            continue
        if kind != _TCPOPT_TIMESTAMP or i + 1 >= n or opts[i + 1] != _TS_LEN:
            return False
        i += _TS_LEN
    return i == n


def pure_ack(pkt: bytes | memoryview) -> tuple[bytes, int] | None:
    """``(connection, ack number)`` when ``pkt`` is a bare TCP acknowledgement: no
    payload, the ACK flag alone (no SYN, FIN, RST, PSH, URG, ECE or CWR) and no option
    but a timestamp. ``connection`` is the addresses and ports as bytes. None for
    anything else, including packets too short or malformed to tell."""
    n = len(pkt)
    if n < 1:
        return None
    version = pkt[0] >> 4
    if version == 4:
        if n < 20 or pkt[9] != IPPROTO_TCP:
            return None
        ihl = (pkt[0] & 0x0F) * 4
        total, frag = struct.unpack_from(">H2xH", pkt, 2)
        if ihl < 20 or frag & 0x3FFF or total > n:  # a fragment, or cut short
            return None
        addrs, l4 = bytes(pkt[12:20]), ihl
    elif version == 6:
        if n < 40 or pkt[6] != IPPROTO_TCP:  # extension headers: not worth reading
            return None
        (payload_len,) = struct.unpack_from(">H", pkt, 4)
        total = 40 + payload_len
        if total > n:
            return None
        addrs, l4 = bytes(pkt[8:40]), 40
    else:
        return None
    if total < l4 + 20:
        return None
    ports = bytes(pkt[l4 : l4 + 4])
    ack, off_flags = struct.unpack_from(">4xIH", pkt, l4 + 4)
    doff = (off_flags >> 12) * 4
    if (off_flags & 0xFF) != TCP_ACK or doff < 20 or l4 + doff != total:
        return None  # other flags, or payload after the header
    if doff > 20 and not _plain_options(pkt[l4 + 20 : l4 + doff]):
        return None
    return addrs + ports, ack


def thin_acks(pkts: list[bytes], offset: int = 0) -> tuple[list[bytes], int]:
    """``pkts`` (each IP packet at ``offset``) without the bare acknowledgements that a
    later one of the same connection in the list supersedes: a later bare ACK with a
    higher ack number (mod 2^32) says all they said. Duplicate ACKs (the same number,
    fast retransmit's signal), ACKs with SACK blocks or any flag but ACK, and everything
    else are kept, in order. Returns the packets kept and how many were dropped.

    The queue of a TUN device holds a burst of these whenever the agent has written a
    burst of data into it: one read batch, one ACK per connection to carry (as CAKE's
    ack-filter does in a queue)."""
    latest: dict[bytes, int] = {}
    keep = [True] * len(pkts)
    dropped = 0
    for i in range(len(pkts) - 1, -1, -1):
        found = pure_ack(memoryview(pkts[i])[offset:])
        if found is None:
            continue
        conn, ack = found
        later = latest.get(conn)
        if later is not None and 0 < ((later - ack) & 0xFFFFFFFF) < 0x80000000:
            keep[i] = False
            dropped += 1
        else:
            latest[conn] = ack
    if not dropped:
        return pkts, 0
    return [p for p, k in zip(pkts, keep, strict=True) if k], dropped


__all__ = ["Flow", "parse_flow", "pure_ack", "tcp_reset_for", "thin_acks"]
