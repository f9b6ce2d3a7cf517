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

And through the overlay: four real agents (``x0t node run``, TUN mode, TUN MTU
:data:`TUN_MTU`, ``X0T_BENCH_TUN_MTU`` to change it; ``datagram_size`` :data:`DATAGRAM_SIZE`,
the veths' MTU less IPv6 and UDP headers, ``X0T_BENCH_DATAGRAM_SIZE``) in the namespace
diamond A-B, A-C, B-D, C-D over 1,500-byte veths, no IP forwarding
(``tests/netns/agents.py``):

* ``netns_first_packet_s``: from launching the four agents to the first UDP probe
  A -> D's overlay address answered (probes every 20 ms, ``tests/netns/probes.py``);
* ``overlay_ping_ms``: ping A -> D's overlay address, median of 20;
* ``overlay_tcp_mbit_s``: one TCP stream A -> D for 5 s (2 s with ``--quick``), iperf3
  when installed, else the Python pair; ``overlay_vs_veth_ratio`` = it over
  ``veth_tcp_mbit_s`` of the same run;
* ``overlay_udp_mbit_s``: one UDP flow A -> D (iperf3 -u, 1,200-byte datagrams, 1 Gbit/s
  offered, as long as the TCP test), what D received; the loss is in the note;
* ``overlay_cpu_pct_per_node``: each agent's CPU (utime + stime) over that test, % of
  one core, the busiest; ``agent_rss_mb``: VmRSS during it, the largest of A, D and the
  relay in use (idle and loaded values per node in the details);
* ``netns_failover_s``: UDP probes A -> D every 20 ms, A's link to the relay in use
  blackholed both ways; the outage is the largest gap in D's arrivals after the cut,
  median of :data:`FAILOVER_RUNS` cuts (each after the link is restored and the mesh
  has settled; the max is in the details).

The details also hold a py-spy profile (top functions) of A, the relay and D during a
second, unmeasured TCP transfer when py-spy is installed, and what the agents' and the
kernel's counters saw during the measured one. A failed overlay step is recorded in the
details and the suite goes on. :data:`TARGETS` are the goals; each figure's note says
whether it is met.

Needs root, ``ip netns`` and ``/dev/net/tun``; without them the suite records why and has
no figures. Every flow is bounded (3 s, 1 s with ``--quick``), the whole suite stays
under :data:`WALL_LIMIT` (steps that no longer fit are skipped and say so), and the
namespaces, agents and probes are removed after, also on failure.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Final

from tests.netns.agents import TRUST_DOMAIN, Agents, cpu_seconds, launch_all, rss_kb
from tests.netns.helpers import (
    PYTHON,
    Lab,
    Netns,
    NetnsCommandError,
    diamond,
    pair,
    unavailable_reason,
    wait_for_line,
)

from bench.report import Suite
from x0tta6bl4.node.dataplane import node_overlay_ipv6

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


def _iperf3_end(
    src: Netns, dst: Netns, addr: str, port: int, seconds: float, timeout: float, *args: str
) -> dict[str, Any]:
    """Run an iperf3 server in ``dst`` for one test and the client in ``src``; the JSON
    report's ``end`` section. Raises RuntimeError if iperf3 gave no result."""
    server = dst.popen("iperf3", "-s", "-1", "-B", addr, "-p", str(port))
    try:
        _wait_listening(dst, port)
        done = src.run(
            "iperf3", "-c", addr, "-p", str(port), *args, "-t", str(seconds), "-J",
            "--connect-timeout", "5000", timeout=seconds + timeout,
        )  # fmt: skip
        server.wait(10)
    finally:
        _stop(server)
    data = json.loads(done.stdout)
    end: dict[str, Any] = data.get("end", {})
    if not (end.get("sum_received") or end.get("sum")):  # iperf3 can exit 0 without one
        raise RuntimeError(f"iperf3 gave no result: {data.get('error', done.stdout[-300:])}")
    return end


def _iperf3(
    src: Netns, dst: Netns, addr: str, seconds: float, timeout: float = 30.0
) -> dict[str, Any]:
    end = _iperf3_end(src, dst, addr, PORT, seconds, timeout)
    if "sum_received" not in end:
        raise RuntimeError("iperf3 gave no receiver's result")
    return {
        "mbit_s": end["sum_received"]["bits_per_second"] / 1e6,
        "retransmits": end["sum_sent"].get("retransmits", 0),
        "tool": "iperf3",
    }


UDP_PORT = 5000  # the diamond's policy allows tcp/5000 (iperf3's control) and udp/5000
UDP_OFFERED = "1G"
UDP_LENGTH = 1200  # fits the TUN MTU of 1,280 with IPv6 and UDP headers: no fragments


def _iperf3_udp(src: Netns, dst: Netns, addr: str, seconds: float) -> dict[str, Any]:
    """iperf3 -u at :data:`UDP_OFFERED`: what arrived, and the loss the receiver saw."""
    end = _iperf3_end(src, dst, addr, UDP_PORT, seconds, 30.0,
                      "-u", "-b", UDP_OFFERED, "-l", str(UDP_LENGTH))  # fmt: skip
    got = end.get("sum_received") or end["sum"]
    sent = end.get("sum_sent") or end["sum"]
    return {
        "mbit_s": got["bits_per_second"] / 1e6 * (1 if "sum_received" in end else
                                                   1 - got.get("lost_percent", 0) / 100),
        "offered_mbit_s": sent["bits_per_second"] / 1e6,
        "lost_percent": got.get("lost_percent"),
        "jitter_ms": got.get("jitter_ms"),
    }  # fmt: skip


def _python_tcp(
    src: Netns, dst: Netns, addr: str, seconds: float, timeout: float = 30.0
) -> dict[str, Any]:
    server = dst.module_popen(
        FLOWS, "tcp-recv", addr, str(PORT), "--timeout", str(seconds + timeout)
    )
    try:
        wait_for_line(server, 15)
        src.run(PYTHON, "-m", FLOWS, "tcp-send", addr, str(PORT), "--seconds", str(seconds),
                timeout=seconds + timeout)  # fmt: skip
        result = _json_tail(server.communicate(timeout=timeout)[0])
    finally:
        _stop(server)
    return result | {"tool": "python"}


def _tcp(
    src: Netns, dst: Netns, addr: str, seconds: float, timeout: float = 30.0
) -> dict[str, Any]:
    if shutil.which("iperf3"):
        return _iperf3(src, dst, addr, seconds, timeout)
    return _python_tcp(src, dst, addr, seconds, timeout)


def _stop(proc: subprocess.Popen[str]) -> None:
    """Terminate ``proc`` if it still runs (its lab would, later; a port must be free now)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


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
    budget = _Budget(WALL_LIMIT)
    reason = unavailable_reason()
    if reason is None and not os.path.exists("/dev/net/tun"):
        reason = "/dev/net/tun is missing (modprobe tun)"
    if reason is not None:
        print(f"  skipped: {reason}", flush=True)
        suite.details["skipped"] = reason
        return suite
    seconds = 1.0 if quick else 3.0
    suite.details["flow_seconds"] = seconds
    suite.details["iperf3"] = shutil.which("iperf3") is not None
    suite.details["wall_limit_s"] = WALL_LIMIT
    veth_mbit_s = _veth(suite, quick, seconds)
    try:
        _overlay(suite, quick, budget, veth_mbit_s)
    except Exception as exc:
        suite.details.setdefault("overlay", {}).setdefault("errors", {})["setup"] = _error(exc)
        print(f"  overlay failed: {_error(exc)}", flush=True)
    if budget.fits(seconds + 15):
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
    else:
        suite.details["tun_bridge"] = "skipped: the suite's wall-time limit"
    return suite


def _veth(suite: Suite, quick: bool, seconds: float) -> float:
    """Two namespaces, one veth: ping, TCP, UDP. Returns the TCP figure (Mbit/s)."""
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
    return float(tcp["mbit_s"])


# -- the overlay: real agents in the namespace diamond -------------------------------------

PROBES = "tests.netns.probes"
PROBE_PORT = 5000  # udp/5000 A -> D: allowed by the agents' policy (tests/netns/agents.py)
PROBE_INTERVAL = 0.02
TUN_MTU = int(os.environ.get("X0T_BENCH_TUN_MTU", "1280"))  # make_state's default
# The agents' datagram_size: the veths' MTU (1,500) less IPv6 and UDP headers, as
# docs/node.md tells operators to set it (the default, 1280, crosses any path).
DATAGRAM_SIZE = int(os.environ.get("X0T_BENCH_DATAGRAM_SIZE", "1452"))
WALL_LIMIT = 110.0  # s for the whole suite; phases that no longer fit are skipped
FAILOVER_RUNS = 3
SETTLE_LIMIT = 15.0  # s to wait for the mesh to heal after a link is restored
PROFILE_RATE = 250  # py-spy samples per second

TARGETS: Final = {
    "netns_failover_s": ("<=", 1.0),
    "agent_rss_mb": ("<=", 40.0),
    "overlay_tcp_mbit_s": (">=", 1000.0),
}


def _is_met(key: str, value: float) -> bool:
    op, bound = TARGETS[key]
    return value <= bound if op == "<=" else value >= bound


def _target(suite: Suite, key: str, value: float) -> str:
    op, bound = TARGETS[key]
    met = _is_met(key, value)
    suite.details.setdefault("targets", {})[key] = {
        "target": f"{op} {bound:g}",
        "value": value,
        "met": met,
    }
    return f"target {op} {bound:g}: {'met' if met else 'NOT met'}"


class _Budget:
    """The suite's wall-clock allowance: a phase runs only if it still fits."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def fits(self, seconds: float) -> bool:
        return self.left() >= seconds


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[-800:]}"


