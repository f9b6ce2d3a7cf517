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
    FragmentNack,
    Init,
    InitPayload,
    NoSession,
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
no_sessions = st.builds(
    NoSession, receiver_index=u32, counter=st.integers(0, 2**64 - 1), tag=fixed(16)
)
nacks = st.builds(FragmentNack, message_id=u32, missing=st.integers(1, 2**C.MAX_FRAGMENTS - 1))
messages = st.one_of(
    inits,
    resps,
    cookies,
    datas,
    cert_requests,
    certs,
    fragments(),
    confirms,
    no_sessions,
    nacks,
)


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
        wire.decode_no_session,
        wire.decode_fragment_nack,
        wire.decode_biscuit_state,
        wire.decode_init_payload,
        wire.decode_timestamp,
        wire.decode_init_envelope,
        wire.mac_trailer,
    ):
        with contextlib.suppress(DecodeError):
            decoder(data)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(range(1, C.MSG_LAST + 1)), st.binary(max_size=2600))
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
        wire.decode(bytes((1, C.MSG_LAST + 1, 0, 0)) + bytes(40))
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


def test_no_session_and_nack_sizes_and_fields() -> None:
    assert C.NO_SESSION_SIZE == 32 == C.DATA_OVERHEAD  # never larger than what it answers
    assert C.FRAGMENT_NACK_SIZE == 16
    data = wire.encode(Data(0xA1B2C3D4, 99, bytes(range(40))))
    hint = NoSession.echo(data)
    assert hint == NoSession(0xA1B2C3D4, 99, data[-16:])
    raw = wire.encode(hint)
    assert len(raw) == C.NO_SESSION_SIZE and raw[4:16] == data[4:16] and raw[16:] == data[-16:]
    assert wire.decode(raw) == hint
    for bad_size in (raw[:-1], raw + b"\x00"):
        with pytest.raises(DecodeError):
            wire.decode(bad_size)
    with pytest.raises(BadLength):
        wire.encode(NoSession(2**32, 0, bytes(16)))
    with pytest.raises(BadLength):
        wire.encode(NoSession(1, 2**64, bytes(16)))
    with pytest.raises(BadLength):
        wire.encode(NoSession(1, 0, bytes(15)))
    nack = FragmentNack(7, 0b1010_0001)
    assert nack.indices() == [0, 5, 7]
    raw = wire.encode(nack)
    assert len(raw) == C.FRAGMENT_NACK_SIZE and wire.decode(raw) == nack
    with pytest.raises(DecodeError):  # a NACK that names nothing
        wire.decode(raw[:8] + bytes(8))
    for missing in (0, 2**C.MAX_FRAGMENTS, -1):
        with pytest.raises(BadLength):
            wire.encode(FragmentNack(7, missing))
    with pytest.raises(BadLength):
        wire.encode(FragmentNack(2**32, 1))
    with pytest.raises(DecodeError):
        wire.decode(raw + b"\x00")


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


# --- the parts a MAC covers, prefixes, trailers ------------------------------------------


@settings(max_examples=100, deadline=None)
@given(cert_requests)
def test_cert_request_scopes_are_the_encoded_prefix(msg: CertRequest) -> None:
    data = wire.encode(msg)
    mac2_scope = wire.cert_request_mac2_scope(msg.request_id)
    check_scope = wire.cert_request_check_scope(msg.request_id, msg.mac2)
    assert data.startswith(check_scope) and check_scope == mac2_scope + msg.mac2
    assert data[len(check_scope) : len(check_scope) + C.MAC_SIZE] == msg.check
    assert len(check_scope) + C.MAC_SIZE == wire.CERT_REQUEST_USED


@settings(max_examples=100, deadline=None)
@given(certs)
def test_cert_check_scope_is_everything_before_the_check(msg: Cert) -> None:
    data = wire.encode(msg)
    assert wire.cert_check_scope(msg.request_id, msg.cert_der) == data[: -C.MAC_SIZE]
    assert data[-C.MAC_SIZE :] == msg.check


@settings(max_examples=60, deadline=None)
@given(inits)
def test_init_body_prefix_and_trailer(msg: Init) -> None:
    data = wire.encode(msg)
    body = wire.encode_init_body(msg.sender_index, msg.ephemeral, msg.ct_static, msg.sealed)
    assert data == body + msg.mac1 + msg.mac2
    assert data[: wire.INIT_PREFIX_SIZE] == wire.init_prefix(msg.sender_index)
    assert wire.mac_trailer(data) == (msg.mac1, msg.mac2)


@settings(max_examples=60, deadline=None)
@given(resps)
def test_resp_body_prefix_and_trailer(msg: Resp) -> None:
    data = wire.encode(msg)
    body = wire.encode_resp_body(
        msg.sender_index,
        msg.receiver_index,
        msg.ct_ephemeral,
        msg.ct_initiator,
        msg.confirm,
        msg.biscuit,
    )
    assert data == body + msg.mac1 + msg.mac2
    prefix = wire.resp_prefix(msg.sender_index, msg.receiver_index)
    assert data.startswith(prefix) and len(prefix) == 12
    assert wire.mac_trailer(data) == (msg.mac1, msg.mac2)


@settings(max_examples=100, deadline=None)
@given(datas)
def test_data_index_and_prefix(msg: Data) -> None:
    data = wire.encode(msg)
    assert wire.DATA_INDEX.unpack_from(data)[0] == msg.receiver_index
    assert data.startswith(wire.data_prefix(msg.receiver_index))


