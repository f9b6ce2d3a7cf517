"""Network-namespace test hosts: namespaces, veth links, processes inside them, blackholes.

Everything a :class:`Lab` creates carries its unique prefix (``x0tns-<pid>-<random>-``)
and is removed by :meth:`Lab.close` (a context manager and the ``lab`` fixture call it,
also on failure): processes started through the lab are terminated, whatever else still
runs inside its namespaces is killed, then the namespaces are deleted, which deletes their
veths. Namespaces left by a run that was killed outright are removed by
:func:`reap_stale` (its creator's pid is in the name and no longer runs, and it is older
than 15 minutes).

Addresses come from 198.18.0.0/15 only; nothing here routes to any other network.

    with Lab() as lab:
        d = diamond(lab)                      # A-B, A-C, B-D, C-D, forwarding off
        d.a.ping(d.addr("b", "a"))            # B's address on the A-B link
        proc = d.b.python_popen("import time; time.sleep(1)")
        lab.blackhole(d.links["ab"])          # drop everything crossing A-B
        lab.restore(d.links["ab"])

Used by ``tests/netns`` and by ``bench/netns.py``; it depends on nothing of pytest.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Interface, IPv6Network
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
TAG = "x0tns"
TEST_NET = IPv4Network("198.18.0.0/15")
_NAME_RE = re.compile(rf"^{TAG}-(\d+)-[0-9a-f]+-")
NFT_TABLE = "x0t_blackhole"
DEFAULT_TIMEOUT = 30.0


class NetnsUnavailable(RuntimeError):
    """This machine or user cannot create namespaces (the tests skip with this reason)."""


class NetnsCommandError(RuntimeError):
    """A command inside a namespace failed; the message holds its output."""


def _which(tool: str) -> str | None:
    return shutil.which(tool) or next(
        (p for d in ("/usr/sbin", "/sbin") if os.access(p := f"{d}/{tool}", os.X_OK)), None
    )


def unavailable_reason() -> str | None:
    """Why namespace tests cannot run here, or None if they can."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespace tests need root (CAP_NET_ADMIN, CAP_SYS_ADMIN)"
    if _which("ip") is None:
        return "iproute2's `ip` is not installed"
    probe = f"{TAG}-{os.getpid()}-{secrets.token_hex(3)}-probe"
    done = subprocess.run(
        ["ip", "netns", "add", probe], capture_output=True, text=True, timeout=10, check=False
    )
    if done.returncode != 0:
        return f"`ip netns add` failed: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10, check=False)
    return None


def list_netns() -> list[str]:
    out = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def reap_stale(min_age: float = 900.0) -> list[str]:
    """Delete this suite's namespaces whose creating process is gone (a run killed before
    its clean-up) and that are older than ``min_age`` seconds (a run in another pid
    namespace could have a pid we cannot see). Returns the names deleted."""
    gone = []
    now = time.time()
    for name in list_netns():
        m = _NAME_RE.match(name)
        try:
            age = now - os.stat(f"/run/netns/{name}").st_mtime
        except OSError:
            continue
        if m and age >= min_age and not _pid_alive(int(m.group(1))):
            _kill_pids_in(name)
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
            gone.append(name)
    return gone


