"""A real Prometheus (the Debian package's /usr/bin/prometheus) scrapes a running control
plane (``x0t serve`` on SQLite) and a three-node mesh of real agent processes through
the scrape jobs of deploy/monitoring/prometheus.yml; kill -9 of a node makes the
production node-down rule fire in Prometheus's own ``/api/v1/alerts``.

The rules are the production files with only ``for:`` shortened (rewritten here when
loaded), so the expressions evaluated are the ones operators deploy. Every process and
directory it makes is removed, also on failure.
"""

from __future__ import annotations

import json
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from tests.deploy.tools import require_tool
from x0tta6bl4.node.localcontrol import LocalControlPlane, free_port, stop_process
from x0tta6bl4.node.localmesh import LocalMesh, free_base_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "deploy" / "monitoring"
NAMES = ["a", "b", "c"]
EDGES = [("a", "b"), ("b", "c"), ("a", "c")]
SHORT_FOR = "2s"  # instead of minutes: two 1 s evaluations pending, then firing
T = TypeVar("T")


@dataclass
class Stack:
    prometheus_url: str
    control: LocalControlPlane
    mesh: LocalMesh


def _shortened_rules(source: Path, target: Path) -> None:
    """The production rule file with every ``for:`` cut to SHORT_FOR; expressions,
    labels and annotations untouched."""
    document = yaml.safe_load(source.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = SHORT_FOR
    target.write_text(yaml.safe_dump(document, sort_keys=False))


def _write_config(directory: Path, control_port: int, mesh: LocalMesh) -> Path:
    """The production prometheus.yml (its scrape jobs and file_sd globs) with 1 s
    intervals, the shortened rules, no Alertmanager, and targets files for this stack."""
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config.pop("alerting")
    (directory / "rules").mkdir(parents=True)
    for path in sorted((MONITORING / "rules").glob("*.yml")):
        _shortened_rules(path, directory / "rules" / path.name)
    targets = directory / "targets"
    targets.mkdir()
    (targets / "control.yml").write_text(
        yaml.safe_dump(
            [{"targets": [f"127.0.0.1:{control_port}"], "labels": {"component": "control-plane"}}]
        )
    )
    assert mesh.metrics_base_port is not None
    nodes = [
        {
            "targets": [f"{node.host}:{mesh.metrics_base_port + i}"],
            "labels": {"component": "node", "node": node.name},
        }
        for i, node in enumerate(mesh.nodes.values())
    ]
    (targets / "nodes.yml").write_text(yaml.safe_dump(nodes))
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _get(url: str, timeout: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        return json.loads(answer.read())


def _query(base: str, expr: str) -> list[dict[str, Any]]:
    answer = _get(f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
    assert answer["status"] == "success", answer
    return list(answer["data"]["result"])


def _alerts(base: str, name: str) -> list[dict[str, Any]]:
    answer = _get(f"{base}/api/v1/alerts")
    return [a for a in answer["data"]["alerts"] if a["labels"]["alertname"] == name]


def _wait_for(probe: Callable[[], T | None], timeout: float, what: str) -> tuple[T, float]:
    """Polls ``probe`` every 0.2 s until it returns a value; (value, seconds taken)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            value = probe()
        except OSError:  # Prometheus not listening yet
            value = None
        if value is not None:
            return value, time.monotonic() - t0
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")


@pytest.fixture
def stack() -> Iterator[Stack]:
    prometheus = require_tool("prometheus")
    with tempfile.TemporaryDirectory(prefix="x0t-prom-", ignore_cleanup_errors=True) as tmp:
        root = Path(tmp)
        with LocalControlPlane(root / "control") as control:
            both = (socket.SOCK_DGRAM, socket.SOCK_STREAM)
            metrics_base = free_base_port(len(NAMES), both, avoid={control.port})
            mesh_base = free_base_port(
                len(NAMES),
                both,
                avoid={control.port, *range(metrics_base, metrics_base + len(NAMES))},
            )
            mesh = LocalMesh(
                root / "mesh",
                NAMES,
                EDGES,
                base_port=mesh_base,
                metrics_base_port=metrics_base,
                control=control,
            )
            with mesh:
                mesh.create()
                mesh.start_all()
                config = _write_config(root / "prometheus", control.port, mesh)
                port = free_port()
                log = open(root / "prometheus.log", "wb")  # noqa: SIM115 (closed below)
                proc = subprocess.Popen(
                    [
                        prometheus,
                        f"--config.file={config}",
                        f"--storage.tsdb.path={root / 'prometheus' / 'data'}",
                        f"--web.listen-address=127.0.0.1:{port}",
                        "--log.level=warn",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                try:
                    yield Stack(f"http://127.0.0.1:{port}", control, mesh)
                except BaseException:
                    log.flush()
                    print((root / "prometheus.log").read_text(errors="replace")[-3000:])
                    raise
                finally:
                    stop_process(proc)
                    log.close()


def test_prometheus_scrapes_the_stack_and_fires_node_down_on_kill(stack: Stack) -> None:
    base, mesh = stack.prometheus_url, stack.mesh
    mesh.wait(mesh.routes_complete, 30.0, "every node to route to every other")

    def all_up() -> list[dict[str, Any]] | None:
        up = _query(base, 'up{job=~"x0tta6bl4-control|x0tta6bl4-node"} == 1')
        return up if len(up) == 1 + len(NAMES) else None

    up, _ = _wait_for(all_up, 20.0, "Prometheus to scrape the control plane and every node")
    assert {s["metric"].get("node") for s in up} == {None, *NAMES}

    # Node metrics reach Prometheus: each node's RTT to each of its two neighbours.
    def rtts() -> list[dict[str, Any]] | None:
        got = _query(base, 'x0tta6bl4_link_rtt_seconds{job="x0tta6bl4-node"} > 0')
        return got if len(got) == 2 * len(EDGES) else None

    rtt, _ = _wait_for(rtts, 10.0, "link RTT samples from every node")
    assert {(s["metric"]["node"], s["metric"]["peer"]) for s in rtt} == {
        (x, y) for a, b in EDGES for x, y in ((a, b), (b, a))
    }
    assert all(float(s["value"][1]) < 1.0 for s in rtt)  # loopback: well under a second

    # Each node's routing table: a route to each of the other two.
    def full_tables() -> dict[str, float] | None:
        got = _query(base, 'x0tta6bl4_routes{job="x0tta6bl4-node",state="reachable"}')
        tables = {s["metric"]["node"]: float(s["value"][1]) for s in got}
        return tables if tables == {n: len(NAMES) - 1 for n in NAMES} else None

    _wait_for(full_tables, 10.0, "every node's reachable routes in Prometheus")
    # The control plane's own series are scraped too.
    samples = _query(base, 'scrape_samples_scraped{job="x0tta6bl4-control"}')
    assert len(samples) == 1 and float(samples[0]["value"][1]) > 0

    # A healthy stack: the production rules are loaded and evaluate cleanly, and once
    # every target has been scraped none stays active (X0tControlPlaneDown is pending
    # for the instant before the first scrape of the control plane: absent(up)).
    groups = _get(f"{base}/api/v1/rules?type=alert")["data"]["groups"]
    rules = {r["name"]: r for g in groups for r in g["rules"]}
    assert "X0tNodeDown" in rules and all(r["health"] == "ok" for r in rules.values())

    def quiet() -> bool | None:
        return _get(f"{base}/api/v1/alerts")["data"]["alerts"] == [] or None

    try:
        _wait_for(quiet, 10.0, "no alert active on the healthy stack")
    except TimeoutError:
        pytest.fail(f"alerts on a healthy stack: {_get(f'{base}/api/v1/alerts')['data']}")

    killed_at = mesh.kill("c")

    def firing() -> list[dict[str, Any]] | None:
        alerts = [a for a in _alerts(base, "X0tNodeDown") if a["state"] == "firing"]
        return alerts or None

    alerts, _ = _wait_for(firing, 20.0, "X0tNodeDown to fire for the killed node")
    fired_after = time.monotonic() - killed_at
    print(f"X0tNodeDown firing {fired_after:.1f} s after kill -9")
    assert len(alerts) == 1, alerts
    labels = alerts[0]["labels"]
    assert labels["node"] == "c" and labels["peer"] == "c"
    assert labels["job"] == "x0tta6bl4-node" and labels["severity"] == "warning"
    assert alerts[0]["annotations"]["runbook_url"] == "docs/operations/alerts.md#x0tnodedown"
    # One failed scrape (<= 1 s), `for` of 2 s, evaluations every second: a few seconds.
    assert fired_after < 15.0
    # The survivors are not reported down.
    assert {a["labels"]["node"] for a in _alerts(base, "X0tNodeDown")} == {"c"}
