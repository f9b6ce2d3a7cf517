"""The KEM-authenticated handshake (after PQ-WireGuard and Post-Quantum Noise pqIK).

Two messages, three hybrid (X25519 + ML-KEM-768) encapsulations, no signature::

    I -> R  INIT     sender_i | E_i | ct_s = Encaps(S_r) | AEAD(k1, identity_i || ts) | mac1 | mac2
    R -> I  RESP     sender_r | receiver_i | ct_e = Encaps(E_i) | ct_is = Encaps(S_i)
                     | confirm = AEAD(k3, "") | biscuit | mac1 | mac2
    I -> R  CONFIRM  biscuit | DATA (until R answers on the session)

Key schedule (``ck`` a Noise-style chaining key, ``h`` the transcript hash, both seeded
with ``PROTOCOL_LABEL``)::

    h.mix(S_r); h.mix(fp_r); h.mix(INIT header || sender_i); h.mix(E_i); h.mix(ct_s)
    k1 = ck.mix(ss_s)                       -- only R can decapsulate ct_s
    sealed = AEAD(k1, identity_i || ts, ad=h); h.mix(sealed)
    h.mix(S_i); h.mix(fp_i); h.mix(RESP header || sender_r || receiver_i)
    h.mix(ct_e);  ck.mix(ss_e)              -- forward secrecy: E_i is thrown away
    h.mix(ct_is); k3 = ck.mix(ss_is)        -- only I can decapsulate ct_is
    confirm = AEAD(k3, "", ad=h); h.mix(confirm)
    (k_i2r, k_r2i) = ck.split(h)

``fp_r`` and ``fp_i`` are the SHA-256 fingerprints of both certificates, so the keys are
bound to the identities each side believes in, not only to the static keys (no unknown
key share). RESP's mac1 is keyed by ``E_i``, not by the initiator's static key, so it does
not identify the initiator to an observer. ``confirm`` authenticates R to I (it needed
ss_s); I's first transport packet (inside CONFIRM) authenticates I to R and confirms the
keys. Secrets come from a :class:`~x0tta6bl4.crypto.entropy.SecretSource`.

The classes below are the function-level API
that :class:`x0tta6bl4.channel.endpoint.SecureEndpoint` composes and that benchmarks
drive directly. They check neither mac1 nor mac2 (the caller does, before anything
expensive) and never mutate their state on a failed ``consume_*``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from x0tta6bl4.channel.constants import BISCUIT_SIZE, DEFAULT_MAX_DATAGRAM, PROTOCOL_LABEL
from x0tta6bl4.channel.cookie import add_macs, mac1_key
from x0tta6bl4.channel.session import Session
from x0tta6bl4.channel.wire import (
    INIT_PREFIX_SIZE,
    InitPayload,
    decode_init,
    decode_init_payload,
    decode_resp,
    encode_init_body,
    encode_init_payload,
    encode_resp_body,
    init_prefix,
    resp_prefix,
)
from x0tta6bl4.crypto.aead import NONCE_SIZE, Aead
from x0tta6bl4.crypto.entropy import SYSTEM_SECRETS, SecretSource
from x0tta6bl4.crypto.hybrid import HybridPrivateKey, HybridPublicKey
from x0tta6bl4.crypto.kdf import ChainingKey, Transcript
from x0tta6bl4.errors import DecryptError, HandshakeError

_ZERO_NONCE = bytes(NONCE_SIZE)
_SPLIT_INFO = b"x0tta6bl4 transport keys"


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """The outcome of a handshake, from one side's point of view."""

    local_index: int
    remote_index: int
    send_key: bytes
    recv_key: bytes
    initiator: bool

    def __repr__(self) -> str:
        return (
            f"SessionKeys(local={self.local_index:#010x}, remote={self.remote_index:#010x}, "
            f"initiator={self.initiator}, keys hidden)"
        )

    def session(self, created: float, max_datagram: int = DEFAULT_MAX_DATAGRAM) -> Session:
        return Session(
            local_index=self.local_index,
            remote_index=self.remote_index,
            send_key=self.send_key,
            recv_key=self.recv_key,
            initiator=self.initiator,
            created=created,
            max_datagram=max_datagram,
        )


def _split(ck: ChainingKey, h: Transcript) -> tuple[bytes, bytes]:
    k_i2r, k_r2i = ck.split(_SPLIT_INFO + h.digest)
    return k_i2r, k_r2i


