"""Real CAs and real keys for identity tests (helpers live in helpers.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.identity.helpers import NOW, TD, forge_cert
from x0tta6bl4.crypto.keys import load_signing_key
from x0tta6bl4.crypto.sign import SigningKey
from x0tta6bl4.identity import CertificateAuthority, NodeCredentials

Forge = Callable[..., bytes]


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path / "ca", TD, now=NOW - 3600)


@pytest.fixture
def ca_key(ca: CertificateAuthority) -> SigningKey:
    return load_signing_key(ca.directory / "ca.key")


@pytest.fixture
def creds(ca: CertificateAuthority) -> NodeCredentials:
    return NodeCredentials.generate_and_issue(ca, "alpha", ["site:eu-1", "role:db"], NOW)


@pytest.fixture
def forge(ca: CertificateAuthority, ca_key: SigningKey) -> Forge:
    """``forge(**overrides)`` -> a certificate's DER, signed by the real CA key."""

    def make(**kw: Any) -> bytes:
        return forge_cert(ca_key.cryptography_key, ca.certificate.subject, **kw)

    return make