class _Sampler:
    """RSS (every ``period``, max kept) and CPU time (first and last reading) of the agent
    processes, on a thread, for one load phase; bounded by ``limit`` seconds."""

    def __init__(self, pids: dict[str, int], period: float = 0.1, limit: float = 60.0) -> None:
        self.pids = pids
        self.period = period
        self.limit = limit
        self.rss_max_kb: dict[str, int] = {}
        self.cpu0: dict[str, float | None] = {}
        self.cpu1: dict[str, float | None] = {}
        self.t0 = self.t1 = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample_rss(self) -> None:
        for n, pid in self.pids.items():
            kb = rss_kb(pid)
            if kb is not None:
                self.rss_max_kb[n] = max(kb, self.rss_max_kb.get(n, 0))

    def _loop(self) -> None:
        end = time.monotonic() + self.limit
        while not self._stop.wait(self.period) and time.monotonic() < end:
            self._sample_rss()

    def __enter__(self) -> _Sampler:
        self.t0 = time.monotonic()
        self.cpu0 = {n: cpu_seconds(p) for n, p in self.pids.items()}
        self._sample_rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu1 = {n: cpu_seconds(p) for n, p in self.pids.items()}
        self.t1 = time.monotonic()
        self._stop.set()
        self._thread.join(5)
        self._sample_rss()

    def cpu_pct(self) -> dict[str, float]:
        """CPU of each process over the phase, % of one core (utime + stime)."""
        wall = self.t1 - self.t0
        out = {}
        for n in self.pids:
            c0, c1 = self.cpu0.get(n), self.cpu1.get(n)
            if c0 is not None and c1 is not None and wall > 0:
                out[n] = round((c1 - c0) / wall * 100, 1)
        return out

    def rss_mb(self) -> dict[str, float]:
        return {n: round(kb / 1024, 1) for n, kb in self.rss_max_kb.items()}


