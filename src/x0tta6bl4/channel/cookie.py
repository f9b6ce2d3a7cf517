"""mac1 / mac2, cookies and the under-load detector (WireGuard's DoS defence, 5.4.7).

* ``mac1 = mac16(sha256("mac1" || receiver static pub), message up to mac1)``: anybody
  can compute it who knows the receiver's public key, so it proves nothing about the
  sender, but it lets the receiver drop junk before any KEM work.
* ``mac2 = mac16(cookie, message up to mac2)`` or 16 zero bytes. A cookie is
  ``mac16(secret, repr(source address))`` with a secret that rotates every
  ``COOKIE_SECRET_LIFETIME``: holding one proves the sender receives at that address.
* A responder under load answers an INIT without a valid mac2 with a COOKIE reply and
  does no decapsulation. The cookie travels sealed under
  ``sha256("cookie" || responder static pub)`` with the INIT's mac1 as associated data,
  so only someone who sent that INIT (and knows the responder's key) can use it.
"""

from __future__ import annotations

import hmac as _hmac
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from x0tta6bl4.channel.constants import (
    COOKIE_NONCE_SIZE,
    COOKIE_SECRET_LIFETIME,
    COOKIE_VALIDITY,
    MAC_SIZE,
    MAX_COOKIE_JAR,
    MAX_RATE_LIMITED_SOURCES,
    PER_SOURCE_INIT_BURST,
    PER_SOURCE_INIT_RATE,
)
from x0tta6bl4.channel.wire import CookieReply, encode
from x0tta6bl4.crypto.aead import Aead
from x0tta6bl4.crypto.entropy import SecretSource
from x0tta6bl4.crypto.kdf import mac16, sha256
from x0tta6bl4.ratelimit import TokenBucket
from x0tta6bl4.sansio import Addr

ZERO_MAC = bytes(MAC_SIZE)
K = TypeVar("K")


def mac1_key(static_public: bytes) -> bytes:
    return sha256(b"mac1", static_public)


def cookie_key(static_public: bytes) -> bytes:
    return sha256(b"cookie", static_public)


def certreq_check_key(trust_domain: str) -> bytes:
    return sha256(b"certreq", trust_domain.encode())


def certreq_cookie_key(trust_domain: str) -> bytes:
    return sha256(b"certreq-cookie", trust_domain.encode())


def cert_check_key(trust_domain: str) -> bytes:
    return sha256(b"cert", trust_domain.encode())


def add_macs(body: bytes, mac1key: bytes, cookie: bytes | None) -> bytes:
    """``body || mac1 || mac2`` (mac2 is zero without a cookie)."""
    mac1 = mac16(mac1key, body)
    mac2 = mac16(cookie, body + mac1) if cookie is not None else ZERO_MAC
    return body + mac1 + mac2


def check_mac1(message: bytes, mac1key: bytes) -> bool:
    """``message`` ends with ``mac1 || mac2``."""
    end = len(message) - 2 * MAC_SIZE
    return end >= 0 and _hmac.compare_digest(mac16(mac1key, message[:end]), message[end:-MAC_SIZE])


def addr_bytes(addr: Addr) -> bytes:
    return repr(addr).encode()


class RotatingKeys(Generic[K]):
    """A key made by ``make`` that is replaced every ``lifetime`` seconds; the previous
    one is still offered for one more lifetime (cookie secrets, biscuit keys)."""

    __slots__ = ("_current", "_lifetime", "_make", "_previous", "_since")

    def __init__(self, make: Callable[[], K], lifetime: float) -> None:
        self._make = make
        self._lifetime = lifetime
        self._current: K | None = None
        self._previous: K | None = None
        self._since = 0.0

    def keys(self, now: float) -> tuple[K, ...]:
        """The current key first, then the previous one if it is still accepted."""
        if self._current is None or now - self._since >= 2 * self._lifetime:
            self._previous, self._current, self._since = None, self._make(), now
        elif now - self._since >= self._lifetime:
            self._previous, self._current, self._since = self._current, self._make(), now
        if self._previous is None:
            return (self._current,)
        return self._current, self._previous


