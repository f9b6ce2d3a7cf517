"""x0tta6bl4: a post-quantum, zero-trust, self-healing mesh network."""

__version__ = "0.1.0"
