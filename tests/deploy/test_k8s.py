"""The Helm chart and the Kustomize overlays, rendered and checked by the tools that
would consume them: Helm's own renderer and linter, ``kubectl kustomize``,
``kubernetes-validate --strict`` (Kubernetes 1.31 and 1.37), the validators of the npm
package ``@kubernetes-models/prometheus-operator`` for ServiceMonitor and PrometheusRule
(with our check for unknown fields, which they accept) and yamllint; plus the security
properties an operator relies on.
"""

from __future__ import annotations

import base64
import copy
import os
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.k8s import (
    CHART_DIR,
    HELM_VALUE_SETS,
    KUBERNETES_VERSIONS,
    KUSTOMIZE_DIR,
    OPERATOR_KINDS,
    OVERLAYS,
    REPO,
    Doc,
    by_kind,
    containers,
    custom_resource_errors,
    documents,
    kubernetes_validate,
    one,
    operator_schema_errors,
    pod_specs,
    render_helm,
    render_kustomize,
    require_tool,
    unknown_fields,
    yamllint,
)

pytestmark = pytest.mark.deploy

RULES_SOURCE = REPO / "deploy" / "monitoring" / "rules"
RULES_CHART_COPY = CHART_DIR / "files" / "rules"
RULES_KUSTOMIZE = KUSTOMIZE_DIR / "base" / "prometheusrule.yaml"
API_PORT = 8700


