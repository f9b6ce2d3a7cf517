"""The node's status reporter: a signed ``POST /v1/reports`` every ``report_interval``.

Each report carries the node's current status (from a ``snapshot()`` callable the agent
supplies; :func:`report_from_status` builds it from ``Agent.status()``) and the events
gathered since the last accepted report. Events wait in a bounded buffer until the
service has stored them: a report that fails is resent with them (the service stores an
event once per ``(node, kind, at)``, so a resend after a lost answer is harmless). When
the buffer is full the oldest events are dropped and counted, and the next accepted
report says how many (``reporter.events_dropped``).

``report_soon()`` (the agent calls it when a link goes up or down) sends the next report
at once instead of at the end of the interval, so the control plane's topology shows a
dead neighbour within the dead interval plus one request rather than up to a whole
interval later. Prompt reports are at least ``MIN_PROMPT_GAP_S`` apart (a flapping link
cannot flood the service) and never cut a failure backoff short.

The control plane being down never stops the node: failures back off exponentially
(jittered, up to ``max_backoff``) and are logged once per outage, not once per try.
Standard library only on the running agent's side (no pydantic): the request goes
through ``ControlClient`` in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from x0tta6bl4.api import reports as wire
from x0tta6bl4.node.control_client import ControlClient, ControlError, Signer
from x0tta6bl4.observability import recorder

log = structlog.get_logger("x0tta6bl4.node.reporter")

DEFAULT_MAX_PENDING = 1000
DROPPED_KIND = "reporter.events_dropped"
# The agent's status gives an event's wall-clock time re-derived from monotonic time on
# each call, so the same event may come back a millisecond apart: closer than this, with
# the same kind and detail, is the same event.
AT_TOLERANCE_S = 0.05
_SEEN_MAX = 4096
# HTTP statuses meaning "this report's content is refused": resending it cannot help,
# so its events are dropped (and counted) instead of blocking every later report.
_REFUSED = frozenset({400, 413, 422})
_BACKLOG_DELAY_S = 0.05
# Prompt reports (link changes) come at least this far apart; changes in between ride
# along in the next one.
MIN_PROMPT_GAP_S = 0.2

SignerSource = Signer | Callable[[], Signer | None] | None


@dataclass(slots=True)
class ReporterStats:
    reports_sent: int = 0
    reports_failed: int = 0
    consecutive_failures: int = 0
    events_sent: int = 0  # stored by the service now (not counting duplicates)
    events_dropped: int = 0  # pushed out of the full buffer
    events_refused: int = 0  # in a report the service refused (400/413/422)
    events_invalid: int = 0  # unusable kind or time, never queued
    last_ok_at: float | None = None
    last_error: str | None = None


class Reporter:
    """``await reporter.run()`` until cancelled; ``add_event`` from the agent's loop."""

    def __init__(
        self,
        client: ControlClient,
        signer: SignerSource,
        snapshot: Callable[[], Mapping[str, Any]],
        *,
        report_interval: float = 5.0,
        max_pending: int = DEFAULT_MAX_PENDING,
        max_backoff: float = 60.0,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        if report_interval <= 0 or max_backoff <= 0 or max_pending < 1:
            raise ValueError("report_interval and max_backoff must be > 0, max_pending >= 1")
        self._client = client
        self._signer = signer
        self._snapshot = snapshot
        self.report_interval = report_interval
        self.max_pending = max_pending
        self.max_backoff = max_backoff
        self._clock = clock
        self._rng = rng or random.Random()
        self._pending: OrderedDict[int, wire.EventDict] = OrderedDict()
        self._seq = 0
        self._dropped_unreported = 0
        self._wake: asyncio.Event | None = None  # made in run(), on the agent's loop
        self._last_report_at = float("-inf")  # time.monotonic() of the last attempt
        # (kind, detail) -> times seen; and (kind, at) pairs taken, so two different
        # events never share the service's (kind, at) key.
        self._seen: OrderedDict[tuple[Any, ...], list[float]] = OrderedDict()
        self._taken: OrderedDict[tuple[str, float], None] = OrderedDict()
        self.stats = ReporterStats()

    # -- events ----------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        return len(self._pending)

    def add_event(self, kind: str, at: float, detail: Mapping[str, Any] | None = None) -> bool:
        """Queue an event for the next report; False when it is a repeat of one already
        queued or sent, or unusable (bad kind or time, counted in ``events_invalid``)."""
        ev = wire.clean_event(kind, at, detail)
        if ev is None:
            self.stats.events_invalid += 1
            return False
        sig = (ev["kind"], tuple(sorted(ev["detail"].items(), key=lambda kv: kv[0])))
        times = self._seen.get(sig)
        if times is not None and any(abs(t - ev["at"]) <= AT_TOLERANCE_S for t in times):
            return False
        if times is None:
            times = self._seen[sig] = []
            if len(self._seen) > _SEEN_MAX:
                self._seen.popitem(last=False)
        times.append(ev["at"])
        del times[:-8]
        # Another event of this kind at this very time: nudge, or the service would keep
        # only one of them.
        while (ev["kind"], ev["at"]) in self._taken:
            ev["at"] += 1e-6
        self._taken[(ev["kind"], ev["at"])] = None
        if len(self._taken) > _SEEN_MAX:
            self._taken.popitem(last=False)
        self._seq += 1
        self._pending[self._seq] = ev
        while len(self._pending) > self.max_pending:
            self._pending.popitem(last=False)
            self.stats.events_dropped += 1
            self._dropped_unreported += 1
        return True

    # -- one report ------------------------------------------------------------------------

    def build(self) -> tuple[wire.ReportDict, list[int]]:
        """The next report (status from ``snapshot()`` plus the oldest pending events)
        and the sequence numbers of the events it carries. Raises what ``snapshot``
        raises."""
        snap = self._snapshot()
        for raw in snap.get("events") or ():
            if isinstance(raw, Mapping):
                detail = raw.get("detail")
                self.add_event(
                    raw.get("kind"),  # type: ignore[arg-type]
                    raw.get("at"),  # type: ignore[arg-type]
                    detail if isinstance(detail, Mapping) else None,
                )
        now = self._clock()
        room = wire.MAX_EVENTS - (1 if self._dropped_unreported else 0)
        seqs = list(self._pending)[:room]
        events = [self._pending[s] for s in seqs]
        if self._dropped_unreported:
            dropped = wire.clean_event(DROPPED_KIND, now, {"count": self._dropped_unreported})
            assert dropped is not None
            events.append(dropped)
        return _report(snap, now, events), seqs

    async def report_once(self) -> bool:
        """Build and send one report; True when the service accepted it. Never raises
        (but cancellation)."""
        try:
            signer = self._signer() if callable(self._signer) else self._signer
        except Exception as exc:  # e.g. credentials being replaced on disk: try later
            return self._failed(f"no signer: {type(exc).__name__}: {exc}")
        if signer is None:
            return self._failed("no certificate to sign with yet")
        try:
            body, seqs = self.build()
        except Exception as exc:  # a snapshot bug must not stop reporting for good
            log.exception("report_snapshot_failed")
            return self._failed(f"snapshot failed: {type(exc).__name__}: {exc}")
        dropped_reported = self._dropped_unreported
        try:
            answer = await asyncio.to_thread(
                self._client.request, "POST", wire.PATH, body, signer=signer
            )
        except ControlError as exc:
            if exc.status in _REFUSED:
                self._forget(seqs)
                self.stats.events_refused += len(seqs)
                log.warning("report_refused", status=exc.status, error=str(exc)[:300])
            return self._failed(str(exc))
        except Exception as exc:  # anything else from the client thread: report, go on
            return self._failed(f"{type(exc).__name__}: {exc}")
        self._forget(seqs)
        self._dropped_unreported = max(0, self._dropped_unreported - dropped_reported)
        if isinstance(answer, Mapping) and isinstance(answer.get("accepted_events"), int):
            self.stats.events_sent += answer["accepted_events"]
        if self.stats.consecutive_failures:
            log.info(
                "control_plane_reports_resumed", after_failures=self.stats.consecutive_failures
            )
        self.stats.reports_sent += 1
        if (m := recorder()) is not None:
            m.record_control_sync("report", time.time())
        self.stats.consecutive_failures = 0
        self.stats.last_ok_at = self._clock()
        self.stats.last_error = None
        return True

    def _forget(self, seqs: Sequence[int]) -> None:
        for s in seqs:
            self._pending.pop(s, None)  # may already be gone: dropped while in flight

    def _failed(self, why: str) -> bool:
        self.stats.reports_failed += 1
        self.stats.consecutive_failures += 1
        if self.stats.consecutive_failures == 1:
            log.warning("control_plane_report_failed", error=why[:300], will_retry=True)
        self.stats.last_error = why[:300]
        return False

    # -- the loop --------------------------------------------------------------------------

    def next_delay(self, ok: bool) -> float:
        """Seconds to the next report: the interval (jittered ±10 % so many nodes do not
        report in lockstep), at once while a backlog of events remains, and exponential
        backoff after failures."""
        if ok:
            if self._pending:
                return _BACKLOG_DELAY_S
            return self.report_interval * self._rng.uniform(0.9, 1.1)
        n = min(self.stats.consecutive_failures, 16)
        base = min(self.max_backoff, self.report_interval * 2.0 ** max(n - 1, 0))
        return base * self._rng.uniform(0.8, 1.2)

    def report_soon(self) -> None:
        """Send the next report now rather than at the end of the interval (something the
        control plane shows changed: a link went up or down). Call from the loop that
        runs ``run()``; a no-op before it starts and while backing off after failures."""
        if self._wake is not None and self.stats.consecutive_failures == 0:
            self._wake.set()

    async def run(self) -> None:
        """Report until cancelled. The first report goes within one interval."""
        self._wake = wake = asyncio.Event()
        delay = self.report_interval * self._rng.uniform(0.0, 0.2)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), delay)
            if wake.is_set():
                wake.clear()
                # Keep prompt reports apart; what changes meanwhile goes in this one.
                gap = self._last_report_at + MIN_PROMPT_GAP_S - time.monotonic()
                if gap > 0:
                    await asyncio.sleep(gap)
                    wake.clear()
            self._last_report_at = time.monotonic()
            ok = await self.report_once()
            delay = self.next_delay(ok)