def _rss_mb(pids: dict[str, int]) -> dict[str, float]:
    out = {}
    for n, pid in pids.items():
        kb = rss_kb(pid)
        if kb is not None:
            out[n] = round(kb / 1024, 1)
    return out


def _agent_counters(ag: Agents) -> dict[str, dict[str, int]]:
    out = {}
    for n in "abcd":
        st = ag.status(n)
        if st is not None:
            out[n] = {k: int(v) for k, v in st["counters"].items() if isinstance(v, int)}
    return out


def _udp_snmp(ag: Agents) -> dict[str, dict[str, int]]:
    """Each namespace's kernel UDP counters (``/proc/net/snmp``, ``Udp:`` rows)."""
    out = {}
    for n in "abcd":
        text = ag.ns(n).run("cat", "/proc/net/snmp", check=False).stdout
        rows = [line.split()[1:] for line in text.splitlines() if line.startswith("Udp:")]
        if len(rows) == 2:
            out[n] = {k: int(v) for k, v in zip(rows[0], rows[1], strict=True)}
    return out


def _delta(
    before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]
) -> dict[str, dict[str, int]]:
    """What changed per node (non-zero differences only)."""
    out = {}
    for n, now in after.items():
        was = before.get(n, {})
        diff = {k: v - was.get(k, 0) for k, v in now.items() if v != was.get(k, 0)}
        if diff:
            out[n] = dict(sorted(diff.items()))
    return out


