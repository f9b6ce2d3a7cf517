"""deploy/monitoring checked by the tools that consume it: ``promtool check config`` on
both Prometheus configurations, ``promtool check rules``, ``promtool test rules`` (every
alert fires in one unit test and stays quiet in another), ``amtool check-config`` and
``amtool config routes test``; and every alert's runbook anchor exists in
docs/operations/alerts.md.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.tools import require_tool

pytestmark = pytest.mark.deploy

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "deploy" / "monitoring"
RULES = sorted((MONITORING / "rules").glob("*.yml"))
RULE_TESTS = sorted((MONITORING / "tests").glob("*.yml"))
ALERTS_DOC = REPO / "docs" / "operations" / "alerts.md"
JOBS = {"x0tta6bl4-control", "x0tta6bl4-node"}
SEVERITIES = {"critical", "warning"}


def _run(*args: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=120)


def _rules() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            found.extend(group["rules"])
    return found


def _alerts() -> list[dict[str, Any]]:
    return [rule for rule in _rules() if "alert" in rule]


# --- Prometheus configuration --------------------------------------------------------------


def test_static_config_passes_promtool_with_its_rules() -> None:
    promtool = require_tool("promtool")
    out = _run(promtool, "check", "config", "prometheus.yml")
    assert out.returncode == 0, out.stdout + out.stderr
    # The rule files it names were found and checked too.
    for path in RULES:
        assert f"rules/{path.name}" in out.stdout + out.stderr


def test_both_configs_scrape_the_two_jobs_with_the_same_rules() -> None:
    for name in ("prometheus.yml", "prometheus-kubernetes.yml"):
        config = yaml.safe_load((MONITORING / name).read_text())
        assert {job["job_name"] for job in config["scrape_configs"]} == JOBS, name
        assert config["rule_files"] == ["rules/*.yml"], name


def test_static_targets_are_file_sd_documents_and_nodes_carry_their_name() -> None:
    static = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    patterns = {
        job["job_name"]: [f for sd in job["file_sd_configs"] for f in sd["files"]]
        for job in static["scrape_configs"]
    }
    for job, globs in patterns.items():
        files = [p for g in globs for p in MONITORING.glob(g)]
        assert files, f"no targets file for {job}"
        for path in files:
            for group in yaml.safe_load(path.read_text()):
                assert set(group) <= {"targets", "labels"}, path
                assert all(re.fullmatch(r"[\w.\-\[\]:]+:\d+", t) for t in group["targets"])
                if job == "x0tta6bl4-node":
                    # One target per entry, so `node` names exactly one node.
                    assert len(group["targets"]) == 1 and group["labels"]["node"], path


def _promtool_has_kubernetes_sd(promtool: str, tmp_path: Path) -> bool:
    probe = tmp_path / "probe.yml"
    probe.write_text(
        "scrape_configs:\n  - job_name: p\n    kubernetes_sd_configs:\n      - role: pod\n"
    )
    return _run(promtool, "check", "config", str(probe), cwd=tmp_path).returncode == 0


def test_kubernetes_config_passes_promtool(tmp_path: Path) -> None:
    """Debian's prometheus is built without Kubernetes service discovery, so its promtool
    rejects ``kubernetes_sd_configs`` as an unknown field. There the rest of the file
    (relabelling, regexes, rule files, alerting) is checked by promtool with the
    discovery blocks swapped for empty static ones, and the discovery blocks are held
    to the fields Prometheus documents; an upstream promtool checks the file as is."""
    promtool = require_tool("promtool")
    shutil.copytree(MONITORING / "rules", tmp_path / "rules")
    source = (MONITORING / "prometheus-kubernetes.yml").read_text()
    config = yaml.safe_load(source)
    if _promtool_has_kubernetes_sd(promtool, tmp_path):
        (tmp_path / "prometheus.yml").write_text(source)
    else:
        blocks = [*config["scrape_configs"], *config["alerting"]["alertmanagers"]]
        for block in blocks:
            sds = block.pop("kubernetes_sd_configs")
            assert all(set(sd) == {"role"} for sd in sds)
            assert all(sd["role"] in {"pod", "endpoints"} for sd in sds)
            block["static_configs"] = [{"targets": []}]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    out = _run(promtool, "check", "config", "prometheus.yml", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    # Each job keeps only pods of its component, on its named port.
    for job in config["scrape_configs"]:
        keep = [r for r in job["relabel_configs"] if r.get("action") == "keep"]
        component = "control-plane" if job["job_name"] == "x0tta6bl4-control" else "node"
        assert keep[0]["regex"] == f"x0tta6bl4;{component}"
        assert keep[0]["source_labels"] == [
            "__meta_kubernetes_pod_label_app_kubernetes_io_name",
            "__meta_kubernetes_pod_label_app_kubernetes_io_component",
        ]


# --- rules -------------------------------------------------------------------------------


def test_rules_pass_promtool_check() -> None:
    promtool = require_tool("promtool")
    out = _run(promtool, "check", "rules", *(str(p) for p in RULES))
    assert out.returncode == 0, out.stdout + out.stderr
    assert len(_alerts()) >= 15


def test_every_alert_is_labelled_annotated_and_selects_by_job() -> None:
    for rule in _alerts():
        name = rule["alert"]
        assert re.fullmatch(r"X0t[A-Z][A-Za-z]+", name), name
        assert rule["labels"]["severity"] in SEVERITIES, name
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], name
        assert annotations["runbook_url"] == f"docs/operations/alerts.md#{name.lower()}"
    for rule in _rules():
        expr = str(rule["expr"])
        label = rule.get("alert") or rule.get("record")
        # Every selector of a series names one of our jobs; no bare metric names.
        selectors = re.findall(r"\b(x0tta6bl4_\w+|up|job:\w+:\w+)\s*(\{[^}]*\})?", expr)
        assert selectors, label
        for metric, matchers in selectors:
            assert re.search(r'job="x0tta6bl4-(node|control)"', matchers), (label, metric)


def test_promtool_unit_tests_pass() -> None:
    promtool = require_tool("promtool")
    out = _run(promtool, "test", "rules", *(str(p.relative_to(MONITORING)) for p in RULE_TESTS))
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("SUCCESS") == len(RULE_TESTS)


def test_every_alert_has_a_test_where_it_fires_and_one_where_it_does_not() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        document = yaml.safe_load(path.read_text())
        assert {Path(f).name for f in document["rule_files"]} == {p.name for p in RULES}, path
        for case in document["tests"]:
            for check in case.get("alert_rule_test") or []:
                expected = check.get("exp_alerts") or []
                (fires if expected else quiet).add(check["alertname"])
                for alert in expected:
                    assert alert["exp_labels"]["severity"] in SEVERITIES
                    assert alert["exp_annotations"]["runbook_url"].endswith(
                        "#" + check["alertname"].lower()
                    )
    names = {rule["alert"] for rule in _alerts()}
    assert names - fires == set(), "alerts never seen firing in a unit test"
    assert names - quiet == set(), "alerts never seen quiet in a unit test"
    assert (fires | quiet) - names == set(), "unit tests of alerts that do not exist"


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation but '-' and '_' dropped,
    spaces to '-'."""
    anchors: set[str] = set()
    for line in markdown.splitlines():
        match = re.match(r"#{1,6}\s+(.*?)\s*$", line)
        if match:
            text = re.sub(r"[^\w\- ]", "", match.group(1).lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


def test_every_runbook_anchor_exists() -> None:
    anchors = _anchors(ALERTS_DOC.read_text())
    for rule in _alerts():
        url = rule["annotations"]["runbook_url"]
        path, _, anchor = url.partition("#")
        assert (REPO / path) == ALERTS_DOC
        assert anchor in anchors, f"{rule['alert']}: no heading for #{anchor} in {path}"


# --- Alertmanager --------------------------------------------------------------------------


def test_alertmanager_config_passes_amtool() -> None:
    amtool = require_tool("amtool")
    out = _run(amtool, "check-config", "alertmanager.yml")
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize(
    ("severity", "receiver"), [("critical", "page"), ("warning", "ticket"), ("info", "null")]
)
def test_alertmanager_routes_by_severity(severity: str, receiver: str) -> None:
    amtool = require_tool("amtool")
    out = _run(
        amtool,
        "config",
        "routes",
        "test",
        "--config.file=alertmanager.yml",
        f"--verify.receivers={receiver}",
        "alertname=X0tNodeDown",
        f"severity={severity}",
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == receiver


def test_alertmanager_sends_only_to_loopback_and_inhibits_real_alerts() -> None:
    config = yaml.safe_load((MONITORING / "alertmanager.yml").read_text())
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs") or []:
            assert hook["url"].startswith("http://127.0.0.1:"), hook["url"]
        assert set(receiver) <= {"name", "webhook_configs"}, receiver["name"]
    names = {rule["alert"] for rule in _alerts()}
    for rule in config["inhibit_rules"]:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            match = re.fullmatch(r'alertname(=~|=)"(.+)"', matcher)
            assert match, matcher
            op, value = match.groups()
            matched = {n for n in names if (re.fullmatch(value, n) if op == "=~" else n == value)}
            assert matched, f"{matcher} matches no alert"
            if op == "=~":  # each alternative names an alert: no typo hides in a regex
                assert set(value.split("|")) <= names, matcher