def _pids_in(ns: str) -> list[int]:
    done = subprocess.run(
        ["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=10, check=False
    )
    return [int(p) for p in done.stdout.split() if p.isdigit()]


def _kill_pids_in(ns: str) -> None:
    """Kill what still runs inside one of *our* namespaces (started there by us)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _pids_in(ns)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and any(_pid_alive(p) for p in pids):
            time.sleep(0.02)


# --- one namespace ------------------------------------------------------------------------


@dataclass
class PingResult:
    sent: int
    received: int
    rtts_ms: list[float]

    @property
    def ok(self) -> bool:
        return self.received > 0


class Netns:
    """One test host. ``name`` is the real namespace name, ``short`` the label given."""

    def __init__(self, lab: Lab, short: str, name: str) -> None:
        self.lab = lab
        self.short = short
        self.name = name

    def __repr__(self) -> str:
        return f"Netns({self.short!r}, {self.name!r})"

    def argv(self, *argv: str) -> list[str]:
        """``argv`` prefixed to run inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self,
        *argv: str,
        check: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            self.argv(*argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            cwd=REPO_ROOT,
            check=False,
        )
        if check and done.returncode != 0:
            raise NetnsCommandError(
                f"[{self.short}] {' '.join(argv)} -> {done.returncode}\n"
                f"stdout: {done.stdout.strip()}\nstderr: {done.stderr.strip()}"
            )
        return done

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``ip -n <ns> ...`` (no mount namespace: faster than ``run("ip", ...)``)."""
        done = subprocess.run(
            ["ip", "-n", self.name, *args], capture_output=True, text=True, timeout=10, check=False
        )
        if check and done.returncode != 0:
            raise NetnsCommandError(f"[{self.short}] ip {' '.join(args)}: {done.stderr.strip()}")
        return done

    def popen(self, *argv: str, **kwargs: object) -> subprocess.Popen[str]:
        """Start ``argv`` inside the namespace; the lab terminates it on close. stdout and
        stderr are pipes unless given."""
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc: subprocess.Popen[str] = subprocess.Popen(  # type: ignore[call-overload]
            self.argv(*argv), text=True, cwd=REPO_ROOT, **kwargs
        )
        self.lab._procs.append(proc)
        return proc

    def python(
        self, code: str, *args: str, timeout: float = DEFAULT_TIMEOUT, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``python -c code args`` (this venv's interpreter, repo root as cwd, so
        ``x0tta6bl4`` and ``tests.*`` import) inside the namespace."""
        return self.run(PYTHON, "-c", code, *args, timeout=timeout, check=check)

    def python_popen(self, code: str, *args: str, **kwargs: object) -> subprocess.Popen[str]:
        return self.popen(PYTHON, "-c", code, *args, **kwargs)

    def module_popen(self, module: str, *args: str, **kwargs: object) -> subprocess.Popen[str]:
        """``python -m module args`` inside the namespace (e.g. ``tests.netns.tun_probe``)."""
        return self.popen(PYTHON, "-m", module, *args, **kwargs)

    def sysctl(self, key: str, value: str | int) -> None:
        self.run("sysctl", "-q", "-w", f"{key}={value}")

    def read_sysctl(self, key: str) -> str:
        return self.run("sysctl", "-n", key).stdout.strip()

    def ping(
        self,
        addr: str | ipaddress.IPv4Address | ipaddress.IPv6Address,
        count: int = 1,
        timeout: float = 1.0,
        interval: float = 0.2,
    ) -> PingResult:
        """ICMP echo from this namespace: iputils ``ping`` if installed, else a raw-socket
        echo in Python. Never raises for loss or an unreachable address."""
        if _which("ping") is not None:
            done = self.run(
                "ping",
                "-n",
                "-c",
                str(count),
                "-i",
                str(interval),
                "-W",
                str(timeout),
                str(addr),
                check=False,
                timeout=count * (interval + timeout) + 5,
            )
            rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", done.stdout)]
            m = re.search(r"(\d+) packets transmitted, (\d+) received", done.stdout)
            if m:
                return PingResult(int(m.group(1)), int(m.group(2)), rtts)
            return PingResult(count, len(rtts), rtts)
        done = self.python(
            _PY_PING,
            str(addr),
            str(count),
            str(timeout),
            str(interval),
            check=False,
            timeout=count * (interval + timeout) + 10,
        )
        rtts = [float(x) for x in done.stdout.split()]
        return PingResult(count, len(rtts), rtts)

    def addresses(self) -> list[str]:
        out = self.ip("-o", "addr", "show").stdout
        return re.findall(r"inet6? (\S+)", out)


# A minimal ICMP echo for machines without iputils (root: raw sockets). Prints one RTT in
# ms per answered echo.
_PY_PING = r"""
import os, select, socket, struct, sys, time
addr, count = sys.argv[1], int(sys.argv[2])
timeout, interval = float(sys.argv[3]), float(sys.argv[4])
v6 = ":" in addr
fam, proto, req, rep = ((socket.AF_INET6, socket.IPPROTO_ICMPV6, 128, 129) if v6
                        else (socket.AF_INET, socket.IPPROTO_ICMP, 8, 0))
s = socket.socket(fam, socket.SOCK_RAW, proto)
ident = os.getpid() & 0xFFFF
def csum(b):
    b += b"\0" * (len(b) % 2)
    t = sum(struct.unpack(f"!{len(b)//2}H", b)); t = (t >> 16) + (t & 0xFFFF); t += t >> 16
    return ~t & 0xFFFF
for seq in range(count):
    body = struct.pack("!HH", ident, seq) + b"x0t-ping" * 7
    msg = struct.pack("!BBH", req, 0, 0) + body
    if not v6:
        msg = struct.pack("!BBH", req, 0, csum(msg)) + body
    t0 = time.monotonic()
    try:
        s.sendto(msg, (addr, 0))
    except OSError:
        time.sleep(interval); continue
    end = t0 + timeout
    while (left := end - time.monotonic()) > 0:
        if not select.select([s], [], [], left)[0]:
            break
        data = s.recv(2048)
        icmp = data if v6 else data[(data[0] & 15) * 4:]
        if len(icmp) >= 8 and icmp[0] == rep and struct.unpack("!HH", icmp[4:8]) == (ident, seq):
            print(f"{(time.monotonic() - t0) * 1000:.3f}", flush=True)
            break
    if seq + 1 < count:
        time.sleep(interval)
"""


# --- links --------------------------------------------------------------------------------


@dataclass
class Iface:
    ns: Netns
    name: str
    address: IPv4Interface
    address6: IPv6Interface | None = None

    @property
    def ip(self) -> IPv4Address:
        return self.address.ip


@dataclass
class Link:
    """A veth pair: ``a`` and ``b`` are its two ends."""

    a: Iface
    b: Iface

    def end(self, ns: Netns | str) -> Iface:
        short = ns if isinstance(ns, str) else ns.short
        if self.a.ns.short == short:
            return self.a
        if self.b.ns.short == short:
            return self.b
        raise KeyError(f"{short} is not on this link")


# --- the lab ------------------------------------------------------------------------------


@dataclass
class Lab:
    """A set of namespaces with one unique prefix, torn down by :meth:`close`."""

    prefix: str = field(default_factory=lambda: f"{TAG}-{os.getpid()}-{secrets.token_hex(3)}-")
    nodes: dict[str, Netns] = field(default_factory=dict)
    links: list[Link] = field(default_factory=list)
    _procs: list[subprocess.Popen[str]] = field(default_factory=list)
    _blackholed: dict[str, set[str]] = field(default_factory=dict)  # ns short -> ifnames

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def namespaces(self) -> list[str]:
        return [n.name for n in self.nodes.values()]

    def add(self, short: str, *, forwarding: bool = False) -> Netns:
        """A namespace with ``lo`` up and IP forwarding off (unless ``forwarding``)."""
        if short in self.nodes:
            raise ValueError(f"namespace {short!r} exists")
        if not re.fullmatch(r"[a-z0-9]{1,8}", short):
            raise ValueError(f"short name {short!r}: 1-8 of a-z, 0-9")
        name = self.prefix + short
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=10)
        ns = Netns(self, short, name)
        self.nodes[short] = ns
        ns.ip("link", "set", "lo", "up")
        value = "1" if forwarding else "0"
        ns.sysctl("net.ipv4.ip_forward", value)
        ns.sysctl("net.ipv6.conf.all.forwarding", value)
        return ns

    def link(
        self,
        a: Netns,
        b: Netns,
        subnet: IPv4Network | str,
        *,
        mtu: int = 1500,
        subnet6: IPv6Network | str | None = None,
    ) -> Link:
        """A veth pair between ``a`` and ``b`` (``to-<b>`` in a, ``to-<a>`` in b), created
        straight inside the two namespaces, MTU ``mtu``; a gets the subnet's first host
        address, b the second. ``subnet6`` adds IPv6 addresses too (no DAD wait)."""
        net = IPv4Network(subnet)
        if not net.subnet_of(TEST_NET):
            raise ValueError(f"{net} is outside {TEST_NET}: tests use 198.18.0.0/15 only")
        hosts = net.hosts()
        addr_a = IPv4Interface(f"{next(hosts)}/{net.prefixlen}")
        addr_b = IPv4Interface(f"{next(hosts)}/{net.prefixlen}")
        name_a, name_b = f"to-{b.short}", f"to-{a.short}"
        subprocess.run(
            [
                *("ip", "link", "add", name_a, "netns", a.name, "mtu", str(mtu), "type", "veth"),
                *("peer", "name", name_b, "netns", b.name, "mtu", str(mtu)),
            ],
            check=True,
            capture_output=True,
            timeout=10,
        )
        a6 = b6 = None
        if subnet6 is not None:
            net6 = IPv6Network(subnet6)
            h6 = net6.hosts()
            a6 = IPv6Interface(f"{next(h6)}/{net6.prefixlen}")
            b6 = IPv6Interface(f"{next(h6)}/{net6.prefixlen}")
        for ns, ifname, addr, addr6 in ((a, name_a, addr_a, a6), (b, name_b, addr_b, b6)):
            ns.ip("addr", "add", str(addr), "dev", ifname)
            if addr6 is not None:
                ns.ip("addr", "add", str(addr6), "dev", ifname, "nodad")
            ns.ip("link", "set", ifname, "up")
        link = Link(Iface(a, name_a, addr_a, a6), Iface(b, name_b, addr_b, b6))
        self.links.append(link)
        return link

    # -- faults -------------------------------------------------------------------------

    def blackhole(self, link: Link, direction: str = "both") -> None:
        """Drop every packet crossing ``link`` (``"both"``, or only ``"a->b"`` /
        ``"b->a"``) with an nftables rule in the receiving namespace's prerouting hook,
        so senders still see their sends succeed, as on a dead wire."""
        ends = {"both": (link.a, link.b), "a->b": (link.b,), "b->a": (link.a,)}[direction]
        for end in ends:
            self._blackholed.setdefault(end.ns.short, set()).add(end.name)
            self._apply_nft(end.ns)

    def restore(self, link: Link) -> None:
        """Undo :meth:`blackhole` on both ends of ``link``."""
        for end in (link.a, link.b):
            held = self._blackholed.get(end.ns.short, set())
            if end.name in held:
                held.discard(end.name)
                self._apply_nft(end.ns)

    def _apply_nft(self, ns: Netns) -> None:
        if _which("nft") is None:
            raise NetnsUnavailable("nftables' `nft` is not installed (apt-get install nftables)")
        ifaces = sorted(self._blackholed.get(ns.short, set()))
        # Create-then-delete makes the delete safe when the table is absent; one `nft -f`
        # transaction replaces the whole table atomically.
        script = [f"table inet {NFT_TABLE}", f"delete table inet {NFT_TABLE}"]
        if ifaces:
            names = ", ".join(f'"{i}"' for i in ifaces)
            script += [
                f"table inet {NFT_TABLE} {{",
                "  chain pre {",
                "    type filter hook prerouting priority -300; policy accept;",
                f"    iifname {{ {names} }} counter drop",
                "  }",
                "}",
            ]
        ns.run("nft", "-f", "-", input="\n".join(script) + "\n")

    # -- teardown -----------------------------------------------------------------------

    def close(self) -> None:
        """Terminate our processes, kill anything left in our namespaces, delete them.
        Never raises; keeps going past failures."""
        for proc in self._procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
        deadline = time.monotonic() + 3.0
        for proc in self._procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(2.0)
            for stream in (proc.stdout, proc.stderr, proc.stdin):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        self._procs.clear()
        for ns in list(self.nodes.values()):
            with contextlib.suppress(Exception):
                _kill_pids_in(ns.name)
            subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, timeout=10)
        self.nodes.clear()
        self.links.clear()
        self._blackholed.clear()