def _py_spy() -> str | None:
    found = shutil.which("py-spy")
    if found:
        return found
    beside = Path(sys.executable).parent / "py-spy"  # installed into this venv
    return str(beside) if beside.exists() else None


def _spy_start(tool: str, pid: int, seconds: float, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            tool, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
            "--rate", str(PROFILE_RATE), "--nonblocking", "--format", "raw",
            "--output", str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip


def _frame_name(frame: str) -> str:
    """``func (path/file.py:123)`` -> ``func (path/file.py)``."""
    head, sep, rest = frame.rpartition(":")
    return f"{head})" if sep and rest.rstrip(")").isdigit() else frame


def _profile_top(raw: str, top: int = 10) -> dict[str, Any]:
    """Top functions of a py-spy raw (collapsed-stack) profile: by samples where the
    function is the innermost Python frame (self) and anywhere on the stack (inclusive).
    An innermost ``Runner.run`` is time in the event loop's C code (uvloop: epoll, the
    UDP sends and receives it makes itself)."""
    self_count: dict[str, int] = {}
    incl: dict[str, int] = {}
    lines: dict[str, int] = {}
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack.strip() or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if f]
        if not frames:
            continue
        total += n
        leaf = frames[-1]
        lines[leaf] = lines.get(leaf, 0) + n
        name = _frame_name(leaf)
        self_count[name] = self_count.get(name, 0) + n
        for f in {_frame_name(f) for f in frames}:
            incl[f] = incl.get(f, 0) + n

    def ranked(counts: dict[str, int], k: int) -> list[dict[str, Any]]:
        best = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
        return [{"function": f, "samples": c, "pct": round(100 * c / total, 1)} for f, c in best]

    ours = {
        f: c
        for f, c in incl.items()
        if "x0tta6bl4/" in f and "cli" not in f and not f.startswith("run_agent ")
    }
    return {
        "samples": total,
        "self": ranked(self_count, top),
        "inclusive_x0tta6bl4": ranked(ours, top),
        "lines": ranked(lines, 5),
    }


def _outage(
    arrivals: list[list[float]], t_cut: float, t_cut_done: float, stream: dict[str, Any]
) -> dict[str, Any]:
    """The outage around a cut, from D's arrivals ``[seq, sent, arrived]``: the largest
    gap between consecutive arrivals that ends after the cut, or from the last arrival to
    the end of the stream (one probe interval when nothing was lost). ``recovered``: a
    probe sent after the blackhole was in place arrived; if none did, the outage is a
    lower bound. For scale, the largest gap before the cut."""
    times = sorted(t for _seq, _sent, t in arrivals)
    before = [t for t in times if t <= t_cut]
    if not before:
        raise RuntimeError("no probe arrived before the cut")
    gaps = [(b - a, a, b) for a, b in itertools.pairwise(times) if b > t_cut]
    tail = stream["last_send"] - times[-1]
    if tail > 0:
        gaps.append((tail, times[-1], stream["last_send"]))
    gap, start, end = max(gaps, default=(0.0, t_cut, t_cut))
    sent = int(stream.get("sent", 0))
    return {
        "received": len(times),
        "sent": sent,
        "lost": sent - len(times),
        "largest_gap_before_cut_s": round(
            max((b - a for a, b in itertools.pairwise(before)), default=0.0), 4
        ),
        "recovered": any(s > t_cut_done for _seq, s, _t in arrivals),
        "outage_s": round(gap, 4),
        "gap_start_after_cut_s": round(start - t_cut, 4),  # < 0: the last probe before it
        "gap_end_after_cut_s": round(end - t_cut, 4),
    }


