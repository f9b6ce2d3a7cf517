"""Loop-free distance-vector routing in the manner of Babel (RFC 8966), sans-IO.

Every node originates exactly one destination: its own 8-byte node id. Neighbours are
named by the link peer's name. The router never touches a socket or a clock; callers feed
it ``now`` and received TLVs, and send what it returns.

Loop freedom (RFC 8966 §2.4, §3.5.1). For each destination the router keeps a
feasibility distance ``FD = (seqno, metric)``: the best pair it has ever *advertised*
(newer seqno wins, then smaller metric). A received route ``(seqno, metric)`` is
feasible iff it is strictly better than FD (or a retraction). Only feasible routes are
ever selected, and FD is updated whenever an update with a finite metric is emitted.
Along any chain of selected next hops FD therefore strictly improves, so the chain
cannot close into a cycle. Sources (FDs) outlive every route that could refer to them.

Starvation (§3.8.2.1): when the selected route is lost and nothing feasible remains, the
destination stays unreachable, a retraction goes out, and a seqno request asks the
origin for a newer seqno; routes carrying it are feasible everywhere. That answer may
be a long detour away, so beside it the node runs a *query* (DUAL's diffusing
computation): every neighbour drops the node's route and replies once it no longer
routes through it; with every reply in, no route of the node's is held anywhere, and it
may reset its FD and take its best route at once. Its safety rests on one assumption:
a link never lets a packet overtake another by more than :data:`QUERY_FREEZE`.

Loss (§3.7.2 asks for urgent updates to be sent reliably). Every triggered update (bad
news, good news, seqno answers) and every dump to one neighbour (a new link, a route
request) goes out :data:`UPDATE_REPEATS` more times, :data:`REPEAT_DELAY` apart, each
copy saying what the router holds *then*; a newer change restarts the count. A copy is
far cheaper than waiting out a lost packet: the next dump is up to 16 s away. And a
destination that became unreachable stays in full dumps as a retraction for as long as
a neighbour could still hold the route we last advertised (:data:`ROUTE_EXPIRY_FACTOR`
intervals), so even a retraction lost every time is cleared by the next dump.

Outputs: every entry point returns a :data:`RouterOutput`: at most one
:class:`Outgoing` per recipient (``None`` meaning every neighbour), each a batch of TLVs
to encode with :func:`pack_tlvs`, and, first in the list, a
``SetTimer(at, ROUTE_TIMER)`` whenever the router needs waking earlier than the timer it
last asked for. ``start`` and ``handle_timer`` always return one. The caller keeps one
timer under that key (a later SetTimer replaces it) and calls ``handle_timer`` when it
fires; a firing that is early, late or superfluous is harmless, since ``handle_timer``
does whatever is due at ``now`` and re-arms.

Wire format (big-endian)::

    tlv            = type:u8 length:u16 body[length]
    UPDATE    (1)  body = interval_cs:u16 { dst:8 seqno:u16 metric:u16 }+
    SEQNO_REQ (2)  body = dst:8 seqno:u16 hop_count:u8
    ROUTE_REQ (3)  body = "" (wildcard) | dst:8
    QUERY     (4)  body = dst:8 seqno:u16 qid:u16
    REPLY     (5)  body = dst:8 seqno:u16 metric:u16 qid:u16
    RESUME    (6)  body = dst:8 seqno:u16 metric:u16 qid:u16

Consecutive updates with the same interval share one UPDATE TLV (12 bytes each), which
keeps a 1,000-route dump at ~12 kB and lets the decoder unpack records in C.
"""

from __future__ import annotations

import random
import struct
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, NamedTuple, TypeAlias

from x0tta6bl4.errors import BadLength, Truncated, UnknownType
from x0tta6bl4.routing.metric import INFINITY as INFINITY  # re-exported: rt.INFINITY
from x0tta6bl4.sansio import SetTimer

NodeId: TypeAlias = bytes
"""A node's 8-byte id; opaque to the router."""

# --- constants ------------------------------------------------------------------

NODE_ID_LEN: Final = 8

UPDATE_INTERVAL: Final = 16.0
"""Seconds between full dumps. At 1,000 nodes a dump is ~12 kB per neighbour, so ~0.75
kB/s per link; triggered updates carry the changes in between."""

UPDATE_JITTER: Final = 0.1
"""Each dump period is shortened by up to this fraction at random, to desynchronise."""

ROUTE_EXPIRY_FACTOR: Final = 3.5
"""A route not refreshed within this many of its advertised intervals is dropped."""

SOURCE_GC_TIME: Final = 180.0
"""Minimum seconds a feasibility distance is kept after it was last used."""

HYSTERESIS_ABS: Final = 32
"""Switch away from a usable route only if the new one is better by more than this..."""

HYSTERESIS_REL: Final = 0.05
"""...and by more than this fraction of the current metric."""

TRIGGER_METRIC_DELTA: Final = 96
"""A selected metric moving this far from what we last advertised triggers an update."""

LINK_COST_DEADBAND_ABS: Final = 16
"""Link cost changes smaller than this (and than the relative band) are absorbed, so a
noisy estimator does not make the router rescan every route through the link."""

LINK_COST_DEADBAND_REL: Final = 0.1

SEQNO_REQUEST_HOPS: Final = 64
"""Initial hop count of a seqno request (RFC 8966's suggested value)."""

SEQNO_REQUEST_RESEND_DELAY: Final = 0.2
"""First resend of an unanswered seqno request we originated; doubles each time.
Also the minimum gap between forwarding two requests for the same destination. Short,
because a starving node is a black hole until the answer arrives: with 0.5 s the failover
p99 over 100 relay kills was 1.13 s, with 0.2 s 0.98 s (bench/sim.py)."""

SEQNO_REQUEST_MAX_RESENDS: Final = 3

REQUEST_REPEAT_DELAY: Final = 0.02
"""Every seqno request a node sends (originated or forwarded) goes once more this much
later, unless answered by then. A request crosses the starving region and the rest of
the way to the source one hop at a time, unacknowledged: over 15 hops at 2 % loss one
copy is lost 26 % of the time and the region starves until the resend (0.2 s, then 0.4
and 0.8 s later); two copies per hop leave 0.6 %. The next hop forwards only the first
copy it gets."""

SEQNO_REQUEST_HOLD: Final = 5.0
"""How long a pending (originated or forwarded) seqno request is remembered."""

TRIGGER_DELAY: Final = 0.05
"""Good news (a new route, an improvement, a voluntary switch) is coalesced for up to
this long, so a burst of changes leaves as one batch instead of one per received packet;
bad news (retractions, failovers, metric increases, answers to seqno requests) is sent
at once."""

UPDATE_REPEATS: Final = 2
"""Extra copies of every triggered update and of every dump to one neighbour. At 2 % loss
per packet, three copies leave a 1-in-125,000 chance that a neighbour misses a change
(one copy: 1 in 50), which is what lets a 100-node mesh converge in ~2 s instead of
~15 s and leaves no ghost route after a partition. A copy costs 12 bytes per route and
is only sent when something changed; steady-state periodic dumps are not repeated."""

REPEAT_DELAY: Final = 0.1
"""Spacing of the copies (one hello interval): short next to the 16 s dump interval, yet
long enough that a burst of loss rarely takes all three. A copy due within half of it
rides along with any other update going out, so copies rarely cost a packet of their
own while routes are changing."""

CHANGE_LOG_MAX: Final = 4096
"""Bound on undrained next-hop change records."""

MIN_LINK_COST: Final = 1
"""Metrics must strictly grow per hop for the feasibility argument; costs clamp to this."""

T_UPDATE: Final = 1
T_SEQNO_REQUEST: Final = 2
T_ROUTE_REQUEST: Final = 3
T_QUERY: Final = 4
T_REPLY: Final = 5
T_RESUME: Final = 6

QUERY_RESEND: Final = 0.05
"""A starvation query (see :class:`Query`) goes again to the neighbours that have not
replied this often: a lost query or reply would otherwise hold the whole region."""

QUERY_TIMEOUT: Final = 1.0
"""A query not answered by every neighbour within this long is given up: the node stays
unreachable (with its feasibility distance intact) and waits for the seqno request."""

QUERY_FREEZE: Final = 0.05
"""After a neighbour's query, finite updates from it at the query's seqno or older are
ignored for this long, except its :class:`Resume`: one sent before the query and
overtaken by it would otherwise bring back a route the neighbour has withdrawn. Packets
are assumed never to be overtaken by more than this (links reorder by milliseconds)."""

