"""The crypto package: hybrid KEM, ML-DSA-65, AEAD, KDF, key files, self-test, atomic writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, mlkem, x25519

import x0tta6bl4.crypto
from x0tta6bl4.atomicfile import atomic_write
from x0tta6bl4.crypto import aead, hybrid, kdf, keys, sign
from x0tta6bl4.crypto.aead import Aead, nonce_from_counter
from x0tta6bl4.crypto.hybrid import HybridPrivateKey, HybridPublicKey
from x0tta6bl4.crypto.sign import SigningKey, VerifyKey
from x0tta6bl4.errors import BadSignature, CryptoUnavailable, DecryptError, InvalidKey


def seeded(seed: int) -> hybrid.RandomBytes:
    """A deterministic byte source (for reproducible simulations)."""
    counter = [0]

    def rng(n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += kdf.sha256(seed.to_bytes(8, "big"), counter[0].to_bytes(8, "big"))
            counter[0] += 1
        return out[:n]

    return rng


# --- hybrid KEM -------------------------------------------------------------------------------


def test_hybrid_round_trip() -> None:
    priv = HybridPrivateKey.generate()
    pub = priv.public_key()
    ct, ss = pub.encapsulate()
    assert len(ct) == hybrid.CIPHERTEXT_SIZE == 1120
    assert len(ss) == hybrid.SHARED_SECRET_SIZE
    assert priv.decapsulate(ct) == ss
    ct2, ss2 = pub.encapsulate()
    assert ss2 != ss and ct2 != ct


def test_hybrid_public_key_bytes() -> None:
    pub = HybridPrivateKey.generate().public_key()
    raw = pub.to_bytes()
    assert len(raw) == hybrid.PUBLIC_KEY_SIZE == 1216
    again = HybridPublicKey.from_bytes(raw)
    assert again == pub and hash(again) == hash(pub)
    assert pub != raw
    assert repr(pub).startswith("HybridPublicKey(x25519=")


@pytest.mark.parametrize("part", ["x25519", "mlkem"])
def test_tampered_ciphertext_changes_the_secret(part: str) -> None:
    priv = HybridPrivateKey.generate()
    ct, ss = priv.public_key().encapsulate()
    buf = bytearray(ct)
    buf[-5 if part == "x25519" else 500] ^= 0x01  # X-Wing order: ct_M || ct_X
    # ML-KEM's implicit rejection and the combiner both turn any change into another secret.
    assert priv.decapsulate(bytes(buf)) != ss


def test_wrong_lengths_are_invalid_key() -> None:
    priv = HybridPrivateKey.generate()
    ct, _ = priv.public_key().encapsulate()
    for bad in (ct[:-1], ct + b"\x00", b""):
        with pytest.raises(InvalidKey, match="ciphertext"):
            priv.decapsulate(bad)
    raw = priv.public_key().to_bytes()
    for bad in (raw[:-1], raw + b"\x00", b""):
        with pytest.raises(InvalidKey, match="public key"):
            HybridPublicKey.from_bytes(bad)


def test_invalid_mlkem_public_key() -> None:
    # An ML-KEM public key whose coefficients are out of range (all 0xff) is rejected.
    raw = b"\xff" * hybrid.MLKEM768_PUBLIC_SIZE + b"\x09" * 32
    with pytest.raises(InvalidKey, match="invalid hybrid public key"):
        HybridPublicKey.from_bytes(raw)


def test_low_order_x25519_points_are_refused() -> None:
    priv = HybridPrivateKey.generate()
    good = priv.public_key().to_bytes()
    zero_x = HybridPublicKey.from_bytes(good[:-32] + b"\x00" * 32)  # pk_M || pk_X
    with pytest.raises(InvalidKey, match="X25519"):
        zero_x.encapsulate()
    ct, _ = priv.public_key().encapsulate()
    with pytest.raises(InvalidKey, match="X25519"):
        priv.decapsulate(ct[:-32] + b"\x00" * 32)  # ct_M || ct_X


def test_seeded_generation_is_deterministic() -> None:
    a = HybridPrivateKey.generate(seeded(1))
    b = HybridPrivateKey.generate(seeded(1))
    c = HybridPrivateKey.generate(seeded(2))
    assert a.public_key() == b.public_key() != c.public_key()
    sa, sb = SigningKey.generate(seeded(3)), SigningKey.generate(seeded(3))
    assert sa.public_key() == sb.public_key() != SigningKey.generate(seeded(4)).public_key()
    # The seeded X25519 half of an encapsulation (ct_X, last) is reproducible too.
    ct1, _ = a.public_key().encapsulate(seeded(5))
    ct2, _ = a.public_key().encapsulate(seeded(5))
    assert ct1[-32:] == ct2[-32:]
    # The seed is the X-Wing decapsulation key: the rng is asked for exactly 32 bytes.
    asked: list[int] = []
    inner = seeded(1)

    def counting(n: int) -> bytes:
        asked.append(n)
        return inner(n)

    assert HybridPrivateKey.generate(counting).public_key() == a.public_key()
    assert asked == [hybrid.SEED_SIZE]
    assert len(hybrid.default_rng(16)) == 16


def test_hybrid_pkcs8_round_trip_and_mode(tmp_path: Path) -> None:
    priv = HybridPrivateKey.generate()
    pem = priv.to_pkcs8_pem()
    assert pem.count(b"BEGIN PRIVATE KEY") == 1  # the draft's PKCS#8: id-XWing and the seed
    again = HybridPrivateKey.from_pkcs8_pem(pem)
    assert again.public_key() == priv.public_key()
    path = tmp_path / "static.key"
    keys.save_private_key(path, priv)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = keys.load_hybrid_key(path)
    ct, ss = priv.public_key().encapsulate()
    assert loaded.decapsulate(ct) == ss


Legacy = tuple[bytes, bytes, x25519.X25519PrivateKey, mlkem.MLKEM768PrivateKey]


def legacy_two_block_pem() -> Legacy:
    """The file format before X-Wing: X25519 then ML-KEM-768, two PKCS#8 blocks."""
    x, m = x25519.X25519PrivateKey.generate(), mlkem.MLKEM768PrivateKey.generate()
    args = (serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8)
    enc = serialization.NoEncryption()
    return x.private_bytes(*args, enc), m.private_bytes(*args, enc), x, m


