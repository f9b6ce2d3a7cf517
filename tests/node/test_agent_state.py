"""What an agent keeps across restarts and takes while running: the last accepted policy
(an older one is refused even after a restart) and a newer revocation list dropped into
its state directory (the revoked node's link drops at once and its next handshake fails)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from x0tta6bl4.node.localmesh import LocalMesh
from x0tta6bl4.node.state import CRL_FILE, POLICY_ACCEPTED_FILE, POLICY_FILE

pytestmark = pytest.mark.slow

V1 = "version 1\nallow from any to any port msg/7000\n"
V2 = "version 2\nallow from any to any port msg/7000, msg/7001\n"


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[LocalMesh]:
    with LocalMesh(tmp_path, ["p", "q"], [("p", "q")], policy=V2, base_port=28100) as m:
        m.create()
        m.start_all()
        m.wait(m.routes_complete, 30.0, "p and q to link")
        yield m


def _policy(m: LocalMesh, name: str) -> int | None:
    st = m.status(name)
    assert st is not None
    return st["policy"]  # type: ignore[no-any-return]


def test_an_older_policy_is_refused_also_after_a_restart(pair: LocalMesh) -> None:
    q = pair.nodes["q"]
    assert _policy(pair, "q") == 2
    assert (q.state_dir / POLICY_ACCEPTED_FILE).exists()
    signed_v2 = (q.state_dir / POLICY_FILE).read_bytes()
    pair.publish_policy(V1)  # an older version dropped in while running
    pair.wait(
        lambda: (pair.status("q") or {}).get("counters", {}).get("policy_refused", 0) >= 1,
        5.0,
        "q to refuse version 1",
    )
    assert _policy(pair, "q") == 2
    # restarted with only the older document in place: it still holds version 2
    pair.kill("q")
    pair.start("q")
    pair.wait(lambda: pair.status("q") is not None, 15.0, "q to come back")
    assert _policy(pair, "q") == 2
    assert (q.state_dir / POLICY_FILE).read_bytes() != signed_v2  # v1 is still there


def _alive(m: LocalMesh, node: str, neighbour: str) -> bool:
    st = m.status(node)
    return st is not None and any(n["name"] == neighbour and n["alive"] for n in st["neighbours"])


def test_a_newer_crl_is_taken_while_running(pair: LocalMesh) -> None:
    from x0tta6bl4.identity.ca import CertificateAuthority
    from x0tta6bl4.identity.store import NodeCredentials
    from x0tta6bl4.node.state import StateDir

    ca = CertificateAuthority.load(pair.ca_dir)
    serial = NodeCredentials.load(pair.nodes["p"].state_dir).cert.serial
    from cryptography import x509

    crl = ca.revoke(serial, x509.ReasonFlags.key_compromise, time.time())
    StateDir(pair.nodes["q"].state_dir).write(CRL_FILE, crl.to_pem(), 0o644)
    # q takes it within a housekeeping period and drops its link to p at once (no
    # restart, rekey or expiry needed); p, restarted, can no longer link to q either
    pair.wait(
        lambda: any(
            True
            for line in (pair.nodes["q"].log_path or Path("/nonexistent")).read_text().splitlines()
            if "crl_loaded" in line
        ),
        5.0,
        "q to load the newer list",
    )
    pair.wait(lambda: not _alive(pair, "q", "p"), 1.0, "q to drop its link to p")
    st = pair.status("q")
    assert st is not None and st["counters"].get("neighbour_revoked") == 1
    pair.kill("p")
    pair.start("p")
    time.sleep(3.0)
    st = pair.status("q")
    assert st is not None
    assert not any(n["name"] == "p" and n["alive"] for n in st["neighbours"])
