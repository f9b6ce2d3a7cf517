"""Roaming: a peer whose source address changes (NAT rebinding, a new uplink) keeps its
session. An authenticated DATA datagram that is the newest the peer sent moves it to
the address it came from (WireGuard's endpoint update); nothing unauthenticated, replayed
or older moves it, and a move never takes another authenticated peer's address."""

from __future__ import annotations

import os
import struct

import pytest

from tests.channel.helpers import Net, World, make_world
from x0tta6bl4.channel import constants as C
from x0tta6bl4.channel.endpoint import SecureEndpoint
from x0tta6bl4.channel.wire import header
from x0tta6bl4.sansio import CONTROL_TYPES, Control, PeerMoved, SessionUp


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("roaming"), ["alpha", "beta", "gamma"])


def established(world: World, seed: int) -> tuple[Net, SecureEndpoint, SecureEndpoint]:
    """alpha at A, beta at B; beta initiates (so beta's timers are the ones that rekey)."""
    n = Net(seed=seed)
    a = n.add("A", world.endpoint("alpha", seed=seed * 2 + 1))
    b = n.add("B", world.endpoint("beta", seed=seed * 2 + 2))
    n.send("B", "A", b"hello")
    n.run(1.0)
    info = b.peer("A")
    assert info is not None and info.established
    return n, a, b


def both_ways(n: Net, b: SecureEndpoint, until: float, every: float, tag: str) -> list[bytes]:
    """alpha sends to B and beta to wherever it knows alpha, every ``every`` seconds."""
    sent: list[bytes] = []
    i = 0
    while n.now < until:
        for src in ("A", "B"):
            m = f"{tag}{src}{i}".encode()
            sent.append(m)
            dst = "B" if src == "A" else b.addr_of("alpha")
            assert dst is not None
            n.send(src, dst, m)
        i += 1
        n.run(n.now + every)
    return sent


def got(n: Net, addr: str) -> set[bytes]:
    return {p for _, p in n.delivered[addr]}


def moves(n: Net, node: str = "B") -> list[Control]:
    return [c for _, at, c in n.controls if at == node and isinstance(c, PeerMoved)]


def data_from(n: Net, src: str, dst: str, since: float = 0.0) -> list[bytes]:
    """The DATA datagrams ``src`` put on the wire to ``dst`` (since ``since``)."""
    return [d for t, s, to, d in n.sent if s == src and to == dst and t >= since and d[1] == 4]


def withhold_next(n: Net, src: str, dst: str, count: int = 1) -> list[bytes]:
    """Drop (and return, as an on-path attacker would keep them) the next ``count`` DATA
    datagrams from ``src`` to ``dst``."""
    kept: list[bytes] = []

    def tap(s: object, d: object, data: bytes) -> bytes | None:
        if s == src and d == dst and data[1] == C.MSG_DATA and len(kept) < count:
            kept.append(data)
            return None
        return data

    n.tap = tap
    return kept


def test_peer_moved_is_a_control_action() -> None:
    moved = PeerMoved(("10.0.0.1", 4500), ("10.0.0.1", 4501), "alpha")
    assert isinstance(moved, CONTROL_TYPES)
    assert (moved.old_addr, moved.new_addr, moved.peer_name) == (
        ("10.0.0.1", 4500),
        ("10.0.0.1", 4501),
        "alpha",
    )


def test_the_session_survives_an_address_change_with_traffic_both_ways(world: World) -> None:
    n, a, b = established(world, seed=1)
    before = both_ways(n, b, 2.0, 0.1, "before")
    n.rebind("A", "A2")  # alpha's NAT maps it to a new port: it does not know
    moved_at = n.now
    after = both_ways(n, b, 5.0, 0.1, "after")
    n.run(6.0)
    # nothing lost but what beta sent to the old address before alpha's first packet
    # from the new one arrived (alpha does not know it moved: it cannot say so earlier)
    lost = (set(before) | set(after) | {b"hello"}) ^ (got(n, "A") | got(n, "B"))
    assert lost <= {b"afterB0"}
    assert moves(n) == [PeerMoved("A", "A2", "alpha")]
    assert [e.fields for t, node, e in n.events if node == "B" and e.kind == "peer_moved"] == [
        {"peer": "alpha", "old_addr": "A", "new_addr": "A2", "absorbed": False}
    ]
    info = b.peer("A2")
    assert info is not None and info.established and info.handshakes == 1  # the same session
    assert b.peer("A") is None and b.peers() == ["A2"] and b.addr_of("alpha") == "A2"
    assert b.counters["peer_moved"] == 1
    # beta answers where alpha is now, keepalives and handshakes included: not one
    # datagram went to the old address after the first one from the new one arrived
    late = [t for t, s, to, _ in n.sent if s == "B" and to == "A" and t > moved_at + 0.02]
    assert late == [] and data_from(n, "B", "A2")
    assert "handshake_started" not in [e.kind for t, _, e in n.events if t > moved_at]
    # the mesh above learns it once (the control action), and alpha never moved
    assert not moves(n, "A") and a.peers() == ["B"]