class Initiator:
    """One handshake attempt by the initiator: ``create_init`` then ``consume_resp``."""

    __slots__ = (
        "_eph",
        "_fingerprint",
        "_h",
        "_responder_fingerprint",
        "_responder_static",
        "_secrets",
        "_ss_s",
        "_static",
        "resp_mac1_key",
        "sender_index",
    )

    def __init__(
        self,
        *,
        static_private: HybridPrivateKey,
        fingerprint: bytes,
        responder_static: HybridPublicKey,
        responder_fingerprint: bytes,
        sender_index: int,
        secrets: SecretSource = SYSTEM_SECRETS,
    ) -> None:
        self._static = static_private
        self._fingerprint = fingerprint
        self._responder_static = responder_static
        self._responder_fingerprint = responder_fingerprint
        self.sender_index = sender_index
        self._secrets = secrets
        self._eph: HybridPrivateKey | None = None
        self._ss_s: bytes | None = None
        self._h: Transcript | None = None
        self.resp_mac1_key = b""  # RESP's mac1 key, known once INIT is made

    def __repr__(self) -> str:
        return f"Initiator(index={self.sender_index:#010x}, state hidden)"

    def create_init(
        self,
        *,
        timestamp: int,
        fingerprint: bytes | None = None,
        cert_der: bytes | None = None,
        cookie: bytes | None = None,
    ) -> bytes:
        """The INIT message (identity is our certificate's ``fingerprint`` when the
        responder should have it cached, else its ``cert_der``), with mac1 and mac2."""
        payload = encode_init_payload(
            InitPayload(timestamp=timestamp, fingerprint=fingerprint, cert_der=cert_der)
        )
        rng = self._secrets.key_randomness()
        responder = self._responder_static.to_bytes()
        eph = HybridPrivateKey.generate(rng)
        eph_pub = eph.public_key().to_bytes()
        ct_s, ss_s = self._responder_static.encapsulate(rng)
        prefix = init_prefix(self.sender_index)
        h = Transcript(PROTOCOL_LABEL)
        h.mix(responder)
        h.mix(self._responder_fingerprint)
        h.mix(prefix)
        h.mix(eph_pub)
        h.mix(ct_s)
        k1 = ChainingKey(PROTOCOL_LABEL).mix(ss_s)
        sealed = Aead(k1).seal(_ZERO_NONCE, payload, h.digest)
        h.mix(sealed)
        self._eph, self._ss_s, self._h = eph, ss_s, h
        self.resp_mac1_key = mac1_key(eph_pub)
        body = encode_init_body(self.sender_index, eph_pub, ct_s, sealed)
        return add_macs(body, mac1_key(responder), cookie)

    def consume_resp(self, message: bytes) -> SessionKeys:
        """Check RESP and derive the transport keys. Raises ``DecodeError``,
        :class:`HandshakeError` or a ``CryptoError``; on failure the attempt stays usable."""
        eph, ss_s, h0 = self._eph, self._ss_s, self._h
        if eph is None or ss_s is None or h0 is None:
            raise HandshakeError("no INIT outstanding (or this attempt already finished)")
        resp = decode_resp(message)
        if resp.receiver_index != self.sender_index:
            raise HandshakeError("RESP is for another handshake")
        h = h0.copy()
        h.mix(self._static.public_key().to_bytes())
        h.mix(self._fingerprint)
        h.mix(resp_prefix(resp.sender_index, resp.receiver_index))
        ck = ChainingKey(PROTOCOL_LABEL)
        ck.mix(ss_s)
        ss_e = eph.decapsulate(resp.ct_ephemeral)
        h.mix(resp.ct_ephemeral)
        ck.mix(ss_e)
        ss_is = self._static.decapsulate(resp.ct_initiator)
        h.mix(resp.ct_initiator)
        k3 = ck.mix(ss_is)
        Aead(k3).open(_ZERO_NONCE, resp.confirm, h.digest)
        h.mix(resp.confirm)
        k_i2r, k_r2i = _split(ck, h)
        self.abandon()
        return SessionKeys(
            local_index=self.sender_index,
            remote_index=resp.sender_index,
            send_key=k_i2r,
            recv_key=k_r2i,
            initiator=True,
        )

    def abandon(self) -> None:
        """Drop the ephemeral key and every intermediate secret."""
        self._eph = None
        self._ss_s = None
        self._h = None

    @property
    def pending(self) -> bool:
        return self._eph is not None


