"""The secure channel's wire codec: one frozen dataclass per message, ``encode`` and
``decode``.

Every message starts ``version u8 (=1) | type u8 | reserved u16 (=0)``. Integers are
little-endian (as in WireGuard, so a DATA counter is also the tail of its nonce), except
the handshake timestamp, which is big-endian inside its ciphertext. Decoders check every
length against its fixed size or bound *before* slicing and raise only the typed errors
of :mod:`x0tta6bl4.errors` (:class:`Truncated`, :class:`BadLength`, :class:`BadVersion`,
:class:`UnknownType`, :class:`DecodeError`). ``docs/protocol.md`` has the diagrams.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeAlias

from x0tta6bl4.channel.constants import (
    AEAD_TAG_SIZE,
    BISCUIT_PLAIN_SIZE,
    BISCUIT_SIZE,
    CERT_REQUEST_SIZE,
    COOKIE_NONCE_SIZE,
    COOKIE_SIZE,
    DATA_FRAGMENT_HEADER_SIZE,
    DATA_HEADER_SIZE,
    DATA_OVERHEAD,
    EPHEMERAL_SIZE,
    FINGERPRINT_SIZE,
    FRAGMENT_HEADER_SIZE,
    FRAGMENT_NACK_SIZE,
    HEADER_SIZE,
    INDEX_SIZE,
    KEM_CIPHERTEXT_SIZE,
    MAC_SIZE,
    MAX_CERT_SIZE,
    MAX_DATA_FRAGMENTS,
    MAX_DATA_PAYLOAD,
    MAX_FRAGMENTS,
    MAX_MESSAGE_SIZE,
    MSG_CERT,
    MSG_CERT_REQUEST,
    MSG_CONFIRM,
    MSG_COOKIE,
    MSG_DATA,
    MSG_DATA_FRAGMENT,
    MSG_FRAGMENT,
    MSG_FRAGMENT_NACK,
    MSG_INIT,
    MSG_LAST,
    MSG_NO_SESSION,
    MSG_RESP,
    NO_SESSION_SIZE,
    PROTOCOL_VERSION,
    TIMESTAMP_SIZE,
)
from x0tta6bl4.errors import BadLength, BadVersion, DecodeError, Truncated, UnknownType


def header(msg_type: int) -> bytes:
    """The four bytes every message of ``msg_type`` starts with."""
    return bytes((PROTOCOL_VERSION, msg_type, 0, 0))


HDR_INIT: Final = header(MSG_INIT)
HDR_RESP: Final = header(MSG_RESP)
HDR_COOKIE: Final = header(MSG_COOKIE)
HDR_DATA: Final = header(MSG_DATA)
HDR_CERT_REQUEST: Final = header(MSG_CERT_REQUEST)
HDR_CERT: Final = header(MSG_CERT)
HDR_FRAGMENT: Final = header(MSG_FRAGMENT)
HDR_CONFIRM: Final = header(MSG_CONFIRM)
HDR_NO_SESSION: Final = header(MSG_NO_SESSION)
HDR_FRAGMENT_NACK: Final = header(MSG_FRAGMENT_NACK)
HDR_DATA_FRAGMENT: Final = header(MSG_DATA_FRAGMENT)

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_FRAG = struct.Struct("<IBBH")
_DATA = struct.Struct("<IQ")
_NACK = struct.Struct("<IQ")  # message_id u32 | missing u64
# DATA_FRAGMENT after its header: receiver u32 | counter u64 | index u8 | count u8 | length u16
DATA_FRAGMENT_FIELDS: Final = struct.Struct("<IQBBH")
_TS = struct.Struct(">QI")
_BISCUIT = struct.Struct("<IId")

MACS_SIZE: Final = 2 * MAC_SIZE
NS_PER_SECOND: Final = 1_000_000_000

# INIT's sealed part: flag u8 | fingerprint 32 or (len u16 | DER) | timestamp 12 | tag 16
IDENTITY_FINGERPRINT: Final = 0
IDENTITY_CERT: Final = 1
INIT_PAYLOAD_FINGERPRINT: Final = 1 + FINGERPRINT_SIZE + TIMESTAMP_SIZE  # 45
INIT_PAYLOAD_MIN: Final = 1 + 2 + 1 + TIMESTAMP_SIZE  # a (silly) one-byte certificate
INIT_PAYLOAD_MAX: Final = 1 + 2 + MAX_CERT_SIZE + TIMESTAMP_SIZE
INIT_FIXED: Final = HEADER_SIZE + INDEX_SIZE + EPHEMERAL_SIZE + KEM_CIPHERTEXT_SIZE + MACS_SIZE
INIT_MIN_SIZE: Final = INIT_FIXED + INIT_PAYLOAD_MIN + AEAD_TAG_SIZE
INIT_CACHED_SIZE: Final = INIT_FIXED + INIT_PAYLOAD_FINGERPRINT + AEAD_TAG_SIZE  # 2437
INIT_MAX_SIZE: Final = INIT_FIXED + INIT_PAYLOAD_MAX + AEAD_TAG_SIZE
RESP_SIZE: Final = (
    HEADER_SIZE
    + 2 * INDEX_SIZE
    + 2 * KEM_CIPHERTEXT_SIZE
    + AEAD_TAG_SIZE
    + BISCUIT_SIZE
    + MACS_SIZE
)  # 2452
CONFIRM_MIN_SIZE: Final = HEADER_SIZE + BISCUIT_SIZE + DATA_OVERHEAD  # 188
COOKIE_MSG_SIZE: Final = HEADER_SIZE + INDEX_SIZE + COOKIE_NONCE_SIZE + COOKIE_SIZE + AEAD_TAG_SIZE
CERT_FIXED: Final = HEADER_SIZE + INDEX_SIZE + 2 + MAC_SIZE
CERT_REQUEST_USED: Final = HEADER_SIZE + INDEX_SIZE + 2 * MAC_SIZE
INIT_PREFIX_SIZE: Final = HEADER_SIZE + INDEX_SIZE  # header | sender: hashed into the transcript

# The u32 right after the header, read in place (``X.unpack_from(datagram)[0]``) with no
# call around it; the caller checks the length first. DATA's receiver index is read so on
# every packet, a FRAGMENT's message id once per reassembly.
DATA_INDEX: Final = struct.Struct("<4xI")
FRAGMENT_MESSAGE_ID: Final = DATA_INDEX  # the same place: header | message_id u32 | ...


@dataclass(frozen=True, slots=True)
class Init:
    """Type 1, initiator to responder."""

    sender_index: int
    ephemeral: bytes  # E_i, a fresh hybrid public key (1216)
    ct_static: bytes  # encapsulation to the responder's static key (1120)
    sealed: bytes  # AEAD(k1, identity || timestamp, ad=h)
    mac1: bytes
    mac2: bytes


@dataclass(frozen=True, slots=True)
class Resp:
    """Type 2, responder to initiator."""

    sender_index: int
    receiver_index: int
    ct_ephemeral: bytes  # encapsulation to E_i (1120): forward secrecy
    ct_initiator: bytes  # encapsulation to the initiator's static key (1120)
    confirm: bytes  # AEAD(k3, empty, ad=h): 16 bytes
    biscuit: bytes  # the responder's sealed state, opaque to the initiator (152)
    mac1: bytes
    mac2: bytes


@dataclass(frozen=True, slots=True)
class CookieReply:
    """Type 3: "come back with this cookie in mac2"."""

    receiver_index: int
    nonce: bytes  # 12
    sealed_cookie: bytes  # AEAD(cookie 16) = 32


@dataclass(frozen=True, slots=True)
class Data:
    """Type 4: transport data (an empty plaintext is a keepalive)."""

    receiver_index: int
    counter: int
    ciphertext: bytes  # payload + 16-byte tag


@dataclass(frozen=True, slots=True)
class CertRequest:
    """Type 5: "send me your certificate". Zero padded to ``CERT_REQUEST_SIZE``."""

    request_id: int
    mac2: bytes
    check: bytes


@dataclass(frozen=True, slots=True)
class Cert:
    """Type 6: a certificate's DER, in answer to ``request_id``."""

    request_id: int
    cert_der: bytes
    check: bytes


