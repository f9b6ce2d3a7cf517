"""The push stream (server-sent events) and /v1/sync, as a node sees them."""

from __future__ import annotations

import json
import queue
import threading
import time
from typing import Any

import pytest

from tests.control.nodes_helper import TestNode, enroll, steady_keys
from x0tta6bl4.api.push import (
    decode_crl,
    decode_end,
    decode_hello,
    decode_policy,
    decode_sync,
    stream_path,
    sync_path,
)
from x0tta6bl4.identity.ca import CertificateAuthority
from x0tta6bl4.identity.crl import RevocationList
from x0tta6bl4.policy import SignedPolicy

POLICY = "version 1\nallow from tag:role:web to tag:role:db port tcp/5432\n"
END = "<end>"


@pytest.fixture(autouse=True)
def _keys(request: pytest.FixtureRequest) -> None:
    if "control" in request.fixturenames:
        steady_keys(request.getfixturevalue("control"))


class Stream:
    """A node's event stream read in a thread: ``next()`` gives ``(event, data)``."""

    def __init__(self, control: Any, node: TestNode, path: str, *, raw: bool = False) -> None:
        self.q: queue.Queue[tuple[str, Any, float]] = queue.Queue()
        self.status = 0
        self.body = b""
        self.raw = raw
        self._ready = threading.Event()
        self._client = control.client
        self._headers = node.headers("GET", path)
        self._path = path
        threading.Thread(target=self._run, daemon=True).start()
        assert self._ready.wait(10), "no response"

    def _run(self) -> None:
        try:
            with self._client.stream("GET", self._path, headers=self._headers) as r:
                self.status = r.status_code
                if r.status_code != 200:
                    self.body = r.read()
                    return
                self.content_type = r.headers["content-type"]
                self._ready.set()
                event, data = "message", []
                for line in r.iter_lines():
                    if self.raw and line.startswith(":"):
                        self.q.put(("comment", line, time.monotonic()))
                    elif line == "":
                        if data:
                            self.q.put((event, json.loads("\n".join(data)), time.monotonic()))
                        event, data = "message", []
                    elif line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].strip())
        except Exception as exc:  # the client was closed under us at teardown
            self.q.put(("error", repr(exc), time.monotonic()))
        finally:
            self._ready.set()
            self.q.put((END, None, time.monotonic()))

    def next_timed(self, timeout: float = 5.0) -> tuple[str, Any, float]:
        return self.q.get(timeout=timeout)

    def next(self, timeout: float = 5.0) -> tuple[str, Any]:
        event, data, _ = self.next_timed(timeout)
        return event, data

    def quiet(self, seconds: float) -> bool:
        try:
            self.q.get(timeout=seconds)
        except queue.Empty:
            return True
        return False


def _create_policy(control, source: str = POLICY) -> int:  # type: ignore[no-untyped-def]
    r = control.client.post("/v1/policies", json={"source": source}, headers=control.auth())
    assert r.status_code == 201, r.text
    return int(r.json()["version"])


def _revoke(control, **body: str) -> int:  # type: ignore[no-untyped-def]
    r = control.client.post("/v1/revocations", json=body, headers=control.auth())
    assert r.status_code == 200, r.text
    return int(r.json()["crl_version"])


def test_connect_sends_the_current_documents(control) -> None:  # type: ignore[no-untyped-def]
    node = enroll(control, "web-1", ["role:web"])
    _create_policy(control)
    s = Stream(control, node, stream_path())
    assert s.status == 200 and s.content_type.startswith("text/event-stream")
    event, data = s.next()
    assert event == "hello"
    hello = decode_hello(data)
    assert (hello.node, hello.serial, hello.policy) == ("web-1", node.serial_hex, 1)
    event, data = s.next()
    assert event == "policy"
    pushed = decode_policy(data)
    assert pushed.signed is not None
    bundle = control.ctx.ca.ca.bundle()
    assert SignedPolicy.from_bytes(pushed.signed, bundle).version == pushed.version == 1
    event, data = s.next()
    assert event == "crl"
    crl = decode_crl(data)
    assert crl.pem is not None
    assert RevocationList.from_pem(crl.pem, control.ctx.ca.ca.certificate).version == crl.version
    assert s.quiet(0.3)


def test_what_the_node_holds_is_not_sent_again(control) -> None:  # type: ignore[no-untyped-def]
    node = enroll(control, "web-1", ["role:web"])
    policy = _create_policy(control)
    crl = control.client.get("/v1/crl/version").json()["version"]
    s = Stream(control, node, stream_path(policy, crl))
    assert s.next()[0] == "hello"
    assert s.quiet(0.3)