class Responder:
    """The responder's long-lived context (its static key); ``consume_init`` makes one
    :class:`ResponderHandshake` per INIT."""

    __slots__ = ("_fingerprint", "_static", "_static_pub", "mac1_key")

    def __init__(self, static_private: HybridPrivateKey, fingerprint: bytes) -> None:
        self._static = static_private
        self._fingerprint = fingerprint
        self._static_pub = static_private.public_key().to_bytes()
        self.mac1_key = mac1_key(self._static_pub)

    def __repr__(self) -> str:
        return "Responder(static key hidden)"

    @property
    def fingerprint(self) -> bytes:
        return self._fingerprint

    def set_fingerprint(self, fingerprint: bytes) -> None:
        """Our certificate was renewed (same static key): INITs are sealed to the new
        certificate's fingerprint from now on."""
        self._fingerprint = fingerprint

    def consume_init(self, message: bytes, *, also: bytes | None = None) -> ResponderHandshake:
        """Decapsulate and open INIT. ``also`` is another fingerprint of ours the INIT may
        be bound to (our previous certificate after a renewal, same static key): tried if
        the current one fails, after the one decapsulation. Raises ``DecodeError`` or
        ``CryptoError``."""
        init = decode_init(message)
        prefix = message[:INIT_PREFIX_SIZE]  # as received: a changed header changes h
        ss_s = self._static.decapsulate(init.ct_static)
        aead = Aead(ChainingKey(PROTOCOL_LABEL).mix(ss_s))
        fingerprints = (self._fingerprint,) if also is None else (self._fingerprint, also)
        for i, fp in enumerate(fingerprints):
            h = Transcript(PROTOCOL_LABEL)
            h.mix(self._static_pub)
            h.mix(fp)
            h.mix(prefix)
            h.mix(init.ephemeral)
            h.mix(init.ct_static)
            try:
                plaintext = aead.open(_ZERO_NONCE, init.sealed, h.digest)
            except DecryptError:
                if i + 1 == len(fingerprints):
                    raise
                continue
            break
        h.mix(init.sealed)
        payload = decode_init_payload(plaintext)
        ephemeral = HybridPublicKey.from_bytes(init.ephemeral)
        return ResponderHandshake(init.sender_index, payload, init.ephemeral, ephemeral, ss_s, h)


class ResponderHandshake:
    """An INIT that decrypted: who claims to be calling (``payload``) and the state to
    answer it. The claim is *not* authenticated until the initiator's first packet."""

    __slots__ = ("_ephemeral", "_h", "_resp_mac1_key", "_ss_s", "initiator_index", "payload")

    def __init__(
        self,
        initiator_index: int,
        payload: InitPayload,
        ephemeral_raw: bytes,
        ephemeral: HybridPublicKey,
        ss_s: bytes,
        h: Transcript,
    ) -> None:
        self.initiator_index = initiator_index
        self.payload = payload
        self._resp_mac1_key = mac1_key(ephemeral_raw)
        self._ephemeral: HybridPublicKey | None = ephemeral
        self._ss_s: bytes | None = ss_s
        self._h = h

    def __repr__(self) -> str:
        return f"ResponderHandshake(initiator_index={self.initiator_index:#010x}, state hidden)"

    def create_resp(
        self,
        *,
        initiator_static: HybridPublicKey,
        initiator_fingerprint: bytes,
        sender_index: int,
        secrets: SecretSource = SYSTEM_SECRETS,
        biscuit: Callable[[SessionKeys], bytes] | None = None,
    ) -> tuple[bytes, SessionKeys]:
        """RESP for the initiator whose certificate carries ``initiator_static``, and the
        responder's transport keys (not confirmed until the initiator's first packet).
        ``biscuit`` seals those keys for the responder itself (zeros without it)."""
        ephemeral, ss_s = self._ephemeral, self._ss_s
        if ephemeral is None or ss_s is None:
            raise HandshakeError("this INIT was already answered")
        key_rng = secrets.key_randomness()
        initiator_pub = initiator_static.to_bytes()
        prefix = resp_prefix(sender_index, self.initiator_index)
        h = self._h
        h.mix(initiator_pub)
        h.mix(initiator_fingerprint)
        h.mix(prefix)
        ck = ChainingKey(PROTOCOL_LABEL)
        ck.mix(ss_s)
        ct_e, ss_e = ephemeral.encapsulate(key_rng)
        h.mix(ct_e)
        ck.mix(ss_e)
        ct_is, ss_is = initiator_static.encapsulate(key_rng)
        h.mix(ct_is)
        k3 = ck.mix(ss_is)
        confirm = Aead(k3).seal(_ZERO_NONCE, b"", h.digest)
        h.mix(confirm)
        k_i2r, k_r2i = _split(ck, h)
        self._ephemeral = None
        self._ss_s = None
        keys = SessionKeys(
            local_index=sender_index,
            remote_index=self.initiator_index,
            send_key=k_r2i,
            recv_key=k_i2r,
            initiator=False,
        )
        sealed_state = biscuit(keys) if biscuit is not None else bytes(BISCUIT_SIZE)
        body = encode_resp_body(
            sender_index, self.initiator_index, ct_e, ct_is, confirm, sealed_state
        )
        message = add_macs(body, self._resp_mac1_key, None)
        return message, keys
