"""``node/tun.py`` on a real TUN device inside a namespace: the kernel's packets come out
as IPv6/IPv4 with the expected headers, the virtio-net header comes first when asked
for, written packets go in, closing removes the device, and TCP crosses a pair of TUNs
as super-packets when the header is carried along unchanged."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.netns.helpers import PYTHON, Lab, wait_for_line
from x0tta6bl4.node.tun import VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120), pytest.mark.usefixtures("tun_ok")]

PROBE = "tests.netns.tun_probe"
FLOWS = "tests.netns.flows"


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("vnet", [False, True], ids=["plain", "vnet_hdr"])
def test_kernel_packets_are_read_with_their_ip_headers(lab: Lab, vnet: bool) -> None:
    ns = lab.add("t")
    args = ["read", "--expect", "3", "--seconds", "10"] + (["--vnet"] if vnet else [])
    probe = ns.module_popen(PROBE, *args)
    ready = json.loads(wait_for_line(probe, 15))
    me, peer, peer_v4 = ready["me"], ready["peer"], ready["peer_v4"]
    # Both pings are routed into the TUN (nobody answers them: the probe only reads).
    ns.ping(peer, count=1, timeout=0.3)
    ns.ping(peer_v4, count=1, timeout=0.3)
    ns.python(
        "import socket, sys\n"
        "s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
        "s.sendto(b'x0t-udp', (sys.argv[1], 4789))",
        peer,
    )
    out, err = probe.communicate(timeout=30)
    assert probe.returncode == 0, err
    records = _lines(out)
    packets = [r for r in records if "read" in r]
    # No noise: the device has no link-local address, so no RS or MLD of its own.
    assert all(not str(p.get("src", "")).startswith("fe80") for p in packets), packets

    echo6 = next(p for p in packets if p.get("proto") == 58)
    assert (echo6["version"], echo6["icmp_type"]) == (6, 128)
    assert (echo6["src"], echo6["dst"]) == (me, peer)
    echo4 = next(p for p in packets if p.get("proto") == 1)
    assert (echo4["version"], echo4["icmp_type"]) == (4, 8)
    assert (echo4["src"], echo4["dst"]) == ("198.18.200.1", peer_v4)
    udp6 = next(p for p in packets if p.get("proto") == 17)
    assert (udp6["dst"], udp6["dport"]) == (peer, 4789)

    for p in (echo6, echo4, udp6):
        assert p["len"] == p["total_length"]  # one whole IP packet per read
        assert p["read"] == p["len"] + (10 if vnet else 0)
        assert ("vnet" in p) is vnet
    if vnet:
        # Pings carry complete checksums; the UDP socket's checksum is left to the
        # reader (checksum offload): start at the UDP header, field 6 bytes in.
        assert echo4["vnet"] == {
            "flags": 0,
            "gso_type": 0,
            "gso_size": 0,
            "csum_start": 0,
            "csum_offset": 0,
        }
        assert udp6["vnet"]["flags"] & 1
        assert (udp6["vnet"]["csum_start"], udp6["vnet"]["csum_offset"]) == (40, 6)
        assert udp6["vnet"]["gso_type"] == 0
    assert records[-1] == {"written": True}


def test_configure_and_close_remove_the_device(lab: Lab) -> None:
    ns = lab.add("t")
    code = r"""
import json, subprocess
from x0tta6bl4.errors import TunError
from x0tta6bl4.node.tun import open_tun, overlay_ipv6, overlay_prefix
def show(name):
    r = subprocess.run(["ip", "-d", "-o", "link", "show", name], capture_output=True, text=True)
    return r.returncode, r.stdout
def addrs(name):
    return subprocess.run(["ip", "-o", "addr", "show", name], capture_output=True, text=True).stdout
me = overlay_ipv6("t")
tun = open_tun("x0tprobe", vnet_hdr=True)
tun.configure(mtu=1420, addresses=[f"{me}/128", "198.18.220.1/24"],
              routes=[overlay_prefix(), "198.18.221.0/24"], gso_max_size=62000)