@dataclass(frozen=True, slots=True)
class Fragment:
    """Type 7: chunk ``index`` of ``count`` of a message of ``total_length`` bytes."""

    message_id: int
    index: int
    count: int
    total_length: int
    chunk: bytes


@dataclass(frozen=True, slots=True)
class Confirm:
    """Type 8: the initiator's packets on a new session until the responder answers:
    RESP's biscuit handed back, then a whole DATA datagram (often an empty keepalive)."""

    biscuit: bytes
    data: bytes  # a DATA datagram, header included

    @property
    def receiver_index(self) -> int:
        """The enclosed DATA's receiver index: the session the responder would make."""
        return int(DATA_INDEX.unpack_from(self.data)[0])


@dataclass(frozen=True, slots=True)
class NoSession:
    """Type 9: "I hold no session with this index", in answer to a DATA (or a CONFIRM's
    DATA) that the sender cannot open. Unauthenticated: it echoes the DATA's receiver
    index, counter and AEAD tag, so only someone who saw that packet can make one, and
    the addressee acts on it only if it matches a packet it recently sent."""

    receiver_index: int
    counter: int
    tag: bytes  # the DATA's last 16 bytes

    @staticmethod
    def echo(data: bytes) -> NoSession:
        """The NO_SESSION answering ``data``, a DATA datagram (length checked by the caller)."""
        index, counter = _DATA.unpack_from(data, HEADER_SIZE)
        return NoSession(index, counter, data[-AEAD_TAG_SIZE:])


