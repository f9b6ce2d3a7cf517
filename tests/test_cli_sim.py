"""``x0t sim``: named scenarios on the real mesh, printed; ``--trace`` writes JSON lines."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from typer.testing import CliRunner

from x0tta6bl4.cli import SimScenario, app
from x0tta6bl4.sim.runner import SCENARIOS

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


def test_sim_until_and_relay_kill() -> None:
    code, out = run("relay-kill", "--nodes", "10", "--seed", "3", "--until", "6")
    assert code == 0, out
    assert "6.00 virtual s" in out
    assert re.match(r"kill n\d{4} at", _field(out, "fault"))


def test_sim_rejects_bad_arguments() -> None:
    code, out = run("meteor")
    assert code == 2
    assert "meteor" in out
    code, _ = run("converge", "--nodes", "1")
    assert code == 2
    code, _ = run("converge", "--until", "0")
    assert code == 2
