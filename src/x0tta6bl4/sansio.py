"""Inputs to and actions out of every sans-IO core.

A core is driven as ``core.handle(now, input) -> list[Action]``; it never touches a
socket, a clock or a sleep. ``now`` is monotonic seconds. The same cores run under
``node/`` (real UDP, real time) and under ``sim/`` (virtual time).

Timer keys are typed: each layer keys its timers with its own frozen dataclass or enum
(``ChannelTimer``, ``RouteTimer``, ``MeshTimer``, ``HealingTimer``), so a wrapping layer
routes a firing by the key's type and never decodes tuples by position.

Besides packets and timers a core takes ``RevocationListUpdated``: the runtime's newer
revocation list, which drops the revoked peers' sessions at once; and
``CertificateRenewed``: the node's own renewed certificate, presented from then on.

Layers above a core learn what happened through *control actions* (``SessionUp``,
``PeerMoved``, ``LinkUp``, ``LinkDown``); ``Event`` is the structured trace only and
nothing decides on an event's kind string. A runtime ignores control actions that reach it.

Addresses are opaque hashable values: ``(host, port)`` tuples on real UDP, node names
in the simulator, node names again for end-to-end sessions routed through the mesh.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, TypeAlias

Addr: TypeAlias = Hashable


# --- inputs -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Datagram:
    """Bytes that arrived from ``addr``."""

    addr: Addr
    data: bytes


@dataclass(frozen=True, slots=True)
class Timer:
    """A timer set earlier with ``SetTimer(at, key)`` has fired."""

    key: Hashable


@dataclass(frozen=True, slots=True)
class AppSend:
    """The application asks to send ``payload`` to ``dst`` (a peer or node name) on ``port``."""

    dst: str
    port: int
    payload: bytes


class RevocationCheck(Protocol):
    """What a core needs of a revocation list (``identity.crl.RevocationList`` is one;
    named structurally here because this module imports nothing of the project)."""

    @property
    def version(self) -> int: ...

    def is_revoked(self, serial: int) -> bool: ...


@dataclass(frozen=True, slots=True)
class RevocationListUpdated:
    """The runtime accepted a newer revocation list (signature and version checked by it,
    ``identity.crl.accept_newer``). From now on the core refuses certificates on it, and it
    drops at once the sessions, handshakes and queued payloads of peers whose certificate
    serial it lists; a list older than the one the core holds changes nothing."""

    crl: RevocationCheck


@dataclass(frozen=True, slots=True)
class CertificateRenewed:
    """The runtime holds a renewed certificate for this node (DER): same name, same static
    key (renewal without key rotation). From now on every handshake and every certificate
    answer presents it; sessions already made keep running (a valid certificate
    authenticated them) and their next rekey uses it. A certificate for another name or
    another static key, one that does not verify, or one expiring before the certificate
    in use is refused (counted ``renewal_refused``) and the old one stays."""

    cert_der: bytes


Input: TypeAlias = Datagram | Timer | AppSend | RevocationListUpdated | CertificateRenewed


# --- actions ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Put ``data`` on the wire to ``addr``."""

    addr: Addr
    data: bytes


@dataclass(frozen=True, slots=True)
class SendSegments:
    """Put ``data`` on the wire to ``addr`` as datagrams of ``size`` bytes each, in order,
    the last possibly shorter: the datagrams of one large message, built as one buffer so
    that nobody touches each datagram in Python. A runtime hands the buffer to the kernel
    in one segmentation-offload send; the simulator transmits the datagrams one by one, and
    shows its observers one ``Send`` apiece. The buffer may be a ``bytearray`` the core
    made for this action and no longer touches."""

    addr: Addr
    data: bytes | bytearray
    size: int

    def __post_init__(self) -> None:
        if self.size <= 0 or not self.data:
            raise ValueError(
                f"SendSegments needs data and a positive size (got {len(self.data)} bytes, "
                f"size {self.size})"
            )

    @property
    def count(self) -> int:
        """How many datagrams this is."""
        return -(-len(self.data) // self.size)

    def datagrams(self) -> list[bytes]:
        return segments(self.data, self.size)


def segments(data: bytes | bytearray | memoryview, size: int) -> list[bytes]:
    """The datagrams of ``size`` bytes laid back to back in ``data`` (the last may be
    shorter), each copied out: a ``SendSegments``, or a UDP GRO receive."""
    if size <= 0:
        raise ValueError(f"segment size {size} is not positive")
    view = memoryview(data)
    return [view[o : o + size].tobytes() for o in range(0, len(view), size)]


def outgoing(actions: Iterable[Any]) -> list[tuple[Addr, bytes]]:
    """``(addr, data)`` of every datagram ``actions`` put on the wire, in order."""
    out: list[tuple[Addr, bytes]] = []
    for a in actions:
        if type(a) is SendSegments:
            out += [(a.addr, d) for d in a.datagrams()]
        elif isinstance(a, Send):
            out.append((a.addr, a.data))
    return out


@dataclass(frozen=True, slots=True)
class Deliver:
    """Hand an authenticated payload from ``src`` (peer or node name) to the application."""

    src: str
    port: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class SetTimer:
    """Call back with ``Timer(key)`` at monotonic time ``at``; a later SetTimer with the
    same key replaces the earlier one."""

    at: float
    key: Hashable


@dataclass(frozen=True, slots=True)
class Event:
    """A structured trace record (qlog style): ``kind`` plus flat, JSON-able fields.

    Traces must be deterministic for a seeded simulation, so fields never carry random
    bytes (ciphertexts, ephemeral keys), only names, counts, sizes and reasons.
    """

    kind: str
    fields: dict[str, Any] = field(default_factory=dict)


# --- control actions: typed signals to the layer above ---------------------------


@dataclass(frozen=True, slots=True)
class SessionUp:
    """A secure-channel session with ``peer`` (its certificate name) at ``addr`` is
    authenticated and confirmed: both sides have proven their keys."""

    addr: Addr
    peer: str


@dataclass(frozen=True, slots=True)
class PeerMoved:
    """An authenticated packet from ``peer_name`` (its certificate name) came from
    ``new_addr``: its session now lives there, not at ``old_addr`` (NAT rebinding, a new
    uplink). The channel already sends there; the layer above re-keys what it holds by
    address."""

    old_addr: Addr
    new_addr: Addr
    peer_name: str


@dataclass(frozen=True, slots=True)
class LinkUp:
    """The mesh hears neighbour ``peer`` again (or for the first time)."""

    peer: str


class LinkDownReason(StrEnum):
    DEAD = "dead"  # hellos stopped arriving
    RESTARTED = "restarted"  # the neighbour came back with a new incarnation
    MTU_LOW = "mtu_low"  # alive, but full-size frames do not get through
    LEFT = "left"  # the neighbour said it is shutting down (an authenticated LEAVE)
    REVOKED = "revoked"  # a newer revocation list lists the neighbour's certificate


@dataclass(frozen=True, slots=True)
class LinkDown:
    """The mesh stopped using neighbour ``peer`` for ``reason``."""

    peer: str
    reason: LinkDownReason


Control: TypeAlias = SessionUp | PeerMoved | LinkUp | LinkDown
CONTROL_TYPES: tuple[type, ...] = (SessionUp, PeerMoved, LinkUp, LinkDown)

Action: TypeAlias = Send | SendSegments | Deliver | SetTimer | Event | Control


class Core(Protocol):
    """What every runtime drives (``node/`` on real UDP, ``sim/`` in virtual time)."""

    def start(self, now: float) -> Iterable[Action]: ...

    def handle(self, now: float, inp: Input) -> Iterable[Action]: ...