@dataclass(frozen=True, slots=True)
class FragmentNack:
    """Type 10: fragments of message ``message_id`` that have not arrived, as a bitmap
    (bit i = fragment i; at most ``MAX_FRAGMENTS`` = 64). The sender resends those from
    the messages it keeps; a NACK for anything else is dropped."""

    message_id: int
    missing: int

    def indices(self) -> list[int]:
        m = self.missing
        return [i for i in range(m.bit_length()) if m >> i & 1]


@dataclass(frozen=True, slots=True)
class DataFragment:
    """Type 11: chunk ``index`` of ``count`` of the ciphertext of ONE DATA message too large
    for a datagram. ``receiver_index`` and ``counter`` are that DATA's header fields (so
    the receiver finds the session, and refuses a replay, before it keeps anything; the
    AEAD authenticates them when the whole opens); ``length`` is the payload's length:
    the chunks together are ``length + 16`` bytes, the ciphertext and its tag."""

    receiver_index: int
    counter: int
    index: int
    count: int
    length: int
    chunk: bytes


Message: TypeAlias = (
    Init
    | Resp
    | CookieReply
    | Data
    | CertRequest
    | Cert
    | Fragment
    | Confirm
    | NoSession
    | FragmentNack
    | DataFragment
)


@dataclass(frozen=True, slots=True)
class BiscuitState:
    """What a responder needs to finish a handshake, sealed into RESP instead of kept:
    it holds no state for an INIT nobody has authenticated."""

    local_index: int
    remote_index: int
    created: float  # the responder's monotonic clock when it answered
    timestamp: int  # the INIT's timestamp (ns), recorded once the handshake is confirmed
    fingerprint: bytes  # the initiator's certificate
    send_key: bytes  # responder -> initiator
    recv_key: bytes  # initiator -> responder

    def __repr__(self) -> str:
        return f"BiscuitState(local={self.local_index:#010x}, keys hidden)"


@dataclass(frozen=True, slots=True)
class InitPayload:
    """The plaintext sealed inside INIT: who the initiator is, and when it sent this."""

    timestamp: int  # wall-clock nanoseconds
    fingerprint: bytes | None = None  # set when the responder should have our certificate
    cert_der: bytes | None = None  # set on first contact and on retries


# --- helpers ----------------------------------------------------------------------


def _need(data: bytes, size: int, what: str) -> None:
    if len(data) < size:
        raise Truncated(f"{what}: need {size} bytes, got {len(data)}")


def _exact(data: bytes, size: int, what: str) -> None:
    _need(data, size, what)
    if len(data) != size:
        raise BadLength(f"{what}: expected {size} bytes, got {len(data)}")


