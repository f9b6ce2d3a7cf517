"""``Agent.apply_revocation_list``: the path a pushed revocation list takes (and the state
directory's file watch with it). A newer list, signed by the mesh CA, is held, persisted
to STATE/crl.pem and handed to the running core; an older, foreign or broken one is
refused and the held one stays. No network: agents are built from their state
directories, the core without sockets."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from cryptography import x509

from x0tta6bl4.identity.ca import CertificateAuthority
from x0tta6bl4.identity.crl import RevocationList
from x0tta6bl4.identity.store import NodeCredentials
from x0tta6bl4.node.agent import Agent
from x0tta6bl4.node.config import load_settings
from x0tta6bl4.node.localmesh import TRUST_DOMAIN, LocalMesh
from x0tta6bl4.node.state import CRL_FILE
from x0tta6bl4.node.udp import UdpRunner

REASON = x509.ReasonFlags.key_compromise


@pytest.fixture
def mesh(tmp_path: Path) -> LocalMesh:
    return LocalMesh(tmp_path, ["p", "q"], [("p", "q")], base_port=28300).create()


def _agent(m: LocalMesh, name: str) -> Agent:
    return Agent.from_settings(load_settings(m.nodes[name].config))


def _on_disk(m: LocalMesh, name: str, ca: CertificateAuthority) -> RevocationList:
    return RevocationList.from_pem((m.nodes[name].state_dir / CRL_FILE).read_bytes(), ca.bundle())


def _revoke(m: LocalMesh, ca: CertificateAuthority, name: str) -> RevocationList:
    serial = NodeCredentials.load(m.nodes[name].state_dir).cert.serial
    return ca.revoke(serial, REASON, time.time())


def test_a_newer_list_is_applied_and_persisted(mesh: LocalMesh) -> None:
    ca = CertificateAuthority.load(mesh.ca_dir)
    q = _agent(mesh, "q")
    assert q.crl is not None and q.crl.version == 1
    v2 = _revoke(mesh, ca, "p")
    assert q.apply_revocation_list(v2.to_pem()) is True
    assert q.crl == v2
    assert _on_disk(mesh, "q", ca) == v2
    assert _agent(mesh, "q").crl == v2  # what a restart reads
    # the same list again (pushed twice, or the file watch seeing our own write): a no-op
    assert q.apply_revocation_list(v2.to_pem()) is False
    q._load_crl()
    assert q.crl == v2
    assert q.counters.get("crl_refused", 0) == 0


def test_an_older_or_foreign_or_broken_list_is_refused_and_the_held_one_stays(
    mesh: LocalMesh, tmp_path: Path
) -> None:
    ca = CertificateAuthority.load(mesh.ca_dir)
    v1 = ca.revocation_list()
    q = _agent(mesh, "q")
    v2 = _revoke(mesh, ca, "p")
    assert q.apply_revocation_list(v2.to_pem()) is True
    # an attacker replaying the older list cannot un-revoke p
    assert q.apply_revocation_list(v1.to_pem()) is False
    # a list signed by another CA (same trust domain, a higher version): not ours
    other = CertificateAuthority.init(tmp_path / "other-ca", TRUST_DOMAIN)
    foreign = other.sign_revocation_list(9, [], time.time())
    assert q.apply_revocation_list(foreign.to_pem()) is False
    assert q.apply_revocation_list(b"-----BEGIN X509 CRL-----\nnonsense\n") is False
    assert q.counters.get("crl_refused") == 3
    assert q.crl == v2
    assert _on_disk(mesh, "q", ca) == v2


def test_the_file_watch_takes_a_dropped_in_list_the_same_way(mesh: LocalMesh) -> None:
    ca = CertificateAuthority.load(mesh.ca_dir)
    q = _agent(mesh, "q")
    v2 = _revoke(mesh, ca, "p")
    (mesh.nodes["q"].state_dir / CRL_FILE).write_bytes(v2.to_pem())
    q._load_crl()
    assert q.crl == v2


def test_a_running_core_gets_the_list_at_once(mesh: LocalMesh) -> None:
    ca = CertificateAuthority.load(mesh.ca_dir)
    q = _agent(mesh, "q")
    loop = asyncio.new_event_loop()
    try:
        q._core = q._build_core(loop)
        q._runner = UdpRunner(q._core)  # no socket: the core only answers with events here
        v2 = _revoke(mesh, ca, "p")
        assert q.apply_revocation_list(v2.to_pem()) is True
        for endpoint in (q.mesh.links, q.mesh.e2e):
            held = endpoint.revocation_list
            assert held is not None and held.version == 2
    finally:
        loop.close()