def test_hybrid_pkcs8_legacy_two_block_file_still_loads(tmp_path: Path) -> None:
    x_pem, m_pem, x, m = legacy_two_block_pem()
    path = tmp_path / "old-static.key"
    atomic_write(path, x_pem + m_pem, mode=0o600)
    loaded = keys.load_hybrid_key(path)
    pub = loaded.public_key()
    assert pub.to_bytes() == m.public_key().public_bytes_raw() + x.public_key().public_bytes_raw()
    ct, ss = pub.encapsulate()
    assert loaded.decapsulate(ct) == ss
    # No X-Wing seed to write, so it is saved back in the form it came in.
    assert loaded.to_pkcs8_pem() == x_pem + m_pem


def test_hybrid_pkcs8_errors() -> None:
    pem = HybridPrivateKey.generate().to_pkcs8_pem()
    x_pem, m_pem, _, _ = legacy_two_block_pem()
    with pytest.raises(InvalidKey, match="found 3"):
        HybridPrivateKey.from_pkcs8_pem(pem + x_pem + m_pem)
    with pytest.raises(InvalidKey, match="found 0"):
        HybridPrivateKey.from_pkcs8_pem(b"")
    with pytest.raises(InvalidKey, match="X25519 then an ML-KEM-768"):
        HybridPrivateKey.from_pkcs8_pem(m_pem + x_pem)  # wrong order
    end = b"-----END PRIVATE KEY-----\n"
    garbage = b"-----BEGIN PRIVATE KEY-----\nAAAA\n" + end
    with pytest.raises(InvalidKey, match="unreadable"):
        HybridPrivateKey.from_pkcs8_pem(garbage + garbage)
    with pytest.raises(InvalidKey, match="unreadable"):
        HybridPrivateKey.from_pkcs8_pem(b"-----BEGIN PRIVATE KEY-----\n!!!!\n" + end)
    with pytest.raises(InvalidKey, match="no PKCS#8 PEM header"):
        HybridPrivateKey.from_pkcs8_pem(b"junk\n" + end)
    # One block, but not an X-Wing key: a lone X25519 key, or the seed cut short.
    with pytest.raises(InvalidKey, match="X-Wing key"):
        HybridPrivateKey.from_pkcs8_pem(x_pem)
    lines = pem.split(b"\n")
    with pytest.raises(InvalidKey, match=r"unreadable|X-Wing key"):
        HybridPrivateKey.from_pkcs8_pem(b"\n".join([lines[0], lines[1][:-4], *lines[-2:]]))


