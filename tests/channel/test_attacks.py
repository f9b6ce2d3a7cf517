"""Attacks from the protocol review, each against the public API, each failing on the code
as it was before the fix (findings 1-7 of the secure-channel hardening)."""

from __future__ import annotations

import pytest

from tests.channel.helpers import Net, World, make_world, sends
from x0tta6bl4.channel import constants as C
from x0tta6bl4.channel.cookie import mac1_key
from x0tta6bl4.channel.endpoint import SecureEndpoint
from x0tta6bl4.channel.fragment import Reassembler
from x0tta6bl4.channel.handshake import Initiator
from x0tta6bl4.channel.wire import HDR_CERT_REQUEST, CertRequest, decode_cookie, encode
from x0tta6bl4.crypto.kdf import mac16
from x0tta6bl4.sansio import Action, Datagram, Deliver


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("attacks"), ["alpha", "beta", "gamma", "mallory"])


def delivered(actions: list[Action]) -> list[bytes]:
    return [a.payload for a in actions if isinstance(a, Deliver)]


def spoofed_init(
    world: World, claimed: str, to: str, *, timestamp: int, cert: bool = True
) -> list[bytes]:
    """An INIT claiming to be ``claimed`` (its public certificate), made with mallory's
    keys: anyone can build one. Fragmented for the wire as a sender would."""
    from x0tta6bl4.channel.fragment import split

    victim, target = world.creds[claimed], world.creds[to]
    init = Initiator(
        static_private=world.creds["mallory"].static_private,
        fingerprint=victim.cert.fingerprint,
        responder_static=target.cert.static_key,
        responder_fingerprint=target.cert.fingerprint,
        sender_index=0x5EED,
    )
    if cert:
        msg = init.create_init(timestamp=timestamp, cert_der=victim.cert.der)
    else:
        msg = init.create_init(timestamp=timestamp, fingerprint=victim.cert.fingerprint)
    return split(msg, timestamp & 0xFFFF_FFFF, C.DEFAULT_MAX_DATAGRAM)


# --- finding 1: every secret from the OS CSPRNG ---------------------------------------


def _untemper(y: int) -> int:
    """Invert MT19937's output tempering (to clone a generator from its outputs)."""
    y ^= y >> 18
    y ^= (y << 15) & 0xEFC60000
    t = y
    for _ in range(5):
        t = y ^ ((t << 7) & 0x9D2C5680)
    y = t
    t = y
    for _ in range(3):
        t = y ^ (t >> 11)
    return t & 0xFFFFFFFF


def _certreq(trust_domain: str, request_id: int) -> bytes:
    from x0tta6bl4.channel.cookie import ZERO_MAC, certreq_check_key

    body = HDR_CERT_REQUEST + request_id.to_bytes(4, "little")
    check = mac16(certreq_check_key(trust_domain), body + ZERO_MAC)
    return encode(CertRequest(request_id, ZERO_MAC, check))


def test_cookie_nonces_do_not_let_anyone_clone_the_secret_generator(world: World) -> None:
    """The review answered 208 CERT_REQUESTs, untempered the 624 Mersenne Twister words in
    the COOKIE nonces, and predicted the next ephemeral key. Try it: predict the next
    nonce from 624 observed words."""
    import random

    b = world.endpoint("beta", seed=1)
    words: list[int] = []
    nonces: list[bytes] = []
    for i in range(1, 212):
        out = sends(b.handle(0.0, Datagram(("198.18.9.9", 9), _certreq("x0tta6bl4.mesh", i))))
        nonces.append(decode_cookie(out[0]).nonce)
    # The first reply also draws the cookie secret: start from the second nonce.
    for nonce in nonces[1:209]:
        words += [int.from_bytes(nonce[j : j + 4], "little") for j in (0, 4, 8)]
    clone = random.Random()
    clone.setstate((3, (*[_untemper(w) for w in words[:624]], 624), None))
    predicted = clone.randbytes(12)
    assert predicted != nonces[209]
    assert len(set(nonces)) == len(nonces)