def test_changes_are_pushed_to_a_connected_node(control) -> None:  # type: ignore[no-untyped-def]
    node = enroll(control, "web-1", ["role:web"])
    other = enroll(control, "web-2", ["role:web"])
    crl = control.client.get("/v1/crl/version").json()["version"]
    s = Stream(control, node, stream_path(0, crl))
    assert s.next()[0] == "hello"
    assert s.quiet(0.2)  # no policy yet: nothing to send

    version = _create_policy(control)
    event, data = s.next()
    assert event == "policy" and decode_policy(data).version == version

    t0 = time.monotonic()
    new_crl = _revoke(control, serial=other.serial_hex)
    event, data, at = s.next_timed()
    assert event == "crl"
    pushed = decode_crl(data)
    assert pushed.version == new_crl and pushed.pem is not None
    listed = RevocationList.from_pem(pushed.pem, control.ctx.ca.ca.certificate)
    assert listed.is_revoked(other.serial)
    latency = at - t0
    print(f"\nin-process revocation -> connected node: {latency * 1000:.1f} ms")
    assert latency < 2.0

    # A rollback is pushed like any new version.
    r = control.client.post("/v1/policies/1/rollback", headers=control.auth())
    assert r.status_code == 409  # version 1 is current
    _create_policy(control, "version 1\ndeny from any to any\n")
    assert decode_policy(s.next()[1]).version == 2
    r = control.client.post("/v1/policies/1/rollback", headers=control.auth())
    assert r.status_code == 201
    assert decode_policy(s.next()[1]).version == 3


def test_the_stream_ends_when_its_certificate_is_revoked(control) -> None:  # type: ignore[no-untyped-def]
    node = enroll(control, "web-1")
    crl = control.client.get("/v1/crl/version").json()["version"]
    s = Stream(control, node, stream_path(0, crl))
    assert s.next()[0] == "hello"
    _revoke(control, node="web-1", reason="key-compromise")
    assert s.next()[0] == "crl"
    event, data = s.next()
    assert event == "revoked"
    end = decode_end(data)
    assert end.serial == node.serial_hex and end.reason == "key-compromise"
    assert s.next()[0] == END


def test_the_stream_ends_when_its_certificate_expires(control) -> None:  # type: ignore[no-untyped-def]
    node = enroll(control, "short-1", lifetime_s=2.0)
    s = Stream(control, node, stream_path(0, 0))
    assert s.next()[0] == "hello"
    assert s.next()[0] == "crl"
    event, data = s.next(timeout=6)
    assert event == "expired" and decode_end(data).serial == node.serial_hex
    assert s.next()[0] == END


