"""The codec: round trips for every message type, typed errors for everything else."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from x0tta6bl4.channel import constants as C
from x0tta6bl4.channel import wire
from x0tta6bl4.channel.wire import (
    BiscuitState,
    Cert,
    CertRequest,
    Confirm,
    CookieReply,
    Data,
    Fragment,
    Init,
    InitPayload,
    Resp,
)
from x0tta6bl4.errors import BadLength, BadVersion, DecodeError, Truncated, UnknownType

u32 = st.integers(0, 2**32 - 1)


def fixed(n: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=n, max_size=n)


inits = st.builds(
    Init,
    sender_index=u32,
    ephemeral=fixed(C.EPHEMERAL_SIZE),
    ct_static=fixed(C.KEM_CIPHERTEXT_SIZE),
    sealed=st.binary(min_size=wire.INIT_PAYLOAD_MIN + 16, max_size=wire.INIT_PAYLOAD_MIN + 400),
    mac1=fixed(16),
    mac2=fixed(16),
)
resps = st.builds(
    Resp,
    sender_index=u32,
    receiver_index=u32,
    ct_ephemeral=fixed(C.KEM_CIPHERTEXT_SIZE),
    ct_initiator=fixed(C.KEM_CIPHERTEXT_SIZE),
    confirm=fixed(16),
    biscuit=fixed(C.BISCUIT_SIZE),
    mac1=fixed(16),
    mac2=fixed(16),
)
cookies = st.builds(CookieReply, receiver_index=u32, nonce=fixed(12), sealed_cookie=fixed(32))
datas = st.builds(
    Data,
    receiver_index=u32,
    counter=st.integers(0, 2**64 - 1),
    ciphertext=st.binary(min_size=16, max_size=300),
)
cert_requests = st.builds(CertRequest, request_id=u32, mac2=fixed(16), check=fixed(16))
certs = st.builds(
    Cert, request_id=u32, cert_der=st.binary(min_size=1, max_size=600), check=fixed(16)
)


@st.composite
def fragments(draw: st.DrawFn) -> Fragment:
    count = draw(st.integers(2, C.MAX_FRAGMENTS))
    total = draw(st.integers(1, 2000))
    chunk = draw(st.binary(min_size=1, max_size=total))
    return Fragment(draw(u32), draw(st.integers(0, count - 1)), count, total, chunk)


confirms = st.builds(
    Confirm,
    biscuit=fixed(C.BISCUIT_SIZE),
    data=st.builds(lambda d: wire.encode(d), datas),
)
messages = st.one_of(inits, resps, cookies, datas, cert_requests, certs, fragments(), confirms)


@settings(max_examples=100, deadline=None)
@given(
    st.builds(
        BiscuitState,
        local_index=u32,
        remote_index=u32,
        created=st.floats(allow_nan=False, allow_infinity=False),
        timestamp=st.integers(0, 2**64 * 10**9 - 1),
        fingerprint=fixed(32),
        send_key=fixed(32),
        recv_key=fixed(32),
    )
)
def test_biscuit_state_round_trip(state: BiscuitState) -> None:
    raw = wire.encode_biscuit_state(state)
    assert len(raw) == C.BISCUIT_PLAIN_SIZE
    assert wire.decode_biscuit_state(raw) == state
    assert "keys hidden" in repr(state) and state.send_key.hex() not in repr(state)


@settings(max_examples=150, deadline=None)
@given(messages)
def test_round_trip_every_message_type(msg: wire.Message) -> None:
    data = wire.encode(msg)
    assert wire.decode(data) == msg
    assert wire.encode(wire.decode(data)) == data


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_arbitrary_bytes_give_only_typed_errors(data: bytes) -> None:
    for decoder in (
        wire.decode,
        wire.decode_init,
        wire.decode_resp,
        wire.decode_cookie,
        wire.decode_data,
        wire.decode_cert_request,
        wire.decode_cert,
        wire.decode_fragment,
        wire.decode_confirm,
        wire.decode_biscuit_state,
        wire.decode_init_payload,
        wire.decode_timestamp,
    ):
        with contextlib.suppress(DecodeError):
            decoder(data)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(range(1, 9)), st.binary(max_size=2600))
def test_valid_header_arbitrary_body_gives_only_typed_errors(msg_type: int, body: bytes) -> None:
    with contextlib.suppress(DecodeError):
        wire.decode(wire.header(msg_type) + body)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(0, 2**64 * 10**9 - 1),
    st.one_of(
        st.tuples(fixed(32), st.none()),
        st.tuples(st.none(), st.binary(min_size=1, max_size=500)),
    ),
)
def test_init_payload_round_trip(ts: int, ident: tuple[bytes | None, bytes | None]) -> None:
    p = InitPayload(timestamp=ts, fingerprint=ident[0], cert_der=ident[1])
    assert wire.decode_init_payload(wire.encode_init_payload(p)) == p


def test_header_errors() -> None:
    with pytest.raises(Truncated):
        wire.decode(b"\x01\x04\x00")
    with pytest.raises(BadVersion):
        wire.decode(b"\x02\x04\x00\x00" + bytes(40))
    with pytest.raises(UnknownType):
        wire.decode(b"\x01\x09\x00\x00" + bytes(40))
    with pytest.raises(UnknownType):
        wire.decode(b"\x01\x00\x00\x00" + bytes(40))
    with pytest.raises(DecodeError):
        wire.decode(b"\x01\x04\x00\x01" + bytes(40))


def test_fixed_sizes() -> None:
    assert wire.INIT_CACHED_SIZE == 2437
    assert wire.RESP_SIZE == 2300 + C.BISCUIT_SIZE == 2452
    assert wire.CONFIRM_MIN_SIZE == 4 + C.BISCUIT_SIZE + 32 == 188
    assert wire.COOKIE_MSG_SIZE == 52
    assert C.DATA_OVERHEAD == 32
    with pytest.raises(BadLength):
        wire.decode_resp(wire.header(C.MSG_RESP) + bytes(wire.RESP_SIZE))
    with pytest.raises(Truncated):
        wire.decode_cookie(wire.header(C.MSG_COOKIE) + bytes(10))


def test_cert_request_padding_must_be_zero() -> None:
    data = bytearray(wire.encode(CertRequest(7, bytes(16), bytes(16))))
    assert len(data) == C.CERT_REQUEST_SIZE
    data[-1] = 1
    with pytest.raises(DecodeError):
        wire.decode(bytes(data))


def test_cert_length_field_checked() -> None:
    data = wire.encode(Cert(1, b"x" * 10, bytes(16)))
    with pytest.raises(BadLength):
        wire.decode(data + b"\x00")
    with pytest.raises(BadLength):
        wire.decode(data[:8] + b"\x00\x00" + data[10:])
    with pytest.raises(BadLength):
        wire.encode(Cert(1, b"", bytes(16)))


def test_fragment_fields_checked() -> None:
    ok = wire.encode(Fragment(1, 0, 2, 10, b"abc"))
    for bad in (
        Fragment(1, 2, 2, 10, b"abc"),  # index >= count
        Fragment(1, 0, 1, 10, b"abc"),  # a lone fragment
        Fragment(1, 0, C.MAX_FRAGMENTS + 1, 10, b"abc"),
        Fragment(1, 0, 2, C.MAX_MESSAGE_SIZE + 1, b"abc"),
        Fragment(1, 0, 2, 2, b"abc"),  # chunk larger than the message
    ):
        with pytest.raises(BadLength):
            wire.encode(bad)
    raw = bytearray(ok)
    raw[9] = 3  # count 3 ... fine; index 0
    assert wire.decode_fragment(bytes(raw)).count == 3
    raw[8] = 5  # index 5 of 3
    with pytest.raises(BadLength):
        wire.decode_fragment(bytes(raw))


def test_encoder_field_checks() -> None:
    with pytest.raises(BadLength):
        wire.encode(Data(2**32, 0, bytes(16)))
    with pytest.raises(BadLength):
        wire.encode(Data(1, 2**64, bytes(16)))
    with pytest.raises(BadLength):
        wire.encode(Data(1, 0, bytes(15)))
    with pytest.raises(BadLength):
        wire.encode(CookieReply(1, bytes(11), bytes(32)))
    with pytest.raises(BadLength):
        wire.encode(
            Init(
                -1,
                bytes(C.EPHEMERAL_SIZE),
                bytes(C.KEM_CIPHERTEXT_SIZE),
                bytes(80),
                bytes(16),
                bytes(16),
            )
        )
    with pytest.raises(BadLength):
        wire.encode(
            Init(
                1,
                bytes(C.EPHEMERAL_SIZE),
                bytes(C.KEM_CIPHERTEXT_SIZE),
                bytes(5),
                bytes(16),
                bytes(16),
            )
        )


def test_init_payload_errors() -> None:
    with pytest.raises(DecodeError):
        wire.encode_init_payload(InitPayload(timestamp=1))
    with pytest.raises(DecodeError):
        wire.encode_init_payload(InitPayload(timestamp=1, fingerprint=bytes(32), cert_der=b"x"))
    with pytest.raises(BadLength):
        wire.encode_init_payload(InitPayload(timestamp=-1, fingerprint=bytes(32)))
    with pytest.raises(BadLength):
        wire.encode_init_payload(InitPayload(timestamp=1, cert_der=bytes(C.MAX_CERT_SIZE + 1)))
    good = wire.encode_init_payload(InitPayload(timestamp=5, fingerprint=bytes(32)))
    with pytest.raises(DecodeError):
        wire.decode_init_payload(b"\x07" + good[1:])
    with pytest.raises(DecodeError):  # nanoseconds >= 10**9
        wire.decode_init_payload(good[:-4] + b"\xff\xff\xff\xff")
    cert = wire.encode_init_payload(InitPayload(timestamp=5, cert_der=b"c" * 40))
    with pytest.raises(BadLength):
        wire.decode_init_payload(cert[:1] + b"\x00\x00" + cert[3:])
    with pytest.raises(BadLength):
        wire.decode_init_payload(cert + b"\x00")
