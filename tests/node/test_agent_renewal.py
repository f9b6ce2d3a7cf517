"""``Agent.apply_certificate``: the path a renewed certificate takes (the renewer's
``on_new_certificate``). A renewal for the node's name and keys, chaining to its bundle,
current and not revoked, becomes the agent's credentials and the core's certificate at
once (no restart); anything else is refused and the old one stays. A renewal with rotated
keys cannot be switched in a running core: it waits for a restart. No network: agents are
built from LocalMesh state directories, the core without sockets."""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from x0tta6bl4.crypto.hybrid import HybridPrivateKey
from x0tta6bl4.crypto.sign import SigningKey
from x0tta6bl4.identity.ca import CertificateAuthority
from x0tta6bl4.identity.cert import NodeCertificate
from x0tta6bl4.identity.store import NODE_CERT_FILE, NodeCredentials
from x0tta6bl4.node.agent import Agent
from x0tta6bl4.node.config import load_settings
from x0tta6bl4.node.localmesh import TRUST_DOMAIN, LocalMesh
from x0tta6bl4.node.udp import UdpRunner


@pytest.fixture
def mesh(tmp_path: Path) -> LocalMesh:
    return LocalMesh(tmp_path, ["p", "q"], [("p", "q")], base_port=28400).create()


@pytest.fixture
def running(mesh: LocalMesh) -> Iterator[Agent]:
    """Agent q with its core built (as ``run`` builds it) but no sockets."""
    q = Agent.from_settings(load_settings(mesh.nodes["q"].config))
    loop = asyncio.new_event_loop()
    try:
        q._core = q._build_core(loop)
        q._runner = UdpRunner(q._core)
        yield q
    finally:
        loop.close()


def _renewal(
    ca: CertificateAuthority,
    creds: NodeCredentials,
    *,
    hours: float = 4.0,
    now: float | None = None,
    name: str | None = None,
) -> NodeCertificate:
    return ca.issue(
        name or creds.cert.name,
        creds.cert.tags,
        creds.static_private.public_key(),
        creds.signing_private.public_key(),
        now=time.time() if now is None else now,
        validity=datetime.timedelta(hours=hours),
    )


def test_a_valid_renewal_is_used_at_once(mesh: LocalMesh, running: Agent) -> None:
    q = running
    ca = CertificateAuthority.load(mesh.ca_dir)
    old = q.creds.cert
    new = _renewal(ca, q.creds)
    assert new.not_after > old.not_after
    assert q.apply_certificate(new.pem) is True
    assert q.creds.cert == new
    assert q.status()["cert_not_after"] == new.not_after
    # the core presents it on both endpoints; healing watches its expiry
    assert q.mesh.links.cert_der == new.der and q.mesh.e2e.cert_der == new.der
    assert q.mesh.observe(q.runner.now).cert_not_after == new.not_after
    assert q.mesh.counters["certificate_renewed"] == 1
    # written to the state directory: a restart starts with it
    on_disk = mesh.nodes["q"].state_dir / NODE_CERT_FILE
    assert NodeCertificate.from_pem(on_disk.read_bytes()) == new
    assert Agent.from_settings(load_settings(mesh.nodes["q"].config)).creds.cert == new
    # the same one again (the renewer's hook after the file watch, say): nothing to do
    assert q.apply_certificate(new.pem) is False
    assert q.counters.get("certificate_refused", 0) == 0


def test_a_renewal_before_the_core_runs_is_what_it_starts_with(mesh: LocalMesh) -> None:
    q = Agent.from_settings(load_settings(mesh.nodes["q"].config))
    new = _renewal(CertificateAuthority.load(mesh.ca_dir), q.creds)
    assert q.apply_certificate(new.pem) is True
    loop = asyncio.new_event_loop()
    try:
        core = q._build_core(loop)
    finally:
        loop.close()
    assert q.mesh.links.cert_der == new.der
    assert core is not None


def test_expired_foreign_other_name_older_and_revoked_ones_are_refused(
    mesh: LocalMesh, running: Agent, tmp_path: Path
) -> None:
    q = running
    ca = CertificateAuthority.load(mesh.ca_dir)
    held = q.creds.cert
    refused: list[bytes] = []
    # expired: issued at the CA's first second for one second
    ca_start = ca.certificate.not_valid_before_utc.timestamp()
    expired = _renewal(ca, q.creds, hours=1 / 3600, now=ca_start)
    time.sleep(max(0.0, expired.not_after + 1.1 - time.time()))
    refused.append(expired.pem)
    # signed by another CA of the same trust domain, for q's keys
    other = CertificateAuthority.init(tmp_path / "other-ca", TRUST_DOMAIN)
    refused.append(_renewal(other, q.creds).pem)
    # another node's certificate
    refused.append(NodeCredentials.load(mesh.nodes["p"].state_dir).cert.pem)
    # for q's keys, but expiring before the one in use (an old one replayed)
    refused.append(_renewal(ca, q.creds, hours=1.0).pem)
    # for another static key, which the state directory does not hold
    stranger = ca.issue(
        "q",
        held.tags,
        HybridPrivateKey.generate().public_key(),
        q.creds.signing_private.public_key(),
        now=time.time(),
        validity=datetime.timedelta(hours=4),
    )
    refused.append(stranger.pem)
    # valid, but revoked by the list the agent holds
    revoked = _renewal(ca, q.creds)
    crl = ca.revoke(revoked.serial, x509.ReasonFlags.superseded, time.time())
    assert q.apply_revocation_list(crl.to_pem()) is True
    refused.append(revoked.pem)
    refused.append(b"-----BEGIN CERTIFICATE-----\nnonsense\n-----END CERTIFICATE-----\n")

    for pem in refused:
        assert q.apply_certificate(pem) is False
    assert q.counters["certificate_refused"] == len(refused)
    assert q.creds.cert == held
    assert q.status()["cert_not_after"] == held.not_after
    assert q.mesh.links.cert_der == held.der and q.mesh.e2e.cert_der == held.der
    assert (
        NodeCertificate.from_pem((mesh.nodes["q"].state_dir / NODE_CERT_FILE).read_bytes()) == held
    )
    # a good one is still taken afterwards
    assert q.apply_certificate(_renewal(ca, q.creds).pem) is True


def test_rotated_keys_wait_for_a_restart(mesh: LocalMesh, running: Agent) -> None:
    """The renewer rotated keys: new node.key and node-static.key, then node.crt. The
    running core cannot switch its static key, so the agent keeps the old certificate
    and says a restart is needed; the restarted agent runs on the new set."""
    q = running
    ca = CertificateAuthority.load(mesh.ca_dir)
    held = q.creds.cert
    static, signing = HybridPrivateKey.generate(), SigningKey.generate()
    new = ca.issue(
        "q",
        held.tags,
        static.public_key(),
        signing.public_key(),
        now=time.time(),
        validity=datetime.timedelta(hours=4),
    )
    NodeCredentials(new, static, signing).save(mesh.nodes["q"].state_dir)  # as the renewer
    assert q.apply_certificate(new.pem) is False
    assert q.counters["certificate_restart_needed"] == 1
    assert q.counters.get("certificate_refused", 0) == 0
    assert q.creds.cert == held
    assert q.mesh.links.cert_der == held.der
    restarted = Agent.from_settings(load_settings(mesh.nodes["q"].config))
    assert restarted.creds.cert == new
