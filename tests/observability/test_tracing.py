"""OpenTelemetry tracing: off by default (and then nothing of OpenTelemetry is loaded),
on with the standard ``OTEL_*`` variables; real spans received over OTLP/HTTP on
loopback from a real ``x0t serve`` (FastAPI, SQLAlchemy, enrollment), a real
``x0t node join`` and real agents (handshakes)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.observability.otlp_collector import OtlpCollector, ReceivedSpan
from x0tta6bl4.observability.tracing import wanted

SERVER, CLIENT = 2, 3  # OTLP span kinds
STATUS_ERROR = 2


def base_env() -> dict[str, str]:
    """The test process's environment without any OTEL_* variable (a developer's own
    collector settings must not leak into these processes)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}


def traced_env(collector: OtlpCollector) -> dict[str, str]:
    env = base_env()
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = collector.endpoint
    env["OTEL_BSP_SCHEDULE_DELAY"] = "100"  # ms: spans leave within a tenth of a second
    return env


def udp_base_port(count: int, attempts: int = 50) -> int:
    """A port P with UDP P+i free on 127.0.0.(i+1) for every node i of a LocalMesh."""
    for _ in range(attempts):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        if base + count > 65535:
            continue
        ok = True
        for i in range(count):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                try:
                    s.bind((f"127.0.0.{i + 1}", base + i))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free UDP port range on 127.0.0.x")


@pytest.fixture
def collector() -> Iterator[OtlpCollector]:
    with OtlpCollector() as col:
        yield col


