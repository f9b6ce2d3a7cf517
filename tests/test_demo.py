"""``x0t demo`` end to end: real UDP sockets on 127.0.0.1, then six real agent processes;
the simulator's diamond failover is tested here too (it is what ``x0t sim`` builds on)."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from x0tta6bl4.demo import PINGS, secure_channel
from x0tta6bl4.sim.failover_demo import KILL_AT, run_diamond


def test_secure_channel_over_real_udp() -> None:
    r = asyncio.run(secure_channel())
    assert r.handshake_datagrams >= 20  # first contact: certificates fetched, verified
    assert len(r.rtt_ms) == PINGS
    assert r.burst_delivered == 2000
    assert r.rekeys == 1 and r.after_rekey_delivered == 10
    assert any("session_rekeyed" in e for e in r.events)


def test_the_diamond_heals_within_a_second() -> None:
    r = run_diamond()
    assert r.killed in ("b", "c")
    assert r.path_after is not None and r.killed not in r.path_after
    assert r.first_after_kill is not None and r.first_after_kill - KILL_AT < 1.0
    repaired = [e for _, e in r.healing if e.outcome == "repaired"]
    assert repaired and all(e.mttr is not None and e.mttr < 1.0 for e in repaired)
    assert run_diamond().digest == r.digest  # same seed, same trace


def test_x0t_demo_command_runs() -> None:
    x0t = Path(sys.executable).with_name("x0t")
    done = subprocess.run(
        [str(x0t), "demo"], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "Secure channel over real UDP" in done.stdout
    assert "six real agent processes" in done.stdout
    assert "repaired" in done.stdout  # healing verified the reroute end to end
    assert "processes left running │ 0" in done.stdout
    # the nodes enrolled through x0t serve, reported to it, and obeyed a revocation
    assert "6 nodes enrolled with one join token" in done.stdout
    assert "revoked" in done.stdout and "dropped its sessions" in done.stdout


def test_demo_prints_to_a_console() -> None:
    from x0tta6bl4.demo import run

    buf = io.StringIO()
    run(Console(file=buf, width=120))
    text = buf.getvalue()
    assert "forced rekey" in text and "10/10 delivered after it" in text