def _first_packet(first: subprocess.Popen[str], t_launch: float, limit: float,
                  ) -> dict[str, Any]:  # fmt: skip
    res = _json_tail(first.communicate(timeout=limit + 10)[0])
    if not res.get("answered"):
        raise RuntimeError(f"no probe answered within {limit:g} s: {res}")
    return {
        "first_packet_s": round(res["answered_at"] - t_launch, 4),
        "probe_sent_after_launch_s": round(res["sent_at"] - t_launch, 4),
        "probe_started_after_launch_s": round(res["first_send"] - t_launch, 4),
        "sends_failed_before": res["errors"],
        "probes_sent": res["sent"],
    }


def _failover_once(
    ag: Agents, dst: str, pre: float, post: float, budget: _Budget
) -> dict[str, Any]:
    d = ag.diamond
    relay = ag.relay_in_use()
    if relay not in ("b", "c"):
        raise RuntimeError(f"A routes to D via {relay!r}, not a relay")
    seconds = pre + post
    # stopped by SIGTERM once the stream is over; --idle only bounds it if that fails
    sink = d.d.module_popen(PROBES, "sink", dst, str(PROBE_PORT),
                            "--seconds", str(seconds + 10), "--idle", str(seconds))  # fmt: skip
    stream_proc = None
    link = d.links["".join(sorted("a" + relay))]
    cut = False
    try:
        wait_for_line(sink, 10)
        stream_proc = d.a.module_popen(PROBES, "stream", dst, str(PROBE_PORT),
                                       "--seconds", str(seconds),
                                       "--interval", str(PROBE_INTERVAL))  # fmt: skip
        started = json.loads(wait_for_line(stream_proc, 10))["started"]
        time.sleep(max(0.0, started + pre - time.monotonic()))
        t_cut = time.monotonic()
        d.a.lab.blackhole(link)  # A's link to the relay in use, both directions
        cut = True
        t_cut_done = time.monotonic()
        try:
            reroute: float | None = (
                t_cut_done
                - t_cut
                + ag.wait(lambda: ag.relay_in_use() not in (relay, None), post, "A to reroute")
            )
        except TimeoutError:
            reroute = None
        sent = _json_tail(stream_proc.communicate(timeout=seconds + 10)[0])
        time.sleep(0.2)  # the last probes in flight
        sink.terminate()
        got = _json_tail(sink.communicate(timeout=15)[0])
    finally:
        for p in (stream_proc, sink):
            if p is not None:
                _stop(p)
        if cut:
            d.a.lab.restore(link)
    result = {"relay": relay, "cut_took_s": round(t_cut_done - t_cut, 4),
              "reroute_s": None if reroute is None else round(reroute, 3)}  # fmt: skip
    result |= _outage(got["arrivals"], t_cut, t_cut_done, sent)
    # let the mesh settle: the link back, both ends alive, every route there
    t0 = time.monotonic()
    ag.wait(
        lambda: (
            ag.neighbour_alive("a", relay)
            and ag.neighbour_alive(relay, "a")
            and ag.routes_complete()
        ),
        min(SETTLE_LIMIT, max(1.0, budget.left())),
        f"A-{relay} to come back",
    )
    time.sleep(1.0)
    result["settle_s"] = round(time.monotonic() - t0, 2)
    return result


def _overlay_tcp(ag: Agents, dst: str, seconds: float, budget: _Budget) -> dict[str, Any]:
    timeout = min(15.0, max(5.0, budget.left() - seconds))
    return _tcp(ag.diamond.a, ag.diamond.d, dst, seconds, timeout=timeout)