def test_spoofed_packets_from_a_new_address_move_nothing(world: World) -> None:
    n, _a, b = established(world, seed=2)
    both_ways(n, b, 2.0, 0.1, "x")
    real = data_from(n, "A", "B")[-1]
    index = real[4:8]
    counter = struct.unpack_from("<Q", real, 8)[0]
    forged = [
        os.urandom(64),  # garbage
        header(C.MSG_DATA) + os.urandom(60),  # DATA for an index nobody holds
        # DATA for alpha's session, a fresh counter, a tag nobody could make
        header(C.MSG_DATA) + index + struct.pack("<Q", counter + 7) + os.urandom(48),
        real[:-1] + bytes([real[-1] ^ 1]),  # the newest genuine packet with its tag flipped
        header(C.MSG_FRAGMENT) + os.urandom(40),
        header(C.MSG_CONFIRM) + os.urandom(300),
        header(C.MSG_COOKIE) + os.urandom(48),
    ]
    # a genuine INIT from alpha's own certificate (a second alpha, or a replay of one)
    other_alpha = world.endpoint("alpha", seed=99)
    other_alpha.add_peer("B", cert_der=world.creds["beta"].cert.der)
    forged += [x.data for x in other_alpha.connect(n.now, "B") if hasattr(x, "data")]
    for d in forged:
        n.inject("X", "B", d)
    n.run(n.now + 1.0)
    assert b.peers() == ["A"] and b.addr_of("alpha") == "A"
    assert not moves(n) and "peer_moved" not in b.counters
    assert b.counters.get("decrypt_failed", 0) >= 1
    # the session with the real alpha still works at its address ...
    assert b.peer("A").established  # type: ignore[union-attr]
    # ... and a genuine packet from a new address does move it
    n.rebind("A", "A2")
    both_ways(n, b, n.now + 1.0, 0.1, "y")
    assert moves(n) == [PeerMoved("A", "A2", "alpha")]


def test_a_replayed_genuine_datagram_from_an_attacker_address_moves_nothing(world: World) -> None:
    n, _a, b = established(world, seed=3)
    both_ways(n, b, 2.0, 0.1, "x")
    captured = data_from(n, "A", "B")  # all delivered already
    assert captured
    replays = b.counters.get("replay", 0)
    for d in captured:
        n.inject("X", "B", d)  # the replay check comes before any move
    n.run(n.now + 0.5)
    assert b.counters["replay"] == replays + len(captured)
    assert b.peers() == ["A"] and not moves(n)
    # still at A: beta's next packets go there and alpha gets them
    n.send("B", "A", b"still here")
    n.run(n.now + 0.5)
    assert b"still here" in got(n, "A")
    n.rebind("A", "A2")  # and a real move does happen
    both_ways(n, b, n.now + 1.0, 0.1, "y")
    assert moves(n) == [PeerMoved("A", "A2", "alpha")]


def test_a_newer_genuine_datagram_moves_the_peer_and_an_older_one_does_not(
    world: World,
) -> None:
    """As in WireGuard, whoever holds a packet the peer sent and we have not seen can move
    the peer by sending it first (an on-path attacker can drop the packets anyway); the
    peer's own next packet moves it back. A packet older than one already received (a
    reordered one, an earlier capture) moves nothing."""
    n, _a, b = established(world, seed=4)
    both_ways(n, b, 2.0, 0.1, "x")
    kept = withhold_next(n, "A", "B", count=2)
    n.send("A", "B", b"first")
    n.send("A", "B", b"second")
    n.run(n.now + 0.1)
    n.tap = None
    assert len(kept) == 2 and b"first" not in got(n, "B")
    n.inject("X", "B", kept[1])  # the newer one, from elsewhere
    n.run(n.now + 0.05)
    assert moves(n) == [PeerMoved("A", "X", "alpha")] and b.peers() == ["X"]
    assert b"second" in got(n, "B")
    n.inject("Y", "B", kept[0])  # older than "second": delivered, but moves nothing
    n.run(n.now + 0.05)
    assert b"first" in got(n, "B")
    assert b.peers() == ["X"] and len(moves(n)) == 1
    n.send("A", "B", b"third")  # alpha's own next packet takes its address back
    n.run(n.now + 0.05)
    assert b.peers() == ["A"] and moves(n)[-1] == PeerMoved("X", "A", "alpha")


