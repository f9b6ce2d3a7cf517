"""Faults, with real processes on this machine's PostgreSQL and Redis: a replica killed
with SIGKILL in the middle of enrollments, PostgreSQL going away under read load, Redis
going away under a running replica, and a replayed signed request.

Each test gets a database of its own (created here, dropped afterwards) and starts its
replicas with ``tests/control/replicas.py``; every process, proxy and port is stopped in a
``finally`` however the test ends, and every wait is bounded. Without PostgreSQL or
Redis the tests skip, saying why (under X0T_REQUIRE_SERVICES=1 they fail instead).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.control.conftest import scratch_database
from tests.control.replicas import EventReader, Replica, http_json, make_replica, seed

pytestmark = pytest.mark.integration


# --- a database per test -----------------------------------------------------------------


@pytest.fixture
def fresh_database() -> Iterator[str]:
    """``postgresql+asyncpg://.../x0t_fault_...``: a new database, dropped afterwards."""
    with scratch_database("x0t_fault") as url:
        yield url


def sql(database_url: str, query: str, *args: Any) -> list[Any]:
    """Rows of ``query``, read straight from PostgreSQL (not through a replica)."""
    import asyncpg  # type: ignore[import-untyped]

    async def run() -> list[Any]:
        conn = await asyncpg.connect(database_url.replace("+asyncpg", ""), timeout=5)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


@contextlib.contextmanager
def running(*replicas: Replica) -> Iterator[None]:
    """Stop the replicas however the block ends (SIGTERM, then SIGKILL)."""
    try:
        yield
    finally:
        for r in replicas:
            r.stop()


# --- a TCP proxy that can be cut ----------------------------------------------------------


class TcpProxy:
    """127.0.0.1:<port> forwarded to ``target``. ``cut()`` closes every connection and the
    listening socket (new connections are refused, as by a stopped server); ``restore()``
    listens on the same port again."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.port = 0
        self.restore()

    def restore(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(128)
        self.port = s.getsockname()[1]
        self._listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, set()
        if listener is not None:
            _close(listener)
        for c in conns:
            _close(c)

    close = cut

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(self.target, timeout=3)
                upstream.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self._lock:
                if self._listener is not listener:  # cut meanwhile
                    _close(client)
                    _close(upstream)
                    return
                self._conns |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _close(src)
            _close(dst)
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)


def _close(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        s.close()


@contextlib.contextmanager
def proxy_to(port: int) -> Iterator[TcpProxy]:
    p = TcpProxy(port)
    try:
        yield p
    finally:
        p.close()


def _with_port(url: str, port: int) -> str:
    """``url`` with its 127.0.0.1:PORT replaced (database and Redis URLs)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"{parts.hostname}:{port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


def _port(url: str) -> int:
    from urllib.parse import urlsplit

    return urlsplit(url).port or 0


# --- kill -9 during enrollments -----------------------------------------------------------


@dataclass
class Outcome:
    name: str
    started: float  # time.monotonic()
    serial: str | None  # hex, when the client got a verified certificate
    error: str | None


