"""The CA certifies each key to one name only (no unknown key share), and keeps an
inventory of what it issued."""

from __future__ import annotations

import json
import stat
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.identity.helpers import NOW, names_sharing_an_ipv4_address
from x0tta6bl4 import errors
from x0tta6bl4.crypto.hybrid import HybridPrivateKey
from x0tta6bl4.crypto.kdf import sha256
from x0tta6bl4.crypto.sign import SigningKey
from x0tta6bl4.errors import IdentityError
from x0tta6bl4.identity import CertificateAuthority, NodeCredentials
from x0tta6bl4.identity.ca import INVENTORY_FILE

HOUR = 3600.0


def _spki_sha256(cert_signing_key: object) -> bytes:
    pub = cert_signing_key.cryptography_key  # type: ignore[attr-defined]
    return sha256(
        pub.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


@pytest.fixture
def bob(ca: CertificateAuthority) -> NodeCredentials:
    return NodeCredentials.generate_and_issue(ca, "bob", ["role:db"], NOW)


def test_static_key_of_another_node_is_refused(
    ca: CertificateAuthority, bob: NodeCredentials
) -> None:
    # The review's case: "mallory" with bob's static key. Peers encapsulating to "mallory"
    # would reach bob's key (an unknown key share), so the CA refuses.
    with pytest.raises(IdentityError, match="already certified to 'bob'") as info:
        ca.issue("mallory", [], bob.cert.static_key, SigningKey.generate().public_key(), now=NOW)
    assert isinstance(info.value, errors.KeyAlreadyCertified)
    assert "static key" in str(info.value) and "mallory" in str(info.value)
    assert sha256(bob.cert.static_key.to_bytes()).hex()[:16] in str(info.value)
    assert [r.name for r in ca.issued()] == ["bob"]


def test_signing_key_of_another_node_is_refused(
    ca: CertificateAuthority, bob: NodeCredentials
) -> None:
    static = HybridPrivateKey.generate().public_key()
    with pytest.raises(errors.KeyAlreadyCertified, match=r"signing key .* 'bob'"):
        ca.issue("mallory", [], static, bob.cert.signing_key, now=NOW)
    assert [r.name for r in ca.issued()] == ["bob"]


def test_ca_key_is_never_certified_to_a_node(ca: CertificateAuthority) -> None:
    static = HybridPrivateKey.generate().public_key()
    with pytest.raises(errors.KeyAlreadyCertified, match="CA's own key"):
        ca.issue("mallory", [], static, ca.public_key, now=NOW)


def test_reissue_to_the_same_name_is_renewal(
    ca: CertificateAuthority, bob: NodeCredentials
) -> None:
    renewed = ca.issue(
        "bob", ["role:db"], bob.cert.static_key, bob.cert.signing_key, now=NOW + HOUR
    )
    assert renewed.serial != bob.cert.serial
    # And with one key rotated, the other kept.
    ca.issue("bob", [], HybridPrivateKey.generate().public_key(), bob.cert.signing_key, now=NOW)
    assert [r.name for r in ca.issued()] == ["bob", "bob", "bob"]


def test_inventory_records_what_was_issued(ca: CertificateAuthority, bob: NodeCredentials) -> None:
    (rec,) = ca.issued()
    assert rec.serial == bob.cert.serial
    assert rec.name == "bob"
    assert rec.static_key_sha256 == sha256(bob.cert.static_key.to_bytes())
    assert rec.signing_key_sha256 == _spki_sha256(bob.cert.signing_key)
    assert (rec.not_before, rec.not_after) == (bob.cert.not_before, bob.cert.not_after)
    path = ca.directory / INVENTORY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_bytes())
    assert doc["issued"][0]["serial"] == f"{bob.cert.serial:#x}"
    assert doc["issued"][0]["name"] == "bob"
    # Atomic writes leave no temporary files behind.
    assert not [p for p in ca.directory.iterdir() if p.name.startswith(f".{INVENTORY_FILE}")]


def test_inventory_survives_a_reload(ca: CertificateAuthority, bob: NodeCredentials) -> None:
    again = CertificateAuthority.load(ca.directory)
    assert again.issued() == ca.issued()
    with pytest.raises(errors.KeyAlreadyCertified):
        again.issue("mallory", [], bob.cert.static_key, SigningKey.generate().public_key(), now=NOW)


def test_damaged_inventory_refuses_to_issue(ca: CertificateAuthority, bob: NodeCredentials) -> None:
    # Fail closed: without the inventory the CA cannot tell whose keys are whose.
    path = ca.directory / INVENTORY_FILE
    for junk in (b"not json", b'{"format": 1, "issued": [{"serial": "0x1"}]}', b"[]"):
        path.write_bytes(junk)
        with pytest.raises(IdentityError, match="inventory"):
            ca.issue(
                "carol",
                [],
                HybridPrivateKey.generate().public_key(),
                SigningKey.generate().public_key(),
                now=NOW,
            )


def test_init_refuses_a_leftover_inventory(tmp_path: Path) -> None:
    (tmp_path / INVENTORY_FILE).write_text('{"format": 1, "issued": []}')
    with pytest.raises(IdentityError, match="already exists"):
        CertificateAuthority.init(tmp_path)


def test_concurrent_issuance_of_one_key_to_two_names(ca: CertificateAuthority) -> None:
    static = HybridPrivateKey.generate().public_key()
    outcomes: dict[str, BaseException | None] = {}
    start = threading.Barrier(4)

    def worker(name: str) -> None:
        start.wait()
        try:
            CertificateAuthority.load(ca.directory).issue(
                name, [], static, SigningKey.generate().public_key(), now=NOW
            )
            outcomes[name] = None
        except BaseException as exc:
            outcomes[name] = exc

    threads = [threading.Thread(target=worker, args=(f"n{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [n for n, exc in outcomes.items() if exc is None]
    assert len(winners) == 1, outcomes
    assert all(
        isinstance(exc, errors.KeyAlreadyCertified) for exc in outcomes.values() if exc is not None
    )
    assert [r.name for r in ca.issued()] == winners


def test_a_name_whose_overlay_ipv4_address_is_taken_is_refused(ca: CertificateAuthority) -> None:
    # Peers compute a node's 100.64.0.0/10 address from its name (22 bits): the CA refuses
    # the rare second name that lands on an address it already gave out.
    first, second = names_sharing_an_ipv4_address(ca.trust_domain)
    NodeCredentials.generate_and_issue(ca, first, [], NOW)
    with pytest.raises(errors.OverlayAddressTaken, match=f"with '{first}'"):
        NodeCredentials.generate_and_issue(ca, second, [], NOW)
    assert [r.name for r in ca.issued()] == [first]
    # Renewing the first name is unaffected; the simulator (no IP) may switch it off.
    NodeCredentials.generate_and_issue(ca, first, [], NOW + 1)
    static = HybridPrivateKey.generate().public_key()
    ca.issue(second, [], static, SigningKey.generate().public_key(), now=NOW, unique_ipv4=False)
    assert [r.name for r in ca.issued()] == [first, first, second]
