"""The simulator's seeded secret source: reproducible runs, **never** real secrets.

A seeded simulation must produce the same trace twice, so the cores it drives draw their
"secrets" (ephemeral keys, indices, cookie secrets, message ids) from this stream
instead of the operating system. It lives in ``sim`` because nothing else may import it:
the real runtime builds its cores with the default ``SYSTEM_SECRETS``.
"""

from __future__ import annotations

import random

from x0tta6bl4.crypto.hybrid import RandomBytes


class SeededSecretsForSimulation:
    """Implements ``x0tta6bl4.crypto.entropy.SecretSource`` from a seeded PRNG."""

    __slots__ = ("_rng",)

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def token_bytes(self, n: int) -> bytes:
        return self._rng.randbytes(n)

    def key_randomness(self) -> RandomBytes | None:
        return self._rng.randbytes

    def __repr__(self) -> str:
        return "SeededSecretsForSimulation(<seeded: simulation only>)"