def test_endpoints_built_alike_draw_unrelated_secrets(world: World) -> None:
    """Two endpoints built identically (as the runtime builds them, even with the same
    jitter seed) produce unrelated ephemeral keys, indices and message ids."""
    inits = []
    for _ in range(2):
        a = world.endpoint("alpha", seed=7)
        a.add_peer("B", cert_der=world.creds["beta"].cert.der)
        inits.append(sends(a.connect(0.0, "B")))
    first, second = inits
    assert first[0][4:8] != second[0][4:8]  # fragment message ids
    eph = slice(C.FRAGMENT_HEADER_SIZE + 8, C.FRAGMENT_HEADER_SIZE + 8 + 64)
    assert first[0][eph] != second[0][eph]  # ephemeral public keys


# --- finding 2: unauthenticated INITs change nothing ----------------------------------


def test_spoofed_inits_cannot_evict_a_real_handshake(world: World) -> None:
    """(a) Four INITs spoofed as alpha, sent between beta's RESP and alpha's first packet,
    used to evict alpha's real (unconfirmed) session: alpha believed the link was up and
    beta dropped everything as unknown_index."""
    a = world.endpoint("alpha", seed=2)
    b = world.endpoint("beta", seed=3)
    a.add_peer("B", cert_der=world.creds["beta"].cert.der)
    b.add_peer("A", cert_der=world.creds["alpha"].cert.der)
    init = sends(a.connect(0.0, "B"))
    resp = [d for x in init for d in sends(b.handle(0.0, Datagram("A", x)))]
    for k in range(8):  # from alpha's address, later timestamps than hers
        for frag in spoofed_init(world, "alpha", "beta", timestamp=2**62 + k):
            b.handle(0.01, Datagram("A", frag))
    first = [d for x in resp for d in sends(a.handle(0.02, Datagram("B", x)))]
    for x in first:
        b.handle(0.03, Datagram("A", x))
    info = b.peer("A")
    assert info is not None and info.established
    got = [
        p
        for x in sends(a.send(0.04, "B", b"still here"))
        for p in delivered(b.handle(0.05, Datagram("A", x)))
    ]
    assert got == [b"still here"]


def test_a_spoofed_init_does_not_cancel_a_pending_initiation(world: World) -> None:
    """(b) One INIT spoofed as the peer made the side with the higher static key abandon
    its own initiation; its queued message was never delivered."""
    keys = {n: world.creds[n].cert.static_key.to_bytes() for n in ("alpha", "beta")}
    hi, lo = sorted(("alpha", "beta"), key=lambda n: keys[n], reverse=True)
    n = Net(seed=5)
    sender = n.add("S", world.endpoint(hi, seed=6))
    n.add("R", world.endpoint(lo, seed=7))
    sender.add_peer("R", cert_der=world.creds[lo].cert.der)
    first_init_dropped: list[bytes] = []

    def tap(src: object, dst: object, data: bytes) -> bytes | None:
        if src == "S" and not first_init_dropped and n.now < 0.1:
            first_init_dropped.append(data)
            return None  # the sender's first INIT is lost; its retry is pending
        return data

    n.tap = tap
    n.send("S", "R", b"queued before the attack")
    n.run(0.05)
    for frag in spoofed_init(world, lo, hi, timestamp=2**62):
        n.inject("R", "S", frag)  # spoofed as the receiver, to the sender
    n.run(5.0)
    assert first_init_dropped
    assert [p for _, p in n.delivered["R"]] == [b"queued before the attack"]


# --- finding 3: the peer table ------------------------------------------------------