# --- switching on and off --------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:1"}, False),
        ({"OTEL_TRACES_EXPORTER": "console"}, False),  # only OTLP is shipped
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, False),
        ({"OTEL_SDK_DISABLED": "TRUE", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:1"}, False),
        ({"OTEL_SDK_DISABLED": "false", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:1"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, False),
    ],
)
def test_otel_variables_decide(env: dict[str, str], on: bool) -> None:
    assert wanted(env) is on


def _run_python(code: str, env: dict[str, str], timeout: float = 60) -> tuple[str, str]:
    """(stdout, stderr) of ``code`` in a new interpreter; the logs are on stderr."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout, out.stderr


def test_off_loads_no_opentelemetry_and_spans_are_noops() -> None:
    code = """
        import sys, json
        from x0tta6bl4.observability.logging import configure_logging
        from x0tta6bl4.observability import tracing
        configure_logging(json=True)
        assert tracing.setup_tracing("t") is False
        with tracing.span("x0t.test", node="a") as sp:
            sp.set_attribute("x0t.more", 1)
        tracing.record_span("x0t.done", start=1.0, end=2.0, peer="b")
        tracing.inject(h := {})
        assert h == {} and tracing.current_ids() is None
        import structlog
        structlog.get_logger("t").info("hello")
        print(json.dumps(sorted(m for m in sys.modules if m.startswith("opentelemetry"))))
    """
    out, err = _run_python(code, base_env())
    assert json.loads(out) == []
    logged = json.loads(err.strip().splitlines()[-1])
    assert logged["event"] == "hello" and "trace_id" not in logged


def test_spans_and_log_trace_ids_reach_an_otlp_collector(collector: OtlpCollector) -> None:
    code = """
        import json
        import structlog
        from x0tta6bl4.observability.logging import configure_logging
        from x0tta6bl4.observability import tracing
        configure_logging(json=True)
        assert tracing.setup_tracing("x0t-test")
        log = structlog.get_logger("t")
        with tracing.span("x0t.outer", node="a", skipped=None) as outer:
            outer.set_attribute("x0t.serial", "1f")
            log.info("inside")
            headers = {}
            tracing.inject(headers)
            print("TRACEPARENT " + headers["traceparent"])
            try:
                with tracing.span("x0t.inner"):
                    raise ValueError("boom")
            except ValueError:
                pass
            tracing.record_span("x0t.linked", start=100.0, end=101.5, new_trace=True, k=1)
        log.info("outside")
        tracing.record_span("x0t.failed", start=10.0, end=12.0, error="timeout", peer="b")
    """
    out, err = _run_python(code, traced_env(collector))  # exit flushes (atexit)
    spans = collector.wait_for(lambda s: len(s) >= 4, 10.0, "four spans")
    by = {s.name: s for s in spans}
    outer, inner, linked, failed = (
        by[n] for n in ("x0t.outer", "x0t.inner", "x0t.linked", "x0t.failed")
    )
    assert outer.service == "x0t-test"
    assert outer.attributes == {"x0t.node": "a", "x0t.serial": "1f"}  # None left out
    assert inner.parent_span_id == outer.span_id and inner.trace_id == outer.trace_id
    assert inner.status == STATUS_ERROR
    assert linked.trace_id != outer.trace_id and linked.parent_span_id == ""
    assert (linked.end_ns - linked.start_ns) == 1_500_000_000
    assert failed.status == STATUS_ERROR and failed.attributes["x0t.peer"] == "b"
    # Log lines inside the span carry its ids; outside, none.
    logs = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    inside = next(x for x in logs if x["event"] == "inside")
    outside = next(x for x in logs if x["event"] == "outside")
    assert (inside["trace_id"], inside["span_id"]) == (outer.trace_id, outer.span_id)
    assert "trace_id" not in outside
    assert f"TRACEPARENT 00-{outer.trace_id}-{outer.span_id}-" in out  # W3C header


def test_healing_incidents_and_failed_handshakes_as_spans(collector: OtlpCollector) -> None:
    """What the agent passes in (a real HealingEvent, a channel event's fields) becomes
    a span with the incident's real start and end in Unix time."""
    code = """
        from x0tta6bl4.healing.events import ActionKind, HealingEvent
        from x0tta6bl4.observability import tracing
        assert tracing.setup_tracing("x0t-test")
        offset = 1_700_000_000.0  # Unix time = monotonic + offset
        repaired = HealingEvent(
            kind="dead_neighbour", subject="b", detected_at=10.4,
            actions=(ActionKind.REROUTE,), repaired_at=10.9, outcome="repaired",
            fault_started_at=10.0, verified=("c", "d"),
        )
        failed = HealingEvent(
            kind="partition", subject="e", detected_at=20.0, actions=(),
            repaired_at=None, outcome="failed",
        )
        tracing.record_healing_event(repaired, offset)
        tracing.record_healing_event(failed, offset)
        tracing.record_handshake_event(
            "e2e.handshake_failed",
            {"peer": "c", "addr": "c1", "attempts": 4, "reason": "timeout"},
            offset + 30.0,
        )
        tracing.record_handshake_event("link.session_rekeyed", {"peer": "c"}, offset)
    """
    _run_python(code, traced_env(collector))
    spans = collector.wait_for(lambda s: len(s) >= 3, 10.0, "three spans")
    assert len(spans) == 3  # session_rekeyed is not a handshake span
    heal = [s for s in spans if s.name == "x0t.self_healing"]
    ok = next(s for s in heal if s.attributes["x0t.outcome"] == "repaired")
    assert ok.start_ns == 1_700_000_010 * 10**9
    assert ok.end_ns - ok.start_ns == pytest.approx(0.9e9, abs=1e3)
    assert ok.attributes["x0t.mttr_s"] == pytest.approx(0.9)
    assert ok.attributes["x0t.mttd_s"] == pytest.approx(0.4)
    assert ok.attributes["x0t.action"] == "reroute" and ok.attributes["x0t.verified"] == "c,d"
    assert ok.status != STATUS_ERROR
    bad = next(s for s in heal if s.attributes["x0t.outcome"] == "failed")
    assert bad.status == STATUS_ERROR and bad.attributes["x0t.action"] == "wait"
    assert "x0t.mttr_s" not in bad.attributes
    hs = next(s for s in spans if s.name == "x0t.handshake.failed")
    assert hs.status == STATUS_ERROR and hs.attributes["x0t.layer"] == "e2e"
    assert (hs.attributes["x0t.reason"], hs.attributes["x0t.attempts"]) == ("timeout", 4)


def test_without_the_sdk_the_process_runs_untraced(collector: OtlpCollector) -> None:
    """A node installed without the tracing extra, with OTEL_* variables set: a warning
    naming the extra, and everything works untraced."""
    code = """
        import sys
        sys.modules["opentelemetry.sdk"] = None  # as if the package were not installed
        from x0tta6bl4.observability.logging import configure_logging
        from x0tta6bl4.observability import tracing
        configure_logging(json=True)
        assert tracing.setup_tracing("t") is False and not tracing.enabled()
        with tracing.span("x0t.test"):
            pass
    """
    _, err = _run_python(code, traced_env(collector))
    warning = json.loads(err.strip().splitlines()[-1])
    assert warning["level"] == "warning" and "x0tta6bl4[tracing]" in warning["event"]
    time.sleep(0.3)
    assert collector.snapshot() == []


# --- the control plane ------------------------------------------------------------------


@pytest.mark.slow
def test_serve_flushes_its_spans_on_sigterm(collector: OtlpCollector, tmp_path: Path) -> None:
    """With a batch delay longer than the test, spans only leave at shutdown. An operator
    asking for every request header still never gets the API key."""
    from x0tta6bl4.node.localcontrol import LocalControlPlane

    env = traced_env(collector)
    env["OTEL_BSP_SCHEDULE_DELAY"] = "600000"  # ten minutes
    env["OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST"] = ".*"
    with LocalControlPlane(tmp_path / "control", env=env) as cp:
        cp.call("GET", "/v1/nodes")
        time.sleep(0.5)
        assert collector.snapshot() == []
        cp.stop()  # SIGTERM
    spans = collector.wait_for(
        lambda s: any(x.name == "GET /v1/nodes" for x in s), 5.0, "the request's span"
    )
    server = _one(spans, "server span", name="GET /v1/nodes")
    assert server.kind == SERVER
    assert server.attributes["http.request.header.authorization"] == ["[REDACTED]"]
    assert server.attributes["http.request.header.accept"] == ["application/json"]
    assert cp.admin_key.split("_", 2)[2] not in json.dumps([s.attributes for s in spans])


def _one(spans: list[ReceivedSpan], what: str, **match: object) -> ReceivedSpan:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in match.items())]
    assert found, f"no {what} among {sorted({(s.service, s.name) for s in spans})}"
    return found[0]


@pytest.mark.slow
def test_serve_exports_request_database_and_enrollment_spans(
    collector: OtlpCollector, tmp_path: Path
) -> None:
    from x0tta6bl4.node.localcontrol import LocalControlPlane

    env = traced_env(collector)
    with LocalControlPlane(tmp_path / "control", env=env) as cp:
        token = cp.create_token(["role:web"])
        joined = subprocess.run(
            [
                sys.executable,
                "-m",
                "x0tta6bl4.cli",
                "node",
                "join",
                cp.url,
                "--token",
                token,
                "--state-dir",
                str(tmp_path / "web-1"),
                "--name",
                "web-1",
                "--tag",
                "role:web",
                "--listen",
                "127.0.0.1:1",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert joined.returncode == 0, joined.stderr[-2000:]

        def done(spans: list[ReceivedSpan]) -> bool:
            names = {(s.service, s.name) for s in spans}
            return ("x0tta6bl4-control", "x0t.enroll") in names and (
                "x0tta6bl4-node",
                "x0t.node.join",
            ) in names

        spans = collector.wait_for(done, 15.0, "the enrollment and join spans")

    enroll = _one(spans, "enrollment span", name="x0t.enroll")
    assert enroll.attributes["x0t.node"] == "web-1"
    assert enroll.attributes["x0t.serial"]
    server = _one(spans, "FastAPI server span of the enrollment", span_id=enroll.parent_span_id)
    assert server.kind == SERVER and server.service == "x0tta6bl4-control"
    assert server.name == "POST /v1/enroll"
    assert server.scope == "opentelemetry.instrumentation.fastapi"
    # SQLAlchemy statements of the enrollment, inside its span.
    sql = [
        s
        for s in spans
        if s.scope == "opentelemetry.instrumentation.sqlalchemy" and s.trace_id == enroll.trace_id
    ]
    assert sql and all(s.kind == CLIENT for s in sql)
    assert {s.parent_span_id for s in sql} & {enroll.span_id}
    # The node's join is the root of the same trace (traceparent over HTTP).
    join = _one(spans, "node join span", name="x0t.node.join")
    assert join.service == "x0tta6bl4-node" and join.attributes["x0t.node"] == "web-1"
    assert join.trace_id == enroll.trace_id and server.parent_span_id == join.span_id
    assert join.attributes["x0t.serial"] == enroll.attributes["x0t.serial"]
    # Probes are not traced; and no span carries the token or any part of it.
    assert not [s for s in spans if s.name.startswith("GET /ready")]
    secret = token.split(".")[2]
    for s in spans:
        for v in s.attributes.values():
            assert secret not in str(v) and token not in str(v), (s.name, v)


def _redis_or_skip() -> str:
    import redis

    url = os.environ.get("X0T_TEST_REDIS", "redis://127.0.0.1:6379/0")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except Exception as exc:
        msg = f"Redis at {url} is not reachable ({type(exc).__name__}: {exc})"
        if os.environ.get("X0T_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{msg}, and X0T_REQUIRE_SERVICES=1 requires it")
        pytest.skip(f"{msg}; start it or set X0T_REQUIRE_SERVICES=1 to make this a failure")
    return url


@pytest.mark.slow
def test_serve_exports_redis_and_policy_push_spans(
    collector: OtlpCollector, tmp_path: Path
) -> None:
    """With Redis as the bus, a policy change is one trace: the request, the
    ``x0t.push.publish`` span and its Redis PUBLISH (arguments hidden)."""
    from x0tta6bl4.node.localcontrol import LocalControlPlane

    cp = LocalControlPlane(tmp_path / "control", env=traced_env(collector))
    cp.env["X0T_REDIS_URL"] = _redis_or_skip()  # LocalControlPlane drops the caller's
    with cp:
        version = cp.set_policy("version 1\nallow from tag:role:a to tag:role:b port msg/1\n", "t")

        def published(spans: list[ReceivedSpan]) -> bool:
            # The request's own span ends after its response, so it may arrive in a
            # later batch than its children: wait for all three.
            parents = {s.parent_span_id for s in spans if s.name == "x0t.push.publish"}
            return (
                any(s.scope == "opentelemetry.instrumentation.redis" for s in spans)
                and bool(parents)
                and any(s.span_id in parents for s in spans)
            )

        spans = collector.wait_for(published, 10.0, "the request, publish and Redis spans")
    publish = _one(spans, "publish span", name="x0t.push.publish")
    assert publish.attributes["x0t.kind"] == "policy"
    assert publish.attributes["x0t.policy_version"] == version
    server = _one(spans, "request span", span_id=publish.parent_span_id)
    assert server.name == "POST /v1/policies" and server.kind == SERVER
    redis_spans = [s for s in spans if s.parent_span_id == publish.span_id and s.kind == CLIENT]
    assert [s.name for s in redis_spans if s.scope.endswith(".redis")] == ["PUBLISH"]
    statement = next(s for s in redis_spans if s.name == "PUBLISH").attributes
    assert "policy" not in json.dumps(statement)  # the message itself is not recorded


# --- nodes --------------------------------------------------------------------------------


@pytest.mark.slow
def test_agents_export_handshake_spans(collector: OtlpCollector, tmp_path: Path) -> None:
    """Two agents link up; with a batch delay longer than the test, their spans leave
    when SIGTERM stops them (the agent exits through its exit handlers)."""
    from x0tta6bl4.node.localmesh import LocalMesh

    env = traced_env(collector)
    env["OTEL_BSP_SCHEDULE_DELAY"] = "600000"  # ten minutes
    mesh = LocalMesh(
        tmp_path / "mesh", ["a", "b"], [("a", "b")], base_port=udp_base_port(2), env=env
    )
    with mesh:
        mesh.create()
        mesh.start_all()
        mesh.wait(mesh.routes_complete, 30.0, "a and b to route to each other")
        assert collector.snapshot() == []
        mesh.stop_all()  # SIGTERM
    assert all(n.proc is not None and n.proc.returncode == 0 for n in mesh.nodes.values())

    def completed(spans: list[ReceivedSpan]) -> bool:
        done = [s for s in spans if s.name == "x0t.handshake.completed"]
        return {s.attributes.get("x0t.peer") for s in done} == {"a", "b"}

    spans = collector.wait_for(completed, 10.0, "completed handshake spans from both agents")
    done = [s for s in spans if s.name == "x0t.handshake.completed"]
    assert {s.service for s in done} == {"x0tta6bl4-node"}
    assert {s.attributes["x0t.peer"] for s in done} <= {"a", "b"}
    first = done[0]
    assert first.attributes["x0t.layer"] in ("link", "e2e")
    assert first.attributes["x0t.role"] in ("initiator", "responder")
    assert first.end_ns - first.start_ns == pytest.approx(
        first.attributes["x0t.duration_s"] * 1e9, abs=1e3
    )
    assert any(s.name == "x0t.handshake.initiated" for s in spans)


@pytest.mark.slow
def test_agent_without_otel_variables_never_imports_opentelemetry(tmp_path: Path) -> None:
    """The lean agent process (``x0t node run`` execs ``python -m x0tta6bl4.node``):
    Python's own import profiler lists every module the process loads, for its whole
    life, handshakes included."""
    from x0tta6bl4.node.localmesh import LocalMesh

    env = base_env()
    env["PYTHONPROFILEIMPORTTIME"] = "1"
    mesh = LocalMesh(
        tmp_path / "mesh", ["a", "b"], [("a", "b")], base_port=udp_base_port(2), env=env
    )
    with mesh:
        mesh.create()
        mesh.start_all()
        mesh.wait(mesh.routes_complete, 30.0, "a and b to route to each other")
        time.sleep(0.5)
        mesh.stop_all()
    for name in ("a", "b"):
        log_path = mesh.nodes[name].log_path
        assert log_path is not None
        lines = log_path.read_text(errors="replace").splitlines()
        imports = [line for line in lines if line.startswith("import time:")]
        assert any("x0tta6bl4.node.agent" in line for line in imports), "profiler output"
        assert any("x0tta6bl4.observability.tracing" in line for line in imports)
        loaded = [line for line in imports if "opentelemetry" in line]
        assert not loaded, loaded[:5]
