"""A peer that lost our session, and first contact over lossy paths: liveness (passive
keepalives, "no reply, new handshake"), NO_SESSION, fragment repair (NACKs) and retries
that resend the same INIT. Attacks on the new messages are in ``test_attacks.py``."""

from __future__ import annotations

import statistics

import pytest

from tests.channel.helpers import Net, World, make_world, sends
from x0tta6bl4.channel import constants as C
from x0tta6bl4.sansio import Action, Datagram, SetTimer, Timer

# Only names that predate this module are imported here, so that on the code before it
# every test runs and fails on its own assertion (the new ones on their new imports).


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("recovery"), ["alpha", "beta"])


def one_way(n: Net, src: str, dst: str, start: float, until: float, every: float) -> list[float]:
    """``src`` sends to ``dst`` every ``every`` seconds; when each delivery at ``dst`` was
    seen (to the step: the pipe records what arrived, not when)."""
    seen: list[float] = []
    t = start
    i = 0
    while t < until:
        before = len(n.delivered[dst])
        n.run(t)
        seen += [t] * (len(n.delivered[dst]) - before)
        n.send(src, dst, b"reading %d" % i)
        i += 1
        t = round(t + every, 6)
    return seen


# --- a restarted peer, one-way traffic ---------------------------------------------------


def test_one_way_traffic_to_a_restarted_peer_resumes_within_a_second(world: World) -> None:
    """alpha only sends. beta restarts: its sessions are gone, alpha's is not. Every DATA
    was dropped as unknown_index until alpha's session reached the 120 s rekey time."""
    n = Net(seed=1)
    a = n.add("A", world.endpoint("alpha", seed=1))
    n.add("B", world.endpoint("beta", seed=2))
    assert len(one_way(n, "A", "B", 0.0, 3.0, 0.05)) >= 50
    b2 = n.add("B", world.endpoint("beta", seed=3))  # restart: empty state
    restarted = n.now
    after = one_way(n, "A", "B", restarted, restarted + 3.0, 0.05)
    assert after, "nothing reached the restarted peer"
    assert after[0] - restarted <= 1.0, after[0] - restarted
    assert b2.counters.get("no_session_sent", 0) >= 1
    assert a.counters.get("no_session_acted", 0) == 1  # one handshake, however many hints
    info = a.peer("B")
    assert info is not None and info.established and info.rekeys == 1


def test_no_session_only_for_a_stream_and_only_without_a_session(world: World) -> None:
    """A single undecryptable datagram is not answered (it may be corruption); the same
    unknown index twice is, rate-limited; a source we hold a session with never is."""
    from x0tta6bl4.channel.wire import NoSession, decode

    b = world.endpoint("beta", seed=4)
    stray = bytes((1, C.MSG_DATA, 0, 0)) + (77).to_bytes(4, "little") + bytes(40)
    assert not sends(b.handle(0.0, Datagram("X", stray)))
    other = bytes((1, C.MSG_DATA, 0, 0)) + (78).to_bytes(4, "little") + bytes(40)
    assert not sends(b.handle(0.0, Datagram("X", other)))  # another index: no stream
    answered = sends(b.handle(0.0, Datagram("X", other)))
    hint = decode(answered[0])
    assert hint == NoSession.echo(other)
    assert len(answered[0]) == C.NO_SESSION_SIZE <= len(other)
    burst = sum(len(sends(b.handle(0.0, Datagram("X", other)))) for _ in range(100))
    assert burst <= C.NO_SESSION_BURST
    later = sum(len(sends(b.handle(10.0, Datagram("X", other)))) for _ in range(100))
    assert later <= C.NO_SESSION_BURST

    n = Net(seed=5)
    a = n.add("A", world.endpoint("alpha", seed=5))
    b = n.add("B", world.endpoint("beta", seed=6))
    n.send("A", "B", b"hello")
    n.run(1.0)
    for _ in range(5):  # beta holds a session with alpha: a stray index is not answered
        assert not sends(b.handle(n.now, Datagram("A", other)))
    assert a.peer("B").established  # type: ignore[union-attr]


def test_one_way_receiver_answers_with_keepalives_at_a_bounded_rate(world: World) -> None:
    n = Net(seed=7)
    a = n.add("A", world.endpoint("alpha", seed=7))
    b = n.add("B", world.endpoint("beta", seed=8))
    one_way(n, "A", "B", 0.0, 10.0, 0.01)  # 100 packets per second, one way
    n.run(10.5)
    sent = b.counters.get("keepalive_sent", 0)
    assert 10.0 / 1.5 <= sent <= 10.0 / C.KEEPALIVE_TIMEOUT + 2
    # alpha heard beta often enough: no "no reply" handshake on a healthy path
    assert "no_reply_handshake" not in a.counters
    assert a.peer("B").rekeys == 0  # type: ignore[union-attr]


