"""Signed, versioned policy documents and the node's acceptance decision."""

from __future__ import annotations

import binascii

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.identity.helpers import TD
from tests.policy.helpers import EXAMPLE, with_version
from x0tta6bl4.crypto.sign import SIGNATURE_SIZE, SigningKey
from x0tta6bl4.identity import CertificateAuthority, TrustBundle
from x0tta6bl4.policy import (
    BEGIN,
    END,
    MAX_SIGNED_SIZE,
    SIGNATURE_CONTEXT,
    Outcome,
    PolicyRejected,
    PolicySyntaxError,
    RefusalReason,
    SignedPolicy,
    accept_newer,
    accept_policy,
    ca_keys,
    split_signed,
)


@pytest.fixture(scope="module")
def signed(ca_key: SigningKey) -> SignedPolicy:
    return SignedPolicy.sign(EXAMPLE, ca_key)


def _refused(data: bytes, trusted: object, reason: RefusalReason) -> PolicyRejected:
    with pytest.raises(PolicyRejected) as info:
        SignedPolicy.from_bytes(data, trusted)  # type: ignore[arg-type]
    assert info.value.reason is reason, str(info.value)
    return info.value


def test_round_trip(signed: SignedPolicy, ca: CertificateAuthority) -> None:
    data = signed.to_bytes()
    assert data.startswith(EXAMPLE.encode())
    assert data.endswith(END + b"\n")
    armour = data[len(EXAMPLE) + len(BEGIN) : -len(END) - 1].split(b"\n")
    assert armour[-1] == b"" and all(0 < len(x) <= 64 for x in armour[:-1])
    back = SignedPolicy.from_bytes(data, ca.bundle(), "policy.signed")
    assert back == signed and hash(back) == hash(signed)
    assert back.version == 3 and back.text == EXAMPLE.encode()
    assert back.signature == signed.signature and len(back.signature) == SIGNATURE_SIZE
    assert [r.text for r in back.policy.rules] == [r.text for r in signed.policy.rules]
    assert repr(back) == "SignedPolicy(version=3, 4 rules)"
    # Keys work as well as a bundle; a final newline after END is optional.
    assert SignedPolicy.from_bytes(data[:-1], [ca.public_key]) == signed


def test_sign_adds_the_final_newline(ca_key: SigningKey, ca: CertificateAuthority) -> None:
    s = SignedPolicy.sign(b"version 1\nallow from any to any", ca_key)
    assert s.text == b"version 1\nallow from any to any\n"
    assert SignedPolicy.from_bytes(s.to_bytes(), ca.bundle()) == s


def test_sign_refuses_malformed_text(ca_key: SigningKey) -> None:
    with pytest.raises(PolicySyntaxError) as info:
        SignedPolicy.sign("version 1\nallow from any too any\n", ca_key, "p.txt")
    assert (info.value.line, info.value.column) == (2, 16)
    with pytest.raises(PolicySyntaxError):  # a signed document is not policy text
        SignedPolicy.sign(SignedPolicy.sign(EXAMPLE, ca_key).to_bytes(), ca_key)


def test_unsigned(ca: CertificateAuthority) -> None:
    _refused(EXAMPLE.encode(), ca.bundle(), RefusalReason.UNSIGNED)
    _refused(b"", ca.bundle(), RefusalReason.UNSIGNED)
    # The marker counts only at the start of a line.
    _refused(EXAMPLE.encode() + b"# " + BEGIN, ca.bundle(), RefusalReason.UNSIGNED)


def test_wrong_ca(signed: SignedPolicy, other_ca: CertificateAuthority) -> None:
    e = _refused(signed.to_bytes(), other_ca.bundle(), RefusalReason.BAD_SIGNATURE)
    assert str(e).startswith("policy refused (bad_signature): ")


def test_other_ca_key_wrong_for_this_ca(other_ca_key: SigningKey, ca: CertificateAuthority) -> None:
    forged = SignedPolicy.sign(EXAMPLE, other_ca_key).to_bytes()
    _refused(forged, ca.bundle(), RefusalReason.BAD_SIGNATURE)