def _overlay(suite: Suite, quick: bool, budget: _Budget, veth_mbit_s: float | None) -> None:
    """Real agents (TUN mode) in the diamond: the first packet through, ping, one TCP
    stream with the agents' CPU and memory, a profile of the relay and the endpoints,
    and the outage when the relay in use is blackholed."""
    info: dict[str, Any] = {
        "tun_mtu": TUN_MTU,
        "datagram_size": DATAGRAM_SIZE,
        "veth_mtu": 1500,
        "probe_interval_s": PROBE_INTERVAL,
    }
    errors: dict[str, str] = {}
    info["errors"] = errors
    suite.details["overlay"] = info
    tcp_s = 2.0 if quick else 5.0
    profile_s = 2.0 if quick else 3.0
    pre, post = (0.5, 2.5) if quick else (1.0, 3.0)
    runs = FAILOVER_RUNS
    # the lab (agents, probes, namespaces) goes first, then the agents' state directory
    with tempfile.TemporaryDirectory(prefix="x0t-bench-") as tmp, Lab() as lab:
        d = diamond(lab)  # veths of MTU 1,500
        dst = str(node_overlay_ipv6(TRUST_DOMAIN, "d"))
        info["d_overlay"] = dst
        first_limit = min(30.0, budget.left())
        # D answers probes from the start (any address: its overlay one is not up yet)
        echo = d.d.module_popen(PROBES, "sink", "::", str(PROBE_PORT), "--echo",
                                "--seconds", str(first_limit + 5), "--idle", "0.5")  # fmt: skip
        wait_for_line(echo, 10)
        launched: list[float] = []
        print(f"  ... overlay: four agents (TUN MTU {TUN_MTU}), first packet", flush=True)
        ag = launch_all(
            d,
            Path(tmp),
            tun_mtu=TUN_MTU,
            datagram_size=DATAGRAM_SIZE,
            before=lambda: launched.append(time.monotonic()),
        )
        try:
            first = d.a.module_popen(PROBES, "first", dst, str(PROBE_PORT),
                                     "--seconds", str(first_limit),
                                     "--interval", str(PROBE_INTERVAL))  # fmt: skip
            try:
                fp = _first_packet(first, launched[0], first_limit)
                info["first_packet"] = fp
                suite.add(
                    "netns_first_packet_s",
                    "overlay: agents launched -> first A->D UDP probe answered",
                    fp["first_packet_s"],
                    "s",
                    f"probes every {PROBE_INTERVAL * 1000:g} ms from A from "
                    f"{fp['probe_started_after_launch_s']:.2f} s",
                )
            except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
                errors["first_packet"] = _error(exc)
            finally:
                _stop(first)
                _stop(echo)
            ag.wait(ag.routes_complete, min(30.0, budget.left()), "the overlay to converge")
            info["converged_after_launch_s"] = round(time.monotonic() - launched[0], 3)
            pids = {n: int((ag.status(n) or {"pid": ag.pid(n)})["pid"]) for n in "abcd"}
            info["pids"] = pids
            time.sleep(0.5)
            info["rss_idle_mb"] = _rss_mb(pids)
            print("  ... overlay: ping A -> D", flush=True)
            try:
                ping = _ping(d.a, dst, 20)
                info["ping"] = ping
                suite.add(
                    "overlay_ping_ms",
                    "overlay: ping A -> D's overlay address, two hops (median)",
                    ping["median_ms"],
                    "ms",
                    f"min {ping['min_ms']:.3f}, max {ping['max_ms']:.3f}, "
                    f"{ping['received']}/{ping['sent']} echoes",
                )
            except (RuntimeError, NetnsCommandError, subprocess.TimeoutExpired) as exc:
                errors["ping"] = _error(exc)
            relay = ag.relay_in_use()
            info["relay_in_use"] = relay
            print(f"  ... overlay: TCP A -> D, {tcp_s:g} s, relay {relay}", flush=True)
            sampler = _Sampler(pids, limit=tcp_s + 40)
            tcp: dict[str, Any] | None = None
            counters0, snmp0 = _agent_counters(ag), _udp_snmp(ag)
            try:
                with sampler:
                    tcp = _overlay_tcp(ag, dst, tcp_s, budget)
                info["tcp"] = tcp
            except Exception as exc:
                errors["tcp"] = _error(exc)
            # where packets went during the test: the agents' counters, the kernel's UDP
            info["tcp_agent_counters"] = _delta(counters0, _agent_counters(ag))
            info["tcp_kernel_udp"] = _delta(snmp0, _udp_snmp(ag))
            info["cpu_pct_under_load"] = cpu = sampler.cpu_pct()
            info["rss_load_mb"] = rss = sampler.rss_mb()
            _overlay_figures(suite, tcp, tcp_s, veth_mbit_s, relay, cpu, rss, info)
            _overlay_udp(suite, ag, dst, tcp_s, budget, info, errors)
            if budget.fits(profile_s + 15 + runs * (pre + post + 4)):
                print(f"  ... overlay: profiling A, {relay} and D under TCP", flush=True)
                try:
                    info["profile"] = _profile(ag, dst, profile_s, Path(tmp), budget)
                except Exception as exc:
                    errors["profile"] = _error(exc)
            else:
                info["profile"] = "skipped: the suite's wall-time limit"
            _failover(suite, ag, dst, pre, post, runs, budget, info, errors)
        finally:
            ag.stop()


