"""Where secrets come from: the operating system's CSPRNG, always.

Ephemeral keys, KEM randomness, cookie and biscuit secrets, session indices and fragment
message ids are all drawn from a :class:`SecretSource`. The only implementation outside
the simulator is :data:`SYSTEM_SECRETS` (``os.urandom``), and it is every core's default.
The simulator has a seeded source of its own (``x0tta6bl4.sim.secrets``) so that a run
with a seed is reproducible; nothing outside ``sim`` can name it.

Non-secret randomness (timer jitter, the simulator's network) is a plain seeded
``random.Random`` and never feeds anything here.
"""

from __future__ import annotations

import os
from typing import Protocol

from x0tta6bl4.crypto.hybrid import RandomBytes


class SecretSource(Protocol):
    """A source of secret random bytes."""

    def token_bytes(self, n: int) -> bytes:
        """``n`` unpredictable bytes."""
        ...

    def key_randomness(self) -> RandomBytes | None:
        """What key generation and encapsulation draw from: ``None`` lets OpenSSL draw
        from its own CSPRNG; a callable is the simulator's seeded stream."""
        ...


class SystemSecrets:
    """``os.urandom``: the kernel's CSPRNG."""

    __slots__ = ()

    def token_bytes(self, n: int) -> bytes:
        return os.urandom(n)

    def key_randomness(self) -> RandomBytes | None:
        return None

    def __repr__(self) -> str:
        return "SystemSecrets()"


SYSTEM_SECRETS = SystemSecrets()


def random_u32(source: SecretSource) -> int:
    """A nonzero 32-bit integer (an index or a message id)."""
    while True:
        value = int.from_bytes(source.token_bytes(4), "little")
        if value:
            return value
