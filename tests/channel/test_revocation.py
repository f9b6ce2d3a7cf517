"""``RevocationListUpdated`` at the secure channel: the sessions, handshakes and queued
payloads of a peer whose certificate the new list revokes are dropped at once; the peer
cannot make a new session; other peers are untouched; an older list changes nothing."""

from __future__ import annotations

import random

import pytest
from cryptography import x509

from tests.channel.helpers import TD, WALL, Net, World, make_world
from x0tta6bl4.channel import constants as C
from x0tta6bl4.channel.endpoint import SecureEndpoint
from x0tta6bl4.identity import NodeCredentials, make_verifier
from x0tta6bl4.identity.crl import RevocationList, RevokedEntry
from x0tta6bl4.sansio import RevocationListUpdated


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("revocation"), ["alpha", "beta", "gamma"])


def revoking(world: World, *names: str, version: int = 2) -> RevocationList:
    """A CA-signed list of ``version`` revoking ``names`` (nothing persisted in the CA)."""
    entries = [
        RevokedEntry(world.creds[n].cert.serial, WALL, x509.ReasonFlags.key_compromise)
        for n in names
    ]
    return world.ca.sign_revocation_list(version, entries, WALL)


def established(ep: SecureEndpoint, addr: str) -> bool:
    info = ep.peer(addr)
    return info is not None and info.established


def from_gamma(n: Net, addr: str) -> list[bytes]:
    return [p for src, p in n.delivered[addr] if src == "gamma"]


def test_a_revoked_peers_sessions_drop_and_it_cannot_come_back(world: World) -> None:
    n = Net(seed=41)
    a = n.add("A", world.endpoint("alpha", seed=1))
    b = n.add("B", world.endpoint("beta", seed=2))
    g = n.add("G", world.endpoint("gamma", seed=3))
    n.send("A", "G", b"hello gamma")
    n.send("A", "B", b"hello beta")
    n.run(1.0)
    assert established(a, "G") and established(a, "B") and established(g, "A")
    assert from_gamma(n, "A") == [] and n.delivered["G"] == [("alpha", b"hello gamma")]

    n.apply("A", a.handle(n.now, RevocationListUpdated(revoking(world, "gamma"))))
    assert a.peer("G") is None  # sessions wiped, entry forgotten
    assert a.addr_of("gamma") is None
    assert established(a, "B")  # beta is not on the list
    assert a.counters["revoked_teardown"] == 1
    assert "peer_revoked" in n.kinds("A")
    held = a.revocation_list
    assert held is not None and held.version == 2

    # gamma (not told) keeps sending on its old session, then handshakes: all refused
    for k in range(20):
        n.run(n.now + 0.2)
        n.send("G", "A", b"gamma %d" % k)
    n.run(n.now + 2.0)
    assert from_gamma(n, "A") == []
    assert a.counters["cert_rejected:revoked"] >= 1
    assert "handshake_started" in n.kinds("G")
    assert not established(a, "G")
    # ... while alpha and beta carry on
    n.send("A", "B", b"still here")
    n.send("B", "A", b"so am I")
    n.run(n.now + 1.0)
    assert ("alpha", b"still here") in n.delivered["B"]
    assert ("beta", b"so am I") in n.delivered["A"]
    assert b.counters.get("revoked_teardown", 0) == 0


def test_a_pending_handshake_and_queued_payloads_are_dropped(world: World) -> None:
    n = Net(seed=42)
    a = n.add("A", world.endpoint("alpha", seed=4))
    n.add("G", world.endpoint("gamma", seed=5))
    a.add_peer("G", cert_der=world.creds["gamma"].cert.der)  # the INIT goes at once
    for k in range(3):
        n.send("A", "G", b"queued %d" % k)
    info = a.peer("G")
    assert info is not None and info.handshaking and not info.established

    n.apply("A", a.handle(n.now, RevocationListUpdated(revoking(world, "gamma"))))
    assert a.peer("G") is None
    assert a.counters["peer_revoked"] == 3  # the queued payloads, counted as drops
    dropped = [e for _, node, e in n.events if node == "A" and e.kind == "dropped"]
    assert [e.fields["reason"] for e in dropped] == ["peer_revoked"]
    assert dropped[0].fields["count"] == 3
    # gamma answers the INIT already in flight: its RESP matches nothing any more
    n.run(2.0)
    assert "handshake_complete" not in n.kinds("A")
    assert n.delivered["G"] == []
    assert a.counters["unknown_index"] >= 1


def test_an_older_list_changes_nothing_and_the_newer_keeps_refusing(world: World) -> None:
    n = Net(seed=43)
    a = n.add("A", world.endpoint("alpha", seed=6))
    n.add("B", world.endpoint("beta", seed=7))
    n.add("G", world.endpoint("gamma", seed=8))
    v2 = revoking(world, "gamma")
    n.apply("A", a.handle(n.now, RevocationListUpdated(v2)))
    n.send("A", "B", b"to beta")
    n.run(1.0)
    assert established(a, "B")
    out = a.handle(n.now, RevocationListUpdated(world.ca.revocation_list()))  # version 1
    assert a.revocation_list is v2
    assert [e.kind for e in out if hasattr(e, "kind")] == ["revocation_list_ignored"]
    assert established(a, "B")
    # the same list again sweeps nothing new
    assert [x for x in a.handle(n.now, RevocationListUpdated(v2)) if hasattr(x, "kind")] == []
    # gamma's handshake is refused on the held list, though the verifier's own list
    # (the CA's first) does not revoke it
    n.connect("G", "A")
    n.run(n.now + 2.0)
    assert a.counters["cert_rejected:revoked"] >= 1
    assert a.peer("G") is None


