"""The main part of ``x0t demo``: a control plane and six real agent processes on
127.0.0.x.

``x0t serve`` runs on SQLite in the demo's directory; the operator publishes a policy
and one join token through its API, and six nodes enroll with ``x0t node join``'s
HPKE-sealed enrollment; six ``x0t node run`` processes form a mesh with two disjoint
paths and report to the control plane; a stream of messages crosses it from ``a`` to
``f`` every 20 ms; the relay in use is killed with SIGKILL; the traffic's own gap is
measured beside the MTTD/MTTR that healing reported (and that the control plane
collected); the node is restarted and rejoins; a node is revoked through the API and its
neighbours drop it; everything stops, also on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from rich.console import Console
from rich.table import Table

from x0tta6bl4.errors import X0tError
from x0tta6bl4.mesh.node import node_id
from x0tta6bl4.node.client import NodeApiError
from x0tta6bl4.node.localcontrol import LocalControlPlane
from x0tta6bl4.node.localmesh import LocalMesh, free_base_port

NAMES: Final = ["a", "b", "c", "d", "e", "f"]
# two disjoint three-hop paths a-b-c-f and a-d-e-f, and a chord b-e
EDGES: Final = [("a", "b"), ("b", "c"), ("c", "f"), ("a", "d"), ("d", "e"), ("e", "f"), ("b", "e")]
PORT: Final = 7000
POLICY: Final = (
    "version 1\n"
    "# every demo node may send messages to the service port of every other\n"
    f"allow from tag:role:demo to tag:role:demo port msg/{PORT}\n"
)
INTERVAL: Final = 0.02
BEFORE_KILL: Final = 2.0
AFTER_KILL: Final = 3.0
CONVERGE_LIMIT: Final = 30.0


class DemoFailed(X0tError):
    """A step of the demo did not happen within its time limit."""


@dataclass
class Stream:
    """Messages a -> f, numbered; arrival times by number."""

    sent: dict[int, float] = field(default_factory=dict)
    arrived: dict[int, float] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def gap_around(self, t: float) -> tuple[float, float, float] | None:
        """(last arrival before t, first after, gap) of the stream around time t."""
        times = sorted(self.arrived.values())
        before = [x for x in times if x <= t]
        after = [x for x in times if x > t]
        if not before or not after:
            return None
        return before[-1], after[0], after[0] - before[-1]


@dataclass
class ProcDemoReport:
    converge_s: float
    links: list[tuple[str, str, float | None]]
    path_before: list[str]
    killed: str
    path_after: list[str]
    outage_s: float | None
    sent: int
    delivered: int
    healing: list[tuple[str, dict[str, Any]]]
    rejoin_s: float
    leave_exit_s: float
    processes_left: int
    control_url: str = ""
    enroll_s: float = 0.0
    control_events: int = 0
    control_links: int = 0
    revoked: str = ""
    revoke_enforced_s: float | None = None


def _free_base_port(n: int) -> int:
    """A port free on 127.0.0.1..n for all n nodes (a demo already running elsewhere, or
    a test, must not collide with us)."""
    try:
        return free_base_port(n)
    except OSError as exc:
        raise DemoFailed(str(exc)) from None


def _path(m: LocalMesh, src: str, dst: str) -> list[str]:
    """Follow next hops from node to node (each node's own routing table)."""
    hexes = {node_id(n).hex(): n for n in m.names}
    path = [src]
    while path[-1] != dst and len(path) <= len(m.names):
        st = m.status(path[-1])
        if st is None:
            break
        via = None
        for r in st["routes"]:
            if hexes.get(r["dst"], r["dst"]) == dst:
                via = r["via"]
        if via is None:
            break
        path.append(via)
    return path


def _sender(m: LocalMesh, stream: Stream) -> None:
    client = m.nodes["a"].client
    seq = 0
    deadline = time.monotonic() + 60.0  # bounded whatever happens to the caller
    while not stream.stop.is_set() and time.monotonic() < deadline:
        t = time.monotonic()
        stream.sent[seq] = t
        with contextlib.suppress(NodeApiError):
            client.send("f", PORT, seq.to_bytes(4, "big"))
        seq += 1
        stream.stop.wait(max(0.0, INTERVAL - (time.monotonic() - t)))


def _receiver(m: LocalMesh, stream: Stream, ready: threading.Event) -> None:
    client = m.nodes["f"].client
    it = client.listen(PORT, timeout=0.5)
    ready.set()
    with contextlib.suppress(NodeApiError):
        while not stream.stop.is_set():
            for msg in it:
                if len(msg.data) == 4:
                    stream.arrived.setdefault(int.from_bytes(msg.data, "big"), time.monotonic())
                if stream.stop.is_set():
                    return
            it = client.listen(PORT, timeout=0.5)  # silence (an outage): listen again


@contextlib.contextmanager
def _threads(m: LocalMesh, stream: Stream) -> Iterator[None]:
    ready = threading.Event()
    rx = threading.Thread(target=_receiver, args=(m, stream, ready), daemon=True)
    rx.start()
    ready.wait(5)
    time.sleep(0.2)  # the listener is registered with the agent
    tx = threading.Thread(target=_sender, args=(m, stream), daemon=True)
    tx.start()
    try:
        yield
    finally:
        stream.stop.set()
        tx.join(5)
        rx.join(5)


def run_procdemo(console: Console, root: Path | None = None) -> ProcDemoReport:
    with contextlib.ExitStack() as stack:
        if root is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="x0t-demo-")))
        tags = {n: ["role:demo"] for n in NAMES}
        t0 = time.monotonic()
        cp = stack.enter_context(LocalControlPlane(root / "control"))
        console.print(
            f"[bold]2. A control plane and six real agent processes[/bold]: x0t serve at "
            f"{cp.url} (SQLite, CA created on first start) in {time.monotonic() - t0:.1f} s"
        )
        m = LocalMesh(
            root / "mesh",
            NAMES,
            EDGES,
            tags=tags,
            policy=POLICY,
            base_port=_free_base_port(6),
            control=cp,
        )
        stack.enter_context(m)
        t0 = time.monotonic()
        m.create()
        enroll_s = time.monotonic() - t0
        console.print(
            f"policy v1 published through the API ('allow from tag:role:demo to tag:role:demo "
            f"port msg/{PORT}', default deny); 6 nodes enrolled with one join token "
            f"(HPKE ML-KEM-768 + X25519 sealed, ML-DSA-65 proof of possession) in {enroll_s:.1f} s"
        )
        t0 = time.monotonic()
        m.start_all()
        converge = m.wait(m.routes_complete, CONVERGE_LIMIT, "every node to route to every other")
        links: list[tuple[str, str, float | None]] = []
        for n in NAMES:
            nst = m.status(n)
            for nb in nst["neighbours"] if nst is not None else []:
                if n < nb["name"]:
                    links.append((n, nb["name"], nb["rtt_ms"]))
        console.print(
            f"started {len(NAMES)} processes; {len(links)} links up (hybrid X25519 + ML-KEM-768 "
            f"handshakes, ML-DSA-65 certificates verified) and every route in {converge:.1f} s"
        )
        stream = Stream()
        with _threads(m, stream):
            time.sleep(BEFORE_KILL)
            path_before = _path(m, "a", "f")
            if len(path_before) < 3:
                raise DemoFailed(f"no multi-hop path a -> f: {path_before}")
            relay = path_before[1]
            console.print(
                f"traffic a -> f every {INTERVAL * 1000:.0f} ms along {' -> '.join(path_before)}"
            )
            killed_at = m.kill(relay)
            console.print(f"[red]kill -9[/red] relay {relay} (pid gone)")
            time.sleep(AFTER_KILL)
            path_after = _path(m, "a", "f")
        gap = stream.gap_around(killed_at)
        outage = gap[2] if gap is not None else None
        healing: list[tuple[str, dict[str, Any]]] = []
        for n in NAMES:
            if n == relay:
                continue
            st = m.status(n)
            for e in (st or {}).get("healing_events", []):
                if e["subject"] == relay:
                    healing.append((n, e))
        t0 = time.monotonic()
        m.start(relay)
        rejoin = m.wait(m.routes_complete, CONVERGE_LIMIT, f"{relay} to rejoin")
        ping = m.nodes[relay].client.ping("a", timeout=2.0)
        console.print(
            f"restarted {relay}: rejoined (every route again) in {rejoin:.1f} s; "
            f"{relay} -> a rtt {ping.rtt * 1000:.2f} ms over {ping.hops} hops"
        )
        # What the control plane learnt from the nodes' signed reports.
        time.sleep(1.5)  # one report interval
        events = cp.call("GET", "/v1/events?limit=200")["events"]
        control_events = sum(1 for e in events if e["detail"].get("subject") == relay)
        control_links = len(cp.call("GET", "/v1/topology")["links"])
        console.print(
            f"the control plane holds {control_events} healing events about {relay} and "
            f"{control_links} links in its topology, from the nodes' signed reports"
        )
        revoked = "e" if relay != "e" else "c"
        neighbours = [x for a, b in EDGES for x, y in ((a, b), (b, a)) if y == revoked]
        t0 = time.monotonic()
        cp.revoke_node(revoked)

        def dropped() -> bool:
            for n in neighbours:
                st = m.status(n)
                if st is None or any(
                    nb["name"] == revoked and nb["alive"] for nb in st["neighbours"]
                ):
                    return False
            return True

        m.wait(dropped, 10.0, f"{', '.join(neighbours)} to drop {revoked}", step=0.01)
        enforced = time.monotonic() - t0  # from the operator's request on
        console.print(
            f"[red]revoked[/red] {revoked} through the API: its neighbours "
            f"{', '.join(neighbours)} dropped its sessions {enforced:.3f} s after the request "
            "(revocation list pushed over the nodes' event streams)"
        )
        leave_s = m.terminate("d" if relay != "d" else "b")
        m.stop_all()
        left = sum(1 for node in m.nodes.values() if node.running)
        return ProcDemoReport(
            converge_s=converge,
            links=links,
            path_before=path_before,
            killed=relay,
            path_after=path_after,
            outage_s=outage,
            sent=len(stream.sent),
            delivered=len(stream.arrived),
            healing=healing,
            rejoin_s=rejoin,
            leave_exit_s=leave_s,
            processes_left=left,
            control_url=cp.url,
            enroll_s=enroll_s,
            control_events=control_events,
            control_links=control_links,
            revoked=revoked,
            revoke_enforced_s=enforced,
        )
    raise AssertionError("unreachable")  # pragma: no cover


