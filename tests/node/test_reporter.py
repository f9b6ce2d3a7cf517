"""The node's reporter against a real control plane (uvicorn on a free port, SQLite):
status and events delivered once, the service down and back, the bounded buffer, and a
revoked node; plus: whatever the agent's status holds, the report fits the service's
schema."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from x0tta6bl4.node.control_client import ControlClient, Signer
from x0tta6bl4.node.reporter import DROPPED_KIND, Reporter, report_from_status


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    """The control plane in a thread: uvicorn serving ``create_app`` on ``port``."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = data_dir
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.app: Any = None

    def start(self) -> None:
        import uvicorn

        from x0tta6bl4.control.app import create_app
        from x0tta6bl4.control.settings import ControlSettings

        self.app = create_app(ControlSettings(data_dir=self.data_dir, port=self.port))
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self._server = uvicorn.Server(config)
        self.loop = asyncio.new_event_loop()
        loop, server = self.loop, self._server

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(server.serve())

        self._thread = threading.Thread(target=serve, daemon=True, name="control-plane")
        self._thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the control plane did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(15)
            assert self.loop is not None
            self.loop.close()
        self._server = self._thread = None

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(fn(*args), self.loop).result(20)

    @property
    def ctx(self) -> Any:
        return self.app.state.ctl


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    svc = Service(tmp_path / "data", _free_port())
    svc.start()
    try:
        yield svc
    finally:
        svc.stop()


def _enroll(svc: Service, name: str) -> Signer:
    """A node row and a certificate from the service's CA, as enrollment leaves them."""
    from tests.control.nodes_helper import create_node

    c = svc.ctx
    node = svc.call(lambda: create_node(c.db, c.ca, name))
    return Signer(node.signing_key, node.serial)


def _stored(svc: Service, name: str) -> dict[str, Any]:
    from sqlalchemy import select

    from x0tta6bl4.control.models import Event, Node, NodeReport

    c = svc.ctx

    async def run() -> dict[str, Any]:
        async with c.db.session() as s:
            node = (await s.execute(select(Node).where(Node.name == name))).scalar_one()
            rep = (
                await s.execute(select(NodeReport).where(NodeReport.node_name == name))
            ).scalar_one_or_none()
            events = (
                (await s.execute(select(Event).where(Event.node_name == name).order_by(Event.id)))
                .scalars()
                .all()
            )
            return {
                "last_seen": node.last_seen,
                "endpoints": node.endpoints,
                "report": None if rep is None else rep.report,
                "events": [(e.kind, e.at, e.detail) for e in events],
            }

    return svc.call(run)  # type: ignore[no-any-return]


def _status(events: list[dict[str, Any]], jitter: float = 0.0) -> dict[str, Any]:
    """What ``Agent.status()`` returns (the fields the reporter reads)."""
    return {
        "name": "r1",
        "listen": ["0.0.0.0:7100", "127.0.0.1:7101"],
        "neighbours": [
            {
                "name": "r2",
                "addr": "127.0.0.2:7100",
                "alive": True,
                "rtt_ms": 0.8,
                "loss": 0.0,
                "cost": 96,
                "session_age_s": 12.0,
            },
            {
                "name": "r3",
                "addr": None,
                "alive": False,
                "rtt_ms": None,
                "loss": 1.0,
                "cost": 65535,
                "session_age_s": None,
            },
        ],
        "routes": [
            {"dst": "r2", "via": "r2", "metric": 96},
            {"dst": "r3", "via": None, "metric": 65535},
        ],
        "sessions": [
            {"peer": "r2", "established": True, "age_s": 3.0, "rekeys": 0, "algorithms": "x"}
        ],
        "healing_events": [{**e, "at": e["at"] + jitter} for e in events],
        "policy": 3,
    }


def _healing(at: float, subject: str) -> dict[str, Any]:
    return {
        "kind": "dead_neighbour",
        "subject": subject,
        "action": "reroute+rehandshake",
        "outcome": "repaired",
        "mttd_s": 0.41,
        "mttr_s": 0.9,
        "at": at,
    }


async def _run_for(reporter: Reporter, seconds: float) -> None:
    task = asyncio.create_task(reporter.run())
    await asyncio.sleep(seconds)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    # let a request still in its worker thread finish before the service is inspected
    await asyncio.sleep(0.05)