@pytest.fixture(scope="module")
def renders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every render written to a file: helm-default, helm-staging, helm-production,
    kustomize-staging, kustomize-production (tmp_path_factory removes them)."""
    out = tmp_path_factory.mktemp("k8s-renders")
    files: dict[str, Path] = {}
    for value_set in HELM_VALUE_SETS:
        files[f"helm-{value_set}"] = out / f"helm-{value_set}.yaml"
        files[f"helm-{value_set}"].write_text(render_helm(value_set), encoding="utf-8")
    for overlay in OVERLAYS:
        files[f"kustomize-{overlay}"] = out / f"kustomize-{overlay}.yaml"
        files[f"kustomize-{overlay}"].write_text(render_kustomize(overlay), encoding="utf-8")
    return files


def docs_of(renders: dict[str, Path], label: str) -> list[Doc]:
    return documents(renders[label].read_text(encoding="utf-8"))


ALL_RENDERS = [f"helm-{v}" for v in HELM_VALUE_SETS] + [f"kustomize-{o}" for o in OVERLAYS]


# --- the tools ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_builtin_object_passes_kubernetes_validate_strict(
    renders: dict[str, Path], version: str
) -> None:
    passed = kubernetes_validate(renders, version)
    for label in renders:
        builtin = {
            f"{d['kind'].lower()}/{d['metadata']['name']}"
            for d in docs_of(renders, label)
            if (d["apiVersion"], d["kind"]) not in OPERATOR_KINDS
        }
        assert builtin, f"{label} rendered no object"
        assert passed[label] == builtin, f"{label}: not reported passed: {builtin - passed[label]}"


def test_kubernetes_validate_rejects_an_unknown_field(renders: dict[str, Path]) -> None:
    """The validator is not vacuous: a misspelt securityContext field fails --strict."""
    deployment = copy.deepcopy(one(docs_of(renders, "helm-production"), "Deployment"))
    security = deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    security["readOnlyRootFS"] = security.pop("readOnlyRootFilesystem")
    bad = renders["helm-production"].parent / "bad-deployment.yaml"
    bad.write_text(yaml.safe_dump(deployment), encoding="utf-8")
    try:
        with pytest.raises(AssertionError, match="readOnlyRootFS"):
            kubernetes_validate({"bad": bad}, KUBERNETES_VERSIONS[0])
    finally:
        bad.unlink()


@pytest.mark.parametrize("label", ALL_RENDERS)
def test_servicemonitor_and_prometheusrule_pass_the_prometheus_operator_validators(
    renders: dict[str, Path], label: str
) -> None:
    custom = [d for d in docs_of(renders, label) if (d["apiVersion"], d["kind"]) in OPERATOR_KINDS]
    if label == "helm-default":
        assert custom == [], "ServiceMonitor/PrometheusRule are opt-in in values.yaml"
        return
    assert {d["kind"] for d in custom} == {"ServiceMonitor", "PrometheusRule"}
    assert custom_resource_errors(custom) == []


def test_prometheus_operator_validators_reject_a_wrong_type_and_a_missing_expr(
    renders: dict[str, Path],
) -> None:
    """The package's validators are not vacuous: the rendered objects pass (above), the
    same objects with `endpoints` a string or a rule without `expr` do not."""
    docs = docs_of(renders, "helm-production")
    monitor = copy.deepcopy(one(docs, "ServiceMonitor"))
    monitor["spec"]["endpoints"] = "x"
    rule = copy.deepcopy(one(docs, "PrometheusRule"))
    del rule["spec"]["groups"][0]["rules"][0]["expr"]
    errors = operator_schema_errors([monitor, rule])
    monitor_name, rule_name = monitor["metadata"]["name"], rule["metadata"]["name"]
    assert f"ServiceMonitor/{monitor_name}: /spec/endpoints must be array" in errors, errors
    assert (
        f"PrometheusRule/{rule_name}: /spec/groups/0/rules/0 must have required property expr"
        in errors
    ), errors
    assert len(errors) == 2, errors


def test_unknown_field_check_rejects_a_misspelt_field(renders: dict[str, Path]) -> None:
    """Ours (the package's validators accept it): a misspelt endpoint field and a stray
    top-level spec field are reported."""
    monitor = copy.deepcopy(one(docs_of(renders, "helm-production"), "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["scrapeInterval"] = "15s"  # the field is `interval`
    monitor["spec"]["sampleLimits"] = 100  # the field is `sampleLimit`
    assert operator_schema_errors([monitor]) == [], "the package accepts unknown fields"
    name = monitor["metadata"]["name"]
    assert unknown_fields(monitor) == [
        f"ServiceMonitor/{name}.spec.endpoints[0].scrapeInterval: unknown field",
        f"ServiceMonitor/{name}.spec.sampleLimits: unknown field",
    ]


def test_rendered_output_values_and_kustomize_files_are_yamllint_clean(
    renders: dict[str, Path],
) -> None:
    values = [*sorted(CHART_DIR.glob("values*.yaml")), CHART_DIR / "Chart.yaml"]
    kustomize = sorted(KUSTOMIZE_DIR.rglob("*.yaml"))
    yamllint([*renders.values(), *values, *kustomize, RULES_CHART_COPY])


@pytest.mark.parametrize("value_set", list(HELM_VALUE_SETS))
def test_helm_lint_strict_finds_no_error(value_set: str) -> None:
    from tests.deploy.k8s import helm_available, helm_module, values_for

    require_tool("helm-python-sdk", helm_available())
    report = helm_module().lint(
        CHART_DIR, values_for(value_set) or None, strict=True, kube_version="v1.31.0"
    )
    # Severity 3 = error, 2 = warning; 1 (info: "icon is recommended") is fine.
    serious = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and serious == [], report


# --- security properties ----------------------------------------------------------------


def _effective(pod_spec: Doc, container: Doc, field: str) -> Any:
    """A securityContext field as the kubelet applies it: the container's, else the pod's."""
    own = container.get("securityContext", {})
    return own[field] if field in own else pod_spec.get("securityContext", {}).get(field)


@pytest.mark.parametrize("label", ALL_RENDERS)
def test_every_container_is_locked_down(renders: dict[str, Path], label: str) -> None:
    workloads = list(pod_specs(docs_of(renders, label)))
    assert workloads
    for workload, pod_spec in workloads:
        assert pod_spec["automountServiceAccountToken"] is False
        assert pod_spec.get("hostPID") is not True and pod_spec.get("hostIPC") is not True
        is_node = workload["kind"] == "DaemonSet"
        for container in containers(pod_spec):
            where = f"{label} {workload['metadata']['name']}/{container['name']}"
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security.get("privileged") is not True, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            assert _effective(pod_spec, container, "seccompProfile") == {
                "type": "RuntimeDefault"
            }, where
            added = set(security["capabilities"].get("add", []))
            if is_node:
                # UID 0 without any capability but NET_ADMIN (TUN); see node-daemonset.yaml.
                assert added <= {"NET_ADMIN"}, where
            else:
                assert added == set(), where
                assert _effective(pod_spec, container, "runAsNonRoot") is True, where
                assert _effective(pod_spec, container, "runAsUser") not in (None, 0), where
            assert "resources" in container and container["resources"].get("limits"), where


@pytest.mark.parametrize("label", ALL_RENDERS)
def test_writable_paths_are_volumes_and_the_ca_secret_is_read_only(
    renders: dict[str, Path], label: str
) -> None:
    docs = docs_of(renders, label)
    deployment = one(docs, "Deployment", "x0tta6bl4-control")
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["ca-secret"]["secret"]["secretName"] == "x0tta6bl4-ca"
    assert volumes["state"]["emptyDir"]["medium"] == "Memory"
    for container in containers(pod):
        for mount in container.get("volumeMounts", []):
            if mount["name"] == "ca-secret":
                assert mount["readOnly"] is True
                assert container["name"] == "ca-copy", "only the copier sees the Secret"
    server = next(c for c in pod["containers"] if c["name"] == "control-plane")
    assert server["command"] == ["x0t", "serve", "--host", "0.0.0.0", "--port", str(API_PORT)]
    assert server["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert server["livenessProbe"]["httpGet"]["path"] == "/health"
    env = {e["name"] for e in server["env"]}
    assert {"X0T_DATABASE_URL", "X0T_REDIS_URL"} <= env
    config = one(docs, "ConfigMap", "x0tta6bl4-control")["data"]
    assert config["X0T_CA_DIR"] == "/var/lib/x0t/ca"
    assert config["X0T_DATA_DIR"] == "/var/lib/x0t"
    for daemonset in by_kind(docs, "DaemonSet"):
        host_paths = {
            v["hostPath"]["path"]: v["hostPath"]["type"]
            for v in daemonset["spec"]["template"]["spec"]["volumes"]
            if "hostPath" in v
        }
        assert host_paths == {
            "/var/lib/x0t/node": "DirectoryOrCreate",
            "/dev/net/tun": "CharDevice",
        }


@pytest.mark.parametrize("label", ALL_RENDERS)
def test_no_kubernetes_api_access_is_granted(renders: dict[str, Path], label: str) -> None:
    docs = docs_of(renders, label)
    assert not by_kind(docs, "Role") and not by_kind(docs, "ClusterRole")
    assert not by_kind(docs, "RoleBinding") and not by_kind(docs, "ClusterRoleBinding")
    account = one(docs, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    for _, pod_spec in pod_specs(docs):
        assert pod_spec["serviceAccountName"] == account["metadata"]["name"]


def _matches(selector: Doc, labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


@pytest.mark.parametrize("label", ALL_RENDERS)
def test_network_policy_denies_by_default_and_allows_only_the_needed_flows(
    renders: dict[str, Path], label: str
) -> None:
    docs = docs_of(renders, label)
    policies = {p["metadata"]["name"]: p["spec"] for p in by_kind(docs, "NetworkPolicy")}
    deny = policies["x0tta6bl4-default-deny"]
    assert deny["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in deny and "egress" not in deny
    for workload, _ in pod_specs(docs):
        pod_labels = workload["spec"]["template"]["metadata"]["labels"]
        assert _matches(deny["podSelector"], pod_labels), workload["metadata"]["name"]

    control = policies["x0tta6bl4-control"]
    ingress_ports = {
        (p["protocol"], p["port"]) for rule in control["ingress"] for p in rule["ports"]
    }
    assert ingress_ports == {("TCP", API_PORT)}
    egress_ports = {(p["protocol"], p["port"]) for rule in control["egress"] for p in rule["ports"]}
    assert egress_ports == {("UDP", 53), ("TCP", 53), ("TCP", 5432), ("TCP", 6379)}
    sources = control["ingress"][0]["from"]
    has_nodes = bool(by_kind(docs, "DaemonSet"))
    node_source = {"podSelector": {"matchLabels": {
        "app.kubernetes.io/name": "x0tta6bl4",
        "app.kubernetes.io/instance": "x0tta6bl4",
        "app.kubernetes.io/component": "node",
    }}}  # fmt: skip
    assert (node_source in sources) is has_nodes
    assert ("x0tta6bl4-node" in policies) is has_nodes
    if has_nodes:
        node = policies["x0tta6bl4-node"]
        assert {(p["protocol"], p["port"]) for r in node["egress"] for p in r["ports"]} == {
            ("UDP", 7100),
            ("TCP", API_PORT),
            ("UDP", 53),
            ("TCP", 53),
        }


# --- what differs between environments -------------------------------------------------


def test_default_values_render_one_replica_and_no_optional_object(renders: dict[str, Path]) -> None:
    docs = docs_of(renders, "helm-default")
    assert one(docs, "Deployment")["spec"]["replicas"] == 1
    kinds = {d["kind"] for d in docs}
    assert kinds.isdisjoint({"Ingress", "HorizontalPodAutoscaler", "PodDisruptionBudget"})
    assert kinds.isdisjoint({"DaemonSet", "ServiceMonitor", "PrometheusRule"})


@pytest.mark.parametrize("tool", ["helm", "kustomize"])
def test_production_runs_three_or_more_replicas_behind_tls(
    renders: dict[str, Path], tool: str
) -> None:
    docs = docs_of(renders, f"{tool}-production")
    assert "replicas" not in one(docs, "Deployment")["spec"], "the HPA owns the count"
    hpa = one(docs, "HorizontalPodAutoscaler")["spec"]
    assert hpa["minReplicas"] == 3 and hpa["maxReplicas"] >= 3
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "x0tta6bl4-control",
    }
    assert one(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 2
    tls = one(docs, "Ingress")["spec"]["tls"]
    assert tls and tls[0]["secretName"] == "x0tta6bl4-tls"
    assert not by_kind(docs, "DaemonSet")
    env = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in env}
    assert refs == {"X0T_DATABASE_URL": "x0tta6bl4-database", "X0T_REDIS_URL": "x0tta6bl4-redis"}
    assert not by_kind(docs, "Secret"), "production takes every secret from existing Secrets"


@pytest.mark.parametrize("tool", ["helm", "kustomize"])
def test_staging_differs_from_production_where_intended(
    renders: dict[str, Path], tool: str
) -> None:
    staging = docs_of(renders, f"{tool}-staging")
    production = docs_of(renders, f"{tool}-production")
    assert one(staging, "Deployment")["spec"]["replicas"] == 2
    assert not by_kind(staging, "HorizontalPodAutoscaler")
    assert one(staging, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    assert "tls" not in one(staging, "Ingress")["spec"]
    assert one(staging, "Ingress")["spec"]["rules"][0]["host"] == "x0tta6bl4.staging.example"
    assert one(production, "Ingress")["spec"]["rules"][0]["host"] == "x0tta6bl4.example"
    daemonset = one(staging, "DaemonSet", "x0tta6bl4-node")
    node = next(c for c in daemonset["spec"]["template"]["spec"]["containers"])
    assert node["securityContext"]["capabilities"]["add"] == ["NET_ADMIN"]
    assert node["command"] == ["x0t", "node", "run", "--state-dir", "/var/lib/x0t/node"]
    staging_monitor = one(staging, "ServiceMonitor", "x0tta6bl4-control")["metadata"]["labels"]
    production_monitor = one(production, "ServiceMonitor")["metadata"]["labels"]
    assert production_monitor["release"] == "kube-prometheus-stack"
    assert "release" not in staging_monitor
    egress = one(production, "NetworkPolicy", "x0tta6bl4-control")["spec"]["egress"]
    database = next(r for r in egress if r["ports"] == [{"protocol": "TCP", "port": 5432}])
    assert database["to"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "data"
    }
    staging_egress = one(staging, "NetworkPolicy", "x0tta6bl4-control")["spec"]["egress"]
    assert all("to" not in r for r in staging_egress if r["ports"][0]["port"] in (5432, 6379))


# --- Helm and Kustomize describe the same deployment -----------------------------------


def _comparable(doc: Doc) -> Doc:
    """An object without what legitimately differs between the tools: labels and
    annotations (Helm's chart labels and checksums), the namespace."""
    out = copy.deepcopy(doc)
    out["metadata"] = {"name": doc["metadata"]["name"]}
    template = out.get("spec", {}).get("template")
    if template:
        template["metadata"] = {}
    if out["kind"] == "Secret":
        # Helm writes stringData, kustomize's generator base64 data: compare the bytes.
        decoded = {k: base64.b64decode(v) for k, v in out.pop("data", {}).items()}
        decoded.update({k: v.encode() for k, v in out.pop("stringData", {}).items()})
        out["data"] = decoded
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kustomize_overlay_equals_the_chart_with_the_same_environment(
    renders: dict[str, Path], overlay: str
) -> None:
    helm = {(d["kind"], d["metadata"]["name"]): d for d in docs_of(renders, f"helm-{overlay}")}
    kust = {(d["kind"], d["metadata"]["name"]): d for d in docs_of(renders, f"kustomize-{overlay}")}
    assert set(helm) == set(kust)
    for key in sorted(helm):
        assert _comparable(kust[key]) == _comparable(helm[key]), key
        workload_labels = helm[key].get("spec", {}).get("template", {}).get("metadata", {})
        if workload_labels:
            selector = helm[key]["spec"]["selector"]["matchLabels"]
            kust_labels = kust[key]["spec"]["template"]["metadata"]["labels"]
            assert _matches({"matchLabels": selector}, kust_labels), key


# --- the alert rules ------------------------------------------------------------------


def _source_groups() -> list[Doc]:
    groups: list[Doc] = []
    for path in sorted(RULES_SOURCE.glob("*.yml")):
        groups.extend(yaml.safe_load(path.read_text(encoding="utf-8"))["groups"])
    return groups


def test_chart_rule_files_are_byte_copies_of_deploy_monitoring_rules() -> None:
    sources = {p.name: p.read_bytes() for p in RULES_SOURCE.glob("*.yml")}
    copies = {p.name: p.read_bytes() for p in RULES_CHART_COPY.glob("*.yml")}
    assert sources, f"no rules in {RULES_SOURCE}"
    assert copies.keys() == sources.keys(), "run: python tools/sync_rules.py"
    for name in sources:
        assert copies[name] == sources[name], f"{name} is stale: run python tools/sync_rules.py"


@pytest.mark.parametrize(
    "label", ["helm-staging", "helm-production", *[f"kustomize-{o}" for o in OVERLAYS]]
)
def test_prometheus_rule_carries_every_group_of_deploy_monitoring(
    renders: dict[str, Path], label: str
) -> None:
    rule = one(docs_of(renders, label), "PrometheusRule", "x0tta6bl4")
    assert rule["spec"]["groups"] == _source_groups()
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
    assert len(alerts) >= 15


def test_sync_rules_check_agrees() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "sync_rules.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# --- values that change what is rendered -----------------------------------------------


def test_chart_refuses_to_render_without_a_database() -> None:
    from tests.deploy.k8s import helm_available, helm_module

    require_tool("helm-python-sdk", helm_available())
    errors = helm_module().HelmError
    with pytest.raises(errors, match=r"database\.url or database\.existingSecret"):
        render_helm("default", {"database": {"url": "", "existingSecret": ""}})
    with pytest.raises(errors, match=r"redis\.url or redis\.existingSecret"):
        render_helm("default", {"redis": {"url": ""}})
    with pytest.raises(errors, match=r"node\.joinToken"):
        render_helm("default", {"node": {"enabled": True}})


@pytest.fixture
def fresh_ca(tmp_path: Path) -> Iterator[Path]:
    """A real CA directory (ca.key, ca.crt, enroll.key) as the control plane creates it."""
    from x0tta6bl4.control.ca import ControlCA

    ca_dir = tmp_path / "ca"
    ControlCA.open(ca_dir, "x0tta6bl4.mesh")
    yield ca_dir


def test_ca_secret_from_set_file_carries_the_three_files(fresh_ca: Path, tmp_path: Path) -> None:
    files = {
        "caKey": (fresh_ca / "ca.key").read_text(),
        "caCrt": (fresh_ca / "ca.crt").read_text(),
        "enrollKey": (fresh_ca / "enroll.key").read_text(),
    }
    text = render_helm("production", {"ca": {"existingSecret": "", "create": True, "files": files}})
    secret = one(documents(text), "Secret", "x0tta6bl4-ca")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    decoded = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    assert decoded == {
        "ca.key": (fresh_ca / "ca.key").read_bytes(),
        "ca.crt": (fresh_ca / "ca.crt").read_bytes(),
        "enroll.key": (fresh_ca / "enroll.key").read_bytes(),
    }
    rendered = tmp_path / "with-ca.yaml"
    rendered.write_text(text, encoding="utf-8")
    passed = kubernetes_validate({"with-ca": rendered}, KUBERNETES_VERSIONS[-1])
    assert "secret/x0tta6bl4-ca" in passed["with-ca"]


def test_ca_copy_init_container_makes_a_mounted_secret_loadable(
    renders: dict[str, Path], fresh_ca: Path, tmp_path: Path
) -> None:
    """The ca-copy script, run for real by /bin/sh on files with the modes the kubelet
    gives a Secret mounted with fsGroup (0440), yields a CA directory the control plane
    opens; the mounted files themselves it refuses (group-readable keys)."""
    from x0tta6bl4.control.ca import ControlCA
    from x0tta6bl4.errors import IdentityError

    pod = one(docs_of(renders, "helm-production"), "Deployment")["spec"]["template"]["spec"]
    copier = next(c for c in pod["initContainers"] if c["name"] == "ca-copy")
    assert copier["command"][:2] == ["/bin/sh", "-ec"]

    mounted = tmp_path / "ca-secret"
    mounted.mkdir()
    for name in ("ca.key", "ca.crt", "enroll.key"):
        (mounted / name).write_bytes((fresh_ca / name).read_bytes())
        os.chmod(mounted / name, 0o440)
    with pytest.raises(IdentityError, match="readable by others"):
        ControlCA.open(mounted, "x0tta6bl4.mesh")

    target = tmp_path / "state" / "ca"
    (tmp_path / "state").mkdir()
    target.mkdir()
    (target / "stale").write_text("from an earlier start")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    env.update({e["name"]: e["value"] for e in copier["env"]})
    env.update({"CA_SECRET_DIR": str(mounted), "X0T_CA_DIR": str(target)})
    for _ in range(2):  # a restarted pod runs it again over its own earlier copy
        result = subprocess.run(
            copier["command"], env=env, capture_output=True, text=True, timeout=30, check=False
        )
        assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in target.iterdir()) == ["ca.crt", "ca.key", "enroll.key"]
    for path in target.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o400
    opened = ControlCA.open(target, "x0tta6bl4.mesh")
    original = ControlCA.open(fresh_ca, "x0tta6bl4.mesh")
    assert opened.enroll_fingerprint == original.enroll_fingerprint
    assert opened.bundle_pem == original.bundle_pem


def test_kustomize_rule_file_is_generated_from_the_sources() -> None:
    rule = yaml.safe_load(RULES_KUSTOMIZE.read_text(encoding="utf-8"))
    assert rule["spec"]["groups"] == _source_groups()


def test_node_join_init_container_enrolls_once_against_a_real_control_plane(
    renders: dict[str, Path], tmp_path: Path
) -> None:
    """The DaemonSet's join script, run by /bin/sh against a real ``x0t serve`` on
    loopback: the first start enrolls (tags from values), a restart leaves it alone."""
    from x0tta6bl4.node.localcontrol import LocalControlPlane

    daemonset = one(docs_of(renders, "helm-staging"), "DaemonSet", "x0tta6bl4-node")
    join = next(c for c in daemonset["spec"]["template"]["spec"]["initContainers"])
    assert join["name"] == "join" and join["command"][:2] == ["/bin/sh", "-ec"]
    state = tmp_path / "state"
    with LocalControlPlane(tmp_path / "control") as plane:
        token = plane.create_token(["env:staging"], uses=2)
        env = {e["name"]: e["value"] for e in join["env"] if "value" in e}
        assert env["NODE_TAGS"] == "env:staging"
        env.update(
            {
                "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
                "STATE_DIR": str(state),
                "CONTROL_URL": plane.url,
                "NODE_NAME": "k8s-worker-1",  # spec.nodeName in the cluster
                "X0T_JOIN_TOKEN": token,
            }
        )
        first = subprocess.run(
            join["command"], env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert first.returncode == 0, first.stderr
        certificate = (state / "node.crt").read_bytes()
        node = plane.call("GET", "/v1/nodes/k8s-worker-1")
        assert "env:staging" in node["tags"]
        again = subprocess.run(
            join["command"], env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert again.returncode == 0, again.stderr
        assert "enrolled already" in again.stdout
        assert (state / "node.crt").read_bytes() == certificate
        _run_node_container(daemonset, state, env["PATH"], tmp_path)


def _run_node_container(daemonset: Doc, state: Path, path: str, tmp_path: Path) -> None:
    """The node container's command and environment as rendered, with loopback ports, the
    test's state directory and TUN off (no device is made on the test host): the agent
    starts on the joined state and serves /metrics; SIGTERM stops it cleanly."""
    from x0tta6bl4.node.localcontrol import free_port

    node = next(c for c in daemonset["spec"]["template"]["spec"]["containers"])
    command = [str(state) if arg == "/var/lib/x0t/node" else arg for arg in node["command"]]
    env = {e["name"]: e["value"] for e in node["env"]}
    metrics_port = free_port()
    overrides = {
        "X0T_LISTEN": f'["127.0.0.1:{free_port()}"]',
        "X0T_API__METRICS": f"127.0.0.1:{metrics_port}",
        "X0T_TUN__ENABLED": "false",
    }
    assert set(overrides) <= set(env), "the rendered names are the ones overridden"
    env.update(overrides)
    env["PATH"] = path
    log = tmp_path / "node.log"
    with log.open("wb") as out:
        agent = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            body = ""
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and agent.poll() is None:
                try:
                    url = f"http://127.0.0.1:{metrics_port}/metrics"
                    with urllib.request.urlopen(url, timeout=2) as answer:
                        body = answer.read().decode()
                    break
                except OSError:
                    time.sleep(0.2)
            assert "x0tta6bl4_" in body, log.read_text(errors="replace")[-2000:]
            agent.terminate()
            assert agent.wait(timeout=10) == 0, log.read_text(errors="replace")[-2000:]
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait(timeout=10)
