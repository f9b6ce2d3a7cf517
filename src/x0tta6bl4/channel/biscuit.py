"""The responder's biscuit: its half of a handshake, sealed into RESP instead of kept.

An INIT proves nothing about its sender (anyone can encapsulate to our static key and
claim a public certificate), so a responder that kept per-INIT state could be made to
hold, evict or replace it by strangers. Instead it seals what it needs to finish the
handshake (indices, the INIT timestamp, the initiator's certificate fingerprint, both
transport keys, and when it answered) under a key only it knows, puts the result in RESP,
and forgets everything. The initiator hands the biscuit back with its first packets
(CONFIRM); the responder opens it, checks the enclosed DATA against the enclosed keys,
and only then creates a session. This is Rosenpass's biscuit, for the same reason.

The biscuit key comes from the secret source, rotates every ``BISCUIT_KEY_LIFETIME`` (the
previous key still opens), and a biscuit older than ``BISCUIT_MAX_AGE`` is refused.
Replays of a CONFIRM are refused by the INIT timestamp, which the endpoint records when a
biscuit is accepted.
"""

from __future__ import annotations

from x0tta6bl4.channel.constants import BISCUIT_KEY_LIFETIME, BISCUIT_MAX_AGE
from x0tta6bl4.channel.cookie import RotatingKeys
from x0tta6bl4.channel.wire import BiscuitState, decode_biscuit_state, encode_biscuit_state
from x0tta6bl4.crypto.aead import NONCE_SIZE, Aead
from x0tta6bl4.crypto.entropy import SecretSource
from x0tta6bl4.errors import CryptoError, HandshakeError

_AD = b"x0tta6bl4 biscuit v1"


class BiscuitKeeper:
    __slots__ = ("_keys", "_secrets")

    def __init__(self, secrets: SecretSource) -> None:
        self._secrets = secrets
        self._keys = RotatingKeys(lambda: Aead(secrets.token_bytes(32)), BISCUIT_KEY_LIFETIME)

    def __repr__(self) -> str:
        return "BiscuitKeeper(keys hidden)"

    def seal(self, now: float, state: BiscuitState) -> bytes:
        nonce = self._secrets.token_bytes(NONCE_SIZE)
        return nonce + self._keys.keys(now)[0].seal(nonce, encode_biscuit_state(state), _AD)

    def open(self, now: float, biscuit: bytes) -> BiscuitState:
        """The state sealed in ``biscuit``. Raises ``CryptoError`` if we did not make it
        (or made it under a key since retired) and :class:`HandshakeError` if too old."""
        nonce, sealed = biscuit[:NONCE_SIZE], biscuit[NONCE_SIZE:]
        for key in self._keys.keys(now):
            try:
                plain = key.open(nonce, sealed, _AD)
            except CryptoError:
                continue
            state = decode_biscuit_state(plain)
            if not 0.0 <= now - state.created <= BISCUIT_MAX_AGE:
                raise HandshakeError("biscuit too old")
            return state
        raise CryptoError("biscuit does not open")
