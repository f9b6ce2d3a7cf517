"""Transport sessions: seal/open, replay, tampering, limits, wiping."""

from __future__ import annotations

import os

import pytest

from x0tta6bl4.channel import constants as C
from x0tta6bl4.channel.session import Session
from x0tta6bl4.errors import (
    DecodeError,
    DecryptError,
    InvalidKey,
    MessageTooLarge,
    ReplayError,
    SessionExpired,
    Truncated,
)


def pair(max_datagram: int = 1280) -> tuple[Session, Session]:
    k1, k2 = os.urandom(32), os.urandom(32)
    a = Session(
        local_index=11,
        remote_index=22,
        send_key=k1,
        recv_key=k2,
        initiator=True,
        created=0.0,
        max_datagram=max_datagram,
    )
    b = Session(
        local_index=22,
        remote_index=11,
        send_key=k2,
        recv_key=k1,
        initiator=False,
        created=0.0,
        max_datagram=max_datagram,
    )
    return a, b


def test_round_trip_both_ways_and_layout() -> None:
    a, b = pair()
    for i in range(5):
        d = a.seal(b"ping %d" % i)
        assert d[:4] == bytes((1, 4, 0, 0))
        assert int.from_bytes(d[4:8], "little") == 22
        assert int.from_bytes(d[8:16], "little") == i
        assert len(d) == C.DATA_OVERHEAD + len(b"ping %d" % i)
        assert b.open(d) == b"ping %d" % i
    assert a.open(b.seal(b"")) == b""  # keepalive
    assert a.confirmed and not b.confirmed
    assert "keys hidden" in repr(a) and a.send_count == 5


def test_replay_and_reorder() -> None:
    a, b = pair()
    ds = [a.seal(bytes([i])) for i in range(50)]
    for d in reversed(ds):
        b.open(d)
    for d in ds:
        with pytest.raises(ReplayError):
            b.open(d)


def test_every_bit_flip_is_rejected() -> None:
    a, b = pair()
    d = a.seal(b"some payload")
    for bit in range(len(d) * 8):
        bad = bytearray(d)
        bad[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises((DecryptError, ReplayError, DecodeError)):
            b.open(bytes(bad))
    assert b.open(d) == b"some payload"


def test_wrong_session_and_short_input() -> None:
    a, b = pair()
    with pytest.raises(DecodeError):
        a.open(a.seal(b"x"))  # addressed to index 22, not 11
    with pytest.raises(Truncated):
        b.open(b"\x01\x04\x00\x00")


def test_message_too_large_never_truncates() -> None:
    a, _ = pair(1280)
    assert a.max_payload == 1280 - 32
    assert len(a.seal(bytes(a.max_payload))) == 1280
    with pytest.raises(MessageTooLarge) as info:
        a.seal(bytes(a.max_payload + 1))
    assert info.value.limit == a.max_payload


def test_counter_exhaustion() -> None:
    a, b = pair()
    a._set_send_counter(C.REJECT_AFTER_MESSAGES - 1)
    d = a.seal(b"last")
    with pytest.raises(SessionExpired):
        a.seal(b"one too many")
    assert b.open(d) == b"last"  # the last counter allowed still opens


def test_wipe() -> None:
    a, b = pair()
    d = a.seal(b"x")
    a.wipe()
    b.wipe()
    assert a.wiped
    with pytest.raises(InvalidKey):
        a.seal(b"x")
    with pytest.raises(InvalidKey):
        b.open(d)