def test_reports_status_and_each_event_once(service: Service) -> None:
    signer = _enroll(service, "r1")
    t = time.time() - 30
    events = [_healing(t, "r3"), _healing(t + 1, "r4")]
    calls = [0]

    def snapshot() -> dict[str, Any]:
        # the agent re-derives each event's wall time on every call: it wobbles
        calls[0] += 1
        return report_from_status(_status(events, jitter=0.001 * (calls[0] % 2)), crl_version=2)

    reporter = Reporter(
        ControlClient(service.url), signer, snapshot, report_interval=0.2, max_backoff=0.5
    )
    asyncio.run(_run_for(reporter, 1.5))
    assert reporter.stats.reports_sent >= 3, reporter.stats
    assert reporter.stats.reports_failed == 0 and reporter.pending == 0
    got = _stored(service, "r1")
    assert got["endpoints"] == ["127.0.0.1:7101"]  # the wildcard address is no use to a peer
    assert time.time() - got["last_seen"] < 2
    rep = got["report"]
    assert [n["name"] for n in rep["neighbours"]] == ["r2", "r3"]
    assert rep["neighbours"][1]["up"] is False and rep["neighbours"][1]["rtt_ms"] is None
    assert rep["routes"][1] == {"destination": "r3", "next_hop": None, "metric": 65535}
    assert (rep["sessions"], rep["policy_version"], rep["crl_version"]) == (1, 3, 2)
    assert len(got["events"]) == 2, got["events"]
    kind, at, detail = got["events"][0]
    assert kind == "dead_neighbour" and abs(at - t) < 0.01
    assert detail == {
        "subject": "r3",
        "action": "reroute+rehandshake",
        "outcome": "repaired",
        "mttd_s": 0.41,
        "mttr_s": 0.9,
    }
    assert reporter.stats.events_sent == 2


def test_keeps_running_while_the_service_is_down_then_catches_up(tmp_path: Path) -> None:
    svc = Service(tmp_path / "data", _free_port())
    svc.start()
    try:
        signer = _enroll(svc, "r1")
    finally:
        svc.stop()
    reporter = Reporter(
        ControlClient(svc.url, timeout=2),
        signer,
        lambda: report_from_status(_status([])),
        report_interval=0.1,
        max_pending=5,
        max_backoff=0.3,
    )
    t = time.time() - 60
    for i in range(8):
        assert reporter.add_event("degraded_link", t + i, {"subject": f"r{i}"})
    assert reporter.pending == 5 and reporter.stats.events_dropped == 3

    async def scenario() -> None:
        task = asyncio.create_task(reporter.run())
        try:
            await asyncio.sleep(1.0)  # down: every try fails, nothing crashes
            assert not task.done()
            assert reporter.stats.reports_failed >= 2 and reporter.stats.reports_sent == 0
            assert "unreachable" in (reporter.stats.last_error or "")
            assert reporter.pending == 5
            await asyncio.to_thread(svc.start)
            deadline = time.monotonic() + 10
            while reporter.stats.reports_sent == 0:
                assert time.monotonic() < deadline, reporter.stats
                await asyncio.sleep(0.05)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await asyncio.sleep(0.05)

    try:
        asyncio.run(scenario())
        got = _stored(svc, "r1")
    finally:
        svc.stop()
    assert reporter.pending == 0
    kinds = [k for k, _, _ in got["events"]]
    assert kinds.count("degraded_link") == 5
    subjects = sorted(d["subject"] for k, _, d in got["events"] if k == "degraded_link")
    assert subjects == ["r3", "r4", "r5", "r6", "r7"]  # the oldest were dropped
    (dropped,) = [d for k, _, d in got["events"] if k == DROPPED_KIND]
    assert dropped == {"count": 3}