# --- topologies ---------------------------------------------------------------------------


@dataclass
class Diamond:
    """A-B, A-C, B-D, C-D; ``links`` keyed "ab", "ac", "bd", "cd"."""

    a: Netns
    b: Netns
    c: Netns
    d: Netns
    links: dict[str, Link]

    def addr(self, node: str, toward: str) -> IPv4Address:
        """``node``'s underlay address on its link to ``toward``."""
        key = "".join(sorted(node + toward))
        return self.links[key].end(node).ip

    def nodes(self) -> Sequence[Netns]:
        return (self.a, self.b, self.c, self.d)


DIAMOND_SUBNETS = {
    "ab": "198.18.1.0/24",
    "ac": "198.18.2.0/24",
    "bd": "198.18.3.0/24",
    "cd": "198.18.4.0/24",
}


def diamond(lab: Lab, *, mtu: int = 1500) -> Diamond:
    """The four-node diamond, forwarding off everywhere: only neighbours reach each other
    in the underlay; A reaches D only through a mesh agent that relays."""
    ns = {s: lab.add(s) for s in "abcd"}
    links = {
        key: lab.link(ns[key[0]], ns[key[1]], subnet, mtu=mtu)
        for key, subnet in DIAMOND_SUBNETS.items()
    }
    return Diamond(ns["a"], ns["b"], ns["c"], ns["d"], links)


def pair(lab: Lab, *, mtu: int = 1500, subnet: str = "198.18.1.0/24") -> tuple[Netns, Netns, Link]:
    """Two namespaces A and B joined by one veth."""
    a, b = lab.add("a"), lab.add("b")
    return a, b, lab.link(a, b, subnet, mtu=mtu)


def wait_for_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The next stdout line of ``proc``, waiting at most ``timeout`` seconds."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise TimeoutError(f"no output from {proc.args!r} within {timeout} s")
    line = proc.stdout.readline()
    if not line:
        err = proc.stderr.read() if proc.stderr is not None and proc.poll() is not None else ""
        raise NetnsCommandError(f"{proc.args!r} exited ({proc.poll()}): {err.strip()}")
    return line.strip()
