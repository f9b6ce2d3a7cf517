"""A lossy in-memory datagram pipe between SecureEndpoints, run by the simulator's engine
in virtual time, plus helpers that build real certificates through the identity API (no
mocks)."""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from x0tta6bl4.channel.endpoint import SecureEndpoint
from x0tta6bl4.identity import CertificateAuthority, NodeCredentials, make_verifier
from x0tta6bl4.identity.types import CertVerifier
from x0tta6bl4.sansio import (
    CONTROL_TYPES,
    Action,
    Addr,
    Control,
    Deliver,
    Event,
    Input,
    Send,
    outgoing,
)
from x0tta6bl4.sim import LinkSpec, Simulator
from x0tta6bl4.sim.types import LOSS

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


def sends(actions: list[Action]) -> list[bytes]:
    """The datagrams ``actions`` put on the wire (a large payload's are one SendSegments)."""
    return [d for _, d in outgoing(actions)]


Tap = Callable[[Hashable, Hashable, bytes], bytes | None]

# No MTU on the pipe: the endpoints enforce their own datagram size (tests check it).
_NO_MTU = 1 << 16


class _Driven:
    """A SecureEndpoint as the simulator drives it: it needs no start-up. The control
    actions it returns (which the simulator ignores) are recorded in ``controls``."""

    __slots__ = ("_handle", "_name", "_record")

    def __init__(
        self, endpoint: SecureEndpoint, name: str, record: Callable[[str, list[Action]], None]
    ) -> None:
        self._handle: Callable[[float, Input], list[Action]] = endpoint.handle
        self._name = name
        self._record = record

    def handle(self, now: float, inp: Input) -> list[Action]:
        actions = self._handle(now, inp)
        self._record(self._name, actions)
        return actions

    def start(self, now: float) -> list[Action]:
        return []


class _Placeholder:
    """The simulator node that stands for a public address of a host behind a NAT (see
    ``Net.rebind``): the intercept forwards whatever is sent to it, so it gets nothing."""

    def start(self, now: float) -> list[Action]:
        return []

    def handle(self, now: float, inp: Input) -> list[Action]:  # pragma: no cover
        return []


