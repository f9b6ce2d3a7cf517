"""IP parsing for the overlay and the TCP reset for a denied connection.

Packets are built here with struct and checksums are checked with an independent
RFC 1071 sum, so the resets are verified the way a receiving kernel would verify them.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from x0tta6bl4.node.ippacket import (
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    Flow,
    parse_flow,
    pure_ack,
    tcp_reset_for,
    thin_acks,
)
from x0tta6bl4.policy import Proto

TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58
PSH = 0x08

A4, B4 = "100.64.0.1", "100.64.0.2"
A6, B6 = "fd00:1::a", "fd00:1::b"


# -- an independent checksum and packet builders --------------------------------------


def _ones_sum(data: bytes) -> int:
    """The 16-bit one's complement sum (RFC 1071), written byte pair by byte pair."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _cksum(data: bytes) -> int:
    return 0xFFFF - _ones_sum(data)


def _pseudo(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + bytes([0, proto]) + length.to_bytes(2, "big")
    return src + dst + length.to_bytes(4, "big") + bytes([0, 0, 0, proto])


def _l4_verifies(src: bytes, dst: bytes, proto: int, seg: bytes) -> bool:
    """A receiver's check: the sum over pseudo-header and segment is all ones."""
    return _ones_sum(_pseudo(src, dst, proto, len(seg)) + seg) == 0xFFFF


def _tcp(
    sport: int,
    dport: int,
    seq: int = 1000,
    ack: int = 0,
    flags: int = TCP_SYN,
    payload: bytes = b"",
    options: bytes = b"",
) -> bytes:
    assert len(options) % 4 == 0
    doff = 5 + len(options) // 4
    return (
        struct.pack(">HHIIHHHH", sport, dport, seq, ack, (doff << 12) | flags, 65535, 0, 0)
        + options
        + payload
    )


def _udp(sport: int, dport: int, payload: bytes = b"x") -> bytes:
    return struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload


def _echo(icmp_type: int, ident: int, seq: int = 1) -> bytes:
    return struct.pack(">BBHHH", icmp_type, 0, 0, ident, seq) + b"ping"


def _with_l4_checksum(src: bytes, dst: bytes, proto: int, seg: bytes) -> bytes:
    at = {TCP: 16, UDP: 6, ICMP: 2, ICMPV6: 2}.get(proto)
    if at is None or len(seg) < at + 2:
        return seg
    cover = seg if proto == ICMP else _pseudo(src, dst, proto, len(seg)) + seg
    return seg[:at] + _cksum(cover).to_bytes(2, "big") + seg[at + 2 :]


def _ipv4(
    src: str,
    dst: str,
    proto: int,
    l4: bytes,
    *,
    frag: int = 0,
    mf: bool = False,
    options: bytes = b"",
) -> bytes:
    s, d = ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed
    if frag == 0:
        l4 = _with_l4_checksum(s, d, proto, l4)
    ihl = 5 + len(options) // 4
    flags_frag = (0x2000 if mf else 0) | frag
    hdr = struct.pack(
        ">BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(l4), 7, flags_frag, 64, proto, 0, s, d
    )
    hdr += options
    hdr = hdr[:10] + _cksum(hdr).to_bytes(2, "big") + hdr[12:]
    return hdr + l4


def _ipv6(src: str, dst: str, nh: int, l4: bytes) -> bytes:
    s, d = ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed
    l4 = _with_l4_checksum(s, d, nh, l4)
    return struct.pack(">IHBB16s16s", 6 << 28, len(l4), nh, 64, s, d) + l4


def _ip(version: int, src: str, dst: str, proto: int, l4: bytes) -> bytes:
    return _ipv4(src, dst, proto, l4) if version == 4 else _ipv6(src, dst, proto, l4)


def test_builders_agree_with_a_known_checksum() -> None:
    # RFC 1071's worked example: 00 01 f2 03 f4 f5 f6 f7 sums to 0xddf2
    assert _ones_sum(bytes.fromhex("0001f203f4f5f6f7")) == 0xDDF2
    pkt = _ipv4(A4, B4, TCP, _tcp(40000, 80))
    assert _ones_sum(pkt[:20]) == 0xFFFF
    assert _l4_verifies(pkt[12:16], pkt[16:20], TCP, pkt[20:])


# -- parse_flow --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "src", "dst"),
    [(4, A4, B4), (6, A6, B6)],
)
@pytest.mark.parametrize(
    ("proto", "l4", "policy_proto", "ports"),
    [
        (TCP, _tcp(40000, 443), Proto.TCP, (40000, 443)),
        (UDP, _udp(5353, 53), Proto.UDP, (5353, 53)),
    ],
)
def test_tcp_and_udp_flows(
    version: int,
    src: str,
    dst: str,
    proto: int,
    l4: bytes,
    policy_proto: Proto,
    ports: tuple[int, int],
) -> None:
    pkt = _ip(version, src, dst, proto, l4)
    for data in (pkt, memoryview(pkt)):
        f = parse_flow(data)
        assert f is not None
        assert (f.version, str(f.src), str(f.dst)) == (version, src, dst)
        assert (f.proto, f.ip_proto, (f.sport, f.dport)) == (policy_proto, proto, ports)
        assert f.l4 == (20 if version == 4 else 40)


