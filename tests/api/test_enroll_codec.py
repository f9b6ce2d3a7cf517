"""The enrollment codecs both sides share (``api.enroll``, ``api.renewal``): join tokens,
sealed requests and answers, renewal answers. Whatever the input, a decoder returns or
raises our typed error; what one side writes, the other reads back unchanged."""

from __future__ import annotations

import base64
import os
import string
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from x0tta6bl4.api.enroll import (
    Challenge,
    EnrollError,
    EnrollInner,
    EnrollResult,
    EnvelopeError,
    JoinTokenText,
    Peer,
    RenewResult,
    SealedMessage,
    SealedRequest,
    TokenFormatError,
    b64,
    b64decode,
    kem_proof,
    key_fingerprint,
    make_inner,
    open_request,
    open_response,
    seal_request,
    seal_response,
)
from x0tta6bl4.api.renewal import (
    RenewAnswerError,
    decode_renew_answer,
    renew_after,
)
from x0tta6bl4.crypto.hybrid import HybridPrivateKey
from x0tta6bl4.crypto.sign import SigningKey
from x0tta6bl4.identity.request import CertificateRequest

_ENROLL = HybridPrivateKey.generate()
FUZZ = settings(
    max_examples=int(os.environ.get("X0T_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
SLOW = settings(max_examples=25, deadline=None)

ids = st.binary(min_size=8, max_size=8).map(bytes.hex)
secrets_ = st.binary(min_size=32, max_size=32).map(
    lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
)
fingerprints = st.binary(min_size=32, max_size=32).map(bytes.hex)
TOKEN_ALPHABET = string.ascii_letters + string.digits + "._-=+/ \n\t"


# --- join tokens --------------------------------------------------------------------------


@FUZZ
@given(ids, secrets_, fingerprints)
def test_token_text_round_trips(token_id: str, secret: str, fp: str) -> None:
    token = JoinTokenText(token_id, secret, fp)
    text = str(token)
    assert text.startswith("x0tj1.") and len(text) == 5 + 1 + 16 + 1 + 43 + 1 + 64
    assert JoinTokenText.parse(text) == token
    assert JoinTokenText.parse(f"  {text}\n") == token  # as pasted
    assert secret not in repr(token)


@FUZZ
@given(st.one_of(st.text(max_size=400), st.text(alphabet=TOKEN_ALPHABET, max_size=200)))
def test_token_parse_raises_only_its_own_error(text: str) -> None:
    try:
        token = JoinTokenText.parse(text)
    except TokenFormatError:
        return
    assert str(token) == text.strip()


@FUZZ
@given(ids, secrets_, fingerprints, st.integers(0, 133), st.characters())
def test_a_token_with_any_character_changed_is_refused_or_different(
    token_id: str, secret: str, fp: str, at: int, ch: str
) -> None:
    text = str(JoinTokenText(token_id, secret, fp))
    changed = text[:at] + ch + text[at + 1 :]
    try:
        parsed = JoinTokenText.parse(changed)
    except TokenFormatError:
        return
    assert str(parsed) == changed.strip()


def test_token_parse_names_the_bad_part() -> None:
    good = JoinTokenText.new("ab" * 32)
    for text, words in (
        ("x0tk_abc_def", "not a join token"),
        (str(good).replace("x0tj1", "x0tj2"), "not a join token"),
        (f"x0tj1.ABCDEF0123456789.{good.secret}.{good.fingerprint}", "id"),
        (f"x0tj1.{good.token_id}.{good.secret[:-1]}.{good.fingerprint}", "secret"),
        (f"x0tj1.{good.token_id}.{good.secret}.{good.fingerprint.upper()}", "fingerprint"),
        ("x" * 300, "at most"),
    ):
        with pytest.raises(TokenFormatError, match=words):
            JoinTokenText.parse(text)
    with pytest.raises(TokenFormatError):
        JoinTokenText.parse(None)  # type: ignore[arg-type]


def test_a_non_canonical_secret_is_refused() -> None:
    # 43 base64url characters carry 258 bits; the last two must be zero.
    good = JoinTokenText.new("ab" * 32)
    last = good.secret[-1]
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
    twin = alphabet[alphabet.index(last) ^ 1]
    with pytest.raises(TokenFormatError, match="secret"):
        JoinTokenText.parse(str(good).replace(good.secret, good.secret[:-1] + twin))


def test_new_tokens_are_unique_and_carry_the_fingerprint() -> None:
    fp = key_fingerprint(HybridPrivateKey.generate().public_key().to_bytes())
    tokens = {JoinTokenText.new(fp) for _ in range(200)}
    assert len({t.token_id for t in tokens}) == 200 and len({t.secret for t in tokens}) == 200
    assert all(t.fingerprint == fp for t in tokens)
    with pytest.raises(TokenFormatError):
        JoinTokenText.new("not hex")


# --- sealed requests and answers ----------------------------------------------------------


@pytest.fixture(scope="module")
def request_parts() -> tuple[HybridPrivateKey, EnrollInner]:
    enroll = HybridPrivateKey.generate()
    static, signing = HybridPrivateKey.generate(), SigningKey.generate()
    csr = CertificateRequest.build("web-1", ["role:web"], static.public_key(), signing)
    ct, shared = static.public_key().encapsulate()
    challenge = Challenge(ciphertext=b64(ct), ticket=b64(os.urandom(100)), expires_at=1.0)
    token = JoinTokenText.new(key_fingerprint(enroll.public_key().to_bytes()))
    return enroll, make_inner(token, csr, challenge, shared, os.urandom(32))


def test_a_sealed_request_opens_only_with_the_enrollment_key(request_parts) -> None:  # type: ignore[no-untyped-def]
    enroll, inner = request_parts
    sealed = seal_request(enroll.public_key(), inner)
    assert open_request(enroll, sealed) == inner
    with pytest.raises(EnvelopeError, match="not sealed to this control plane"):
        open_request(HybridPrivateKey.generate(), sealed)
    raw = bytearray(b64decode(sealed.sealed, "sealed"))
    raw[-1] ^= 1
    with pytest.raises(EnvelopeError, match="not sealed to this control plane"):
        open_request(enroll, SealedRequest(sealed=b64(bytes(raw))))


def test_the_kem_proof_binds_the_secret_and_the_request(request_parts) -> None:  # type: ignore[no-untyped-def]
    _, inner = request_parts
    der = CertificateRequest.from_pem(inner.csr.encode()).der
    ss = os.urandom(32)
    assert kem_proof(ss, der) == kem_proof(ss, der)
    assert kem_proof(ss, der) != kem_proof(os.urandom(32), der)
    assert kem_proof(ss, der) != kem_proof(ss, der + b"\x00")


@SLOW
@given(st.binary(min_size=1, max_size=3000))
def test_open_request_raises_only_its_own_error(data: bytes) -> None:
    try:
        open_request(_ENROLL, SealedRequest(sealed=b64(data)))
    except EnvelopeError:
        return
    pytest.fail("random bytes opened")


def _result(**kw: Any) -> EnrollResult:
    base: dict[str, Any] = {
        "certificate": "-----BEGIN CERTIFICATE-----\n...",
        "bundle": "b",
        "crl": "c",
        "policy": None,
        "peers": [Peer(name="relay-1", address="[fd00::1]:7100")],
        "renew_after": 123.5,
        "control_url": "https://cp.example:8700",
    }
    base.update(kw)
    return EnrollResult(**base)


@FUZZ
@given(
    st.text(max_size=200),
    st.one_of(st.none(), st.binary(max_size=200).map(b64)),
    st.floats(allow_nan=False, allow_infinity=False),
)
def test_a_sealed_answer_round_trips(cert: str, policy: str | None, after: float) -> None:
    key = os.urandom(32)
    result = _result(certificate=cert, policy=policy, renew_after=after)
    sealed = seal_response(key, result)
    assert open_response(key, sealed) == result
    assert open_response(key, sealed.model_dump()) == result  # the JSON the client decodes


def test_an_answer_opens_only_under_its_key() -> None:
    key = os.urandom(32)
    sealed = seal_response(key, _result())
    with pytest.raises(EnvelopeError, match="response key"):
        open_response(os.urandom(32), sealed)
    raw = bytearray(b64decode(sealed.sealed, "sealed"))
    raw[20] ^= 1
    with pytest.raises(EnvelopeError):
        open_response(key, SealedMessage(sealed=b64(bytes(raw))))
    with pytest.raises(EnrollError):
        seal_response(b"short", _result())


json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


@FUZZ
@given(st.one_of(json_values, st.fixed_dictionaries({"sealed": st.text(max_size=100)})))
def test_open_response_raises_only_its_own_error(data: object) -> None:
    try:
        open_response(os.urandom(32), data)
    except EnvelopeError:
        return
    pytest.fail("garbage opened")


@FUZZ
@given(st.text(max_size=200), st.one_of(st.none(), st.integers(0, 300)))
def test_b64decode_raises_only_its_own_error(text: str, size: int | None) -> None:
    try:
        raw = b64decode(text, "field", size)
    except EnvelopeError as exc:
        assert "field" in str(exc)
        return
    assert size is None or len(raw) == size


# --- renewal answers: the agent's stdlib decoder agrees with the service's schema ----------


@FUZZ
@given(
    st.text(alphabet=string.printable, max_size=300),
    st.text(alphabet=string.printable, max_size=300),
    st.floats(allow_nan=False, allow_infinity=False),
)
def test_the_agent_reads_what_the_service_writes(cert: str, crl: str, after: float) -> None:
    sent = RenewResult(certificate=cert, bundle="bundle", crl=crl, renew_after=after)
    got = decode_renew_answer(sent.model_dump(mode="json"))
    assert (got.certificate, got.bundle, got.crl, got.renew_after) == (
        cert.encode(),
        b"bundle",
        crl.encode(),
        after,
    )
    assert set(RenewResult.model_fields) == {"certificate", "bundle", "crl", "renew_after"}


@FUZZ
@given(json_values)
def test_decode_renew_answer_raises_only_its_own_error(data: object) -> None:
    try:
        decode_renew_answer(data)
    except RenewAnswerError:
        return


def test_renew_after_is_half_the_issued_lifetime() -> None:
    # The CA back-dates not_before by five minutes; the half is counted from issuance.
    assert renew_after(1000.0 - 300, 1000.0 + 86400) == 1000.0 + 43200
    assert renew_after(0.0, 10.0) == 10.0  # shorter than the back-dating: due at expiry


def test_renewal_module_does_not_load_pydantic() -> None:
    import subprocess
    import sys

    code = (
        "import sys, x0tta6bl4.node.renew\n"
        "bad = [m for m in ('pydantic', 'fastapi', 'sqlalchemy') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
