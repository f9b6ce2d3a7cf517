"""SecureEndpoint end to end over a lossy in-memory pipe, in virtual time."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.channel.helpers import WALL, Net, World, make_world
from x0tta6bl4.channel import constants as C
from x0tta6bl4.channel.cookie import CookieJar, LoadMeter
from x0tta6bl4.channel.endpoint import SecureEndpoint, handshake_wire_cost
from x0tta6bl4.channel.timers import ChannelTimer, ChannelTimerKind
from x0tta6bl4.channel.wire import header
from x0tta6bl4.crypto.entropy import SYSTEM_SECRETS
from x0tta6bl4.errors import MessageTooLarge
from x0tta6bl4.identity import make_verifier
from x0tta6bl4.sansio import AppSend, Datagram, Deliver, Event, Send, Timer


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("ep"), ["alpha", "beta", "gamma"])


def pair(world: World, seed: int = 0, **net: float) -> tuple[Net, SecureEndpoint, SecureEndpoint]:
    n = Net(seed=seed, **net)  # type: ignore[arg-type]
    a = n.add("A", world.endpoint("alpha", seed=seed * 2 + 1))
    b = n.add("B", world.endpoint("beta", seed=seed * 2 + 2))
    return n, a, b


def traffic(n: Net, until: float, every: float, tag: str = "") -> dict[str, list[bytes]]:
    """Both sides send a numbered message every ``every`` seconds until ``until``."""
    sent: dict[str, list[bytes]] = {"A": [], "B": []}
    i = 0
    t = n.now
    while t < until:
        for src, dst in (("A", "B"), ("B", "A")):
            m = f"{tag}{src}{i}".encode()
            sent[src].append(m)
            n.send(src, dst, m)
        i += 1
        t += every
        n.run(t)
    return sent


def payloads(n: Net, addr: str) -> list[bytes]:
    return [p for _, p in n.delivered[addr]]


def no_internal_errors(*eps: SecureEndpoint) -> None:
    for ep in eps:
        assert not [k for k in ep.counters if k == "internal_error" or k.startswith("error:")]


def test_first_contact_handshake_and_data_both_ways_over_lossy_pipe(world: World) -> None:
    n, a, b = pair(world, seed=1, loss=0.1, dup=0.05, jitter=0.02)
    sent = traffic(n, until=20.0, every=0.1)
    n.run(25.0)
    got_b, got_a = payloads(n, "B"), payloads(n, "A")
    # never duplicated (the pipe duplicates; the replay window does not let them through)
    assert len(got_b) == len(set(got_b)) and len(got_a) == len(set(got_a))
    assert set(got_b) <= set(sent["A"]) and set(got_a) <= set(sent["B"])
    assert len(got_b) > 0.8 * len(sent["A"]) and len(got_a) > 0.8 * len(sent["B"])
    assert {src for src, _ in n.delivered["B"]} == {"alpha"}
    assert {src for src, _ in n.delivered["A"]} == {"beta"}
    ia, ib = a.peer("B"), b.peer("A")
    assert ia is not None and ib is not None
    assert ia.established and ib.established
    assert ia.identity is not None and ia.identity.name == "beta"
    assert ib.identity is not None and ib.identity.name == "alpha"
    assert a.addr_of("beta") == "B" and b.addr_of("alpha") == "A" and a.addr_of("nobody") is None
    assert a.peers() == ["B"]
    assert n.kinds("A").count("handshake_complete") >= 1
    no_internal_errors(a, b)


def test_rekey_under_traffic_loses_nothing(world: World) -> None:
    n, a, b = pair(world, seed=2, dup=0.1, jitter=0.03)  # reordered and duplicated, no loss
    sent = traffic(n, until=400.0, every=0.5)
    n.run(401.0)
    assert sorted(payloads(n, "B")) == sorted(sent["A"])
    assert sorted(payloads(n, "A")) == sorted(sent["B"])
    ia, ib = a.peer("B"), b.peer("A")
    assert ia is not None and ib is not None
    assert ia.rekeys >= 3 and ib.rekeys >= 3
    assert ia.session_age is not None and ia.session_age < C.REKEY_AFTER_TIME + 15
    assert n.kinds().count("session_rekeyed") >= 6
    # old sessions were dropped (and wiped): at most current + previous + stragglers
    assert a.sessions_in_use <= 3 and b.sessions_in_use <= 3
    no_internal_errors(a, b)


def test_rekey_under_lossy_traffic_loses_only_what_the_pipe_drops(world: World) -> None:
    n, a, b = pair(world, seed=24, loss=0.05, dup=0.05, jitter=0.03)
    traffic(n, until=300.0, every=0.5)
    n.run(301.0)

    def data(rows: list[tuple[float, object, object, bytes]], src: str) -> int:
        return sum(
            1
            for _, s, _, d in rows
            if s == src
            and (
                (d[1] == C.MSG_DATA and len(d) > C.DATA_OVERHEAD)
                or (d[1] == C.MSG_CONFIRM and len(d) > C.HEADER_SIZE + C.BISCUIT_SIZE + 32)
            )
        )

    # every payload-carrying DATA datagram the pipe did not drop was delivered exactly once
    assert len(payloads(n, "B")) == data(n.sent, "A") - data(n.lost, "A")
    assert len(payloads(n, "A")) == data(n.sent, "B") - data(n.lost, "B")
    assert n.kinds().count("session_rekeyed") >= 4
    no_internal_errors(a, b)


def test_one_way_traffic_rekeys(world: World) -> None:
    n, a, _b = pair(world, seed=3)
    n.connect("A", "B")  # alpha initiates, then only beta talks
    n.run(1.0)
    t = 1.0
    sent = []
    while t < 400:
        m = f"b{t}".encode()
        sent.append(m)
        n.send("B", "A", m)
        t += 1.0
        n.run(t)
    assert sorted(payloads(n, "A")) == sorted(sent)
    ia = a.peer("B")
    assert ia is not None and ia.rekeys >= 2


def test_simultaneous_open_yields_one_session_both_agree(world: World) -> None:
    for preshared in (True, False):
        n, a, b = pair(world, seed=4)
        if preshared:
            a.add_peer("B", cert_der=world.creds["beta"].cert.der)
            b.add_peer("A", cert_der=world.creds["alpha"].cert.der)
        n.send("A", "B", b"from a")
        n.send("B", "A", b"from b")  # the same instant
        n.run(3.0)
        pa, pb = a._peers["B"], b._peers["A"]
        assert pa.current is not None and pb.current is not None
        assert pa.current.local_index == pb.current.remote_index
        assert pb.current.local_index == pa.current.remote_index
        assert pa.previous is None and pb.previous is None  # exactly one session
        assert n.kinds("A").count("handshake_complete") == 1
        assert n.kinds("B").count("handshake_complete") == 1
        assert (
            a.counters.get("simultaneous_open_lost", 0)
            + b.counters.get("simultaneous_open_lost", 0)
            == 1
        )
        assert payloads(n, "A") == [b"from b"] and payloads(n, "B") == [b"from a"]


def test_cookie_under_load_then_completes(world: World) -> None:
    n, a, b = pair(world, seed=5)
    a.add_peer("B", cert_der=world.creds["beta"].cert.der)
    b.set_under_load(True)
    n.send("A", "B", b"hello")
    n.run(0.05)  # INIT there, COOKIE back
    assert b.counters["cookie_sent"] == 1
    assert b.sessions_in_use == 0 and not b._peers
    assert a.counters["cookie_received"] == 1
    n.run(3.0)  # the retry carries mac2 and is accepted although beta is still loaded
    assert payloads(n, "B") == [b"hello"]
    assert b.counters["cookie_sent"] == 1
    info = b.peer("A")
    assert info is not None and info.established


def test_load_meter_and_automatic_cookie(world: World) -> None:
    m = LoadMeter(2.0)
    assert [m.hit(0.0) for _ in range(3)] == [False, False, True]
    assert not m.hit(1.0)  # refilled
    m.forced = False
    assert not m.hit(1.0) and not m.hit(1.0)
    n = Net(seed=6)
    b = n.add("B", world.endpoint("beta", seed=60, under_load_threshold=1.0))
    a = n.add("A", world.endpoint("alpha", seed=61))
    g = n.add("G", world.endpoint("gamma", seed=62))
    for x in (a, g):
        x.add_peer("B", cert_der=world.creds["beta"].cert.der)
    n.connect("A", "B")
    n.connect("G", "B")
    n.run(5.0)
    assert b.counters["cookie_sent"] == 1
    assert a.peer("B").established and g.peer("B").established  # type: ignore[union-attr]


def test_cookie_jar_expiry_and_bound() -> None:
    jar = CookieJar(max_entries=2)
    jar.put(0.0, "x", b"1" * 16)
    jar.put(0.0, "y", b"2" * 16)
    jar.put(0.0, "z", b"3" * 16)
    assert len(jar) == 2 and jar.get(0.0, "x") is None
    assert jar.get(C.COOKIE_VALIDITY, "y") is None
    assert jar.get(1.0, "z") == b"3" * 16


def test_retry_backoff_then_give_up(world: World) -> None:
    n = Net(seed=7)
    a = n.add("A", world.endpoint("alpha", seed=70))
    a.add_peer("nowhere", cert_der=world.creds["beta"].cert.der)
    for i in range(C.MAX_QUEUED_PER_PEER + 5):
        n.send("A", "nowhere", b"%d" % i)
    assert a.counters["queue_overflow"] == 5
    n.run(C.REKEY_ATTEMPT_TIME + 5)
    inits = sorted({t for t, src, _, d in n.sent if d[1] in (C.MSG_INIT, C.MSG_FRAGMENT)})
    gaps = [round(b - a_, 3) for a_, b in itertools.pairwise(inits)]
    assert C.HANDSHAKE_RETRY_BASE <= gaps[0] <= C.HANDSHAKE_RETRY_BASE * 1.2
    assert max(gaps) <= C.HANDSHAKE_RETRY_CAP * (1 + C.HANDSHAKE_RETRY_JITTER) + 1e-9
    failed = [e for _, _, e in n.events if e.kind == "handshake_failed"]
    assert len(failed) == 1 and failed[0].fields["reason"] == "timeout"
    info = a.peer("nowhere")
    assert info is not None and info.failures == 1 and not info.handshaking
    assert a.counters["queue_dropped"] == C.MAX_QUEUED_PER_PEER
    # a later success resets the consecutive-failure count
    n.add("nowhere", world.endpoint("beta", seed=71))
    n.connect("A", "nowhere")
    n.run(n.now + 2)
    info = a.peer("nowhere")
    assert info is not None and info.failures == 0 and info.established


def test_healing_reconnect_restarts_a_running_attempt(world: World) -> None:
    n = Net(seed=8)
    a = n.add("A", world.endpoint("alpha", seed=80))
    a.add_peer("B", cert_der=world.creds["beta"].cert.der)
    n.connect("A", "B")
    n.run(20.0)  # nobody there yet
    n.add("B", world.endpoint("beta", seed=81))  # the link heals
    n.connect("A", "B")  # an INIT at once, or one retry base after the last one sent
    n.run(20.0 + C.HANDSHAKE_RETRY_BASE + 0.05)
    info = a.peer("B")
    assert info is not None and info.established and info.handshakes == 1


def test_lost_keepalive_responder_initiates_after_grace(world: World) -> None:
    n, a, b = pair(world, seed=9)
    a.add_peer("B", cert_der=world.creds["beta"].cert.der)
    dropped = []

    def tap(src: object, dst: object, data: bytes) -> bytes | None:
        if src == "A" and data[1] == C.MSG_CONFIRM and n.now < 0.5:
            dropped.append(data)
            return None  # lose alpha's CONFIRMs for a while
        return data

    n.tap = tap
    n.connect("A", "B")
    n.run(0.5)
    assert dropped
    assert b.peer("A") is None  # beta holds nothing until a CONFIRM arrives
    n.send("B", "A", b"beta speaks first")
    n.run(0.6)
    assert payloads(n, "A") == []  # beta waits: its session is not confirmed
    n.run(5.0)
    assert payloads(n, "A") == [b"beta speaks first"]


def test_restarted_peer_recovers(world: World) -> None:
    n, _a, _b = pair(world, seed=10)
    n.send("A", "B", b"1")
    n.run(1.0)
    n.add("B", world.endpoint("beta", seed=99))  # beta restarts with empty state
    n.send("A", "B", b"lost: beta no longer knows that session")
    n.run(2.0)
    assert n.nodes["B"].counters["unknown_index"] == 1
    n.connect("A", "B")  # what healing does when the link looks dead
    n.run(5.0)
    n.send("A", "B", b"2")
    n.run(6.0)
    assert payloads(n, "B") == [b"2"]
    # The first INIT carried a cookie from beta's previous life (dropped: bad mac2); the
    # retry forgot it and carried alpha's full certificate for beta's empty cache.
    assert n.nodes["B"].counters["bad_mac2"] == 1


def test_sessions_expire_and_are_wiped(world: World) -> None:
    n, a, b = pair(world, seed=11)
    n.send("A", "B", b"x")
    n.run(1.0)
    session = a._peers["B"].current
    assert session is not None
    n.run(C.REJECT_AFTER_TIME + 5)
    assert session.wiped and a.sessions_in_use == 0 and b.sessions_in_use == 0
    info = a.peer("B")
    assert info is not None and not info.established and info.session_age is None


def test_message_too_large_is_raised_not_truncated(world: World) -> None:
    n, a, _b = pair(world, seed=12)
    assert a.max_unfragmented_payload == 1280 - C.DATA_OVERHEAD
    assert a.max_payload == C.MAX_DATA_PAYLOAD  # larger ones go in fragments
    with pytest.raises(MessageTooLarge):
        a.send(0.0, "B", bytes(a.max_payload + 1))
    n.send("A", "B", bytes(a.max_unfragmented_payload))
    n.run(1.0)
    assert payloads(n, "B") == [bytes(a.max_unfragmented_payload)]
    assert max(len(d) for _, _, _, d in n.sent) <= 1280


def test_expected_name_and_accept_identity(world: World) -> None:
    n, a, _b = pair(world, seed=13)
    a.add_peer("B", expect_name="gamma")  # but beta answers at B
    n.connect("A", "B")
    n.run(1.0)
    assert a.counters["unexpected_identity"] >= 1 and not a.peer("B").established  # type: ignore[union-attr]
    # the responder side: only accept identities the hook likes
    n2 = Net(seed=14)
    a2 = n2.add("A", world.endpoint("alpha", seed=140))
    n2.add(
        "B",
        world.endpoint("beta", seed=141, accept_identity=lambda addr, ident: ident.name == "x"),
    )
    a2.add_peer("B", cert_der=world.creds["beta"].cert.der)
    n2.connect("A", "B")
    n2.run(1.0)
    assert n2.nodes["B"].counters["unexpected_identity"] >= 1
    # a pre-shared certificate that fails the check is not used
    n3 = Net(seed=15)
    a3 = n3.add("A", world.endpoint("alpha", seed=150))
    n3.add("B", world.endpoint("beta", seed=151))
    a3.add_peer("B", cert_der=world.creds["beta"].cert.der, expect_name="gamma")
    n3.connect("A", "B")
    n3.run(1.0)
    assert a3.counters["unexpected_identity"] >= 1


def test_revoked_and_expired_certificates_are_rejected(world: World) -> None:
    from cryptography import x509

    crl = world.ca.revoke(
        world.creds["gamma"].cert.serial, x509.ReasonFlags.key_compromise, WALL + 1
    )
    verifier = make_verifier(world.ca.bundle(), lambda: crl)
    n = Net(seed=16)
    b = n.add(
        "B",
        SecureEndpoint(
            world.creds["beta"].cert.der,
            world.creds["beta"].static_private,
            verifier,
            jitter=random.Random(160),
            wall_offset=WALL,
            trust_domain="x0tta6bl4.mesh",
        ),
    )
    n.add("G", world.endpoint("gamma", seed=161))
    n.connect("G", "B")
    n.run(2.0)
    assert b.counters["cert_rejected:revoked"] >= 1
    assert b.peer("G") is None  # no state for a rejected initiator
    # alpha's clock is two days ahead: beta's certificate has expired for it
    n2 = Net(seed=17)
    late = n2.add("A", world.endpoint("alpha", seed=170, wall_offset=WALL + 2 * 86400))
    n2.add("B", world.endpoint("beta", seed=171))
    late.add_peer("B", cert_der=world.creds["beta"].cert.der)
    n2.connect("A", "B")
    n2.run(1.0)
    assert late.counters["cert_rejected:expired"] >= 2  # the pre-shared one, then CERT's
    # a verifier for another trust domain
    with pytest.raises(Exception, match="at least"):
        world.endpoint("alpha", max_datagram=100)


def test_traces_are_deterministic_for_a_seed(world: World) -> None:
    def run() -> tuple[list[tuple[float, object, str, dict[str, object]]], list[int]]:
        n, _a, _b = pair(world, seed=18, loss=0.2, dup=0.1, jitter=0.05)
        traffic(n, until=140.0, every=1.0)
        n.run(150.0)
        return (
            [(t, addr, e.kind, e.fields) for t, addr, e in n.events],
            [len(d) for _, _, _, d in n.sent],
        )

    assert run() == run()


def test_timers_and_inputs_that_are_not_ours(world: World) -> None:
    a = world.endpoint("alpha", seed=19)
    assert a.timer_namespace == "x0t.secure"
    bogus = ChannelTimer("x0t.secure", "bogus", "B")  # type: ignore[arg-type]
    assert a.handle(0.0, Timer("foreign")) and a.counters["unknown_timer"] == 1
    a.handle(0.0, Timer(bogus))
    a.add_peer("B")
    a.handle(0.0, Timer(bogus))
    assert a.counters["unknown_timer"] == 2
    hs = ChannelTimerKind.HANDSHAKE
    assert a.handle(0.0, Timer(ChannelTimer("x0t.secure", hs, "nobody"))) == []
    assert a.handle(0.0, Timer(ChannelTimer("x0t.secure", hs, "B"))) == []  # nothing running
    reasm = ChannelTimer("x0t.secure", ChannelTimerKind.REASSEMBLY, "B", 5)
    assert a.handle(0.0, Timer(reasm)) == []
    # the tuple keys of old, and another endpoint's namespace, are not ours
    a.handle(0.0, Timer(("x0t.secure", "hs", "B")))
    a.handle(0.0, Timer(ChannelTimer("x0t.other", hs, "B")))
    assert a.counters["unknown_timer"] == 4
    a.handle(0.0, AppSend("beta", 1, b"x"))
    assert a.counters["unsupported_input"] == 1


def test_unknown_indices_and_wrong_sources(world: World) -> None:
    n, a, _b = pair(world, seed=20)
    a.add_peer("B", cert_der=world.creds["beta"].cert.der)
    n.connect("A", "B")
    n.run(0.015)  # INIT delivered, RESP in flight
    n.run(1.0)
    # RESP, COOKIE and CERT for handshakes that do not exist
    from x0tta6bl4.channel.wire import Cert, CookieReply, encode

    cookie = encode(CookieReply(12345, bytes(12), bytes(32)))
    a.handle(1.0, Datagram("B", cookie))
    assert a.counters["unknown_index"] == 1
    cert = encode(Cert(12345, b"x" * 10, bytes(16)))
    a.handle(1.0, Datagram("B", cert))
    assert a.counters["bad_check"] == 1
    a.handle(1.0, Datagram("B", header(C.MSG_DATA) + bytes(40)))
    assert a.counters["unknown_index"] == 2


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.one_of(
        st.binary(max_size=1500),
        st.tuples(st.integers(1, 7), st.binary(max_size=1400)).map(lambda t: header(t[0]) + t[1]),
    )
)
def test_arbitrary_bytes_into_handle_are_dropped(world: World, data: bytes) -> None:
    ep = _fuzz_target(world)
    before = sum(ep.counters.values())
    out = ep.handle(5.0, Datagram("B", data))
    assert not [x for x in out if isinstance(x, Deliver)]
    for x in out:
        assert isinstance(x, Event | Send) or x.__class__.__name__ == "SetTimer"
    assert sum(ep.counters.values()) > before or ep.reassemblies_pending
    no_internal_errors(ep)


_FUZZ: dict[int, SecureEndpoint] = {}


def _fuzz_target(world: World) -> SecureEndpoint:
    """One endpoint with an established session and a handshake in flight, reused."""
    ep = _FUZZ.get(id(world))
    if ep is None:
        n, a, _b = pair(world, seed=21)
        n.send("A", "B", b"x")
        n.run(1.0)
        a.add_peer("G", cert_der=world.creds["gamma"].cert.der)
        a.connect(1.0, "G")
        ep = _FUZZ[id(world)] = a
    return ep


def test_event_fields_hold_no_bytes(world: World) -> None:
    n, a, _b = pair(world, seed=22, loss=0.1)
    traffic(n, until=30.0, every=0.5)
    n.run(60.0)
    for _, _, e in n.events:
        assert isinstance(e, Event)
        for v in e.fields.values():
            assert not isinstance(v, bytes | bytearray), e
    assert {"handshake_started", "handshake_complete", "cert_cached"} <= set(n.kinds())
    sends = [x for x in a.send(n.now, "B", b"y") if isinstance(x, Send)]
    assert sends


def test_wire_cost_matches_a_real_exchange(world: World) -> None:
    n, _a, _b = pair(world, seed=23)
    n.connect("A", "B")
    n.run(1.0)
    groups: list[tuple[str, int, int]] = []  # (src, datagrams, bytes) per message burst
    last: tuple[float, object] | None = None
    for t, src, _, d in n.sent:
        if (t, src) == last:
            s, k, size = groups[-1]
            groups[-1] = (s, k + 1, size + len(d))
        else:
            groups.append((str(src), 1, len(d)))
        last = (t, src)
    alpha, beta = (len(world.creds[x].cert.der) for x in ("alpha", "beta"))
    want = handshake_wire_cost(alpha)["first_contact"]
    want[3] = handshake_wire_cost(beta)["first_contact"][3]  # CERT carries beta's certificate
    assert [(g[1], g[2]) for g in groups] == [(w[2], w[3]) for w in want]
    assert [g[0] for g in groups] == ["A" if w[1] == "I->R" else "B" for w in want]
    n.sent.clear()
    n.connect("A", "B")  # a rekey: the cached path
    n.run(2.0)
    cached = handshake_wire_cost(alpha)["cached"]
    assert sum(len(d) for *_, d in n.sent) == sum(w[3] for w in cached)


def render_cost_table(cert_size: int) -> str:
    lines = []
    for path, rows in handshake_wire_cost(cert_size).items():
        lines.append(f"{path.replace('_', ' ')}:\n")
        lines.append("| message | direction | datagrams | bytes |")
        lines.append("| --- | --- | ---: | ---: |")
        for name, direction, k, size in rows:
            lines.append(f"| {name} | {direction} | {k} | {size:,} |")
        total = sum(r[3] for r in rows)
        lines.append(f"| **total** | | {sum(r[2] for r in rows)} | **{total:,}** |\n")
    return "\n".join(lines)


DOC_CERT_SIZE = 6918


def test_docs_size_table_is_the_codes() -> None:
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text()
    begin = doc.index("<!-- sizes:begin -->") + len("<!-- sizes:begin -->")
    end = doc.index("<!-- sizes:end -->")
    assert doc[begin:end].strip() == render_cost_table(DOC_CERT_SIZE).strip()


def test_cookie_secret_rotation() -> None:
    from x0tta6bl4.channel.cookie import CookieGenerator
    from x0tta6bl4.crypto.kdf import mac16

    g = CookieGenerator(SYSTEM_SECRETS)
    body = b"some message body"
    c0 = g.cookie(0.0, ("10.0.0.1", 1))
    msg = body + mac16(c0, body)
    assert g.check_mac2(1.0, ("10.0.0.1", 1), msg)
    assert not g.check_mac2(1.0, ("10.0.0.2", 1), msg)  # bound to the address
    assert g.check_mac2(C.COOKIE_SECRET_LIFETIME + 1, ("10.0.0.1", 1), msg)  # previous secret
    assert g.cookie(C.COOKIE_SECRET_LIFETIME + 1, ("10.0.0.1", 1)) != c0
    assert not g.check_mac2(4 * C.COOKIE_SECRET_LIFETIME, ("10.0.0.1", 1), msg)


def test_responder_keeps_nothing_until_the_initiator_confirms(world: World) -> None:
    """Unanswered RESPs leave the responder with no session, no peer entry and nothing
    an INIT could later evict: its half of each handshake left in the biscuit."""
    a = world.endpoint("alpha", seed=24)
    b = world.endpoint("beta", seed=25)
    a.add_peer(("198.18.0.2", 4500), cert_der=world.creds["beta"].cert.der)
    addr_a, addr_b = ("198.18.0.1", 4500), ("198.18.0.2", 4500)
    t = 0.0
    out = a.connect(t, addr_b)
    answered = 0
    for _ in range(7):  # RESPs never reach alpha
        for x in out:
            if isinstance(x, Send):
                answered += len(
                    [y for y in b.handle(t, Datagram(addr_a, x.data)) if isinstance(y, Send)]
                )
        t += 1.0
        out = a.handle(t, Timer(ChannelTimer("x0t.secure", ChannelTimerKind.HANDSHAKE, addr_b)))
    assert answered >= 7
    assert b.sessions_in_use == 0 and b.peer(addr_a) is None and b.peers() == []
    labels = {x.fields.get("addr") for x in out if isinstance(x, Event)}
    assert labels <= {repr(addr_b)}


def test_counter_exhaustion_rekeys_and_queues(world: World) -> None:
    n, a, _b = pair(world, seed=25)
    n.send("A", "B", b"first")
    n.run(1.0)
    cur = a._peers["B"].current
    assert cur is not None
    cur._set_send_counter(C.REKEY_AFTER_MESSAGES)
    n.send("A", "B", b"rekey now")  # still sent, and a handshake starts
    assert a.peer("B").handshaking  # type: ignore[union-attr]
    n.run(2.0)
    new = a._peers["B"].current
    assert new is not None and new is not cur
    new._set_send_counter(C.REJECT_AFTER_MESSAGES)
    n.send("A", "B", b"queued")  # the session may not send any more: queue + handshake
    assert not a.peer("B").established  # type: ignore[union-attr]
    n.run(3.0)
    assert payloads(n, "B") == [b"first", b"rekey now", b"queued"]


def test_peer_with_a_renewed_certificate_and_key_is_found_again(world: World) -> None:
    from x0tta6bl4.identity import NodeCredentials

    n, a, _b = pair(world, seed=26)
    n.send("A", "B", b"before")
    n.run(1.0)
    renewed = NodeCredentials.generate_and_issue(world.ca, "beta", ["role:test"], WALL + 1)
    n.add(
        "B",
        SecureEndpoint(
            renewed.cert.der,
            renewed.static_private,
            world.verifier,
            jitter=random.Random(261),
            wall_offset=WALL,
            trust_domain="x0tta6bl4.mesh",
        ),
    )
    n.connect("A", "B")  # INITs sealed to beta's old key: beta cannot open them
    n.run(10.0)
    assert n.nodes["B"].counters["bad_mac1"] >= 1  # mac1 was keyed to the old key
    n.send("A", "B", b"after")
    n.run(12.0)
    assert payloads(n, "B")[-1:] == [b"after"]
    info = a.peer("B")
    assert info is not None and info.identity is not None
    assert info.identity.fingerprint == renewed.cert.fingerprint


def test_certificate_refresh_that_finds_it_unchanged_keeps_trying(world: World) -> None:
    n, a, _b = pair(world, seed=27)
    a.add_peer("B", cert_der=world.creds["beta"].cert.der)
    blocking = [True]

    def tap(src: object, dst: object, data: bytes) -> bytes | None:
        big = data[1] in (C.MSG_INIT, C.MSG_FRAGMENT)
        return None if src == "A" and big and blocking[0] else data

    n.tap = tap
    n.connect("A", "B")
    n.run(3.0)  # INITs vanish; the parallel certificate request gets an answer
    assert n.nodes["B"].counters["cert_sent"] >= 1
    assert a.peer("B").handshaking  # type: ignore[union-attr]
    blocking[0] = False
    n.run(5.0)
    assert a.peer("B").established  # type: ignore[union-attr]


def test_a_rekey_that_gets_no_answer_fails_as_a_rekey(world: World) -> None:
    """The node's ``x0tta6bl4_rekeys_total{outcome="failed"}`` counts these: a handshake
    begun while a session existed that ended without a new one."""
    n, a, _b = pair(world, seed=27)
    n.send("A", "B", b"first")
    n.run(1.0)
    assert a.peer("B").established  # type: ignore[union-attr]
    n.tap = lambda src, dst, data: None  # the peer goes silent
    n.connect("A", "B")  # a rekey: a session exists
    n.run(n.now + C.REKEY_ATTEMPT_TIME + 2 * C.HANDSHAKE_RETRY_CAP)
    failed = [e for _, addr, e in n.events if addr == "A" and e.kind == "handshake_failed"]
    assert len(failed) == 1
    assert failed[0].fields["reason"] == "timeout" and failed[0].fields["rekey"] is True
    # A first contact that fails is no rekey.
    n2, a2, _ = pair(world, seed=28)
    n2.tap = lambda src, dst, data: None
    n2.connect("A", "B")
    n2.run(C.REKEY_ATTEMPT_TIME + 2 * C.HANDSHAKE_RETRY_CAP)
    first = [e for _, addr, e in n2.events if addr == "A" and e.kind == "handshake_failed"]
    assert len(first) == 1 and first[0].fields["rekey"] is False
    assert a2.peer("B") is not None
