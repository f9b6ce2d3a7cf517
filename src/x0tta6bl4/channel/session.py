"""Transport data keys: one session = two ChaCha20-Poly1305 keys (one per direction),
a 64-bit send counter and a sliding replay window.

A DATA datagram is ``header 16 = version|type|reserved|receiver_index u32|counter u64``
followed by the AEAD ciphertext of the payload, with the header as associated data and
``0000 || counter (LE)`` as the nonce. ``seal`` and ``open`` are the hot path and stay
lean; the session's age (rekey / reject times) is the endpoint's business, because only
the endpoint knows ``now``.
"""

from __future__ import annotations

from x0tta6bl4.channel.constants import (
    DATA_OVERHEAD,
    DEFAULT_MAX_DATAGRAM,
    MAX_DATA_PAYLOAD,
    REJECT_AFTER_MESSAGES,
    REPLAY_WINDOW,
    SENT_TAG_WINDOW,
)
from x0tta6bl4.channel.replay import ReplayWindow
from x0tta6bl4.channel.wire import data_prefix
from x0tta6bl4.crypto.aead import Aead
from x0tta6bl4.errors import DecodeError, MessageTooLarge, ReplayError, SessionExpired, Truncated

_ZERO4 = bytes(4)


class Session:
    """Keys for one handshake's lifetime. Never shows a key in a repr."""

    __slots__ = (
        "_max_payload",
        "_recv",
        "_rx_prefix",
        "_send",
        "_tx_prefix",
        "_window",
        "biscuit",
        "confirmed",
        "created",
        "initiator",
        "local_index",
        "remote_index",
        "send_count",
        "sent_tags",
    )

    def __init__(
        self,
        *,
        local_index: int,
        remote_index: int,
        send_key: bytes,
        recv_key: bytes,
        initiator: bool,
        created: float,
        max_datagram: int = DEFAULT_MAX_DATAGRAM,
        window: int = REPLAY_WINDOW,
    ) -> None:
        self.local_index = local_index
        self.remote_index = remote_index
        self.initiator = initiator
        self.created = created
        # the initiator's keys are confirmed by RESP; the responder's by the first packet
        self.confirmed = initiator
        # An initiator's session carries the responder's biscuit (and its packets travel
        # in CONFIRM) until the first authenticated packet from the responder arrives.
        self.biscuit: bytes | None = None
        self._send = Aead(send_key)
        self._recv = Aead(recv_key)
        self.send_count = 0  # packets sealed so far (read-only outside seal)
        self._window = ReplayWindow(window)
        self._tx_prefix = data_prefix(remote_index)
        self._rx_prefix = data_prefix(local_index)
        self._max_payload = max_datagram - DATA_OVERHEAD
        # The AEAD tags of the last SENT_TAG_WINDOW packets sent, packet n at n + 1 (mod the
        # window): a peer that lost this session echoes one in NO_SESSION. Filled in by the
        # endpoint's send path (``send_count`` indexes it), so seal stays as lean as the raw
        # AEAD.
        self.sent_tags: list[bytes] = [b""] * SENT_TAG_WINDOW

    def __repr__(self) -> str:
        role = "initiator" if self.initiator else "responder"
        return (
            f"Session({role}, local={self.local_index:#010x}, remote={self.remote_index:#010x}, "
            f"sent={self.send_count}, keys hidden)"
        )

    @property
    def max_payload(self) -> int:
        return self._max_payload

    @property
    def wiped(self) -> bool:
        return self._send.wiped

    def seal(self, payload: bytes) -> bytes:
        """One DATA datagram carrying ``payload``. Raises :class:`MessageTooLarge` if it
        would exceed ``max_datagram`` and :class:`SessionExpired` when the counter is spent."""
        if len(payload) > self._max_payload:
            raise MessageTooLarge(len(payload), self._max_payload)
        counter = self.send_count
        if counter >= REJECT_AFTER_MESSAGES:
            raise SessionExpired("send counter exhausted")
        self.send_count = counter + 1
        ctr = counter.to_bytes(8, "little")
        hdr = self._tx_prefix + ctr
        return hdr + self._send.seal(_ZERO4 + ctr, payload, hdr)

    def seal_detached(self, payload: bytes) -> tuple[int, bytes]:
        """``payload`` (up to ``MAX_DATA_PAYLOAD``) as ONE DATA message whose header stays
        apart, to be sent in DATA_FRAGMENTs: its counter and its ciphertext (tag
        included). The header, ``data_prefix(remote_index) | counter``, is the AEAD's
        associated data as in :meth:`seal`, so the receiver opens the reassembled whole
        like any DATA. Raises :class:`MessageTooLarge` and :class:`SessionExpired`."""
        if len(payload) > MAX_DATA_PAYLOAD:
            raise MessageTooLarge(len(payload), MAX_DATA_PAYLOAD)
        counter = self.send_count
        if counter >= REJECT_AFTER_MESSAGES:
            raise SessionExpired("send counter exhausted")
        self.send_count = counter + 1
        ctr = counter.to_bytes(8, "little")
        return counter, self._send.seal(_ZERO4 + ctr, payload, self._tx_prefix + ctr)

    def fresh(self, counter: int) -> bool:
        """Whether a packet with ``counter`` would pass the replay window now (nothing
        changes: a fragment of it is checked before anything is kept)."""
        return self._window.check(counter)

    def open(self, datagram: bytes) -> bytes:
        """The payload of a DATA datagram addressed to this session. Raises
        :class:`ReplayError` (seen or too old), :class:`x0tta6bl4.errors.DecryptError`
        (forged or altered), or a ``DecodeError`` (not a DATA datagram for us)."""
        if len(datagram) < DATA_OVERHEAD:
            raise Truncated(f"DATA: need {DATA_OVERHEAD} bytes, got {len(datagram)}")
        hdr = datagram[:16]
        if hdr[:8] != self._rx_prefix:
            raise DecodeError("not a DATA datagram for this session")
        ctr = hdr[8:]
        counter = int.from_bytes(ctr, "little")
        window = self._window
        if not window.check(counter):
            raise ReplayError(f"counter {counter} replayed or outside the window")
        plaintext = self._recv.open(_ZERO4 + ctr, datagram[16:], hdr)
        if not window.update(counter):  # pragma: no cover - check() just said it was fresh
            raise ReplayError(f"counter {counter} replayed")
        return plaintext

    @property
    def received_top(self) -> int:
        """The highest counter received on this session so far (-1 before the first)."""
        return self._window.top

    def sent_tag(self, counter: int) -> bytes | None:
        """The tag of our packet ``counter`` if it is among the last ``SENT_TAG_WINDOW``."""
        sent = self.send_count
        if not sent - SENT_TAG_WINDOW <= counter < sent:
            return None
        return self.sent_tags[(counter + 1) % SENT_TAG_WINDOW]

    def wipe(self) -> None:
        """Drop both keys; every later seal or open fails."""
        self._send.wipe()
        self._recv.wipe()

    def _set_send_counter(self, value: int) -> None:
        """For tests of counter exhaustion only."""
        self.send_count = value