def test_a_move_never_takes_the_address_of_another_authenticated_peer(world: World) -> None:
    n, _a, b = established(world, seed=5)
    n.add("G", world.endpoint("gamma", seed=55))
    n.send("B", "G", b"hi gamma")
    n.run(n.now + 1.0)
    kept = withhold_next(n, "A", "B")
    n.send("A", "B", b"from alpha")
    n.run(n.now + 0.1)
    n.tap = None
    n.inject("G", "B", kept[0])  # alpha's packet, seen from gamma's address
    n.run(n.now + 0.05)
    assert b"from alpha" in got(n, "B")  # authenticated: delivered ...
    assert sorted(b.peers()) == ["A", "G"] and not moves(n)  # ... but nobody moved
    assert b.counters["move_refused"] == 1
    gamma = b.peer("G")
    assert gamma is not None and gamma.established and gamma.identity.name == "gamma"  # type: ignore[union-attr]
    n.send("B", "G", b"gamma still")
    n.send("B", "A", b"alpha still")
    n.run(n.now + 0.5)
    assert b"gamma still" in got(n, "G") and b"alpha still" in got(n, "A")


def test_a_move_absorbs_a_half_open_attempt_at_the_new_address(world: World) -> None:
    """Our own initiation towards an address that nobody answered (no session there) does
    not block an authenticated peer that now sends from it: the entry is absorbed, its
    queued payloads go to the peer there, and the attempt ends."""
    n, _a, b = established(world, seed=6)
    n.send("B", "Z", b"for whoever is at Z")  # Z: no node, nothing answers
    n.run(n.now + 0.5)
    z = b.peer("Z")
    assert z is not None and z.handshaking and not z.established
    kept = withhold_next(n, "A", "B")
    n.send("A", "B", b"from alpha")
    n.run(n.now + 0.1)
    n.tap = None
    n.rebind("A", "Z")  # alpha's NAT now maps it to Z: what goes to Z reaches alpha
    n.inject("Z", "B", kept[0])
    n.run(n.now + 0.1)
    assert moves(n) == [PeerMoved("A", "Z", "alpha")]
    assert [e.fields["absorbed"] for _, node, e in n.events if e.kind == "peer_moved"] == [True]
    info = b.peer("Z")
    assert info is not None and info.established and not info.handshaking
    assert info.identity is not None and info.identity.name == "alpha"
    assert b.peers() == ["Z"]
    assert b"for whoever is at Z" in got(n, "A")  # the queue went to the peer there


def test_a_move_respects_the_identity_an_address_is_bound_to(world: World) -> None:
    """``expect_name`` (and ``accept_identity``, as end to end where the address is the
    node's id) bind an address to one identity: alpha cannot move onto one bound to gamma."""
    n, _a, b = established(world, seed=7)
    b.add_peer("Q", expect_name="gamma")
    kept = withhold_next(n, "A", "B")
    n.send("A", "B", b"from alpha")
    n.run(n.now + 0.1)
    n.tap = None
    n.inject("Q", "B", kept[0])
    n.run(n.now + 0.05)
    assert b"from alpha" in got(n, "B") and not moves(n)
    assert sorted(b.peers()) == ["A", "Q"] and b.counters["move_refused"] == 1


def test_an_endpoint_whose_addresses_are_identities_refuses_every_move(world: World) -> None:
    n = Net(seed=8)
    a = n.add("alpha", world.endpoint("alpha", seed=1, accept_identity=_addr_is_name))
    b = n.add("beta", world.endpoint("beta", seed=2, accept_identity=_addr_is_name))
    n.send("beta", "alpha", b"hello")
    n.run(1.0)
    kept = withhold_next(n, "alpha", "beta")
    n.send("alpha", "beta", b"relayed")
    n.run(n.now + 0.1)
    n.tap = None
    n.inject("gamma", "beta", kept[0])  # a relay that rewrites the source id
    n.run(n.now + 0.05)
    assert b"relayed" in got(n, "beta") and not moves(n, "beta")
    assert b.peers() == ["alpha"] and a.peers() == ["beta"]
    assert b.counters["move_refused"] == 1


def _addr_is_name(addr: object, ident: object) -> bool:
    return addr == getattr(ident, "name", None)


# --- timers after a move -----------------------------------------------------------------


