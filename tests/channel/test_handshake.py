"""The handshake: key agreement, impersonation, cookies, replays and every single-bit flip
of every handshake and data datagram, with real certificates and real crypto."""

from __future__ import annotations

import random
from collections.abc import Hashable

import pytest

from tests.channel.helpers import World, make_world, sends
from x0tta6bl4.channel import constants as C
from x0tta6bl4.channel.cookie import add_macs, mac1_key
from x0tta6bl4.channel.endpoint import SecureEndpoint
from x0tta6bl4.channel.fragment import Reassembler
from x0tta6bl4.channel.handshake import Initiator, Responder, ResponderHandshake, SessionKeys
from x0tta6bl4.channel.timers import ChannelTimer, ChannelTimerKind
from x0tta6bl4.channel.wire import InitPayload, decode_init
from x0tta6bl4.crypto.hybrid import HybridPrivateKey, HybridPublicKey
from x0tta6bl4.crypto.kdf import Transcript
from x0tta6bl4.errors import DecodeError, DecryptError, HandshakeError
from x0tta6bl4.identity import NodeCredentials
from x0tta6bl4.sansio import Action, Datagram, Deliver, Event, Send, SetTimer, Timer


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("hs"), ["alpha", "beta", "mallory"])


# --- function-level API -------------------------------------------------------------


def initiator(me: NodeCredentials, peer: NodeCredentials, index: int) -> Initiator:
    return Initiator(
        static_private=me.static_private,
        fingerprint=me.cert.fingerprint,
        responder_static=peer.cert.static_key,
        responder_fingerprint=peer.cert.fingerprint,
        sender_index=index,
    )


def responder(me: NodeCredentials) -> Responder:
    return Responder(me.static_private, me.cert.fingerprint)


def answer(hs: ResponderHandshake, peer: NodeCredentials, index: int) -> tuple[bytes, SessionKeys]:
    return hs.create_resp(
        initiator_static=peer.cert.static_key,
        initiator_fingerprint=peer.cert.fingerprint,
        sender_index=index,
    )


def test_keys_agree_and_messages_have_fixed_sizes(world: World) -> None:
    a, b = world.creds["alpha"], world.creds["beta"]
    init = initiator(a, b, 7)
    m1 = init.create_init(timestamp=123, fingerprint=a.cert.fingerprint)
    assert len(m1) == 2437
    hs = responder(b).consume_init(m1)
    assert hs.payload == InitPayload(timestamp=123, fingerprint=a.cert.fingerprint)
    assert hs.initiator_index == 7
    m2, rkeys = answer(hs, a, 9)
    assert len(m2) == 2300 + C.BISCUIT_SIZE
    ikeys = init.consume_resp(m2)
    assert (ikeys.send_key, ikeys.recv_key) == (rkeys.recv_key, rkeys.send_key)
    assert (ikeys.local_index, ikeys.remote_index) == (7, 9)
    assert (rkeys.local_index, rkeys.remote_index) == (9, 7)
    assert "hidden" in repr(ikeys) and "hidden" in repr(init) and "hidden" in repr(hs)
    assert not init.pending
    with pytest.raises(HandshakeError):
        init.consume_resp(m2)  # the attempt is finished and its secrets are gone
    with pytest.raises(HandshakeError):
        answer(hs, a, 9)
    s_i, s_r = ikeys.session(0.0), rkeys.session(0.0)
    assert s_r.open(s_i.seal(b"hi")) == b"hi"


def test_failed_resp_leaves_the_attempt_usable(world: World) -> None:
    a, b = world.creds["alpha"], world.creds["beta"]
    init = initiator(a, b, 1)
    hs = responder(b).consume_init(init.create_init(timestamp=1, cert_der=a.cert.der))
    resp, _ = answer(hs, a, 2)
    bad = bytearray(resp)
    bad[-40 - C.BISCUIT_SIZE] ^= 1  # the confirm tag
    with pytest.raises(DecryptError):
        init.consume_resp(bytes(bad))
    wrong_index = resp[:8] + (99).to_bytes(4, "little") + resp[12:]
    with pytest.raises(HandshakeError):
        init.consume_resp(wrong_index)
    with pytest.raises(DecodeError):
        init.consume_resp(resp[:-1])
    assert init.consume_resp(resp).remote_index == 2