def test_a_revoked_node_keeps_its_events_and_keeps_trying(service: Service) -> None:
    from cryptography import x509

    signer = _enroll(service, "r1")
    reporter = Reporter(
        ControlClient(service.url),
        signer,
        lambda: report_from_status(_status([])),
        report_interval=0.1,
    )
    c = service.ctx

    async def revoke() -> None:
        async with c.db.session() as s:
            await c.ca.revoke_in(
                s, [format(signer.serial, "x")], x509.ReasonFlags.key_compromise, time.time()
            )
            await s.commit()
        await c.pusher.changed("crl")

    service.call(revoke)
    reporter.add_event("dead_neighbour", time.time() - 5, {"subject": "r9"})
    assert asyncio.run(reporter.report_once()) is False
    assert "revoked" in (reporter.stats.last_error or "")
    assert reporter.pending == 1  # a renewed certificate may still deliver it
    assert _stored(service, "r1")["events"] == []


def test_events_repeat_and_collisions() -> None:
    reporter = Reporter(ControlClient("http://127.0.0.1:9"), None, dict, report_interval=1)
    t = 1_700_000_000.0
    assert reporter.add_event("dead_neighbour", t, {"subject": "a"})
    assert not reporter.add_event("dead_neighbour", t + 0.001, {"subject": "a"})  # the same
    assert reporter.add_event("dead_neighbour", t, {"subject": "b"})  # another, same time
    assert reporter.add_event("dead_neighbour", t + 10, {"subject": "a"})  # a new incident
    assert not reporter.add_event("Not A Kind", t)
    assert not reporter.add_event("dead_neighbour", float("nan"))
    assert reporter.stats.events_invalid == 2
    body, seqs = reporter.build()
    assert len(seqs) == 3
    ats = [(e["kind"], e["at"]) for e in body["events"]]
    assert len(set(ats)) == 3  # distinct keys for the service's (kind, at) uniqueness
    # No signer yet (not enrolled): a failure, not a crash.
    assert asyncio.run(reporter.report_once()) is False
    assert reporter.stats.last_error == "no certificate to sign with yet"


def test_backoff_grows_to_the_cap_and_resets() -> None:
    import random

    reporter = Reporter(
        ControlClient("http://127.0.0.1:9"),
        None,
        dict,
        report_interval=1.0,
        max_backoff=8.0,
        rng=random.Random(1),
    )
    delays = []
    for _ in range(8):
        reporter._failed("down")
        delays.append(reporter.next_delay(False))
    assert delays[0] < 1.3 and 6.4 <= delays[-1] <= 9.6
    assert all(d <= 8.0 * 1.2 for d in delays)
    assert 0.9 <= reporter.next_delay(True) <= 1.1


# --- whatever the agent's status holds, the report fits the service's schema ----------

_junk = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=80)
)
_name = st.one_of(st.from_regex(r"[a-z0-9][a-z0-9.-]{0,70}", fullmatch=True), _junk)
_status_strategy = st.fixed_dictionaries(
    {
        "listen": st.lists(
            st.one_of(st.text(max_size=300), st.just("[::1]:7100"), _junk), max_size=12
        ),
        "neighbours": st.lists(
            st.fixed_dictionaries(
                {"name": _name, "alive": _junk, "rtt_ms": _junk, "loss": _junk, "cost": _junk}
            ),
            max_size=300,
        ),
        "routes": st.lists(
            st.fixed_dictionaries({"dst": _name, "via": _name, "metric": _junk}), max_size=20
        ),
        "sessions": st.lists(st.fixed_dictionaries({"established": _junk}), max_size=5),
        "healing_events": st.lists(
            st.fixed_dictionaries(
                {
                    "kind": st.one_of(st.sampled_from(["dead_neighbour", "partition"]), _junk),
                    "at": st.one_of(st.floats(0, 4e9), _junk),
                    "subject": _junk,
                    "outcome": _junk,
                    "mttr_s": _junk,
                }
            ),
            max_size=120,
        ),
        "policy": _junk,
        "crl_version": _junk,
    }
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_status_strategy)
def test_any_status_makes_a_report_the_service_accepts(status: dict[str, Any]) -> None:
    from x0tta6bl4.control.routers.reports import StatusReport

    reporter = Reporter(
        ControlClient("http://127.0.0.1:9"),
        None,
        lambda: report_from_status(status),
        report_interval=1,
    )
    body, _ = reporter.build()
    StatusReport.model_validate(body)  # raises if the node would send a bad field
    StatusReport.model_validate_json(__import__("json").dumps(body))
