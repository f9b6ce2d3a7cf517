"""``Reporter.report_soon()``: a link change reaches the control plane at once, not at the
end of the report interval; prompt reports stay ``MIN_PROMPT_GAP_S`` apart however
often they are asked for; and they never cut a failure backoff short. Against a real
control plane (uvicorn on a free port, SQLite)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from tests.node.test_reporter import Service, _enroll, _free_port, _stored, service  # noqa: F401
from x0tta6bl4.node.control_client import ControlClient
from x0tta6bl4.node.reporter import MIN_PROMPT_GAP_S, Reporter, report_from_status

INTERVAL_S = 5.0  # far longer than anything measured here


def _status(alive: bool) -> dict[str, Any]:
    return {
        "listen": ["127.0.0.1:7101"],
        "neighbours": [
            {
                "name": "p2",
                "alive": alive,
                "rtt_ms": 0.5,
                "loss": 0.0,
                "cost": 96 if alive else 65535,
            }
        ],
        "routes": [],
        "sessions": [],
        "healing_events": [],
        "policy": None,
    }


def test_a_link_change_is_reported_at_once(service: Service) -> None:  # noqa: F811
    signer = _enroll(service, "p1")
    alive = [True]
    reporter = Reporter(
        ControlClient(service.url),
        signer,
        lambda: report_from_status(_status(alive[0])),
        report_interval=INTERVAL_S,
    )

    def stored_up() -> bool | None:
        rep = _stored(service, "p1")["report"]
        return None if rep is None else bool(rep["neighbours"][0]["up"])

    async def scenario() -> float:
        task = asyncio.create_task(reporter.run())
        try:
            # The first report goes within a fifth of the interval.
            for _ in range(300):
                if reporter.stats.reports_sent:
                    break
                await asyncio.sleep(0.01)
            assert reporter.stats.reports_sent == 1
            assert await asyncio.to_thread(stored_up) is True
            await asyncio.sleep(MIN_PROMPT_GAP_S)  # past the gap: the next one goes now
            alive[0] = False
            t0 = time.monotonic()
            reporter.report_soon()
            for _ in range(300):
                if await asyncio.to_thread(stored_up) is False:
                    return time.monotonic() - t0
                await asyncio.sleep(0.01)
            raise AssertionError("the link change was not reported within 3 s")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    took = asyncio.run(scenario())
    # Without report_soon the change would wait for the next report, ~INTERVAL_S away.
    assert took < 1.0, took
    assert reporter.stats.reports_sent == 2


def test_prompt_reports_are_spaced_and_never_cut_a_backoff(service: Service) -> None:  # noqa: F811
    signer = _enroll(service, "p3")
    reporter = Reporter(
        ControlClient(service.url),
        signer,
        lambda: report_from_status(_status(True)),
        report_interval=INTERVAL_S,
    )

    async def flap(seconds: float) -> None:
        task = asyncio.create_task(reporter.run())
        try:
            t_end = time.monotonic() + seconds
            while time.monotonic() < t_end:
                reporter.report_soon()  # a link flapping every 10 ms
                await asyncio.sleep(0.01)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(flap(1.0))
    sent = reporter.stats.reports_sent
    # At most one per gap (plus the first): not one per change (~100).
    assert 2 <= sent <= 1 + 1.0 / MIN_PROMPT_GAP_S + 1, sent

    # The service away: after a failure the reporter backs off, and asking for a
    # prompt report changes nothing.
    down = Reporter(
        ControlClient(f"http://127.0.0.1:{_free_port()}", timeout=0.5),
        signer,
        lambda: report_from_status(_status(True)),
        report_interval=0.05,
        max_backoff=INTERVAL_S,
    )

    async def while_down() -> None:
        task = asyncio.create_task(down.run())
        try:
            for _ in range(300):
                if down.stats.reports_failed >= 3:
                    break
                await asyncio.sleep(0.01)
            failed = down.stats.reports_failed
            t_end = time.monotonic() + 0.5
            while time.monotonic() < t_end:
                down.report_soon()
                await asyncio.sleep(0.01)
            # Backoff after 3 failures is 0.05 * 2**2 * [0.8, 1.2] s at least 0.16 s, and
            # grows: in 0.5 s at most two more tries, not fifty.
            assert down.stats.reports_failed - failed <= 2, down.stats
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(while_down())