class CookieGenerator:
    """The responder side: makes and checks cookies with a rotating secret."""

    __slots__ = ("_keys", "_secrets")

    def __init__(self, secrets: SecretSource) -> None:
        self._secrets = secrets
        self._keys = RotatingKeys(lambda: secrets.token_bytes(32), COOKIE_SECRET_LIFETIME)

    def cookie(self, now: float, addr: Addr) -> bytes:
        return mac16(self._keys.keys(now)[0], addr_bytes(addr))

    def check_mac2(self, now: float, addr: Addr, message: bytes) -> bool:
        """Whether ``message`` (ending with mac2) carries a mac2 made with a cookie we
        issued to ``addr`` under the current or the previous secret."""
        return self.mac2_valid(now, addr, message[:-MAC_SIZE], message[-MAC_SIZE:])

    def mac2_valid(self, now: float, addr: Addr, scope: bytes, mac2: bytes) -> bool:
        """Whether ``mac2`` over ``scope`` (the bytes it covers) was made with a cookie we
        issued to ``addr`` under the current or the previous secret."""
        for secret in self._keys.keys(now):
            cookie = mac16(secret, addr_bytes(addr))
            if _hmac.compare_digest(mac16(cookie, scope), mac2):
                return True
        return False

    def reply(self, now: float, addr: Addr, receiver_index: int, seal: Aead, ad: bytes) -> bytes:
        """A COOKIE message for ``addr``, sealed with ``seal`` under associated data ``ad``."""
        nonce = self._secrets.token_bytes(COOKIE_NONCE_SIZE)
        sealed = seal.seal(nonce, self.cookie(now, addr), ad)
        return encode(CookieReply(receiver_index, nonce, sealed))


class CookieJar:
    """The initiator side: cookies received, per responder address, for a while."""

    __slots__ = ("_cookies", "_max")

    def __init__(self, max_entries: int = MAX_COOKIE_JAR) -> None:
        self._cookies: OrderedDict[Addr, tuple[bytes, float]] = OrderedDict()
        self._max = max_entries

    def __len__(self) -> int:
        return len(self._cookies)

    def put(self, now: float, addr: Addr, cookie: bytes) -> None:
        self._cookies[addr] = (cookie, now)
        self._cookies.move_to_end(addr)
        while len(self._cookies) > self._max:
            self._cookies.popitem(last=False)

    def forget(self, addr: Addr) -> None:
        self._cookies.pop(addr, None)

    def get(self, now: float, addr: Addr) -> bytes | None:
        entry = self._cookies.get(addr)
        if entry is None:
            return None
        cookie, received = entry
        if now - received >= COOKIE_VALIDITY:
            del self._cookies[addr]
            return None
        return cookie


class LoadMeter:
    """A token bucket of handshakes per second: "under load" once it is empty.

    ``forced`` overrides the measurement (True or False) for tests and operators.
    """

    __slots__ = ("_bucket", "forced")

    def __init__(self, rate: float) -> None:
        self._bucket = TokenBucket(rate, max(rate, 1.0))  # one second's worth
        self.forced: bool | None = None

    def hit(self, now: float) -> bool:
        """Count one handshake attempt at ``now``; True if we are under load."""
        under = not self._bucket.take(now)
        return under if self.forced is None else self.forced


class RateLimiter:
    """Per-source INIT budget for a responder under load (WireGuard's ratelimiter): a
    valid cookie proves an address, it does not buy unlimited decapsulations.

    The table is bounded; when it is full, sources whose bucket has refilled are
    forgotten first (they lose nothing), then the least recently seen.
    """

    __slots__ = ("_buckets", "_burst", "_max", "_rate")

    def __init__(
        self,
        rate: float = PER_SOURCE_INIT_RATE,
        burst: float = PER_SOURCE_INIT_BURST,
        max_sources: int = MAX_RATE_LIMITED_SOURCES,
    ) -> None:
        self._rate = rate
        self._burst = burst
        self._max = max_sources
        self._buckets: OrderedDict[Addr, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, now: float, addr: Addr) -> bool:
        bucket = self._buckets.get(addr)
        if bucket is None:
            if len(self._buckets) >= self._max:
                self._make_room(now)
            bucket = self._buckets[addr] = TokenBucket(self._rate, self._burst)
        else:
            self._buckets.move_to_end(addr)
        return bucket.take(now)

    def _make_room(self, now: float) -> None:
        idle = [a for a, b in self._buckets.items() if b.full(now)]
        for a in idle[: max(1, len(self._buckets) // 4)]:
            del self._buckets[a]
        if len(self._buckets) >= self._max:
            self._buckets.popitem(last=False)