class Net:
    """Endpoints by address, every pair joined by a simulator link; datagrams delayed,
    dropped, duplicated and reordered by seeded RNGs; timers honoured with
    replace-by-key semantics.

    Addresses are simulator node names, so they must be non-empty strings. ``add`` on an
    address already in use restarts it with the new endpoint: the old one's timers and
    the datagrams in flight to it are lost.
    """

    def __init__(
        self,
        seed: int = 0,
        loss: float = 0.0,
        dup: float = 0.0,
        latency: float = 0.01,
        jitter: float = 0.0,  # extra uniform delay: reorders datagrams
    ) -> None:
        self.seed = seed
        self.loss = loss
        self.dup = dup
        self.latency = latency
        self.jitter = jitter
        self.nodes: dict[Hashable, SecureEndpoint] = {}
        self.delivered: dict[Hashable, list[tuple[str, bytes]]] = {}
        self.events: list[tuple[float, Hashable, Event]] = []
        self.sent: list[tuple[float, Hashable, Hashable, bytes]] = []
        self.lost: list[tuple[float, Hashable, Hashable, bytes]] = []
        self.tap: Tap | None = None  # (src, dst, data) -> data to deliver, or None to drop
        self.controls: list[tuple[float, Hashable, Control]] = []  # SessionUp, PeerMoved, ...
        # NAT rebinding (``rebind``): host -> the address it is seen at, and back.
        self._public: dict[str, str] = {}
        self._private: dict[str, str] = {}
        self._forwarded: list[bytes] = []  # datagrams on their way from a public address
        self.sim = Simulator(seed, trace_drops=False)
        self._spec = LinkSpec(latency=latency, jitter=jitter, loss=loss, dup=dup, mtu=_NO_MTU)
        self.sim.on_action.append(self._observe)
        self.sim.on_drop.append(self._dropped)
        self.sim.net.set_intercept(self._intercept)

    @property
    def now(self) -> float:
        return self.sim.now

    @now.setter
    def now(self, t: float) -> None:
        # The clock only moves forward, through whatever is due on the way.
        self.sim.run(t)

    def add(self, addr: Hashable, endpoint: SecureEndpoint) -> SecureEndpoint:
        name = self._name(addr)
        self.nodes[addr] = endpoint
        self.delivered[addr] = []
        if self.sim.has_node(name):
            self.sim.crash(name)
            self.sim.restart(name, lambda _n, _rng, _now: _Driven(endpoint, name, self._record))
            return endpoint
        self._add_node(name, lambda _n, _rng, _now: _Driven(endpoint, name, self._record))
        return endpoint

    def _add_node(self, name: str, factory: Callable[[str, Any, float], Any]) -> None:
        self.sim.add_node(name, factory)
        for other in self.sim.nodes:
            if other != name:
                self.sim.add_link(other, name, self._spec)

    def rebind(self, host: Hashable, public: Hashable) -> None:
        """NAT rebinding: from now on what ``host`` sends arrives from ``public`` (its
        endpoint does not know), what is sent to ``public`` reaches ``host``, and what is
        sent to the address it had before is lost (the old mapping is gone)."""
        h, p = self._name(host), self._name(public)
        if p == h or p in self.nodes:
            raise ValueError(f"{p!r} cannot stand for {h!r}: it is an endpoint's own address")
        if not self.sim.has_node(p):
            self._add_node(p, lambda _n, _rng, _now: _Placeholder())
        old = self._public.get(h)
        if old is not None:
            del self._private[old]
        self._public[h] = p
        self._private[p] = h

    def apply(self, addr: Hashable, actions: Iterable[Action]) -> None:
        actions = list(actions)
        self._record(self._name(addr), actions)
        self.sim.apply(self._name(addr), actions)

    def inject(self, src: Hashable, dst: Hashable, data: bytes, delay: float = 0.0) -> None:
        self.sim.post_arrival(self.now + delay, self._name(dst), src, data)

    def send(self, addr: Hashable, dst: Hashable, payload: bytes) -> None:
        self.apply(addr, self.nodes[addr].send(self.now, dst, payload))

    def connect(self, addr: Hashable, dst: Hashable) -> None:
        self.apply(addr, self.nodes[addr].connect(self.now, dst))

    def run(self, until: float) -> None:
        self.sim.run(max(until, self.now))

    def kinds(self, addr: Hashable | None = None) -> list[str]:
        return [e.kind for _, a, e in self.events if addr is None or a == addr]

    def pending_timers(self, addr: Hashable) -> list[tuple[Hashable, float]]:
        return self.sim.timers(self._name(addr))

    # --- the simulator's hooks ----------------------------------------------------

    @staticmethod
    def _name(addr: Hashable) -> str:
        if not isinstance(addr, str):
            raise TypeError(f"Net addresses are simulator node names (str), got {addr!r}")
        return addr

    def _observe(self, t: float, node: str, a: Action) -> None:
        if type(a) is Send:
            self.sent.append((t, node, a.addr, a.data))
        elif type(a) is Deliver:
            self.delivered[node].append((a.src, a.payload))
        elif type(a) is Event:
            self.events.append((t, node, a))

    def _dropped(self, t: float, src: Addr, dst: Addr, data: bytes, reason: str) -> None:
        if reason == LOSS:
            self.lost.append((t, src, dst, data))

    def _record(self, node: str, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, CONTROL_TYPES):
                self.controls.append((self.now, node, a))  # type: ignore[arg-type]

    def _intercept(self, src: Addr, dst: str, data: bytes) -> bytes | None:
        if self._public:
            pub = self._public.get(src)  # type: ignore[call-overload]
            if pub is not None:  # from a host behind the NAT: seen from its public address
                self.sim.post_arrival(self.now, dst, pub, data)
                return None
            host = self._private.get(dst)
            if host is not None:  # to a public address: on to the host behind it
                self._forwarded.append(data)
                self.sim.post_arrival(self.now, host, src, data)
                return None
            if dst in self._public:  # to a host behind the NAT
                for i, d in enumerate(self._forwarded):
                    if d is data:
                        del self._forwarded[i]
                        break
                else:
                    return None  # sent to its old address: that mapping is gone
        return data if self.tap is None else self.tap(src, dst, data)
