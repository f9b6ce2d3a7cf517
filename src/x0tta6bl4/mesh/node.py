"""The mesh node core: neighbour links, routing, forwarding and end-to-end sessions.

Sans-IO like the rest of the core (``channel/``, ``routing/``): ``handle(now, input) -> actions``.

Two secure endpoints share one node:

* ``links`` speaks the hybrid handshake to each configured neighbour over the datagram
  transport (addresses are ``(host, port)`` on real UDP, node names in the simulator).
  Every link payload is a *mesh frame*.
* ``e2e`` speaks the same handshake to far nodes, its datagrams carried in FORWARD frames
  hop by hop; its addresses are 8-byte node ids. Relays see ids, TTL and ciphertext only.

Mesh frames (inside a link session)::

    HELLO      type=1 | incarnation u32 | hello (linkquality, 20 bytes)
    ROUTING    type=2 | routing TLVs
    FORWARD    type=3 | ttl u16 | src id 8 | dst id 8 | e2e datagram
    PROBE      type=4 | probe id u32 | zero padding to the size being probed
    PROBE_ACK  type=5 | probe id u32 | probed size u16
    LEAVE      type=6 | incarnation u32
    NAMES      type=7 | { length u8 | node name }*

Routes carry 8-byte ids; ids are a hash of the node's name, so a name is self-certifying:
a NAMES frame can teach a node the name behind an id, never a wrong one. Each node sends
every name it knows to a new neighbour when the link comes up (before any route, so a
route is named from its first appearance) and floods names it learns for the first time;
each name crosses each link about once. Names are capped (MAX_NAMES).

A newer revocation list (``RevocationListUpdated``) goes to both endpoints, which drop
every session, handshake and queued payload of a peer it revokes; a neighbour whose link
session went is taken down at once (``LinkDown(peer, REVOKED)``, routes through it
retracted), and a revoked node cannot make a new session with either endpoint. Nor is it
dialled again: no hellos and no re-handshakes go to the address of a neighbour whose
certificate was revoked (the link endpoint holds it) until that node completes a
handshake of its own with a certificate that verifies (a new one), or the endpoint's hold
runs out (one look a minute at first, then ever rarer).

``CertificateRenewed`` (the node's own renewed certificate: same name, same static key)
goes to both endpoints, which present it from then on; sessions are kept, and the
certificate expiry healing watches moves to the new one.

A LEAVE says "this incarnation is shutting down": the neighbour takes the link out of
routing at once instead of after the dead interval. It is only believed inside the link
session and for the incarnation whose hellos the neighbour has seen, so neither a
stranger nor a replayed LEAVE of an earlier run can take a live link down.

Bulk data does not ride inside link sessions: an end-to-end DATA or DATA_FRAGMENT (already
sealed end to end, replay-protected by the destination) travels hop by hop as a RELAY
datagram, outside any link session::

    RELAY      version u8 | 12 u8 | 0 u16 | ttl u16 | src id 8 | dst id 8 | e2e datagram

A relay forwards it only if it comes from the current address of a live neighbour (one
whose link session is authenticated) and carries an end-to-end data message; it never
decrypts or re-encrypts it. So per hop a packet costs a table lookup, not two AEAD passes
(the link layer's seal and open), the figure that bounds a Python relay. What this gives
up: an observer *on a link* sees the two end ids of bulk datagrams (relays always did),
and a sender spoofing a neighbour's address can make relays carry garbage that the
destination drops as undecryptable (bounded by the TTL, never delivered). Handshakes,
routing, hellos and everything else stay inside link sessions. ``MeshConfig.relay_data``
turns this off (every e2e datagram in link-sealed FORWARD frames).

The TTL is a u16 because routing accepts any path whose metric is below INFINITY and
every link costs at least BASE_COST: no accepted path is longer than MAX_ROUTE_HOPS, so a
TTL of MAX_ROUTE_HOPS + 1 never kills a packet on a route routing offers.

Hellos are small, so a link whose path MTU shrank would still look perfect while every
full-size frame vanished. Each live link is probed (PLPMTUD's idea) with a padded frame
of the largest size the mesh sends; a link whose probes go unanswered while its hellos
arrive is taken out of routing (``link_mtu_low``) until a probe gets through again.

Application payloads travel as ``port u16 | payload`` inside an e2e session. Port 0 is
the mesh's own reachability probe (``probe``): ``kind u8 (1 request, 2 reply) | nonce
u32``, answered by the destination's mesh layer, so "traffic flows to X" is something a
node can verify end to end rather than infer from its routing table. The reply appends
``hops u16``: how many links the request crossed (from its FORWARD TTL), so ``x0t ping``
can show the path length.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import math
import random
import struct
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from x0tta6bl4.channel.constants import (
    DATA_FRAGMENT_HEADER_SIZE,
    DATA_OVERHEAD,
    DEFAULT_MAX_DATAGRAM,
    MSG_DATA,
    MSG_DATA_FRAGMENT,
    MSG_RELAY,
    PROTOCOL_VERSION,
)
from x0tta6bl4.channel.endpoint import SecureEndpoint
from x0tta6bl4.channel.timers import ChannelTimer
from x0tta6bl4.crypto.entropy import SYSTEM_SECRETS, SecretSource
from x0tta6bl4.crypto.hybrid import HybridPrivateKey
from x0tta6bl4.errors import DecodeError, IdentityError, MessageTooLarge, ProtocolError
from x0tta6bl4.identity.cert import validate_name
from x0tta6bl4.identity.types import CertVerifier, VerifiedIdentity
from x0tta6bl4.mesh.observe import LinkObservation, NodeObservation, RouteObservation
from x0tta6bl4.mesh.routewait import RouteWait
from x0tta6bl4.routing import babel as rt
from x0tta6bl4.routing import linkquality as lq
from x0tta6bl4.sansio import (
    Action,
    Addr,
    AppSend,
    CertificateRenewed,
    Datagram,
    Deliver,
    Event,
    Input,
    LinkDown,
    LinkDownReason,
    LinkUp,
    PeerMoved,
    RevocationListUpdated,
    Send,
    SendSegments,
    SessionUp,
    SetTimer,
    Timer,
    segments,
)

NodeId = bytes

FRAME_HELLO: Final = 1
FRAME_ROUTING: Final = 2
FRAME_FORWARD: Final = 3
FRAME_PROBE: Final = 4
FRAME_PROBE_ACK: Final = 5
FRAME_LEAVE: Final = 6
FRAME_NAMES: Final = 7
MAX_NAMES: Final = 1 << 16
"""Names a node learns; more are ignored (ids still route, shown as ``#`` + hex)."""
_FWD = struct.Struct(">BH8s8s")  # type, ttl, src, dst
_RELAY = struct.Struct(">4sH8s8s")  # channel-style header, ttl, src, dst
_RELAY_HDR: Final = bytes((PROTOCOL_VERSION, MSG_RELAY, 0, 0))
_E2E_DATA_TYPES: Final = frozenset((MSG_DATA, MSG_DATA_FRAGMENT))
RELAY_OVERHEAD: Final = _RELAY.size  # 22
_U16 = struct.Struct(">H")


# The shortest end-to-end datagram a relay carries: a message's last fragment may hold a
# single byte, fewer than a whole DATA message's header and tag. The destination checks
# the rest.
_RELAY_DATA_MIN: Final = RELAY_OVERHEAD + min(DATA_OVERHEAD, DATA_FRAGMENT_HEADER_SIZE + 1)
_RELAY_DATA_TYPE_AT: Final = RELAY_OVERHEAD + 1  # the inner message's type byte
# Header bytes every datagram of a batch must share to be taken together: RELAY header,
# TTL, both ends, and the inner message's version and type.
_RELAY_UNIFORM: Final = range(_RELAY_DATA_TYPE_AT + 1)
_BYTE: Final = tuple(bytes((i,)) for i in range(256))


def _is_e2e_data(d: bytes) -> bool:
    """An end-to-end datagram of ours that a relay may carry unopened: DATA or
    DATA_FRAGMENT (handshake messages go in link-sealed FORWARD frames)."""
    return d[1] in _E2E_DATA_TYPES and d[0] == PROTOCOL_VERSION


def _relays_e2e_data(d: bytes) -> bool:
    """A RELAY datagram carrying an end-to-end DATA or DATA_FRAGMENT, long enough for one."""
    return (
        len(d) >= _RELAY_DATA_MIN
        and d[:4] == _RELAY_HDR
        and d[_RELAY_DATA_TYPE_AT] in _E2E_DATA_TYPES
    )


_BOOT = struct.Struct(">I")  # a hello frame carries the sender's incarnation first
_PROBE = struct.Struct(">BI")  # type, probe id
_PROBE_ACK = struct.Struct(">BIH")  # type, probe id, probed size
_ECHO = struct.Struct(">HBI")  # port 0, kind, nonce
_ECHO_HOPS = struct.Struct(">H")  # appended to a reply: links the request crossed
_ECHO_REQUEST: Final = 1
_ECHO_REPLY: Final = 2
ECHO_PORT: Final = 0
ECHO_NONCES: Final = 4
"""Outstanding probes per destination whose answers still count."""
DROP_COUNTERS: Final = frozenset(
    {
        "app_send_refused",
        "bad_echo",
        "bad_forward",
        "bad_hello",
        "bad_leave",
        "bad_names",
        "bad_probe",
        "bad_relay",
        "bad_routing",
        "e2e_short_payload",
        "hello_after_leave",
        "link_send_failed",
        "no_route",
        "relay_from_stranger",
        "routing_after_leave",
        "stale_echo",
        "stale_leave",
        "ttl_expired",
        "unknown_frame",
    }
)
"""The ``counters`` that count a dropped packet or frame (the others count events)."""
UNNAMED_PREFIX: Final = "#"
MAX_VERIFIED: Final = 1024
"""Destinations whose last verified delivery time a node remembers (oldest forgotten)."""
FORWARD_OVERHEAD: Final = _FWD.size  # 19
PORT_OVERHEAD: Final = 2
MAX_ROUTE_HOPS: Final = (rt.INFINITY - 1) // lq.BASE_COST
"""The longest path routing can accept: each hop costs at least BASE_COST (682)."""
DEFAULT_TTL: Final = MAX_ROUTE_HOPS + 1
MTU_PROBE_INTERVAL: Final = 10.0
"""Seconds between path-MTU probes on a live link (a full-size frame each way: at the
default 1,280-byte datagram about 130 B/s per link direction)."""
MTU_PROBE_MISSES: Final = 3
"""Fewest unanswered probes in a row, with hellos still heard, that mark a link's MTU
low; more on a lossy link (see ``_probe_misses_needed``)."""
MTU_PROBE_TIMEOUT: Final = 0.3
"""Seconds (at least; 4 RTTs on a slow link) to wait for a probe's ack before a retry."""
DEAD_HELLO_INTERVAL: Final = 1.0
"""Hellos keep going to a dead neighbour's old session at this slower pace, so a link that
comes back within the session lifetime is noticed without a new handshake."""
COST_REFRESH_INTERVAL: Final = 0.3
"""Seconds between link-cost refreshes pushed into the router from received hellos."""
HELLO_JITTER: Final = 0.1
"""Fraction of the hello interval drawn at random each period, to desynchronise nodes."""
SUSPECT_SILENCE: Final = 1.2
"""Hello intervals of silence (a hello is overdue) after which a live neighbour is asked
directly whether it is there: a burst of small probes, answered at once. The check runs
on its own timer at that moment, not on the next hello tick, which could be most of an
interval later."""
FAST_DEAD_SILENCE: Final = 1.6
"""Hello intervals of silence after which a neighbour that answered none of the probes of
a burst sent since its last hello is dead, before ``DEAD_INTERVAL``. Hellos leave at
most one interval apart, so by then exactly one hello is missing."""
LIVENESS_PROBES: Final = 6
"""Probes per burst: a false death needs a hello and every probe or its answer lost (at
2 % loss per direction about 0.02 x 4e-9; a burst of 3 with two hellos missed, as before
the silence was cut from 2.5 intervals to 1.6, was 4e-4 x 6e-5)."""
DAMPED_COST: Final = 16384
"""What a damped (flapping) link adds to its cost while it is held down: more than any
path of undamped links, so it carries only routes that have no other way. Holding it
out of routing altogether once left a region of a 100-node mesh with no route for 7 s
after a relay kill, until the hold-down ended. A path over four damped links is
unreachable (``INFINITY``)."""
FAST_DEAD_MAX_LOSS: Final = 0.25
"""Liveness probes speak for a link whose hellos got through before it fell silent (at
most this fraction of the last 16 missed). On a link already losing more, silence is
no news and only ``DEAD_INTERVAL`` kills it, as before: a gray failure is not cut short
before the healing layer has seen the loss it is (nor killed by loss alone more often)."""
LIVENESS_TIMEOUT_MIN: Final = 0.05
"""Seconds (at least; two RTTs and 25 ms on a slower link) to wait for a probe's answer."""


class MeshTimer(enum.StrEnum):
    HELLO = "mesh.hello"
    LIVENESS = "mesh.liveness"
    ROUTE_WAIT = "mesh.route_wait"


_LINK: Final = "x0t.link"  # timer namespaces of the two endpoints
_E2E: Final = "x0t.e2e"
_TRACE_PREFIX: Final = {_LINK: "link", _E2E: "e2e"}  # trace kinds stay "link.*", "e2e.*"
_ROUTING_PREFIX: Final = bytes((FRAME_ROUTING,))


@functools.lru_cache(maxsize=4096)
def node_id(name: str) -> NodeId:
    """A node's 8-byte routing id, derived from its certificate name (cached: it is on
    the per-packet path)."""
    return hashlib.sha256(b"x0tta6bl4/node-id/v1\x00" + name.encode()).digest()[:8]


@dataclass(frozen=True, slots=True)
class MeshConfig:
    hello_interval: float = lq.HELLO_INTERVAL
    update_interval: float = rt.UPDATE_INTERVAL
    max_datagram: int = DEFAULT_MAX_DATAGRAM
    ttl: int = DEFAULT_TTL
    mtu_probe_interval: float = MTU_PROBE_INTERVAL
    relay_data: bool = True  # e2e data in RELAY datagrams, not link-sealed FORWARD frames

    def __post_init__(self) -> None:
        if not 1 <= self.ttl <= 0xFFFF:
            raise ValueError(f"MeshConfig.ttl must be in 1..65535, got {self.ttl}")
        if not self.mtu_probe_interval > 0:
            raise ValueError("MeshConfig.mtu_probe_interval must be > 0 seconds")


class _Neighbour:
    __slots__ = (
        "addr",
        "alive",
        "cost_due",
        "damped_until",
        "est",
        "left_boot",
        "live_probe_at",
        "live_probe_id",
        "mtu_low",
        "name",
        "next_hello",
        "next_probe",
        "peer_boot",
        "probe_id",
        "probe_misses",
    )

    def __init__(self, name: str, addr: Addr, est: lq.LinkEstimator) -> None:
        self.name = name
        self.addr = addr
        self.est = est
        self.alive = False
        self.damped_until: float | None = None
        self.next_hello = 0.0
        self.cost_due = 0.0  # next time a hello may refresh the router's cost
        self.peer_boot: int | None = None  # the neighbour's incarnation, from its hellos
        self.left_boot: int | None = None  # an incarnation that said LEAVE: its hellos are stale
        self.next_probe = 0.0
        self.probe_id: int | None = None  # the unanswered probe, if any
        self.probe_misses = 0
        self.mtu_low = False  # full-size frames do not get through: out of routing
        self.live_probe_id: int | None = None  # the unanswered liveness burst, if any
        self.live_probe_at = -math.inf  # when it was sent


class MeshNode:
    """One mesh node. Implements ``observe.HealableNode``."""

    def __init__(
        self,
        name: str,
        cert_der: bytes,
        static_private: HybridPrivateKey,
        verifier: CertVerifier,
        *,
        rng: random.Random,
        wall_offset: float,
        trust_domain: str,
        cert_not_after: float,
        secrets: SecretSource = SYSTEM_SECRETS,
        neighbours: Iterable[Addr] = (),
        directory: Iterable[str] = (),
        config: MeshConfig | None = None,
        seqno: int | None = None,
    ) -> None:
        self.name = name
        self.id = node_id(name)
        self.config = cfg = config or MeshConfig()
        self._rng = rng
        self._wall_offset = wall_offset
        self._cert_not_after = cert_not_after
        endpoint = functools.partial(
            SecureEndpoint,
            cert_der,
            static_private,
            verifier,
            secrets=secrets,
            jitter=rng,
            wall_offset=wall_offset,
            trust_domain=trust_domain,
        )
        self.links = endpoint(max_datagram=cfg.max_datagram, timer_namespace=_LINK)
        # e2e datagrams ride in FORWARD frames inside link sessions.
        self.e2e_max_datagram = cfg.max_datagram - DATA_OVERHEAD - FORWARD_OVERHEAD
        self.e2e = endpoint(
            max_datagram=self.e2e_max_datagram,
            accept_identity=self._e2e_identity_ok,
            timer_namespace=_E2E,
            # a large payload's fragments come in one buffer, our RELAY header before each
            segment_prefix=self._relay_header,
        )
        # The e2e channel seals a payload once and splits it into datagrams itself.
        self.max_app_payload = self.e2e.max_payload - PORT_OVERHEAD
        self._link_payload_max = cfg.max_datagram - DATA_OVERHEAD
        self.router = rt.Router(self.id, rng, update_interval=cfg.update_interval, seqno=seqno)
        self._configured: list[Addr] = list(neighbours)
        self._nbrs: dict[str, _Neighbour] = {}
        self._live_due: float | None = None  # the LIVENESS timer, when set
        self._next_hello_tick: float | None = None
        self._route_wait = RouteWait()  # packets that found no route, until one appears
        self._route_wait_due: float | None = None  # its expiry timer, when set
        self._releasing = False
        self._by_addr: dict[Addr, _Neighbour] = {}  # neighbours by their link address
        self._relay_data = cfg.relay_data
        self._names: dict[NodeId, str] = {self.id: name}
        for n in directory:
            self._names[node_id(n)] = n
        # A configured directory is shared knowledge (the simulator's): its names, ours
        # included, need no NAMES frames.
        self._directory = frozenset(self._names) if len(self._names) > 1 else frozenset()
        self.counters: dict[str, int] = {}
        # A fresh random incarnation per start lets neighbours tell a restart from a
        # link that merely went quiet.
        self.boot_id = rng.getrandbits(32)  # public in every hello, not secret: may be seeded
        self._hello_prefix = bytes((FRAME_HELLO,)) + _BOOT.pack(self.boot_id)
        self._routes_cache: dict[str, RouteObservation] | None = None
        # destination -> nonces of its last few probes: a repeat probe must not make the
        # answer to the one before it stale (that answer may be the first to get through)
        self._echo_pending: dict[NodeId, tuple[int, ...]] = {}
        self._verified: dict[NodeId, float] = {}  # destination -> when an echo came back
        self._echo_sent: dict[int, float] = {}  # nonce -> when its request went out
        self.echo_results: dict[str, tuple[float, int]] = {}  # dst -> (rtt, hops) of the last
        self._rx_ttl = 0  # TTL of the FORWARD frame being opened, for echo hop counts
        self._names_news: list[str] = []  # names learned since the last flood
        self._relay_headers: dict[Addr, bytes] = {}  # destination id -> our RELAY header

    # -- helpers --------------------------------------------------------------------

    def _count(self, reason: str) -> None:
        self.counters[reason] = self.counters.get(reason, 0) + 1

    def _add(self, reason: str, n: int) -> None:
        if n:
            self.counters[reason] = self.counters.get(reason, 0) + n

    def name_of(self, nid: NodeId) -> str:
        """The node's name, or ``#`` and its id in hex while the name is unknown (routes
        carry ids; a name is learned from a certificate). ``#`` is never in a name."""
        return self._names.get(nid) or UNNAMED_PREFIX + nid.hex()

    def id_of(self, dst: str) -> NodeId:
        """The routing id of a node name or of a ``#``-prefixed id from ``name_of``."""
        if dst.startswith(UNNAMED_PREFIX):
            try:
                nid = bytes.fromhex(dst[1:])
            except ValueError:
                nid = b""
            if len(nid) != len(self.id):
                raise ValueError(f"{dst!r} is not '#' and a {2 * len(self.id)}-digit node id")
            return nid
        return node_id(dst)

    def _learn_name(self, nid: NodeId, name: str) -> None:
        if self._names.get(nid) != name and len(self._names) < MAX_NAMES:
            self._names[nid] = name
            self._routes_cache = None  # the route view names it from now on
            self._names_news.append(name)

    def _names_frames(self, names: Iterable[str]) -> list[bytes]:
        frames: list[bytes] = []
        frame = bytearray((FRAME_NAMES,))
        for n in names:
            raw = n.encode()
            if len(frame) + 1 + len(raw) > self._link_payload_max:
                frames.append(bytes(frame))
                frame = bytearray((FRAME_NAMES,))
            frame += bytes((len(raw),)) + raw
        if len(frame) > 1:
            frames.append(bytes(frame))
        return frames

    def _send_names(
        self, now: float, nb: _Neighbour, names: Iterable[str], out: list[Action]
    ) -> None:
        for frame in self._names_frames(names):
            self._link_send(now, nb.addr, frame, out)

    def _on_names(self, frame: bytes) -> None:
        pos, end = 1, len(frame)
        while pos < end:
            ln = frame[pos]
            raw = frame[pos + 1 : pos + 1 + ln]
            pos += 1 + ln
            if len(raw) != ln or not raw:
                self._count("bad_names")
                return
            try:
                name = validate_name(raw.decode("ascii"))
            except (UnicodeDecodeError, IdentityError):
                self._count("bad_names")
                return
            nid = node_id(name)
            if nid not in self._names:  # a name, once known, is never replaced
                self._learn_name(nid, name)

    def _e2e_identity_ok(self, addr: Hashable, identity: VerifiedIdentity) -> bool:
        # Whoever answers for node id X must hold X's certificate, or a relay could
        # terminate the session itself.
        return node_id(identity.name) == addr

    # -- sans-IO entry points ---------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        out: list[Action] = []
        for addr in self._configured:
            self.links.add_peer(addr)
            self._wrap(now, _LINK, self.links.connect(now, addr), out)
        self._next_hello_tick = now + self._hello_period()
        out.append(SetTimer(self._next_hello_tick, MeshTimer.HELLO))
        self._emit_routing(now, self.router.start(now), out)
        return out

    def handle(self, now: float, inp: Input) -> list[Action]:
        out: list[Action] = []
        if type(inp) is Datagram:
            data = inp.data
            if data[:4] == _RELAY_HDR:
                self._on_relay(now, inp.addr, data, out)
                return out
            self._wrap(now, _LINK, self.links.handle(now, inp), out)
        elif type(inp) is Timer:
            key = inp.key
            if type(key) is ChannelTimer:
                if key.namespace == _LINK:
                    self._wrap(now, _LINK, self.links.handle(now, inp), out)
                elif key.namespace == _E2E:
                    self._wrap(now, _E2E, self.e2e.handle(now, inp), out)
            elif key is MeshTimer.HELLO:
                self._hello_tick(now, out)
            elif key is MeshTimer.LIVENESS:
                self._liveness_check(now, out)
            elif key is MeshTimer.ROUTE_WAIT:
                self._route_wait_due = None
                self._add("no_route", self._route_wait.expire(now))
                self._arm_route_wait(out)
            elif key is rt.ROUTE_TIMER:
                self._emit_routing(now, self.router.handle_timer(now), out)
        elif type(inp) is AppSend:
            try:
                self._app_send(now, inp.dst, inp.port, inp.payload, out)
            except (ProtocolError, ValueError) as exc:
                self._count("app_send_refused")
                out.append(Event("app_send_refused", {"dst": inp.dst, "reason": str(exc)}))
        elif type(inp) is RevocationListUpdated:
            self._on_revocation_list(now, inp, out)
        elif type(inp) is CertificateRenewed:
            self._on_certificate_renewed(now, inp, out)
        return out

    def _on_certificate_renewed(
        self, now: float, inp: CertificateRenewed, out: list[Action]
    ) -> None:
        """Our renewed certificate: both endpoints check it and present it from now on
        (or refuse it, and keep the old one); healing sees the new expiry."""
        before = self.links.cert_der
        self._wrap(now, _LINK, self.links.handle(now, inp), out)
        self._wrap(now, _E2E, self.e2e.handle(now, inp), out)
        if self.links.cert_der == inp.cert_der != before:
            self._count("certificate_renewed")
            self._cert_not_after = self.links.cert_not_after

    def _on_revocation_list(
        self, now: float, inp: RevocationListUpdated, out: list[Action]
    ) -> None:
        """A newer revocation list: both endpoints drop the revoked peers' sessions, and a
        neighbour whose link session went with them is taken down like any other link."""
        crl = inp.crl
        held = self.links.revocation_list
        revoked: list[_Neighbour] = []
        if held is None or crl.version >= held.version:
            for nb in self._nbrs.values():
                info = self.links.peer(nb.addr)  # asked before the endpoint forgets it
                ident = info.identity if info is not None else None
                if ident is not None and ident.name == nb.name and crl.is_revoked(ident.serial):
                    revoked.append(nb)
        self._wrap(now, _LINK, self.links.handle(now, inp), out)
        self._wrap(now, _E2E, self.e2e.handle(now, inp), out)
        for nb in revoked:
            self._count("neighbour_revoked")
            out.append(Event("neighbour_revoked", {"peer": nb.name}))
            if nb.alive:
                nb.alive = False
                out.append(LinkDown(nb.name, LinkDownReason.REVOKED))
            self._emit_routing(now, self.router.remove_neighbour(now, nb.name), out)

    def handle_segments(self, now: float, addr: Addr, data: bytes, size: int) -> list[Action]:
        """Datagrams of ``size`` bytes laid back to back in ``data`` (the last may be
        shorter) from ``addr``, received together (a UDP GRO batch). When they are RELAY
        datagrams of one flow, with one header (usually one message's fragments), from a
        live neighbour, they are checked once, one column of header bytes at a time, and
        forwarded in one buffer with the TTL rewritten in place, or handed to the e2e
        endpoint together (which opens a whole large payload at once). Anything else goes
        through ``handle`` one by one. The outcome is what ``handle`` would give for each
        datagram in turn; the work no longer grows with their number."""
        if size <= 0:
            raise ValueError(f"segment size {size} is not positive")
        total = len(data)
        count = -(-total // size)
        if count > 1 and total - (count - 1) * size >= _RELAY_DATA_MIN and _relays_e2e_data(data):
            nb = self._by_addr.get(addr)
            if (
                nb is not None
                and nb.alive
                and all(data[k::size] == data[k : k + 1] * count for k in _RELAY_UNIFORM)
            ):
                out: list[Action] = []
                src, dst = data[6:14], data[14:RELAY_OVERHEAD]
                (ttl,) = _U16.unpack_from(data, 4)
                if dst == self.id:
                    self._rx_ttl = ttl
                    # the e2e endpoint reads past our header: nothing is copied per datagram
                    opened = self.e2e.handle_segments(now, src, data, size, RELAY_OVERHEAD)
                    self._wrap(now, _E2E, opened, out)
                    return out
                if ttl <= 1:
                    self.counters["ttl_expired"] = self.counters.get("ttl_expired", 0) + count
                    return out
                nxt = self._live_next_hop(dst)
                fwd = bytearray(data)
                hi, lo = _U16.pack(ttl - 1)
                fwd[4::size] = _BYTE[hi] * count
                fwd[5::size] = _BYTE[lo] * count
                if nxt is None:
                    self._wait_for_route(now, dst, bytes(fwd), size, count, False, out)
                    return out
                out.append(SendSegments(nxt.addr, fwd, size))
                self.counters["relayed"] = self.counters.get("relayed", 0) + count
                return out
        out = []
        for d in segments(data, size):
            out += self.handle(now, Datagram(addr, d))
        return out

    def send_app(self, now: float, dst: str, port: int, payload: bytes) -> list[Action]:
        """Send ``payload`` to node ``dst``; raises MessageTooLarge past the path MTU."""
        out: list[Action] = []
        self._app_send(now, dst, port, payload, out)
        return out

    def _app_send(self, now: float, dst: str, port: int, payload: bytes, out: list[Action]) -> None:
        if len(payload) > self.max_app_payload:
            raise MessageTooLarge(len(payload), self.max_app_payload)
        if not 1 <= port <= 0xFFFF:
            raise ValueError(f"port {port} out of range 1..65535 (0 is the mesh's probe)")
        dst_id = self.id_of(dst)
        if not dst.startswith(UNNAMED_PREFIX):
            self._learn_name(dst_id, dst)
        if dst_id == self.id:
            out.append(Deliver(self.name, port, payload))
            return
        self.e2e.add_peer(dst_id)
        self._wrap(now, _E2E, self.e2e.send(now, dst_id, port.to_bytes(2, "big") + payload), out)

    # -- endpoint action plumbing ---------------------------------------------------------

    def _wrap(self, now: float, layer: str, actions: list[Action], out: list[Action]) -> None:
        a: Any  # dispatched on the exact type; mypy cannot narrow through `t`
        for a in actions:
            t = type(a)
            if t is Send:
                if layer == _LINK:
                    out.append(a)
                else:
                    self._forward_own(now, a.addr, a.data, out)
            elif t is SendSegments:
                if layer == _LINK:
                    out.append(a)
                else:
                    self._forward_own_segments(now, a, out)
            elif t is Deliver:
                if layer == _LINK:
                    self._on_frame(now, a.src, a.payload, out)
                else:
                    self._on_e2e_deliver(now, a, out)
            elif t is SetTimer:
                out.append(a)  # typed ChannelTimer keys carry their endpoint's namespace
            elif t is Event:
                out.append(Event(f"{_TRACE_PREFIX[layer]}.{a.kind}", a.fields))
            elif t is SessionUp and layer == _LINK:
                self._on_link_up(now, a.peer, a.addr, out)
            elif t is PeerMoved and layer == _LINK:
                nb = self._nbrs.get(a.peer_name)
                if nb is not None and nb.addr == a.old_addr:
                    self._set_addr(nb, a.new_addr)  # roaming: frames follow the session
                out.append(a)

    def _on_e2e_deliver(self, now: float, d: Deliver, out: list[Action]) -> None:
        # d.src is the verified certificate's name, and the e2e endpoint checked that
        # node_id(name) is the address it answers for.
        self._learn_name(node_id(d.src), d.src)
        if len(d.payload) < PORT_OVERHEAD:
            self._count("e2e_short_payload")
            return
        port = int.from_bytes(d.payload[:2], "big")
        if port == ECHO_PORT:
            self._on_echo(now, d.src, d.payload, out)
            return
        out.append(Deliver(d.src, port, d.payload[2:]))

    def _on_echo(self, now: float, src: str, payload: bytes, out: list[Action]) -> None:
        size = len(payload)
        if size < _ECHO.size:
            self._count("bad_echo")
            return
        _, kind, nonce = _ECHO.unpack_from(payload)
        if kind == _ECHO_REQUEST and size == _ECHO.size:
            hops = max(0, self.config.ttl - self._rx_ttl) + 1
            reply = _ECHO.pack(ECHO_PORT, _ECHO_REPLY, nonce) + _ECHO_HOPS.pack(min(hops, 0xFFFF))
            self._wrap(now, _E2E, self.e2e.send(now, node_id(src), reply), out)
        elif (
            kind == _ECHO_REPLY
            and size == _ECHO.size + _ECHO_HOPS.size
            and nonce in self._echo_pending.get(sid := node_id(src), ())
        ):
            del self._echo_pending[sid]
            self._verified.pop(sid, None)
            self._verified[sid] = now
            if len(self._verified) > MAX_VERIFIED:
                del self._verified[next(iter(self._verified))]
            sent = self._echo_sent.pop(nonce, None)
            (hops,) = _ECHO_HOPS.unpack_from(payload, _ECHO.size)
            fields: dict[str, object] = {"dst": src, "hops": hops}
            if sent is not None:
                self.echo_results[src] = (now - sent, hops)
                fields["rtt"] = round(now - sent, 6)
            out.append(Event("probe_ok", fields))
        else:
            self._count("stale_echo")

    # -- links and hellos -------------------------------------------------------------------

    def _on_link_up(self, now: float, peer: str, addr: Addr, out: list[Action]) -> None:
        nb = self._nbrs.get(peer)
        if nb is None:
            nb = _Neighbour(
                peer, addr, lq.LinkEstimator(self._rng, hello_interval=self.config.hello_interval)
            )
            self._nbrs[peer] = nb
            self._learn_name(node_id(peer), peer)
        self._set_addr(nb, addr)
        # Every name we know, before any route can reach the neighbour.
        names = self._names
        self._send_names(now, nb, [names[i] for i in names if i not in self._directory], out)
        # Hello at once: the link's cost is known after one exchange each way.
        self._send_hello(now, nb, out)
        nb.next_probe = now + self.config.hello_interval * 2  # once hellos flow

    def _set_addr(self, nb: _Neighbour, addr: Addr) -> None:
        if self._by_addr.get(nb.addr) is nb:
            del self._by_addr[nb.addr]
        nb.addr = addr
        self._by_addr[addr] = nb

    def _hello_period(self) -> float:
        iv = self.config.hello_interval
        return iv * (1.0 - HELLO_JITTER * self._rng.random())

    def _send_hello(self, now: float, nb: _Neighbour, out: list[Action]) -> None:
        frame = self._hello_prefix + nb.est.hello_bytes(now)
        self._link_send(now, nb.addr, frame, out)

    def _link_send(self, now: float, addr: Addr, frame: bytes, out: list[Action]) -> None:
        try:
            acts = self.links.send(now, addr, frame)
        except ProtocolError:
            self._count("link_send_failed")
            return
        self._wrap(now, _LINK, acts, out)

    def _hello_tick(self, now: float, out: list[Action]) -> None:
        if self._names_news:
            news, self._names_news = self._names_news, []
            for nb in self._nbrs.values():
                if nb.alive:
                    self._send_names(now, nb, news, out)
        suspect_next: float | None = None
        for nb in list(self._nbrs.values()):
            if nb.alive:
                if nb.est.is_dead(now):
                    self._neighbour_dead(now, nb, out)
                else:
                    at = self._maybe_suspect(now, nb, out)
                    if at is not None and (suspect_next is None or at < suspect_next):
                        suspect_next = at
            if nb.alive or now >= nb.next_hello:
                if nb.alive or not self.links.revoked_addr(nb.addr, now):
                    self._send_hello(now, nb, out)
                if not nb.alive:
                    nb.next_hello = now + DEAD_HELLO_INTERVAL
            if nb.damped_until is not None and now >= nb.damped_until:
                nb.damped_until = None
                self._update_cost(now, nb, out)
            if nb.alive and now >= nb.next_probe:
                self._probe_tick(now, nb, out)
        self._next_hello_tick = now + self._hello_period()
        out.append(SetTimer(self._next_hello_tick, MeshTimer.HELLO))
        self._arm_suspicion(suspect_next, out)

    def _neighbour_dead(self, now: float, nb: _Neighbour, out: list[Action]) -> None:
        nb.alive = False
        nb.live_probe_id = None
        out.append(LinkDown(nb.name, LinkDownReason.DEAD))
        out.append(Event("neighbour_dead", {"peer": nb.name}))
        self._emit_routing(now, self.router.remove_neighbour(now, nb.name), out)

    # -- liveness probes ---------------------------------------------------------------
    # Silence of DEAD_INTERVAL alone would cost every failover 0.4-0.5 s before routing
    # even hears of it. A hello that is overdue makes us ask the neighbour directly; one
    # that stays silent and answers no probe of the burst is dead after FAST_DEAD_SILENCE
    # hello intervals. A burst answered, or a hello heard since it left, clears it.

    def _liveness_due(self, nb: _Neighbour, heard: float) -> float:
        """When a neighbour last heard at ``heard`` is dead if its burst goes unanswered."""
        timeout = max(LIVENESS_TIMEOUT_MIN, 2.0 * (nb.est.rtt or 0.0) + 0.025)
        return max(
            nb.live_probe_at + timeout, heard + FAST_DEAD_SILENCE * self.config.hello_interval
        )

    def _arm_liveness(self, at: float, out: list[Action]) -> None:
        """Make the LIVENESS timer fire by ``at`` (it holds the earliest of its uses)."""
        if self._live_due is None or at < self._live_due:
            self._live_due = at
            out.append(SetTimer(at, MeshTimer.LIVENESS))

    def _suspect_at(self, nb: _Neighbour) -> float | None:
        """When a live neighbour with no burst out would become suspect (its loss is
        checked only then: it is on every hello tick's path)."""
        heard = nb.est.last_heard
        if heard is None:
            return None
        at = heard + SUSPECT_SILENCE * self.config.hello_interval
        if nb.live_probe_at >= heard:  # a burst went out since the last hello
            if nb.live_probe_id is not None:
                return None  # and is still out
            at = max(at, nb.live_probe_at + self.config.hello_interval)  # and was answered
        return at

    def _maybe_suspect(self, now: float, nb: _Neighbour, out: list[Action]) -> float | None:
        """Send a burst if ``nb`` is due for suspicion; else when it will be, if it can."""
        at = self._suspect_at(nb)
        if at is None:
            return None
        if now < at:
            return at
        if nb.est.heard_loss > FAST_DEAD_MAX_LOSS:
            return None
        heard = nb.est.last_heard
        assert heard is not None
        nb.live_probe_id = self._rng.getrandbits(32)  # matches answers; not secret
        nb.live_probe_at = now
        frame = _PROBE.pack(FRAME_PROBE, nb.live_probe_id)
        for _ in range(LIVENESS_PROBES):
            self._link_send(now, nb.addr, frame, out)
        self._count("liveness_probe")
        self._arm_liveness(self._liveness_due(nb, heard), out)
        return None

    def _arm_suspicion(self, at: float | None, out: list[Action]) -> None:
        """Wake when the next neighbour falls due for suspicion, if before the next hello
        tick (which would see it anyway)."""
        tick = self._next_hello_tick
        if at is not None and tick is not None and at < tick:
            self._arm_liveness(at, out)

    def _liveness_check(self, now: float, out: list[Action]) -> None:
        self._live_due = None
        suspect_next: float | None = None
        for nb in list(self._nbrs.values()):
            if not nb.alive:
                continue
            heard = nb.est.last_heard
            if nb.live_probe_id is not None and (heard is None or heard > nb.live_probe_at):
                nb.live_probe_id = None  # a hello came after the burst: alive
            if nb.live_probe_id is None:
                at = self._maybe_suspect(now, nb, out)
                if at is not None and (suspect_next is None or at < suspect_next):
                    suspect_next = at
                continue
            assert heard is not None
            due = self._liveness_due(nb, heard)
            if now >= due:
                self._count("liveness_dead")
                self._neighbour_dead(now, nb, out)
            else:
                self._arm_liveness(due, out)
        self._arm_suspicion(suspect_next, out)

    def _update_cost(self, now: float, nb: _Neighbour, out: list[Action]) -> None:
        cost = nb.est.cost
        if nb.mtu_low:
            cost = rt.INFINITY
        elif nb.damped_until is not None and cost < rt.INFINITY:
            cost = min(rt.INFINITY - 1, cost + DAMPED_COST)
        if cost >= rt.INFINITY:
            if self.router.link_cost(nb.name) < rt.INFINITY:
                self._emit_routing(now, self.router.remove_neighbour(now, nb.name), out)
            return
        self._emit_routing(now, self.router.set_link_cost(now, nb.name, cost), out)

    def _on_hello(self, now: float, nb: _Neighbour, body: bytes, out: list[Action]) -> None:
        if len(body) != _BOOT.size + lq.HELLO_SIZE:
            self._count("bad_hello")
            return
        (boot,) = _BOOT.unpack_from(body)
        if boot == nb.left_boot:
            self._count("hello_after_leave")  # in flight when it left, or reordered
            return
        if boot != nb.peer_boot and nb.peer_boot is not None:
            try:  # a malformed hello must not pass for a restart
                lq.decode_hello(body[_BOOT.size :])
            except DecodeError:
                self._count("bad_hello")
                return
            self._on_peer_restart(now, nb, out)
        try:
            nb.est.on_hello_bytes(now, body[_BOOT.size :])
        except DecodeError:
            self._count("bad_hello")
            return
        nb.peer_boot = boot
        if not nb.alive and not nb.est.is_dead(now):
            nb.alive = True
            nb.probe_id, nb.probe_misses = None, 0  # silence while dead proves nothing
            nb.next_probe = now + 2 * self.config.hello_interval
            out.append(LinkUp(nb.name))
            out.append(Event("neighbour_up", {"peer": nb.name}))
        # Refresh the router's cost at a bounded pace: the estimate moves a little on
        # every hello and the router would absorb most of it anyway. A link the router
        # does not use yet is refreshed at once, so a new link joins without delay.
        if now >= nb.cost_due or self.router.link_cost(nb.name) >= rt.INFINITY:
            nb.cost_due = now + COST_REFRESH_INTERVAL
            self._update_cost(now, nb, out)

    def _on_peer_restart(self, now: float, nb: _Neighbour, out: list[Action]) -> None:
        # A restarted neighbour has lost its routing state, feasibility distances
        # included; routes we hold through its former self could lead straight back to
        # us once it learns them. Forget them before anything else of its is processed.
        self._count("neighbour_restarted")
        out.append(Event("neighbour_restarted", {"peer": nb.name}))
        nb.est = lq.LinkEstimator(self._rng, hello_interval=self.config.hello_interval)
        if nb.alive:
            nb.alive = False
            out.append(LinkDown(nb.name, LinkDownReason.RESTARTED))
            out.append(Event("neighbour_dead", {"peer": nb.name, "reason": "restarted"}))
        self._emit_routing(now, self.router.remove_neighbour(now, nb.name, restarted=True), out)

    def _on_leave(self, now: float, nb: _Neighbour, frame: bytes, out: list[Action]) -> None:
        if len(frame) != 1 + _BOOT.size:
            self._count("bad_leave")
            return
        (boot,) = _BOOT.unpack_from(frame, 1)
        if boot == nb.left_boot:
            return  # the second copy
        if boot != nb.peer_boot:
            self._count("stale_leave")  # an earlier incarnation's LEAVE, replayed or late
            return
        self._count("neighbour_left")
        # From now on this incarnation's hellos and routing (in flight, reordered, or sent
        # by a run that failed to stop) are stale; its next run is known by a new one.
        nb.left_boot = boot
        out.append(Event("neighbour_left", {"peer": nb.name}))
        if nb.alive:
            nb.alive = False
            out.append(LinkDown(nb.name, LinkDownReason.LEFT))
        self._emit_routing(now, self.router.remove_neighbour(now, nb.name), out)

    def leave(self, now: float) -> list[Action]:
        """Tell every live neighbour this node is shutting down (sent twice: one lost
        datagram should not cost them the dead interval). The caller stops afterwards."""
        out: list[Action] = []
        frame = bytes((FRAME_LEAVE,)) + _BOOT.pack(self.boot_id)
        for nb in self._nbrs.values():
            if nb.alive:
                self._link_send(now, nb.addr, frame, out)
                self._link_send(now, nb.addr, frame, out)
        return out

    # -- path MTU ----------------------------------------------------------------------

    def _probe_tick(self, now: float, nb: _Neighbour, out: list[Action]) -> None:
        if nb.probe_id is not None:
            # The last probe went unanswered while hellos kept arriving (the link is
            # alive): the big frame, not the link, was lost, or ordinary loss took it.
            nb.probe_misses += 1
            if nb.probe_misses >= self._probe_misses_needed(nb) and not nb.mtu_low:
                nb.mtu_low = True
                self._count("link_mtu_low")
                out.append(LinkDown(nb.name, LinkDownReason.MTU_LOW))
                out.append(
                    Event("link_mtu_low", {"peer": nb.name, "probed": self._link_payload_max})
                )
                self._update_cost(now, nb, out)
        nb.probe_id = self._rng.getrandbits(32)  # matches acks to probes; not secret
        if nb.mtu_low:
            nb.next_probe = now + self.config.mtu_probe_interval
        else:  # retry soon: misses must come in a row to mean anything
            rtt = nb.est.rtt or 0.0
            nb.next_probe = now + max(MTU_PROBE_TIMEOUT, 4.0 * rtt)
        frame = _PROBE.pack(FRAME_PROBE, nb.probe_id)
        self._link_send(now, nb.addr, frame.ljust(self._link_payload_max, b"\0"), out)

    @staticmethod
    def _probe_misses_needed(nb: _Neighbour) -> int:
        # Ordinary loss takes a probe or its ack with probability ~2 * loss; ask for
        # enough misses in a row that loss alone explains them less than once in 1e6.
        p = min(0.5, max(0.01, 2.0 * nb.est.loss))
        return max(MTU_PROBE_MISSES, min(12, math.ceil(math.log(1e-6) / math.log(p))))

    def _on_probe(self, now: float, nb: _Neighbour | None, frame: bytes, out: list[Action]) -> None:
        if len(frame) < _PROBE.size:
            self._count("bad_probe")
            return
        if nb is not None:  # answer with the size that arrived
            _, probe_id = _PROBE.unpack_from(frame)
            ack = _PROBE_ACK.pack(FRAME_PROBE_ACK, probe_id, min(len(frame), 0xFFFF))
            self._link_send(now, nb.addr, ack, out)

    def _on_probe_ack(self, now: float, nb: _Neighbour, frame: bytes, out: list[Action]) -> None:
        if len(frame) != _PROBE_ACK.size:
            self._count("bad_probe")
            return
        _, probe_id, size = _PROBE_ACK.unpack_from(frame)
        if probe_id == nb.live_probe_id and nb.live_probe_id is not None:
            nb.live_probe_id = None  # it is there; hellos that went missing were lost
            return
        if probe_id != nb.probe_id or size < self._link_payload_max:
            return  # a stale ack, or one for a probe we did not send at full size
        nb.probe_id = None
        nb.probe_misses = 0
        nb.next_probe = now + self.config.mtu_probe_interval
        if nb.mtu_low:
            nb.mtu_low = False
            self._count("link_mtu_restored")
            out.append(LinkUp(nb.name))
            out.append(Event("link_mtu_restored", {"peer": nb.name}))
            self._update_cost(now, nb, out)

    # -- frames ------------------------------------------------------------------------

    def _on_frame(self, now: float, peer: str, frame: bytes, out: list[Action]) -> None:
        if not frame:
            return  # keepalive
        nb = self._nbrs.get(peer)
        kind = frame[0]
        if kind == FRAME_HELLO:
            if nb is not None:
                self._on_hello(now, nb, frame[1:], out)
        elif kind == FRAME_ROUTING:
            if nb is not None and nb.left_boot is not None and nb.left_boot == nb.peer_boot:
                self._count("routing_after_leave")
                return
            try:
                msgs = self.router.handle_packet(now, peer, frame[1:])
            except DecodeError:
                self._count("bad_routing")
                return
            self._emit_routing(now, msgs, out)
        elif kind == FRAME_FORWARD:
            self._on_forward(now, frame, out)
        elif kind == FRAME_PROBE:
            self._on_probe(now, nb, frame, out)
        elif kind == FRAME_PROBE_ACK:
            if nb is not None:
                self._on_probe_ack(now, nb, frame, out)
        elif kind == FRAME_LEAVE:
            if nb is not None:
                self._on_leave(now, nb, frame, out)
        elif kind == FRAME_NAMES:
            self._on_names(frame)
        else:
            self._count("unknown_frame")

    def _emit_routing(self, now: float, msgs: rt.RouterOutput, out: list[Action]) -> None:
        limit = self._link_payload_max - 1
        for m in msgs:
            if type(m) is SetTimer:
                out.append(m)
                continue
            assert type(m) is rt.Outgoing
            packets = rt.pack_tlvs(m.tlvs, limit)
            if m.to is None:
                targets = [nb for nb in self._nbrs.values() if nb.alive]
            else:
                nb = self._nbrs.get(m.to)
                targets = [nb] if nb is not None else []
            for nb in targets:
                for p in packets:
                    self._link_send(now, nb.addr, _ROUTING_PREFIX + p, out)
        if self._route_wait:
            self._release_waiting(now, out)

    # -- forwarding ----------------------------------------------------------------------

    def _forward_own(self, now: float, dst: Hashable, data: bytes, out: list[Action]) -> None:
        if not isinstance(dst, bytes):
            return
        if self._relay_data and _is_e2e_data(data):
            nb = self._live_next_hop(dst)
            packet = _RELAY.pack(_RELAY_HDR, self.config.ttl, self.id, dst) + data
            if nb is None:
                self._wait_for_route(now, dst, packet, 0, 1, False, out)
                return
            out.append(Send(nb.addr, packet))
            return
        frame = _FWD.pack(FRAME_FORWARD, self.config.ttl, self.id, dst) + data
        self._relay(now, dst, frame, out)

    def _relay_header(self, dst: Addr) -> bytes:
        """Our RELAY header to ``dst`` (a node id): what the e2e endpoint writes before each
        fragment of a large payload, so that its buffer is ready for the wire."""
        hdr = self._relay_headers.get(dst)
        if hdr is None:
            if not isinstance(dst, bytes):
                return b""
            if len(self._relay_headers) >= MAX_NAMES:
                self._relay_headers.clear()
            hdr = self._relay_headers[dst] = _RELAY.pack(_RELAY_HDR, self.config.ttl, self.id, dst)
        return hdr

    def _forward_own_segments(self, now: float, a: SendSegments, out: list[Action]) -> None:
        """A large e2e payload's fragments, in one buffer with our RELAY header already
        before each (the e2e endpoint's ``segment_prefix``): it goes to the next hop whole,
        with no work per datagram. This is the sender's hot path."""
        dst = a.addr
        if not isinstance(dst, bytes):
            return
        if not self._relay_data:  # FORWARD frames: one datagram at a time
            for d in a.datagrams():
                self._forward_own(now, dst, d[RELAY_OVERHEAD:], out)
            return
        nb = self._live_next_hop(dst)
        if nb is None:
            self._wait_for_route(now, dst, bytes(a.data), a.size, a.count, False, out)
            return
        out.append(SendSegments(nb.addr, a.data, a.size))

    def _relay(self, now: float, dst: NodeId, frame: bytes, out: list[Action]) -> None:
        hop = self.router.next_hop(dst)
        nb = self._nbrs.get(hop) if hop is not None else None
        if nb is None:
            self._wait_for_route(now, dst, frame, 0, 1, True, out)
            return
        self._link_send(now, nb.addr, frame, out)

    # -- packets waiting for a route (routewait.py) -----------------------------------------

    def _wait_for_route(
        self,
        now: float,
        dst: NodeId,
        data: bytes,
        size: int,
        count: int,
        framed: bool,
        out: list[Action],
    ) -> None:
        """Hold what found no route, if routing knows ``dst`` and it fits; else drop it."""
        if not self.router.knows(dst) or not self._route_wait.hold(
            now, dst, data, size=size, count=count, framed=framed
        ):
            self._add("no_route", count)
            return
        self._add("route_wait", count)
        self._arm_route_wait(out)

    def _arm_route_wait(self, out: list[Action]) -> None:
        at = self._route_wait.next_expiry()
        if at is not None and (self._route_wait_due is None or at < self._route_wait_due):
            self._route_wait_due = at
            out.append(SetTimer(at, MeshTimer.ROUTE_WAIT))

    def _release_waiting(self, now: float, out: list[Action]) -> None:
        """Send what waits for each destination that has a route now."""
        if self._releasing:  # a send below led back here: the outer loop goes on
            return
        self._releasing = True
        try:
            for dst in self._route_wait.destinations():
                assert isinstance(dst, bytes)
                nb = self._live_next_hop(dst)
                if nb is None:
                    continue
                held, expired = self._route_wait.take(now, dst)
                self._add("no_route", expired)
                for h in held:
                    if h.framed:
                        self._link_send(now, nb.addr, h.data, out)
                    elif h.size:
                        out.append(SendSegments(nb.addr, h.data, h.size))
                    else:
                        out.append(Send(nb.addr, h.data))
                    self._add("route_wait_sent", h.count)
        finally:
            self._releasing = False

    def _live_next_hop(self, dst: NodeId) -> _Neighbour | None:
        hop = self.router.next_hop(dst)
        nb = self._nbrs.get(hop) if hop is not None else None
        return nb if nb is not None and nb.alive else None

    def _on_relay(self, now: float, addr: Addr, data: bytes, out: list[Action]) -> None:
        nb = self._by_addr.get(addr)
        if nb is None or not nb.alive:
            self._count("relay_from_stranger")  # not a live neighbour's address: dropped
            return
        if not _relays_e2e_data(data):
            self._count("bad_relay")
            return
        _, ttl, src, dst = _RELAY.unpack_from(data)
        if dst == self.id:
            inner = data[RELAY_OVERHEAD:]
            self._rx_ttl = ttl
            self._wrap(now, _E2E, self.e2e.handle(now, Datagram(src, inner)), out)
            return
        if ttl <= 1:
            self._count("ttl_expired")
            return
        nxt = self._live_next_hop(dst)
        packet = data[:4] + _U16.pack(ttl - 1) + data[6:]
        if nxt is None:
            self._wait_for_route(now, dst, packet, 0, 1, False, out)
            return
        self._count("relayed")
        out.append(Send(nxt.addr, packet))

    def _on_forward(self, now: float, frame: bytes, out: list[Action]) -> None:
        if len(frame) < FORWARD_OVERHEAD:
            self._count("bad_forward")
            return
        _, ttl, src, dst = _FWD.unpack_from(frame)
        inner = frame[FORWARD_OVERHEAD:]
        if dst == self.id:
            self._rx_ttl = ttl
            self._wrap(now, _E2E, self.e2e.handle(now, Datagram(src, inner)), out)
            return
        if ttl <= 1:
            self._count("ttl_expired")
            return
        self._count("relayed")
        self._relay(now, dst, _FWD.pack(FRAME_FORWARD, ttl - 1, src, dst) + inner, out)

    # -- HealableNode ----------------------------------------------------------------------

    def observe(self, now: float) -> NodeObservation:
        links: dict[str, LinkObservation] = {}
        for nb in self._nbrs.values():
            est = nb.est
            info = self.links.peer(nb.addr)
            session_age = info.session_age if info is not None else None
            failures = info.failures if info is not None else 0
            links[nb.name] = LinkObservation(
                peer=nb.name,
                alive=nb.alive,
                rtt=est.rtt,
                jitter=est.jitter,
                loss=est.loss,
                last_heard=est.last_heard,
                cost=self.router.link_cost(nb.name),
                base_cost=est.base_cost,
                session_age=session_age,
                handshake_failures=failures,
                damped_until=nb.damped_until,
                hellos=est.hello_record(),
            )
        return NodeObservation(
            now=now,
            name=self.name,
            links=links,
            routes=self._route_view(),
            cert_not_after=self._cert_not_after,
            wall_now=now + self._wall_offset,
            counters=dict(self.counters),
            verified={self.name_of(k): t for k, t in self._verified.items()},
        )

    def _route_view(self) -> dict[str, RouteObservation]:
        # Rebuilding 1,000 routes every healing cycle would dominate a big simulation, so
        # the view follows the router's next-hop change log: unchanged entries keep their
        # objects (the monitor skips them by identity) and an unchanged view is the same
        # mapping. Metrics in the view are as of the last next-hop change.
        changes = self.router.drain_changes()
        cache = self._routes_cache
        if cache is not None and not changes:
            return cache
        router = self.router
        counts = router.route_changes
        name_of = self.name_of
        if cache is None or len(changes) >= rt.CHANGE_LOG_MAX:
            routes = {}
            for dst, (via, metric, _seq) in router.selected().items():
                n = name_of(dst)
                routes[n] = RouteObservation(n, via, metric, counts.get(dst, 0))
        else:
            routes = dict(cache)
            for dst in {c.dst for c in changes}:
                n = name_of(dst)
                hop = router.next_hop(dst)
                if hop is None:
                    routes.pop(n, None)
                else:
                    routes[n] = RouteObservation(n, hop, router.metric(dst), counts.get(dst, 0))
        self._routes_cache = routes
        return routes

    def set_link_penalty(self, now: float, peer: str, factor: float) -> list[Action]:
        out: list[Action] = []
        nb = self._nbrs.get(peer)
        if nb is not None:
            nb.est.set_cost_multiplier(factor)
            self._update_cost(now, nb, out)
        return out

    def drop_neighbour(self, now: float, peer: str) -> list[Action]:
        out: list[Action] = []
        nb = self._nbrs.get(peer)
        if nb is not None:
            nb.alive = False
            self._emit_routing(now, self.router.remove_neighbour(now, peer), out)
        return out

    def reconnect(self, now: float, peer: str) -> list[Action]:
        nb = self._nbrs.get(peer)
        if nb is None or self.links.revoked_addr(nb.addr, now):
            return []  # a revoked neighbour is not dialled (it may dial us with a new one)
        out: list[Action] = []
        self._wrap(now, _LINK, self.links.connect(now, nb.addr), out)
        return out

    def damp_link(self, now: float, peer: str, until: float | None) -> list[Action]:
        out: list[Action] = []
        nb = self._nbrs.get(peer)
        if nb is not None:
            nb.damped_until = until
            self._update_cost(now, nb, out)
        return out

    def probe(self, now: float, dst: str) -> list[Action]:
        """Send a reachability probe to ``dst``; its echo shows in ``observe().verified``."""
        out: list[Action] = []
        dst_id = self.id_of(dst)
        if dst_id == self.id:
            return out
        nonce = self._rng.getrandbits(32)  # matches the echo to this probe; not secret
        old = self._echo_pending.pop(dst_id, ())
        for stale in old[: -(ECHO_NONCES - 1)]:
            self._echo_sent.pop(stale, None)
        self._echo_pending[dst_id] = (*old[-(ECHO_NONCES - 1) :], nonce)
        self._echo_sent[nonce] = now
        if len(self._echo_pending) > MAX_VERIFIED:
            for stale in self._echo_pending.pop(next(iter(self._echo_pending))):
                self._echo_sent.pop(stale, None)
        if not dst.startswith(UNNAMED_PREFIX):
            self._learn_name(dst_id, dst)
        self.e2e.add_peer(dst_id)
        request = _ECHO.pack(ECHO_PORT, _ECHO_REQUEST, nonce)
        self._wrap(now, _E2E, self.e2e.send(now, dst_id, request), out)
        return out

    def request_renewal(self, now: float) -> list[Action]:
        return [Event("renewal_requested", {"node": self.name})]

    # -- queries --------------------------------------------------------------------------

    def neighbours(self) -> dict[str, bool]:
        """Neighbour name -> alive."""
        return {n: nb.alive for n, nb in self._nbrs.items()}

    def add_neighbour(self, now: float, addr: Addr) -> list[Action]:
        """Dial ``addr`` as a neighbour from now on (LAN discovery, an operator)."""
        out: list[Action] = []
        if addr not in self._configured:
            self._configured.append(addr)
        self.links.add_peer(addr)
        self._wrap(now, _LINK, self.links.connect(now, addr), out)
        return out

    def known_names(self) -> list[str]:
        """Every node name this node knows (itself, neighbours, NAMES frames, sessions)."""
        return list(self._names.values())

    def next_hop(self, dst: str) -> str | None:
        return self.router.next_hop(self.id_of(dst))


__all__ = ["MeshConfig", "MeshNode", "node_id"]