def _field(value: bytes, size: int, what: str) -> bytes:
    if len(value) != size:
        raise BadLength(f"{what} must be {size} bytes, got {len(value)}")
    return value


def _check_u32(value: int, what: str = "index") -> int:
    if not 0 <= value <= 0xFFFFFFFF:
        raise BadLength(f"{what} out of range: {value}")
    return value


def _u32(value: int, what: str) -> bytes:
    return _U32.pack(_check_u32(value, what))


def _check_cert_size(size: int) -> int:
    if not 1 <= size <= MAX_CERT_SIZE:
        raise BadLength(f"certificate of {size} bytes")
    return size


def check_header(data: bytes) -> int:
    """Validate the 4-byte common header; return the message type."""
    _need(data, HEADER_SIZE, "header")
    if data[0] != PROTOCOL_VERSION:
        raise BadVersion(f"protocol version {data[0]}, we speak {PROTOCOL_VERSION}")
    if data[2] or data[3]:
        raise DecodeError("reserved header bytes must be zero")
    msg_type = data[1]
    if not MSG_INIT <= msg_type <= MSG_LAST:
        raise UnknownType(f"message type {msg_type}")
    return msg_type


# --- encoders ---------------------------------------------------------------------


def encode(msg: Message) -> bytes:
    """The wire bytes of ``msg``; raises :class:`BadLength` if a field is out of range."""
    if isinstance(msg, Data):
        if not 0 <= msg.counter < 2**64:
            raise BadLength(f"counter out of range: {msg.counter}")
        if len(msg.ciphertext) < AEAD_TAG_SIZE:
            raise BadLength("DATA ciphertext is shorter than its tag")
        return HDR_DATA + _DATA.pack(_check_u32(msg.receiver_index), msg.counter) + msg.ciphertext
    if isinstance(msg, Init):
        body = encode_init_body(msg.sender_index, msg.ephemeral, msg.ct_static, msg.sealed)
        return body + _field(msg.mac1, MAC_SIZE, "mac1") + _field(msg.mac2, MAC_SIZE, "mac2")
    if isinstance(msg, Resp):
        body = encode_resp_body(
            msg.sender_index,
            msg.receiver_index,
            msg.ct_ephemeral,
            msg.ct_initiator,
            msg.confirm,
            msg.biscuit,
        )
        return body + _field(msg.mac1, MAC_SIZE, "mac1") + _field(msg.mac2, MAC_SIZE, "mac2")
    if isinstance(msg, CookieReply):
        return b"".join(
            (
                HDR_COOKIE,
                _u32(msg.receiver_index, "receiver_index"),
                _field(msg.nonce, COOKIE_NONCE_SIZE, "nonce"),
                _field(msg.sealed_cookie, COOKIE_SIZE + AEAD_TAG_SIZE, "sealed_cookie"),
            )
        )
    if isinstance(msg, CertRequest):
        used = cert_request_check_scope(msg.request_id, msg.mac2) + _field(
            msg.check, MAC_SIZE, "check"
        )
        return used + bytes(CERT_REQUEST_SIZE - CERT_REQUEST_USED)
    if isinstance(msg, Cert):
        return cert_check_scope(msg.request_id, msg.cert_der) + _field(msg.check, MAC_SIZE, "check")
    if isinstance(msg, Confirm):
        if len(msg.data) < DATA_OVERHEAD or msg.data[:HEADER_SIZE] != HDR_DATA:
            raise BadLength("CONFIRM must carry a whole DATA datagram")
        return HDR_CONFIRM + _field(msg.biscuit, BISCUIT_SIZE, "biscuit") + msg.data
    if isinstance(msg, NoSession):
        if not 0 <= msg.counter < 2**64:
            raise BadLength(f"counter out of range: {msg.counter}")
        return (
            HDR_NO_SESSION
            + _DATA.pack(_check_u32(msg.receiver_index), msg.counter)
            + _field(msg.tag, AEAD_TAG_SIZE, "tag")
        )
    if isinstance(msg, FragmentNack):
        return HDR_FRAGMENT_NACK + _NACK.pack(
            _check_u32(msg.message_id), _check_missing(msg.missing)
        )
    if isinstance(msg, DataFragment):
        return encode_data_fragment(msg)
    return encode_fragment(msg)


# --- the parts a MAC covers, and the parts the handshake hashes ----------------------
#
# INIT and RESP end with ``mac1 | mac2`` over everything before them (``cookie.add_macs``);
# CERT_REQUEST and CERT carry MACs over their leading fields. These build exactly the
# bytes ``encode`` puts there, so a MAC computed over them matches the wire.


def data_prefix(receiver_index: int) -> bytes:
    """DATA's ``header | receiver_index``: a session builds it once per direction, then
    seals and opens DATA by slicing (``session.py``, the per-packet path)."""
    return HDR_DATA + _u32(receiver_index, "receiver_index")


def init_prefix(sender_index: int) -> bytes:
    """INIT's ``header | sender_index``."""
    return HDR_INIT + _u32(sender_index, "sender_index")


def encode_init_body(sender_index: int, ephemeral: bytes, ct_static: bytes, sealed: bytes) -> bytes:
    """INIT up to its MACs."""
    size = len(sealed)
    if not INIT_PAYLOAD_MIN + AEAD_TAG_SIZE <= size <= INIT_PAYLOAD_MAX + AEAD_TAG_SIZE:
        raise BadLength(f"INIT sealed payload of {size} bytes")
    return b"".join(
        (
            init_prefix(sender_index),
            _field(ephemeral, EPHEMERAL_SIZE, "ephemeral"),
            _field(ct_static, KEM_CIPHERTEXT_SIZE, "ct_static"),
            sealed,
        )
    )


def resp_prefix(sender_index: int, receiver_index: int) -> bytes:
    """RESP's ``header | sender_index | receiver_index``."""
    return HDR_RESP + _u32(sender_index, "sender_index") + _u32(receiver_index, "receiver_index")


def encode_resp_body(
    sender_index: int,
    receiver_index: int,
    ct_ephemeral: bytes,
    ct_initiator: bytes,
    confirm: bytes,
    biscuit: bytes,
) -> bytes:
    """RESP up to its MACs."""
    return b"".join(
        (
            resp_prefix(sender_index, receiver_index),
            _field(ct_ephemeral, KEM_CIPHERTEXT_SIZE, "ct_ephemeral"),
            _field(ct_initiator, KEM_CIPHERTEXT_SIZE, "ct_initiator"),
            _field(confirm, AEAD_TAG_SIZE, "confirm"),
            _field(biscuit, BISCUIT_SIZE, "biscuit"),
        )
    )


def mac_trailer(message: bytes) -> tuple[bytes, bytes]:
    """The ``(mac1, mac2)`` that end an INIT or a RESP."""
    _need(message, HEADER_SIZE + MACS_SIZE, "MAC trailer")
    end = len(message) - MAC_SIZE
    return message[end - MAC_SIZE : end], message[end:]


def cert_request_mac2_scope(request_id: int) -> bytes:
    """What a CERT_REQUEST's mac2 covers: ``header | request_id``."""
    return HDR_CERT_REQUEST + _u32(request_id, "request_id")


def cert_request_check_scope(request_id: int, mac2: bytes) -> bytes:
    """What a CERT_REQUEST's check covers: ``header | request_id | mac2``."""
    return cert_request_mac2_scope(request_id) + _field(mac2, MAC_SIZE, "mac2")


def cert_check_scope(request_id: int, cert_der: bytes) -> bytes:
    """What a CERT's check covers: ``header | request_id | length u16 | certificate``."""
    size = _check_cert_size(len(cert_der))
    return b"".join((HDR_CERT, _u32(request_id, "request_id"), _U16.pack(size), cert_der))


def encode_fragment(msg: Fragment) -> bytes:
    _check_fragment(msg.index, msg.count, msg.total_length, len(msg.chunk))
    return (
        HDR_FRAGMENT
        + _FRAG.pack(_check_u32(msg.message_id), msg.index, msg.count, msg.total_length)
        + msg.chunk
    )


