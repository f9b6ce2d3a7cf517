"""The pure parts of ``node/tun.py``: overlay addresses and the virtio-net header. The
device itself is exercised inside namespaces (``tests/netns/test_tun.py``)."""

from __future__ import annotations

import shutil
import subprocess
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from x0tta6bl4.errors import DecodeError, IdentityError, TunError, VnetHeaderError
from x0tta6bl4.node import tun
from x0tta6bl4.node.tun import (
    NO_OFFLOAD_BYTES,
    VNET_HDR_LEN,
    VnetHdr,
    check_vnet_hdr,
    open_tun,
    overlay_ipv4,
    overlay_ipv6,
    overlay_prefix,
    parse_vnet_hdr,
    split_vnet,
)

ULA = IPv6Network("fd00::/8")

# --- overlay addresses --------------------------------------------------------------------


def test_overlay_prefix_is_a_stable_ula_48_per_trust_domain() -> None:
    p = overlay_prefix("x0tta6bl4.mesh")
    assert p.prefixlen == 48
    assert p.subnet_of(ULA)
    assert p == overlay_prefix("x0tta6bl4.mesh") == overlay_prefix()
    assert overlay_prefix("other.mesh") != p
    # pinned: every node of every version must compute the same prefix
    assert str(p) == "fdad:5a56:48eb::/48"


def test_overlay_address_is_stable_and_inside_its_trust_domain_prefix() -> None:
    sid = "spiffe://x0tta6bl4.mesh/node/alice"
    a = overlay_ipv6(sid)
    assert a == overlay_ipv6(sid)
    assert a in overlay_prefix("x0tta6bl4.mesh")
    assert a == overlay_ipv6("alice")  # a bare name means the default trust domain
    assert a != overlay_ipv6("bob")
    other = overlay_ipv6("spiffe://lab.example/node/alice")
    assert other in overlay_prefix("lab.example")
    assert other != a
    assert str(a) == "fdad:5a56:48eb:3044:801b:a58f:b930:2318"


def test_overlay_address_from_bytes_and_an_explicit_prefix() -> None:
    key = bytes(range(32))
    a = overlay_ipv6(key)
    assert a in overlay_prefix()
    prefix = IPv6Network("fd12:3456:789a::/48")
    b = overlay_ipv6(key, prefix)
    assert b in prefix
    assert int(b) & ((1 << 80) - 1) == int(a) & ((1 << 80) - 1)
    with pytest.raises(ValueError):
        overlay_ipv6(key, IPv6Network("fd12:3456:789a:1::/64"))


def test_overlay_address_rejects_a_bad_name() -> None:
    with pytest.raises(IdentityError):
        overlay_ipv6("Not A Name")
    with pytest.raises(IdentityError):
        overlay_ipv6("spiffe://UPPER/node/x")


@given(st.binary(min_size=0, max_size=64))
def test_overlay_addresses_never_use_the_subnet_router_anycast(ident: bytes) -> None:
    a = overlay_ipv6(ident)
    assert isinstance(a, IPv6Address)
    assert a in overlay_prefix()
    assert int(a) & 0xFFFF_FFFF_FFFF_FFFF != 0


def test_many_names_many_addresses() -> None:
    addrs = {overlay_ipv6(f"node-{i}") for i in range(2000)}
    assert len(addrs) == 2000


CGNAT = IPv4Network("100.64.0.0/10")


@given(st.from_regex(r"[a-z][a-z0-9-]{0,30}", fullmatch=True))
def test_overlay_ipv4_is_a_usable_cgnat_address(name: str) -> None:
    a = overlay_ipv4(f"spiffe://x0tta6bl4.mesh/node/{name}")
    assert isinstance(a, IPv4Address)
    assert a in CGNAT
    assert a not in (CGNAT.network_address, CGNAT.broadcast_address)


def test_overlay_ipv4_is_stable_and_differs_per_trust_domain() -> None:
    # Pinned: changing the label renumbers every node's IPv4 address.
    assert overlay_ipv4("spiffe://x0tta6bl4.mesh/node/a") == IPv4Address("100.99.89.87")
    assert overlay_ipv4("spiffe://other.mesh/node/a") != overlay_ipv4(
        "spiffe://x0tta6bl4.mesh/node/a"
    )
    addrs = {overlay_ipv4(f"spiffe://x0tta6bl4.mesh/node/n{i}") for i in range(500)}
    assert len(addrs) == 500  # 22 bits: no collision among 500 names (checked for these)


@pytest.mark.parametrize("bad", ["a", "node/a", "spiffe://"])
def test_overlay_ipv4_needs_a_node_spiffe_id(bad: str) -> None:
    with pytest.raises((ValueError, IdentityError)):
        overlay_ipv4(bad)


# --- the virtio-net header ----------------------------------------------------------------