def test_sigkill_during_enrollments_loses_nothing_a_client_was_told(
    fresh_database: str, tmp_path: Path
) -> None:
    """Four clients enroll nodes (``x0t node join``) through one replica while it is
    killed with SIGKILL. On a new replica over the same database: every enrollment a
    client saw succeed is there (node, certificate with that serial, audit entry), no
    node lacks its certificate, and the token counts exactly the enrollments recorded."""
    from x0tta6bl4.node.join import join

    ca_dir = tmp_path / "ca"
    replica = make_replica(tmp_path, database_url=fresh_database, ca_dir=ca_dir)
    with running(replica):
        replica.start()
        key, _ = seed(
            fresh_database, Path(replica.env["X0T_DATA_DIR"]), ca_dir, key_role="operator"
        )
        status, tok = http_json(
            "POST", f"{replica.url}/v1/tokens", {"max_uses": 1000, "ttl_s": 3600}, key=key
        )
        assert status == 201, tok
        token, token_id = tok["token"], tok["id"]

        outcomes: list[Outcome] = []
        lock = threading.Lock()
        stop = threading.Event()
        succeeded = threading.Semaphore(0)

        def client(c: int) -> None:
            for i in range(200):
                if stop.is_set():
                    return
                name = f"kill-{c}-{i}"
                started = time.monotonic()
                try:
                    r = join(replica.url, token, tmp_path / "nodes" / name, name, [])
                except Exception as exc:  # the replica died under this request
                    error = f"{type(exc).__name__}: {exc}"
                    with lock:
                        outcomes.append(Outcome(name, started, None, error))
                    stop.wait(0.05)
                    continue
                with lock:
                    outcomes.append(Outcome(name, started, format(r.serial, "x"), None))
                succeeded.release()

        threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(4)]
        for t in threads:
            t.start()
        try:
            # Kill once a dozen enrollments went through, with four more in flight.
            for _ in range(12):
                assert succeeded.acquire(timeout=30), "enrollments stalled before the kill"
            killed_at = time.monotonic()
            replica.kill()
            time.sleep(0.5)  # the clients meet the dead replica
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert not any(t.is_alive() for t in threads)

        ok = {o.name: o.serial for o in outcomes if o.serial is not None}
        # Cut off mid-request (the rest were refused by the dead port afterwards).
        in_flight = [o for o in outcomes if o.serial is None and o.started < killed_at]
        assert len(ok) >= 12 and in_flight, (len(ok), outcomes)

        replica.start()  # a new process, same database and CA
        recorded = _check_enrollments(fresh_database, token_id, ok)
        print(
            f"\nSIGKILL: {len(ok)} enrollments answered, {len(in_flight)} cut off; of those, "
            f"{len(recorded) - len(ok)} committed without an answer (a retry enrolls anew)"
        )
        # The new replica serves what the old one committed, and enrolls again.
        for name, serial in list(ok.items())[:5]:
            status, node = http_json("GET", f"{replica.url}/v1/nodes/{name}", key=key)
            assert status == 200 and node["current_serial"] == serial, node
        r = join(replica.url, token, tmp_path / "nodes" / "after", "after-restart", [])
        ok["after-restart"] = format(r.serial, "x")
        _check_enrollments(fresh_database, token_id, ok)


def _check_enrollments(database_url: str, token_id: str, ok: dict[str, str]) -> dict[str, str]:
    """Checks the database against what clients were told; the recorded enrollments."""
    enrolled = sql(
        database_url,
        "SELECT target, detail::jsonb->>'serial' AS serial FROM audit_log "
        "WHERE action = 'node.enroll' AND detail::jsonb->>'token' = $1",
        token_id,
    )
    recorded = {r["target"]: r["serial"] for r in enrolled}
    assert len(recorded) == len(enrolled), "a node enrolled twice"
    certs = {
        r["node_name"]: r["serial"]
        for r in sql(
            database_url,
            "SELECT c.node_name, c.serial FROM certificates c JOIN nodes n ON n.name = c.node_name",
        )
    }
    # Everything a client was told is there, exactly.
    for name, serial in ok.items():
        assert certs.get(name) == serial, f"{name}: client got {serial}, database {certs.get(name)}"
        assert recorded.get(name) == serial, f"{name}: no audit entry for {serial}"
    # Nothing half-written: every node has its certificate, every certificate its node
    # and its audit entry, and the token counts exactly those enrollments.
    bare = sql(
        database_url,
        "SELECT n.name FROM nodes n LEFT JOIN certificates c ON c.node_name = n.name "
        "WHERE c.serial IS NULL",
    )
    assert not bare, f"nodes without a certificate: {bare}"
    orphans = sql(
        database_url,
        "SELECT c.serial FROM certificates c LEFT JOIN nodes n ON n.name = c.node_name "
        "WHERE n.name IS NULL",
    )
    assert not orphans, f"certificates without a node: {orphans}"
    assert certs == recorded, "certificates and audit entries disagree"
    (uses,) = sql(database_url, "SELECT uses FROM join_tokens WHERE id = $1", token_id)
    assert uses["uses"] == len(recorded)
    return recorded


# --- PostgreSQL away under load -----------------------------------------------------------


@dataclass
class Read:
    started: float
    took: float
    status: int


