"""Fuzzing the private-key file parsers: whatever the bytes, only ``InvalidKey`` comes out.

``HybridPrivateKey.from_pkcs8_pem`` and ``SigningKey.from_pkcs8_pem`` read files from disk,
so they get random bytes, real key files mutated as text and as DER, and PEM blocks holding
some other kind of key (Ed25519, RSA, EC, ML-DSA where X25519/ML-KEM is expected and the
other way round, one key kind's bytes under another kind's OID, unknown OIDs, an encrypted
key, ...). Either a key comes back or ``InvalidKey`` is raised; anything else fails.

Before the fix the fuzzer found ``UnsupportedAlgorithm`` (any OID ``cryptography`` does not
know, e.g. the first byte of a real key's OID zeroed) and ``InternalError`` (an X25519 OID
holding a 56-byte X448 key) escaping both parsers; the ``@example``s pin those inputs.

Examples are derandomized under CI by the suite's hypothesis profile (tests/conftest.py);
``X0T_FUZZ_EXAMPLES`` raises the example count for a longer local run.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import os
import re
from collections.abc import Callable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import (
    ec,
    ed448,
    ed25519,
    mldsa,
    mlkem,
    rsa,
    x448,
    x25519,
)
from hypothesis import example, given, settings
from hypothesis import strategies as st

from x0tta6bl4.crypto.hybrid import HybridPrivateKey
from x0tta6bl4.crypto.sign import SigningKey
from x0tta6bl4.errors import InvalidKey

FUZZ = settings(max_examples=int(os.environ.get("X0T_FUZZ_EXAMPLES", "150")), deadline=None)

Parser = Callable[[bytes], object]
Edit = tuple[int, int, bytes]  # (position, bytes to delete, bytes to insert)

_PKCS8 = serialization.PrivateFormat.PKCS8
_PEM = serialization.Encoding.PEM
_PLAIN = serialization.NoEncryption()
_X25519_OID = bytes.fromhex("06032b656e")  # 1.3.101.110, DER
_XWING_OID = bytes.fromhex("060b2b0601040183e62d81c87a")  # 1.3.6.1.4.1.62253.25722, DER

# --- building blocks ----------------------------------------------------------------------


def der_tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    size = bytes([n]) if n < 0x80 else bytes([0x82]) + n.to_bytes(2, "big")
    return bytes([tag]) + size + content


def der_items(der: bytes) -> list[tuple[int, bytes]]:
    """The (tag, content) items in a run of DER (only ever fed the test's own keys)."""
    out = []
    while der:
        tag, first = der[0], der[1]
        start, n = 2, first
        if first >= 0x80:
            start = 2 + (first & 0x7F)
            n = int.from_bytes(der[2:start], "big")
        out.append((tag, der[start : start + n]))
        der = der[start + n :]
    return out


def pem_block(der: bytes, label: bytes = b"PRIVATE KEY") -> bytes:
    return (
        b"-----BEGIN " + label + b"-----\n" + base64.encodebytes(der) + b"-----END " + label
    ) + b"-----\n"


def pkcs8_pem(algorithm: bytes, private_key: bytes) -> bytes:
    """A PKCS#8 block from an AlgorithmIdentifier body and a privateKey body."""
    version = b"\x02\x01\x00"
    der = der_tlv(0x30, version + der_tlv(0x30, algorithm) + der_tlv(0x04, private_key))
    return pem_block(der)


def split_blocks(pem: bytes) -> list[bytes]:
    return re.findall(rb"-----BEGIN [^\n]*?-----\n.*?-----END [^\n]*?-----\n", pem, re.S)


def rewrap_der(block: bytes, mutate: Callable[[bytes], bytes]) -> bytes:
    """Mutate the DER inside one PEM block and wrap it again, so the ASN.1 and key
    decoders (not only the base64 layer) see the damage."""
    lines = block.strip().split(b"\n")
    der = base64.b64decode(b"".join(lines[1:-1]))
    return lines[0] + b"\n" + base64.encodebytes(mutate(der)) + lines[-1] + b"\n"


def apply_edits(data: bytes, edits: list[Edit]) -> bytes:
    for pos, drop, insert in edits:
        at = pos % (len(data) + 1)
        data = data[:at] + insert + data[at + drop :]
    return data


@functools.cache
def real_files() -> tuple[bytes, ...]:
    """Genuine key files: the hybrid (X-Wing) file, the two-block (X25519, ML-KEM-768)
    PKCS#8 file older versions wrote, and an ML-DSA-65 signing key."""
    legacy = x25519.X25519PrivateKey.generate().private_bytes(
        _PEM, _PKCS8, _PLAIN
    ) + mlkem.MLKEM768PrivateKey.generate().private_bytes(_PEM, _PKCS8, _PLAIN)
    return HybridPrivateKey.generate().to_pkcs8_pem(), legacy, SigningKey.generate().to_pkcs8_pem()


@functools.cache
def foreign_blocks() -> tuple[bytes, ...]:
    """One PEM block per key kind the parsers might be handed by mistake (built once)."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    pkcs8_keys = (
        x25519.X25519PrivateKey.generate(),
        x448.X448PrivateKey.generate(),
        ed25519.Ed25519PrivateKey.generate(),
        ed448.Ed448PrivateKey.generate(),
        rsa_key,
        ec_key,
        mlkem.MLKEM768PrivateKey.generate(),
        mlkem.MLKEM1024PrivateKey.generate(),
        mldsa.MLDSA44PrivateKey.generate(),
        mldsa.MLDSA65PrivateKey.generate(),
        mldsa.MLDSA87PrivateKey.generate(),
    )
    blocks = [k.private_bytes(_PEM, _PKCS8, _PLAIN) for k in pkcs8_keys]
    blocks += [
        HybridPrivateKey.generate().to_pkcs8_pem(),  # X-Wing: an OID `cryptography` lacks
        rsa_key.private_bytes(_PEM, serialization.PrivateFormat.TraditionalOpenSSL, _PLAIN),
        ec_key.private_bytes(_PEM, serialization.PrivateFormat.TraditionalOpenSSL, _PLAIN),
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            _PEM, serialization.PrivateFormat.OpenSSH, _PLAIN
        ),
        mlkem.MLKEM768PrivateKey.generate().private_bytes(
            _PEM, _PKCS8, serialization.BestAvailableEncryption(b"pw")
        ),
        ec_key.public_key().public_bytes(_PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
    ]
    return tuple(blocks)


@functools.cache
def pkcs8_parts() -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """The AlgorithmIdentifier and privateKey bodies of the PKCS#8 keys above, to recombine:
    one key kind's bytes under another kind's OID."""
    algorithms, bodies = [], []
    for block in foreign_blocks():
        if not block.startswith(b"-----BEGIN PRIVATE KEY-----"):
            continue
        der = base64.b64decode(b"".join(block.strip().split(b"\n")[1:-1]))
        ((_, seq),) = der_items(der)
        _, (_, algorithm), (_, body), *_ = der_items(seq)
        algorithms.append(algorithm)
        bodies.append(body)
    return tuple(algorithms), tuple(bodies)


def only_invalid_key(parse: Parser, data: bytes) -> None:
    # InvalidKey is the one error a caller is promised; anything else escapes and fails.
    with contextlib.suppress(InvalidKey):
        parse(data)


PARSERS: dict[str, Parser] = {
    "hybrid": HybridPrivateKey.from_pkcs8_pem,
    "signing": SigningKey.from_pkcs8_pem,
}
parser_st = st.sampled_from(sorted(PARSERS))
_position = st.integers(0, 1 << 16)
edits_st = st.lists(
    st.one_of(
        st.tuples(_position, st.integers(0, 8), st.binary(max_size=4)),
        # Same-length overwrites keep the DER lengths intact, so decoding goes deeper.
        st.tuples(_position, st.binary(min_size=1, max_size=2)).map(
            lambda t: (t[0], len(t[1]), t[1])
        ),
    ),
    min_size=1,
    max_size=4,
)
# Indexes, not values, so the key pool is only built when a test first runs.
_pool_index = st.integers(0, 63)


def _pick(pool: tuple[bytes, ...], i: int) -> bytes:
    return pool[i % len(pool)]


# --- the fuzz tests ----------------------------------------------------------------------


@FUZZ
@given(name=parser_st, data=st.binary(max_size=4096))
@example(name="hybrid", data=b"")
def test_random_bytes(name: str, data: bytes) -> None:
    only_invalid_key(PARSERS[name], data)


@FUZZ
@given(name=parser_st, which=st.integers(0, 2), edits=edits_st)
def test_mutated_pem_text(name: str, which: int, edits: list[Edit]) -> None:
    only_invalid_key(PARSERS[name], apply_edits(real_files()[which], edits))


@FUZZ
@given(name=parser_st, which=st.integers(0, 2), block=st.integers(0, 1), edits=edits_st)
# Found before the fix: the first byte of the X25519 (resp. ML-DSA-65) OID zeroed gives OID
# 0.0.101.110 (resp. 0.0.840.1.101.3.4.3.18) and UnsupportedAlgorithm escaped.
@example(name="hybrid", which=1, block=0, edits=[(9, 1, b"\x00")])
@example(name="signing", which=2, block=0, edits=[(9, 1, b"\x00")])
def test_mutated_der(name: str, which: int, block: int, edits: list[Edit]) -> None:
    blocks = split_blocks(real_files()[which])
    i = block % len(blocks)
    blocks[i] = rewrap_der(blocks[i], lambda der: apply_edits(der, edits))
    only_invalid_key(PARSERS[name], b"".join(blocks))


@FUZZ
@given(name=parser_st, picks=st.lists(_pool_index, min_size=1, max_size=3))
def test_foreign_key_blocks(name: str, picks: list[int]) -> None:
    only_invalid_key(PARSERS[name], b"".join(_pick(foreign_blocks(), i) for i in picks))


@FUZZ
@given(
    name=parser_st,
    algorithm=st.one_of(
        _pool_index.map(lambda i: _pick(pkcs8_parts()[0], i)),
        # Any OID at all, mostly ones `cryptography` has never heard of.
        st.binary(min_size=1, max_size=12).map(lambda oid: der_tlv(0x06, oid)),
    ),
    body=st.one_of(
        _pool_index.map(lambda i: _pick(pkcs8_parts()[1], i)),
        st.binary(max_size=80),
    ),
    twice=st.booleans(),
)
# Found before the fix: OID 0.0 raised UnsupportedAlgorithm, and the X25519 OID around a
# 56-byte (X448-sized) key InternalError ("key setup failed"), from both parsers.
@example(name="signing", algorithm=b"\x06\x01\x00", body=b"\x04\x20" + bytes(32), twice=False)
@example(name="hybrid", algorithm=b"\x06\x01\x00", body=b"\x04\x20" + bytes(32), twice=True)
@example(name="signing", algorithm=_X25519_OID, body=b"\x04\x38" + bytes(56), twice=False)
@example(name="hybrid", algorithm=_X25519_OID, body=b"\x04\x38" + bytes(56), twice=True)
@example(name="signing", algorithm=_XWING_OID, body=bytes(32), twice=False)
@example(name="hybrid", algorithm=_XWING_OID, body=bytes(31), twice=False)
def test_pkcs8_with_mismatched_algorithm(
    name: str, algorithm: bytes, body: bytes, twice: bool
) -> None:
    block = pkcs8_pem(algorithm, body)
    only_invalid_key(PARSERS[name], block * 2 if twice else block)


@FUZZ
@given(foreign=_pool_index, swap=st.booleans())
def test_hybrid_half_replaced_by_a_foreign_key(foreign: int, swap: bool) -> None:
    # A real two-block file with one half swapped for another key kind.
    x_block, m_block = split_blocks(real_files()[1])
    other = _pick(foreign_blocks(), foreign)
    only_invalid_key(HybridPrivateKey.from_pkcs8_pem, other + m_block if swap else x_block + other)