@settings(max_examples=100, deadline=None)
@given(confirms)
def test_confirm_names_its_datas_receiver_index(msg: Confirm) -> None:
    decoded = wire.decode_confirm(wire.encode(msg))
    assert decoded.receiver_index == wire.decode_data(msg.data).receiver_index


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_mac_trailer_of_garbage_is_bounds_checked(data: bytes) -> None:
    if len(data) < C.HEADER_SIZE + 2 * C.MAC_SIZE:
        with pytest.raises(Truncated):
            wire.mac_trailer(data)
    else:
        mac1, mac2 = wire.mac_trailer(data)
        assert data.endswith(mac1 + mac2) and len(mac1) == len(mac2) == C.MAC_SIZE


_MIN_SIZE = {  # the variable-length messages: shorter than this never decodes
    Init: wire.INIT_MIN_SIZE,
    Confirm: wire.CONFIRM_MIN_SIZE,
    Data: C.DATA_OVERHEAD,
}


@settings(max_examples=200, deadline=None)
@given(st.one_of(cert_requests, certs, cookies, resps, inits, confirms, datas), st.data())
def test_truncated_messages_give_typed_errors(msg: wire.Message, draw: st.DataObject) -> None:
    """A fixed or length-prefixed message cut anywhere, a variable one cut below its
    minimum: a typed error, never a short field."""
    data = wire.encode(msg)
    below = _MIN_SIZE.get(type(msg), len(data))
    cut = draw.draw(st.integers(0, below - 1))
    with pytest.raises(DecodeError):
        wire.decode(data[:cut])


@settings(max_examples=200, deadline=None)
@given(
    st.integers(-(2**33), 2**33),
    st.binary(max_size=40),
    st.binary(max_size=C.MAX_CERT_SIZE + 2).filter(lambda b: len(b) != 1),
)
def test_scope_builders_refuse_out_of_range_fields(index: int, mac: bytes, der: bytes) -> None:
    """Out-of-range fields raise the codec's BadLength, never struct.error or a wrong
    length silently."""
    index_ok = 0 <= index <= 0xFFFFFFFF
    for build in (
        lambda: wire.cert_request_mac2_scope(index),
        lambda: wire.init_prefix(index),
        lambda: wire.data_prefix(index),
        lambda: wire.resp_prefix(index, 1),
        lambda: wire.resp_prefix(1, index),
    ):
        if index_ok:
            assert len(build()) in (8, 12)
        else:
            with pytest.raises(BadLength):
                build()
    if index_ok and len(mac) == C.MAC_SIZE:
        assert len(wire.cert_request_check_scope(index, mac)) == 8 + C.MAC_SIZE
    else:
        with pytest.raises(BadLength):
            wire.cert_request_check_scope(index, mac)
    if index_ok and 1 <= len(der) <= C.MAX_CERT_SIZE:
        assert len(wire.cert_check_scope(index, der)) == 10 + len(der)
    else:
        with pytest.raises(BadLength):
            wire.cert_check_scope(index, der)


def test_body_builders_refuse_wrong_field_sizes() -> None:
    eph, ct = bytes(C.EPHEMERAL_SIZE), bytes(C.KEM_CIPHERTEXT_SIZE)
    sealed = bytes(wire.INIT_PAYLOAD_MIN + C.AEAD_TAG_SIZE)
    assert len(wire.encode_init_body(1, eph, ct, sealed)) == wire.INIT_MIN_SIZE - 32
    for args in ((1, eph[1:], ct, sealed), (1, eph, ct + b"x", sealed), (1, eph, ct, sealed[1:])):
        with pytest.raises(BadLength):
            wire.encode_init_body(*args)
    tag, biscuit = bytes(C.AEAD_TAG_SIZE), bytes(C.BISCUIT_SIZE)
    assert len(wire.encode_resp_body(1, 2, ct, ct, tag, biscuit)) == wire.RESP_SIZE - 32
    for resp_args in (
        (1, 2, ct[1:], ct, tag, biscuit),
        (1, 2, ct, ct, tag + b"x", biscuit),
        (1, 2, ct, ct, tag, biscuit[1:]),
        (1, -1, ct, ct, tag, biscuit),
    ):
        with pytest.raises(BadLength):
            wire.encode_resp_body(*resp_args)


@settings(max_examples=60, deadline=None)
@given(inits)
def test_init_envelope_matches_the_full_decode(msg: Init) -> None:
    data = wire.encode(msg)
    assert wire.decode_init_envelope(data) == (msg.sender_index, msg.mac1, msg.mac2)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000).map(lambda b: b * (1 + 9000 // max(1, len(b)))))
def test_init_envelope_is_bounded_exactly_as_decode_init(data: bytes) -> None:
    """Whatever the full decoder refuses, the envelope refuses with the same error type."""
    for size in (len(data), wire.INIT_MIN_SIZE - 1, wire.INIT_MIN_SIZE, wire.INIT_MAX_SIZE + 1):
        chunk = data[:size]
        try:
            full = wire.decode_init(chunk)
        except DecodeError as exc:
            with pytest.raises(type(exc)):
                wire.decode_init_envelope(chunk)
        else:
            assert wire.decode_init_envelope(chunk) == (full.sender_index, full.mac1, full.mac2)
