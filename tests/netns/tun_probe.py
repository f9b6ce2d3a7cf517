"""Programs the netns tests (and ``bench/netns.py``) run *inside* a namespace with
``python -m tests.netns.tun_probe MODE ...``: they open TUN devices with
``x0tta6bl4.node.tun`` and print JSON lines on stdout.

``read [--vnet] [--seconds S] [--expect N]``
    Open and configure a TUN (overlay /128 + 198.18.200.1/24, the overlay /48 routed
    into it), print ``{"ready": name, ...}``, then print one JSON object per packet read
    (IP version, addresses, protocol, ICMP type, the virtio-net header) until N packets
    matched or S seconds passed. Then write one UDP packet into the TUN towards a socket
    of its own and report whether it arrived (``{"written": ...}``).

``bridge NS_Y [--seconds S]``
    Open a TUN with IFF_VNET_HDR + TSO in this namespace (198.18.210.1/24, overlay
    address of "x"), switch the main thread into namespace NS_Y and open another there
    (198.18.210.2/24, overlay address of "y"), then copy packets both ways, header and
    all, as the mesh will after opening its seal: TCP between the namespaces crosses
    the bridge as super-packets. Prints ``{"ready": ...}``, and the counters as JSON on
    SIGTERM or after S seconds.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
from ipaddress import IPv4Address, IPv6Address
from typing import Any

import structlog

from x0tta6bl4.errors import TunError, VnetHeaderError
from x0tta6bl4.node.tun import (
    NO_OFFLOAD_BYTES,
    READ_SIZE,
    VNET_HDR_LEN,
    TunDevice,
    open_tun,
    overlay_ipv6,
    overlay_prefix,
    parse_vnet_hdr,
)

PROBE_V4 = "198.18.200.1/24"
PEER_V4 = "198.18.200.2"
BRIDGE_X_V4 = "198.18.210.1"
BRIDGE_Y_V4 = "198.18.210.2"
CLONE_NEWNET = 0x40000000


def describe(packet: bytes | memoryview) -> dict[str, Any]:
    """The IP header fields the tests check (bounds-checked: a short packet says so)."""
    p = bytes(packet)
    out: dict[str, Any] = {"len": len(p)}
    if not p:
        return out
    version = p[0] >> 4
    out["version"] = version
    if version == 4 and len(p) >= 20:
        ihl = (p[0] & 15) * 4
        out |= {
            "proto": p[9],
            "src": str(IPv4Address(p[12:16])),
            "dst": str(IPv4Address(p[16:20])),
            "total_length": int.from_bytes(p[2:4], "big"),
        }
        payload = p[ihl:]
    elif version == 6 and len(p) >= 40:
        out |= {
            "proto": p[6],
            "src": str(IPv6Address(p[8:24])),
            "dst": str(IPv6Address(p[24:40])),
            "total_length": 40 + int.from_bytes(p[4:6], "big"),
        }
        payload = p[40:]
    else:
        return out
    if out["proto"] in (1, 58) and payload:
        out["icmp_type"] = payload[0]
    if out["proto"] in (6, 17) and len(payload) >= 4:
        out["dport"] = int.from_bytes(payload[2:4], "big")
    return out


def _udp_packet_v4(src: str, dst: str, sport: int, dport: int, data: bytes) -> bytes:
    """An IPv4/UDP packet with correct checksums (to write into a TUN)."""
    length = 8 + len(data)
    ip = bytearray(
        struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, 0, 0x4000, 64, 17, 0,
                    IPv4Address(src).packed, IPv4Address(dst).packed)
    )  # fmt: skip
    struct.pack_into("!H", ip, 10, _csum(bytes(ip)))
    pseudo = IPv4Address(src).packed + IPv4Address(dst).packed + struct.pack("!BBH", 0, 17, length)
    udp = bytearray(struct.pack("!HHHH", sport, dport, length, 0) + data)
    struct.pack_into("!H", udp, 6, _csum(pseudo + bytes(udp)) or 0xFFFF)
    return bytes(ip) + bytes(udp)


def _csum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    total = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while total >> 16:
        total = (total >> 16) + (total & 0xFFFF)
    return int(~total & 0xFFFF)


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# --- read ---------------------------------------------------------------------------------


def run_read(vnet: bool, seconds: float, expect: int) -> int:
    prefix = overlay_prefix()
    me, peer = overlay_ipv6("probe"), overlay_ipv6("peer")
    with open_tun(vnet_hdr=vnet, nonblocking=True) as tun:
        tun.configure(
            mtu=1400, addresses=[f"{me}/128", PROBE_V4], routes=[prefix], gso_max_size=62000
        )
        _emit({"ready": tun.name, "me": str(me), "peer": str(peer), "peer_v4": PEER_V4})
        matched = 0
        deadline = time.monotonic() + seconds
        while matched < expect and (left := deadline - time.monotonic()) > 0:
            if not select.select([tun], [], [], left)[0]:
                break
            raw = tun.read()
            record: dict[str, Any] = {"read": len(raw)}
            packet: bytes | memoryview = raw
            if vnet:
                try:
                    hdr = parse_vnet_hdr(raw)
                    record["vnet"] = {
                        "flags": hdr.flags,
                        "gso_type": hdr.gso_type,
                        "gso_size": hdr.gso_size,
                        "csum_start": hdr.csum_start,
                        "csum_offset": hdr.csum_offset,
                    }
                    packet = memoryview(raw)[VNET_HDR_LEN:]
                except VnetHeaderError as e:
                    record["vnet_error"] = str(e)
            record |= describe(packet)
            if record.get("dst") in (str(peer), PEER_V4):
                matched += 1
            _emit(record)
        _emit({"written": _write_back(tun, vnet)})
    return 0


def _write_back(tun: TunDevice, vnet: bool) -> bool:
    """Write a UDP packet 198.18.200.2 -> 198.18.200.1 into the TUN; True if our socket
    bound there receives it (the kernel took the packet as arriving on the device)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind((PROBE_V4.split("/")[0], 0))
        rx.settimeout(2.0)
        packet = _udp_packet_v4(PEER_V4, PROBE_V4.split("/")[0], 4242, rx.getsockname()[1],
                                b"x0t-written")  # fmt: skip
        tun.write(NO_OFFLOAD_BYTES + packet if vnet else packet)
        try:
            data, addr = rx.recvfrom(2048)
        except TimeoutError:
            return False
        return data == b"x0t-written" and addr == (PEER_V4, 4242)