tun.configure(mtu=1420, addresses=[f"{me}/128"], routes=[overlay_prefix()])  # idempotent
up = show(tun.name)
out = {"name": tun.name, "up": up[1], "addrs": addrs(tun.name),
       "routes6": subprocess.run(["ip", "-6", "route"], capture_output=True, text=True).stdout,
       "routes4": subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout,
       "me": str(me), "prefix": str(overlay_prefix())}
errors = []
for bad in (b"\x00" * 40, bytes(5), bytes([0, 7]) + bytes(8) + bytes(40)):
    try:
        tun.write(bad)
    except TunError as e:
        errors.append(str(e))
out["write_errors"] = errors
out["writev"] = tun.writev([bytes(10), bytes([0x45]) + bytes(19)])
tun.set_blocking(False)
try:
    tun.readinto(bytearray(100))
    out["empty_read"] = "data"
except BlockingIOError:
    out["empty_read"] = "would block"
tun.close()
tun.close()  # twice is fine
out["after"] = show("x0tprobe")[0]
print(json.dumps(out))
"""
    res = json.loads(ns.python(code).stdout.splitlines()[-1])  # after the log lines
    assert res["name"] == "x0tprobe"
    assert "mtu 1420" in res["up"]
    assert "gso_max_size 62000" in res["up"]
    assert "vnet_hdr on" in res["up"]
    assert ",UP," in res["up"] or "<UP," in res["up"] or ",UP>" in res["up"]
    assert f"{res['me']}/128" in res["addrs"]
    assert res["addrs"].count(res["me"]) == 1
    assert "198.18.220.1/24" in res["addrs"]
    assert "fe80" not in res["addrs"]
    assert f"{res['prefix']} dev x0tprobe" in res["routes6"]
    assert "198.18.221.0/24 dev x0tprobe" in res["routes4"]
    assert res["after"] != 0  # gone: `ip link show` fails
    # the kernel refuses a packet that is no IP, too short for the virtio header, or
    # carries an unknown GSO type: a typed error, not a bare OSError
    assert len(res["write_errors"]) == 3, res["write_errors"]
    assert all("Invalid argument" in e for e in res["write_errors"])
    assert res["empty_read"] == "would block"
    assert res["writev"] == 30  # header and packet in two pieces, one packet


@pytest.mark.parametrize("family", ["4", "6"])
def test_tcp_crosses_two_tuns_as_super_packets(lab: Lab, family: str) -> None:
    """The data path in miniature: read a super-packet with its virtio header on one side,
    write both unchanged on the other; the receiving kernel takes it whole."""
    x, y = lab.add("x"), lab.add("y")
    bridge = x.module_popen(PROBE, "bridge", y.name, "--seconds", "60")
    ready = json.loads(wait_for_line(bridge, 15))
    dst = ready["y"] if family == "4" else ready["y6"]
    server = y.module_popen(FLOWS, "tcp-recv", dst, "5201", "--timeout", "30")
    wait_for_line(server, 15)
    total = 64 << 20
    args = ["tcp-send", dst, "5201", "--bytes", str(total), "--seconds", "30"]
    sent = json.loads(x.run(PYTHON, "-m", FLOWS, *args, timeout=60).stdout)
    assert sent["bytes"] == total
    got = _lines(server.communicate(timeout=30)[0])[-1]
    assert got["bytes"] == total
    bridge.terminate()
    stats = _lines(bridge.communicate(timeout=15)[0])[-1]
    forward = stats["x_to_y"]
    gso = VIRTIO_NET_HDR_GSO_TCPV4 if family == "4" else VIRTIO_NET_HDR_GSO_TCPV6
    assert forward["write_errors"] == 0 and stats["y_to_x"]["write_errors"] == 0
    assert forward["gso_types"].get(str(gso), 0) > 0, forward
    assert forward["max_len"] > 1500 + 10  # larger than the TUN's MTU: a super-packet
    # far fewer reads than 1,500-byte packets would need
    assert forward["packets"] < total // 1500 // 4, forward