def test_altered_text(signed: SignedPolicy, ca: CertificateAuthority) -> None:
    data = signed.to_bytes()
    for old, new in (
        (b"tcp/5432", b"tcp/5433"),
        (b"deny ", b"allow"),
        (b"version 3", b"version 4"),
    ):
        _refused(data.replace(old, new, 1), ca.bundle(), RefusalReason.BAD_SIGNATURE)
    _refused(b"\n" + data, ca.bundle(), RefusalReason.BAD_SIGNATURE)  # one byte more
    _refused(data.replace(b"\n", b"\r\n", 1), ca.bundle(), RefusalReason.BAD_SIGNATURE)


def test_signature_needs_the_policy_context(ca_key: SigningKey, ca: CertificateAuthority) -> None:
    """A CA signature over the same bytes for another purpose does not pass."""
    body = EXAMPLE.encode()
    for context in (b"", b"x0tta6bl4/policy/v2"):
        doc = body + BEGIN + _armour(ca_key.sign(body, context)) + END + b"\n"
        _refused(doc, ca.bundle(), RefusalReason.BAD_SIGNATURE)
    doc = body + BEGIN + _armour(ca_key.sign(body, SIGNATURE_CONTEXT)) + END + b"\n"
    assert SignedPolicy.from_bytes(doc, ca.bundle()).version == 3


def test_signed_but_malformed(ca_key: SigningKey, ca: CertificateAuthority) -> None:
    """The CA signs only parsed text, but a node still parses what it receives."""
    for body in (b"version 1\nallow from any too any\n", b"\xff\n", b""):
        doc = body + BEGIN + _armour(ca_key.sign(body, SIGNATURE_CONTEXT)) + END + b"\n"
        e = _refused(doc, ca.bundle(), RefusalReason.MALFORMED)
        assert "line" in str(e) or "empty" in str(e)


def _armour(sig: bytes) -> bytes:
    b64 = binascii.b2a_base64(sig, newline=False)
    return b"".join(b64[i : i + 64] + b"\n" for i in range(0, len(b64), 64))


@pytest.mark.parametrize(
    "mangle",
    [
        lambda d: d[: -len(END) - 1],  # no END
        lambda d: d + b"trailing",
        lambda d: d + b"\n",
        lambda d: d.replace(b"\n" + END, END),  # END not on its own line
        lambda d: d.replace(END, b"-----END X0T POLICY SIGNATURE----"),
        lambda d: d.replace(BEGIN, BEGIN + b"!"),  # not base64
        lambda d: d.replace(BEGIN, BEGIN + b"AAAA"),  # one signature too long
        lambda d: d[: d.index(BEGIN) + len(BEGIN)] + b"AAAA\n" + END + b"\n",  # too short
        lambda d: d.replace(BEGIN, BEGIN + b"A" * 9000 + b"\n"),  # armour too long
        lambda d: d.replace(END, END + b"\n" + BEGIN + END),
    ],
)
def test_malformed_envelope(signed: SignedPolicy, ca: CertificateAuthority, mangle: object) -> None:
    _refused(mangle(signed.to_bytes()), ca.bundle(), RefusalReason.MALFORMED)  # type: ignore[operator]


def test_size_limits(signed: SignedPolicy, ca: CertificateAuthority) -> None:
    _refused(b"#" * (MAX_SIGNED_SIZE + 1), ca.bundle(), RefusalReason.TOO_LARGE)
    big = b"#" * (MAX_SIGNED_SIZE - 200) + b"\n" + BEGIN + b"AAAA\n" + END
    _refused(big, ca.bundle(), RefusalReason.TOO_LARGE)
    _refused("text", ca.bundle(), RefusalReason.MALFORMED)  # type: ignore[arg-type]


def test_rotation_bundle_accepts_either_ca(
    ca: CertificateAuthority, other_ca: CertificateAuthority, other_ca_key: SigningKey
) -> None:
    both = TrustBundle(TD, [ca.certificate, other_ca.certificate])
    assert ca_keys(both) == (ca.public_key, other_ca.public_key)
    doc = SignedPolicy.sign(EXAMPLE, other_ca_key).to_bytes()
    assert SignedPolicy.from_bytes(doc, both).version == 3