@pytest.mark.parametrize(
    ("version", "proto", "icmp_type"),
    [(4, ICMP, 8), (4, ICMP, 0), (6, ICMPV6, 128), (6, ICMPV6, 129)],
)
def test_echo_identifier_stands_for_both_ports(version: int, proto: int, icmp_type: int) -> None:
    src, dst = (A4, B4) if version == 4 else (A6, B6)
    f = parse_flow(_ip(version, src, dst, proto, _echo(icmp_type, ident=0xBEEF)))
    assert f is not None
    assert (f.proto, f.ip_proto, f.sport, f.dport) == (Proto.ICMP, proto, 0xBEEF, 0xBEEF)


@pytest.mark.parametrize(("version", "proto"), [(4, ICMP), (6, ICMPV6)])
def test_other_icmp_messages_have_no_ports(version: int, proto: int) -> None:
    src, dst = (A4, B4) if version == 4 else (A6, B6)
    unreachable = 3 if version == 4 else 1
    f = parse_flow(_ip(version, src, dst, proto, _echo(unreachable, ident=7)))
    assert f is not None
    assert (f.proto, f.sport, f.dport) == (Proto.ICMP, None, None)


def test_a_protocol_the_policy_cannot_name() -> None:
    f = parse_flow(_ipv4(A4, B4, 47, b"\x00" * 8))  # GRE
    assert f is not None
    assert (f.proto, f.ip_proto, f.sport, f.dport) == (None, 47, None, None)


def test_ipv4_options_move_the_transport_header() -> None:
    pkt = _ipv4(A4, B4, TCP, _tcp(1234, 22), options=b"\x01\x01\x01\x00")  # NOP NOP NOP EOL
    f = parse_flow(pkt)
    assert f is not None
    assert (f.l4, f.sport, f.dport) == (24, 1234, 22)


def test_ipv4_later_fragments_have_no_ports() -> None:
    seg = _tcp(1234, 22, payload=b"x" * 64)
    first = _ipv4(A4, B4, TCP, seg[:40], mf=True)
    later = _ipv4(A4, B4, TCP, seg[40:], frag=5)  # offset 40 bytes: payload, no header
    f1, f2 = parse_flow(first), parse_flow(later)
    assert f1 is not None and (f1.sport, f1.dport) == (1234, 22)  # first fragment: ports
    assert f2 is not None and (f2.sport, f2.dport) == (None, None)
    assert (f2.proto, str(f2.src), str(f2.dst)) == (Proto.TCP, A4, B4)