# --- ML-DSA-65 ----------------------------------------------------------------------------------


def test_sign_verify() -> None:
    sk = SigningKey.generate()
    vk = sk.public_key()
    sig = sk.sign(b"msg")
    assert len(sig) == sign.SIGNATURE_SIZE
    vk.verify(sig, b"msg")
    with pytest.raises(BadSignature):
        vk.verify(sig, b"other")
    with pytest.raises(BadSignature):
        vk.verify(sig[:-1] + bytes([sig[-1] ^ 1]), b"msg")
    # The context string is bound into the signature.
    ctx_sig = sk.sign(b"msg", context=b"handshake")
    vk.verify(ctx_sig, b"msg", context=b"handshake")
    with pytest.raises(BadSignature):
        vk.verify(ctx_sig, b"msg")


def test_verify_key_bytes() -> None:
    vk = SigningKey.generate().public_key()
    raw = vk.to_bytes()
    assert len(raw) == sign.PUBLIC_KEY_SIZE
    again = VerifyKey.from_bytes(raw)
    assert again == vk and hash(again) == hash(vk) and vk != raw
    assert again.cryptography_key.public_bytes_raw() == raw
    with pytest.raises(InvalidKey, match="1952"):
        VerifyKey.from_bytes(raw[:-1])
    assert repr(vk).startswith("VerifyKey(ML-DSA-65 ")


def test_signing_key_pkcs8(tmp_path: Path) -> None:
    sk = SigningKey.generate()
    again = SigningKey.from_pkcs8_pem(sk.to_pkcs8_pem())
    assert again.public_key() == sk.public_key()
    path = tmp_path / "node.key"
    keys.save_private_key(path, sk)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keys.load_signing_key(path).public_key() == sk.public_key()
    os.chmod(path, 0o640)
    with pytest.raises(InvalidKey, match="readable by others"):
        keys.load_signing_key(path)
    with pytest.raises(InvalidKey, match="unreadable"):
        SigningKey.from_pkcs8_pem(b"junk")
    ed = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(InvalidKey, match="Ed25519PrivateKey"):
        SigningKey.from_pkcs8_pem(ed)


def test_repr_hides_secrets() -> None:
    sk = SigningKey.generate()
    hk = HybridPrivateKey.generate()
    secret_lines = [
        line
        for pem in (sk.to_pkcs8_pem(), hk.to_pkcs8_pem())
        for line in pem.decode().splitlines()
        if "PRIVATE" not in line
    ]
    for obj in (sk, hk, Aead(b"k" * 32), kdf.ChainingKey(b"label")):
        text = repr(obj) + str(obj)
        assert "hidden" in text
        for line in secret_lines:
            assert line not in text
        assert "6b6b6b6b" not in text and "kkkk" not in text


# --- AEAD -------------------------------------------------------------------------------------


def test_aead_round_trip_and_tamper() -> None:
    box = Aead(os.urandom(32))
    nonce = nonce_from_counter(7)
    ct = box.seal(nonce, b"payload", b"ad")
    assert len(ct) == len(b"payload") + aead.TAG_SIZE
    assert box.open(nonce, ct, b"ad") == b"payload"
    for bad_ct, bad_ad, bad_nonce in (
        (ct[:-1] + bytes([ct[-1] ^ 1]), b"ad", nonce),
        (ct, b"AD", nonce),
        (ct, b"ad", nonce_from_counter(8)),
        (ct, None, nonce),
    ):
        with pytest.raises(DecryptError):
            box.open(bad_nonce, bad_ct, bad_ad)


def test_aead_key_length_and_wipe() -> None:
    with pytest.raises(InvalidKey, match="32 bytes"):
        Aead(b"short")
    box = Aead(b"\x01" * 32)
    ct = box.seal(nonce_from_counter(0), b"x", None)
    assert not box.wiped
    box.wipe()
    assert box.wiped
    with pytest.raises(InvalidKey, match="wiped"):
        box.seal(nonce_from_counter(1), b"x", None)
    with pytest.raises(InvalidKey, match="wiped"):
        box.open(nonce_from_counter(0), ct, None)