# --- acceptance: what a node keeps -------------------------------------------------------


def _doc(key: SigningKey, version: int, text: str = EXAMPLE) -> bytes:
    return SignedPolicy.sign(with_version(text, version), key).to_bytes()


def test_acceptance(ca_key: SigningKey, other_ca_key: SigningKey, ca: CertificateAuthority) -> None:
    bundle = ca.bundle()
    first = accept_policy(None, _doc(ca_key, 3), bundle)
    assert first.outcome is Outcome.ACCEPTED and first.error is None
    held = first.policy
    assert held is not None and held.version == 3

    def refused(data: bytes, reason: RefusalReason) -> None:
        a = accept_policy(held, data, bundle)
        assert a.outcome is Outcome.REFUSED and a.policy is held
        assert a.error is not None and a.error.reason is reason

    refused(EXAMPLE.encode(), RefusalReason.UNSIGNED)
    refused(_doc(other_ca_key, 9), RefusalReason.BAD_SIGNATURE)
    refused(_doc(ca_key, 9).replace(b"5432", b"5433"), RefusalReason.BAD_SIGNATURE)
    refused(_doc(ca_key, 2), RefusalReason.OLDER)
    refused(_doc(ca_key, 3, EXAMPLE.replace("5432", "5433")), RefusalReason.CONFLICT)
    refused(b"\x00" * 100, RefusalReason.UNSIGNED)

    # The same text again, even signed anew (ML-DSA signatures differ): nothing changes.
    again = accept_policy(held, _doc(ca_key, 3), bundle)
    assert again.outcome is Outcome.UNCHANGED and again.policy is held and again.error is None

    newer = accept_policy(held, _doc(ca_key, 4), bundle)
    assert newer.outcome is Outcome.ACCEPTED and newer.policy is not None
    assert newer.policy.version == 4

    # With nothing held, a refused document leaves the node with nothing (deny all).
    nothing = accept_policy(None, _doc(other_ca_key, 5), bundle)
    assert nothing.outcome is Outcome.REFUSED and nothing.policy is None


def test_accept_newer(ca_key: SigningKey) -> None:
    v3 = SignedPolicy.sign(with_version(EXAMPLE, 3), ca_key)
    v4 = SignedPolicy.sign(with_version(EXAMPLE, 4), ca_key)
    assert accept_newer(None, v3) is v3
    assert accept_newer(v3, v4) is v4
    assert accept_newer(v3, SignedPolicy.sign(with_version(EXAMPLE, 3), ca_key)) is v3
    with pytest.raises(PolicyRejected, match="older than the held 4") as info:
        accept_newer(v4, v3)
    assert info.value.reason is RefusalReason.OLDER
    other = SignedPolicy.sign(with_version(EXAMPLE, 4) + "allow from any to any\n", ca_key)
    with pytest.raises(PolicyRejected, match="different text") as info:
        accept_newer(v4, other)
    assert info.value.reason is RefusalReason.CONFLICT


# --- fuzzing: the decoder raises nothing but PolicyRejected -----------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_split_any_bytes(data: bytes) -> None:
    try:
        body, sig = split_signed(data)
    except PolicyRejected:
        return
    assert len(sig) == SIGNATURE_SIZE and data.startswith(body)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_fuzz_mutated_documents(
    data: st.DataObject, signed: SignedPolicy, ca: CertificateAuthority
) -> None:
    doc = bytearray(signed.to_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        i = data.draw(st.integers(0, max(len(doc) - 1, 0)))
        if op == "flip" and doc:
            doc[i] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del doc[i:]
        elif op == "insert":
            doc[i:i] = data.draw(st.binary(min_size=1, max_size=8))
        elif doc:
            del doc[i]
    try:
        got = SignedPolicy.from_bytes(bytes(doc), ca.bundle())
    except PolicyRejected:
        return
    # Whatever still verifies says exactly what the CA signed.
    assert got.text == signed.text and got.signature == signed.signature
