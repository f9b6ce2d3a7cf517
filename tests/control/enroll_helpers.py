"""The node's side of enrollment, driven through the in-process TestClient: join tokens,
challenges, sealed requests, signed renewals. Shared by the token, enrollment and
renewal tests."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from x0tta6bl4.api.enroll import (
    Challenge,
    EnrollResult,
    b64,
    b64decode,
    make_inner,
    open_response,
    seal_request,
)
from x0tta6bl4.api.signing import sign_request
from x0tta6bl4.crypto.hybrid import HybridPrivateKey, HybridPublicKey
from x0tta6bl4.crypto.sign import SigningKey
from x0tta6bl4.identity.cert import NodeCertificate
from x0tta6bl4.identity.request import CertificateRequest


@dataclass
class NodeKeys:
    static: HybridPrivateKey = field(default_factory=HybridPrivateKey.generate)
    signing: SigningKey = field(default_factory=SigningKey.generate)


def create_token(control: Any, key: str | None = None, **body: Any) -> dict[str, Any]:
    r = control.client.post("/v1/tokens", json=body, headers=control.auth(key))
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def enroll_public(client: Any) -> HybridPublicKey:
    r = client.get("/v1/enroll/key")
    assert r.status_code == 200, r.text
    return HybridPublicKey.from_bytes(b64decode(r.json()["public_key"], "public_key"))


def get_challenge(client: Any, static: HybridPrivateKey) -> tuple[Challenge, bytes]:
    r = client.post(
        "/v1/enroll/challenge", json={"static_key": b64(static.public_key().to_bytes())}
    )
    assert r.status_code == 200, r.text
    ch = Challenge.model_validate(r.json())
    shared = static.decapsulate(b64decode(ch.ciphertext, "ciphertext", 1120))
    return ch, shared


@dataclass
class Attempt:
    status: int
    body: Any
    keys: NodeKeys
    response_key: bytes

    @property
    def detail(self) -> str:
        return str(self.body.get("detail", "")) if isinstance(self.body, dict) else ""

    def result(self) -> EnrollResult:
        assert self.status == 200, (self.status, self.body)
        return open_response(self.response_key, self.body)


def build_sealed(
    client: Any,
    token: str,
    name: str,
    tags: Iterable[str] = (),
    keys: NodeKeys | None = None,
    *,
    csr_static: HybridPublicKey | None = None,
    shared: bytes | None = None,
    challenge: Challenge | None = None,
    seal_to: HybridPublicKey | None = None,
) -> tuple[dict[str, str], NodeKeys, bytes]:
    """The JSON body of POST /v1/enroll; the keyword arguments forge one part."""
    keys = keys or NodeKeys()
    if challenge is None:
        challenge, real_shared = get_challenge(client, keys.static)
        shared = real_shared if shared is None else shared
    assert shared is not None
    csr = CertificateRequest.build(
        name, list(tags), csr_static or keys.static.public_key(), keys.signing
    )
    response_key = os.urandom(32)
    inner = make_inner(token, csr, challenge, shared, response_key)
    sealed = seal_request(seal_to or enroll_public(client), inner)
    return sealed.model_dump(), keys, response_key


def attempt(client: Any, token: str, name: str, tags: Iterable[str] = (), **kw: Any) -> Attempt:
    body, keys, response_key = build_sealed(client, token, name, tags, **kw)
    r = client.post("/v1/enroll", json=body)
    return Attempt(r.status_code, r.json(), keys, response_key)


def enroll_ok(
    control: Any, name: str, tags: Iterable[str] = (), keys: NodeKeys | None = None
) -> tuple[EnrollResult, NodeKeys]:
    """A fresh token granting ``tags`` and a node enrolled with it."""
    tok = create_token(control, tags=list(tags))["token"]
    a = attempt(control.client, tok, name, tags, keys=keys)
    return a.result(), a.keys


def signed_post(client: Any, path: str, payload: Any, key: SigningKey, serial: int) -> Any:
    body = json.dumps(payload).encode()
    headers = sign_request(key, serial, "POST", path, body)
    headers["content-type"] = "application/json"
    return client.post(path, content=body, headers=headers)


def renew(
    client: Any,
    cert: NodeCertificate,
    keys: NodeKeys,
    *,
    name: str | None = None,
    tags: Iterable[str] | None = None,
    new_keys: NodeKeys | None = None,
) -> Any:
    """POST /v1/renew signed with ``keys`` as ``cert``; a CSR for ``new_keys`` if given."""
    k = new_keys or keys
    csr = CertificateRequest.build(
        name or cert.name,
        list(cert.tags if tags is None else tags),
        k.static.public_key(),
        k.signing,
    )
    return signed_post(client, "/v1/renew", {"csr": csr.pem.decode()}, keys.signing, cert.serial)
