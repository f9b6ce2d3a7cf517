"""Real control-plane processes (uvicorn) for tests and bench code: replicas sharing one
database, one CA directory and (optionally) Redis, and the cross-replica push figure.

    with replica_set(database_url, [redis_url, redis_url], work_dir) as (one, two):
        seconds = measure_cross_replica_push(one, two, database_url, ca_dir)

``measure_cross_replica_push`` times a revocation made through one replica until a node
stream held on the other yields the new revocation list: the issue's "within 1 s, also
across replicas".
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import queue
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.control.nodes_helper import TestNode, create_node
from x0tta6bl4.api.push import decode_crl, decode_hello, stream_path
from x0tta6bl4.node.control_client import ControlClient
from x0tta6bl4.node.localcontrol import stop_process

TRUST_DOMAIN = "x0tta6bl4.mesh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Replica:
    url: str
    port: int
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self, ready_timeout: float = 60.0) -> Replica:
        """Start (or restart, on the same port and settings) and wait for /ready."""
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "x0tta6bl4.control.app:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            "--no-access-log",
            # Event streams never finish on their own: give them a second, then cancel.
            "--timeout-graceful-shutdown",
            "1",
        ]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"replica on {self.port} exited:\n{self.log_tail()}")
            status, _ = http_json("GET", f"{self.url}/ready", timeout=1.0)
            if status == 200:
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"replica on {self.port} not ready:\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is not None:
            stop_process(self.process, timeout)

    def kill(self) -> None:
        """SIGKILL: a crash, not a shutdown."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


def make_replica(
    work_dir: Path,
    *,
    database_url: str | None = None,
    redis_url: str | None = None,
    ca_dir: Path | None = None,
    push_poll_s: float | None = None,
    name: str | None = None,
    port: int | None = None,
) -> Replica:
    """A replica's settings (not started): its own data dir under ``work_dir``; the
    database, Redis and CA directory are shared when given."""
    port = port or free_port()
    name = name or f"replica-{port}"
    data = work_dir / name
    data.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("X0T_")}
    env["X0T_DATA_DIR"] = str(data)
    if database_url:
        env["X0T_DATABASE_URL"] = database_url
    if redis_url:
        env["X0T_REDIS_URL"] = redis_url
    if ca_dir is not None:
        env["X0T_CA_DIR"] = str(ca_dir)
    if push_poll_s is not None:
        env["X0T_PUSH_POLL_S"] = str(push_poll_s)
    return Replica(f"http://127.0.0.1:{port}", port, env, work_dir / f"{name}.log")


@contextlib.contextmanager
def replica_set(
    database_url: str, redis_urls: Sequence[str | None], work_dir: Path
) -> Iterator[list[Replica]]:
    """One replica per entry of ``redis_urls`` (None: in-process bus), sharing the
    database and one CA directory; started one after the other (the first creates the
    CA and the first revocation list)."""
    ca_dir = work_dir / "ca"
    replicas = [
        make_replica(work_dir, database_url=database_url, redis_url=r, ca_dir=ca_dir)
        for r in redis_urls
    ]
    try:
        for r in replicas:
            r.start()
        yield replicas
    finally:
        for r in replicas:
            r.stop()


# --- talking to a replica --------------------------------------------------------------


def http_json(
    method: str,
    url: str,
    body: Any = None,
    *,
    key: str | None = None,
    timeout: float = 10.0,
) -> tuple[int, Any]:
    """``(status, decoded JSON or None)``; status 0 when nothing answered."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=timeout)
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if key:
        headers["Authorization"] = f"Bearer {key}"
    try:
        conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), data, headers)
        resp = conn.getresponse()
        raw = resp.read()
    except OSError:
        return 0, None
    finally:
        conn.close()
    try:
        return resp.status, json.loads(raw) if raw else None
    except ValueError:
        return resp.status, raw.decode(errors="replace")


def seed(
    database_url: str | None,
    data_dir: Path,
    ca_dir: Path,
    *,
    nodes: Sequence[tuple[str, Sequence[str]]] = (),
    key_role: str = "admin",
) -> tuple[str, list[TestNode]]:
    """An API key and enrolled nodes, written straight into a running service's database
    (from this process, with the same CA directory)."""
    from x0tta6bl4.control.admin import create_api_key
    from x0tta6bl4.control.auth import Role, parse_api_key
    from x0tta6bl4.control.ca import ControlCA
    from x0tta6bl4.control.db import Database

    url = database_url or f"sqlite+aiosqlite:///{(data_dir / 'control.db').resolve()}"

    async def run() -> tuple[str, list[TestNode]]:
        db = Database(url, pool_size=2)
        try:
            ca = ControlCA.open(ca_dir, TRUST_DOMAIN)
            while True:  # see nodes_helper.usable_key
                key = await create_api_key(db, "replica-test", Role[key_role], "test")
                if parse_api_key(key) is not None:
                    break
            made = [await create_node(db, ca, name, tags) for name, tags in nodes]
            return key, made
        finally:
            await db.close()

    return asyncio.run(run())


class EventReader:
    """A node's stream (``ControlClient.events``) read in a daemon thread."""

    def __init__(self, url: str, node: TestNode, path: str) -> None:
        self.q: queue.Queue[tuple[str, Any, float]] = queue.Queue()
        self._client = ControlClient(url)
        self._node = node
        self._path = path
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            for event, data in self._client.events(self._path, signer=self._node.signer):
                self.q.put((event, data, time.perf_counter()))
        except Exception as exc:
            self.q.put(("error", str(exc), time.perf_counter()))
        self.q.put(("end", None, time.perf_counter()))

    def wait_for(self, event: str, timeout: float) -> tuple[Any, float]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {event!r} event within {timeout} s")
            try:
                got, data, at = self.q.get(timeout=left)
            except queue.Empty:
                continue
            if got == event:
                return data, at
            if got in ("error", "end"):
                raise RuntimeError(f"stream ended waiting for {event!r}: {data}")


def measure_cross_replica_push(
    writer: Replica,
    reader: Replica,
    database_url: str,
    ca_dir: Path,
    *,
    rounds: int = 1,
    timeout: float = 5.0,
) -> float:
    """Seconds from sending a revocation to ``writer`` until a node stream held on
    ``reader`` yields the list that carries it; the worst of ``rounds``. Seeds its own
    API key and nodes (unique names) into the shared database."""
    tag = secrets.token_hex(3)
    names = [(f"listen-{tag}", ("role:bench",))] + [
        (f"victim-{tag}-{i}", ("role:bench",)) for i in range(rounds)
    ]
    data_dir = Path(writer.env["X0T_DATA_DIR"])
    key, made = seed(database_url, data_dir, ca_dir, nodes=names, key_role="operator")
    listener, victims = made[0], made[1:]
    status, current = http_json("GET", f"{reader.url}/v1/crl/version")
    assert status == 200, current
    stream = EventReader(reader.url, listener, stream_path(0, int(current["version"])))
    hello, _ = stream.wait_for("hello", timeout)
    decode_hello(hello)
    worst = 0.0
    for victim in victims:
        t0 = time.perf_counter()
        status, body = http_json(
            "POST", f"{writer.url}/v1/revocations", {"serial": victim.serial_hex}, key=key
        )
        if status != 200:
            raise RuntimeError(f"revocation through {writer.url} failed: {status} {body}")
        want = int(body["crl_version"])
        while True:
            data, at = stream.wait_for("crl", timeout)
            pushed = decode_crl(data)
            if pushed.version >= want:
                break
        worst = max(worst, at - t0)
    return worst
