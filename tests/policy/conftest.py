"""Real CAs for policy tests: CA creation is slow-ish, so one per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.identity.helpers import NOW, TD
from x0tta6bl4.crypto.keys import load_signing_key
from x0tta6bl4.crypto.sign import SigningKey
from x0tta6bl4.identity import CertificateAuthority


@pytest.fixture(scope="session")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path_factory.mktemp("policy") / "ca", TD, now=NOW - 3600)


@pytest.fixture(scope="session")
def ca_key(ca: CertificateAuthority) -> SigningKey:
    return load_signing_key(ca.directory / "ca.key")


@pytest.fixture(scope="session")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    """Another CA of the same trust domain: its signatures must not pass for ``ca``'s."""
    return CertificateAuthority.init(
        tmp_path_factory.mktemp("policy") / "other", TD, now=NOW - 3600
    )


@pytest.fixture(scope="session")
def other_ca_key(other_ca: CertificateAuthority) -> SigningKey:
    return load_signing_key(other_ca.directory / "ca.key")


@pytest.fixture
def ca_dir(ca: CertificateAuthority) -> Path:
    return ca.directory
