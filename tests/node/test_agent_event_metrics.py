"""The agent turns the channel's events into handshake and rekey metrics. The events are
the real ones a ``SecureEndpoint`` emits (tests/channel's in-memory network, virtual
time), handed to an agent built from its state directory the way its runner hands them
(named ``link.<kind>`` by the mesh)."""

from __future__ import annotations

from pathlib import Path

from tests.channel.helpers import Net, make_world
from x0tta6bl4.channel import constants as C
from x0tta6bl4.node.agent import Agent
from x0tta6bl4.node.config import load_settings
from x0tta6bl4.node.localmesh import LocalMesh
from x0tta6bl4.observability import enable_metrics
from x0tta6bl4.observability import metrics as m
from x0tta6bl4.sansio import Event


def _value(name: str, **labels: str) -> float:
    return m.REGISTRY.get_sample_value(name, labels) or 0.0


def _channel_events(tmp_path: Path) -> list[Event]:
    """alpha's events: a session, rekeys under traffic, then a rekey nobody answers."""
    world = make_world(tmp_path / "world", ["alpha", "beta"])
    n = Net(seed=5)
    n.add("A", world.endpoint("alpha", seed=11))
    n.add("B", world.endpoint("beta", seed=12))
    t = 0.0
    while t < C.REKEY_AFTER_TIME + 20:  # traffic across the rekey time: rekeys happen
        n.send("A", "B", b"ping")
        t += 1.0
        n.run(t)
    n.tap = lambda src, dst, data: None  # beta goes silent
    n.connect("A", "B")  # a rekey, with a session in place
    n.run(n.now + C.REKEY_ATTEMPT_TIME + 2 * C.HANDSHAKE_RETRY_CAP)
    return [e for _, addr, e in n.events if addr == "A"]


def test_rekeys_and_failed_handshakes_are_counted(tmp_path: Path) -> None:
    events = _channel_events(tmp_path)
    rekeyed = sum(1 for e in events if e.kind == "session_rekeyed")
    failed = [e for e in events if e.kind == "handshake_failed"]
    assert rekeyed >= 1 and len(failed) == 1 and failed[0].fields["rekey"] is True
    mesh = LocalMesh(tmp_path / "mesh", ["p", "q"], [("p", "q")]).create()
    agent = Agent.from_settings(load_settings(mesh.nodes["p"].config))
    enable_metrics()  # what run() does when the node serves /metrics
    before = (
        _value("x0tta6bl4_rekeys_total", outcome="ok"),
        _value("x0tta6bl4_rekeys_total", outcome="failed"),
        _value("x0tta6bl4_handshake_failures_total", reason="timeout"),
        _value("x0tta6bl4_handshakes_total", role="initiator", outcome="failed"),
    )
    for e in events:
        agent._on_event(Event(f"link.{e.kind}", e.fields))
    after = (
        _value("x0tta6bl4_rekeys_total", outcome="ok"),
        _value("x0tta6bl4_rekeys_total", outcome="failed"),
        _value("x0tta6bl4_handshake_failures_total", reason="timeout"),
        _value("x0tta6bl4_handshakes_total", role="initiator", outcome="failed"),
    )
    assert [b - a for a, b in zip(before, after, strict=True)] == [rekeyed, 1, 1, 1]


def test_a_node_without_metrics_never_loads_prometheus_client(tmp_path: Path) -> None:
    # /metrics is off by default: the agent then records nothing and keeps
    # prometheus-client and its HTTP stack out of its memory (about 1.6 MB).
    import subprocess
    import sys

    code = (
        "import sys\n"
        "for m in ('rich', 'greenlet'): sys.modules[m] = None\n"
        "import x0tta6bl4.node.agent, x0tta6bl4.node.api, x0tta6bl4.node.stream, "
        "x0tta6bl4.node.reporter\n"
        "from x0tta6bl4.observability import recorder\n"
        "print(recorder() is None, 'prometheus_client' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == ["True", "False"], out.stderr
