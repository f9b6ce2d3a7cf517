"""Joining a control plane: the node's side of enrollment (``x0t node join``).

The node makes its own keys (or uses the ones ``x0t node init`` left in the state
directory), proves it holds them, and receives a certificate, the trust bundle, the
revocation list, the current policy and a few bootstrap peers. The exchange is described
in ``api.enroll``; the point of it, for the node, is that the answer arrives sealed under a
key only the holder of the enrollment key (whose fingerprint the token carries) could have
read: a TLS-stripping or impersonating server learns nothing and can hand over nothing.

The state directory is written only once everything verified: the trust files first, the
keys, the certificate last (the certificate is what makes a credential set current, and
``NodeCredentials.load`` refuses a set whose keys do not match it).
"""

from __future__ import annotations

import json
import os
import re
import time
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from x0tta6bl4.api.enroll import (
    Challenge,
    EnrollKey,
    EnrollResult,
    JoinTokenText,
    b64,
    b64decode,
    key_fingerprint,
    make_inner,
    open_response,
    parse_answer,
    seal_request,
)
from x0tta6bl4.crypto.hybrid import (
    CIPHERTEXT_SIZE,
    PUBLIC_KEY_SIZE,
    HybridPrivateKey,
    HybridPublicKey,
)
from x0tta6bl4.crypto.keys import load_hybrid_key, load_signing_key
from x0tta6bl4.crypto.sign import SigningKey
from x0tta6bl4.errors import X0tError
from x0tta6bl4.identity.bundle import TrustBundle
from x0tta6bl4.identity.cert import NodeCertificate, normalize_tags, validate_name
from x0tta6bl4.identity.crl import RevocationList
from x0tta6bl4.identity.request import CertificateRequest
from x0tta6bl4.identity.store import (
    NODE_CERT_FILE,
    NODE_CSR_FILE,
    NODE_KEY_FILE,
    NODE_STATIC_KEY_FILE,
    NodeCredentials,
)
from x0tta6bl4.identity.verify import verify_node_certificate
from x0tta6bl4.node.control_client import ControlClient
from x0tta6bl4.node.runsettings import parse_host_port
from x0tta6bl4.node.state import BUNDLE_FILE, CRL_FILE, POLICY_FILE, StateDir
from x0tta6bl4.observability import tracing
from x0tta6bl4.policy.signed import SignedPolicy

KEY_PATH = "/v1/enroll/key"
CHALLENGE_PATH = "/v1/enroll/challenge"
ENROLL_PATH = "/v1/enroll"


