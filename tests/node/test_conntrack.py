"""Connection tracking for TUN mode: a flow this node let through admits its replies, not
more traffic in its own direction, until it idles out; the table is bounded (LRU)."""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import given
from hypothesis import strategies as st

from x0tta6bl4.node.dataplane import CONNTRACK_IDLE, CONNTRACK_MAX, ConnTrack
from x0tta6bl4.node.ippacket import Flow, parse_flow
from x0tta6bl4.policy import Proto

WEB = ipaddress.IPv6Address("fd00:1::a")
DB = ipaddress.IPv6Address("fd00:1::b")
OTHER = ipaddress.IPv6Address("fd00:1::c")


def _flow(src: ipaddress.IPv6Address, dst: ipaddress.IPv6Address, sport: int, dport: int,
          ip_proto: int = 6) -> Flow:  # fmt: skip
    proto = {6: Proto.TCP, 17: Proto.UDP, 58: Proto.ICMP}[ip_proto]
    return Flow(6, src, dst, proto, ip_proto, sport, dport, 40)


def test_defaults() -> None:
    ct = ConnTrack()
    assert (ct.max_entries, ct.idle) == (CONNTRACK_MAX, CONNTRACK_IDLE) == (65536, 180.0)
    assert len(ct) == 0


def test_an_allowed_flow_admits_its_replies() -> None:
    ct = ConnTrack()
    out = _flow(WEB, DB, 40000, 5432)
    assert not ct.admits(_flow(DB, WEB, 5432, 40000), 0.0)  # nothing noted yet
    ct.note(out, 1.0)
    assert ct.admits(_flow(DB, WEB, 5432, 40000), 1.5)
    assert len(ct) == 1


def test_not_its_own_direction_nor_a_neighbouring_flow() -> None:
    ct = ConnTrack()
    ct.note(_flow(WEB, DB, 40000, 5432), 0.0)
    assert not ct.admits(_flow(WEB, DB, 40000, 5432), 0.1)  # the same direction again
    assert not ct.admits(_flow(DB, WEB, 5432, 40001), 0.1)  # another client port
    assert not ct.admits(_flow(DB, WEB, 5433, 40000), 0.1)  # another server port
    assert not ct.admits(_flow(OTHER, WEB, 5432, 40000), 0.1)  # another host
    assert not ct.admits(_flow(DB, WEB, 5432, 40000, ip_proto=17), 0.1)  # UDP, not TCP
    assert ct.admits(_flow(DB, WEB, 5432, 40000), 0.1)


def test_parsed_packets_match_their_replies() -> None:
    def ipv6_udp(src: ipaddress.IPv6Address, dst: ipaddress.IPv6Address, sp: int, dp: int) -> bytes:
        udp = struct.pack(">HHHH", sp, dp, 9, 0) + b"q"
        return struct.pack(">IHBB16s16s", 6 << 28, len(udp), 17, 64, src.packed, dst.packed) + udp

    query = parse_flow(ipv6_udp(WEB, DB, 5353, 53))
    answer = parse_flow(ipv6_udp(DB, WEB, 53, 5353))
    assert query is not None and answer is not None
    ct = ConnTrack()
    ct.note(query, 0.0)
    assert ct.admits(answer, 0.0)
    assert not ct.admits(query, 0.0)


def test_idles_out_after_idle_seconds() -> None:
    ct = ConnTrack(idle=10.0)
    ct.note(_flow(WEB, DB, 1, 2), 100.0)
    reply = _flow(DB, WEB, 2, 1)
    assert ct.admits(reply, 110.0)  # exactly `idle` later: still in
    assert ct.admits(reply, 119.0)  # each reply refreshes the entry
    assert not ct.admits(reply, 129.5)  # 10.5 s of silence: gone
    assert not ct.admits(reply, 129.6)


def test_a_refreshed_flow_outlives_the_first_idle_period() -> None:
    ct = ConnTrack(idle=10.0)
    out = _flow(WEB, DB, 1, 2)
    reply = _flow(DB, WEB, 2, 1)
    ct.note(out, 0.0)
    for t in range(9, 100, 9):  # traffic every 9 s for 99 s
        assert ct.admits(reply, float(t)), t
    ct.note(out, 100.0)  # the outbound side refreshes it too
    assert ct.admits(reply, 109.0)


def test_noting_the_same_flow_again_does_not_grow_the_table() -> None:
    ct = ConnTrack()
    for t in range(50):
        ct.note(_flow(WEB, DB, 40000, 80), float(t))
    assert len(ct) == 1


def test_bounded_least_recently_used_goes_first() -> None:
    ct = ConnTrack(max_entries=3)
    a, b, c, d = (_flow(WEB, DB, port, 80) for port in (1001, 1002, 1003, 1004))
    for i, f in enumerate((a, b, c)):
        ct.note(f, float(i))
    assert ct.admits(_flow(DB, WEB, 80, 1001), 3.0)  # a is now the most recently used
    ct.note(d, 4.0)  # evicts b, the least recently used
    assert len(ct) == 3
    assert not ct.admits(_flow(DB, WEB, 80, 1002), 5.0)
    for port in (1001, 1003, 1004):
        assert ct.admits(_flow(DB, WEB, 80, port), 5.0), port


@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(0, 7), st.floats(0, 5, allow_nan=False)),
        max_size=80,
    ),
    st.integers(1, 5),
)
def test_against_a_simple_model(ops: list[tuple[bool, int, float]], max_entries: int) -> None:
    """Random note/admit sequences agree with a list-based LRU model, and the table never
    grows past max_entries."""
    ct = ConnTrack(max_entries=max_entries, idle=3.0)
    model: list[tuple[int, float]] = []  # (client port, last seen), oldest first
    now = 0.0
    for is_note, port, dt in ops:
        now += dt
        entry = next((e for e in model if e[0] == port), None)
        if is_note:
            if entry is not None:
                model.remove(entry)
            model.append((port, now))
            if len(model) > max_entries:
                model.pop(0)
            ct.note(_flow(WEB, DB, port, 80), now)
        else:
            expect = entry is not None and now - entry[1] <= 3.0
            if expect:
                assert entry is not None
                model.remove(entry)
                model.append((port, now))
            assert ct.admits(_flow(DB, WEB, 80, port), now) is expect
        assert len(ct) == len(model) <= max_entries