def _overlay_udp(suite: Suite, ag: Agents, dst: str, seconds: float, budget: _Budget,
                 info: dict[str, Any], errors: dict[str, str]) -> None:  # fmt: skip
    """One UDP flow A -> D at more than the overlay carries: what a UDP application
    (video, a game, a VPN inside the overlay) gets, and how much is lost."""
    if shutil.which("iperf3") is None:
        info["udp"] = "skipped: iperf3 is not installed"
        return
    if not budget.fits(seconds + 20):
        info["udp"] = "skipped: the suite's wall-time limit"
        return
    print(f"  ... overlay: UDP A -> D, {UDP_OFFERED}bit/s offered, {seconds:g} s", flush=True)
    try:
        udp = _iperf3_udp(ag.diamond.a, ag.diamond.d, dst, seconds)
    except Exception as exc:
        errors["udp"] = _error(exc)
        return
    info["udp"] = udp
    suite.add(
        "overlay_udp_mbit_s",
        f"overlay: UDP A -> D through a relay, {UDP_LENGTH}-byte datagrams, delivered",
        udp["mbit_s"],
        "Mbit/s",
        f"iperf3 -u, {udp['offered_mbit_s']:,.0f} Mbit/s offered for {seconds:g} s, "
        f"{udp['lost_percent']:.0f} % lost",
    )


def _overlay_figures(
    suite: Suite,
    tcp: dict[str, Any] | None,
    seconds: float,
    veth_mbit_s: float | None,
    relay: str | None,
    cpu: dict[str, float],
    rss: dict[str, float],
    info: dict[str, Any],
) -> None:
    if tcp is not None:
        key = "overlay_tcp_mbit_s"
        value = tcp["mbit_s"]
        note = (
            f"{tcp['tool']}, one stream, {seconds:g} s, TUN MTU {TUN_MTU}, "
            f"datagrams of {DATAGRAM_SIZE} B"
        )
        if "retransmits" in tcp:
            note += f", {tcp['retransmits']} retransmits"
        suite.add(key, "overlay: TCP A -> D through a relay", value, "Mbit/s",
                  f"{note}; {_target(suite, key, value)}")  # fmt: skip
        if veth_mbit_s:
            suite.add(
                "overlay_vs_veth_ratio",
                "overlay TCP / raw veth TCP (same run)",
                value / veth_mbit_s,
                "ratio",
            )
    else:
        print("  overlay TCP failed: " + info["errors"].get("tcp", "?"), flush=True)
    # without a load the figures are no "under load" figures: detail rows only, no keys
    under = "during the TCP test" if tcp is not None else "during the failed TCP test"
    if cpu:
        per = ", ".join(f"{n} {v:.0f}" for n, v in sorted(cpu.items()))
        suite.add(
            "overlay_cpu_pct_per_node" if tcp is not None else "",
            f"overlay: agent CPU {under}, busiest node (% of one core)",
            max(cpu.values()),
            "%",
            f"{per}; relay {relay}",
        )
    loaded = {n: v for n, v in rss.items() if n in ("a", "d", relay)}
    if loaded:
        key = "agent_rss_mb"
        value = max(loaded.values())
        idle = info.get("rss_idle_mb", {})
        note = f"idle {', '.join(f'{n} {v:.0f}' for n, v in sorted(idle.items()))}"
        if tcp is not None:
            note += f"; {_target(suite, key, value)}"
        suite.add(
            key if tcp is not None else "",
            f"agent RSS {under}, max of A, D and the relay (MiB)",
            value,
            "MiB",
            note,
        )


