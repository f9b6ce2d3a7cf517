"""Signed policy documents: the policy text, then the CA's ML-DSA-65 signature over it.

    version 3
    allow from tag:role:web to tag:role:db port tcp/5432
    -----BEGIN X0T POLICY SIGNATURE-----
    <base64 of the 3,309-byte signature, 64 characters a line>
    -----END X0T POLICY SIGNATURE-----

The signature covers the exact bytes before the BEGIN line (the text, ending in a newline),
with the ML-DSA context string ``x0tta6bl4/policy/v1``, so no other CA signature (a
certificate, a revocation list) can pass for a policy. Versions only go up: a node keeps
its last good policy and refuses an unsigned, wrongly signed or altered document, an
older version, and the same version with different text (``accept_policy``).
"""

from __future__ import annotations

import binascii
import enum
from collections.abc import Iterable
from dataclasses import dataclass

from x0tta6bl4.crypto.sign import SIGNATURE_SIZE, SigningKey, VerifyKey
from x0tta6bl4.errors import BadSignature, PolicyError
from x0tta6bl4.identity.bundle import TrustBundle
from x0tta6bl4.policy.engine import Policy
from x0tta6bl4.policy.parse import MAX_POLICY_SIZE
from x0tta6bl4.policy.types import PolicyRejected, RefusalReason

SIGNATURE_CONTEXT = b"x0tta6bl4/policy/v1"
BEGIN = b"-----BEGIN X0T POLICY SIGNATURE-----\n"
END = b"-----END X0T POLICY SIGNATURE-----"
_B64_LINE = 64
_ARMOUR_MAX = 2 * SIGNATURE_SIZE  # base64 (4/3) plus newlines fits easily
MAX_SIGNED_SIZE = MAX_POLICY_SIZE + len(BEGIN) + _ARMOUR_MAX + len(END) + 1

Trust = TrustBundle | Iterable[VerifyKey]


def ca_keys(trusted: Trust) -> tuple[VerifyKey, ...]:
    """The CA keys a policy may be signed by: every CA in the bundle (rotation), or keys."""
    if not isinstance(trusted, TrustBundle):
        return tuple(trusted)
    # A TrustBundle admits ML-DSA-65 CA certificates only (bundle.check_ca_certificate).
    return tuple(VerifyKey(ca.public_key()) for ca in trusted.ca_certs)  # type: ignore[arg-type]