RESTART_GHOST: Final = 1.0
"""After a neighbour restarted (it lost its routes and feasibility distances), no query
of ours resets a feasibility distance for this long. Its other neighbours may not have
noticed yet, so their replies can be routes through its former self; reset on one, we
would offer the restarted node a path through itself, which it would take. They notice
within the dead interval (0.4 s) plus a hello; meanwhile a starving node waits for a
newer seqno, as without queries."""

_SEQNO_MOD: Final = 1 << 16
_HALF: Final = 1 << 15
_HDR = struct.Struct(">BH")
_U16 = struct.Struct(">H")
_UPD_REC = struct.Struct(">8sHH")
_SEQREQ = struct.Struct(">8sHB")
_QUERY = struct.Struct(">8sHH")
_ANSWER = struct.Struct(">8sHHH")
_UPD_HDR_SIZE: Final = _HDR.size + _U16.size  # 5
_MAX_RECORDS: Final = (0xFFFF - _U16.size) // _UPD_REC.size
_SEQREQ_TLV_SIZE: Final = _HDR.size + _SEQREQ.size  # 14
_NO_FD: Final = -1


def seqno_newer(a: int, b: int) -> bool:
    """True iff 16-bit seqno ``a`` is strictly newer than ``b`` (RFC 8966 §3.2.1)."""
    return 0 < ((a - b) & 0xFFFF) < _HALF


def seqno_ge(a: int, b: int) -> bool:
    """True iff ``a`` is the same as or newer than ``b``, modulo 2^16."""
    return ((a - b) & 0xFFFF) < _HALF


# --- TLVs -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Update:
    """Route to ``dst`` with ``metric`` (INFINITY: retraction) valid for ~3.5 intervals."""

    dst: NodeId
    seqno: int
    metric: int
    interval: int
    """Sender's update interval in centiseconds."""


@dataclass(frozen=True, slots=True)
class SeqnoRequest:
    """Ask ``dst``'s origin (via the path toward it) for a seqno of at least ``seqno``."""

    dst: NodeId
    seqno: int
    hop_count: int


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """Ask a neighbour for its route to ``dst``, or for a full dump if ``dst`` is None."""

    dst: NodeId | None = None


@dataclass(frozen=True, slots=True)
class Query:
    """The sender lost its last feasible route to ``dst`` and withdraws every route to it
    at ``seqno``: the receiver treats it as a retraction and answers with a
    :class:`Reply` once it no longer routes through the sender (a starving receiver
    first runs its own query). With every neighbour's reply the sender may take any
    route, as nobody holds one of its old ones any more (DUAL's diffusing computation)."""

    dst: NodeId
    seqno: int
    qid: int
    """The sender's query id, echoed in the replies."""


@dataclass(frozen=True, slots=True)
class Reply:
    """Answer to the receiver's query ``qid``: the sender's route to ``dst`` now, which
    does not go through the receiver."""

    dst: NodeId
    seqno: int
    metric: int
    qid: int


@dataclass(frozen=True, slots=True)
class Resume:
    """The sender's query ``qid`` is over; its route to ``dst`` now (maybe INFINITY)."""

    dst: NodeId
    seqno: int
    metric: int
    qid: int


Tlv: TypeAlias = Update | SeqnoRequest | RouteRequest | Query | Reply | Resume


@dataclass(frozen=True, slots=True)
class Outgoing:
    """TLVs to send to neighbour ``to``, or to every neighbour if ``to`` is None."""

    to: str | None
    tlvs: list[Tlv]


class RouteTimer(StrEnum):
    """The router's timer keys (typed, as every layer's are; see ``sansio``)."""

    DUE = "route.due"
    """Periodic dumps, route expiry, coalesced updates, seqno-request resends."""


ROUTE_TIMER: Final = RouteTimer.DUE
"""The one key the router sets: hand its firing to :meth:`Router.handle_timer`."""

RouterOutput: TypeAlias = list[Outgoing | SetTimer]
"""What every router entry point returns: a SetTimer (first, if any), then messages."""


class RouteChange(NamedTuple):
    """The selected next hop toward ``dst`` changed at ``time`` (None: unreachable)."""

    time: float
    dst: NodeId
    old: str | None
    new: str | None


# --- codec ----------------------------------------------------------------------


def _segments(data: bytes) -> list[tuple[int, int, int]]:
    """Validate the TLV framing of a packet; return (type, body start, body end)."""
    segs: list[tuple[int, int, int]] = []
    n = len(data)
    pos = 0
    while pos < n:
        if n - pos < _HDR.size:
            raise Truncated(f"TLV header needs {_HDR.size} bytes, {n - pos} left")
        t, ln = _HDR.unpack_from(data, pos)
        pos += _HDR.size
        if n - pos < ln:
            raise Truncated(f"TLV type {t} claims {ln} bytes, {n - pos} left")
        if t == T_UPDATE:
            if ln < _U16.size + _UPD_REC.size or (ln - _U16.size) % _UPD_REC.size:
                raise BadLength(f"update TLV body of {ln} bytes")
        elif t == T_SEQNO_REQUEST:
            if ln != _SEQREQ.size:
                raise BadLength(f"seqno request TLV body of {ln} bytes")
        elif t == T_ROUTE_REQUEST:
            if ln not in (0, NODE_ID_LEN):
                raise BadLength(f"route request TLV body of {ln} bytes")
        elif t == T_QUERY:
            if ln != _QUERY.size:
                raise BadLength(f"query TLV body of {ln} bytes")
        elif t in (T_REPLY, T_RESUME):
            if ln != _ANSWER.size:
                raise BadLength(f"{'reply' if t == T_REPLY else 'resume'} TLV body of {ln} bytes")
        else:
            raise UnknownType(f"TLV type {t}")
        segs.append((t, pos, pos + ln))
        pos += ln
    return segs


def decode_tlvs(data: bytes) -> list[Tlv]:
    """Decode a packet of TLVs; raise a DecodeError subclass on anything malformed."""
    out: list[Tlv] = []
    for t, start, end in _segments(data):
        if t == T_UPDATE:
            (interval,) = _U16.unpack_from(data, start)
            for dst, seqno, metric in _UPD_REC.iter_unpack(data[start + _U16.size : end]):
                out.append(Update(dst, seqno, metric, interval))
        elif t == T_SEQNO_REQUEST:
            dst, seqno, hops = _SEQREQ.unpack_from(data, start)
            out.append(SeqnoRequest(dst, seqno, hops))
        elif t == T_ROUTE_REQUEST:
            out.append(RouteRequest(bytes(data[start:end]) if end > start else None))
        elif t == T_QUERY:
            out.append(Query(*_QUERY.unpack_from(data, start)))
        elif t == T_REPLY:
            out.append(Reply(*_ANSWER.unpack_from(data, start)))
        else:
            out.append(Resume(*_ANSWER.unpack_from(data, start)))
    return out


def _check_id(dst: bytes) -> None:
    if len(dst) != NODE_ID_LEN:
        raise ValueError(f"node id must be {NODE_ID_LEN} bytes, got {len(dst)}")


def _encode_one(t: Tlv) -> bytes:
    """A single non-update TLV (updates are grouped by the callers)."""
    if isinstance(t, SeqnoRequest):
        _check_id(t.dst)
        return _HDR.pack(T_SEQNO_REQUEST, _SEQREQ.size) + _SEQREQ.pack(t.dst, t.seqno, t.hop_count)
    if isinstance(t, RouteRequest):
        if t.dst is None:
            return _HDR.pack(T_ROUTE_REQUEST, 0)
        _check_id(t.dst)
        return _HDR.pack(T_ROUTE_REQUEST, NODE_ID_LEN) + t.dst
    if isinstance(t, Query):
        _check_id(t.dst)
        return _HDR.pack(T_QUERY, _QUERY.size) + _QUERY.pack(t.dst, t.seqno, t.qid)
    if isinstance(t, Reply | Resume):
        _check_id(t.dst)
        kind = T_REPLY if isinstance(t, Reply) else T_RESUME
        return _HDR.pack(kind, _ANSWER.size) + _ANSWER.pack(t.dst, t.seqno, t.metric, t.qid)
    raise TypeError(f"not a TLV: {t!r}")


def _update_record(u: Update) -> bytes:
    _check_id(u.dst)
    return _UPD_REC.pack(u.dst, u.seqno, u.metric)