def test_postgres_outage_under_read_load(fresh_database: str, tmp_path: Path) -> None:
    """The replica reaches PostgreSQL through a proxy. Cutting the proxy does to the
    replica exactly what a PostgreSQL restart does (every pooled connection dies,
    new connections are refused until it is back) without restarting the PostgreSQL
    that other test sessions on this machine share.

    During the ~3 s outage /ready says 503 not_ready and reads fail fast with a 5xx; once
    the proxy is back, /ready is 200 and reads succeed within a few seconds, without
    restarting the replica."""
    ca_dir = tmp_path / "ca"
    with proxy_to(_port(fresh_database) or 5432) as proxy:
        replica = make_replica(
            tmp_path, database_url=_with_port(fresh_database, proxy.port), ca_dir=ca_dir
        )
        # Every read goes to the database: the per-replica read cache would hide the gap.
        replica.env["X0T_READ_CACHE_S"] = "0"
        with running(replica):
            replica.start()
            names = [(f"read-{i}", ("role:web",)) for i in range(20)]
            key, _ = seed(fresh_database, Path(replica.env["X0T_DATA_DIR"]), ca_dir, nodes=names)
            reads: list[Read] = []
            stop = threading.Event()

            def reader(n: int) -> None:
                i = n
                while not stop.is_set():
                    path = (
                        f"/v1/nodes/read-{i % 20}"
                        if i % 2
                        else f"/v1/nodes?limit=5&offset={i % 15}"
                    )
                    t0 = time.monotonic()
                    status, _ = http_json("GET", replica.url + path, key=key, timeout=8)
                    reads.append(Read(t0, time.monotonic() - t0, status))
                    i += 3
                    stop.wait(0.02)

            threads = [threading.Thread(target=reader, args=(n,), daemon=True) for n in range(3)]
            for t in threads:
                t.start()
            try:
                time.sleep(1.5)
                cut_at = time.monotonic()
                proxy.cut()
                ready_during = _poll_ready(replica, until=cut_at + 3.0)
                restored_at = time.monotonic()
                proxy.restore()
                recovered = _wait_ready(replica, timeout=15)
                time.sleep(2.0)  # reads after recovery
            finally:
                stop.set()
                for t in threads:
                    t.join(15)

    before = [r for r in reads if r.started + r.took < cut_at]
    during = [r for r in reads if r.started > cut_at + 0.5 and r.started + r.took < restored_at]
    after = [r for r in reads if r.started > recovered + 0.5]
    assert before and all(r.status == 200 for r in before), _summary(before)
    # /ready noticed: 503 not_ready while the database was away.
    assert (503, "not_ready") in ready_during, ready_during
    # Reads failed, with an answer (5xx), and fast: none hung until the client gave up.
    assert during, "no read ran during the outage"
    assert all(500 <= r.status < 600 for r in during), _summary(during)
    # ...and say why: 503 "database is unreachable", not a bare 500.
    assert all(r.status == 503 for r in during), _summary(during)
    # None hung, also those in flight when the proxy was cut.
    assert max(r.took for r in reads) < 5.0, _summary(reads)
    # And it came back by itself.
    assert recovered - restored_at < 10.0, recovered - restored_at
    assert after and all(r.status == 200 for r in after), _summary(after)
    print(
        f"\nPostgreSQL outage: {_summary(during)}; /ready 200 again "
        f"{(recovered - restored_at) * 1000:.0f} ms after the proxy returned"
    )


def _summary(reads: list[Read]) -> str:
    by: dict[int, int] = {}
    for r in reads:
        by[r.status] = by.get(r.status, 0) + 1
    slowest = max((r.took for r in reads), default=0.0)
    return f"{len(reads)} reads, statuses {by}, slowest {slowest:.2f} s"


def _poll_ready(replica: Replica, until: float) -> list[tuple[int, str]]:
    seen: list[tuple[int, str]] = []
    while time.monotonic() < until:
        status, body = http_json("GET", f"{replica.url}/ready", timeout=5)
        seen.append((status, body.get("status", "") if isinstance(body, dict) else ""))
        time.sleep(0.2)
    return seen


