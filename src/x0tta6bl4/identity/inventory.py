"""What the CA issued: one record per certificate, in ``issued.json`` in the CA directory.

The CA reads it before every issuance to refuse certifying a key to a second name: a
certificate "mallory" carrying bob's static key would let mallory's peers encapsulate to
bob (an unknown key share), and one for bob's signing key would let bob's signatures be
presented as mallory's. A key stays bound to its first name for good, even after that
certificate expires or is revoked; renewing to the same name is fine.

Format (JSON, written atomically under the CA's lock)::

    {"format": 1, "issued": [{"serial": "0x...", "name": "...",
      "signing_key_sha256": "<hex>", "static_key_sha256": "<hex>",
      "not_before": <POSIX s>, "not_after": <POSIX s>}, ...]}

Key fingerprints are the ones ``x0t cert show`` prints: SHA-256 of the ML-DSA-65
SubjectPublicKeyInfo DER, and SHA-256 of ``HybridPublicKey.to_bytes()``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from x0tta6bl4.crypto.hybrid import HybridPublicKey
from x0tta6bl4.crypto.kdf import sha256
from x0tta6bl4.crypto.sign import VerifyKey
from x0tta6bl4.errors import IdentityError, KeyAlreadyCertified, OverlayAddressTaken
from x0tta6bl4.identity.cert import NodeCertificate, validate_name
from x0tta6bl4.identity.overlay import ipv4_holder, node_overlay_ipv4

INVENTORY_FORMAT = 1
_FIELDS = {"serial", "name", "signing_key_sha256", "static_key_sha256", "not_before", "not_after"}


def signing_key_fingerprint(key: VerifyKey) -> bytes:
    spki = key.cryptography_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return sha256(spki)


def static_key_fingerprint(key: HybridPublicKey) -> bytes:
    return sha256(key.to_bytes())


@dataclass(frozen=True, slots=True)
class IssuedRecord:
    serial: int
    name: str
    signing_key_sha256: bytes
    static_key_sha256: bytes
    not_before: float  # POSIX seconds
    not_after: float

    @classmethod
    def of(cls, cert: NodeCertificate) -> IssuedRecord:
        return cls(
            cert.serial,
            cert.name,
            signing_key_fingerprint(cert.signing_key),
            static_key_fingerprint(cert.static_key),
            cert.not_before,
            cert.not_after,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "serial": f"{self.serial:#x}",
            "name": self.name,
            "signing_key_sha256": self.signing_key_sha256.hex(),
            "static_key_sha256": self.static_key_sha256.hex(),
            "not_before": int(self.not_before),
            "not_after": int(self.not_after),
        }

    @classmethod
    def from_json(cls, obj: object) -> IssuedRecord:
        """Strict: exactly the fields above, with their types; raises ValueError."""
        if not isinstance(obj, dict) or set(obj) != _FIELDS:
            raise ValueError(f"a record needs exactly the fields {sorted(_FIELDS)}")
        serial, name = obj["serial"], obj["name"]
        nb, na = obj["not_before"], obj["not_after"]
        if not isinstance(serial, str) or not serial.startswith("0x"):
            raise ValueError(f"serial {serial!r} is not 0x-prefixed hex")
        if not isinstance(name, str):
            raise ValueError(f"name {name!r} is not a string")
        for t in (nb, na):
            if isinstance(t, bool) or not isinstance(t, int):
                raise ValueError(f"time {t!r} is not an integer")
        try:
            validate_name(name)
        except IdentityError as exc:
            raise ValueError(str(exc)) from None
        return cls(
            int(serial, 16),
            name,
            _fingerprint(obj["signing_key_sha256"]),
            _fingerprint(obj["static_key_sha256"]),
            float(nb),
            float(na),
        )


def _fingerprint(value: object) -> bytes:
    if not isinstance(value, str) or len(value) != 64:
        raise ValueError(f"fingerprint {value!r} is not 64 hex digits")
    return bytes.fromhex(value)


def _line(record: IssuedRecord) -> bytes:
    return json.dumps(record.to_json(), separators=(",", ":")).encode()


def _render(lines: list[bytes]) -> bytes:
    # Valid JSON with one record per line, so the file stays greppable and diffable.
    return b'{"format":%d,"issued":[\n%s\n]}\n' % (INVENTORY_FORMAT, b",\n".join(lines))


class Inventory:
    """The parsed file. The CA keeps it between issuances and re-parses only when the
    file's bytes differ from what it last read or wrote (another process issued)."""

    __slots__ = ("_lines", "_raw", "_signing_owner", "_static_owner", "records")

    def __init__(self, records: Iterable[IssuedRecord] = ()) -> None:
        self.records: list[IssuedRecord] = []
        self._lines: list[bytes] = []
        # Each key's name: the first record binds it, and check_unique keeps it so.
        self._static_owner: dict[bytes, IssuedRecord] = {}
        self._signing_owner: dict[bytes, IssuedRecord] = {}
        for r in records:
            self._add(r)
        self._raw = self.to_bytes() if self.records else b""

    def _add(self, record: IssuedRecord) -> None:
        self.records.append(record)
        self._lines.append(_line(record))
        self._static_owner.setdefault(record.static_key_sha256, record)
        self._signing_owner.setdefault(record.signing_key_sha256, record)

    @classmethod
    def read(cls, path: str | os.PathLike[str], cached: Inventory | None = None) -> Inventory:
        """The records in ``path`` (none if it does not exist yet: nothing issued).
        Anything unreadable raises IdentityError: issuing blind would defeat the check."""
        p = Path(path)
        try:
            raw = p.read_bytes()
        except FileNotFoundError:
            raw = b""
        if cached is not None and raw == cached._raw:
            return cached
        if not raw:
            return cls()
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict) or doc.get("format") != INVENTORY_FORMAT:
                raise ValueError(f"not a format-{INVENTORY_FORMAT} inventory")
            issued = doc.get("issued")
            if not isinstance(issued, list):
                raise ValueError('"issued" is not a list')
            inv = cls(IssuedRecord.from_json(r) for r in issued)
        # JSONDecodeError and UnicodeDecodeError are ValueErrors; deep nesting recurses.
        except (ValueError, RecursionError) as exc:
            raise IdentityError(
                f"CA inventory {p} is damaged ({exc}); refusing to issue until it is repaired"
            ) from None
        inv._raw = raw
        return inv

    def to_bytes(self) -> bytes:
        return _render(self._lines)

    def with_record(self, record: IssuedRecord) -> bytes:
        """The file's new contents with ``record`` added; call ``commit`` once written."""
        return _render([*self._lines, _line(record)])

    def commit(self, record: IssuedRecord, written: bytes) -> None:
        self._add(record)
        self._raw = written

    def check_overlay_ipv4(self, name: str, trust_domain: str) -> None:
        """Raise OverlayAddressTaken if a new ``name``'s derived overlay IPv4 address
        (22 bits, ``identity.overlay``) is that of a name this CA certified before: peers
        compute addresses from names, so one address must not stand for two nodes."""
        names = {r.name for r in self.records}
        if name in names:
            return  # renewing keeps the name, and with it the address
        other = ipv4_holder(trust_domain, name, sorted(names))
        if other is not None:
            raise OverlayAddressTaken(
                f"node name {name!r} would share the overlay IPv4 address "
                f"{node_overlay_ipv4(trust_domain, name)} with {other!r}, which this CA "
                "certified; choose another name"
            )

    def check_unique(
        self,
        name: str,
        signing_key: VerifyKey,
        static_key: HybridPublicKey,
        ca_key: VerifyKey,
    ) -> None:
        """Raise KeyAlreadyCertified if either key is certified to a name other than
        ``name``, or the signing key is the CA's own."""
        if signing_key == ca_key:
            raise KeyAlreadyCertified(
                f"the signing key for {name!r} is the CA's own key; refusing to certify it "
                "to a node"
            )
        for kind, fp, owners in (
            ("static key", static_key_fingerprint(static_key), self._static_owner),
            ("signing key", signing_key_fingerprint(signing_key), self._signing_owner),
        ):
            r = owners.get(fp)
            if r is not None and r.name != name:
                raise KeyAlreadyCertified(
                    f"{kind} sha256 {fp.hex()[:16]}... is already certified to {r.name!r} "
                    f"(serial {r.serial:#x}); refusing to certify it to {name!r}: "
                    "each key belongs to one node name"
                )
