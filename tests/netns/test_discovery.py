"""LAN discovery between real agents: two hosts on one link, nothing configured, find each
other by IPv6 link-local beacons and link after a real (certified) handshake."""

from __future__ import annotations

import datetime
import time
from pathlib import Path

import pytest

from tests.netns.helpers import PYTHON, Lab, pair
from x0tta6bl4.node.client import NodeApiError, NodeClient
from x0tta6bl4.node.config import render_template

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def test_two_agents_on_one_link_find_each_other(netns_ok: None, tmp_path: Path) -> None:
    _find_each_other(tmp_path, link_comes_up_later=False)


def test_agents_started_before_their_link_is_up_find_each_other(
    netns_ok: None, tmp_path: Path
) -> None:
    """An agent started at boot, before the network, must still discover neighbours once
    the link (and its IPv6 link-local address) comes up: discovery used to look for
    interfaces once, at start, and stayed deaf on a link that had no address yet."""
    _find_each_other(tmp_path, link_comes_up_later=True)


def _find_each_other(tmp_path: Path, *, link_comes_up_later: bool) -> None:
    from x0tta6bl4.identity.ca import CertificateAuthority
    from x0tta6bl4.identity.store import NodeCredentials
    from x0tta6bl4.node.state import BUNDLE_FILE, CRL_FILE, StateDir

    ca = CertificateAuthority.init(tmp_path / "ca", "lan.x0t")
    with Lab() as lab:
        a, b, link = pair(lab)
        if link_comes_up_later:
            for end in (link.a, link.b):
                end.ns.ip("link", "set", end.name, "down")
        procs = {}
        for name, ns in (("p", a), ("q", b)):
            state = StateDir(tmp_path / name)
            state.create()
            NodeCredentials.generate_and_issue(
                ca, name, [], time.time(), validity=datetime.timedelta(hours=1)
            ).save(state.path)
            ca.bundle().save(state.file(BUNDLE_FILE))
            state.write(CRL_FILE, ca.revocation_list().to_pem(), 0o644)
            text = render_template(name, str(state.path), ["[::]:7100"], [])
            text = text.replace(
                "enabled = false\nport = 7099\ninterval = 5.0",
                "enabled = true\nport = 7099\ninterval = 0.5",
            )
            assert "enabled = true\nport = 7099" in text
            (state.path / "node.toml").write_text(text)
            log = open(state.path / "agent.log", "w")  # noqa: SIM115
            procs[name] = ns.popen(
                PYTHON,
                "-m",
                "x0tta6bl4.cli",
                "node",
                "run",
                "--config",
                str(state.path / "node.toml"),
                stdout=log,
                stderr=log,
            )
            log.close()

        if link_comes_up_later:
            started = time.monotonic() + 20.0
            while not all(
                "discovery_started" in (tmp_path / n / "agent.log").read_text() for n in "pq"
            ):
                assert time.monotonic() < started, "the agents did not start discovery"
                time.sleep(0.1)
            for end in (link.a, link.b):
                end.ns.ip("link", "set", end.name, "up")

        def linked() -> bool:
            try:
                st = NodeClient(tmp_path / "p" / "agent.sock").status()
            except (NodeApiError, OSError):
                return False
            return any(n["name"] == "q" and n["alive"] for n in st["neighbours"])

        deadline = time.monotonic() + 20.0
        while not linked():
            assert time.monotonic() < deadline, "\n".join(
                f"--- {n}:\n" + (tmp_path / n / "agent.log").read_text()[-2000:] for n in "pq"
            )
            time.sleep(0.1)
        st = NodeClient(tmp_path / "q" / "agent.sock").status()
        q_sees = {n["name"]: n for n in st["neighbours"]}
        assert q_sees["p"]["alive"] and q_sees["p"]["addr"].startswith("[fe80:")
        # Neither has a configured peer, so a beacon made the link: whichever side heard
        # one first dialled (the other then finds the sender already live and counts none).
        found = [
            NodeClient(tmp_path / n / "agent.sock").status()["counters"].get("discovered", 0)
            for n in "pq"
        ]
        assert sum(found) >= 1, found
