"""The endpoint's timer keys.

Every ``SetTimer`` a ``SecureEndpoint`` emits is keyed by a :class:`ChannelTimer` carrying
the endpoint's ``timer_namespace``, so two endpoints in one node never collide and a
wrapping layer routes a firing by the key's type and namespace (``sansio.py``). A later
``SetTimer`` with an equal key replaces the earlier one: one timer per kind and peer
(per message for reassemblies and their NACKs; one for all partial payloads).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from enum import StrEnum


class ChannelTimerKind(StrEnum):
    HANDSHAKE = "hs"  # our initiation's next retry, or giving up
    CONFIRM = "confirm"  # we answered the peer's INIT: its CONFIRM should have come
    EXPIRE = "expire"  # the peer's oldest session reaches REJECT_AFTER_TIME
    REASSEMBLY = "reasm"  # a partial message from ``addr`` reaches REASSEMBLY_TIMEOUT
    NACK = "nack"  # a partial message from ``addr``: ask for what is missing?
    ACK = "ack"  # our new session's CONFIRM is unanswered: resend it
    # The partial payloads (DATA_FRAGMENTs) of every session: the oldest reaches
    # DATA_REASSEMBLY_TIMEOUT. One timer for the endpoint: its ``addr`` is None.
    DATA_REASSEMBLY = "dreasm"


@dataclass(frozen=True, slots=True)
class ChannelTimer:
    namespace: str
    kind: ChannelTimerKind
    addr: Hashable
    message_id: int = 0  # which reassembly (REASSEMBLY and NACK only)
