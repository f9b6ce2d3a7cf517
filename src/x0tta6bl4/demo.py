"""``x0t demo``: the product on one laptop, on embedded defaults.

1. A secure channel over real UDP on 127.0.0.1: a fresh ML-DSA-65 mesh CA, two node
   certificates, the hybrid X25519 + ML-KEM-768 handshake on first contact, messages both
   ways, a forced rekey with traffic flowing across it.
2. Six real agent processes on 127.0.0.x forming a mesh; the relay in use is killed
   with SIGKILL, traffic resumes through the other path, the node restarts and rejoins
   (``procdemo.py``).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table

from x0tta6bl4.channel.endpoint import SecureEndpoint, handshake_wire_cost
from x0tta6bl4.errors import X0tError
from x0tta6bl4.identity import CertificateAuthority, NodeCredentials, make_verifier
from x0tta6bl4.node.udp import UdpRunner
from x0tta6bl4.sansio import Addr, Deliver, Event

TRUST_DOMAIN = "x0tta6bl4.mesh"
PINGS = 200
BURST = 2000
BURST_SIZE = 1200
WINDOW = 32
WAIT_LIMIT = 10.0  # seconds any single phase may take before the demo gives up


class DemoFailed(X0tError):
    """A step of the demo did not happen within its time limit."""


@dataclass
class ChannelReport:
    ca_init_ms: float
    issue_ms: float
    cert_bytes: int
    handshake_ms: float
    handshake_bytes: int
    handshake_datagrams: int
    rtt_ms: list[float]
    burst_msgs_per_s: float
    burst_delivered: int
    rekeys: int
    after_rekey_delivered: int
    events: list[str] = field(default_factory=list)


async def _until(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_LIMIT
    while not cond():
        if time.monotonic() > deadline:
            raise DemoFailed(f"timed out waiting for {what}")
        await asyncio.sleep(0)  # yield to the socket; polls stay bounded by the deadline


def _send(runner: UdpRunner, ep: SecureEndpoint, addr: Addr, payloads: list[bytes]) -> None:
    runner.call(lambda now: [a for p in payloads for a in ep.send(now, addr, p)])


def _rekeys(ep: SecureEndpoint, addr: Addr) -> int:
    info = ep.peer(addr)
    return info.rekeys if info is not None else 0


def _count_reaches(box: list[Deliver], n: int) -> Callable[[], bool]:
    return lambda: len(box) >= n


async def secure_channel() -> ChannelReport:
    with tempfile.TemporaryDirectory(prefix="x0t-demo-") as tmp:
        t0 = time.perf_counter()
        ca = CertificateAuthority.init(tmp, TRUST_DOMAIN)
        t1 = time.perf_counter()
        now = time.time()
        alice = NodeCredentials.generate_and_issue(ca, "alice", ["role:demo", "site:lab"], now)
        bob = NodeCredentials.generate_and_issue(ca, "bob", ["role:demo", "site:lab"], now)
        t2 = time.perf_counter()
        crl = ca.revocation_list()
        bundle = ca.bundle()

    def endpoint(cred: NodeCredentials) -> SecureEndpoint:
        return SecureEndpoint(
            cred.cert.der,
            cred.static_private,
            make_verifier(bundle, lambda: crl),
            wall_offset=time.time() - time.monotonic(),
            trust_domain=TRUST_DOMAIN,
        )

    inbox: dict[str, list[Deliver]] = {"alice": [], "bob": []}
    events: list[str] = []

    def on_event(who: str) -> Callable[[Event], None]:
        def record(ev: Event) -> None:
            if ev.kind in ("handshake_complete", "session_rekeyed", "handshake_failed"):
                events.append(f"{who}: {ev.kind} {ev.fields}")

        return record

    ea, eb = endpoint(alice), endpoint(bob)
    ra = UdpRunner(ea, on_deliver=inbox["alice"].append, on_event=on_event("alice"))
    rb = UdpRunner(eb, on_deliver=inbox["bob"].append, on_event=on_event("bob"))
    addr_a = await ra.bind()
    addr_b = await rb.bind()
    try:

        def established() -> bool:
            pa, pb = ea.peer(addr_b), eb.peer(addr_a)
            return bool(pa and pa.established and pb and pb.established)

        h0 = time.perf_counter()
        ra.call(lambda now: ea.connect(now, addr_b))
        await _until(established, "the first-contact handshake")
        handshake_ms = (time.perf_counter() - h0) * 1000
        hs_bytes = ra.sent_bytes + rb.sent_bytes
        hs_datagrams = ra.sent_datagrams + rb.sent_datagrams

        # Ping-pong: bob echoes, alice times each round trip.
        rtts: list[float] = []
        for i in range(PINGS):
            s = time.perf_counter()
            _send(ra, ea, addr_b, [b"ping %d" % i])
            await _until(_count_reaches(inbox["bob"], i + 1), "a ping")
            _send(rb, eb, addr_a, [b"pong %d" % i])
            await _until(_count_reaches(inbox["alice"], i + 1), "a pong")
            rtts.append((time.perf_counter() - s) * 1000)
        if [d.payload for d in inbox["bob"][:3]] != [b"ping 0", b"ping 1", b"ping 2"]:
            raise DemoFailed("bob received something other than alice's pings")

        # A bounded burst one way, at most WINDOW datagrams in flight: asyncio reads one
        # datagram per loop turn, so an unpaced burst only measures the socket buffer.
        base = len(inbox["bob"])
        payload = bytes(BURST_SIZE)
        b0 = time.perf_counter()
        deadline = time.monotonic() + WAIT_LIMIT
        sent = 0
        while len(inbox["bob"]) - base < BURST and time.monotonic() < deadline:
            room = min(WINDOW - (sent - (len(inbox["bob"]) - base)), BURST - sent)
            if room > 0:
                _send(ra, ea, addr_b, [payload] * room)
                sent += room
            await asyncio.sleep(0)
        burst_s = time.perf_counter() - b0
        delivered = len(inbox["bob"]) - base

        # Forced rekey: a fresh handshake while the old session is still valid.
        rekeys_before = _rekeys(ea, addr_b)
        ra.call(lambda now: ea.connect(now, addr_b))
        await _until(
            lambda: _rekeys(ea, addr_b) > rekeys_before,
            "the rekey",
        )
        base = len(inbox["bob"])
        _send(ra, ea, addr_b, [b"after rekey %d" % i for i in range(10)])
        await _until(lambda: len(inbox["bob"]) - base >= 10, "messages after the rekey")
        return ChannelReport(
            ca_init_ms=(t1 - t0) * 1000,
            issue_ms=(t2 - t1) * 1000 / 2,
            cert_bytes=len(alice.cert.der),
            handshake_ms=handshake_ms,
            handshake_bytes=hs_bytes,
            handshake_datagrams=hs_datagrams,
            rtt_ms=rtts,
            burst_msgs_per_s=delivered / burst_s if burst_s > 0 else 0.0,
            burst_delivered=delivered,
            rekeys=_rekeys(ea, addr_b),
            after_rekey_delivered=len(inbox["bob"]) - base,
            events=events,
        )
    finally:
        ra.close()
        rb.close()


def print_channel(console: Console, r: ChannelReport) -> None:
    t = Table(title="1. Secure channel over real UDP on 127.0.0.1", show_header=False)
    t.add_column(style="bold")
    t.add_column()
    t.add_row("key exchange", "hybrid X-Wing (X25519 + ML-KEM-768), KEM-authenticated")
    t.add_row("certificates", "X.509-SVID, ML-DSA-65 signed by the mesh CA")
    t.add_row("transport", "ChaCha20-Poly1305, 64-bit counters, 4,096-packet replay window")
    t.add_row("CA init / node cert issue", f"{r.ca_init_ms:.1f} ms / {r.issue_ms:.1f} ms")
    t.add_row("node certificate", f"{r.cert_bytes:,} bytes DER")
    cached = sum(b for *_, b in handshake_wire_cost(r.cert_bytes)["cached"])
    t.add_row(
        "first-contact handshake",
        f"{r.handshake_ms:.1f} ms wall, {r.handshake_datagrams} datagrams, "
        f"{r.handshake_bytes:,} bytes (certificates exchanged and verified)",
    )
    t.add_row("later handshakes (cached cert)", f"{cached:,} bytes on the wire")
    med = statistics.median(r.rtt_ms)
    p99 = sorted(r.rtt_ms)[int(len(r.rtt_ms) * 0.99) - 1]
    t.add_row("ping-pong round trip", f"median {med:.3f} ms, p99 {p99:.3f} ms ({PINGS} rounds)")
    t.add_row(
        f"burst of {BURST} x {BURST_SIZE} B",
        f"{r.burst_delivered} delivered, {r.burst_msgs_per_s:,.0f} msg/s",
    )
    t.add_row("forced rekey", f"rekeys={r.rekeys}, {r.after_rekey_delivered}/10 delivered after it")
    console.print(t)
    for line in r.events:
        console.print(f"  [dim]{line}[/dim]")


def run(console: Console | None = None) -> None:
    console = console or Console()
    report = asyncio.run(secure_channel())
    print_channel(console, report)
    from x0tta6bl4.procdemo import print_procdemo, run_procdemo

    t0 = time.monotonic()
    mesh = run_procdemo(console)
    print_procdemo(console, mesh)
    console.print(
        f"mesh part took {time.monotonic() - t0:.1f} s; the simulated version at scale: "
        "x0t sim --help"
    )