def test_vnet_header_round_trip_and_layout() -> None:
    hdr = VnetHdr(flags=1, gso_type=tun.VIRTIO_NET_HDR_GSO_TCPV4, hdr_len=52, gso_size=1448,
                  csum_start=20, csum_offset=16)  # fmt: skip
    raw = hdr.pack()
    assert len(raw) == VNET_HDR_LEN
    assert raw == bytes([1, 1, 52, 0, 0xA8, 0x05, 20, 0, 16, 0])  # little-endian
    assert parse_vnet_hdr(raw) == hdr
    assert parse_vnet_hdr(b"\xff" * 3 + raw, offset=3) == hdr
    assert hdr.is_gso and hdr.needs_csum
    assert len(NO_OFFLOAD_BYTES) == 10 and not any(NO_OFFLOAD_BYTES)
    assert not parse_vnet_hdr(NO_OFFLOAD_BYTES).is_gso


@pytest.mark.parametrize("size", [0, 1, 9])
def test_a_short_vnet_header_is_rejected(size: int) -> None:
    with pytest.raises(VnetHeaderError):
        parse_vnet_hdr(bytes(size))
    with pytest.raises(DecodeError):  # VnetHeaderError is a DecodeError
        split_vnet(bytes(size))


def test_parse_rejects_a_negative_offset() -> None:
    with pytest.raises(VnetHeaderError):
        parse_vnet_hdr(bytes(20), offset=-1)


@pytest.mark.parametrize(
    ("hdr", "packet_len", "why"),
    [
        (VnetHdr(flags=0x10), 100, "unknown virtio-net flags"),
        (VnetHdr(gso_type=2), 100, "unknown GSO type"),
        (VnetHdr(), 0, "packet of 0 bytes"),
        (VnetHdr(), 70_000, "packet of 70000 bytes"),
        (VnetHdr(hdr_len=200), 100, "hdr_len"),
        (VnetHdr(flags=1, csum_start=90, csum_offset=16), 100, "checksum at"),
        (VnetHdr(flags=1, gso_type=1, csum_start=20, csum_offset=16), 100, "gso_size 0"),
        (VnetHdr(gso_type=4, gso_size=1400), 100, "without a partial checksum"),
    ],
)
def test_inconsistent_vnet_headers_are_rejected(hdr: VnetHdr, packet_len: int, why: str) -> None:
    with pytest.raises(VnetHeaderError, match=why):
        check_vnet_hdr(hdr, packet_len)


def test_consistent_vnet_headers_pass() -> None:
    check_vnet_hdr(VnetHdr(), 1)
    check_vnet_hdr(VnetHdr(flags=1, csum_start=40, csum_offset=6), 48)  # UDP over IPv6
    ecn_tso = VnetHdr(flags=1, gso_type=tun.VIRTIO_NET_HDR_GSO_TCPV6 | 0x80, hdr_len=72,
                      gso_size=1428, csum_start=40, csum_offset=16)  # fmt: skip
    check_vnet_hdr(ecn_tso, 64_000)
    hdr, view = split_vnet(ecn_tso.pack() + bytes(64_000))
    assert hdr == ecn_tso
    assert len(view) == 64_000


@given(st.binary(min_size=0, max_size=80))
def test_split_vnet_never_raises_anything_but_a_decode_error(data: bytes) -> None:
    try:
        hdr, view = split_vnet(data)
    except VnetHeaderError:
        return
    assert len(view) == len(data) - VNET_HDR_LEN
    assert hdr.pack() == data[:VNET_HDR_LEN]


# --- opening ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "x" * 16, "a/b", "a\0b"])
def test_open_tun_rejects_bad_names_before_touching_the_kernel(name: str) -> None:
    with pytest.raises(TunError, match="invalid interface name"):
        open_tun(name)


def test_offloads_need_the_virtio_header() -> None:
    with pytest.raises(TunError, match="vnet_hdr"):
        open_tun(offload=tun.TUN_F_CSUM)


def test_open_tun_without_the_device_is_a_typed_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tun, "TUN_PATH", "/nonexistent/x0t/tun")
    with pytest.raises(TunError, match="open /nonexistent"):
        open_tun()


def test_gso_max_size_falls_back_to_iproute2(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        return subprocess.CompletedProcess(argv, returncode, "", "RTNETLINK answers: nope")

    monkeypatch.setattr(shutil, "which", lambda tool: "/sbin/ip")
    monkeypatch.setattr(subprocess, "run", fake_run)
    device = tun.TunDevice(-1, "x0t7", vnet_hdr=True, offload=0)
    returncode = 0
    device._gso_max_size_fallback(62000, OSError("netlink refused"))
    assert calls == [["/sbin/ip", "link", "set", "dev", "x0t7", "gso_max_size", "62000"]]
    returncode = 2  # iproute2 refuses too: logged, not raised (the default size stays)
    device._gso_max_size_fallback(62000, OSError("netlink refused"))
    assert len(calls) == 2
    device._closed = True  # fd -1 was never open