def test_impersonator_with_stolen_certificate_cannot_finish_as_initiator(world: World) -> None:
    """Mallory sends beta an INIT carrying alpha's certificate, with her own keys."""
    b = world.endpoint("beta", seed=3)
    mallory_key = world.creds["mallory"].static_private
    init = Initiator(
        static_private=mallory_key,
        fingerprint=world.creds["alpha"].cert.fingerprint,
        responder_static=world.creds["beta"].cert.static_key,
        responder_fingerprint=world.creds["beta"].cert.fingerprint,
        sender_index=5,
    )
    msg = init.create_init(timestamp=10**18, cert_der=world.creds["alpha"].cert.der)
    out = b.handle(0.0, Datagram("M", msg))
    resp = whole(sends(out))
    # beta answers (INIT authenticates nobody), but only alpha could use the answer:
    assert resp
    with pytest.raises(DecryptError):
        init.consume_resp(resp)
    # Mallory cannot make a first packet beta accepts: she hands back the biscuit (beta's
    # sealed state) with a forged keepalive under guessed keys.
    idx = int.from_bytes(resp[4:8], "little")
    biscuit = resp[-2 * C.MAC_SIZE - C.BISCUIT_SIZE : -2 * C.MAC_SIZE]
    for guess in range(3):
        forged = (
            bytes((1, 4, 0, 0))
            + idx.to_bytes(4, "little")
            + bytes(8)
            + random.Random(guess).randbytes(16)
        )
        out = b.handle(0.1, Datagram("M", bytes((1, 8, 0, 0)) + biscuit + forged))
        assert not [a for a in out if isinstance(a, Send | Deliver)]
    assert b.counters["decrypt_failed"] == 3
    assert b.peer("M") is None and b.sessions_in_use == 0  # beta kept nothing of it
    assert "handshake_complete" not in [a.kind for a in out if isinstance(a, Event)]


def test_impersonator_with_stolen_certificate_cannot_finish_as_responder(world: World) -> None:
    """alpha calls beta; Mallory sits at beta's address with beta's certificate only."""
    a = world.endpoint("alpha", seed=4)
    a.add_peer("B", cert_der=world.creds["beta"].cert.der)
    out = a.connect(0.0, "B")
    init_msg = whole(sends(out))
    mallory = responder(world.creds["mallory"])
    with pytest.raises(DecryptError):  # she cannot open INIT: it is sealed to beta's key
        mallory.consume_init(init_msg)
    # Her best forgery: every public value right, the secret ss_s guessed.
    init = decode_init(init_msg)
    h = Transcript(C.PROTOCOL_LABEL)
    beta = world.creds["beta"].cert
    for part in (beta.static_key.to_bytes(), beta.fingerprint, init_msg[:8]):
        h.mix(part)
    h.mix(init.ephemeral)
    h.mix(init.ct_static)
    h.mix(init.sealed)
    fake = ResponderHandshake(
        init.sender_index,
        InitPayload(timestamp=0, cert_der=world.creds["alpha"].cert.der),
        init.ephemeral,
        HybridPublicKey.from_bytes(init.ephemeral),
        bytes(32),
        h,
    )
    resp, _ = answer(fake, world.creds["alpha"], 77)
    out = a.handle(0.01, Datagram("B", resp[:1280])) + a.handle(0.01, Datagram("B", resp))
    assert a.counters.get("decrypt_failed", 0) + a.counters.get("malformed", 0) >= 1
    info = a.peer("B")
    assert info is not None and not info.established and info.handshaking


# --- endpoint-level campaign: every bit of every handshake datagram ----------------------


def whole(datagrams: list[bytes]) -> bytes:
    """Reassemble a fragmented message (or return the single datagram)."""
    r = Reassembler()
    for d in datagrams:
        m = d if d[1] != C.MSG_FRAGMENT else r.add(0.0, "x", d).message
        if m is not None:
            return m
    raise AssertionError("incomplete")


def flip(data: bytes, bit: int) -> bytes:
    b = bytearray(data)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


class Campaign:
    """Each endpoint keeps its own monotonic clock (as real nodes do): waiting out a
    reassembly timeout at one of them does not age the other's sessions."""

    def __init__(self) -> None:
        self.clock: dict[int, float] = {}
        self.flips = 0

    def now(self, ep: SecureEndpoint) -> float:
        return self.clock.setdefault(id(ep), 1.0)

    def deliver(self, ep: SecureEndpoint, src: Hashable, datagrams: list[bytes]) -> list[Action]:
        out: list[Action] = []
        for d in datagrams:
            out += ep.handle(self.now(ep), Datagram(src, d))
        return out

    def run(
        self, ep: SecureEndpoint, src: Hashable, datagrams: list[bytes], stride: int = 1
    ) -> None:
        """Flip each bit (every ``stride``-th, but always all of the first 16 bytes) of
        each datagram, deliver it with its unflipped siblings, and require a counted drop
        (after the reassembly timeout if a fragment header was hit)."""
        for di, d in enumerate(datagrams):
            for bit in range(len(d) * 8):
                if bit >= 128 and bit % stride:
                    continue
                self.flips += 1
                before = sum(ep.counters.values())
                batch = [flip(d, bit) if j == di else x for j, x in enumerate(datagrams)]
                out = self.deliver(ep, src, batch)
                assert not [a for a in out if isinstance(a, Send | Deliver)], (di, bit)
                if ep.reassemblies_pending:
                    timers = [a for a in out if isinstance(a, SetTimer)]
                    self.clock[id(ep)] = max(t.at for t in timers)
                    for t in timers:
                        ep.handle(self.now(ep), Timer(t.key))
                    assert ep.reassemblies_pending == 0
                assert sum(ep.counters.values()) > before, (di, bit)
                assert "internal_error" not in ep.counters


