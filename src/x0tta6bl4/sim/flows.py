"""Constant-rate application flows and what their receivers saw.

    flows = FlowSet(sim)
    f = flows.add("n0001", "n0042", rate_pps=20, size=64, start=5.0, stop=25.0)
    sim.run(30.0)
    f.stats(sim.now).delivery_ratio, f.stats(sim.now).latency_p99, f.outages()

A flow's source sends ``size``-byte payloads at ``start + k / rate_pps`` (``k = 0, 1,
...``, before ``stop``) through whatever core runs on it then, as ``AppSend``s on
:data:`FLOW_PORT`; the payload carries the flow and sequence number, so the receiving
tap (``Simulator.on_deliver``) knows each packet's send time without a table. Every
figure here comes from packets actually delivered: ground truth, not a routing view.

Delivery records in the trace (kind ``sim.flow.deliver``) are opt-in (``trace=True``):
a big run delivers far more packets than it has other records.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from x0tta6bl4.sansio import Deliver

from .engine import Simulator
from .types import SimError, percentile

__all__ = [
    "FLOW_PORT",
    "FLOW_RECORD",
    "Flow",
    "FlowSet",
    "FlowStats",
]

FLOW_PORT: Final = 0xF10F
"""The application port flows use (port 0 is the mesh's own echo probe)."""
FLOW_RECORD: Final = "sim.flow.deliver"
"""Trace kind of a delivery record (``trace=True``): fields ``flow``, ``seq``, ``src``."""
_HEADER: Final = struct.Struct(">4sII")  # magic, flow id, sequence number
_MAGIC: Final = b"x0tF"
MIN_SIZE: Final = _HEADER.size
GAP_PACKETS: Final = 5
"""Default outage threshold, in send intervals: at 2 % loss per link, five packets lost
in a row on a ten-hop path happen about once in 5,000, so a gap this long is an outage,
not bad luck."""


@dataclass(frozen=True, slots=True)
class FlowStats:
    """One flow's figures over the packets sent in ``[start, upto]``.

    ``delivery_ratio`` is distinct packets delivered / packets sent (nan if none was
    sent); ``duplicates`` counts extra copies. Latencies are seconds from send to
    delivery (nan without deliveries). ``outages`` are the delivery gaps longer than the
    threshold (see :meth:`Flow.outages`); ``first_delivery_at`` is the first delivery
    of the flow at all (first contact), None if nothing arrived.
    """

    flow: int
    src: str
    dst: str
    sent: int
    delivered: int
    duplicates: int
    delivery_ratio: float
    latency_p50: float
    latency_p90: float
    latency_p99: float
    latency_max: float
    first_delivery_at: float | None
    outages: tuple[tuple[float, float | None], ...]


class Flow:
    """One constant-rate flow and the deliveries its receiver saw (first copy of each
    sequence number, by delivery time)."""

    __slots__ = (
        "_ticks",
        "arrivals",
        "dst",
        "duplicates",
        "id",
        "interval",
        "rate_pps",
        "size",
        "src",
        "start",
        "stop",
    )

    def __init__(
        self,
        flow_id: int,
        src: str,
        dst: str,
        rate_pps: float,
        size: int,
        start: float,
        stop: float,
    ) -> None:
        self.id = flow_id
        self.src = src
        self.dst = dst
        self.rate_pps = rate_pps
        self.interval = 1.0 / rate_pps
        self.size = size
        self.start = start
        self.stop = stop
        self.arrivals: dict[int, float] = {}
        """Sequence number -> delivery time of its first copy (in delivery order)."""
        self.duplicates = 0
        self._ticks = 0  # packets handed to the source so far

    def send_time(self, seq: int) -> float:
        # start + seq * interval rather than a running sum: no float drift.
        return self.start + seq * self.interval

    @property
    def sent(self) -> int:
        """Packets the source's application has sent so far."""
        return self._ticks

    def sent_by(self, t: float) -> int:
        """Packets sent at or before ``t``."""
        if t < self.start:
            return 0
        n = math.floor((min(t, self.stop) - self.start) * self.rate_pps + 1e-9) + 1
        if self.send_time(n - 1) >= self.stop:  # stop is exclusive
            n -= 1
        return max(0, min(n, self._ticks))

    def window(self, t0: float, t1: float) -> tuple[int, int]:
        """``(sent, delivered)`` of the packets sent in ``[t0, t1)`` (delivered so far)."""
        first = max(0, math.ceil((t0 - self.start) * self.rate_pps - 1e-9))
        end = min(self._ticks, max(0, math.ceil((t1 - self.start) * self.rate_pps - 1e-9)))
        if end <= first:
            return 0, 0
        got = sum(1 for seq in self.arrivals if first <= seq < end)
        return end - first, got

    def payload(self, seq: int) -> bytes:
        return _HEADER.pack(_MAGIC, self.id, seq).ljust(self.size, b"\0")

    def deliveries(self) -> Iterator[tuple[float, int]]:
        """``(delivery time, seq)`` of every distinct packet delivered, in delivery order
        (the order ``arrivals`` was filled in, since the clock only goes forward)."""
        return ((t, seq) for seq, t in self.arrivals.items())

    def first_delivery_after(self, t: float) -> tuple[float, int] | None:
        """``(delivery time, seq)`` of the first delivery of a packet *sent* at or after
        ``t``: a packet already past a failed element when the fault struck says nothing
        about repair. None if there is none (yet)."""
        found: tuple[float, int] | None = None
        # Backwards from the latest: costs the deliveries since t, not the whole flow.
        for seq, at in reversed(self.arrivals.items()):
            if at < t:
                break
            if self.send_time(seq) >= t - 1e-9:
                found = (at, seq)
        return found

    def outages(
        self, until: float, *, min_gap: float | None = None
    ) -> tuple[tuple[float, float | None], ...]:
        """Delivery gaps longer than ``min_gap`` (default :data:`GAP_PACKETS` send
        intervals) once the flow has delivered: ``(last delivery before, first after)``;
        a gap still open at ``until`` (or at the flow's stop, if earlier) ends in None.
        The wait for the first delivery is first contact, not an outage."""
        gap = GAP_PACKETS * self.interval if min_gap is None else min_gap
        out: list[tuple[float, float | None]] = []
        prev: float | None = None
        for t, _ in self.deliveries():
            if t > until:
                break
            if prev is not None and t - prev > gap:
                out.append((prev, t))
            prev = t
        end = min(until, self.stop)
        if prev is not None and end - prev > gap and self.sent_by(end) > 0:
            out.append((prev, None))
        return tuple(out)

    def stats(self, now: float, *, grace: float = 1.0, min_gap: float | None = None) -> FlowStats:
        """Figures over the packets sent up to ``now - grace`` (later ones may still be
        in flight at ``now``) and delivered by ``now``."""
        upto = now - grace
        sent = self.sent_by(upto)
        lat: list[float] = []
        first: float | None = None
        for t, seq in self.deliveries():
            if t > now:
                break
            if first is None:
                first = t
            if seq < sent:
                lat.append(t - self.send_time(seq))
        return FlowStats(
            flow=self.id,
            src=self.src,
            dst=self.dst,
            sent=sent,
            delivered=len(lat),
            duplicates=self.duplicates,
            delivery_ratio=len(lat) / sent if sent else math.nan,
            latency_p50=percentile(lat, 50),
            latency_p90=percentile(lat, 90),
            latency_p99=percentile(lat, 99),
            latency_max=max(lat) if lat else math.nan,
            first_delivery_at=first,
            outages=self.outages(now, min_gap=min_gap),
        )

    def __repr__(self) -> str:
        return (
            f"Flow({self.id}: {self.src}->{self.dst} {self.rate_pps:g} pps x {self.size} B, "
            f"[{self.start:g}, {self.stop:g}), sent {self._ticks}, got {len(self.arrivals)})"
        )


class FlowSet:
    """The flows of one simulator: sends them, taps their deliveries.

    The tap is installed with the first flow, so a simulator without flows pays nothing.
    ``trace=True`` appends a ``sim.flow.deliver`` record per distinct delivery.
    """

    def __init__(self, sim: Simulator, *, trace: bool = False) -> None:
        self.sim = sim
        self.trace = trace
        self.flows: list[Flow] = []
        self._tapped = False

    def __iter__(self) -> Iterator[Flow]:
        return iter(self.flows)

    def __len__(self) -> int:
        return len(self.flows)

    def add(
        self,
        src: str,
        dst: str,
        rate_pps: float,
        size: int = 64,
        start: float | None = None,
        stop: float = math.inf,
    ) -> Flow:
        """A flow ``src -> dst`` of ``rate_pps`` packets per second of ``size`` bytes,
        sending from ``start`` (default now) until before ``stop``."""
        sim = self.sim
        for n in (src, dst):
            if not sim.has_node(n):
                raise SimError(f"add_flow: unknown node {n!r}")
        if src == dst:
            raise SimError(f"add_flow: a flow needs two nodes, got {src!r} twice")
        if not (rate_pps > 0 and math.isfinite(rate_pps)):
            raise SimError(f"add_flow: rate_pps must be a finite number > 0, got {rate_pps!r}")
        if not (isinstance(size, int) and size >= MIN_SIZE):
            raise SimError(f"add_flow: size must be an int >= {MIN_SIZE} bytes, got {size!r}")
        t0 = sim.now if start is None else start
        if not (t0 >= sim.now and stop > t0):
            raise SimError(f"add_flow: need now <= start < stop, got {t0!r}, {stop!r}")
        flow = Flow(len(self.flows), src, dst, rate_pps, size, t0, stop)
        self.flows.append(flow)
        if not self._tapped:
            sim.on_deliver.append(self._on_deliver)
            self._tapped = True
        sim.schedule(t0, lambda s: self._tick(s, flow, 0))
        return flow

    def _tick(self, sim: Simulator, flow: Flow, seq: int) -> None:
        # One pending event per flow: the next send is scheduled by this one, so a flow
        # with no stop costs one heap entry, not one per packet to come.
        sim.send_app(sim.now, flow.src, flow.dst, FLOW_PORT, flow.payload(seq))
        flow._ticks = seq + 1
        nxt = flow.send_time(seq + 1)
        if nxt < flow.stop:
            sim.schedule(nxt, lambda s: self._tick(s, flow, seq + 1))

    def _on_deliver(self, t: float, node: str, d: Deliver) -> None:
        if d.port != FLOW_PORT or len(d.payload) < MIN_SIZE:
            return
        magic, fid, seq = _HEADER.unpack_from(d.payload)
        if magic != _MAGIC or fid >= len(self.flows):
            return
        flow = self.flows[fid]
        if node != flow.dst or d.src != flow.src:
            return  # not this flow's receiver: never count it as delivered
        if seq in flow.arrivals:
            flow.duplicates += 1
            return
        flow.arrivals[seq] = t
        if self.trace:
            self.sim.record(t, node, FLOW_RECORD, {"flow": fid, "seq": seq, "src": d.src})

    def stats(self, *, grace: float = 1.0, min_gap: float | None = None) -> list[FlowStats]:
        """Every flow's :meth:`Flow.stats` at the simulator's current time."""
        now = self.sim.now
        return [f.stats(now, grace=grace, min_gap=min_gap) for f in self.flows]

    def delivery_ratio(self, *, grace: float = 1.0) -> float:
        """Distinct packets delivered / sent, over every flow (nan if nothing was sent)."""
        st = self.stats(grace=grace)
        sent = sum(s.sent for s in st)
        return sum(s.delivered for s in st) / sent if sent else math.nan