def test_silence_starts_a_handshake_and_the_old_session_keeps_working(world: World) -> None:
    """Nothing authenticated comes back (every DATA from beta lost): alpha handshakes
    again after REPLY_TIMEOUT, sending on its session meanwhile."""
    n = Net(seed=9)
    a = n.add("A", world.endpoint("alpha", seed=9))
    n.add("B", world.endpoint("beta", seed=10))
    n.send("A", "B", b"first")
    n.run(1.0)
    mute = [True]

    def tap(src: object, dst: object, data: bytes) -> bytes | None:
        return None if mute[0] and src == "B" and data[1] == C.MSG_DATA else data

    n.tap = tap
    one_way(n, "A", "B", 1.0, 1.0 + C.REPLY_TIMEOUT + 0.3, 0.05)
    assert a.counters.get("no_reply_handshake") == 1
    assert a.peer("B").handshakes == 2  # type: ignore[union-attr]
    delivered = len(n.delivered["B"])
    assert delivered >= C.REPLY_TIMEOUT / 0.05  # the old session carried everything
    mute[0] = False
    n.run(4.0)
    info = a.peer("B")
    assert info is not None and info.established and info.rekeys == 1


# --- first contact over a lossy path -----------------------------------------------------


def first_contact_time(world: World, seed: int, loss: float) -> float | None:
    n = Net(seed=seed, loss=loss, latency=0.03)
    n.add("A", world.endpoint("alpha", seed=seed))
    n.add("B", world.endpoint("beta", seed=seed + 1000))
    got = one_way(n, "A", "B", 0.0, 20.0, 0.1)
    return got[0] if got else None


def test_first_contact_over_a_path_that_loses_a_quarter_of_its_datagrams(world: World) -> None:
    """One datagram in four lost each way (a 30-hop path at 1 % per hop): a lost
    fragment used to lose its message and every retry to start over."""
    times = [first_contact_time(world, seed, 0.26) for seed in range(1, 9)]
    assert None not in times, times
    assert statistics.median(t for t in times if t is not None) <= 2.0, times


def test_a_lost_fragment_is_asked_for_and_resent_alone(world: World) -> None:
    a = world.endpoint("alpha", seed=11)
    b = world.endpoint("beta", seed=12)
    a.add_peer("B", cert_der=world.creds["beta"].cert.der)
    init = sends(a.connect(0.0, "B"))
    assert len(init) > 2
    out: list[Action] = []
    for i, d in enumerate(init):
        if i != 1:  # fragment 1 is lost
            out += b.handle(0.0, Datagram("A", d))
    assert not sends(out)
    timers = [x for x in out if isinstance(x, SetTimer)]
    nack_at = min(t.at for t in timers)
    assert nack_at == pytest.approx(C.NACK_QUIET)
    nacks: list[bytes] = []
    for t in timers:
        if t.at == nack_at:
            nacks += sends(b.handle(nack_at, Timer(t.key)))
    assert len(nacks) == 1 and len(nacks[0]) == C.FRAGMENT_NACK_SIZE
    again = sends(a.handle(0.05, Datagram("B", nacks[0])))
    assert again == [init[1]]  # only what was missing
    resp = sends(b.handle(0.06, Datagram("A", again[0])))
    assert resp, "the repaired INIT was answered"
    assert b.counters.get("nack_sent") == 1 and a.counters.get("fragments_resent") == 1


def test_a_retry_resends_the_same_init_and_a_lost_resp_is_resent_without_kem_work(
    world: World,
) -> None:
    a = world.endpoint("alpha", seed=13)
    b = world.endpoint("beta", seed=14)
    a.add_peer("B", cert_der=world.creds["beta"].cert.der)
    from x0tta6bl4.channel.timers import ChannelTimer, ChannelTimerKind

    a.connect(0.0, "B")  # lost entirely
    hs = Timer(ChannelTimer("x0t.secure", ChannelTimerKind.HANDSHAKE, "B"))
    full = sends(a.handle(1.0, hs))  # the retry carries alpha's certificate
    resp = [r for d in full for r in sends(b.handle(1.0, Datagram("A", d)))]
    assert resp  # answered; the RESP is lost
    again = [d for d in sends(a.handle(2.0, hs)) if d[1] == C.MSG_FRAGMENT]
    assert again == full  # the same INIT, byte for byte: its fragments combine
    before = b.counters.get("replay", 0)
    resent = [r for d in again for r in sends(b.handle(2.0, Datagram("A", d)))]
    assert resent == resp  # the kept RESP, no second decapsulation
    assert b.counters.get("answer_resent") == 1
    assert b.counters.get("replay", 0) == before + 1  # the copy itself is still refused
    confirm = [c for r in resent for c in sends(a.handle(2.1, Datagram("B", r)))]
    for c in confirm:
        b.handle(2.2, Datagram("A", c))
    assert b.peer("A").established  # type: ignore[union-attr]
