"""``x0t sim``: named scenarios on the real mesh, printed; ``--trace`` writes JSON lines."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from typer.testing import CliRunner

from x0tta6bl4.cli import SimScenario, SimTopology, app
from x0tta6bl4.sim.runner import SCENARIOS, TOPOLOGY_KINDS

runner = CliRunner()


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["sim", *args])
    return result.exit_code, result.output


def _field(out: str, name: str) -> str:
    m = re.search(rf"^{name}\s+(.+)$", out, re.MULTILINE)
    assert m, out
    return m.group(1)


def test_scenario_names_mirror_the_runner() -> None:
    assert tuple(s.value for s in SimScenario) == SCENARIOS
    assert tuple(t.value for t in SimTopology) == TOPOLOGY_KINDS


def test_sim_diamond_prints_summary_and_writes_trace(tmp_path: Path) -> None:
    trace = tmp_path / "diamond.jsonl"
    code, out = run("diamond", "--seed", "3", "--trace", str(trace))
    assert code == 0, out
    assert "x0t sim diamond: 4 nodes, seed 3" in out
    assert re.match(r"\d+\.\d\d s$", _field(out, "convergence"))
    assert re.match(r"kill [bc] at \d+\.\d\d s$", _field(out, "fault"))
    assert re.match(r"\d+\.\d\d s$", _field(out, "recovery"))
    assert "every 0.5 s" in _field(out, "reachability")
    assert "final 1.00" in _field(out, "reachability")
    assert "B/node/s" in _field(out, "control traffic")
    assert "crashed" in _field(out, "drops")
    # The healing table: both neighbours of the dead relay report it, repaired.
    assert re.search(r"dead_neighbour\s+[bc]\s+reroute\S*\s+repaired", out), out
    digest = _field(out, "trace digest").removeprefix("sha256 ")
    data = trace.read_bytes()
    assert hashlib.sha256(data).hexdigest() == digest
    records = [json.loads(line) for line in data.decode().splitlines()]
    assert records and {"t", "node", "kind", "fields"} <= records[0].keys()
    assert any(r["kind"] == "sim.crash" for r in records)
    assert any(r["kind"] == "healing" for r in records)


def test_sim_same_seed_same_digest() -> None:
    code1, out1 = run("converge", "--nodes", "8", "--seed", "2")
    code2, out2 = run("converge", "--nodes", "8", "--seed", "2")
    assert code1 == code2 == 0, out1 + out2
    assert _field(out1, "trace digest") == _field(out2, "trace digest")
    assert "x0t sim converge: 8 nodes, seed 2" in out1
    assert "healing events   0" in out1
    # The defaults print what they always printed: no network or flow rows.
    assert not re.search(r"^(network|flows|user outage)\s", out1, re.MULTILINE), out1


def test_sim_until_and_relay_kill() -> None:
    code, out = run("relay-kill", "--nodes", "10", "--seed", "3", "--until", "6")
    assert code == 0, out
    assert "6.00 virtual s" in out
    assert re.match(r"kill n\d{4} at", _field(out, "fault"))


def test_sim_lossy_regular_mesh_with_flows() -> None:
    code, out = run(
        "relay-kill",
        *("--nodes", "10", "--seed", "3", "--topology", "random-regular", "--degree", "3"),
        *("--loss", "0.01", "--jitter", "0.002", "--flows", "8", "--until", "10"),
    )
    assert code == 0, out
    assert _field(out, "network") == "random-regular; per link loss 0.01, jitter 0.002 s"
    assert re.match(
        r"8: delivered [\d,]+ of [\d,]+ \(\d\.\d{3}\), median latency", _field(out, "flows")
    )
    assert "(flows included)" in _field(out, "control traffic")
    outage = _field(out, "user outage")
    assert re.match(r"(crash n\d{4} at .* flows hit, outage max|no flow crossed)", outage), out
    assert "loss" in _field(out, "drops")


def test_sim_rejects_bad_arguments() -> None:
    code, out = run("meteor")
    assert code == 2
    assert "meteor" in out
    code, _ = run("converge", "--nodes", "1")
    assert code == 2
    code, _ = run("converge", "--until", "0")
    assert code == 2
    for bad in (("--loss", "1.5"), ("--topology", "torus"), ("--flows", "-1"), ("--jitter", "-1")):
        code, out = run("converge", *bad)
        assert code == 2, (bad, out)