def test_every_bit_flip_of_every_handshake_datagram_is_dropped_and_counted(
    world: World,
) -> None:
    a = world.endpoint("alpha", seed=10)
    b = world.endpoint("beta", seed=11)
    c = Campaign()

    # First contact: CERT_REQUEST -> COOKIE -> CERT_REQUEST(mac2) -> CERT -> INIT(cert) -> RESP
    cr1 = sends(a.connect(c.now(a), "B"))
    assert [len(x) for x in cr1] == [C.CERT_REQUEST_SIZE]
    c.run(b, "A", cr1)
    cookie = sends(c.deliver(b, "A", cr1))
    assert [len(x) for x in cookie] == [52]
    c.run(a, "B", cookie)
    cr2 = sends(c.deliver(a, "B", cookie))
    c.run(b, "A", cr2)
    cert = sends(c.deliver(b, "A", cr2))
    assert len(cert) > 1  # fragmented
    c.run(a, "B", cert)
    init_full = sends(c.deliver(a, "B", cert))
    assert len(init_full) > 2
    c.run(b, "A", init_full)
    resp = sends(c.deliver(b, "A", init_full))
    assert len(resp) == 2
    c.run(a, "B", resp)
    confirm = sends(c.deliver(a, "B", resp))
    assert [len(x) for x in confirm] == [C.HEADER_SIZE + C.BISCUIT_SIZE + C.DATA_OVERHEAD]
    c.run(b, "A", confirm)
    ack = sends(c.deliver(b, "A", confirm))
    assert [len(x) for x in ack] == [C.DATA_OVERHEAD]
    c.run(a, "B", ack)
    assert not sends(c.deliver(a, "B", ack))
    assert b.peer("A", c.now(b)).established and a.peer("B", c.now(a)).established

    # Data in both directions.
    d_ab = sends(a.send(c.now(a), "B", b"payload from alpha"))
    c.run(b, "A", d_ab)
    assert [x.payload for x in c.deliver(b, "A", d_ab) if isinstance(x, Deliver)] == [
        b"payload from alpha"
    ]
    d_ba = sends(b.send(c.now(b), "A", b"and back"))
    c.run(a, "B", d_ba)
    assert [x.payload for x in c.deliver(a, "B", d_ba) if isinstance(x, Deliver)] == [b"and back"]

    # A cached-certificate INIT, and a COOKIE answering an INIT under load.
    b.set_under_load(True)
    init_cached = sends(a.connect(c.now(a), "B"))
    assert sum(len(x) for x in init_cached) == 2437 + 2 * C.FRAGMENT_HEADER_SIZE
    c.run(b, "A", init_cached)
    cookie2 = sends(c.deliver(b, "A", init_cached))
    assert [len(x) for x in cookie2] == [52]
    c.run(a, "B", cookie2)
    assert not sends(c.deliver(a, "B", cookie2))
    assert a.counters["cookie_received"] == 2
    assert c.flips > 50_000


# --- replays ---------------------------------------------------------------------------


def handshake(
    world: World, now: float = 0.0
) -> tuple[SecureEndpoint, SecureEndpoint, dict[str, list[bytes]]]:
    a = world.endpoint("alpha", seed=20)
    b = world.endpoint("beta", seed=21)
    a.add_peer("B", cert_der=world.creds["beta"].cert.der)
    seen: dict[str, list[bytes]] = {}
    init = sends(a.connect(now, "B"))
    seen["init"] = init
    resp: list[bytes] = []
    for d in init:
        resp += sends(b.handle(now, Datagram("A", d)))
    seen["resp"] = resp
    ka: list[bytes] = []
    for d in resp:
        ka += sends(a.handle(now, Datagram("B", d)))
    seen["keepalive"] = ka
    for d in ka:
        b.handle(now, Datagram("A", d))
    return a, b, seen


