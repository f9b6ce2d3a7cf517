"""Grafana dashboards and alert rules query only what our processes export.

The unmarked tests run in ``make test``: dashboards load, are identifiable, every panel
has a query, and every query (and every rule in deploy/monitoring/rules) names only
series the registry, Prometheus itself or a recording rule produces. The ``deploy``
tests hand every panel query, with Grafana's variables filled in as Grafana would, to
``promtool check rules`` so a syntax error fails here rather than as an empty panel.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.promql import (
    REPO,
    RULES_DIR,
    emitted_metric_names,
    grafana_variable_query_names,
    metric_names,
    rule_expressions,
    rule_files,
    substitute_grafana_variables,
)

GRAFANA = REPO / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "x0tta6bl4.yml"
DS_VARIABLE = "DS_PROMETHEUS"


def _load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those kept inside (collapsed) rows."""
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels") or [])


def _queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """``(where, expr)`` for every panel target."""
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets") or []:
            if "expr" in target:
                yield f"{panel['title']!r} {target.get('refId', '?')}", target["expr"]


def _variables(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    variables: list[dict[str, Any]] = dashboard.get("templating", {}).get("list", [])
    return variables


def _variable_values(dashboard: dict[str, Any]) -> dict[str, str]:
    """A value Grafana could send for each variable: the "All" regex of multi-value
    query variables, the current value of the others."""
    values: dict[str, str] = {}
    for variable in _variables(dashboard):
        if variable.get("includeAll"):
            values[variable["name"]] = variable.get("allValue") or ".*"
            continue
        current = variable.get("current", {}).get("value")
        values[variable["name"]] = current[0] if isinstance(current, list) else str(current)
    return values


@pytest.fixture(scope="module")
def emitted() -> frozenset[str]:
    return emitted_metric_names()


def test_there_are_the_three_dashboards() -> None:
    names = {path.stem for path in DASHBOARDS}
    assert {"mesh-overview", "self-healing", "control-plane"} <= names


def test_dashboards_load_with_unique_uid_and_title() -> None:
    dashboards = [_load(path) for path in DASHBOARDS]
    uids = [d["uid"] for d in dashboards]
    titles = [d["title"] for d in dashboards]
    assert all(uids) and len(set(uids)) == len(uids), uids
    assert all(titles) and len(set(titles)) == len(titles), titles
    for dashboard in dashboards:
        # Grafana's dashboard uid limit.
        assert len(dashboard["uid"]) <= 40
        assert dashboard["schemaVersion"] >= 36


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_panel_has_a_query(path: Path) -> None:
    dashboard = _load(path)
    panels = [p for p in _panels(dashboard["panels"]) if p["type"] != "row"]
    assert panels
    ids = [p["id"] for p in _panels(dashboard["panels"])]
    assert len(set(ids)) == len(ids), "duplicate panel ids"
    empty = [
        p["title"]
        for p in panels
        if not any(str(t.get("expr", "")).strip() for t in p.get("targets") or [])
    ]
    assert not empty, f"panels without a query: {empty}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_panels_fit_the_grid_without_overlapping(path: Path) -> None:
    """Grafana's grid is 24 columns wide; overlapping panels get shoved around on load."""
    taken: dict[tuple[int, int], str] = {}
    for panel in _panels(_load(path)["panels"]):
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, f"{panel['title']!r} overlaps {taken[(x, y)]!r}"
                taken[(x, y)] = panel["title"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_queries_use_the_provisioned_datasource(path: Path) -> None:
    """Panels select Prometheus through the variable whose default is the uid the
    provisioning file creates, so a provisioned Grafana shows data without clicks."""
    dashboard = _load(path)
    provisioned = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    uid = next(d["uid"] for d in provisioned if d["type"] == "prometheus")
    (variable,) = [v for v in _variables(dashboard) if v["name"] == DS_VARIABLE]
    assert variable["type"] == "datasource"
    assert variable["current"]["value"] == uid
    for panel in _panels(dashboard["panels"]):
        for holder in [panel, *(panel.get("targets") or [])]:
            if panel["type"] != "row" or "datasource" in holder:
                assert holder["datasource"]["uid"] == f"${{{DS_VARIABLE}}}", panel["title"]


def test_dashboards_provider_points_where_compose_mounts_them() -> None:
    providers = yaml.safe_load(PROVIDERS.read_text())["providers"]
    assert [p["options"]["path"] for p in providers] == ["/var/lib/grafana/dashboards"]
    compose = REPO / "deploy" / "compose.yaml"
    if not compose.exists():
        pytest.skip("deploy/compose.yaml not written yet: cannot check its Grafana mounts")
    services = yaml.safe_load(compose.read_text())["services"]
    volumes = [str(v) for v in services["grafana"].get("volumes", [])]
    assert any(
        re.search(r"grafana/dashboards/?:/var/lib/grafana/dashboards(:ro)?$", v) for v in volumes
    ), volumes
    assert any(
        re.search(r"grafana/provisioning/?:/etc/grafana/provisioning(:ro)?$", v) for v in volumes
    ), volumes


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_variable_a_query_uses_is_declared(path: Path) -> None:
    dashboard = _load(path)
    values = _variable_values(dashboard)
    for where, expr in _queries(dashboard):
        try:
            substitute_grafana_variables(expr, values)
        except KeyError as missing:
            pytest.fail(f"{where}: variable {missing} is not declared in {path.name}")


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_queries_name_only_emitted_metrics(path: Path, emitted: frozenset[str]) -> None:
    dashboard = _load(path)
    unknown: dict[str, set[str]] = {}
    for where, expr in _queries(dashboard):
        if missing := metric_names(expr) - emitted:
            unknown[where] = missing
    for variable in _variables(dashboard):
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, Mapping) else query
            if missing := grafana_variable_query_names(text) - emitted:
                unknown[f"variable {variable['name']}"] = missing
    assert not unknown, _describe(unknown)


def test_rule_expressions_name_only_emitted_metrics(emitted: frozenset[str]) -> None:
    files = rule_files()
    assert files, f"no rule files in {RULES_DIR}"
    unknown = {
        where: missing
        for where, expr in rule_expressions(files)
        if (missing := metric_names(expr) - emitted)
    }
    assert not unknown, _describe(unknown)


def _describe(unknown: Mapping[str, set[str]]) -> str:
    names = sorted(set().union(*unknown.values()))
    lines = [f"  {where}: {sorted(missing)}" for where, missing in unknown.items()]
    return "metrics not emitted by the registry: " + ", ".join(names) + "\n" + "\n".join(lines)


# --- promtool ------------------------------------------------------------------------------


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        reason = "promtool not found (Debian package prometheus)"
        if os.environ.get("X0T_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{reason} and X0T_REQUIRE_SERVICES=1")
        pytest.skip(reason)
    return path


def _record_name(uid: str, index: int) -> str:
    return re.sub(r"[^A-Za-z0-9_:]", "_", f"dashboard:{uid}:query_{index}")


@pytest.mark.deploy
@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_queries_are_valid_promql(path: Path, tmp_path: Path) -> None:
    """Each query, variables substituted, as a recording rule for promtool to parse."""
    promtool = _promtool()
    dashboard = _load(path)
    values = _variable_values(dashboard)
    queries = list(_queries(dashboard))
    rules = [
        {
            "record": _record_name(dashboard["uid"], i),
            "expr": substitute_grafana_variables(e, values),
        }
        for i, (_, e) in enumerate(queries)
    ]
    rules_file = tmp_path / "dashboard-queries.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": path.stem, "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60
    )
    index = "\n".join(f"query_{i}: {where}" for i, (where, _) in enumerate(queries))
    assert result.returncode == 0, f"{result.stdout}{result.stderr}\n{index}"
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout
