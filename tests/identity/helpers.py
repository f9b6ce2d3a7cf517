"""Shared helpers for identity tests: a fixed clock and a certificate forge."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from x0tta6bl4.crypto.hybrid import HybridPrivateKey
from x0tta6bl4.crypto.sign import SigningKey
from x0tta6bl4.identity.ca import random_serial
from x0tta6bl4.identity.cert import OID_STATIC_KEY, OID_TAGS, encode_static_key, encode_tags

# A fixed wall clock: 2027-01-15. The CA starts an hour before.
NOW = 1_800_000_000.0
TD = "x0tta6bl4.mesh"


def _dt(t: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(t, tz=datetime.UTC)


KU_LEAF: dict[str, bool] = {
    "digital_signature": True,
    "content_commitment": False,
    "key_encipherment": False,
    "data_encipherment": False,
    "key_agreement": False,
    "key_cert_sign": False,
    "crl_sign": False,
    "encipher_only": False,
    "decipher_only": False,
}

_DEFAULT = object()


def forge_cert(
    issuer_key: Any,
    issuer_name: x509.Name,
    *,
    uris: Sequence[str] = (f"spiffe://{TD}/node/forged",),
    ca: bool = False,
    bc: bool = True,
    bc_critical: bool = True,
    ku: dict[str, bool] | None = KU_LEAF,
    ku_critical: bool = True,
    eku: Sequence[x509.ObjectIdentifier] | None = (
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    ),
    subject_key: Any = _DEFAULT,
    static: Any = _DEFAULT,
    tags: Any = _DEFAULT,
    not_before: float = NOW - 60,
    not_after: float = NOW + 3600,
    extra: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> bytes:
    """A node-like certificate signed by ``issuer_key`` with any one rule broken."""
    if subject_key is _DEFAULT:
        subject_key = SigningKey.generate().public_key().cryptography_key
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "forged")]))
        .issuer_name(issuer_name)
        .public_key(subject_key)
        .serial_number(random_serial())
        .not_valid_before(_dt(not_before))
        .not_valid_after(_dt(not_after))
    )
    if bc:
        b = b.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=bc_critical)
    if ku is not None:
        b = b.add_extension(x509.KeyUsage(**ku), critical=ku_critical)
    if eku is not None:
        b = b.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    if uris:
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
            critical=False,
        )
    if static is _DEFAULT:
        static = encode_static_key(HybridPrivateKey.generate().public_key())
    if isinstance(static, bytes):
        b = b.add_extension(x509.UnrecognizedExtension(OID_STATIC_KEY, static), critical=False)
    if tags is _DEFAULT:
        tags = encode_tags(["role:test"])
    if isinstance(tags, bytes):
        b = b.add_extension(x509.UnrecognizedExtension(OID_TAGS, tags), critical=False)
    for ext, critical in extra:
        b = b.add_extension(ext, critical=critical)
    return b.sign(issuer_key, None).public_bytes(serialization.Encoding.DER)


def self_signed_ca(
    name: x509.Name, key: Any, *, uri: str | None = f"spiffe://{TD}", ca: bool = True
) -> x509.Certificate:
    """A CA certificate outside CertificateAuthority (for bundle and rotation tests)."""
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(random_serial())
        .not_valid_before(_dt(NOW - 86400))
        .not_valid_after(_dt(NOW + 86400))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(
            x509.KeyUsage(**{**KU_LEAF, "digital_signature": False, "key_cert_sign": ca}),
            critical=True,
        )
    )
    if uri is not None:
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
        )
    return b.sign(key, None)


def ed25519_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


# --- raw DER surgery, for inputs `cryptography`'s builders refuse to produce ------------------


def der_tlvs(data: bytes) -> list[bytes]:
    """Split concatenated DER TLVs (definite lengths only) into whole elements."""
    out = []
    i = 0
    while i < len(data):
        length = data[i + 1]
        start = i + 2
        if length & 0x80:
            n = length & 0x7F
            length = int.from_bytes(data[start : start + n], "big")
            start += n
        out.append(data[i : start + length])
        i = start + length
    return out


def der_sequence(elements: Sequence[bytes], tag: int = 0x30) -> bytes:
    body = b"".join(elements)
    n = len(body)
    if n < 0x80:
        head = bytes([tag, n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        head = bytes([tag, 0x80 | len(raw)]) + raw
    return head + body


def crl_without_next_update(crl: x509.CertificateRevocationList, key: Any) -> bytes:
    """``crl`` with its nextUpdate removed, re-signed by ``key`` (ML-DSA: signs the bytes)."""
    tbs = der_tlvs(crl.tbs_certlist_bytes)
    (content,) = tbs
    fields = der_tlvs(content[2 + (content[1] & 0x7F if content[1] & 0x80 else 0) :])
    # version, signature algorithm, issuer, thisUpdate, nextUpdate, ...: drop the second time.
    times = [i for i, f in enumerate(fields) if f[0] in (0x17, 0x18)]
    assert len(times) == 2, "expected thisUpdate and nextUpdate"
    del fields[times[1]]
    new_tbs = der_sequence(fields)
    algorithm = fields[1]
    signature = key.sign(new_tbs)
    return der_sequence([new_tbs, algorithm, der_sequence([b"\x00" + signature], tag=0x03)])


def names_sharing_an_ipv4_address(trust_domain: str) -> tuple[str, str]:
    """Two node names ``n<i>`` whose derived overlay IPv4 addresses are equal (22 bits: a
    pair turns up within a few thousand names)."""
    from x0tta6bl4.identity.cert import node_spiffe_id
    from x0tta6bl4.identity.overlay import overlay_ipv4

    seen: dict[object, str] = {}
    for i in range(200_000):
        name = f"n{i}"
        addr = overlay_ipv4(node_spiffe_id(trust_domain, name))
        if addr in seen:
            return seen[addr], name
        seen[addr] = name
    raise AssertionError("no two of 200,000 names share an IPv4 address")