def test_keep_alive_comments(control, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from x0tta6bl4.control.routers import stream as stream_router

    monkeypatch.setattr(stream_router, "KEEPALIVE_S", 0.2)
    node = enroll(control, "web-1")
    crl = control.client.get("/v1/crl/version").json()["version"]
    s = Stream(control, node, stream_path(0, crl), raw=True)
    assert s.next()[0] == "hello"
    assert s.next(timeout=2) == ("comment", ": ka")
    assert s.next(timeout=2) == ("comment", ": ka")


def test_stream_refusals(control) -> None:  # type: ignore[no-untyped-def]
    node = enroll(control, "web-1")
    path = stream_path()
    r = control.client.get(path)
    assert r.status_code == 401 and "not signed" in r.json()["detail"]
    # Signed for another path (the query is signed too).
    r = control.client.get(path, headers=node.headers("GET", stream_path(5, 5)))
    assert r.status_code == 401 and "does not verify" in r.json()["detail"]
    # Replayed headers.
    headers = node.headers("GET", path)
    with control.client.stream("GET", path, headers=headers) as first:
        assert first.status_code == 200
        first.close()
    r = control.client.get(path, headers=headers)
    assert r.status_code == 401 and "replayed" in r.json()["detail"]
    # Bad query values are refused before anything is streamed.
    bad = "/v1/stream?policy=-1&crl=0"
    r = control.client.get(bad, headers=node.headers("GET", bad))
    assert r.status_code == 422 and "policy" in r.json()["detail"]
    # A revoked certificate: 401 with the reason.
    _revoke(control, serial=node.serial_hex, reason="superseded")
    s2 = Stream(control, node, path)
    assert s2.status == 401
    detail = json.loads(s2.body)["detail"]
    assert f"certificate {node.serial_hex} of node web-1 is revoked" in detail


def test_sync_gives_only_what_is_newer(control) -> None:  # type: ignore[no-untyped-def]
    node = enroll(control, "web-1")

    def sync(policy: int, crl: int) -> Any:
        path = sync_path(policy, crl)
        r = control.client.get(path, headers=node.headers("GET", path))
        assert r.status_code == 200, r.text
        return decode_sync(r.json())

    first = sync(0, 0)
    assert first.policy is None and first.crl is not None and first.crl.pem is not None
    version = _create_policy(control)
    got = sync(0, first.crl.version)
    assert got.crl is None and got.policy is not None and got.policy.version == version
    assert got.policy.signed is not None
    assert SignedPolicy.from_bytes(got.policy.signed, control.ctx.ca.ca.bundle()).version == 1
    assert sync(version, first.crl.version).to_wire() == {"policy": None, "crl": None}

    r = control.client.get(sync_path(0, 0))
    assert r.status_code == 401 and "not signed" in r.json()["detail"]


def test_a_large_policy_is_announced_and_fetched_with_sync(control) -> None:  # type: ignore[no-untyped-def]
    node = enroll(control, "web-1")
    comments = "".join(f"# {'x' * 70} {i}\n" for i in range(8000))  # about 600 kB
    version = _create_policy(control, POLICY + comments)
    s = Stream(control, node, stream_path(0, 0))
    assert s.next()[0] == "hello"
    event, data = s.next()
    assert event == "policy"
    pushed = decode_policy(data)
    assert pushed.version == version and pushed.signed is None
    path = sync_path(0, 10**6)
    r = control.client.get(path, headers=node.headers("GET", path))
    got = decode_sync(r.json()).policy
    assert got is not None and got.signed is not None
    assert SignedPolicy.from_bytes(got.signed, control.ctx.ca.ca.bundle()).version == version


# --- across replicas: real processes on PostgreSQL (+ Redis) -----------------------------


def _fresh_tables(url: str) -> None:
    # Lists signed by an earlier test's CA would not verify with this test's CA.
    import contextlib

    from tests.control.conftest import _truncate_all

    with contextlib.suppress(Exception):
        _truncate_all(url)


def test_cross_replica_push_through_redis(pg_database, redis_url, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.control.replicas import measure_cross_replica_push, replica_set

    _fresh_tables(pg_database)
    with replica_set(pg_database, [redis_url, redis_url], tmp_path) as (one, two):
        seconds = measure_cross_replica_push(one, two, pg_database, tmp_path / "ca", rounds=3)
        _concurrent_revocations_on_both(one, two, pg_database, tmp_path / "ca")
    print(f"\ncross-replica revocation -> node (Redis): worst of 3 {seconds * 1000:.0f} ms")
    assert seconds < 1.0


def _concurrent_revocations_on_both(one, two, database_url, ca_dir) -> None:  # type: ignore[no-untyped-def]
    """Revocations sent to both replicas at once: every one lands in the final list."""
    from pathlib import Path

    from tests.control.replicas import http_json, seed

    data_dir = Path(one.env["X0T_DATA_DIR"])
    key, nodes = seed(database_url, data_dir, ca_dir, nodes=[(f"both-{i}", ()) for i in range(8)])
    answers: list[tuple[int, Any]] = []

    def revoke(i: int) -> None:
        replica = (one, two)[i % 2]
        body = {"serial": nodes[i].serial_hex}
        answers.append(http_json("POST", f"{replica.url}/v1/revocations", body, key=key))

    threads = [threading.Thread(target=revoke, args=(i,)) for i in range(len(nodes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [status for status, _ in answers] == [200] * len(nodes), answers
    versions = sorted(body["crl_version"] for _, body in answers)
    assert len(set(versions)) == len(nodes)  # each took a version of its own
    status, pem = http_json("GET", f"{two.url}/v1/crl")
    assert status == 200
    crl = RevocationList.from_pem(pem.encode(), CertificateAuthority.load(ca_dir).certificate)
    assert crl.version >= versions[-1]
    assert all(crl.is_revoked(n.serial) for n in nodes)


def test_cross_replica_push_with_redis_unreachable(pg_database, redis_url, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Replica 2 cannot reach Redis: it learns of the change by polling the database
    (push_poll_s = 1 s), so the node still has it in about a second."""
    from tests.control.replicas import measure_cross_replica_push, replica_set

    _fresh_tables(pg_database)
    dead = "redis://127.0.0.1:1/0"
    with replica_set(pg_database, [redis_url, dead], tmp_path) as (one, two):
        seconds = measure_cross_replica_push(one, two, pg_database, tmp_path / "ca", rounds=3)
    print(f"\ncross-replica revocation -> node (Redis down): worst of 3 {seconds * 1000:.0f} ms")
    assert seconds < 2.5
