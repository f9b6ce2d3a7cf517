"""Backup and restore drill: the control plane on the real PostgreSQL of this machine,
under write load, backed up with ``pg_dump -Fc`` on a schedule, then lost and restored.

    figures = run(quick=True)      # {"rto_s": ..., "rpo_s": ..., ...}

What happens, every step bounded in time and count:

1. A scratch database; ``x0t admin create-key`` (the real CLI) makes the admin key;
   ``x0t serve`` (a real subprocess) runs on it with its own CA directory, which is
   copied once (``tar``): the CA key and the enrollment key live on disk, not in the
   database, and a restore needs both.
2. Before the load: a node enrolled and revoked, a viewer key made through the API, a
   steady node enrolled, a join token with spare uses: what a restore must keep.
3. Load: a writer enrolls nodes (the node's own ``join``: HPKE, proofs, CA signature)
   and posts a signed status report from each, at a bounded rate, for a bounded time.
   Every acknowledged write is recorded with the time its answer arrived.
4. A scheduler runs ``pg_dump -Fc`` every ``backup_interval_s``; a dump counts only once
   complete (written to a temporary name, then renamed).
5. The disaster: the server is killed (SIGKILL) and the database dropped
   (``WITH (FORCE)``, which also breaks a dump in progress).
6. The restore: a new database, ``pg_restore`` of the newest complete dump, the CA
   directory from its copy, ``x0t serve`` on the result.

Figures: ``rto_s`` = from the moment the service and its database are gone to the
restored service answering ``/ready`` 200 and an authenticated read (``GET /v1/nodes``);
the restore starts at once, so this is the mechanical part only: a human noticing and
deciding comes on top. ``rpo_s`` = the last write acknowledged before the
disaster minus the newest acknowledged write the restored database still holds (the
writes acknowledged in between are lost). Integrity checks after the restore (1.0 = held):
the API keys and the revocation survive, a token made before the backup still enrolls a
new node under the same CA and enrollment key, a node lost with the writes re-joins with
its kept keys, and ``x0t db upgrade`` leaves the schema revision as it was. One node is
revoked just before the disaster, after the newest dump: ``late_revocation_lost`` = 1.0
when the restored service forgot it (and takes that node's requests again), with
``crl_versions_lost`` the list versions the restore is behind.
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
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from tests.control.replicas import http_json as http

from x0tta6bl4.node.localcontrol import stop_process

if TYPE_CHECKING:
    from bench.report import Suite

PG_ADMIN: Final = os.environ.get("X0T_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
TAG: Final = "role:drill"
READY_TIMEOUT_S: Final = 90.0
PG_TOOL_TIMEOUT_S: Final = 120.0


class DrillError(RuntimeError):
    """A step of the drill failed (not a figure out of range: that is the caller's call)."""


def unavailable_reason() -> str | None:
    """Why the drill cannot run here, or None."""
    for tool in ("pg_dump", "pg_restore"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian package postgresql-client)"
    try:
        asyncio.run(_pg_admin("SELECT 1"))
    except Exception as exc:
        return f"PostgreSQL unreachable at {PG_ADMIN}: {type(exc).__name__}: {exc}"
    return None


# --- PostgreSQL helpers ---------------------------------------------------------------


def _libpq(dsn: str) -> tuple[str, str, str]:
    """(host, port, user) of a postgresql:// admin DSN, for pg_dump and pg_restore."""
    from urllib.parse import urlsplit

    parts = urlsplit(dsn)
    return parts.hostname or "127.0.0.1", str(parts.port or 5432), parts.username or "postgres"


async def _pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _pg_fetch(db: str, sql: str) -> list[Any]:
    import asyncpg

    conn = await asyncpg.connect(f"{PG_ADMIN.rsplit('/', 1)[0]}/{db}", timeout=5)
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


def _db_url(name: str) -> str:
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    return f"{base}/{name}"


def _drop(name: str) -> None:
    with contextlib.suppress(Exception):
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# --- the service ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _x0t(*args: str) -> list[str]:
    return [sys.executable, "-m", "x0tta6bl4.cli", *args]


@dataclass
class Server:
    """``x0t serve`` on a database and a CA directory (not started)."""

    root: Path
    db_name: str
    ca_dir: Path
    label: str
    port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.root / f"serve-{self.label}.log"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("X0T_")}
        env.update(
            X0T_DATA_DIR=str(self.root / f"data-{self.label}"),
            X0T_DATABASE_URL=_db_url(self.db_name),
            X0T_CA_DIR=str(self.ca_dir),
        )
        return env

    def cli(self, *args: str, timeout: float = 120.0) -> str:
        """Run an ``x0t`` command against this server's settings; its stdout."""
        done = subprocess.run(
            _x0t(*args), env=self.env(), capture_output=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise DrillError(f"x0t {' '.join(args)} failed: {done.stderr.decode()[-1500:]}")
        return done.stdout.decode()

    def start(self) -> None:
        cmd = _x0t("serve", "--host", "127.0.0.1", "--port", str(self.port))
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                cmd, env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_ready(self, admin_key: str, timeout: float = READY_TIMEOUT_S) -> float:
        """Block until ``/ready`` is 200 and an authenticated read answers; the time then."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise DrillError(f"x0t serve ({self.label}) exited:\n{self.log_tail()}")
            status, _ = http("GET", f"{self.url}/ready", timeout=1.0)
            if status == 200:
                status, _ = http("GET", f"{self.url}/v1/nodes?limit=1", key=admin_key, timeout=2)
                if status == 200:
                    return time.time()
            time.sleep(0.05)
        raise DrillError(f"x0t serve ({self.label}) not ready in {timeout} s:\n{self.log_tail()}")

    def kill(self) -> None:
        p = self.process
        if p is not None and p.poll() is None:
            p.kill()
            p.wait(10)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, grace=15, kill_wait=10)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def served_crl_version(server: Server) -> int:
    """The revocation list version ``server`` serves."""
    return int(_ok(*http("GET", f"{server.url}/v1/crl/version"), "crl version")["version"])


def _ok(status: int, body: Any, what: str, want: int = 200) -> Any:
    if status != want:
        raise DrillError(f"{what}: HTTP {status}: {body}")
    return body


# --- nodes: enrollment and signed reports, as a node does them ---------------------------


@dataclass
class DrillNode:
    name: str
    state_dir: Path
    serial: int
    key: Any  # x0tta6bl4.crypto.sign.SigningKey


def enroll(url: str, token: str, name: str, nodes_dir: Path) -> DrillNode:
    """``x0t node join``'s code path; the node's files go to ``nodes_dir/name``."""
    from x0tta6bl4.identity import NodeCredentials
    from x0tta6bl4.node.control_client import ControlClient
    from x0tta6bl4.node.join import join

    state_dir = nodes_dir / name
    join(url, token, state_dir, name, [TAG], client=ControlClient(url, timeout=10))
    creds = NodeCredentials.load(state_dir)
    return DrillNode(name, state_dir, creds.cert.serial, creds.signing_private)


def post_report(url: str, node: DrillNode, at: float) -> int:
    """A signed status report; the HTTP status (0: no answer)."""
    from x0tta6bl4.node.control_client import ControlClient, ControlError, Signer

    body = {"at": at, "endpoints": [], "neighbours": [], "routes": [], "sessions": 0}
    try:
        ControlClient(url, timeout=10).request(
            "POST", "/v1/reports", body, signer=Signer(node.key, node.serial)
        )
    except ControlError as exc:
        return exc.status
    return 200


@dataclass(frozen=True)
class Write:
    kind: str  # "enroll" | "report"
    node: str
    at: float  # the report's own time (reports); 0 for enrollments
    acked: float  # wall time the answer arrived


@dataclass
class Load:
    """The writer thread's record."""

    writes: list[Write] = field(default_factory=list)
    nodes: list[DrillNode] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    started: float = 0.0


def _writer(
    url: str, token: str, nodes_dir: Path, rate: float, max_cycles: int, stop: threading.Event
) -> Load:
    """Enroll a node and post a report from it, ``rate`` cycles a second, until ``stop``
    or ``max_cycles``; writes that fail after the disaster are expected and recorded."""
    from x0tta6bl4.errors import X0tError

    load = Load(started=time.time())
    period = 1.0 / rate
    next_at = time.monotonic()
    for i in range(max_cycles):
        if stop.is_set():
            break
        name = f"load-{i}"
        try:
            node = enroll(url, token, name, nodes_dir)
        except (X0tError, OSError) as exc:
            load.failures.append(f"enroll {name}: {exc}")
            if stop.is_set() or len(load.failures) > 3:
                break
            continue
        load.writes.append(Write("enroll", name, 0.0, time.time()))
        load.nodes.append(node)
        at = time.time()
        status = post_report(url, node, at)
        if status == 200:
            load.writes.append(Write("report", name, at, time.time()))
        else:
            load.failures.append(f"report {name}: HTTP {status}")
        next_at += period
        stop.wait(max(0.0, next_at - time.monotonic()))
    return load


# --- backups ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dump:
    path: Path
    started: float
    finished: float
    size: int


def pg_dump(db_name: str, out: Path) -> Dump:
    """``pg_dump -Fc`` to ``out`` (via a temporary name, so only complete dumps exist)."""
    host, port, user = _libpq(PG_ADMIN)
    tmp = out.with_suffix(".partial")
    started = time.time()
    done = subprocess.run(
        ["pg_dump", "-Fc", "-h", host, "-p", port, "-U", user, "-d", db_name, "-f", str(tmp)],
        capture_output=True,
        timeout=PG_TOOL_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise DrillError(f"pg_dump failed: {done.stderr.decode()[-800:]}")
    tmp.rename(out)
    return Dump(out, started, time.time(), out.stat().st_size)


def _scheduler(
    db_name: str, backups: Path, interval: float, stop: threading.Event, dumps: list[Dump]
) -> None:
    """A dump every ``interval`` seconds (measured start to start) until ``stop``."""
    n = 0
    next_at = time.monotonic()
    while not stop.is_set() and n < 10_000:
        try:
            dumps.append(pg_dump(db_name, backups / f"x0t-{n:04d}.dump"))
        except (DrillError, subprocess.TimeoutExpired):
            if stop.is_set():
                return  # broken by the disaster: that dump never completed
            raise
        n += 1
        next_at += interval
        stop.wait(max(0.0, next_at - time.monotonic()))


def pg_restore(dump: Path, db_name: str) -> None:
    host, port, user = _libpq(PG_ADMIN)
    done = subprocess.run(
        [
            "pg_restore",
            "--exit-on-error",
            "--no-owner",
            "-h",
            host,
            "-p",
            port,
            "-U",
            user,
            "-d",
            db_name,
            str(dump),
        ],
        capture_output=True,
        timeout=PG_TOOL_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise DrillError(f"pg_restore failed: {done.stderr.decode()[-800:]}")


def backup_ca_dir(ca_dir: Path, archive: Path) -> None:
    """``tar`` of the CA directory (ca.key, ca.crt, enroll.key, ...), modes kept."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(ca_dir, arcname="ca")


def restore_ca_dir(archive: Path, into: Path) -> Path:
    into.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(into, filter="data")
    restored = into / "ca"
    os.chmod(restored, 0o700)
    return restored


# --- the drill ------------------------------------------------------------------------------


@dataclass
class Plan:
    backup_interval_s: float
    load_s: float
    rate_per_s: float  # enroll + report cycles per second
    max_cycles: int

    @classmethod
    def of(cls, quick: bool) -> Plan:
        if quick:
            return cls(backup_interval_s=2.0, load_s=7.0, rate_per_s=3.0, max_cycles=40)
        return cls(backup_interval_s=5.0, load_s=23.0, rate_per_s=4.0, max_cycles=200)


@contextlib.contextmanager
def _scratch() -> Iterator[list[str]]:
    """A list the drill appends database names to; all are dropped on the way out."""
    names: list[str] = []
    try:
        yield names
    finally:
        for name in names:
            _drop(name)


def _new_db(names: list[str], prefix: str) -> str:
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(3)}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    names.append(name)
    return name


def run(quick: bool = False) -> dict[str, float]:
    """Run the drill; figures and checks (1.0 held, 0.0 failed) by name. DrillError when a
    step cannot be done at all (PostgreSQL away, the service does not start)."""
    reason = unavailable_reason()
    if reason is not None:
        raise DrillError(reason)
    plan = Plan.of(quick)
    root = Path(tempfile.mkdtemp(prefix="x0t-drill-"))
    servers: list[Server] = []
    stop_load, stop_backups = threading.Event(), threading.Event()
    threads: list[threading.Thread] = []
    try:
        with _scratch() as databases:
            return _drill(plan, root, databases, servers, stop_load, stop_backups, threads)
    finally:
        stop_load.set()
        stop_backups.set()
        for s in servers:
            s.kill()
        for t in threads:
            t.join(30)
        shutil.rmtree(root, ignore_errors=True)


def _drill(
    plan: Plan,
    root: Path,
    databases: list[str],
    servers: list[Server],
    stop_load: threading.Event,
    stop_backups: threading.Event,
    threads: list[threading.Thread],
) -> dict[str, float]:
    nodes_dir, backups = root / "nodes", root / "backups"
    nodes_dir.mkdir()
    backups.mkdir()
    out: dict[str, float] = {
        "backup_interval_s": plan.backup_interval_s,
        "load_s": plan.load_s,
        # Other work on the machine slows the restart most: keep it beside the figures.
        "machine_load_avg_1m": round(os.getloadavg()[0], 2),
    }

    # 1. The service, its admin key (the CLI), its CA directory backed up once.
    primary = Server(root, _new_db(databases, "x0t_drill"), root / "ca", "primary")
    admin_key = primary.cli("admin", "create-key", "drill-admin", "--role", "admin")
    admin_key = admin_key.strip().splitlines()[-1]
    servers.append(primary)
    primary.start()
    primary.wait_ready(admin_key)
    backup_ca_dir(primary.ca_dir, root / "ca-backup.tar.gz")
    original_bundle = (primary.ca_dir / "ca.crt").read_bytes()

    # 2. What a restore must keep.
    url = primary.url
    viewer = _ok(
        *http(
            "POST", f"{url}/v1/api-keys", {"name": "drill-viewer", "role": "viewer"}, key=admin_key
        ),
        "create viewer key",
        201,
    )["key"]
    token_body = {"tags": [TAG], "max_uses": 1000, "ttl_s": 3600}
    load_token = _ok(*http("POST", f"{url}/v1/tokens", token_body, key=admin_key), "token", 201)
    spare_token = _ok(*http("POST", f"{url}/v1/tokens", token_body, key=admin_key), "token", 201)
    victim = enroll(url, load_token["token"], "victim", nodes_dir)
    steady = enroll(url, load_token["token"], "steady", nodes_dir)
    # Revoked just before the disaster, after the newest dump: what a restore forgets.
    late = enroll(url, load_token["token"], "late-revoked", nodes_dir)
    revoked = _ok(
        *http(
            "POST",
            f"{url}/v1/revocations",
            {"node": "victim", "reason": "key-compromise"},
            key=admin_key,
        ),
        "revoke victim",
    )
    crl_version_before = int(revoked["crl_version"])

    # 3 + 4. Load and scheduled backups; the first dump precedes the load.
    dumps: list[Dump] = []
    box: dict[str, Any] = {}

    def scheduler() -> None:
        try:
            _scheduler(primary.db_name, backups, plan.backup_interval_s, stop_backups, dumps)
        except BaseException as exc:  # reported after the join
            box["backup_error"] = exc

    def writer() -> None:
        box["load"] = _writer(
            url, load_token["token"], nodes_dir, plan.rate_per_s, plan.max_cycles, stop_load
        )

    threads.append(threading.Thread(target=scheduler, name="drill-backups", daemon=True))
    threads[-1].start()
    deadline = time.monotonic() + 30
    while not dumps and time.monotonic() < deadline and "backup_error" not in box:
        time.sleep(0.05)
    if not dumps:
        raise DrillError(f"no first backup: {box.get('backup_error')}")
    threads.append(threading.Thread(target=writer, name="drill-writer", daemon=True))
    threads[-1].start()
    time.sleep(plan.load_s)
    late_revoked = _ok(
        *http(
            "POST",
            f"{url}/v1/revocations",
            {"node": late.name, "reason": "key-compromise"},
            key=admin_key,
        ),
        "late revocation",
    )
    t_late_revoked = time.time()

    # 5. The disaster, while the writer and the scheduler are still running: the service
    # is killed and its database dropped (which also breaks a dump in progress).
    t_hit = time.time()
    stop_load.set()
    stop_backups.set()
    primary.kill()
    asyncio.run(_pg_admin(f'DROP DATABASE "{primary.db_name}" WITH (FORCE)'))
    t_disaster = time.time()  # from here on there is no service and no database

    # 6. The restore at once: the newest complete dump, the CA directory from its copy,
    # x0t serve. (A dump finishing in the instant before the drop may be missed: that
    # only makes the figures worse, never better.)
    if not dumps:
        raise DrillError("no complete backup before the disaster")
    latest = max(dumps, key=lambda d: d.started)
    restored_db = _new_db(databases, "x0t_drill_restored")
    pg_restore(latest.path, restored_db)
    t_restored = time.time()
    ca_dir = restore_ca_dir(root / "ca-backup.tar.gz", root / "restored")
    restored = Server(root, restored_db, ca_dir, "restored")
    servers.append(restored)
    restored.start()
    t_ready = restored.wait_ready(admin_key)
    out.update(
        rto_s=round(t_ready - t_disaster, 3),
        disaster_s=round(t_disaster - t_hit, 3),
        restore_s=round(t_restored - t_disaster, 3),
        start_s=round(t_ready - t_restored, 3),
    )

    # The writer and the scheduler stop on their own (their server and database are gone).
    for t in threads:
        t.join(60)
        if t.is_alive():
            raise DrillError(f"{t.name} did not stop within 60 s of the disaster")
    if "backup_error" in box:
        raise DrillError(f"a scheduled backup failed before the disaster: {box['backup_error']}")
    load: Load = box["load"]
    acked = [w for w in load.writes if w.acked <= t_hit]
    if not acked:
        raise DrillError(f"no write was acknowledged under load: {load.failures[:3]}")

    # RPO: which acknowledged writes does the restored database hold?
    names = {r["name"] for r in asyncio.run(_pg_fetch(restored_db, "SELECT name FROM nodes"))}
    reports = {
        r["node_name"]: float(r["at"])
        for r in asyncio.run(_pg_fetch(restored_db, "SELECT node_name, at FROM node_reports"))
    }

    def present(w: Write) -> bool:
        if w.kind == "enroll":
            return w.node in names
        return reports.get(w.node, -1.0) >= w.at

    held = [w for w in acked if present(w)]
    last_ack = max(w.acked for w in acked)
    newest_held = max((w.acked for w in held), default=load.started)
    # A dump is one snapshot taken as it starts: whatever was acknowledged before then
    # must be in it. A missing one would be a hole, not a loss.
    holes = [w for w in acked if w.acked < latest.started and not present(w)]
    out.update(
        rpo_s=round(last_ack - newest_held, 3),
        backup_age_at_disaster_s=round(t_hit - latest.started, 3),
        backups_taken=float(len(dumps)),
        dump_bytes=float(latest.size),
        dump_s=round(latest.finished - latest.started, 3),
        writes_acked=float(len(acked)),
        writes_lost=float(len(acked) - len(held)),
        write_rate_per_s=round(len(acked) / max(1e-9, last_ack - load.started), 2),
        snapshot_holes=float(len(holes)),
        crl_versions_lost=float(int(late_revoked["crl_version"]) - served_crl_version(restored)),
    )

    # Integrity after the restore.
    rurl = restored.url
    checks: dict[str, bool] = {}
    status, _ = http("GET", f"{rurl}/v1/nodes?limit=1", key=viewer)
    checks["check_api_keys_survive"] = status == 200
    status, revs = http("GET", f"{rurl}/v1/revocations", key=viewer)
    checks["check_revocation_survives"] = (
        status == 200
        and int(revs["version"]) >= crl_version_before
        and format(victim.serial, "x") in {e["serial"] for e in revs["entries"]}
    )
    checks["check_revoked_node_refused"] = post_report(rurl, victim, time.time()) == 401
    # The late revocation: lost when it came after the newest dump started (the usual
    # case), and then the restored service takes the revoked node's requests again.
    late_status = post_report(rurl, late, time.time())
    if t_late_revoked < latest.started:  # a dump started after it: it must be there
        checks["check_late_revocation_in_dump"] = late_status == 401
    out["late_revocation_lost"] = 1.0 if late_status == 200 else 0.0
    checks["check_steady_node_reports"] = post_report(rurl, steady, time.time()) == 200
    # The token made before the backup: same enrollment key (its fingerprint is in the
    # token), same CA (the new certificate chains to the original ca.crt).
    fresh = enroll(rurl, spare_token["token"], "after-restore", nodes_dir)
    bundle = (fresh.state_dir / "bundle.pem").read_bytes()
    checks["check_ca_signs_same_ca"] = bundle.strip() == original_bundle.strip()
    # A node enrolled after the backup is unknown now: its requests are refused, and it
    # re-joins with its kept keys once its certificate is moved away.
    lost = [n for n in load.nodes if n.name not in names]
    if lost:
        node = lost[-1]
        refused = post_report(rurl, node, time.time()) == 401
        (node.state_dir / "node.crt").rename(node.state_dir / "node.crt.lost")
        rejoined = enroll(rurl, spare_token["token"], node.name, nodes_dir)
        checks["check_lost_node_rejoins"] = (
            refused and rejoined.key.public_key() == node.key.public_key()
        )
    out["nodes_lost"] = float(len(lost))
    # x0t db upgrade on the restored database: exit 0, the revision unchanged.
    query = "SELECT version_num FROM alembic_version"
    before = [r["version_num"] for r in asyncio.run(_pg_fetch(restored_db, query))]
    restored.cli("db", "upgrade")
    after = [r["version_num"] for r in asyncio.run(_pg_fetch(restored_db, query))]
    checks["check_db_upgrade_noop"] = bool(before) and before == after
    for name, held_ok in checks.items():
        out[name] = 1.0 if held_ok else 0.0
    restored.stop()
    return out


def suite(quick: bool = False) -> Suite:
    """``run`` as a bench suite (``bench/results/drill.{json,md}``, ``rto_s`` and ``rpo_s``
    in summary.json)."""
    from bench.report import Suite

    f = run(quick=quick)
    s = Suite("drill")
    s.add(
        "rto_s",
        "RTO: disaster -> restored x0t serve answers /ready and a read",
        f["rto_s"],
        "s",
        f"createdb + pg_restore {f['restore_s']:.2f} s + x0t serve start {f['start_s']:.2f} s; "
        "no human in it",
    )
    s.add(
        "rpo_s",
        "RPO: last acknowledged write -> newest write the restore holds",
        f["rpo_s"],
        "s",
        f"pg_dump -Fc every {f['backup_interval_s']:g} s; "
        f"{f['writes_lost']:.0f} of {f['writes_acked']:.0f} writes lost",
    )
    s.add("", "dump size (newest)", f["dump_bytes"] / 1024, "KiB", f"pg_dump took {f['dump_s']} s")
    s.add("", "write load", f["write_rate_per_s"], "writes/s", "enrollments + signed reports")
    failed = [k for k, v in f.items() if k.startswith("check_") and v != 1.0]
    s.add("", "integrity checks after restore", float(len(failed)), "failed", ", ".join(failed))
    s.details.update(f)
    return s


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.drill")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(json.dumps(run(quick=args.quick), indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