def test_a_handshake_in_flight_when_the_peer_moves_retries_at_the_new_address(
    world: World,
) -> None:
    """beta (the session's initiator) starts its rekey towards alpha's old address just as
    alpha's mapping changes: that INIT is lost. alpha's next packet moves it; the retry
    timer, set under the old address, must now fire for the new one."""
    n, _a, b = established(world, seed=9)
    n.run(C.REKEY_AFTER_TIME + 1.0)
    n.rebind("A", "A2")
    n.send("B", "A", b"rekey now")  # starts the rekey: INIT to A, lost
    assert b.peer("A").handshaking  # type: ignore[union-attr]
    n.run(n.now + 0.05)
    n.send("A", "B", b"from the new port")
    n.run(n.now + 0.05)
    assert moves(n) == [PeerMoved("A", "A2", "alpha")]
    started = n.now
    n.run(n.now + 3.0)
    info = b.peer("A2")
    assert info is not None and not info.handshaking and info.rekeys == 1
    rekeyed = [t for t, node, e in n.events if node == "B" and e.kind == "session_rekeyed"]
    assert rekeyed and rekeyed[0] - started < 1.5
    # the retry went to the new address, and nothing else to the old one
    assert [to for t, s, to, _ in n.sent if s == "B" and t > started] and all(
        to == "A2" for t, s, to, _ in n.sent if s == "B" and t > started
    )


def test_the_session_expires_at_the_new_address(world: World) -> None:
    """The expiry timer was set under the old address; after the move the session is
    still wiped at REJECT_AFTER_TIME, and the peer entry survives (we declared it)."""
    n, _a, b = established(world, seed=10)
    n.rebind("A", "A2")
    n.send("A", "B", b"moved")
    n.run(2.0)
    assert b.peers() == ["A2"] and b.sessions_in_use == 1
    n.run(C.REJECT_AFTER_TIME + 2.0)
    assert b.sessions_in_use == 0
    info = b.peer("A2")
    assert info is not None and not info.established


def test_rekeys_keep_happening_at_the_new_address(world: World) -> None:
    n, _a, b = established(world, seed=11)
    n.rebind("A", "A2")
    moved_at = n.now
    sent = both_ways(n, b, C.REJECT_AFTER_TIME + 40.0, 1.0, "m")
    n.run(n.now + 1.0)
    assert moves(n) == [PeerMoved("A", "A2", "alpha")]
    info = b.peer("A2")
    assert info is not None and info.established and info.rekeys >= 1
    assert set(sent) - (got(n, "A") | got(n, "B")) <= {b"mB0"}  # lost: only the first to A
    assert b.sessions_in_use <= 2  # the old sessions were wiped as they expired
    assert not [t for t, s, to, _ in n.sent if s == "B" and to == "A" and t > moved_at + 0.1]
    ups = [c for t, node, c in n.controls if node == "B" and isinstance(c, SessionUp)]
    assert ups and all(c.addr == "A2" for c in ups[1:])


def test_an_inbound_peer_moves_and_is_still_forgotten_when_idle(world: World) -> None:
    """beta only answers: its entry for alpha was made by alpha's handshake (inbound, and
    forgotten once idle). Moved, it is still tracked under its identity: it expires at
    its new address, and alpha's next handshake from yet another one is taken."""
    n = Net(seed=12)
    n.add("A", world.endpoint("alpha", seed=1))
    b = n.add("B", world.endpoint("beta", seed=2))
    n.send("A", "B", b"hello")
    n.run(1.0)
    n.rebind("A", "A2")
    n.send("A", "B", b"moved")
    n.run(2.0)
    assert b.peers() == ["A2"] and moves(n) == [PeerMoved("A", "A2", "alpha")]
    n.run(C.REJECT_AFTER_TIME + 2.0)
    assert b.peers() == [] and b.sessions_in_use == 0  # an idle inbound entry goes
    n.rebind("A", "A3")
    n.send("A", "B", b"again")  # alpha's session expired too: a new handshake, from A3
    n.run(n.now + 2.0)
    assert b.peers() == ["A3"] and b"again" in got(n, "B")
    assert not [k for k in b.counters if k == "internal_error" or k.startswith("error:")]


def test_a_move_during_our_rekey_confirm_resends_the_confirm_to_the_new_address(
    world: World,
) -> None:
    """beta's rekey has a new session whose CONFIRM goes to alpha's old address just as
    alpha's mapping changes: lost. alpha still sends on the old session (beta's previous
    one, while nothing came on the new one): that moves it, and beta's CONFIRM resend
    timer, set under the old address, now resends to the new one."""
    n, _a, b = established(world, seed=13)
    n.run(C.REKEY_AFTER_TIME + 1.0)
    n.send("B", "A", b"rekey now")
    for _ in range(200):  # until beta holds the new session and its CONFIRM is on the way
        n.run(n.now + 0.001)
        if b.peer("A").state == "confirming":  # type: ignore[union-attr]
            break
    assert b.peer("A").state == "confirming"  # type: ignore[union-attr]
    n.rebind("A", "A2")
    n.run(n.now + 0.05)
    n.send("A", "B", b"on the old session")
    n.run(n.now + 1.0)
    assert moves(n) == [PeerMoved("A", "A2", "alpha")]
    info = b.peer("A2")
    assert info is not None and info.state == "established" and info.rekeys == 1
    assert "session_unconfirmed" not in n.kinds("B") and "confirm_unanswered" not in b.counters
