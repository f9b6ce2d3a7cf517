"""Real agents in the namespace diamond: each namespace runs ``x0t node run`` with TUN mode
on, issued by a CA made for the test, listening on all its underlay addresses. A and D
dial both relays; B and C accept. Used by the netns tests and ``bench/netns.py``."""

from __future__ import annotations

import datetime
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.netns.helpers import PYTHON, Diamond, Netns
from x0tta6bl4.node.client import NodeApiError, NodeClient
from x0tta6bl4.node.config import render_template

TRUST_DOMAIN = "netns.x0t"
PORT = 7100
TAGS = {"a": ["role:web"], "b": ["role:relay"], "c": ["role:relay"], "d": ["role:db"]}
POLICY = (
    "version 1\n"
    "allow from tag:role:web to tag:role:db port tcp/5000-5001, tcp/5201, udp/5000\n"
    "allow from any to any proto icmp\n"
)


@dataclass
class Agents:
    diamond: Diamond
    root: Path
    procs: dict[str, Any] = field(default_factory=dict)
    ca_dir: Path | None = None

    def client(self, name: str) -> NodeClient:
        return NodeClient(self.root / name / "agent.sock", timeout=10.0)

    def status(self, name: str) -> dict[str, Any] | None:
        try:
            return self.client(name).status()
        except (NodeApiError, OSError, ValueError):
            return None

    def overlay(self, name: str) -> str:
        st = self.status(name)
        assert st is not None, f"{name} is not running"
        return str(st["overlay"]["ipv6"])

    def overlay4(self, name: str) -> str:
        st = self.status(name)
        assert st is not None, f"{name} is not running"
        assert st["overlay"]["ipv4"], f"{name} has no overlay IPv4 address"
        return str(st["overlay"]["ipv4"])

    def ns(self, name: str) -> Netns:
        return getattr(self.diamond, name)  # type: ignore[no-any-return]

    def wait(self, cond: Callable[[], bool], timeout: float, what: str) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if cond():
                return time.monotonic() - t0
            for n, p in self.procs.items():
                if p.poll() is not None:
                    err = (self.root / n / "agent.log").read_text()[-2000:]
                    raise RuntimeError(f"agent {n} exited with {p.returncode}: {err}")
            time.sleep(0.05)
        raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")

    def routes_complete(self) -> bool:
        for n in "abcd":
            st = self.status(n)
            if st is None:
                return False
            have = {r["dst"] for r in st["routes"] if r["via"]}
            if have != set("abcd") - {n}:
                return False
        return True

    def relay_in_use(self, src: str = "a", dst: str = "d") -> str | None:
        st = self.status(src)
        if st is None:
            return None
        for r in st["routes"]:
            if r["dst"] == dst:
                return str(r["via"])
        return None

    def pid(self, name: str) -> int:
        """The agent's process id (``ip netns exec`` execs it, so the child's own)."""
        return int(self.procs[name].pid)

    def neighbour_alive(self, node: str, peer: str) -> bool:
        st = self.status(node)
        if st is None:
            return False
        return any(n["name"] == peer and n["alive"] for n in st["neighbours"])

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(5)
            except Exception:
                p.kill()


def make_state(
    root: Path,
    d: Diamond,
    *,
    tun_mtu: int = 1280,
    deny_tcp: str = "drop",
    datagram_size: int | dict[str, int] = 1280,
) -> Path:
    """CA, four credential directories, signed policy, configs. Returns the CA dir.
    ``datagram_size``: one for all nodes, or per node name (1280 for those not named)."""
    from x0tta6bl4.crypto.keys import load_signing_key
    from x0tta6bl4.identity.ca import CA_KEY_FILE, CertificateAuthority
    from x0tta6bl4.identity.store import NodeCredentials
    from x0tta6bl4.node.state import BUNDLE_FILE, CRL_FILE, POLICY_FILE, StateDir
    from x0tta6bl4.policy import SignedPolicy

    ca_dir = root / "ca"
    ca = CertificateAuthority.init(ca_dir, TRUST_DOMAIN)
    signed = SignedPolicy.sign(POLICY, load_signing_key(ca_dir / CA_KEY_FILE)).to_bytes()
    peers = {
        "a": [f"{d.addr('b', 'a')}:{PORT}", f"{d.addr('c', 'a')}:{PORT}"],
        "d": [f"{d.addr('b', 'd')}:{PORT}", f"{d.addr('c', 'd')}:{PORT}"],
        "b": [],
        "c": [],
    }
    for n in "abcd":
        state = StateDir(root / n)
        state.create()
        NodeCredentials.generate_and_issue(
            ca, n, TAGS[n], time.time(), validity=datetime.timedelta(hours=2)
        ).save(state.path)
        ca.bundle().save(state.file(BUNDLE_FILE))
        state.write(CRL_FILE, ca.revocation_list().to_pem(), 0o644)
        state.write(POLICY_FILE, signed, 0o644)
        text = render_template(n, str(state.path), [f"0.0.0.0:{PORT}"], peers[n])
        text = text.replace("enabled = false", "enabled = true", 1)  # [tun] comes first
        text = text.replace("mtu = 1280", f"mtu = {tun_mtu}")
        text = text.replace("ipv4 = false", "ipv4 = true")
        text = text.replace('deny_tcp = "drop"', f'deny_tcp = "{deny_tcp}"')
        size = datagram_size if isinstance(datagram_size, int) else datagram_size.get(n, 1280)
        text = text.replace("datagram_size = 1280", f"datagram_size = {size}")
        (state.path / "node.toml").write_text(text)
    return ca_dir


def start(agents: Agents, name: str) -> None:
    ns = agents.ns(name)
    log = open(agents.root / name / "agent.log", "a")  # noqa: SIM115 (the child owns it)
    agents.procs[name] = ns.popen(
        PYTHON,
        "-m",
        "x0tta6bl4.cli",
        "node",
        "run",
        "--config",
        str(agents.root / name / "node.toml"),
        stdout=log,
        stderr=log,
    )
    log.close()


def launch_all(d: Diamond, root: Path, *, before: Callable[[], Any] | None = None,
               **kw: Any) -> Agents:  # fmt: skip
    """State for the four agents, then start them without waiting: ``before`` (if given)
    is called between the two, right before the first process is launched."""
    agents = Agents(d, root)
    agents.ca_dir = make_state(root, d, **kw)
    if before is not None:
        before()
    for n in "abcd":
        start(agents, n)
    return agents


def start_all(d: Diamond, root: Path, **kw: Any) -> Agents:
    agents = launch_all(d, root, **kw)
    agents.wait(agents.routes_complete, 30.0, "the overlay to converge")
    return agents


def rss_kb(pid: int) -> int | None:
    """Resident set size of ``pid`` in KiB (``VmRSS``), None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of ``pid`` (all its threads) in seconds, None once gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": fields 3, 4, ...
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (14, 15)


def flow_result(proc: Any, timeout: float) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    results = [x for x in lines if "bytes" in x]
    if not results:
        raise RuntimeError(f"flow produced no result: {out!r} {err[-1000:]!r}")
    return results[-1]