def test_spoofed_inits_create_no_peers_and_cannot_lock_out_real_ones(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every INIT that decrypted made a peer entry for its source, forever: spoofed
    sources filled the table and a real new peer got ``peer_limit``."""
    monkeypatch.setattr(C, "MAX_PEERS", 16)
    b = world.endpoint("beta", seed=8)
    for i in range(40):
        for frag in spoofed_init(world, "gamma", "beta", timestamp=2**62 + i):
            b.handle(0.1 * i, Datagram(("198.18.7.1", 1000 + i), frag))
    assert b.peers() == [] and b.sessions_in_use == 0
    n = Net(seed=9)
    n.add("B", b)
    a = n.add("A", world.endpoint("alpha", seed=10))
    n.now = 5.0
    n.send("A", "B", b"a real newcomer")
    n.run(8.0)
    assert [p for _, p in n.delivered["B"]] == [b"a real newcomer"]
    assert "peer_limit" not in b.counters
    assert a.peer("B") is not None


def test_idle_inbound_peers_are_forgotten(world: World) -> None:
    n = Net(seed=11)
    a = n.add("A", world.endpoint("alpha", seed=12))
    b = n.add("B", world.endpoint("beta", seed=13))
    n.send("A", "B", b"hello")
    n.run(1.0)
    assert b.peers() == ["A"]  # made by a confirmed handshake
    n.run(C.REJECT_AFTER_TIME + 5.0)  # nothing more is said: the sessions expire
    assert b.peers() == [] and b.sessions_in_use == 0
    assert a.peers() == ["B"]  # alpha declared beta itself (send): it keeps the entry


# --- finding 4: cheap CPU drain -------------------------------------------------------


class CountingVerifier:
    """The real verifier, counting how often the endpoint asks it."""

    def __init__(self, world: World) -> None:
        self.inner = world.verifier
        self.calls = 0

    def __call__(self, der: bytes, now: float) -> object:
        self.calls += 1
        return self.inner(der, now)


def _bad_signature_cert(world: World) -> bytes:
    der = bytearray(world.creds["gamma"].cert.der)
    der[-10] ^= 1  # inside the CA's signature
    return bytes(der)


def test_a_replayed_bogus_init_costs_no_decapsulation_and_no_verification(
    world: World,
) -> None:
    verifier = CountingVerifier(world)
    c = world.creds["beta"]
    b = SecureEndpoint(
        c.cert.der,
        c.static_private,
        verifier,
        wall_offset=1_800_000_000.0,
        trust_domain="x0tta6bl4.mesh",
    )
    init = Initiator(
        static_private=world.creds["mallory"].static_private,
        fingerprint=bytes(32),
        responder_static=c.cert.static_key,
        responder_fingerprint=c.cert.fingerprint,
        sender_index=1,
    )
    from x0tta6bl4.channel.fragment import split

    msg = init.create_init(timestamp=1, cert_der=_bad_signature_cert(world))
    for _ in range(10):
        for frag in split(msg, 1, 1280):
            b.handle(0.0, Datagram("M", frag))
    assert b.counters["cert_rejected:bad_signature"] == 1
    assert b.counters["replay"] == 9
    # Fresh INITs carrying the same bad certificate: decapsulated, but verified once.
    for i in range(10):
        fresh = Initiator(
            static_private=world.creds["mallory"].static_private,
            fingerprint=bytes(32),
            responder_static=c.cert.static_key,
            responder_fingerprint=c.cert.fingerprint,
            sender_index=2 + i,
        ).create_init(timestamp=2 + i, cert_der=_bad_signature_cert(world))
        for frag in split(fresh, 2 + i, 1280):
            b.handle(0.0, Datagram("M", frag))
    assert b.counters["cert_rejected:bad_signature"] == 11
    assert verifier.calls == 1


def test_a_cookie_is_not_a_free_pass_under_load(world: World) -> None:
    """An address holding a valid cookie had every INIT answered (300 of 300 in 0.3 s)."""
    a = world.endpoint("alpha", seed=14)
    b = world.endpoint("beta", seed=15)
    a.add_peer("B", cert_der=world.creds["beta"].cert.der)
    b.set_under_load(True)
    t = 0.0
    # get a cookie the honest way: INIT -> COOKIE
    for x in sends(a.connect(t, "B")):
        for y in sends(b.handle(t, Datagram("A", x))):
            a.handle(t, Datagram("B", y))
    answered = 0
    for i in range(300):
        t = i * 0.001
        out = a.connect(t + 1.0, "B")  # forced fresh INITs, each with mac2
        a._peers["B"].attempt.last_sent = -1.0  # type: ignore[union-attr]
        for x in sends(out):
            answered += len(sends(b.handle(t, Datagram("A", x)))) > 0
    assert b.counters.get("bad_mac2", 0) == 0
    burst, rate = C.PER_SOURCE_INIT_BURST, C.PER_SOURCE_INIT_RATE
    assert answered <= burst + rate * 0.3 + 1
    assert b.counters["rate_limited"] >= 280


# --- finding 5: initiator identity hiding ----------------------------------------------


def test_resp_does_not_name_the_initiator_to_an_observer(world: World) -> None:
    """RESP's mac1 was keyed by the initiator's static key, and every certificate can be
    fetched: trying each candidate's key named the initiator."""
    a = world.endpoint("alpha", seed=16)
    b = world.endpoint("beta", seed=17)
    a.add_peer("B", cert_der=world.creds["beta"].cert.der)
    init = sends(a.connect(0.0, "B"))
    resp = [d for x in init for d in sends(b.handle(0.0, Datagram("A", x)))]
    r = Reassembler()
    message = next(m for d in resp if (m := r.add(0.0, "B", d).message) is not None)
    body, mac1 = message[: -2 * C.MAC_SIZE], message[-2 * C.MAC_SIZE : -C.MAC_SIZE]
    for name, cred in world.creds.items():
        key = mac1_key(cred.cert.static_key.to_bytes())
        assert mac16(key, body) != mac1, f"RESP's mac1 names {name}"


# --- finding 6: fragments ---------------------------------------------------------------


def test_planted_partials_under_predicted_message_ids_do_not_block_a_handshake(
    world: World,
) -> None:
    """Message ids were sequential: from one fragment header an attacker knew the next
    ids and planted partials under them from the victim's address."""
    from x0tta6bl4.channel.wire import Fragment

    a = world.endpoint("alpha", seed=18)
    b = world.endpoint("beta", seed=19)
    a.add_peer("B", cert_der=world.creds["beta"].cert.der)
    seen = sends(a.connect(0.0, "B"))  # observed, then lost
    last_id = int.from_bytes(seen[0][4:8], "little")
    for k in range(1, 5):
        planted = encode(Fragment((last_id + k) & 0xFFFFFFFF, 0, 2, 3000, bytes(100)))
        b.handle(0.1, Datagram("A", planted))
    retry = sends(a.connect(1.0, "B"))
    resp = [d for x in retry for d in sends(b.handle(1.0, Datagram("A", x)))]
    confirm = [d for x in resp for d in sends(a.handle(1.0, Datagram("B", x)))]
    for x in confirm:
        b.handle(1.0, Datagram("A", x))
    info = b.peer("A")
    assert info is not None and info.established


def test_spoofed_first_fragments_do_not_evict_a_real_handshake(world: World) -> None:
    """64 spoofed first fragments from other sources evicted a real partial INIT."""
    a = world.endpoint("alpha", seed=20)
    b = world.endpoint("beta", seed=21)
    a.add_peer("B", cert_der=world.creds["beta"].cert.der)
    init = sends(a.connect(0.0, "B"))
    b.handle(0.0, Datagram("A", init[0]))
    from x0tta6bl4.channel.fragment import split

    for i in range(C.MAX_REASSEMBLIES_UNKNOWN + 40):
        b.handle(0.001, Datagram(("198.18.5.5", i), split(bytes(3000), i, 1280)[0]))
    resp = [d for x in init[1:] for d in sends(b.handle(0.002, Datagram("A", x)))]
    assert resp, "beta lost alpha's INIT"


# --- finding 7: unknown key share --------------------------------------------------------


def test_a_certificate_for_another_name_with_betas_key_yields_no_session(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A certificate "mallory" carrying beta's static key made alpha believe she talked to
    mallory while beta received her messages as from alpha. The CA now refuses such a
    certificate; a CA that lost its records could still issue one, so the handshake must
    not depend on that: both certificates' fingerprints are in the transcript."""
    from x0tta6bl4.identity.ca import INVENTORY_FILE

    w = make_world(tmp_path_factory.mktemp("uks"), ["alpha", "beta"])
    beta = w.creds["beta"].cert
    (w.ca.directory / INVENTORY_FILE).unlink()  # the CA forgets what it issued
    fake = w.ca.issue(
        "mallory", ["role:test"], beta.static_key, beta.signing_key, now=1_800_000_000.0
    )
    a = w.endpoint("alpha", seed=22)
    b = w.endpoint("beta", seed=23)
    a.add_peer("B", cert_der=fake.der)
    init = sends(a.connect(0.0, "B"))
    resp = [d for x in init for d in sends(b.handle(0.0, Datagram("A", x)))]
    # beta can decapsulate (the INIT was encrypted to its key) but alpha's transcript
    # names the "mallory" certificate, so the sealed part does not open for beta
    assert not resp and b.counters.get("decrypt_failed") == 1
    assert b.peers() == []
    assert not a.peer("B").established  # type: ignore[union-attr]


# --- NO_SESSION: unauthenticated, so it may cost a handshake, never a session -----------


def _one_way_pair(world: World, seed: int) -> tuple[Net, SecureEndpoint, SecureEndpoint]:
    n = Net(seed=seed)
    a = n.add("A", world.endpoint("alpha", seed=seed))
    b = n.add("B", world.endpoint("beta", seed=seed + 1))
    n.send("A", "B", b"hello")  # travels in CONFIRM
    n.run(1.0)
    n.send("A", "B", b"and DATA")  # plain DATA on the confirmed session
    n.run(1.5)
    return n, a, b


def test_forged_no_session_hints_change_nothing(world: World) -> None:
    """A NO_SESSION must echo a packet alpha really sent on its current session: a guessed
    index, counter or tag is dropped and starts nothing."""
    from x0tta6bl4.channel.wire import NoSession

    n, a, _b = _one_way_pair(world, 40)
    sent = [d for t, src, _, d in n.sent if src == "A" and d[1] == C.MSG_DATA]
    real = NoSession.echo(sent[-1])
    forged = [
        NoSession(real.receiver_index ^ 1, real.counter, real.tag),  # another index
        NoSession(real.receiver_index, real.counter + 5, real.tag),  # not sent yet
        NoSession(real.receiver_index, real.counter, bytes(16)),  # wrong tag
        NoSession(real.receiver_index, 0, real.tag),  # a tag from another packet
    ]
    for msg in forged:
        for src in ("B", "M"):
            assert not sends(a.handle(n.now, Datagram(src, encode(msg))))
    assert a.counters["unmatched_no_session"] == 2 * len(forged)
    info = a.peer("B")
    assert info is not None and info.established and not info.handshaking
    assert a.counters.get("no_session_acted", 0) == 0


def test_replayed_no_session_starts_at_most_one_handshake_per_interval(world: World) -> None:
    """Someone who saw one of alpha's packets can make a valid NO_SESSION and repeat it:
    alpha handshakes at most once per NO_SESSION_HANDSHAKE_INTERVAL, keeps its session
    (data flows on it throughout) and spends no KEM work on the rest."""
    import time

    from x0tta6bl4.channel.wire import NoSession

    n, a, _b = _one_way_pair(world, 42)
    sent = [d for _, src, _, d in n.sent if src == "A" and d[1] == C.MSG_DATA]
    hint = encode(NoSession.echo(sent[-1]))
    session = a._peers["B"].current
    t0 = n.now
    inits = 0
    cpu = time.process_time()
    for i in range(20_000):
        now = t0 + i * 0.0002  # 4 s of 5,000 forged hints per second
        inits += len([d for d in sends(a.handle(now, Datagram("B", hint))) if d[1] != C.MSG_DATA])
    per_hint = (time.process_time() - cpu) / 20_000
    acted = a.counters.get("no_session_acted", 0)
    assert 1 <= acted <= 4 / C.NO_SESSION_HANDSHAKE_INTERVAL + 1
    assert a.counters["no_session_rate_limited"] >= 20_000 - acted - 10
    assert a._peers["B"].current is session and not session.wiped  # nothing torn down
    assert per_hint < 0.001  # a dictionary look-up and a compare, not a handshake
    n.run(t0 + 4.0)
    n.send("A", "B", b"still flowing")
    n.run(t0 + 5.0)
    assert [p for _, p in n.delivered["B"]][-1:] == [b"still flowing"]
    assert inits > 0  # the handshakes that were allowed did go out


def test_unknown_index_floods_get_bounded_no_session_answers(world: World) -> None:
    """A flood of DATA with unknown indices from spoofed sources: answers only to a
    repeated index, never larger than the packet, rate-limited per source, and the
    table behind it is bounded."""
    b = world.endpoint("beta", seed=44)
    answered = 0
    for i in range(5_000):
        src = ("198.18.3.3", i % 50)
        data = bytes((1, C.MSG_DATA, 0, 0)) + (i % 7).to_bytes(4, "little") + bytes(24)
        out = sends(b.handle(i * 0.001, Datagram(src, data)))
        assert all(len(x) <= len(data) for x in out)
        answered += len(out)
    # 50 sources over 5 s, each at most its burst plus its rate
    assert answered <= 50 * (C.NO_SESSION_BURST + 5 * C.NO_SESSION_RATE)
    assert b.peers() == [] and b.sessions_in_use == 0
    assert len(b._data._no_session) <= C.MAX_RATE_LIMITED_SOURCES


# --- FRAGMENT_NACK and kept messages -------------------------------------------------------


def test_nacks_resend_only_our_own_fragments_to_their_destination_a_bounded_number_of_times(
    world: World,
) -> None:
    from x0tta6bl4.channel.wire import FragmentNack

    a = world.endpoint("alpha", seed=46)
    a.add_peer("B", cert_der=world.creds["beta"].cert.der)
    init = sends(a.connect(0.0, "B"))
    message_id = int.from_bytes(init[0][4:8], "little")
    everything = (1 << len(init)) - 1
    # an id we never used, and our id from another address: nothing
    assert not sends(a.handle(0.1, Datagram("B", encode(FragmentNack(message_id ^ 1, 1)))))
    assert not sends(a.handle(0.1, Datagram("M", encode(FragmentNack(message_id, 1)))))
    assert a.counters["unknown_message"] == 2
    resent = 0
    for i in range(100):  # a replayed NACK asking for everything
        out = sends(
            a.handle(0.1 + i * 0.001, Datagram("B", encode(FragmentNack(message_id, everything))))
        )
        assert set(out) <= set(init)
        resent += len(out)
    assert resent == C.MAX_RESENDS_PER_MESSAGE * len(init)
    assert a.counters["resend_budget"] == 100 - C.MAX_RESENDS_PER_MESSAGE
    # and after SENT_MESSAGE_TTL nothing is kept
    assert not sends(
        a.handle(C.SENT_MESSAGE_TTL + 1, Datagram("B", encode(FragmentNack(message_id, 1))))
    )


def test_a_spoofed_fragment_draws_fewer_nack_bytes_than_it_brought(world: World) -> None:
    """The receiver of a lone (spoofed) first fragment NACKs its claimed source, but never
    with more bytes than that source sent: no amplification."""
    from x0tta6bl4.channel.fragment import split
    from x0tta6bl4.channel.timers import ChannelTimer, ChannelTimerKind
    from x0tta6bl4.sansio import Timer

    b = world.endpoint("beta", seed=47)
    for size in (13, 40, 1280):
        src = ("198.18.4.4", size)
        frag = split(bytes(3000), size, 1280)[0][:size]
        b.handle(0.0, Datagram(src, frag))
        nacked = 0
        key = ChannelTimer("x0t.secure", ChannelTimerKind.NACK, src, size)
        for k in range(200):  # fire the NACK timer far more often than it asks
            nacked += sum(len(d) for d in sends(b.handle(0.01 * (k + 1), Timer(key))))
        brought = max(0, len(frag) - C.FRAGMENT_HEADER_SIZE)
        assert nacked <= max(brought, 0)
        assert nacked <= C.MAX_NACKS_PER_MESSAGE * C.FRAGMENT_NACK_SIZE


def test_a_flood_of_init_answers_cannot_push_out_our_own_kept_messages(world: World) -> None:
    """Our RESPs to unauthenticated INITs sit in their own pool: a flood of spoofed INITs
    leaves our own INIT's fragments resendable."""
    from x0tta6bl4.channel.wire import FragmentNack

    b = world.endpoint("beta", seed=48)
    b.add_peer("G", cert_der=world.creds["gamma"].cert.der)
    own = sends(b.connect(0.0, "G"))
    own_id = int.from_bytes(own[0][4:8], "little")
    for i in range(C.MAX_SENT_ANSWERS + 20):
        for frag in spoofed_init(world, "alpha", "beta", timestamp=2**62 + i):
            b.handle(0.5, Datagram(("198.18.6.6", i), frag))
    again = sends(b.handle(1.0, Datagram("G", encode(FragmentNack(own_id, 1)))))
    assert again == [own[0]]