def _profile(ag: Agents, dst: str, seconds: float, tmp: Path, budget: _Budget) -> dict[str, Any]:
    """py-spy on A, the relay in use and D during a second, unmeasured TCP transfer."""
    tool = _py_spy()
    if tool is None:
        return {"skipped": "py-spy is not installed (pip install py-spy)"}
    relay = ag.relay_in_use() or "b"
    names = {"a": "a", "relay": relay, "d": "d"}
    spies: dict[str, subprocess.Popen[str]] = {}
    out: dict[str, Any] = {"tool": "py-spy record --nonblocking", "rate_hz": PROFILE_RATE,
                           "seconds": seconds, "relay": relay}  # fmt: skip
    box: dict[str, Any] = {}

    def transfer() -> None:
        try:
            box["tcp"] = _overlay_tcp(ag, dst, seconds + 2, budget)
        except Exception as exc:
            box["error"] = _error(exc)

    runner = threading.Thread(target=transfer, daemon=True)
    runner.start()
    try:
        time.sleep(0.7)  # the stream has started
        for role, n in names.items():
            spies[role] = _spy_start(tool, ag.pid(n), seconds, tmp / f"profile-{role}.txt")
        for role, spy in spies.items():
            log = spy.communicate(timeout=seconds + 20)[0]
            path = tmp / f"profile-{role}.txt"
            if spy.returncode != 0 or not path.exists():
                out[role] = {"error": log.strip()[-500:]}
                continue
            top = _profile_top(path.read_text())
            busy = round(100 * top["samples"] / (PROFILE_RATE * seconds), 1)
            out[role] = {"node": names[role], "active_samples_pct": busy} | top
    finally:
        for spy in spies.values():
            _stop(spy)
        runner.join(seconds + 40)
    out["tcp_while_profiled"] = box.get("tcp", box.get("error"))
    return out


def _failover(
    suite: Suite,
    ag: Agents,
    dst: str,
    pre: float,
    post: float,
    runs: int,
    budget: _Budget,
    info: dict[str, Any],
    errors: dict[str, str],
) -> None:
    results: list[dict[str, Any]] = []
    info["failover"] = results
    for i in range(runs):
        if not budget.fits(pre + post + 10):
            errors[f"failover_{i + 1}"] = "skipped: the suite's wall-time limit"
            break
        print(f"  ... overlay: failover {i + 1}/{runs}", flush=True)
        try:
            results.append(_failover_once(ag, dst, pre, post, budget))
        except Exception as exc:
            errors[f"failover_{i + 1}"] = _error(exc)
            break  # the mesh may not have healed: later runs would measure that
    outages = [r["outage_s"] for r in results]
    if not outages:
        return
    key = "netns_failover_s"
    median = statistics.median(outages)
    info["failover_median_s"] = median
    info["failover_max_s"] = max(outages)
    unrecovered = sum(not r["recovered"] for r in results)
    note = (
        f"{len(outages)} cuts: {', '.join(f'{o:.3f}' for o in outages)}; "
        f"probes every {PROBE_INTERVAL * 1000:g} ms"
    )
    if unrecovered:
        note += f"; {unrecovered} never recovered (a lower bound)"
    suite.add(
        key,
        "overlay: outage when A's link to the relay in use is blackholed (median)",
        median,
        "s",
        f"{note}; {_target(suite, key, median)}",
    )
    suite.add("", "overlay: outage, worst of the cuts", max(outages), "s")