def _packets(tlvs: Iterable[Tlv], max_bytes: int) -> Iterator[bytes]:
    """Greedy packer: consecutive same-interval updates share a TLV; packets <= max_bytes."""
    parts: list[bytes] = []
    size = 0
    # Open update group: its interval, records, and where its header goes in ``parts``.
    g_interval = -1
    g_recs: list[bytes] = []

    def close_group() -> None:
        nonlocal g_interval
        if g_recs:
            body_len = _U16.size + _UPD_REC.size * len(g_recs)
            parts.append(_HDR.pack(T_UPDATE, body_len) + _U16.pack(g_interval))
            parts.extend(g_recs)
            g_recs.clear()
        g_interval = -1

    try:
        for t in tlvs:
            if isinstance(t, Update):
                rec = _update_record(t)
                if t.interval == g_interval and len(g_recs) < _MAX_RECORDS:
                    need = _UPD_REC.size
                else:
                    need = _UPD_HDR_SIZE + _UPD_REC.size
                if size + need > max_bytes and size > 0:
                    close_group()
                    yield b"".join(parts)
                    parts.clear()
                    size = 0
                    need = _UPD_HDR_SIZE + _UPD_REC.size
                if need > _UPD_REC.size:
                    close_group()
                    _U16.pack(t.interval)  # range check before committing
                    g_interval = t.interval
                if size + need > max_bytes:
                    raise ValueError(f"max_bytes={max_bytes} cannot hold one update")
                g_recs.append(rec)
                size += need
            else:
                enc = _encode_one(t)
                if size + len(enc) > max_bytes and size > 0:
                    close_group()
                    yield b"".join(parts)
                    parts.clear()
                    size = 0
                if len(enc) > max_bytes:
                    raise ValueError(f"max_bytes={max_bytes} cannot hold {t!r}")
                close_group()
                parts.append(enc)
                size += len(enc)
        close_group()
        if parts:
            yield b"".join(parts)
    except struct.error as exc:
        raise ValueError(f"TLV field out of range: {exc}") from None


def encode_tlvs(tlvs: Iterable[Tlv]) -> bytes:
    """Encode TLVs into one packet (no size limit). ValueError on out-of-range fields."""
    return b"".join(_packets(tlvs, 1 << 62))


def pack_tlvs(tlvs: Iterable[Tlv], max_bytes: int) -> list[bytes]:
    """Encode TLVs into packets of at most ``max_bytes`` each, in order."""
    return list(_packets(tlvs, max_bytes))


# --- router state -------------------------------------------------------------------


class _Route:
    """What neighbour ``nbr`` last advertised for one destination, and its last query."""

    __slots__ = ("adv", "expires", "nbr", "qid", "qseq", "resumed", "seqno", "thaw")

    def __init__(self, nbr: str, seqno: int, adv: int, expires: float) -> None:
        self.nbr = nbr
        self.seqno = seqno
        self.adv = adv
        self.expires = expires
        self.qid = -1  # the neighbour's last query for this destination (-1: none)
        self.qseq = 0  # ...its seqno
        self.thaw = float("-inf")  # until then, its finite updates at <= qseq are stale
        self.resumed = False  # its Resume for qid has arrived


class _Active:
    """Our query for one destination: who still owes a reply, whom we owe one."""

    __slots__ = ("askers", "deadline", "next_resend", "owed", "qid", "seqno")

    def __init__(self, qid: int, seqno: int, owed: Iterable[str], now: float) -> None:
        self.qid = qid
        self.seqno = seqno  # the FD seqno whose metric the query may reset
        self.owed: dict[str, None] = dict.fromkeys(owed)
        self.askers: dict[str, int] = {}  # neighbour -> its qid, answered when we finish
        self.deadline = now + QUERY_TIMEOUT
        self.next_resend = now + QUERY_RESEND


class _Dest:
    """Everything about one destination: its routes, selection and source (FD)."""

    __slots__ = (
        "active",
        "adv_metric",
        "fd_metric",
        "fd_seqno",
        "fd_time",
        "reset_seqno",
        "routes",
        "sel",
        "seqno",
    )

    def __init__(self, seqno: int) -> None:
        self.active: _Active | None = None  # our query, while one runs
        self.routes: dict[str, _Route] = {}
        self.sel: _Route | None = None
        self.seqno = seqno  # latest seqno we know, for retractions and requests
        self.adv_metric = INFINITY  # metric we last advertised, for trigger decisions
        self.fd_seqno = _NO_FD
        self.fd_metric = INFINITY
        self.fd_time = float("-inf")
        self.reset_seqno = _NO_FD  # the FD seqno a query of ours last reset


class _Pending:
    """A seqno request we originated or forwarded and have not seen answered."""

    __slots__ = (
        "asker",
        "expires",
        "forwarded_at",
        "hops",
        "next_resend",
        "originated",
        "resends",
        "seqno",
        "target",
    )

    def __init__(
        self,
        seqno: int,
        now: float,
        originated: bool,
        target: str | None = None,
        asker: str | None = None,
        hops: int = SEQNO_REQUEST_HOPS,
    ) -> None:
        self.seqno = seqno
        self.originated = originated
        self.target = target  # where a forwarded request went (None: every neighbour)
        self.asker = asker  # who asked us (a forwarded request never goes back there)
        self.hops = hops  # the hop count it went on with
        self.forwarded_at = now
        self.expires = now + SEQNO_REQUEST_HOLD
        self.resends = SEQNO_REQUEST_MAX_RESENDS if originated else 0
        self.next_resend = now + SEQNO_REQUEST_RESEND_DELAY


class _Out:
    """Collects what one call wants to send; turned into Outgoing batches at the end."""

    __slots__ = ("all", "dump_to", "lazy", "rep", "rep_dump", "req_copies", "reqs", "uni")

    def __init__(self) -> None:
        self.all: dict[NodeId, None] = {}  # ordered set of dsts to advertise to everyone
        self.lazy: dict[NodeId, None] = {}  # ditto, but may wait TRIGGER_DELAY
        self.uni: dict[str, dict[NodeId, None]] = {}
        self.dump_to: dict[str, None] = {}
        self.reqs: dict[str | None, list[Tlv]] = {}
        self.rep: dict[NodeId, None] = {}  # copies of earlier triggered updates now due
        self.rep_dump: dict[str, None] = {}  # copies of earlier dumps to one neighbour
        self.req_copies: dict[str | None, list[Tlv]] = {}  # second copies of requests

    def request(self, to: str | None, tlv: Tlv) -> None:
        self.reqs.setdefault(to, []).append(tlv)