def encode_data_fragment(msg: DataFragment) -> bytes:
    if not 0 <= msg.counter < 2**64:
        raise BadLength(f"counter out of range: {msg.counter}")
    _check_data_fragment(msg.index, msg.count, msg.length, len(msg.chunk))
    fields = DATA_FRAGMENT_FIELDS.pack(
        _check_u32(msg.receiver_index), msg.counter, msg.index, msg.count, msg.length
    )
    return HDR_DATA_FRAGMENT + fields + msg.chunk


def _check_data_fragment(index: int, count: int, length: int, chunk_size: int) -> None:
    if not 2 <= count <= MAX_DATA_FRAGMENTS:
        raise BadLength(f"data fragment count {count} outside 2..{MAX_DATA_FRAGMENTS}")
    if not 0 <= index < count:
        raise BadLength(f"data fragment index {index} of {count}")
    if not 0 <= length <= MAX_DATA_PAYLOAD:
        raise BadLength(f"fragmented payload of {length} bytes")
    if not 1 <= chunk_size <= length + AEAD_TAG_SIZE:
        raise BadLength(f"data fragment chunk of {chunk_size} bytes for a {length}-byte payload")


def _check_missing(missing: int) -> int:
    if not 0 < missing < 2**MAX_FRAGMENTS:
        raise BadLength(f"NACK bitmap {missing:#x}: must name 1 to {MAX_FRAGMENTS} fragments")
    return missing


def _check_fragment(index: int, count: int, total_length: int, chunk_size: int) -> None:
    if not 2 <= count <= MAX_FRAGMENTS:
        raise BadLength(f"fragment count {count} outside 2..{MAX_FRAGMENTS}")
    if not 0 <= index < count:
        raise BadLength(f"fragment index {index} of {count}")
    if not 1 <= total_length <= MAX_MESSAGE_SIZE:
        raise BadLength(f"fragmented message of {total_length} bytes")
    if not 1 <= chunk_size <= total_length:
        raise BadLength(f"fragment chunk of {chunk_size} bytes for a {total_length}-byte message")


# --- decoders ---------------------------------------------------------------------


def decode(data: bytes) -> Message:
    """Decode any message; raises only :class:`x0tta6bl4.errors.DecodeError` subclasses."""
    msg_type = check_header(data)
    return _DECODERS[msg_type](data)


def _init_bounds(data: bytes) -> None:
    size = len(data)  # inline checks: every INIT a responder sees passes through here
    if size < INIT_MIN_SIZE:
        raise Truncated(f"INIT: need {INIT_MIN_SIZE} bytes, got {size}")
    if size > INIT_MAX_SIZE:
        raise BadLength(f"INIT of {size} bytes exceeds {INIT_MAX_SIZE}")


def decode_init_envelope(data: bytes) -> tuple[int, bytes, bytes]:
    """INIT's ``(sender_index, mac1, mac2)``, bounds-checked as :func:`decode_init` but
    without copying the body: all a responder reads before it decides to do KEM work
    (drop on mac1, answer with a COOKIE, refuse a replay)."""
    _init_bounds(data)
    m = len(data) - MACS_SIZE
    return _U32.unpack_from(data, HEADER_SIZE)[0], data[m : m + MAC_SIZE], data[m + MAC_SIZE :]


def decode_init(data: bytes) -> Init:
    _init_bounds(data)
    e = HEADER_SIZE + INDEX_SIZE
    c = e + EPHEMERAL_SIZE
    s = c + KEM_CIPHERTEXT_SIZE
    m = len(data) - MACS_SIZE
    return Init(
        sender_index=_U32.unpack_from(data, HEADER_SIZE)[0],
        ephemeral=data[e:c],
        ct_static=data[c:s],
        sealed=data[s:m],
        mac1=data[m : m + MAC_SIZE],
        mac2=data[m + MAC_SIZE :],
    )


def decode_resp(data: bytes) -> Resp:
    _exact(data, RESP_SIZE, "RESP")
    a = HEADER_SIZE + 2 * INDEX_SIZE
    b = a + KEM_CIPHERTEXT_SIZE
    c = b + KEM_CIPHERTEXT_SIZE
    d = c + AEAD_TAG_SIZE
    e = d + BISCUIT_SIZE
    return Resp(
        sender_index=_U32.unpack_from(data, HEADER_SIZE)[0],
        receiver_index=_U32.unpack_from(data, HEADER_SIZE + INDEX_SIZE)[0],
        ct_ephemeral=data[a:b],
        ct_initiator=data[b:c],
        confirm=data[c:d],
        biscuit=data[d:e],
        mac1=data[e : e + MAC_SIZE],
        mac2=data[e + MAC_SIZE :],
    )