def split_signed(data: bytes) -> tuple[bytes, bytes]:
    """Decode the envelope into (signed text, signature); checks shape only, never the
    signature. Raises PolicyRejected (TOO_LARGE, UNSIGNED, MALFORMED)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise PolicyRejected(RefusalReason.MALFORMED, "a signed policy must be bytes")
    data = bytes(data)
    if len(data) > MAX_SIGNED_SIZE:
        raise PolicyRejected(
            RefusalReason.TOO_LARGE, f"{len(data):,} bytes; the limit is {MAX_SIGNED_SIZE:,}"
        )
    at = data.find(BEGIN)
    while at > 0 and data[at - 1] != 0x0A:  # the marker must start a line
        at = data.find(BEGIN, at + 1)
    if at < 0:
        raise PolicyRejected(RefusalReason.UNSIGNED, "no signature block")
    body, armour = data[:at], data[at + len(BEGIN) :]
    if len(body) > MAX_POLICY_SIZE:
        raise PolicyRejected(RefusalReason.TOO_LARGE, f"the text is over {MAX_POLICY_SIZE:,} bytes")
    end = armour.find(END)
    if end < 0 or armour[end + len(END) :] not in (b"", b"\n"):
        raise PolicyRejected(RefusalReason.MALFORMED, "the signature block is not closed properly")
    if end > _ARMOUR_MAX or not armour[:end].endswith(b"\n"):
        raise PolicyRejected(RefusalReason.MALFORMED, "the signature block has a bad layout")
    try:
        signature = binascii.a2b_base64(armour[:end].replace(b"\n", b""), strict_mode=True)
    except binascii.Error:
        raise PolicyRejected(RefusalReason.MALFORMED, "the signature is not base64") from None
    if len(signature) != SIGNATURE_SIZE:
        raise PolicyRejected(
            RefusalReason.MALFORMED,
            f"the signature has {len(signature)} bytes",
        )
    return body, signature


class SignedPolicy:
    """A policy with the CA signature that vouches for it. Equal when the text is."""

    __slots__ = ("_body", "_policy", "_signature")

    def __init__(self, policy: Policy, body: bytes, signature: bytes) -> None:
        """Wrap already checked parts; use ``sign`` or ``from_bytes``."""
        self._policy = policy
        self._body = body
        self._signature = signature

    @classmethod
    def sign(cls, text: str | bytes, key: SigningKey, source: str = "policy") -> SignedPolicy:
        """Parse ``text`` (raises PolicySyntaxError) and sign it with the CA key."""
        body = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
        if not body.endswith(b"\n"):
            body += b"\n"
        # Parsing also guarantees that no line starts with BEGIN (it is no rule), so the
        # envelope's first BEGIN line is the signature's.
        policy = Policy.parse(body, source)
        return cls(policy, body, key.sign(body, SIGNATURE_CONTEXT))

    @classmethod
    def from_bytes(cls, data: bytes, trusted: Trust, source: str = "policy") -> SignedPolicy:
        """Decode, check the signature against the CA keys, then parse. Raises only
        PolicyRejected, whatever the bytes."""
        body, signature = split_signed(data)
        for key in ca_keys(trusted):
            try:
                key.verify(signature, body, SIGNATURE_CONTEXT)
                break
            except BadSignature:
                continue
        else:
            raise PolicyRejected(
                RefusalReason.BAD_SIGNATURE,
                "the signature does not verify with the CA (another CA, or the text was altered)",
            )
        try:
            policy = Policy.parse(body, source)
        except PolicyError as exc:
            raise PolicyRejected(RefusalReason.MALFORMED, str(exc)) from None
        return cls(policy, body, signature)

    @property
    def policy(self) -> Policy:
        return self._policy

    @property
    def version(self) -> int:
        return self._policy.version

    @property
    def text(self) -> bytes:
        """The signed bytes: the policy text as written."""
        return self._body

    @property
    def signature(self) -> bytes:
        return self._signature

    def to_bytes(self) -> bytes:
        b64 = binascii.b2a_base64(self._signature, newline=False)
        lines = b"".join(b64[i : i + _B64_LINE] + b"\n" for i in range(0, len(b64), _B64_LINE))
        return self._body + BEGIN + lines + END + b"\n"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SignedPolicy) and other._body == self._body

    def __hash__(self) -> int:
        return hash(self._body)

    def __repr__(self) -> str:
        return f"SignedPolicy(version={self.version}, {len(self._policy.rules)} rules)"


def accept_newer(held: SignedPolicy | None, candidate: SignedPolicy) -> SignedPolicy:
    """The policy to keep after receiving ``candidate`` (both already signature-checked).

    A higher version replaces the held one; the same version with the same text keeps
    it; anything else raises PolicyRejected (OLDER or CONFLICT).
    """
    if held is None or candidate.version > held.version:
        return candidate
    if candidate.version == held.version:
        if candidate == held:
            return held
        raise PolicyRejected(
            RefusalReason.CONFLICT,
            f"version {held.version} is already held with different text; sign a higher version",
        )
    raise PolicyRejected(
        RefusalReason.OLDER, f"version {candidate.version} is older than the held {held.version}"
    )


class Outcome(enum.StrEnum):
    ACCEPTED = "accepted"  # a newer policy: use it from now on
    UNCHANGED = "unchanged"  # the policy already held, again
    REFUSED = "refused"  # keep the held policy; ``error`` says why


@dataclass(frozen=True, slots=True)
class Acceptance:
    outcome: Outcome
    policy: SignedPolicy | None  # what to hold now: the new policy or the last good one
    error: PolicyRejected | None = None


def accept_policy(
    held: SignedPolicy | None, data: bytes, trusted: Trust, source: str = "policy"
) -> Acceptance:
    """What a node does with a policy document it received: pure, never raises.

    ``held`` is the last good policy (None at first start: then every flow is denied).
    """
    try:
        candidate = SignedPolicy.from_bytes(data, trusted, source)
        kept = accept_newer(held, candidate)
    except PolicyRejected as exc:
        return Acceptance(Outcome.REFUSED, held, exc)
    if kept is held:
        return Acceptance(Outcome.UNCHANGED, held)
    return Acceptance(Outcome.ACCEPTED, kept)
