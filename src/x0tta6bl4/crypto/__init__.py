"""Thin wrappers over ``cryptography``: hybrid KEM, signatures, AEAD, KDF.

Importing this package checks that ML-KEM-768 and ML-DSA-65 actually work in the
linked OpenSSL. There is no fallback: without them the program refuses to start.
"""

from __future__ import annotations

from x0tta6bl4.errors import CryptoUnavailable


def _self_test() -> None:
    try:
        from cryptography.hazmat.primitives.asymmetric import mldsa, mlkem

        kem = mlkem.MLKEM768PrivateKey.generate()
        secret, ciphertext = kem.public_key().encapsulate()
        if kem.decapsulate(ciphertext) != secret:
            raise CryptoUnavailable("ML-KEM-768 decapsulation does not match encapsulation")
        signer = mldsa.MLDSA65PrivateKey.generate()
        signer.public_key().verify(signer.sign(b"x0tta6bl4 self-test"), b"x0tta6bl4 self-test")
    except CryptoUnavailable:
        raise
    except Exception as exc:  # any failure here means the primitives are unusable
        raise CryptoUnavailable(
            "x0tta6bl4 needs ML-KEM-768 and ML-DSA-65 from the 'cryptography' package "
            f"(version 50 with OpenSSL 4), and they do not work here: {exc}"
        ) from exc


_self_test()