def decode_cookie(data: bytes) -> CookieReply:
    _exact(data, COOKIE_MSG_SIZE, "COOKIE")
    n = HEADER_SIZE + INDEX_SIZE
    return CookieReply(
        receiver_index=_U32.unpack_from(data, HEADER_SIZE)[0],
        nonce=data[n : n + COOKIE_NONCE_SIZE],
        sealed_cookie=data[n + COOKIE_NONCE_SIZE :],
    )


def decode_data(data: bytes) -> Data:
    _need(data, DATA_OVERHEAD, "DATA")
    index, counter = _DATA.unpack_from(data, HEADER_SIZE)
    return Data(receiver_index=index, counter=counter, ciphertext=data[DATA_HEADER_SIZE:])


def decode_cert_request(data: bytes) -> CertRequest:
    _exact(data, CERT_REQUEST_SIZE, "CERT_REQUEST")
    if any(data[CERT_REQUEST_USED:]):
        raise DecodeError("CERT_REQUEST padding must be zero")
    m = HEADER_SIZE + INDEX_SIZE
    return CertRequest(
        request_id=_U32.unpack_from(data, HEADER_SIZE)[0],
        mac2=data[m : m + MAC_SIZE],
        check=data[m + MAC_SIZE : m + 2 * MAC_SIZE],
    )


def decode_cert(data: bytes) -> Cert:
    _need(data, CERT_FIXED + 1, "CERT")
    size = _check_cert_size(_U16.unpack_from(data, HEADER_SIZE + INDEX_SIZE)[0])
    _exact(data, CERT_FIXED + size, "CERT")
    start = HEADER_SIZE + INDEX_SIZE + 2
    return Cert(
        request_id=_U32.unpack_from(data, HEADER_SIZE)[0],
        cert_der=data[start : start + size],
        check=data[start + size :],
    )


def decode_fragment(data: bytes) -> Fragment:
    _need(data, FRAGMENT_HEADER_SIZE + 1, "FRAGMENT")
    message_id, index, count, total = _FRAG.unpack_from(data, HEADER_SIZE)
    chunk_size = len(data) - FRAGMENT_HEADER_SIZE
    _check_fragment(index, count, total, chunk_size)
    return Fragment(message_id, index, count, total, data[FRAGMENT_HEADER_SIZE:])


def decode_data_fragment(data: bytes) -> DataFragment:
    _need(data, DATA_FRAGMENT_HEADER_SIZE + 1, "DATA_FRAGMENT")
    receiver, counter, index, count, length = DATA_FRAGMENT_FIELDS.unpack_from(data, HEADER_SIZE)
    chunk = data[DATA_FRAGMENT_HEADER_SIZE:]
    _check_data_fragment(index, count, length, len(chunk))
    return DataFragment(receiver, counter, index, count, length, chunk)


def decode_confirm(data: bytes) -> Confirm:
    _need(data, CONFIRM_MIN_SIZE, "CONFIRM")
    inner = data[HEADER_SIZE + BISCUIT_SIZE :]
    if inner[:HEADER_SIZE] != HDR_DATA:
        raise DecodeError("CONFIRM does not carry a DATA datagram")
    return Confirm(biscuit=data[HEADER_SIZE : HEADER_SIZE + BISCUIT_SIZE], data=inner)


def decode_no_session(data: bytes) -> NoSession:
    _exact(data, NO_SESSION_SIZE, "NO_SESSION")
    index, counter = _DATA.unpack_from(data, HEADER_SIZE)
    return NoSession(index, counter, data[DATA_HEADER_SIZE:])