def test_a_newer_list_forgets_certificates_refused_on_the_old_one(world: World) -> None:
    """Rejections are cached for a minute; a list that changes the verdict must not wait
    that out (here: refused for want of a list, accepted once one arrives)."""
    crl: list[RevocationList | None] = [None]
    verifier = make_verifier(world.ca.bundle(), lambda: crl[0])  # None: no list yet
    c = world.creds["alpha"]
    n = Net(seed=44)
    a = n.add(
        "A",
        SecureEndpoint(
            c.cert.der,
            c.static_private,
            verifier,
            wall_offset=WALL,
            trust_domain="x0tta6bl4.mesh",
        ),
    )
    n.add("B", world.endpoint("beta", seed=9))
    n.connect("B", "A")
    n.run(1.0)
    assert a.counters["cert_rejected:revocation_list_missing"] >= 1
    assert not established(a, "B")
    crl[0] = world.ca.revocation_list()
    n.apply("A", a.handle(n.now, RevocationListUpdated(crl[0])))
    # beta's next new INIT (a retry resends the same one for INIT_REUSE_TIME, refused as
    # a replay) is accepted, well inside the minute a cached rejection would last
    n.run(n.now + C.INIT_REUSE_TIME + 2.0)
    assert established(a, "B")


def _to(n: Net, src: str, dst: str, after: float) -> list[bytes]:
    return [d for t, s, a, d in n.sent if s == src and a == dst and t >= after]


def test_a_fetched_certificate_that_is_revoked_ends_the_attempt_and_holds_the_address(
    world: World,
) -> None:
    """Alpha holds a list revoking gamma but never met it: its first handshake fetches
    gamma's certificate (about 7 KB), which is refused; the attempt ends there (instead of
    fetching and refusing it again about eight times a second for 30 s), what was queued
    is dropped and counted, and alpha dials gamma's address no more until gamma handshakes
    with a certificate that verifies: here gamma, re-enrolled with new keys, does."""
    n = Net(seed=45)
    a = n.add("A", world.endpoint("alpha", seed=10))
    n.add("G", world.endpoint("gamma", seed=11))
    n.apply("A", a.handle(n.now, RevocationListUpdated(revoking(world, "gamma"))))
    for k in range(3):
        n.send("A", "G", b"queued %d" % k)
    n.run(1.0)
    failed = [e for _, node, e in n.events if node == "A" and e.kind == "handshake_failed"]
    assert [e.fields["reason"] for e in failed] == ["revoked"]
    assert failed[0].fields["queued_dropped"] == 3
    assert failed[0].fields["hold"] == C.REVOKED_HOLD
    assert a.counters["cert_rejected:revoked"] == 1  # fetched and refused once
    assert a.counters["revoked_attempt_ended"] == 1
    assert a.counters["peer_revoked"] == 3
    info = a.peer("G")
    assert info is not None and not info.handshaking and not info.established
    assert a.revoked_addr("G")
    sent_first = _to(n, "A", "G", 0.0)
    assert 1 <= len(sent_first) <= 3  # CERT_REQUEST, and again with the cookie's mac2

    # nothing more goes there: sends, connects (healing's, the mesh's hellos) are refused
    t = n.now
    for k in range(20):
        n.run(t + 0.5 * k)
        n.send("A", "G", b"later %d" % k)
        n.connect("A", "G")
    n.run(t + 20.0)
    assert _to(n, "A", "G", t) == []
    assert a.counters["addr_revoked"] == 40
    assert a.counters["cert_rejected:revoked"] == 1

    # gamma re-enrolled: same name and address, new keys and certificate; it handshakes
    fresh = NodeCredentials.generate_and_issue(world.ca, "gamma", ["role:test"], WALL)
    n.add(
        "G",
        SecureEndpoint(
            fresh.cert.der,
            fresh.static_private,
            world.verifier,
            wall_offset=WALL,
            trust_domain=TD,
            jitter=random.Random(12),
        ),
    )
    n.connect("G", "A")
    n.run(n.now + 2.0)
    assert not a.revoked_addr("G")
    n.send("A", "G", b"welcome back")
    n.run(n.now + 1.0)
    assert ("alpha", b"welcome back") in n.delivered["G"]
    info = a.peer("G")
    assert info is not None and info.identity is not None
    assert info.identity.serial == fresh.cert.serial


def test_the_hold_runs_out_and_one_attempt_looks_again(world: World) -> None:
    """A node re-enrolled at a held address that never dials us must not stay unreachable:
    after the hold (60 s) one attempt looks again; the same revoked certificate there
    doubles the hold."""
    n = Net(seed=46)
    a = n.add("A", world.endpoint("alpha", seed=13))
    n.add("G", world.endpoint("gamma", seed=14))
    n.apply("A", a.handle(n.now, RevocationListUpdated(revoking(world, "gamma"))))
    n.connect("A", "G")
    n.run(1.0)
    assert a.revoked_addr("G", n.now) and a.counters["cert_rejected:revoked"] == 1
    n.run(C.REVOKED_HOLD - 1.0)
    n.connect("A", "G")
    assert a.counters["addr_revoked"] == 1
    n.run(C.REVOKED_HOLD + 1.0)
    assert not a.revoked_addr("G", n.now)
    n.connect("A", "G")
    n.run(C.REVOKED_HOLD + 3.0)
    assert a.counters["cert_rejected:revoked"] == 2
    failed = [e for _, node, e in n.events if node == "A" and e.kind == "handshake_failed"]
    assert [e.fields["hold"] for e in failed] == [C.REVOKED_HOLD, 2 * C.REVOKED_HOLD]