def test_replayed_init_and_data_are_dropped_and_counted(world: World) -> None:
    a, b, seen = handshake(world)
    assert b.peer("A").established
    sessions = b.sessions_in_use
    for d in seen["init"]:
        out = b.handle(1.0, Datagram("A", d))
        assert not sends(out)
    assert b.counters["replay"] == 1  # refused before any decapsulation
    assert b.sessions_in_use == sessions
    data = sends(a.send(1.0, "B", b"once"))
    assert [x for x in b.handle(1.0, Datagram("A", data[0])) if isinstance(x, Deliver)]
    assert not b.handle(1.0, Datagram("A", data[0]))[1:]
    assert b.counters["replay"] == 2
    # the CONFIRM replayed too
    b.handle(1.0, Datagram("A", seen["keepalive"][0]))
    assert b.counters["replay"] == 3


def test_duplicate_init_in_flight_is_dropped(world: World) -> None:
    a = world.endpoint("alpha", seed=30)
    b = world.endpoint("beta", seed=31)
    a.add_peer("B", cert_der=world.creds["beta"].cert.der)
    init = sends(a.connect(0.0, "B"))
    first = [s for d in init for s in sends(b.handle(0.0, Datagram("A", d)))]
    assert first
    again = [s for d in init for s in sends(b.handle(0.0, Datagram("A", d)))]
    assert not again and b.counters["replay"] == 1  # before any decapsulation


def test_unknown_fingerprint_then_full_certificate_on_retry(world: World) -> None:
    """A responder that lost its cache (restart) recovers on the initiator's retry."""
    a, _b, _ = handshake(world)
    b2 = world.endpoint("beta", seed=22)  # beta restarted: empty caches
    init = sends(a.connect(1.0, "B"))  # a rekey: fingerprint only
    out: list[Action] = []
    for d in init:
        out += b2.handle(1.0, Datagram("A", d))
    assert b2.counters["unknown_fingerprint"] == 1 and not sends(out)
    soon = a.connect(1.0, "B")  # too soon for another INIT: only the retry is moved up
    assert [type(x) for x in soon] == [SetTimer]
    retry = sends(a.handle(5.0, Timer(ChannelTimer("x0t.secure", ChannelTimerKind.HANDSHAKE, "B"))))
    resp = [s for d in retry for s in sends(b2.handle(5.0, Datagram("A", d)))]
    assert resp
    acts = [x for d in resp for x in a.handle(5.0, Datagram("B", d))]
    assert any(isinstance(x, Event) and x.kind == "session_rekeyed" for x in acts)


def test_simultaneous_open_tie_break_is_deterministic(world: World) -> None:
    a = world.endpoint("alpha", seed=40)
    b = world.endpoint("beta", seed=41)
    a.add_peer("B", cert_der=world.creds["beta"].cert.der)
    b.add_peer("A", cert_der=world.creds["alpha"].cert.der)
    ia, ib = sends(a.connect(0.0, "B")), sends(b.connect(0.0, "A"))
    out_b = [x for d in ia for x in b.handle(0.01, Datagram("A", d))]
    out_a = [x for d in ib for x in a.handle(0.01, Datagram("B", d))]
    lost = [ep for ep in (a, b) if ep.counters.get("simultaneous_open_lost")]
    assert len(lost) == 1
    winner = lost[0]
    loser, loser_out = (b, out_b) if winner is a else (a, out_a)
    assert sends(loser_out)  # the loser answers
    # ... but an INIT authenticates nobody, so it abandons nothing: its own attempt runs
    # on until a session the winner has authenticated makes it moot.
    assert not any(isinstance(x, Event) and x.kind == "handshake_abandoned" for x in loser_out)
    assert loser.peer("B" if loser is a else "A").handshaking  # type: ignore[union-attr]
    # the lower static public key wins
    keys = {ep: world.creds[ep.name].cert.static_key.to_bytes() for ep in (a, b)}
    assert keys[winner] < keys[b if winner is a else a]


def test_static_key_mismatch_is_refused(world: World) -> None:
    with pytest.raises(Exception, match="does not match"):
        SecureEndpoint(
            world.creds["alpha"].cert.der,
            HybridPrivateKey.generate(),
            world.verifier,
            wall_offset=0.0,
            trust_domain="x0tta6bl4.mesh",
        )


def test_init_with_low_order_x25519_is_dropped(world: World) -> None:
    b = world.endpoint("beta", seed=50)
    a = world.endpoint("alpha", seed=51)
    a.add_peer("B", cert_der=world.creds["beta"].cert.der)
    init = whole(sends(a.connect(0.0, "B")))
    # Zero ct_s's X25519 part (a low-order point), recompute mac1: decapsulation must fail.
    off = 8 + C.EPHEMERAL_SIZE
    body = init[:off] + bytes(32) + init[off + 32 : -32]
    evil = add_macs(body, mac1_key(world.creds["beta"].cert.static_key.to_bytes()), None)
    out = b.handle(0.0, Datagram("A", evil))
    assert b.counters["decrypt_failed"] == 1 and not sends(out)