def decode_fragment_nack(data: bytes) -> FragmentNack:
    _exact(data, FRAGMENT_NACK_SIZE, "FRAGMENT_NACK")
    message_id, missing = _NACK.unpack_from(data, HEADER_SIZE)
    if not missing:
        raise DecodeError("FRAGMENT_NACK names no fragment")
    return FragmentNack(message_id, missing)


_DECODERS: dict[int, Callable[[bytes], Message]] = {
    MSG_INIT: decode_init,
    MSG_RESP: decode_resp,
    MSG_COOKIE: decode_cookie,
    MSG_DATA: decode_data,
    MSG_CERT_REQUEST: decode_cert_request,
    MSG_CERT: decode_cert,
    MSG_FRAGMENT: decode_fragment,
    MSG_CONFIRM: decode_confirm,
    MSG_NO_SESSION: decode_no_session,
    MSG_FRAGMENT_NACK: decode_fragment_nack,
    MSG_DATA_FRAGMENT: decode_data_fragment,
}


# --- the responder's biscuit (sealed by the responder, for itself) --------------------


def encode_biscuit_state(b: BiscuitState) -> bytes:
    return b"".join(
        (
            _BISCUIT.pack(_check_u32(b.local_index), _check_u32(b.remote_index), b.created),
            encode_timestamp(b.timestamp),
            _field(b.fingerprint, FINGERPRINT_SIZE, "fingerprint"),
            _field(b.send_key, 32, "send_key"),
            _field(b.recv_key, 32, "recv_key"),
        )
    )


def decode_biscuit_state(data: bytes) -> BiscuitState:
    _exact(data, BISCUIT_PLAIN_SIZE, "biscuit")
    local, remote, created = _BISCUIT.unpack_from(data)
    t = _BISCUIT.size
    f = t + TIMESTAMP_SIZE
    k = f + FINGERPRINT_SIZE
    return BiscuitState(
        local_index=local,
        remote_index=remote,
        created=created,
        timestamp=decode_timestamp(data[t:f]),
        fingerprint=data[f:k],
        send_key=data[k : k + 32],
        recv_key=data[k + 32 : k + 64],
    )


# --- INIT's sealed payload --------------------------------------------------------


def encode_timestamp(ns: int) -> bytes:
    if not 0 <= ns < 2**64 * NS_PER_SECOND:
        raise BadLength(f"timestamp out of range: {ns}")
    return _TS.pack(*divmod(ns, NS_PER_SECOND))


def decode_timestamp(data: bytes) -> int:
    _exact(data, TIMESTAMP_SIZE, "timestamp")
    seconds, nanos = _TS.unpack(data)
    if nanos >= NS_PER_SECOND:
        raise DecodeError(f"timestamp nanoseconds {nanos} >= 10**9")
    return int(seconds * NS_PER_SECOND + nanos)


def encode_init_payload(p: InitPayload) -> bytes:
    ts = encode_timestamp(p.timestamp)
    if (p.fingerprint is None) == (p.cert_der is None):
        raise DecodeError("an INIT identity is either a fingerprint or a certificate")
    if p.fingerprint is not None:
        return bytes((IDENTITY_FINGERPRINT,)) + _field(p.fingerprint, 32, "fingerprint") + ts
    assert p.cert_der is not None
    size = _check_cert_size(len(p.cert_der))
    return bytes((IDENTITY_CERT,)) + _U16.pack(size) + p.cert_der + ts


def decode_init_payload(data: bytes) -> InitPayload:
    _need(data, INIT_PAYLOAD_MIN, "INIT payload")
    flag = data[0]
    if flag == IDENTITY_FINGERPRINT:
        _exact(data, INIT_PAYLOAD_FINGERPRINT, "INIT payload")
        return InitPayload(
            timestamp=decode_timestamp(data[1 + FINGERPRINT_SIZE :]),
            fingerprint=data[1 : 1 + FINGERPRINT_SIZE],
        )
    if flag == IDENTITY_CERT:
        size = _check_cert_size(_U16.unpack_from(data, 1)[0])
        _exact(data, 3 + size + TIMESTAMP_SIZE, "INIT payload")
        return InitPayload(
            timestamp=decode_timestamp(data[3 + size :]), cert_der=data[3 : 3 + size]
        )
    raise DecodeError(f"INIT identity flag {flag}")