def _wait_ready(replica: Replica, timeout: float, want: str = "ready") -> float:
    """The monotonic time /ready first said 200 ``want``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        status, body = http_json("GET", f"{replica.url}/ready", timeout=5)
        last = (status, body)
        if status == 200 and isinstance(body, dict) and body.get("status") == want:
            return time.monotonic()
        time.sleep(0.1)
    raise AssertionError(f"/ready not 200 {want} within {timeout} s; last {last}")


# --- Redis away under a running replica ----------------------------------------------------


def test_redis_outage_degrades_but_the_replica_works(
    fresh_database: str, redis_url: str, tmp_path: Path
) -> None:
    """Replica B reaches Redis through a proxy, replica A directly. With the proxy cut
    (B's bus connection dies, reconnects are refused): B's /ready is 200 "degraded"
    naming Redis, B still creates tokens and lists nodes, and a node stream held on B
    still gets a revocation made through A within ~2 s (B polls the database). With the
    proxy back, B reports ready again. (``test_stream.py`` covers a replica that never
    had Redis; this one loses it while running.)"""
    from x0tta6bl4.api.push import decode_crl, decode_hello, stream_path

    ca_dir = tmp_path / "ca"
    with proxy_to(_port(redis_url) or 6379) as proxy:
        a = make_replica(tmp_path, database_url=fresh_database, redis_url=redis_url, ca_dir=ca_dir)
        b = make_replica(
            tmp_path,
            database_url=fresh_database,
            redis_url=_with_port(redis_url, proxy.port),
            ca_dir=ca_dir,
        )
        with running(a, b):
            a.start()
            b.start()
            _wait_ready(b, timeout=10)
            key, nodes = seed(
                fresh_database,
                Path(a.env["X0T_DATA_DIR"]),
                ca_dir,
                nodes=[("listener", ()), ("victim", ())],
            )
            listener, victim = nodes
            proxy.cut()
            t0 = time.monotonic()
            deadline = t0 + 10
            while True:
                status, body = http_json("GET", f"{b.url}/ready", timeout=5)
                if status == 200 and body.get("status") == "degraded":
                    break
                assert status == 200, (status, body)  # never taken out of rotation
                assert time.monotonic() < deadline, f"/ready never said degraded: {body}"
                time.sleep(0.1)
            assert body["database"] == "ok" and body["redis"] != "ok", body

            status, tok = http_json("POST", f"{b.url}/v1/tokens", {"comment": "degraded"}, key=key)
            assert status == 201, tok
            status, page = http_json("GET", f"{b.url}/v1/nodes", key=key)
            assert status == 200 and {n["name"] for n in page["nodes"]} >= {"listener", "victim"}

            status, crl = http_json("GET", f"{b.url}/v1/crl/version")
            assert status == 200, crl
            stream = EventReader(b.url, listener, stream_path(0, int(crl["version"])))
            decode_hello(stream.wait_for("hello", 5)[0])
            sent = time.perf_counter()
            status, revoked = http_json(
                "POST", f"{a.url}/v1/revocations", {"serial": victim.serial_hex}, key=key
            )
            assert status == 200, revoked
            while True:
                data, at = stream.wait_for("crl", 5)
                if decode_crl(data).version >= revoked["crl_version"]:
                    break
            lag = at - sent
            assert lag < 2.5, f"revocation reached the stream on B after {lag:.2f} s"

            proxy.restore()
            back = _wait_ready(b, timeout=15)
    print(f"\nRedis cut: revocation via A -> stream on B in {lag * 1000:.0f} ms; ready again")
    assert back


# --- a replayed signed request -------------------------------------------------------------


def test_a_replayed_signed_report_is_refused_by_every_replica(
    fresh_database: str, redis_url: str, tmp_path: Path
) -> None:
    """The same signed report (same headers, same bytes) sent again: 401 "replayed", on
    the replica that took it and on another one (the nonce table is shared); the
    report's event is stored once."""
    import http.client

    from tests.control.report_helpers import report
    from x0tta6bl4.api.signing import sign_request

    ca_dir = tmp_path / "ca"
    one = make_replica(tmp_path, database_url=fresh_database, redis_url=redis_url, ca_dir=ca_dir)
    two = make_replica(tmp_path, database_url=fresh_database, redis_url=redis_url, ca_dir=ca_dir)
    with running(one, two):
        one.start()
        two.start()
        key, (node,) = seed(
            fresh_database, Path(one.env["X0T_DATA_DIR"]), ca_dir, nodes=[("web-1", ())]
        )
        at = time.time()
        body = json.dumps(
            report(events=[{"kind": "link.up", "at": at, "detail": {"peer": "web-2"}}])
        ).encode()
        headers = sign_request(node.signing_key, node.serial, "POST", "/v1/reports", body)
        headers["content-type"] = "application/json"

        def post(replica: Replica) -> tuple[int, Any]:
            conn = http.client.HTTPConnection("127.0.0.1", replica.port, timeout=10)
            try:
                conn.request("POST", "/v1/reports", body, headers)
                r = conn.getresponse()
                return r.status, json.loads(r.read())
            finally:
                conn.close()

        first = post(one)
        assert first[0] == 200 and first[1]["accepted_events"] == 1, first
        for replica in (one, two):
            status, answer = post(replica)
            assert status == 401 and "replayed" in answer["detail"], (status, answer)
        status, events = http_json("GET", f"{two.url}/v1/events?node=web-1", key=key)
        assert status == 200 and len(events["events"]) == 1, events