# --- bridge -------------------------------------------------------------------------------


def _setns(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


class _Pump(threading.Thread):
    def __init__(self, src: TunDevice, dst: TunDevice, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.src, self.dst, self.stop = src, dst, stop
        self.packets = self.bytes = self.max_len = self.write_errors = 0
        self.gso: dict[int, int] = {}

    def run(self) -> None:
        buf = bytearray(READ_SIZE)
        view = memoryview(buf)
        poller = select.poll()
        poller.register(self.src.fd, select.POLLIN)
        src, dst, gso = self.src, self.dst, self.gso
        while not self.stop.is_set():
            try:
                n = src.readinto(buf)
            except BlockingIOError:
                poller.poll(100)
                continue
            self.packets += 1
            self.bytes += n
            self.max_len = max(self.max_len, n)
            kind = buf[1]
            gso[kind] = gso.get(kind, 0) + 1
            try:
                dst.write(view[:n])
            except (TunError, BlockingIOError):
                self.write_errors += 1

    def report(self) -> dict[str, Any]:
        return {
            "packets": self.packets,
            "bytes": self.bytes,
            "max_len": self.max_len,
            "write_errors": self.write_errors,
            "gso_types": {str(k): v for k, v in sorted(self.gso.items())},
        }


def run_bridge(ns_y: str, seconds: float) -> int:
    prefix = overlay_prefix()
    x6, y6 = overlay_ipv6("x"), overlay_ipv6("y")
    tx = open_tun(vnet_hdr=True, nonblocking=True)
    tx.configure(mtu=1500, addresses=[f"{BRIDGE_X_V4}/24", f"{x6}/128"], routes=[prefix])
    _setns(ns_y)  # this thread (and the threads it starts) now live in NS_Y
    ty = open_tun(vnet_hdr=True, nonblocking=True)
    ty.configure(mtu=1500, addresses=[f"{BRIDGE_Y_V4}/24", f"{y6}/128"], routes=[prefix])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    pumps = {"x_to_y": _Pump(tx, ty, stop), "y_to_x": _Pump(ty, tx, stop)}
    for p in pumps.values():
        p.start()
    _emit({"ready": [tx.name, ty.name], "x": BRIDGE_X_V4, "y": BRIDGE_Y_V4,
           "x6": str(x6), "y6": str(y6)})  # fmt: skip
    stop.wait(seconds)
    stop.set()
    for p in pumps.values():
        p.join(2.0)
    _emit({name: p.report() for name, p in pumps.items()})
    tx.close()
    ty.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.netns.tun_probe")
    sub = parser.add_subparsers(dest="mode", required=True)
    r = sub.add_parser("read")
    r.add_argument("--vnet", action="store_true")
    r.add_argument("--seconds", type=float, default=5.0)
    r.add_argument("--expect", type=int, default=2)
    b = sub.add_parser("bridge")
    b.add_argument("ns_y")
    b.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args(argv)
    # stdout carries the JSON results: the library's log lines go to stderr.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    if args.mode == "read":
        return run_read(args.vnet, min(args.seconds, 60.0), args.expect)
    return run_bridge(args.ns_y, min(args.seconds, 120.0))


if __name__ == "__main__":
    sys.exit(main())
