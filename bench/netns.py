"""Raw baselines in network namespaces: what the machine moves *without* the mesh, the
ceiling the node agent's data path is measured against.

Two namespaces joined by one veth (MTU 1,500, 198.18.1.0/24):

* ``veth_ping_rtt_ms``: ICMP echo round trip, median.
* ``veth_tcp_mbit_s``: one TCP stream A -> B, iperf3 when installed, else the bounded
  Python sender/receiver of ``tests/netns/flows.py`` (the note says which).
* ``veth_tcp_python_mbit_s``: the same with the Python pair (what one Python process
  moves through a socket at all).
* ``veth_udp_gso_mbit_s`` / ``veth_udp_sendto_mbit_s``: 1,454-byte UDP datagrams from
  Python, 45 per ``sendmsg`` with UDP GSO (``node/udpfast.py``) or one ``sendto`` each,
  received with GRO; the receiver's goodput.

And across a pair of TUN devices with IFF_VNET_HDR + TSO, bridged by a Python process
that copies each super-packet with its virtio header (``tests/netns/tun_probe.py``, no
sealing, no UDP):

* ``tun_bridge_tcp_mbit_s``: one TCP stream through that bridge.

Needs root and ``ip netns``; without them the suite records why and has no figures.
Every flow is bounded (3 s, 1 s with ``--quick``) and the namespaces are removed after.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from typing import Any

from tests.netns.helpers import (
    PYTHON,
    Lab,
    Netns,
    pair,
    unavailable_reason,
    wait_for_line,
)

from bench.report import Suite

PORT = 5201
FLOWS = "tests.netns.flows"
SEGMENT = 1454  # 1,500 - 20 (IPv4) - 8 (UDP) - 18 of mesh framing, as the agent cuts
BATCH = 45  # 45 x 1,454 = 65,430 <= 65,507: one GSO send


def _json_tail(text: str) -> dict[str, Any]:
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            parsed: dict[str, Any] = json.loads(line)
            return parsed
    raise ValueError(f"no JSON result in {text[-500:]!r}")


def _wait_listening(ns: Netns, port: int, proto: str = "t", timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = ns.run("ss", f"-Hln{proto}", f"sport = :{port}", check=False).stdout
        if out.strip():
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} in {ns.short}")


def _iperf3(src: Netns, dst: Netns, addr: str, seconds: float) -> dict[str, Any]:
    server = dst.popen("iperf3", "-s", "-1", "-B", addr, "-p", str(PORT))
    _wait_listening(dst, PORT)
    done = src.run(
        "iperf3", "-c", addr, "-p", str(PORT), "-t", str(seconds), "-J",
        timeout=seconds + 30,
    )  # fmt: skip
    server.wait(10)
    end = json.loads(done.stdout)["end"]
    return {
        "mbit_s": end["sum_received"]["bits_per_second"] / 1e6,
        "retransmits": end["sum_sent"].get("retransmits", 0),
        "tool": "iperf3",
    }


def _python_tcp(src: Netns, dst: Netns, addr: str, seconds: float) -> dict[str, Any]:
    server = dst.module_popen(FLOWS, "tcp-recv", addr, str(PORT), "--timeout", str(seconds + 30))
    wait_for_line(server, 15)
    src.run(PYTHON, "-m", FLOWS, "tcp-send", addr, str(PORT), "--seconds", str(seconds),
            timeout=seconds + 30)  # fmt: skip
    result = _json_tail(server.communicate(timeout=30)[0])
    return result | {"tool": "python"}


def _tcp(src: Netns, dst: Netns, addr: str, seconds: float) -> dict[str, Any]:
    if shutil.which("iperf3"):
        return _iperf3(src, dst, addr, seconds)
    return _python_tcp(src, dst, addr, seconds)


def _udp(src: Netns, dst: Netns, addr: str, seconds: float, gso: bool) -> dict[str, Any]:
    receiver = dst.module_popen(FLOWS, "udp-recv", addr, str(PORT), "--gro",
                                "--idle", "1.0", "--timeout", str(seconds + 30))  # fmt: skip
    listening = json.loads(wait_for_line(receiver, 15))
    args = ["udp-send", addr, str(PORT), "--segment", str(SEGMENT), "--batch", str(BATCH)]
    args += ["--seconds", str(seconds)] + ([] if gso else ["--plain"])
    sent = _json_tail(src.run(PYTHON, "-m", FLOWS, *args, timeout=seconds + 30).stdout)
    got = _json_tail(receiver.communicate(timeout=30)[0])
    return {
        "mbit_s": got["mbit_s"],
        "datagrams_per_s": got["datagrams"] / got["seconds"] if got["seconds"] else 0.0,
        "received": got["datagrams"],
        "sent": sent["datagrams"],
        "loss": 1 - got["datagrams"] / sent["datagrams"] if sent["datagrams"] else 0.0,
        "receive_calls": got["calls"],
        "sender_gso": sent["gso"],
        "receiver_gro": listening["gro"],
        "sender_mbit_s": sent["mbit_s"],
    }


def _ping(src: Netns, addr: str, count: int) -> dict[str, Any]:
    res = src.ping(addr, count=count, timeout=1.0, interval=0.05)
    rtts = sorted(res.rtts_ms)
    if not rtts:
        raise RuntimeError(f"no ping answered from {addr}")
    return {
        "median_ms": statistics.median(rtts),
        "min_ms": rtts[0],
        "max_ms": rtts[-1],
        "sent": res.sent,
        "received": res.received,
    }


def _tun_bridge(lab: Lab, seconds: float) -> dict[str, Any]:
    x, y = lab.add("x"), lab.add("y")
    bridge = x.module_popen("tests.netns.tun_probe", "bridge", y.name,
                            "--seconds", str(seconds + 60))  # fmt: skip
    ready = json.loads(wait_for_line(bridge, 15))
    result = _tcp(x, y, ready["y"], seconds)
    bridge.terminate()
    stats = _json_tail(bridge.communicate(timeout=15)[0])["x_to_y"]
    reads = max(stats["packets"], 1)
    return result | {"bridge_reads": stats["packets"], "avg_read_bytes": stats["bytes"] / reads}


def run(quick: bool = False) -> Suite:
    suite = Suite("netns")
    reason = unavailable_reason()
    if reason is not None:
        print(f"  skipped: {reason}", flush=True)
        suite.details["skipped"] = reason
        return suite
    seconds = 1.0 if quick else 3.0
    suite.details["flow_seconds"] = seconds
    suite.details["iperf3"] = shutil.which("iperf3") is not None
    with Lab() as lab:
        a, b, link = pair(lab)
        addr = str(link.b.ip)
        print("  ... ping", flush=True)
        ping = _ping(a, addr, 20 if quick else 100)
        suite.details["ping"] = ping
        suite.add(
            "veth_ping_rtt_ms",
            "ping round trip over one veth (median)",
            ping["median_ms"],
            "ms",
            f"min {ping['min_ms']:.3f}, max {ping['max_ms']:.3f}, {ping['received']} echoes",
        )
        print("  ... TCP", flush=True)
        tcp = _tcp(a, b, addr, seconds)
        suite.details["tcp"] = tcp
        note = f"{tcp['tool']}, one stream, {seconds:g} s"
        if "retransmits" in tcp:
            note += f", {tcp['retransmits']} retransmits"
        suite.add("veth_tcp_mbit_s", "TCP over one veth, MTU 1,500", tcp["mbit_s"], "Mbit/s", note)
        if tcp["tool"] != "python":
            py = _python_tcp(a, b, addr, seconds)
            suite.details["tcp_python"] = py
            suite.add(
                "veth_tcp_python_mbit_s",
                "TCP over one veth, Python sender and receiver (1 MiB sendall / recv_into)",
                py["mbit_s"],
                "Mbit/s",
            )
        for gso in (True, False):
            print(f"  ... UDP {'GSO' if gso else 'sendto'}", flush=True)
            udp = _udp(a, b, addr, seconds, gso)
            suite.details["udp_gso" if gso else "udp_sendto"] = udp
            how = f"{BATCH} per sendmsg (UDP GSO)" if gso else "one sendto each"
            suite.add(
                "veth_udp_gso_mbit_s" if gso else "veth_udp_sendto_mbit_s",
                f"UDP from Python, {SEGMENT}-byte datagrams, {how}, GRO receiver: goodput",
                udp["mbit_s"],
                "Mbit/s",
                f"{udp['datagrams_per_s']:,.0f} datagrams/s received, loss {udp['loss']:.1%}",
            )
    with Lab() as lab:
        print("  ... TCP through a Python TUN bridge", flush=True)
        tun = _tun_bridge(lab, seconds)
        suite.details["tun_bridge"] = tun
        suite.add(
            "tun_bridge_tcp_mbit_s",
            "TCP through two TUNs (IFF_VNET_HDR + TSO) bridged by Python, no sealing",
            tun["mbit_s"],
            "Mbit/s",
            f"{tun['tool']}, {tun['avg_read_bytes']:,.0f} B per read",
        )
    return suite