def _report(snap: Mapping[str, Any], now: float, events: list[wire.EventDict]) -> wire.ReportDict:
    """The snapshot cut to the wire bounds: bad entries skipped, numbers clamped."""
    neighbours = [
        n for n in (wire.clean_neighbour(x) for x in _maps(snap.get("neighbours"))) if n is not None
    ][: wire.MAX_NEIGHBOURS]
    routes = [r for r in (wire.clean_route(x) for x in _maps(snap.get("routes"))) if r is not None][
        : wire.MAX_ROUTES
    ]
    endpoints = [e for e in snap.get("endpoints") or () if wire.is_endpoint(e)]
    return {
        "at": now,
        "endpoints": list(dict.fromkeys(endpoints))[: wire.MAX_ENDPOINTS],
        "neighbours": neighbours,
        "routes": routes,
        "sessions": _sessions(snap.get("sessions")),
        "policy_version": _version(snap.get("policy_version")),
        "crl_version": _version(snap.get("crl_version")),
        "events": events,
    }


def _maps(value: object) -> list[Mapping[str, Any]]:
    if not isinstance(value, list | tuple):
        return []
    return [x for x in value if isinstance(x, Mapping)]


def _sessions(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return min(max(value, 0), wire.MAX_SESSIONS)


def _version(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 <= value <= wire.MAX_VERSION else None


_WILDCARD_HOSTS = ("0.0.0.0:", "[::]:")


def report_from_status(
    status: Mapping[str, Any],
    *,
    endpoints: Sequence[str] | None = None,
    crl_version: int | None = None,
) -> dict[str, Any]:
    """A ``snapshot()`` result from ``Agent.status()`` (what ``x0t status`` shows).

    ``endpoints``: where other nodes can reach this one (HOST:PORT); by default the bound
    listen addresses, without wildcard ones (0.0.0.0, [::]), which say nothing to a new
    node. ``crl_version``: the revocation list the node holds, when the status lacks it.
    Healing events become events of their fault kind (``dead_neighbour``, ...) with the
    subject, actions, outcome, MTTD and MTTR as detail.
    """
    if endpoints is None:
        endpoints = [
            e
            for e in status.get("listen") or ()
            if isinstance(e, str) and not e.startswith(_WILDCARD_HOSTS)
        ]
    neighbours = [
        {
            "name": n.get("name"),
            "rtt_ms": n.get("rtt_ms"),
            "loss": n.get("loss"),
            "cost": n.get("cost"),
            "up": bool(n.get("alive")),
        }
        for n in _maps(status.get("neighbours"))
    ]
    routes = [
        {"destination": r.get("dst"), "next_hop": r.get("via"), "metric": r.get("metric")}
        for r in _maps(status.get("routes"))
    ]
    sessions = sum(1 for s in _maps(status.get("sessions")) if s.get("established"))
    events = [
        {
            "kind": e.get("kind"),
            "at": e.get("at"),
            "detail": {
                k: e.get(k) for k in ("subject", "action", "outcome", "mttd_s", "mttr_s") if k in e
            },
        }
        for e in _maps(status.get("healing_events"))
    ]
    crl = crl_version if crl_version is not None else status.get("crl_version")
    return {
        "endpoints": list(endpoints),
        "neighbours": neighbours,
        "routes": routes,
        "sessions": sessions,
        "policy_version": status.get("policy"),
        "crl_version": crl,
        "events": events,
    }


__all__ = ["DROPPED_KIND", "MIN_PROMPT_GAP_S", "Reporter", "ReporterStats", "report_from_status"]
