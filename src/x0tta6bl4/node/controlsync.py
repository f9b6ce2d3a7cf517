"""The agent's tie to the control plane: renewal, pushed policy and revocations, and
status reports, as three tasks on the agent's loop.

Each part keeps working on its own when the service is away (the node runs on its cached
certificate, policy and revocation list) and catches up when it returns; none of them
can stop the data plane. Started by ``Agent.run`` when ``[control] url`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import structlog

from x0tta6bl4.node.control_client import ControlClient, Signer
from x0tta6bl4.node.renew import Renewer
from x0tta6bl4.node.reporter import Reporter, report_from_status
from x0tta6bl4.node.stream import PushClient

if TYPE_CHECKING:
    from x0tta6bl4.node.agent import Agent

log = structlog.get_logger("x0tta6bl4.node.control")


class ControlSync:
    def __init__(
        self, agent: Agent, url: str, *, report_interval: float, poll_interval: float
    ) -> None:
        self.agent = agent
        self.client = ControlClient(url)
        self.renewer = Renewer(agent.state.path, self.client, agent.apply_certificate)
        self.push = PushClient(
            self.client,
            self.signer,
            on_policy=self._on_policy,
            on_crl=self._on_crl,
            on_revoked=self._on_revoked,
            poll_interval=poll_interval,
            policy_version=agent.policy.version if agent.policy is not None else 0,
            crl_version=agent.crl.version if agent.crl is not None else 0,
        )
        self.reporter = Reporter(
            self.client, self.signer, self._snapshot, report_interval=report_interval
        )
        self._tasks: list[asyncio.Task[None]] = []

    def signer(self) -> Signer:
        creds = self.agent.creds
        return Signer(creds.signing_private, creds.cert.serial)

    def _snapshot(self) -> dict[str, Any]:
        crl = self.agent.crl
        report = report_from_status(
            self.agent.status(), crl_version=crl.version if crl is not None else None
        )
        # Healing events go through add_event (resent until stored), not the snapshot.
        report.pop("events", None)
        return report

    def on_healing_event(self, kind: str, at: float, detail: dict[str, Any]) -> None:
        self.reporter.add_event(kind, at, detail)

    def on_link_change(self) -> None:
        """A link went up or down: the topology operators see should show it now."""
        self.reporter.report_soon()

    def _on_policy(self, signed: bytes, version: int) -> None:
        self.agent.apply_policy(signed, source="control plane")

    def _on_crl(self, pem: bytes, version: int) -> None:
        self.agent.apply_revocation_list(pem)

    def _on_revoked(self, reason: str) -> None:
        # Our own certificate: peers refuse us from their next revocation list on.
        self.agent.count("own_certificate_revoked")
        log.error("own_certificate_revoked", reason=reason)

    def start(self) -> None:
        for name, coro in (
            ("renew", self.renewer.run()),
            ("push", self.push.run()),
            ("report", self.reporter.run()),
        ):
            self._tasks.append(asyncio.create_task(self._guard(name, coro), name=f"control-{name}"))

    async def _guard(self, name: str, coro: Any) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must not take the data plane down
            self.agent.count(f"control_{name}_crashed")
            log.exception("control_task_crashed", task=name, error=str(exc))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
