"""What the endpoint tells the layer above and the trace: the ``SessionUp`` control
action, typed timer keys, drop reasons, and the explicit peer and attempt states."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import pytest

from tests.channel.helpers import World, make_world
from x0tta6bl4.channel import constants as C
from x0tta6bl4.channel.drops import DropReason, Tally
from x0tta6bl4.channel.endpoint import SecureEndpoint
from x0tta6bl4.channel.peers import AttemptPhase, PeerOrigin, PeerState
from x0tta6bl4.channel.timers import ChannelTimer, ChannelTimerKind
from x0tta6bl4.channel.wire import header
from x0tta6bl4.errors import RejectReason
from x0tta6bl4.sansio import Action, Datagram, Event, Send, SessionUp, SetTimer, Timer, outgoing


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("signals"), ["alpha", "beta"])


Lose = Callable[[str, object, bytes], bool]


def pump(
    eps: dict[str, SecureEndpoint],
    src: str,
    actions: list[Action],
    now: float,
    lose: Lose = lambda src, dst, data: False,
) -> dict[str, list[Action]]:
    """Hand every Send to its endpoint (the sender's name is its address) until quiet;
    every action each side produced, in order."""
    log: dict[str, list[Action]] = {k: [] for k in eps}
    todo: deque[tuple[str, list[Action]]] = deque([(src, actions)])
    while todo:
        who, acts = todo.popleft()
        log[who] += acts
        for addr, data in outgoing(acts):
            if not lose(who, addr, data):
                dst = str(addr)
                todo.append((dst, eps[dst].handle(now, Datagram(who, data))))
    return log


def session_ups(actions: list[Action]) -> list[SessionUp]:
    return [x for x in actions if isinstance(x, SessionUp)]


def assert_announced(actions: list[Action], addr: str, name: str) -> None:
    """One SessionUp for ``addr``/``name``, immediately before its handshake_complete."""
    assert session_ups(actions) == [SessionUp(addr, name)]
    i = next(i for i, x in enumerate(actions) if isinstance(x, SessionUp))
    nxt = actions[i + 1]
    assert isinstance(nxt, Event) and nxt.kind == "handshake_complete"
    assert nxt.fields["peer"] == name
    completes = [x for x in actions if isinstance(x, Event) and x.kind == "handshake_complete"]
    assert len(completes) == 1


def pair(world: World, seed: int) -> dict[str, SecureEndpoint]:
    return {
        "A": world.endpoint("alpha", seed=seed),
        "B": world.endpoint("beta", seed=seed + 1),
    }


# --- SessionUp ---------------------------------------------------------------------------


def test_session_up_once_per_confirmed_session_on_both_sides(world: World) -> None:
    eps = pair(world, 1)
    a, b = eps["A"], eps["B"]
    # first contact: certificate exchange, INIT, RESP, CONFIRM, the responder's answer
    log = pump(eps, "A", a.connect(0.0, "B"), 0.0)
    assert_announced(log["A"], "B", "beta")
    assert_announced(log["B"], "A", "alpha")
    assert a.peer("B").established and b.peer("A").established  # type: ignore[union-attr]
    # a rekey from either side: one more each, naming the same peer
    for t, who, to in ((1.0, "A", "B"), (2.0, "B", "A")):
        log = pump(eps, who, eps[who].connect(t, to), t)
        assert_announced(log["A"], "B", "beta")
        assert_announced(log["B"], "A", "alpha")
    # data on the session, and a replayed CONFIRM, announce nothing
    log = pump(eps, "A", a.send(3.0, "B", b"hello"), 3.0)
    assert not session_ups(log["A"]) and not session_ups(log["B"])


def test_no_session_up_for_an_unconfirmed_responder(world: World) -> None:
    eps = pair(world, 3)
    a, b = eps["A"], eps["B"]
    a.add_peer("B", cert_der=world.creds["beta"].cert.der)

    def lose_confirm(src: str, dst: object, data: bytes) -> bool:
        return src == "A" and data[1] == C.MSG_CONFIRM

    log = pump(eps, "A", a.connect(0.0, "B"), 0.0, lose_confirm)
    # alpha holds a session (RESP authenticated beta); beta made nothing and says nothing
    assert_announced(log["A"], "B", "beta")
    assert session_ups(log["B"]) == [] and b.peer("A") is None
    # alpha resends CONFIRM until beta answers; beta announces it exactly once then
    ack = Timer(ChannelTimer(a.timer_namespace, ChannelTimerKind.ACK, "B"))
    at_beta: list[Action] = []
    for t in (0.5, 1.0):
        at_beta += pump(eps, "A", a.handle(t, ack), t)["B"]
    assert_announced(at_beta, "A", "alpha")  # once, although alpha fired twice


def test_session_up_is_not_emitted_for_a_rejected_confirm(world: World) -> None:
    """A CONFIRM whose DATA does not authenticate makes no session and no SessionUp."""
    eps = pair(world, 5)
    a, b = eps["A"], eps["B"]
    a.add_peer("B", cert_der=world.creds["beta"].cert.der)
    confirms: list[bytes] = []

    def hold_confirm(src: str, dst: object, data: bytes) -> bool:
        if src == "A" and data[1] == C.MSG_CONFIRM:
            confirms.append(data)
            return True
        return False

    pump(eps, "A", a.connect(0.0, "B"), 0.0, hold_confirm)
    forged = bytearray(confirms[0])
    forged[-1] ^= 1  # the DATA's tag
    out = b.handle(0.0, Datagram("A", bytes(forged)))
    assert not session_ups(out) and b.counters["decrypt_failed"] == 1


# --- timers ------------------------------------------------------------------------------


def test_every_timer_is_a_channel_timer_in_the_endpoints_namespace(world: World) -> None:
    eps = {
        "A": world.endpoint("alpha", seed=7, timer_namespace="x0t.link"),
        "B": world.endpoint("beta", seed=8, timer_namespace="x0t.link"),
    }
    a = eps["A"]
    assert a.timer_namespace == "x0t.link"
    # first contact with a queued payload: certificate exchange, fragments, all timers
    log = pump(eps, "A", a.send(0.0, "B", b"queued"), 0.0)
    timers = [x for side in log.values() for x in side if isinstance(x, SetTimer)]
    kinds = {t.key.kind for t in timers if isinstance(t.key, ChannelTimer)}
    assert all(isinstance(t.key, ChannelTimer) for t in timers)
    assert {t.key.namespace for t in timers} == {"x0t.link"}  # type: ignore[attr-defined]
    assert {ChannelTimerKind.HANDSHAKE, ChannelTimerKind.ACK, ChannelTimerKind.EXPIRE} <= kinds
    assert ChannelTimerKind.REASSEMBLY in kinds
    # each fires back through handle without a drop; another namespace is not ours
    for t in timers:
        eps["A" if t in log["A"] else "B"].handle(0.0, Timer(t.key))
    assert "unknown_timer" not in a.counters and "unknown_timer" not in eps["B"].counters
    a.handle(0.0, Timer(ChannelTimer("x0t.secure", ChannelTimerKind.HANDSHAKE, "B")))
    assert a.counters["unknown_timer"] == 1


def test_timer_kinds_keep_their_names() -> None:
    assert [k.value for k in ChannelTimerKind] == [
        "hs",
        "confirm",
        "expire",
        "reasm",
        "nack",
        "ack",
        "dreasm",
    ]
    key = ChannelTimer("ns", ChannelTimerKind.REASSEMBLY, ("10.0.0.1", 4500), 7)
    assert key == ChannelTimer("ns", ChannelTimerKind.REASSEMBLY, ("10.0.0.1", 4500), 7)
    assert len({key, ChannelTimer("ns", ChannelTimerKind.REASSEMBLY, ("10.0.0.1", 4500), 8)}) == 2


# --- drop reasons ------------------------------------------------------------------------


def test_drop_reasons_keep_their_strings() -> None:
    """Counters and traces are read by these strings: renaming one is a breaking change."""
    plain = {
        "malformed",
        "bad_fragment",
        "reassembly_full",
        "reassembly_timeout",
        "data_incomplete",
        "unknown_message",
        "resend_budget",
        "unknown_index",
        "expired_session",
        "replay",
        "decrypt_failed",
        "unmatched_no_session",
        "no_session_rate_limited",
        "bad_mac1",
        "bad_mac2",
        "bad_check",
        "rate_limited",
        "unknown_fingerprint",
        "reflected",
        "unexpected_identity",
        "stale_timestamp",
        "simultaneous_open_lost",
        "stale_biscuit",
        "bad_biscuit",
        "peer_revoked",
        "addr_revoked",
        "renewal_refused",
        "peer_limit",
        "unknown_timer",
        "unsupported_input",
        "internal_error",
    }
    rejected = {f"cert_rejected:{r.value}" for r in RejectReason}
    assert {r.value for r in DropReason} == plain | rejected
    for r in RejectReason:
        assert DropReason.cert_rejected(r) == f"cert_rejected:{r.value}"
    assert {t.value for t in Tally} == {
        "cookie_sent",
        "cookie_received",
        "cert_sent",
        "queue_overflow",
        "queue_dropped",
        "reassembly_evicted",
        "duplicate_fragment",
        "confirm_unanswered",
        "no_session_sent",
        "no_session_acted",
        "keepalive_sent",
        "no_reply_handshake",
        "nack_sent",
        "fragments_resent",
        "answer_resent",
        "peer_moved",
        "move_refused",
        "revoked_teardown",
        "revoked_attempt_ended",
        "cert_renewed",
    }


def test_every_counter_and_dropped_event_uses_the_enums(world: World) -> None:
    eps = pair(world, 9)
    a, b = eps["A"], eps["B"]
    b.set_under_load(True)  # cookies too
    log = pump(eps, "A", a.connect(0.0, "B"), 0.0)
    junk = [
        b"",
        b"\x01",
        header(C.MSG_DATA) + bytes(40),
        header(C.MSG_INIT) + bytes(3000),
        header(C.MSG_RESP) + bytes(10),
        header(C.MSG_COOKIE) + bytes(48),
        header(C.MSG_CERT_REQUEST) + bytes(124),
        header(C.MSG_CERT) + bytes(60),
        header(C.MSG_FRAGMENT) + bytes(30),
        header(C.MSG_CONFIRM) + bytes(200),
        bytes((1, 99, 0, 0)),
    ]
    for d in junk:
        for ep in (a, b):
            log["A"] += ep.handle(1.0, Datagram("Z", d))
    a.handle(1.0, Timer("not ours"))
    for ep in (a, b):
        assert ep.counters
        for key in ep.counters:
            assert isinstance(key, DropReason | Tally), key
    dropped = [x for side in log.values() for x in side if isinstance(x, Event)]
    reasons = [e.fields["reason"] for e in dropped if e.kind == "dropped"]
    assert reasons and all(isinstance(r, DropReason) for r in reasons)


# --- peer and attempt states ---------------------------------------------------------------


def test_peer_and_attempt_states_through_a_handshake(world: World) -> None:
    eps = pair(world, 11)
    a, b = eps["A"], eps["B"]
    a.add_peer("B")  # no certificate: the attempt starts by fetching it
    assert a.peer("B").state is PeerState.IDLE  # type: ignore[union-attr]
    cr = a.connect(0.0, "B")
    pa = a._peers["B"]
    assert pa.attempt is not None and pa.attempt.phase is AttemptPhase.FETCHING_CERT
    assert a.peer("B").state is PeerState.HANDSHAKING  # type: ignore[union-attr]
    confirms: list[bytes] = []

    def hold_confirm(src: str, dst: object, data: bytes) -> bool:
        if src == "A" and data[1] == C.MSG_CONFIRM:
            confirms.append(data)
            return True
        return False

    # CERT arrives: INIT goes out (phase AWAITING_RESP) and is answered; CONFIRM held
    seen: list[AttemptPhase] = []

    def watch(src: str, dst: object, data: bytes) -> bool:
        if src == "A" and data[1] in (C.MSG_INIT, C.MSG_FRAGMENT) and pa.attempt is not None:
            seen.append(pa.attempt.phase)
        return hold_confirm(src, dst, data)

    pump(eps, "A", cr, 0.0, watch)
    assert seen and set(seen) == {AttemptPhase.AWAITING_RESP}
    assert pa.attempt is None and a.peer("B").state is PeerState.CONFIRMING  # type: ignore[union-attr]
    assert b.peer("A") is None
    pump(eps, "A", [Send("B", c) for c in confirms], 0.0)  # now the CONFIRM arrives
    assert a.peer("B").state is PeerState.ESTABLISHED  # type: ignore[union-attr]
    assert b.peer("A").state is PeerState.ESTABLISHED  # type: ignore[union-attr]
    assert b._peers["A"].origin is PeerOrigin.INBOUND and pa.origin is PeerOrigin.DECLARED
    a.connect(1.0, "B")  # in flight, unanswered
    assert a.peer("B").state is PeerState.REKEYING  # type: ignore[union-attr]
    b.send(1.0, "A", b"beta declares alpha by sending to it")
    assert b._peers["A"].origin is PeerOrigin.DECLARED