class Router:
    """Babel-style router for one node. Every entry point returns a ``RouterOutput``.

    ``update_repeats`` (default :data:`UPDATE_REPEATS`) is how many extra copies of each
    triggered update and one-neighbour dump go out; 0 sends each once.
    """

    def __init__(
        self,
        node_id: NodeId,
        rng: random.Random,
        *,
        update_interval: float = UPDATE_INTERVAL,
        update_repeats: int = UPDATE_REPEATS,
        seqno: int | None = None,
    ) -> None:
        _check_id(node_id)
        if update_interval <= 0:
            raise ValueError("update_interval must be positive")
        if update_repeats < 0:
            raise ValueError("update_repeats must be >= 0")
        self._update_repeats = update_repeats
        self.node_id: NodeId = bytes(node_id)
        self.update_interval = update_interval
        self._rng = rng
        self._interval_cs = max(1, min(0xFFFF, round(update_interval * 100)))
        # RFC 8966: a restarted node continues from its last seqno (the agent persists it
        # and passes it here, already incremented). Without one (the simulator, a first
        # start) a random start makes a restart likely to be newer than the old seqno.
        if seqno is not None and not 0 <= seqno < _SEQNO_MOD:
            raise ValueError(f"seqno must be in 0..{_SEQNO_MOD - 1}, got {seqno}")
        self.seqno: int = rng.randrange(_SEQNO_MOD) if seqno is None else seqno
        # A source must outlive any route a neighbour may still hold from us.
        self._source_gc = max(SOURCE_GC_TIME, 2 * ROUTE_EXPIRY_FACTOR * update_interval)
        self._costs: dict[str, int] = {}
        self._by_nbr: dict[str, dict[NodeId, _Route]] = {}
        self._dests: dict[NodeId, _Dest] = {}
        self._pending: dict[NodeId, _Pending] = {}
        self._active: dict[NodeId, _Active] = {}
        # Neighbours we dropped lately -> (when, the destinations they were our next hop
        # for). Link failure is detected at each end on its own: one we dropped may still
        # hold a route of ours and take it, and it cannot hear a query, so a query may
        # not reset a destination's FD while such a one may hold our route to it (see
        # _complete_query). Kept as long as a route of ours can live there.
        self._gone: dict[str, tuple[float, set[NodeId]]] = {}
        self._restarted: dict[str, float] = {}  # neighbour -> when we heard it restarted
        self._qid = rng.randrange(_SEQNO_MOD)  # names our queries, as seqnos do: not secret
        self._next_dump: float | None = None
        self._next_sweep: float | None = None
        self._buffered: dict[NodeId, None] = {}  # coalesced triggered updates
        self._flush_at: float | None = None
        # Copies still owed of triggered updates: dst -> (copies left, when the next is
        # due), plus those due times in order (entries whose time no longer matches the
        # dict were superseded by a newer change and are skipped).
        self._repeats: dict[NodeId, tuple[int, float]] = {}
        self._repeat_q: deque[tuple[float, NodeId]] = deque()
        # The same for dumps to one neighbour: neighbour -> (copies left, next due).
        self._dump_repeats: dict[str, tuple[int, float]] = {}
        # Second copies of seqno requests: (when due, to whom, the request), in order.
        self._req_repeats: deque[tuple[float, str | None, SeqnoRequest]] = deque()
        # How long a retraction stays in full dumps: as long as a neighbour may still
        # hold the finite route we advertised last (its expiry, in our interval).
        self._retract_hold = ROUTE_EXPIRY_FACTOR * update_interval
        # Replies and Resumes carry no interval: they hold as long as our own updates.
        self._reply_expiry = ROUTE_EXPIRY_FACTOR * update_interval
        # When the timer we last asked for fires (inf: none asked for yet). A call that
        # needs an earlier wake-up returns a SetTimer; a later one just lets it fire.
        self._timer_at = float("inf")
        self.route_changes: dict[NodeId, int] = {}
        """Number of next-hop changes per destination (flap detection)."""
        self._changes: deque[RouteChange] = deque(maxlen=CHANGE_LOG_MAX)

    # -- queries --------------------------------------------------------------------

    def next_hop(self, dst: NodeId) -> str | None:
        d = self._dests.get(dst)
        if d is None or d.sel is None:
            return None
        return d.sel.nbr

    def knows(self, dst: NodeId) -> bool:
        """Whether ``dst`` is a destination routing has heard of (routed or not now)."""
        return dst in self._dests

    def metric(self, dst: NodeId) -> int:
        """Metric of the selected route to ``dst`` (0 for ourselves), INFINITY if none."""
        if dst == self.node_id:
            return 0
        d = self._dests.get(dst)
        if d is None or d.sel is None:
            return INFINITY
        return min(INFINITY, d.sel.adv + self._costs[d.sel.nbr])

    def selected(self) -> dict[NodeId, tuple[str, int, int]]:
        """Every reachable destination -> (next hop, metric, seqno)."""
        costs = self._costs
        return {
            dst: (r.nbr, r.adv + costs[r.nbr], r.seqno)
            for dst, d in self._dests.items()
            if (r := d.sel) is not None
        }

    def neighbours(self) -> dict[str, int]:
        """Current neighbours and the link cost the router uses for each."""
        return dict(self._costs)

    def link_cost(self, neighbour: str) -> int:
        """The cost the router uses for ``neighbour``; INFINITY if it is not a neighbour."""
        return self._costs.get(neighbour, INFINITY)

    def feasibility_distance(self, dst: NodeId) -> tuple[int, int] | None:
        d = self._dests.get(dst)
        if d is None or d.fd_seqno == _NO_FD:
            return None
        return (d.fd_seqno, d.fd_metric)

    def drain_changes(self) -> list[RouteChange]:
        """Next-hop changes since the last drain, oldest first."""
        out = list(self._changes)
        self._changes.clear()
        return out

    # -- link events --------------------------------------------------------------------

    def set_link_cost(self, now: float, neighbour: str, cost: int) -> RouterOutput:
        """Add a neighbour or change its link cost; INFINITY means the link is gone."""
        return self._arm(now, self._set_link_cost(now, neighbour, cost))

    def remove_neighbour(
        self, now: float, neighbour: str, *, restarted: bool = False
    ) -> RouterOutput:
        """The link is gone: routes through it become unusable immediately. ``restarted``:
        the neighbour is back as a new incarnation (see :data:`RESTART_GHOST`)."""
        if restarted:
            self._restarted[neighbour] = now
        return self._arm(now, self._remove_neighbour(now, neighbour))

    def _set_link_cost(self, now: float, neighbour: str, cost: int) -> RouterOutput:
        if cost >= INFINITY:
            return self._remove_neighbour(now, neighbour)
        cost = max(MIN_LINK_COST, int(cost))
        out = _Out()
        old = self._costs.get(neighbour)
        if old is None:
            self._costs[neighbour] = cost
            self._by_nbr[neighbour] = {}
            # A new link: learn its table and give it ours straight away.
            out.request(neighbour, RouteRequest(None))
            out.dump_to[neighbour] = None
            return self._finish(now, out)
        if abs(cost - old) < max(LINK_COST_DEADBAND_ABS, old * LINK_COST_DEADBAND_REL):
            # Absorbed. Callers report costs on every hello, so this is also a cheap
            # moment to flush coalesced updates that are due.
            if self._flush_at is not None and now >= self._flush_at:
                return self._finish(now, out)
            return []
        self._costs[neighbour] = cost
        dests = self._dests
        costs = self._costs
        for dst, r in list(self._by_nbr[neighbour].items()):
            if r.adv >= INFINITY:
                continue
            d = dests[dst]
            sel = d.sel
            if sel is r:
                self._reselect(now, dst, d, out)
            elif cost < old and sel is not None:
                # Only a cheaper link can make a non-selected route win; check first.
                cur = sel.adv + costs[sel.nbr]
                new = r.adv + cost
                if cur - new > max(HYSTERESIS_ABS, cur * HYSTERESIS_REL):
                    self._reselect(now, dst, d, out)
        return self._finish(now, out)

    def _remove_neighbour(self, now: float, neighbour: str) -> RouterOutput:
        if self._costs.pop(neighbour, None) is None:
            return []
        out = _Out()
        self._dump_repeats.pop(neighbour, None)
        table = self._by_nbr.pop(neighbour)
        dests = self._dests
        next_hop_for: set[NodeId] = set()
        self._gone[neighbour] = (now, next_hop_for)
        for dst, r in table.items():
            d = dests[dst]
            del d.routes[neighbour]
            if d.sel is r:
                # It routed to dst not through us, so it will not take our route to dst
                # without a query of its own, which we (not hearing it) never answer.
                next_hop_for.add(dst)
                self._reselect(now, dst, d, out)
        for dst, a in list(self._active.items()):
            a.askers.pop(neighbour, None)
            if neighbour in a.owed:
                del a.owed[neighbour]  # it cannot answer; _complete_query decides
                if not a.owed and dests[dst].active is a:
                    self._complete_query(now, dst, dests[dst], out)
        return self._finish(now, out)

    # -- received TLVs ------------------------------------------------------------------

    def handle(self, now: float, neighbour: str, tlvs: Iterable[Tlv]) -> RouterOutput:
        """Process TLVs received from ``neighbour``; ignored if it is not a neighbour."""
        return self._arm(now, self._handle(now, neighbour, tlvs))

    def handle_packet(self, now: float, neighbour: str, data: bytes) -> RouterOutput:
        """Decode and process one packet without building TLV objects (the fast path).

        The whole packet is validated first, so a malformed one changes nothing and
        raises a DecodeError subclass.
        """
        return self._arm(now, self._handle_packet(now, neighbour, data))

    def _handle(self, now: float, neighbour: str, tlvs: Iterable[Tlv]) -> RouterOutput:
        table = self._by_nbr.get(neighbour)
        if table is None:
            return []
        out = _Out()
        for t in tlvs:
            if type(t) is Update:
                metric = t.metric
                r = table.get(t.dst)
                exp = now + _expiry(t.interval)
                # Fast path: the periodic refresh of an unchanged route.
                if r is not None and r.seqno == t.seqno and r.adv == metric < INFINITY:
                    r.expires = exp
                else:
                    self._on_update(now, neighbour, t.dst, t.seqno, metric, exp, out)
            elif type(t) is SeqnoRequest:
                self._on_seqno_request(now, neighbour, t.dst, t.seqno, t.hop_count, out)
            elif type(t) is RouteRequest:
                self._on_route_request(neighbour, t.dst, out)
            elif type(t) is Query:
                self._on_query(now, neighbour, t.dst, t.seqno, t.qid, out)
            elif type(t) is Reply:
                self._on_reply(now, neighbour, t.dst, t.seqno, t.metric, t.qid, out)
            elif type(t) is Resume:
                self._on_resume(now, neighbour, t.dst, t.seqno, t.metric, t.qid, out)
        return self._finish(now, out)

    def _handle_packet(self, now: float, neighbour: str, data: bytes) -> RouterOutput:
        segs = _segments(data)
        table = self._by_nbr.get(neighbour)
        if table is None:
            return []
        out = _Out()
        for t, start, end in segs:
            if t == T_UPDATE:
                (interval,) = _U16.unpack_from(data, start)
                exp = now + _expiry(interval)
                get = table.get
                for dst, seqno, metric in _UPD_REC.iter_unpack(data[start + _U16.size : end]):
                    r = get(dst)
                    if r is not None and r.seqno == seqno and r.adv == metric < INFINITY:
                        r.expires = exp
                    else:
                        self._on_update(now, neighbour, dst, seqno, metric, exp, out)
            elif t == T_SEQNO_REQUEST:
                dst, seqno, hops = _SEQREQ.unpack_from(data, start)
                self._on_seqno_request(now, neighbour, dst, seqno, hops, out)
            elif t == T_ROUTE_REQUEST:
                self._on_route_request(neighbour, bytes(data[start:end]) or None, out)
            elif t == T_QUERY:
                dst, seqno, qid = _QUERY.unpack_from(data, start)
                self._on_query(now, neighbour, dst, seqno, qid, out)
            else:
                dst, seqno, metric, qid = _ANSWER.unpack_from(data, start)
                if t == T_REPLY:
                    self._on_reply(now, neighbour, dst, seqno, metric, qid, out)
                else:
                    self._on_resume(now, neighbour, dst, seqno, metric, qid, out)
        return self._finish(now, out)

    def _on_update(
        self,
        now: float,
        nbr: str,
        dst: NodeId,
        seqno: int,
        metric: int,
        expires: float,
        out: _Out,
        *,
        fresh: bool = False,
    ) -> None:
        """An update that is not a plain refresh; ``expires`` is its refresh deadline.
        ``fresh``: it cannot be older than the neighbour's last query (a Resume)."""
        if dst == self.node_id:
            # Someone remembers a newer seqno of ours (we restarted): jump past it.
            if seqno_newer(seqno, self.seqno):
                self.seqno = (seqno + 1) & 0xFFFF
                out.all[dst] = None
            return
        d = self._dests.get(dst)
        if d is None:
            if metric >= INFINITY:
                return
            d = self._dests[dst] = _Dest(seqno)
        r = d.routes.get(nbr)
        sel = d.sel
        if (
            r is not None
            and not fresh
            and metric < INFINITY
            and now < r.thaw
            and not seqno_newer(seqno, r.qseq)
        ):
            return  # maybe sent before the neighbour's query and overtaken by it
        if r is None:
            if metric >= INFINITY:
                return
            r = _Route(nbr, seqno, metric, expires)
            d.routes[nbr] = r
            self._by_nbr[nbr][dst] = r
        else:
            if (
                r is sel
                and metric < INFINITY
                and d.fd_seqno != _NO_FD
                and not _better(seqno, metric, d.fd_seqno, d.fd_metric)
            ):
                # Unfeasible update for the selected route (RFC 8966 §3.5.3 allows
                # ignoring it): keep forwarding on what the neighbour said before,
                # which is still loop-free, and ask for a newer seqno instead of
                # black-holing traffic.
                self._request_seqno(now, dst, d, nbr, out)
                return
            r.seqno = seqno
            r.adv = metric
            if metric < INFINITY:
                r.expires = expires
        if seqno != d.seqno and seqno_newer(seqno, d.seqno):
            d.seqno = seqno
        if sel is not None and r is not sel and dst not in self._pending:
            # The selected route is unchanged and, by invariant, usable: a change
            # elsewhere matters only if it beats it by the hysteresis margin. This
            # spares the full reselection for most updates while routes are learnt.
            if metric >= INFINITY:
                return
            costs = self._costs
            cur = sel.adv + costs[sel.nbr]
            gain = cur - metric - costs[nbr]
            if gain <= HYSTERESIS_ABS or gain <= cur * HYSTERESIS_REL:
                return
        self._reselect(now, dst, d, out)

    def _on_seqno_request(
        self, now: float, nbr: str, dst: NodeId, seqno: int, hops: int, out: _Out
    ) -> None:
        if dst == self.node_id:
            if seqno_newer(seqno, self.seqno):
                # RFC 8966 §3.8.1.2 asks for +1 per request, assuming the seqno survives
                # a reboot (babeld keeps it in a state file). Ours starts at random after
                # a restart and may sit thousands behind what our neighbours remember,
                # which +1 per request would take hours to climb; requests come only
                # from authenticated neighbours, so jump straight to what they need.
                self.seqno = seqno
                out.all[dst] = None
            else:
                out.uni.setdefault(nbr, {})[dst] = None
            return
        d = self._dests.get(dst)
        if d is None:
            return
        sel = d.sel
        if sel is not None and seqno_ge(sel.seqno, seqno):
            out.uni.setdefault(nbr, {})[dst] = None  # we can satisfy it ourselves
            return
        if hops <= 1:
            return
        target = self._request_target(d, nbr)
        if target is None:
            return
        p = self._pending.get(dst)
        if (
            p is not None
            and seqno_ge(p.seqno, seqno)
            and p.target == target
            and now - p.forwarded_at < SEQNO_REQUEST_RESEND_DELAY
        ):
            # The same request went the same way a moment ago. (Had our next hop
            # changed since, the earlier copy may have gone into the very region that
            # is starving, so it goes again, to the new next hop.)
            return
        if p is None or p.expires <= now:
            p = self._pending[dst] = _Pending(
                seqno, now, originated=False, target=target, asker=nbr, hops=hops - 1
            )
        else:
            if seqno_newer(seqno, p.seqno):
                p.seqno = seqno
            p.forwarded_at = now
            p.expires = now + SEQNO_REQUEST_HOLD
            p.target = target
            if not p.originated:
                p.asker, p.hops = nbr, hops - 1
        out.request(target, SeqnoRequest(dst, seqno, hops - 1))

    def _reforward(self, now: float, dst: NodeId, d: _Dest, out: _Out) -> None:
        """Our next hop for ``dst`` changed: a request we forwarded to the old one has
        likely died there (it was failing, or we left it for a reason), and whoever asked
        will not ask again for a while. Send it on to the new next hop now."""
        p = self._pending.get(dst)
        if p is None or p.originated or p.expires <= now or d.sel is None:
            return
        if p.target == d.sel.nbr or seqno_ge(d.sel.seqno, p.seqno):
            return  # already went there, or answered by the route we now hold
        target = self._request_target(d, p.asker)
        if target is None or target == p.target:
            return
        p.target = target
        p.forwarded_at = now
        out.request(target, SeqnoRequest(dst, p.seqno, p.hops))

    def _request_target(self, d: _Dest, skip: str | None) -> str | None:
        """Where to send a seqno request: the selected next hop, else the neighbour with
        the best (possibly unfeasible) route, never back to ``skip``."""
        if d.sel is not None and d.sel.nbr != skip:
            return d.sel.nbr
        costs = self._costs
        best: str | None = None
        best_m = INFINITY
        for r in d.routes.values():
            if r.nbr == skip or r.adv >= INFINITY:
                continue
            m = r.adv + costs[r.nbr]
            if m < best_m:
                best, best_m = r.nbr, m
        return best

    def _on_route_request(self, nbr: str, dst: NodeId | None, out: _Out) -> None:
        if dst is None:
            out.dump_to[nbr] = None
        else:
            out.uni.setdefault(nbr, {})[dst] = None

    # -- starvation queries ------------------------------------------------------------
    #
    # A node that loses its last feasible route while unfeasible ones remain (the region
    # behind a dead relay) need not wait for a newer seqno from the destination, which
    # may be a long detour away. It withdraws its route with a Query to every neighbour.
    # Each neighbour treats the query as a retraction, so it no longer routes through the
    # querier, and replies; one that thereby starves too first runs its own query and
    # replies when that is over. Once every neighbour has replied, none holds a finite
    # route from the querier at that seqno (the QUERY_FREEZE guard keeps an overtaken
    # older update from bringing one back, and the querier advertised only INFINITY
    # since), so raising its feasibility distance to INFINITY for that seqno cannot
    # close a loop: the querier may take the best route it has. This is the diffusing
    # computation of DUAL (Garcia-Luna-Aceves, 1993) on top of Babel's seqnos; the seqno
    # request still goes out beside it, and a feasible route ends the query early.

    def _on_query(self, now: float, nbr: str, dst: NodeId, seqno: int, qid: int, out: _Out) -> None:
        if dst == self.node_id:
            out.request(nbr, Reply(dst, self.seqno, 0, qid))
            return
        d = self._dests.get(dst)
        if d is None:
            out.request(nbr, Reply(dst, seqno, INFINITY, qid))
            return
        r = d.routes.get(nbr)
        if (
            r is not None
            and r.qid >= 0
            and ((qid == r.qid and r.resumed) or seqno_newer(r.qid, qid))
        ):
            return  # a late copy of a query that is over, or of an older one
        if r is None:
            r = _Route(nbr, seqno, INFINITY, now)
            d.routes[nbr] = r
            self._by_nbr[nbr][dst] = r
        if r.qid != qid:
            r.qid, r.qseq, r.resumed = qid, seqno, False
            r.thaw = now + QUERY_FREEZE
            r.expires = max(r.expires, r.thaw)
        was_active = d.active is not None
        if r.adv < INFINITY:
            r.adv = INFINITY
            if d.sel is r:
                self._reselect(now, dst, d, out)
        a = d.active
        if a is not None and (not was_active or nbr in a.askers):
            # Its query made us starve: answer once our own query is over, so that its
            # reset does not pick a route of those behind us that still led through it.
            # (Loop freedom does not need the wait: a reply says we no longer route
            # through it, which is all its reset needs. A query that finds us already
            # asking is answered at once: two waiting on each other would stall.)
            a.askers[nbr] = qid
        else:
            u = self._advert(now, dst)
            out.request(nbr, Reply(dst, u.seqno, u.metric, qid))

    def _on_reply(
        self, now: float, nbr: str, dst: NodeId, seqno: int, metric: int, qid: int, out: _Out
    ) -> None:
        d = self._dests.get(dst)
        if d is None:
            return
        self._on_update(now, nbr, dst, seqno, metric, now + self._reply_expiry, out)
        a = d.active
        if a is not None and a.qid == qid and nbr in a.owed:
            del a.owed[nbr]
            if not a.owed:
                self._complete_query(now, dst, d, out)

    def _on_resume(
        self, now: float, nbr: str, dst: NodeId, seqno: int, metric: int, qid: int, out: _Out
    ) -> None:
        d = self._dests.get(dst)
        r = d.routes.get(nbr) if d is not None else None
        fresh = r is not None and r.qid == qid and not r.resumed
        if fresh:
            assert r is not None
            r.resumed = True
        self._on_update(now, nbr, dst, seqno, metric, now + self._reply_expiry, out, fresh=fresh)

    def _start_query(self, now: float, dst: NodeId, d: _Dest, out: _Out) -> None:
        if d.active is not None or d.fd_seqno == _NO_FD or not self._costs:
            return
        self._qid = qid = (self._qid + 1) & 0xFFFF
        a = _Active(qid, d.fd_seqno, self._costs, now)
        d.active = self._active[dst] = a
        out.request(None, Query(dst, a.seqno, qid))

    def _complete_query(self, now: float, dst: NodeId, d: _Dest, out: _Out) -> None:
        """Every neighbour has replied: reset the feasibility distance and reselect."""
        a = d.active
        assert a is not None
        if (
            d.fd_seqno == a.seqno
            and d.reset_seqno != a.seqno
            and self._none_gone_may_hold(now, dst)
        ):
            d.fd_metric = INFINITY
            d.reset_seqno = a.seqno
        self._reselect(now, dst, d, out)  # ends the query if it found a route
        if d.active is a:
            self._end_query(now, dst, d, out)

    def _none_gone_may_hold(self, now: float, dst: NodeId) -> bool:
        """No neighbour we dropped lately may still hold (and take) our route to dst,
        and none restarted so lately that others may still route through its former self
        (:data:`RESTART_GHOST`)."""
        for nbr, when in list(self._restarted.items()):
            if now - when < RESTART_GHOST:
                return False
            del self._restarted[nbr]
        horizon = now - self._retract_hold
        for nbr, (when, next_hop_for) in list(self._gone.items()):
            if when <= horizon or nbr in self._costs:
                del self._gone[nbr]  # expired there, or back (and sent our table again)
            elif dst not in next_hop_for:
                return False
        return True

    def _end_query(self, now: float, dst: NodeId, d: _Dest, out: _Out) -> None:
        """Our query is over (answered, given up, or a feasible route came): answer those
        who waited for it, and tell every neighbour our route now."""
        a = d.active
        assert a is not None
        d.active = None
        del self._active[dst]
        u = self._advert(now, dst)
        for asker, qid in a.askers.items():
            if asker in self._costs:
                out.request(asker, Reply(dst, u.seqno, u.metric, qid))
        if u.metric < INFINITY:
            # Unfreeze our route at the neighbours at once. (Unreachable, we have
            # nothing to unfreeze; our retraction went out when the query began.)
            out.request(None, Resume(dst, u.seqno, u.metric, a.qid))

    # -- selection ------------------------------------------------------------------------

    def _reselect(self, now: float, dst: NodeId, d: _Dest, out: _Out) -> None:
        """Pick the best feasible route for ``dst``, with hysteresis; queue what follows."""
        costs = self._costs
        fs, fm = d.fd_seqno, d.fd_metric
        cur = d.sel
        cur_m = INFINITY
        best: _Route | None = None
        best_m = INFINITY
        unfeasible_m = INFINITY
        resettable = False  # an unfeasible route at the FD's seqno: a query may free it
        p = self._pending.get(dst)
        if p is not None and p.expires <= now:
            p = None
        want = p.seqno if p is not None else 0
        fresh: _Route | None = None  # best feasible route carrying the requested seqno
        fresh_m = INFINITY
        for r in d.routes.values():
            a = r.adv
            if a >= INFINITY:
                continue
            m = a + costs[r.nbr]
            if m >= INFINITY:
                continue
            if fs != _NO_FD:
                s = r.seqno
                # Inlined _better(s, a, fs, fm): this loop is the hot path of learning.
                if not ((s == fs and a < fm) or 0 < ((s - fs) & 0xFFFF) < _HALF):
                    if m < unfeasible_m:
                        unfeasible_m = m
                    if s == fs and d.reset_seqno != fs:
                        resettable = True
                    continue
            if r is cur:
                cur_m = m
            if m < best_m:
                best, best_m = r, m
            if p is not None and m < fresh_m and ((r.seqno - want) & 0xFFFF) < _HALF:
                fresh, fresh_m = r, m
        # Hysteresis: stay on a usable route unless the new one is clearly better.
        if (
            cur_m < INFINITY
            and best is not cur
            and cur_m - best_m <= max(HYSTERESIS_ABS, cur_m * HYSTERESIS_REL)
        ):
            best, best_m = cur, cur_m
        if fresh is not None and (best is None or not seqno_ge(best.seqno, want)):
            # Someone is waiting for this seqno (maybe a starving node downstream):
            # take the route that carries it, even if longer, so the answer flows back.
            best, best_m = fresh, fresh_m
        d.sel = best
        old_nh = cur.nbr if cur is not None else None
        new_nh = best.nbr if best is not None else None
        if old_nh != new_nh:
            self.route_changes[dst] = self.route_changes.get(dst, 0) + 1
            self._changes.append(RouteChange(now, dst, old_nh, new_nh))
            if dst in self._pending:
                self._reforward(now, dst, d, out)
            if cur_m >= INFINITY and cur is not None:
                out.all[dst] = None  # retraction or failover: tell everyone now
            elif cur is None and fs != _NO_FD:
                # Reachable again after an outage: whoever starves behind us is waiting.
                out.all[dst] = None
            else:
                out.lazy[dst] = None  # new route or voluntary switch: coalesce
        if best is None:
            if resettable:
                self._start_query(now, dst, d, out)
            if cur is not None:
                self._request_seqno(now, dst, d, None, out)  # starvation escape
            elif unfeasible_m < INFINITY:
                # Unreachable, yet a neighbour has a route we may not take: ask for a
                # newer seqno so it becomes feasible (rate-limited by _pending).
                self._request_seqno(now, dst, d, None, out)
            return
        if seqno_newer(best.seqno, d.seqno):
            d.seqno = best.seqno
        if d.active is not None:
            self._end_query(now, dst, d, out)
        delta = best_m - d.adv_metric
        if delta >= TRIGGER_METRIC_DELTA:
            out.all[dst] = None  # bad news travels fast
        elif delta <= -TRIGGER_METRIC_DELTA:
            out.lazy[dst] = None
        elif unfeasible_m < best_m and best_m - unfeasible_m > max(
            HYSTERESIS_ABS, best_m * HYSTERESIS_REL
        ):
            # A much better route exists but is unfeasible: a newer seqno would free it.
            self._request_seqno(now, dst, d, None, out)
        if p is not None and seqno_ge(best.seqno, want):
            # The seqno someone asked for has arrived: pass it on promptly.
            del self._pending[dst]
            out.all[dst] = None
        elif fs != _NO_FD and seqno_newer(best.seqno, fs):
            # A newer seqno we have not advertised yet: pass it on (coalesced) even if
            # nothing else changed. A starving node may sit behind us without our
            # knowing; only the newer seqno makes routes feasible for it again, and
            # waiting for the periodic dump would starve it for a whole interval.
            out.lazy[dst] = None

    def _request_seqno(self, now: float, dst: NodeId, d: _Dest, to: str | None, out: _Out) -> None:
        """Originate a seqno request for ``dst`` unless one is already outstanding."""
        base = d.fd_seqno if d.fd_seqno != _NO_FD else d.seqno
        want = (base + 1) & 0xFFFF
        p = self._pending.get(dst)
        if p is not None and p.expires > now and seqno_ge(p.seqno, want) and p.originated:
            return
        # A request we merely forwarded does not stand in for our own: it carries no
        # resends, and it may have died upstream while we are the one starving now.
        self._pending[dst] = _Pending(want, now, originated=True)
        out.request(to, SeqnoRequest(dst, want, SEQNO_REQUEST_HOPS))

    # -- timers ----------------------------------------------------------------------------

    def start(self, now: float) -> RouterOutput:
        """Start the periodic work: the first run of the timer (which schedules the dumps
        and sweeps; neighbours added earlier already had a dump from set_link_cost) and
        the SetTimer for the next one. Other calls before it are harmless: they ask for a
        timer at once, whose firing does the same."""
        return self.handle_timer(now)

    def handle_timer(self, now: float) -> RouterOutput:
        """The ROUTE_TIMER fired: do whatever is due at ``now`` and re-arm. Always returns
        a SetTimer (first), so a firing that was early or late is harmless."""
        out = self._tick(now)
        due = self._deadline()
        self._timer_at = due
        out.insert(0, SetTimer(due, ROUTE_TIMER))
        return out

    def _arm(self, now: float, out: RouterOutput) -> RouterOutput:
        """Prepend a SetTimer to a call's output if the call made work due before the
        timer we last asked for (coalesced updates, seqno-request resends)."""
        # Never started: a timer at once, whose first run starts the periodic work.
        due = now if self._next_dump is None else self._deadline()
        if due < self._timer_at:
            self._timer_at = due
            out.insert(0, SetTimer(due, ROUTE_TIMER))
        return out

    def _tick(self, now: float) -> RouterOutput:
        """Periodic work due at ``now``: dumps, expiry sweeps, seqno-request resends."""
        out = _Out()
        interval = self.update_interval
        if self._next_dump is None:
            # Spread first dumps; new neighbours already got one from set_link_cost.
            self._next_dump = now + interval * self._rng.random()
            self._next_sweep = now + interval / 2
        if now >= self._next_dump:
            out.dump_to[_ALL] = None
            self._next_dump = now + interval * (1.0 - UPDATE_JITTER * self._rng.random())
        assert self._next_sweep is not None
        if now >= self._next_sweep:
            self._sweep(now, out)
            self._next_sweep = now + interval / 2
        self._due_copies(now, out.rep)
        self._due_request_copies(now, out)
        if self._active:
            self._query_timers(now, out)
        for nbr, (_left, due) in self._dump_repeats.items():
            if due <= now:
                out.rep_dump[nbr] = None
        if self._pending:
            for dst, p in list(self._pending.items()):
                if p.expires <= now:
                    del self._pending[dst]
                    d = self._dests.get(dst)
                    if p.originated and d is not None and d.sel is None and _has_route(d):
                        # Still starving with a route we may not take: the answer was
                        # lost on the way (a request can die in a region that was itself
                        # rerouting). Ask again rather than wait for the next dump.
                        self._request_seqno(now, dst, d, None, out)
                    continue
                if not p.originated or p.resends <= 0:
                    continue
                if p.next_resend <= now:
                    d = self._dests.get(dst)
                    if d is not None and (d.sel is None or not seqno_ge(d.sel.seqno, p.seqno)):
                        out.request(None, SeqnoRequest(dst, p.seqno, SEQNO_REQUEST_HOPS))
                    p.resends -= 1
                    done = SEQNO_REQUEST_MAX_RESENDS - p.resends
                    p.next_resend = now + SEQNO_REQUEST_RESEND_DELAY * (1 << done)
        return self._finish(now, out)

    def _query_timers(self, now: float, out: _Out) -> None:
        """Give up queries past their deadline; ask again whoever has not replied."""
        for dst, a in list(self._active.items()):
            d = self._dests[dst]
            if d.active is not a:
                continue  # ended by an earlier one in this loop
            if now >= a.deadline:
                self._end_query(now, dst, d, out)  # feasibility distance untouched
            elif now >= a.next_resend:
                a.next_resend = now + QUERY_RESEND
                for nbr in a.owed:
                    out.request(nbr, Query(dst, a.seqno, a.qid))

    def _deadline(self) -> float:
        """When _tick is next due (after it has run once)."""
        assert self._next_dump is not None and self._next_sweep is not None
        t = min(self._next_dump, self._next_sweep)
        if self._flush_at is not None and self._flush_at < t:
            t = self._flush_at
        if self._repeat_q and self._repeat_q[0][0] < t:
            t = self._repeat_q[0][0]  # maybe superseded: an early wake-up is harmless
        for _left, due in self._dump_repeats.values():
            if due < t:
                t = due
        for p in self._pending.values():
            if p.originated:
                due = p.next_resend if p.resends > 0 else p.expires
                if due < t:
                    t = due
        if self._req_repeats and self._req_repeats[0][0] < t:
            t = self._req_repeats[0][0]
        for a in self._active.values():
            due = min(a.next_resend, a.deadline)
            if due < t:
                t = due
        return t

    def _owe_request_copies(self, now: float, out: _Out) -> None:
        """Queue a second copy of each seqno request going out now (not of copies), then
        add the copies now due to what goes out."""
        due = now + REQUEST_REPEAT_DELAY
        for to, tlvs in out.reqs.items():
            for t in tlvs:
                if type(t) is SeqnoRequest:
                    self._req_repeats.append((due, to, t))
        for to, tlvs in out.req_copies.items():
            out.reqs.setdefault(to, []).extend(tlvs)

    def _due_request_copies(self, now: float, out: _Out) -> None:
        q = self._req_repeats
        while q and q[0][0] <= now:
            _, to, req = q.popleft()
            if to is not None and to not in self._costs:
                continue  # that neighbour is gone
            d = self._dests.get(req.dst)
            if d is not None and d.sel is not None and seqno_ge(d.sel.seqno, req.seqno):
                continue  # answered meanwhile
            out.req_copies.setdefault(to, []).append(req)

    def _sweep(self, now: float, out: _Out) -> None:
        """Drop expired routes, then sources no route can refer to any more."""
        dests = self._dests
        for nbr, table in self._by_nbr.items():
            expired = [dst for dst, r in table.items() if r.expires <= now]
            for dst in expired:
                r = table.pop(dst)
                d = dests[dst]
                del d.routes[nbr]
                if d.sel is r:
                    self._reselect(now, dst, d, out)
        gc = self._source_gc
        dead = [
            dst
            for dst, d in dests.items()
            if not d.routes and d.sel is None and now - d.fd_time > gc
        ]
        for dst in dead:
            del dests[dst]
            self._pending.pop(dst, None)
            self._active.pop(dst, None)
        horizon = now - self._retract_hold
        for nbr in [n for n, (when, _) in self._gone.items() if when <= horizon]:
            del self._gone[nbr]

    # -- output --------------------------------------------------------------------------

    def _advert(self, now: float, dst: NodeId) -> Update:
        """Our current route to ``dst`` as an Update; emitting it updates the FD."""
        ics = self._interval_cs
        if dst == self.node_id:
            return Update(dst, self.seqno, 0, ics)
        d = self._dests.get(dst)
        if d is None:
            return Update(dst, 0, INFINITY, ics)
        r = d.sel
        if r is None:
            d.adv_metric = INFINITY
            return Update(dst, d.seqno, INFINITY, ics)
        m = r.adv + self._costs[r.nbr]
        s = r.seqno
        if d.fd_seqno == _NO_FD or _better(s, m, d.fd_seqno, d.fd_metric):
            d.fd_seqno, d.fd_metric = s, m
        d.fd_time = now
        d.adv_metric = m
        return Update(dst, s, m, ics)

    def _full_dump(self, now: float) -> list[Tlv]:
        """Every reachable destination plus ourselves, and retractions of what a neighbour
        may still hold from us; the hot loop of periodic updates."""
        ics = self._interval_cs
        costs = self._costs
        tlvs: list[Tlv] = [Update(self.node_id, self.seqno, 0, ics)]
        append = tlvs.append
        held_since = now - self._retract_hold
        for dst, d in self._dests.items():
            r = d.sel
            if r is None:
                # fd_time: when we last advertised it reachable. Until that route has
                # expired everywhere, a neighbour that lost our retraction may hold it.
                if d.fd_time > held_since:
                    d.adv_metric = INFINITY
                    append(Update(dst, d.seqno, INFINITY, ics))
                continue
            m = r.adv + costs[r.nbr]
            s = r.seqno
            fs = d.fd_seqno
            if fs == _NO_FD or _better(s, m, fs, d.fd_metric):
                d.fd_seqno, d.fd_metric = s, m
            d.fd_time = now
            d.adv_metric = m
            append(Update(dst, s, m, ics))
        return tlvs

    def _finish(self, now: float, out: _Out) -> RouterOutput:
        """Turn what a call collected into at most one batch per recipient."""
        if not self._costs:
            # Nobody to tell; nothing is advertised, so no FD changes either.
            self._buffered.clear()
            self._flush_at = None
            self._repeats.clear()
            self._repeat_q.clear()
            self._dump_repeats.clear()
            self._req_repeats.clear()
            return []
        everyone = _ALL in out.dump_to
        buffered = self._buffered
        if out.lazy:
            for dst in out.lazy:
                buffered[dst] = None
            if self._flush_at is None:
                self._flush_at = now + TRIGGER_DELAY
        if buffered:
            if everyone or (self._flush_at is not None and now >= self._flush_at):
                out.all.update(buffered)
                buffered.clear()
                self._flush_at = None
            else:
                for dst in out.all:
                    buffered.pop(dst, None)  # leaving now anyway
            if not buffered:
                self._flush_at = None
        result: RouterOutput = []
        copies = self._copies(now, out, everyone)
        if everyone:
            to_all = self._full_dump(now)
            # The dump already carries every selected route and held retraction.
            to_all.extend(
                self._advert(now, dst) for dst in (*out.all, *copies) if not self._dumped(now, dst)
            )
        else:
            to_all = [self._advert(now, dst) for dst in out.all]
            to_all.extend(self._advert(now, dst) for dst in copies)
        self._owe_copies(now, out.all)
        self._owe_request_copies(now, out)
        to_all.extend(out.reqs.get(None, ()))
        if to_all:
            result.append(Outgoing(None, to_all))
        self._dump_copies(now, out)
        dump: list[Tlv] | None = None
        targets = dict.fromkeys([*out.dump_to, *out.uni, *(k for k in out.reqs if k is not None)])
        for nbr in targets:
            if nbr == _ALL or nbr not in self._costs:
                continue
            tlvs: list[Tlv] = list(out.reqs.get(nbr, ()))
            if nbr in out.dump_to:
                if not everyone:
                    if dump is None:
                        dump = self._full_dump(now)
                    tlvs.extend(dump)
            else:
                for dst in out.uni.get(nbr, ()):
                    if dst in out.all or (everyone and self._dumped(now, dst)):
                        continue  # already going to everyone
                    tlvs.append(self._advert(now, dst))
            if tlvs:
                result.append(Outgoing(nbr, tlvs))
        return result

    def _dumped(self, now: float, dst: NodeId) -> bool:
        """Whether a full dump includes ``dst`` (as a route or as a held retraction)."""
        if dst == self.node_id:
            return True
        d = self._dests.get(dst)
        if d is None:
            return False
        return d.sel is not None or d.fd_time > now - self._retract_hold

    # -- copies (loss) ----------------------------------------------------------------------

    def _copies(self, now: float, out: _Out, everyone: bool) -> list[NodeId]:
        """Destinations whose owed copy goes out in this call, counted off: those due, and,
        when something goes to everyone anyway, those due within half a REPEAT_DELAY (they
        ride along instead of costing a packet of their own a moment later)."""
        rep = out.rep
        if self._repeat_q and (everyone or out.all or None in out.reqs):
            self._due_copies(now + REPEAT_DELAY / 2, rep)
        if not rep:
            return []
        repeats = self._repeats
        q = self._repeat_q
        sent: list[NodeId] = []
        for dst in rep:
            left, _ = repeats.pop(dst, (0, 0.0))
            if left <= 0 or dst in out.all or dst in self._buffered:
                continue  # a fresh update goes now (or at the flush) and owes its own
            if dst != self.node_id and dst not in self._dests:
                continue  # collected since: nothing left to say
            sent.append(dst)
            if left > 1:
                due = now + REPEAT_DELAY
                repeats[dst] = (left - 1, due)
                q.append((due, dst))
        return sent

    def _due_copies(self, horizon: float, rep: dict[NodeId, None]) -> None:
        """Move the owed copies due by ``horizon`` off the queue into ``rep``, skipping
        entries a newer change superseded."""
        q = self._repeat_q
        repeats = self._repeats
        while q and q[0][0] <= horizon:
            due, dst = q.popleft()
            if repeats.get(dst, (0, None))[1] == due:
                rep[dst] = None

    def _owe_copies(self, now: float, fresh: Iterable[NodeId]) -> None:
        """Triggered updates for ``fresh`` went out now: owe each ``update_repeats`` copies
        (restarting the count of any copies still owed for an older change)."""
        n = self._update_repeats
        if n <= 0:
            return
        due = now + REPEAT_DELAY
        repeats = self._repeats
        q = self._repeat_q
        for dst in fresh:
            repeats[dst] = (n, due)
            q.append((due, dst))

    def _dump_copies(self, now: float, out: _Out) -> None:
        """Turn due dump copies into dumps of this call, and owe copies of fresh dumps to
        one neighbour (a new link, a route request): a lost one would otherwise leave the
        neighbour without our table until the next periodic dump."""
        dumps = self._dump_repeats
        fresh = [nbr for nbr in out.dump_to if nbr != _ALL and nbr in self._costs]
        for nbr in out.rep_dump:
            left, _ = dumps.pop(nbr, (0, 0.0))
            if left <= 0 or nbr in out.dump_to or nbr not in self._costs:
                continue  # a fresh dump goes now and owes its own
            out.dump_to[nbr] = None
            if left > 1:
                dumps[nbr] = (left - 1, now + REPEAT_DELAY)
        if self._update_repeats > 0:
            for nbr in fresh:
                dumps[nbr] = (self._update_repeats, now + REPEAT_DELAY)


_ALL: Final = "\x00all"
"""Key in ``_Out.dump_to`` for a periodic dump to everyone (not a valid peer name)."""


def _expiry(interval_cs: int) -> float:
    """Seconds a route advertised with this interval stays valid without refresh."""
    if interval_cs <= 0:
        interval_cs = round(UPDATE_INTERVAL * 100)
    return ROUTE_EXPIRY_FACTOR * interval_cs / 100.0


def _has_route(d: _Dest) -> bool:
    """Some neighbour advertises a finite metric (feasible or not)."""
    return any(r.adv < INFINITY for r in d.routes.values())


def _better(s: int, m: int, fs: int, fm: int) -> bool:
    """(s, m) strictly better than the feasibility distance (fs, fm)."""
    return seqno_newer(s, fs) or (s == fs and m < fm)