def test_nonce_layout() -> None:
    assert nonce_from_counter(1) == b"\x00" * 4 + b"\x01" + b"\x00" * 7
    assert len(nonce_from_counter(2**64 - 1)) == aead.NONCE_SIZE


# --- KDF --------------------------------------------------------------------------------------


def test_kdf_helpers() -> None:
    assert kdf.sha256(b"a", b"b") == kdf.sha256(b"ab")
    assert kdf.sha256().hex().startswith("e3b0c442")  # SHA-256 of nothing
    assert kdf.hmac_sha256(b"k", b"a", b"b") == kdf.hmac_sha256(b"k", b"ab")
    assert kdf.mac16(b"k", b"x") == kdf.hmac_sha256(b"k", b"x")[:16]
    okm = kdf.hkdf(b"ikm", salt=b"salt", info=b"info", length=42)
    assert len(okm) == 42
    assert kdf.hkdf(b"ikm", salt=b"salt", info=b"other") != okm[:32]
    assert len(kdf.hkdf_expand(b"p" * 32, info=b"i", length=64)) == 64


def test_transcript_and_chaining_key() -> None:
    t = kdf.Transcript(b"proto")
    start = t.digest
    fork = t.copy()
    t.mix(b"m1")
    assert t.digest != start and fork.digest == start
    fork.mix(b"m1")
    assert fork.digest == t.digest

    a, b = kdf.ChainingKey(b"ck"), kdf.ChainingKey(b"ck")
    assert a.mix(b"s1") == b.mix(b"s1")
    k1, k2 = a.split(b"split")
    assert len(k1) == len(k2) == 32 and k1 != k2
    assert b.split(b"split") == (k1, k2)
    b.mix(b"s2")
    assert b.split(b"split") != (k1, k2)


# --- self-test --------------------------------------------------------------------------------


def test_self_test_passes_here() -> None:
    x0tta6bl4.crypto._self_test()


def test_self_test_raises_crypto_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: object) -> None:
        raise RuntimeError("no ML-KEM here")

    monkeypatch.setattr(mlkem.MLKEM768PrivateKey, "generate", broken)
    with pytest.raises(CryptoUnavailable, match="no ML-KEM here"):
        x0tta6bl4.crypto._self_test()


def test_self_test_catches_wrong_decapsulation(monkeypatch: pytest.MonkeyPatch) -> None:
    real_generate = mlkem.MLKEM768PrivateKey.generate

    class Miscomputing:
        """A real key whose decapsulation comes out wrong, as a broken backend would."""

        def __init__(self) -> None:
            self._key = real_generate()

        def public_key(self) -> mlkem.MLKEM768PublicKey:
            return self._key.public_key()

        def decapsulate(self, ct: bytes) -> bytes:
            return bytes(b ^ 1 for b in self._key.decapsulate(ct))

    monkeypatch.setattr(mlkem.MLKEM768PrivateKey, "generate", Miscomputing)
    with pytest.raises(CryptoUnavailable, match="does not match"):
        x0tta6bl4.crypto._self_test()


# --- atomic writes ----------------------------------------------------------------------------


def test_atomic_write_replaces_and_sets_mode(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "f"
    atomic_write(p, b"one")
    atomic_write(p, b"two", mode=0o600)
    assert p.read_bytes() == b"two"
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert [q.name for q in p.parent.iterdir()] == ["f"]


def test_atomic_write_failure_keeps_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = tmp_path / "state"
    atomic_write(p, b"old")

    def crash(_fd: int) -> None:
        raise OSError("disk gone mid-write")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="mid-write"):
        atomic_write(p, b"new" * 1000)
    monkeypatch.undo()
    assert p.read_bytes() == b"old"
    assert [q.name for q in tmp_path.iterdir()] == ["state"]  # no temporary left behind


def test_x25519_helper_types() -> None:
    # The hybrid key really holds an X25519 key of the expected size, last (pk_M || pk_X).
    raw = HybridPrivateKey.generate().public_key().to_bytes()[-hybrid.X25519_SIZE :]
    assert x25519.X25519PublicKey.from_public_bytes(raw).public_bytes_raw() == raw
