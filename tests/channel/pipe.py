"""A lossy in-memory datagram pipe and a tiny deterministic event loop (virtual time),
plus helpers that build real certificates through the identity API (no mocks)."""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from x0tta6bl4.channel.endpoint import SecureEndpoint
from x0tta6bl4.identity import CertificateAuthority, NodeCredentials, make_verifier
from x0tta6bl4.identity.types import CertVerifier
from x0tta6bl4.sansio import Action, Datagram, Deliver, Event, Send, SetTimer, Timer

WALL = 1_800_000_000.0  # wall clock at virtual time 0 (2027-01-15)
TD = "x0tta6bl4.mesh"


@dataclass
class World:
    ca: CertificateAuthority
    creds: dict[str, NodeCredentials]
    verifier: CertVerifier

    def endpoint(self, name: str, seed: int = 0, **kw: Any) -> SecureEndpoint:
        """An endpoint built as the runtime builds it: secrets from the OS CSPRNG; only
        the (non-secret) retry jitter is seeded."""
        c = self.creds[name]
        kw.setdefault("wall_offset", WALL)
        kw.setdefault("trust_domain", TD)
        return SecureEndpoint(
            c.cert.der, c.static_private, self.verifier, jitter=random.Random(seed), **kw
        )


def make_world(directory: Path, names: Iterable[str]) -> World:
    ca = CertificateAuthority.init(directory / "ca", TD, now=WALL - 3600)
    creds = {n: NodeCredentials.generate_and_issue(ca, n, ["role:test"], WALL) for n in names}
    crl = ca.revocation_list()
    return World(ca, creds, make_verifier(ca.bundle(), lambda: crl))


Tap = Callable[[Hashable, Hashable, bytes], bytes | None]


@dataclass
class Net:
    """Endpoints by address; datagrams delayed, dropped, duplicated and reordered by a
    seeded RNG; timers honoured with replace-by-key semantics."""

    seed: int = 0
    loss: float = 0.0
    dup: float = 0.0
    latency: float = 0.01
    jitter: float = 0.0  # extra uniform delay: reorders datagrams
    nodes: dict[Hashable, SecureEndpoint] = field(default_factory=dict)
    now: float = 0.0
    delivered: dict[Hashable, list[tuple[str, bytes]]] = field(default_factory=dict)
    events: list[tuple[float, Hashable, Event]] = field(default_factory=list)
    sent: list[tuple[float, Hashable, Hashable, bytes]] = field(default_factory=list)
    lost: list[tuple[float, Hashable, Hashable, bytes]] = field(default_factory=list)
    tap: Tap | None = None  # (src, dst, data) -> data to deliver, or None to drop

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._heap: list[tuple[float, int, str, Hashable, Any]] = []
        self._seq = 0
        self._timers: dict[tuple[Hashable, Hashable], float] = {}

    def add(self, addr: Hashable, endpoint: SecureEndpoint) -> SecureEndpoint:
        self.nodes[addr] = endpoint
        self.delivered[addr] = []
        return endpoint

    def _push(self, at: float, kind: str, addr: Hashable, item: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, kind, addr, item))

    def apply(self, addr: Hashable, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Send):
                self.sent.append((self.now, addr, a.addr, a.data))
                if a.addr not in self.nodes:
                    continue
                copies = 1
                if self._rng.random() < self.loss:
                    copies = 0
                    self.lost.append((self.now, addr, a.addr, a.data))
                elif self._rng.random() < self.dup:
                    copies = 2
                for _ in range(copies):
                    delay = self.latency + self._rng.random() * self.jitter
                    self._push(self.now + delay, "dgram", a.addr, (addr, a.data))
            elif isinstance(a, SetTimer):
                self._timers[(addr, a.key)] = a.at
                self._push(a.at, "timer", addr, a.key)
            elif isinstance(a, Deliver):
                self.delivered[addr].append((a.src, a.payload))
            else:
                self.events.append((self.now, addr, a))

    def inject(self, src: Hashable, dst: Hashable, data: bytes, delay: float = 0.0) -> None:
        self._push(self.now + delay, "dgram", dst, (src, data))

    def send(self, addr: Hashable, dst: Hashable, payload: bytes) -> None:
        self.apply(addr, self.nodes[addr].send(self.now, dst, payload))

    def connect(self, addr: Hashable, dst: Hashable) -> None:
        self.apply(addr, self.nodes[addr].connect(self.now, dst))

    def run(self, until: float) -> None:
        while self._heap and self._heap[0][0] <= until:
            at, _, kind, addr, item = heapq.heappop(self._heap)
            self.now = max(self.now, at)
            node = self.nodes[addr]
            if kind == "timer":
                if self._timers.get((addr, item)) != at:
                    continue  # replaced by a later SetTimer with the same key
                del self._timers[(addr, item)]
                self.apply(addr, node.handle(self.now, Timer(item)))
            else:
                src, data = item
                if self.tap is not None:
                    data = self.tap(src, addr, data)
                    if data is None:
                        continue
                self.apply(addr, node.handle(self.now, Datagram(src, data)))
        self.now = max(self.now, until)

    def kinds(self, addr: Hashable | None = None) -> list[str]:
        return [e.kind for _, a, e in self.events if addr is None or a == addr]

    def pending_timers(self, addr: Hashable) -> list[tuple[Hashable, float]]:
        return [(k, at) for (a, k), at in self._timers.items() if a == addr]
