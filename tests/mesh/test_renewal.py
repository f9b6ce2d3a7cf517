"""A renewed certificate is used at once, without a restart (``CertificateRenewed``).

Node a starts with a certificate valid for 20 virtual seconds and links with b; both send
each other application traffic all along. At t = 3 a is offered certificates that may not
replace its own (another node's, one for another static key, an expired one): each is
refused and a keeps presenting the one it has. At t = 5 it gets a renewal (same name, same
keys, an hour long). From then on it presents the new one: b's re-handshake after the old
one expired fetches the new certificate, and d, a node that only appears at t = 25 (the
old certificate dead by then), links with a and opens an end-to-end session with it, both
verified on the new serial. The a-b sessions made on the old certificate keep running
throughout: nothing is torn down, no traffic is lost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from x0tta6bl4.crypto.hybrid import HybridPrivateKey
from x0tta6bl4.identity.cert import NodeCertificate
from x0tta6bl4.mesh.node import MeshNode, node_id
from x0tta6bl4.sansio import Action, CertificateRenewed, Core, Deliver, Event, Send
from x0tta6bl4.sim import Edge, LinkSpec, Simulator, Topology
from x0tta6bl4.sim.meshsim import MeshSim, MeshWorld, SimCredential, build_world, mesh_of

SEED = 31
PORT = 9
SHORT = 20.0  # a's first certificate: valid this many virtual seconds
T_REFUSED = 3.0
T_RENEWED = 5.0
T_REKEY_OLD = 6.0  # b re-handshakes while it still holds a's old (valid) certificate
T_OLD_REPLAYED = 7.0
T_D_ARRIVES = 25.0  # after the old certificate expired
T_REKEY_NEW = 26.0  # b re-handshakes again: its cached copy of a's certificate expired
T_END = 30.0


@dataclass
class Run:
    world: MeshWorld
    sim: Simulator
    short: SimCredential
    renewed: SimCredential
    seen: list[tuple[float, str, Action]] = field(default_factory=list)
    # what a's core answered each CertificateRenewed with (control actions included)
    answered: dict[str, list[Action]] = field(default_factory=dict)
    cert_before_renewal: bytes = b""
    b_serial_after_old_rekey: int | None = None
    b_handshakes: dict[float, int] = field(default_factory=dict)
    sent: dict[str, list[bytes]] = field(default_factory=dict)

    def mesh(self, name: str) -> MeshNode:
        m = mesh_of(self.sim.core(name))
        assert m is not None
        return m

    def events(self, node: str, kind: str, after: float = 0.0) -> list[Event]:
        return [
            a
            for t, n, a in self.seen
            if n == node and t >= after and type(a) is Event and a.kind == kind
        ]

    def delivered(self, node: str, src: str) -> list[bytes]:
        return [
            a.payload
            for _, n, a in self.seen
            if n == node and type(a) is Deliver and a.port == PORT and a.src == src
        ]


def _serial(der: bytes) -> int:
    return NodeCertificate.from_der(der).serial


def _offer(der: bytes, log: list[Action]) -> Callable[[Core, float], list[Action]]:
    def feed(core: Core, now: float) -> list[Action]:
        out = list(core.handle(now, CertificateRenewed(der)))
        log.extend(out)
        return out

    return feed


def _connect(sim: Simulator, node: str, peer: str, at: float) -> None:
    def go(core: Core, now: float) -> list[Action]:
        m = mesh_of(core)
        assert m is not None
        return m.links.connect(now, peer)

    sim.call(at, node, go)


@pytest.fixture(scope="module")
def run() -> Run:
    s = LinkSpec()
    topo = Topology(("a", "b", "d"), (Edge("a", "b", s), Edge("a", "d", s)))
    world = build_world(topo.nodes, SEED)
    short = world.issue("a", at=0.0, validity=SHORT)
    renewed = world.issue("a", at=T_RENEWED, validity=3600.0)
    make = MeshSim(world, topo, credentials={"a": short}).factory()
    sim = Simulator(SEED, trace_drops=False)
    out = Run(world, sim, short, renewed)
    sim.on_action.append(lambda t, n, a: None if type(a) is Send else out.seen.append((t, n, a)))
    sim.add_node("a", make)
    sim.add_node("b", make)  # d comes later
    sim.add_link("a", "b", s)

    # a and b talk all along, before and after the renewal and the old certificate's end
    for k in range(int(T_END / 0.5) - 2):
        t = round(1.0 + 0.5 * k, 6)
        for src, dst in (("a", "b"), ("b", "a")):
            payload = b"%s to %s %d" % (src.encode(), dst.encode(), k)
            out.sent.setdefault(src, []).append(payload)
            sim.send_app(t, src, dst, PORT, payload)

    # refused: another node's certificate, one for another static key, an expired one
    other_static = world.issue(
        "a", at=T_REFUSED, validity=3600.0, static=HybridPrivateKey.generate()
    )
    expired = world.issue("a", at=-3000.0, validity=60.0)
    for der in (world.credentials["b"].cert_der, other_static.cert_der, expired.cert_der):
        sim.call(T_REFUSED, "a", _offer(der, out.answered.setdefault("refused", [])))
    sim.run(T_REFUSED + 0.5)
    out.cert_before_renewal = out.mesh("a").links.cert_der

    sim.call(T_RENEWED, "a", _offer(renewed.cert_der, out.answered.setdefault("renewed", [])))
    sim.run(T_RENEWED + 0.5)
    out.b_handshakes[T_RENEWED] = _handshakes(out.mesh("b"), "a")

    _connect(sim, "b", "a", T_REKEY_OLD)
    sim.run(T_REKEY_OLD + 0.5)
    out.b_handshakes[T_REKEY_OLD] = _handshakes(out.mesh("b"), "a")
    info = out.mesh("b").links.peer("a")
    ident = None if info is None else info.identity
    out.b_serial_after_old_rekey = None if ident is None else ident.serial

    # the old certificate replayed: older than the one in use
    sim.call(T_OLD_REPLAYED, "a", _offer(short.cert_der, out.answered.setdefault("older", [])))

    sim.run(T_D_ARRIVES)
    sim.add_node("d", make)
    sim.add_link("a", "d", s)
    sim.send_app(T_D_ARRIVES + 1.0, "d", "a", PORT, b"d to a")
    _connect(sim, "b", "a", T_REKEY_NEW)
    sim.run(T_END)
    return out


def _handshakes(m: MeshNode, peer: str) -> int:
    info = m.links.peer(peer)
    return 0 if info is None else info.handshakes


def test_wrong_certificates_are_refused_and_the_old_one_stays(run: Run) -> None:
    a = run.mesh("a")
    assert run.cert_before_renewal == run.short.cert_der
    refused = [
        e.fields["why"]
        for e in run.answered["refused"]
        if type(e) is Event and e.kind.endswith(".dropped")
    ]
    # each endpoint (link and end-to-end) refuses each one
    expected = 2 * ["other_name", "other_static_key", "rejected:expired"]
    assert sorted(refused) == sorted(expected), refused
    assert a.links.counters["renewal_refused"] == 4  # the three, and the replayed old one
    assert a.e2e.counters["renewal_refused"] == 4
    older = [e for e in run.answered["older"] if type(e) is Event and e.kind.endswith(".dropped")]
    assert [e.fields["why"] for e in older] == ["older", "older"]


def test_the_renewed_certificate_is_presented_from_then_on(run: Run) -> None:
    a = run.mesh("a")
    assert a.links.cert_der == run.renewed.cert_der
    assert a.e2e.cert_der == run.renewed.cert_der
    assert a.links.fingerprint == NodeCertificate.from_der(run.renewed.cert_der).fingerprint
    assert a.counters["certificate_renewed"] == 1
    assert [e.kind for e in run.answered["renewed"] if type(e) is Event] == [
        "link.certificate_renewed",
        "e2e.certificate_renewed",
    ]
    # healing watches the new expiry
    assert a.observe(run.sim.now).cert_not_after == run.renewed.not_after


def test_a_brand_new_peer_sees_the_new_serial(run: Run) -> None:
    new = _serial(run.renewed.cert_der)
    d = run.mesh("d")
    link = d.links.peer("a")
    assert link is not None and link.established
    assert link.identity is not None and link.identity.serial == new
    e2e = d.e2e.peer(node_id("a"))
    assert e2e is not None and e2e.identity is not None and e2e.identity.serial == new
    assert run.delivered("a", "d") == [b"d to a"]
    assert d.neighbours() == {"a": True}


def test_a_peer_holding_the_old_certificate_still_gets_through_then_takes_the_new(
    run: Run,
) -> None:
    # At t = 6 b re-handshakes sealed to the old certificate it cached (valid until 20):
    # a answers it. After 20, b's copy has expired: it fetches the new one.
    assert run.b_handshakes[T_REKEY_OLD] == run.b_handshakes[T_RENEWED] + 1
    assert run.b_serial_after_old_rekey == _serial(run.short.cert_der)
    info = run.mesh("b").links.peer("a")
    assert info is not None and info.identity is not None
    assert info.identity.serial == _serial(run.renewed.cert_der)
    assert run.mesh("a").links.counters.get("decrypt_failed", 0) == 0
    assert run.events("b", "link.handshake_failed") == []


def test_sessions_made_on_the_old_certificate_keep_running(run: Run) -> None:
    assert run.delivered("b", "a") == run.sent["a"]
    assert run.delivered("a", "b") == run.sent["b"]
    for node in ("a", "b"):
        for kind in ("neighbour_dead", "neighbour_restarted", "link.session_unconfirmed"):
            assert run.events(node, kind) == [], (node, kind)
    assert run.mesh("a").neighbours()["b"] is True and run.mesh("b").neighbours() == {"a": True}