def print_procdemo(console: Console, r: ProcDemoReport) -> None:
    t = Table(title="links (round trip through the encrypted link)", box=None)
    for c in ("link", "rtt ms"):
        t.add_column(c)
    for a, b, rtt in r.links:
        t.add_row(f"{a} - {b}", "-" if rtt is None else f"{rtt:.2f}")
    console.print(t)
    ev = Table(title=f"self-healing events about {r.killed} (reported by the nodes)", box=None)
    for c in ("node", "kind", "action", "outcome", "MTTD s", "MTTR s"):
        ev.add_column(c)
    for node, e in r.healing:
        ev.add_row(
            node,
            e["kind"],
            e["action"],
            e["outcome"],
            "-" if e["mttd_s"] is None else f"{e['mttd_s']:.3f}",
            "-" if e["mttr_s"] is None else f"{e['mttr_s']:.3f}",
        )
    console.print(ev)
    s = Table(title="summary", show_header=False)
    s.add_column(style="bold")
    s.add_column()
    s.add_row(
        "control plane",
        f"x0t serve (SQLite): 6 nodes enrolled in {r.enroll_s:.1f} s; it collected "
        f"{r.control_events} healing events about {r.killed} and {r.control_links} links",
    )
    s.add_row(
        "mesh formed", f"6 processes, {len(r.links)} links, all routes in {r.converge_s:.1f} s"
    )
    s.add_row("path before", " -> ".join(r.path_before))
    s.add_row("fault", f"kill -9 of relay {r.killed}")
    s.add_row("path after", " -> ".join(r.path_after))
    s.add_row(
        "outage the traffic saw",
        "-" if r.outage_s is None else f"{r.outage_s:.3f} s (largest gap between deliveries)",
    )
    mttrs = [e["mttr_s"] for _, e in r.healing if e["mttr_s"] is not None]
    mttds = [e["mttd_s"] for _, e in r.healing if e["mttd_s"] is not None]
    s.add_row(
        "healing reported",
        f"MTTD max {max(mttds):.3f} s, MTTR max {max(mttrs):.3f} s" if mttrs and mttds else "-",
    )
    s.add_row(
        "messages",
        f"{r.delivered} of {r.sent} delivered end to end (sealed a -> f; relays see ciphertext)",
    )
    s.add_row("rejoin after restart", f"{r.rejoin_s:.1f} s (state directory kept: keys, seqno)")
    s.add_row(
        "revocation",
        f"{r.revoked} revoked through the API; neighbours dropped it after "
        + ("-" if r.revoke_enforced_s is None else f"{r.revoke_enforced_s:.3f} s"),
    )
    s.add_row("SIGTERM to exit", f"{r.leave_exit_s:.2f} s, neighbours told (LEAVE)")
    s.add_row("processes left running", str(r.processes_left))
    console.print(s)


__all__ = ["ProcDemoReport", "print_procdemo", "run_procdemo"]