class JoinError(X0tError):
    """Joining is refused or failed; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class JoinResult:
    name: str
    spiffe_id: str
    serial: int
    tags: tuple[str, ...]
    not_after: float
    renew_after: float
    control_url: str
    state_dir: Path
    peers: dict[str, str]
    policy_version: int | None
    reused_keys: bool
    warnings: list[str] = field(default_factory=list)


def existing_keys(state: StateDir) -> tuple[HybridPrivateKey, SigningKey] | None:
    """The keys ``x0t node init`` (without a CA) left here, or None when there are none.
    JoinError when the directory already holds a certificate or only one key."""
    if state.file(NODE_CERT_FILE).exists():
        raise JoinError(
            f"{state.path} already holds a certificate ({NODE_CERT_FILE}); this node is "
            f"enrolled. To join again, move {NODE_CERT_FILE} away (the keys are kept)"
        )
    have = [state.file(n).exists() for n in (NODE_KEY_FILE, NODE_STATIC_KEY_FILE)]
    if not any(have):
        return None
    if not all(have):
        raise JoinError(
            f"{state.path} holds only one of {NODE_KEY_FILE} and {NODE_STATIC_KEY_FILE}; "
            "move it away (or restore the other) before joining"
        )
    state.check_key_modes((NODE_KEY_FILE, NODE_STATIC_KEY_FILE))
    try:
        return load_hybrid_key(state.file(NODE_STATIC_KEY_FILE)), load_signing_key(
            state.file(NODE_KEY_FILE)
        )
    except X0tError as exc:
        raise JoinError(f"{state.path}: unusable node key: {exc}") from None


def requested_tags(state: StateDir) -> tuple[str, ...]:
    """The tags of the request ``x0t node init`` wrote (node.csr), if any."""
    raw = state.read(NODE_CSR_FILE, required=False)
    if raw is None:
        return ()
    try:
        return CertificateRequest.load(raw).tags
    except X0tError:
        return ()


def _verify(
    result: EnrollResult,
    name: str,
    tags: tuple[str, ...],
    static: HybridPublicKey,
    signing: SigningKey,
    now: float,
) -> tuple[TrustBundle, NodeCertificate, RevocationList]:
    try:
        bundle = TrustBundle.from_pem(result.bundle.encode())
        cert = NodeCertificate.from_pem(result.certificate.encode())
        crl = RevocationList.from_pem(result.crl.encode(), bundle)
        verify_node_certificate(cert.der, bundle, crl, now)
    except X0tError as exc:
        raise JoinError(f"the control plane's answer does not verify: {exc}") from None
    if cert.name != name:
        raise JoinError(f"the certificate names {cert.name!r}, not {name!r}")
    if cert.static_key != static or cert.signing_key != signing.public_key():
        raise JoinError("the certificate is for other keys than this node's")
    if cert.tags != tags:
        raise JoinError(f"the certificate carries tags {list(cert.tags)}, not {list(tags)}")
    return bundle, cert, crl


def _peers(result: EnrollResult, name: str) -> dict[str, str]:
    peers: dict[str, str] = {}
    for p in result.peers:
        try:
            validate_name(p.name)
            parse_host_port(p.address)
        except (X0tError, ValueError):
            continue  # a bootstrap hint, not worth failing the join over
        if p.name != name:
            peers[p.name] = p.address
    return peers


def join(
    url: str,
    token_text: str,
    state_dir: Path,
    name: str,
    tags: Iterable[str] | None = None,
    *,
    client: ControlClient | None = None,
    now: float | None = None,
) -> JoinResult:
    """Enroll this node with the control plane at ``url`` and write ``state_dir``.

    ``tags``: those to ask for (a subset of what the token grants); None = the tags of
    the node.csr ``x0t node init`` wrote, if any. Raises JoinError (refusals, a wrong
    key), ControlError (HTTP), TokenFormatError; writes nothing unless it succeeds.
    """
    with tracing.span("x0t.node.join", node=name) as sp:
        result = _join(url, token_text, state_dir, name, tags, client=client, now=now)
        sp.set_attribute("x0t.serial", format(result.serial, "x"))
        return result


def _join(
    url: str,
    token_text: str,
    state_dir: Path,
    name: str,
    tags: Iterable[str] | None,
    *,
    client: ControlClient | None,
    now: float | None,
) -> JoinResult:
    token = JoinTokenText.parse(token_text)
    validate_name(name)
    state = StateDir(Path(state_dir))
    keys = existing_keys(state)
    tag_set = normalize_tags(requested_tags(state) if tags is None else tags)
    static, signing = (
        keys if keys is not None else (HybridPrivateKey.generate(), SigningKey.generate())
    )
    client = client or ControlClient(url)

    key = parse_answer(EnrollKey, client.request("GET", KEY_PATH), f"GET {KEY_PATH}")
    raw = b64decode(key.public_key, "public_key", PUBLIC_KEY_SIZE)
    if key_fingerprint(raw) != token.fingerprint:
        raise JoinError(
            f"the control plane at {client.url} has enrollment key {key_fingerprint(raw)[:16]}..., "
            f"the token is for {token.fingerprint[:16]}...: wrong URL, or someone in between; "
            "nothing was sent"
        )
    enroll_public = HybridPublicKey.from_bytes(raw)

    challenge = parse_answer(
        Challenge,
        client.request("POST", CHALLENGE_PATH, {"static_key": b64(static.public_key().to_bytes())}),
        f"POST {CHALLENGE_PATH}",
    )
    shared = static.decapsulate(b64decode(challenge.ciphertext, "ciphertext", CIPHERTEXT_SIZE))
    request = CertificateRequest.build(name, tag_set, static.public_key(), signing)
    response_key = os.urandom(32)
    sealed = seal_request(
        enroll_public, make_inner(token, request, challenge, shared, response_key)
    )
    result = open_response(response_key, client.request("POST", ENROLL_PATH, sealed.model_dump()))

    t = time.time() if now is None else now
    bundle, cert, crl = _verify(result, name, tag_set, static.public_key(), signing, t)
    warnings: list[str] = []
    policy: SignedPolicy | None = None
    if result.policy is not None:
        try:
            policy = SignedPolicy.from_bytes(b64decode(result.policy, "policy"), bundle)
        except X0tError as exc:
            warnings.append(f"the control plane's policy was not accepted: {exc}")
    peers = _peers(result, name)

    state.create()
    state.write(BUNDLE_FILE, bundle.to_pem(), 0o644)
    state.write(CRL_FILE, crl.to_pem(), 0o644)
    if policy is not None:
        state.write(POLICY_FILE, policy.to_bytes(), 0o644)
    if peers:
        merged = state.load_peers()
        merged.update(peers)
        state.save_peers(merged)
    NodeCredentials(cert, static, signing).save(state.path)  # keys, then the certificate
    return JoinResult(
        name=name,
        spiffe_id=cert.spiffe_id,
        serial=cert.serial,
        tags=cert.tags,
        not_after=cert.not_after,
        renew_after=result.renew_after,
        control_url=client.url,
        state_dir=state.path,
        peers=peers,
        policy_version=None if policy is None else policy.version,
        reused_keys=keys is not None,
        warnings=warnings,
    )


_CONTROL_HEADER = re.compile(r"^[ \t]*\[[ \t]*control[ \t]*\][ \t]*(#.*)?$")
_TABLE_HEADER = re.compile(r"^[ \t]*\[")
_URL_LINE = re.compile(r"^[ \t]*url[ \t]*=")


def set_control_url(toml_text: str, url: str) -> str:
    """``toml_text`` with ``[control] url`` set to ``url``, every other byte kept: the
    ``url =`` line of the ``[control]`` table is replaced (or added under its header, or a
    ``[control]`` table is appended). JoinError if the result does not say so, e.g. the
    file sets the table some other way (inline, dotted keys)."""
    value = json.dumps(url)  # a JSON string is a valid TOML basic string
    lines = toml_text.splitlines(keepends=True)
    bare = [line.rstrip("\r\n") for line in lines]
    header = next((i for i, line in enumerate(bare) if _CONTROL_HEADER.match(line)), None)
    if header is None:
        sep = "" if not toml_text or toml_text.endswith("\n") else "\n"
        out = f"{toml_text}{sep}\n[control]\nurl = {value}\n"
    else:
        end = next(
            (j for j in range(header + 1, len(lines)) if _TABLE_HEADER.match(bare[j])),
            len(lines),
        )
        at = next((j for j in range(header + 1, end) if _URL_LINE.match(bare[j])), None)
        newline = "\r\n" if lines[header].endswith("\r\n") else "\n"
        if at is None:
            lines.insert(header + 1, f"url = {value}{newline}")
        else:
            ending = (
                "\r\n" if lines[at].endswith("\r\n") else "\n" if lines[at].endswith("\n") else ""
            )
            lines[at] = f"url = {value}{ending}"
        out = "".join(lines)
    try:
        got = tomllib.loads(out).get("control", {}).get("url")
    except (tomllib.TOMLDecodeError, AttributeError):
        got = None
    if got != url:
        raise JoinError("could not set [control] url in the configuration; set it by hand")
    return out
