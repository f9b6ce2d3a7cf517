"""Datagrams and bytes on the wire per handshake, from the codec's own sizes (the table
in ``docs/protocol.md`` is generated from this and checked by a test)."""

from __future__ import annotations

from x0tta6bl4.channel import constants as C
from x0tta6bl4.channel.fragment import split
from x0tta6bl4.channel.wire import (
    CERT_FIXED,
    CONFIRM_MIN_SIZE,
    COOKIE_MSG_SIZE,
    INIT_CACHED_SIZE,
    INIT_MIN_SIZE,
    RESP_SIZE,
)


def handshake_wire_cost(
    cert_size: int, max_datagram: int = C.DEFAULT_MAX_DATAGRAM
) -> dict[str, list[tuple[str, str, int, int]]]:
    """``{"first_contact": [...], "cached": [...]}``, each entry ``(message, direction,
    datagrams, bytes)`` for certificates of ``cert_size`` bytes (fragment headers included)."""

    def cost(name: str, direction: str, size: int) -> tuple[str, str, int, int]:
        parts = split(bytes(size), 0, max_datagram)
        return name, direction, len(parts), sum(len(p) for p in parts)

    init_full = INIT_MIN_SIZE - 1 + cert_size  # INIT_MIN_SIZE has a one-byte certificate
    cert = CERT_FIXED + cert_size
    confirm = CONFIRM_MIN_SIZE  # carrying an empty keepalive
    return {
        "first_contact": [
            cost("CERT_REQUEST", "I->R", C.CERT_REQUEST_SIZE),
            cost("COOKIE", "R->I", COOKIE_MSG_SIZE),
            cost("CERT_REQUEST + mac2", "I->R", C.CERT_REQUEST_SIZE),
            cost("CERT", "R->I", cert),
            cost("INIT (certificate)", "I->R", init_full),
            cost("RESP", "R->I", RESP_SIZE),
            cost("CONFIRM (keepalive)", "I->R", confirm),
            cost("DATA keepalive", "R->I", C.DATA_OVERHEAD),
        ],
        "cached": [
            cost("INIT (fingerprint)", "I->R", INIT_CACHED_SIZE),
            cost("RESP", "R->I", RESP_SIZE),
            cost("CONFIRM (keepalive)", "I->R", confirm),
            cost("DATA keepalive", "R->I", C.DATA_OVERHEAD),
        ],
    }