def _ipv6_ext(src: str, dst: str, chain: list[tuple[int, bytes]], nh: int, l4: bytes) -> bytes:
    """An IPv6 packet with extension headers: ``chain`` is (type, body) in order, each
    body padded to its header's 8-byte multiple; the last one's next header is ``nh``."""
    s, d = ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed
    types = [t for t, _ in chain] + [nh]
    ext = b""
    for i, (_, body) in enumerate(chain):
        ext += bytes([types[i + 1], (len(body) + 2) // 8 - 1]) + body
    return struct.pack(">IHBB16s16s", 6 << 28, len(ext) + len(l4), types[0], 64, s, d) + ext + l4


def _ipv6_fragment(
    src: str, dst: str, nh: int, ident: int, offset: int, more: bool, data: bytes
) -> bytes:
    s, d = ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed
    frag = struct.pack(">BBHI", nh, 0, (offset // 8) << 3 | int(more), ident)
    return struct.pack(">IHBB16s16s", 6 << 28, 8 + len(data), 44, 64, s, d) + frag + data


def test_ipv6_extension_headers_are_walked_to_the_transport_header() -> None:
    hop_by_hop = (0, bytes(6))  # Pad6: one 8-byte header
    dest_opts = (60, bytes(14))  # two 8-byte units
    pkt = _ipv6_ext(A6, B6, [hop_by_hop, dest_opts], TCP, _tcp(4321, 5432))
    f = parse_flow(pkt)
    assert f is not None
    assert (f.proto, f.ip_proto, f.sport, f.dport, f.l4) == (Proto.TCP, TCP, 4321, 5432, 64)
    assert f.frag_id is None and not f.frag_later
    # the reset for a denied connection is built from the real transport header
    rst = tcp_reset_for(pkt, f)
    assert rst is not None and struct.unpack_from(">HH", rst, 40) == (5432, 4321)


def test_ipv6_fragments_carry_their_id_and_the_first_its_ports() -> None:
    udp = _udp(4000, 5000, bytes(3000))
    first = _ipv6_fragment(A6, B6, UDP, 0xDEADBEEF, 0, True, udp[:1232])
    later = _ipv6_fragment(A6, B6, UDP, 0xDEADBEEF, 1232, False, udp[1232:])
    f1, f2 = parse_flow(first), parse_flow(later)
    assert f1 is not None and f2 is not None
    assert (f1.proto, f1.sport, f1.dport, f1.l4) == (Proto.UDP, 4000, 5000, 48)
    assert (f1.frag_id, f1.frag_later) == (0xDEADBEEF, False)
    # a later fragment: payload where the transport header would be, so no ports
    assert (f2.proto, f2.sport, f2.dport) == (Proto.UDP, None, None)
    assert (f2.frag_id, f2.frag_later) == (0xDEADBEEF, True)
    assert f1.fragment_key() == f2.fragment_key()
    other = parse_flow(_ipv6_fragment(A6, B6, UDP, 0xDEADBEF0, 1232, False, udp[1232:]))
    assert other is not None and other.fragment_key() != f1.fragment_key()


def test_ipv4_fragments_carry_their_id() -> None:
    seg = _udp(4000, 5000, bytes(64))
    first = parse_flow(_ipv4(A4, B4, UDP, seg[:40], mf=True))
    later = parse_flow(_ipv4(A4, B4, UDP, seg[40:], frag=5))
    whole = parse_flow(_ipv4(A4, B4, UDP, seg))
    assert first is not None and later is not None and whole is not None
    assert (first.frag_id, first.frag_later, first.dport) == (7, False, 5000)
    assert (later.frag_id, later.frag_later, later.dport) == (7, True, None)
    assert first.fragment_key() == later.fragment_key()
    assert (whole.frag_id, whole.frag_later) == (None, False)


@pytest.mark.parametrize(
    "pkt",
    [
        # a hop-by-hop header that claims more bytes than the packet holds
        _ipv6_ext(A6, B6, [(0, bytes(6))], TCP, b"")[:40] + bytes([6, 3]) + bytes(6),
        # a fragment header cut short
        _ipv6_fragment(A6, B6, UDP, 1, 0, True, b"")[:44],
        # a chain of nine extension headers: more than anyone sends
        _ipv6_ext(A6, B6, [(60, bytes(6))] * 9, UDP, _udp(1, 2)),
    ],
)
def test_malformed_ipv6_extension_chains_give_none(pkt: bytes) -> None:
    assert parse_flow(pkt) is None


@given(
    st.lists(
        st.tuples(
            st.sampled_from([0, 43, 44, 51, 60]), st.integers(0, 255), st.binary(max_size=24)
        ),
        max_size=6,
    ),
    st.sampled_from([TCP, UDP, ICMPV6, 44, 0, 59]),
    st.binary(max_size=40),
)
def test_arbitrary_ipv6_extension_chains_never_raise(
    chain: list[tuple[int, int, bytes]], nh: int, tail: bytes
) -> None:
    s, d = ipaddress.IPv6Address(A6).packed, ipaddress.IPv6Address(B6).packed
    types = [t for t, _, _ in chain] + [nh]
    body = b"".join(bytes([types[i + 1], ln]) + raw for i, (_, ln, raw) in enumerate(chain))
    pkt = struct.pack(">IHBB16s16s", 6 << 28, len(body) + len(tail), types[0], 64, s, d)
    pkt += body + tail
    _check_parse(pkt)
    f = parse_flow(pkt)
    if f is not None:
        tcp_reset_for(pkt, f)
        assert f.frag_id is None or 0 <= f.frag_id <= 0xFFFFFFFF


@pytest.mark.parametrize(
    "pkt",
    [
        b"",
        b"\x45",
        b"\x45" + b"\x00" * 18,  # 19 bytes of an IPv4 header
        b"\x60" + b"\x00" * 38,  # 39 bytes of an IPv6 header
        b"\x44" + b"\x00" * 39,  # IHL 4 (16 bytes): impossible
        b"\x4f" + b"\x00" * 40,  # IHL 15 (60 bytes) in 41 bytes
        b"\x00" * 40,  # version 0
        b"\x50" + b"\x00" * 59,  # version 5
        b"\xff" * 60,  # version 15
    ],
)
def test_malformed_headers_give_none(pkt: bytes) -> None:
    assert parse_flow(pkt) is None


@pytest.mark.parametrize(
    "pkt",
    [
        _ipv4(A4, B4, TCP, _tcp(1, 2)),
        _ipv6(A6, B6, UDP, _udp(1, 2)),
        _ipv4(A4, B4, ICMP, _echo(8, 3)),
        _ipv6(A6, B6, ICMPV6, _echo(128, 3)),
    ],
)
def test_every_truncation_gives_none_or_a_portless_flow(pkt: bytes) -> None:
    full = parse_flow(pkt)
    assert full is not None and full.sport is not None
    for n in range(len(pkt)):
        f = parse_flow(pkt[:n])
        if n < full.l4:
            assert f is None, n
        else:  # the IP header is whole; the transport header is not (or is, and is read)
            assert f is not None
            assert (f.src, f.dst, f.ip_proto) == (full.src, full.dst, full.ip_proto)
            assert (f.sport, f.dport) in ((None, None), (full.sport, full.dport))


def _check_parse(data: bytes) -> None:
    f = parse_flow(data)
    if f is None:
        return
    assert f.version in (4, 6)
    assert f.l4 <= len(data)
    for p in (f.sport, f.dport):
        assert p is None or 0 <= p <= 0xFFFF
    assert isinstance(f.src, ipaddress.IPv4Address if f.version == 4 else ipaddress.IPv6Address)


@given(st.binary(max_size=120))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    _check_parse(data)


@given(
    st.sampled_from([0x45, 0x46, 0x4F, 0x40, 0x60, 0x6F]),
    st.sampled_from([TCP, UDP, ICMP, ICMPV6, 0, 44, 255]),
    st.binary(max_size=100),
)
def test_ip_shaped_garbage_never_raises(first: int, proto: int, rest: bytes) -> None:
    data = bytearray([first]) + bytearray(rest)
    at = 9 if first >> 4 == 4 else 6  # the protocol / next header byte
    if len(data) > at:
        data[at] = proto
    _check_parse(bytes(data))
    _check_parse(bytes(data).ljust(40, b"\x00"))
    f = parse_flow(bytes(data))
    if f is not None:
        tcp_reset_for(bytes(data), f)  # never raises either


# -- flow keys ---------------------------------------------------------------------------

_ports = st.integers(0, 0xFFFF)


@given(st.booleans(), _ports, _ports, st.sampled_from([TCP, UDP]))
def test_reverse_key_is_the_key_of_the_reply(v6: bool, sport: int, dport: int, proto: int) -> None:
    version, a, b = (6, A6, B6) if v6 else (4, A4, B4)
    mk = _tcp if proto == TCP else _udp
    out = parse_flow(_ip(version, a, b, proto, mk(sport, dport)))
    back = parse_flow(_ip(version, b, a, proto, mk(dport, sport)))
    assert out is not None and back is not None
    assert out.reverse_key() == back.key()
    assert back.reverse_key() == out.key()
    if sport != dport:
        assert out.key() != back.key()


def test_keys_tell_protocols_and_families_apart() -> None:
    tcp = parse_flow(_ipv4(A4, B4, TCP, _tcp(1000, 2000)))
    udp = parse_flow(_ipv4(A4, B4, UDP, _udp(1000, 2000)))
    assert tcp is not None and udp is not None
    assert tcp.key() != udp.key()
    echo = parse_flow(_ipv4(A4, B4, ICMP, _echo(8, 42)))
    reply = parse_flow(_ipv4(B4, A4, ICMP, _echo(0, 42)))
    assert echo is not None and reply is not None
    assert echo.reverse_key() == reply.key()


# -- tcp_reset_for -------------------------------------------------------------------------


def _parse_reset(rst: bytes, version: int) -> dict[str, int | bytes]:
    if version == 4:
        assert rst[0] == 0x45
        assert _ones_sum(rst[:20]) == 0xFFFF, "IPv4 header checksum"
        total, proto = struct.unpack_from(">H", rst, 2)[0], rst[9]
        assert total == len(rst) == 40 and proto == TCP
        src, dst, seg = rst[12:16], rst[16:20], rst[20:]
    else:
        assert rst[0] >> 4 == 6
        plen, nh = struct.unpack_from(">HB", rst, 4)
        assert plen == len(rst) - 40 == 20 and nh == TCP
        src, dst, seg = rst[8:24], rst[24:40], rst[40:]
    assert _l4_verifies(src, dst, TCP, seg), "TCP checksum"
    sport, dport, seq, ack, off_flags = struct.unpack_from(">HHIIH", seg)
    assert off_flags >> 12 == 5
    return {
        "src": src,
        "dst": dst,
        "sport": sport,
        "dport": dport,
        "seq": seq,
        "ack": ack,
        "flags": off_flags & 0x3F,
    }


@pytest.mark.parametrize(("version", "a", "b"), [(4, A4, B4), (6, A6, B6)])
def test_reset_for_a_syn_acknowledges_it(version: int, a: str, b: str) -> None:
    pkt = _ip(version, a, b, TCP, _tcp(40000, 5432, seq=123_456, flags=TCP_SYN))
    flow = parse_flow(pkt)
    assert flow is not None
    rst = tcp_reset_for(pkt, flow)
    assert rst is not None
    r = _parse_reset(rst, version)
    # goes back: addresses and ports swapped
    assert (r["src"], r["dst"]) == (flow.dst.packed, flow.src.packed)
    assert (r["sport"], r["dport"]) == (5432, 40000)
    # RFC 9293 3.10.7.1, no ACK: <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>; a SYN counts 1
    assert (r["seq"], r["ack"], r["flags"]) == (0, 123_457, TCP_RST | TCP_ACK)
    # and the reset is what the sender's connection tracking expects back
    back = parse_flow(rst)
    assert back is not None and back.key() == flow.reverse_key()


@pytest.mark.parametrize(("version", "a", "b"), [(4, A4, B4), (6, A6, B6)])
def test_reset_for_an_ack_takes_its_sequence_from_the_ack(version: int, a: str, b: str) -> None:
    seg = _tcp(40000, 22, seq=5, ack=987_654_321, flags=TCP_ACK | PSH, payload=b"x" * 100)
    pkt = _ip(version, a, b, TCP, seg)
    flow = parse_flow(pkt)
    assert flow is not None
    rst = tcp_reset_for(pkt, flow)
    assert rst is not None
    r = _parse_reset(rst, version)
    # RFC 9293, ACK set: <SEQ=SEG.ACK><CTL=RST>
    assert (r["seq"], r["ack"], r["flags"]) == (987_654_321, 0, TCP_RST)


@pytest.mark.parametrize(
    ("flags", "payload", "options", "expected_ack"),
    [
        (PSH, b"y" * 100, b"", 1100),  # data without ACK: seq + len
        (TCP_FIN, b"", b"", 1001),  # FIN counts 1
        (TCP_SYN | TCP_FIN, b"abc", b"", 1005),  # SYN + data + FIN
        (TCP_SYN, b"", b"\x02\x04\x05\xb4" + b"\x01" * 8, 1001),  # options are not data
        (0, b"", b"", 1000),  # an empty segment
    ],
)
def test_reset_acknowledges_the_whole_segment(
    flags: int, payload: bytes, options: bytes, expected_ack: int
) -> None:
    pkt = _ipv4(A4, B4, TCP, _tcp(1, 2, seq=1000, flags=flags, payload=payload, options=options))
    flow = parse_flow(pkt)
    assert flow is not None
    rst = tcp_reset_for(pkt, flow)
    assert rst is not None
    r = _parse_reset(rst, 4)
    assert (r["seq"], r["ack"], r["flags"]) == (0, expected_ack, TCP_RST | TCP_ACK)


def test_reset_ack_wraps_around_the_sequence_space() -> None:
    pkt = _ipv4(A4, B4, TCP, _tcp(1, 2, seq=0xFFFF_FFFF, flags=TCP_SYN, payload=b"ab"))
    flow = parse_flow(pkt)
    assert flow is not None
    rst = tcp_reset_for(pkt, flow)
    assert rst is not None
    assert _parse_reset(rst, 4)["ack"] == 2  # 0xFFFFFFFF + 3, modulo 2**32


def test_reset_for_a_packet_with_ip_options() -> None:
    pkt = _ipv4(A4, B4, TCP, _tcp(9, 10, seq=7), options=b"\x01\x01\x01\x00")
    flow = parse_flow(pkt)
    assert flow is not None
    rst = tcp_reset_for(pkt, flow)
    assert rst is not None
    r = _parse_reset(rst, 4)  # a plain 20-byte header back
    assert (r["sport"], r["dport"], r["ack"]) == (10, 9, 8)


@pytest.mark.parametrize(
    "pkt",
    [
        _ipv4(A4, B4, TCP, _tcp(1, 2, flags=TCP_RST)),  # never answer a reset
        _ipv4(A4, B4, TCP, _tcp(1, 2, flags=TCP_RST | TCP_ACK, ack=9)),
        _ipv6(A6, B6, TCP, _tcp(1, 2, flags=TCP_RST)),
        _ipv4(A4, B4, UDP, _udp(1, 2)),  # not TCP
        _ipv6(A6, B6, ICMPV6, _echo(128, 1)),
        _ipv4(A4, B4, TCP, _tcp(1, 2))[:39],  # a TCP header cut short
        _ipv4(A4, B4, TCP, _tcp(1, 2, payload=b"z" * 40)[20:], frag=5),  # a later fragment
    ],
    ids=["rst", "rst-ack", "rst-v6", "udp", "icmpv6", "short-tcp", "later-fragment"],
)
def test_no_reset_for(pkt: bytes) -> None:
    flow = parse_flow(pkt)
    assert flow is not None
    assert tcp_reset_for(pkt, flow) is None


@given(
    v6=st.booleans(),
    sport=_ports,
    dport=_ports,
    seq=st.integers(0, 0xFFFF_FFFF),
    ack=st.integers(0, 0xFFFF_FFFF),
    flags=st.integers(0, 0x3F),
    payload=st.binary(max_size=64),
    n_opt=st.integers(0, 10),
)
def test_every_reset_verifies_and_follows_rfc_9293(
    v6: bool,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    payload: bytes,
    n_opt: int,
) -> None:
    version, a, b = (6, A6, B6) if v6 else (4, A4, B4)
    options = b"\x01" * (4 * n_opt)
    pkt = _ip(version, a, b, TCP, _tcp(sport, dport, seq, ack, flags, payload, options))
    flow = parse_flow(pkt)
    assert flow is not None
    rst = tcp_reset_for(pkt, flow)
    if flags & TCP_RST:
        assert rst is None
        return
    assert rst is not None
    r = _parse_reset(rst, version)
    assert (r["src"], r["dst"], r["sport"], r["dport"]) == (
        flow.dst.packed,
        flow.src.packed,
        dport,
        sport,
    )
    if flags & TCP_ACK:
        assert (r["seq"], r["ack"], r["flags"]) == (ack, 0, TCP_RST)
    else:
        seg_len = len(payload) + bool(flags & TCP_SYN) + bool(flags & TCP_FIN)
        assert (r["seq"], r["ack"], r["flags"]) == (
            0,
            (seq + seg_len) % 2**32,
            TCP_RST | TCP_ACK,
        )


def test_flow_is_hashable_and_frozen() -> None:
    f = parse_flow(_ipv4(A4, B4, TCP, _tcp(1, 2)))
    assert isinstance(f, Flow)
    assert {f.key(): 1}[f.key()] == 1
    with pytest.raises(AttributeError):
        f.sport = 5  # type: ignore[misc]


# -- thinning redundant ACKs ----------------------------------------------------------------

TS_OPT = b"\x01\x01\x08\x0a" + struct.pack(">II", 7, 9)  # NOP NOP timestamp, as Linux sends
SACK_OPT = b"\x01\x01\x05\x0a" + struct.pack(">II", 5000, 6000)
ECE, CWR, URG = 0x40, 0x80, 0x20


def _ack(version: int, ack: int, *, sport: int = 40000, flags: int = TCP_ACK,
         payload: bytes = b"", options: bytes = TS_OPT) -> bytes:  # fmt: skip
    src, dst = (A4, B4) if version == 4 else (A6, B6)
    return _ip(version, src, dst, TCP, _tcp(sport, 5201, 1, ack, flags, payload, options))


@pytest.mark.parametrize("version", [4, 6])
def test_a_bare_ack_is_recognised_with_its_connection_and_number(version: int) -> None:
    found = pure_ack(_ack(version, 123456))
    assert found is not None and found[1] == 123456
    assert pure_ack(_ack(version, 1, options=b"")) is not None
    assert found[0] != pure_ack(_ack(version, 123456, sport=40001))[0]  # type: ignore[index]


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize(
    "kw",
    [
        {"payload": b"data"},
        {"flags": TCP_ACK | PSH},
        {"flags": TCP_ACK | TCP_FIN},
        {"flags": TCP_ACK | TCP_SYN},
        {"flags": TCP_ACK | TCP_RST},
        {"flags": TCP_ACK | ECE},  # congestion signals must reach the sender
        {"flags": TCP_ACK | CWR},
        {"flags": TCP_ACK | URG},
        {"flags": 0},
        {"options": SACK_OPT},  # what was lost: never thinned
    ],
)
def test_anything_but_a_bare_ack_is_not_one(version: int, kw: dict[str, object]) -> None:
    assert pure_ack(_ack(version, 99, **kw)) is None  # type: ignore[arg-type]


def test_fragments_other_protocols_and_short_packets_are_not_bare_acks() -> None:
    pkt = _ack(4, 5)
    assert pure_ack(_ipv4(A4, B4, TCP, _tcp(1, 2, 1, 5, TCP_ACK), mf=True)) is None
    assert pure_ack(_ipv4(A4, B4, UDP, _udp(1, 2))) is None
    assert pure_ack(pkt[:-1]) is None  # the IP length says more than there is
    assert pure_ack(pkt[:30]) is None
    assert pure_ack(b"") is None
    assert pure_ack(b"\x50" + bytes(60)) is None  # IP version 5


def test_a_burst_of_acks_leaves_the_last_of_each_connection_and_all_else() -> None:
    a1, a2, a3 = (_ack(6, n) for n in (1000, 2000, 3000))
    other = _ack(6, 500, sport=40001)
    dup1, dup2 = _ack(6, 3000), _ack(6, 3000)
    data = _ack(6, 2500, flags=TCP_ACK | PSH, payload=b"reply")
    sack = _ack(6, 2600, options=SACK_OPT)
    kept, dropped = thin_acks([a1, other, a2, data, sack, a3, dup1, dup2])
    # a1 and a2 say less than a3; the duplicates of 3000 are fast retransmit's signal
    assert kept == [other, data, sack, a3, dup1, dup2]
    assert dropped == 2
    assert thin_acks([a3, a1]) == ([a3, a1], 0)  # an older number later: both kept


def test_ack_numbers_compare_across_the_wrap() -> None:
    before, after = _ack(4, 0xFFFFFF00), _ack(4, 0x100)
    assert thin_acks([before, after]) == ([after], 1)
    assert thin_acks([after, before]) == ([after, before], 0)


def test_the_offset_skips_the_virtio_header() -> None:
    hdr = bytes(10)
    a1, a2 = hdr + _ack(6, 1), hdr + _ack(6, 2)
    assert thin_acks([a1, a2], 10) == ([a2], 1)


_KINDS = st.sampled_from(["bare", "sack", "data", "udp", "fin"])


@given(
    st.lists(
        st.tuples(_KINDS, st.integers(0, 1), st.integers(0, 5), st.sampled_from([4, 6])),
        max_size=30,
    )
)
def test_thinning_drops_only_bare_acks_a_later_one_supersedes(
    spec: list[tuple[str, int, int, int]],
) -> None:
    pkts: list[bytes] = []
    for kind, conn, ack, version in spec:
        sport = 40000 + conn
        if kind == "udp":
            src, dst = (A4, B4) if version == 4 else (A6, B6)
            pkts.append(_ip(version, src, dst, UDP, _udp(sport, 5201)))
            continue
        kw: dict[str, object] = {
            "bare": {},
            "sack": {"options": SACK_OPT},
            "data": {"payload": b"x"},
            "fin": {"flags": TCP_ACK | TCP_FIN},
        }[kind]
        pkts.append(_ack(version, ack * 1000, sport=sport, **kw))  # type: ignore[arg-type]
    kept, dropped = thin_acks(list(pkts))
    assert len(kept) + dropped == len(pkts)
    it = iter(range(len(pkts)))
    kept_at = [next(i for i in it if pkts[i] is p) for p in kept]  # a subsequence, in order
    gone = set(range(len(pkts))) - set(kept_at)
    for i in gone:
        conn, ack = pure_ack(pkts[i])  # type: ignore[misc]
        assert any(
            (f := pure_ack(pkts[j])) is not None and f[0] == conn and f[1] > ack
            for j in range(i + 1, len(pkts))
        )
    for i, p in enumerate(pkts):
        f = pure_ack(p)
        last_of_conn = f is not None and not any(
            (g := pure_ack(q)) is not None and g[0] == f[0] for q in pkts[i + 1 :]
        )
        if f is None or last_of_conn:
            assert i in kept_at


@given(st.lists(st.binary(max_size=80), max_size=8), st.integers(0, 12))
def test_thinning_takes_any_bytes(pkts: list[bytes], offset: int) -> None:
    kept, dropped = thin_acks(pkts, offset)
    assert len(kept) + dropped == len(pkts)
