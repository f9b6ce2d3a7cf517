"""The node's push client (``node/stream.py``) against a real control plane process, and
against a misbehaving service; the wire codec (``api/push.py``) property-tested."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.control.replicas import Replica, http_json, make_replica, seed
from x0tta6bl4.api.push import (
    MAX_VERSION,
    PushedCrl,
    PushedPolicy,
    PushFormatError,
    SyncResult,
    decode_crl,
    decode_end,
    decode_hello,
    decode_policy,
    decode_sync,
    format_event,
)
from x0tta6bl4.crypto.keys import load_signing_key
from x0tta6bl4.identity.bundle import TrustBundle
from x0tta6bl4.identity.ca import CA_KEY_FILE, CertificateAuthority
from x0tta6bl4.identity.crl import RevocationList, accept_newer
from x0tta6bl4.node.control_client import ControlClient, Signer
from x0tta6bl4.node.stream import PushClient
from x0tta6bl4.policy import Outcome, SignedPolicy, accept_policy

POLICY = "version 1\nallow from tag:role:web to tag:role:db port tcp/5432\n"


class Holder:
    """What the agent does with pushed documents: verify against the bundle, keep the
    last good one (``accept_policy``, ``crl.accept_newer``)."""

    def __init__(self, bundle: TrustBundle) -> None:
        self.bundle = bundle
        self.policy: SignedPolicy | None = None
        self.crl: RevocationList | None = None
        self.policy_calls: list[int] = []
        self.crl_calls: list[int] = []
        self.refused: list[str] = []
        self.revoked: list[str] = []

    def on_policy(self, data: bytes, version: int) -> bool:
        self.policy_calls.append(version)
        result = accept_policy(self.policy, data, self.bundle)
        if result.outcome is Outcome.REFUSED:
            assert result.error is not None
            self.refused.append(result.error.reason.value)
            return False
        self.policy = result.policy
        return result.outcome is Outcome.ACCEPTED

    def on_crl(self, pem: bytes, version: int) -> bool:
        self.crl_calls.append(version)
        new = accept_newer(self.crl, RevocationList.from_pem(pem, self.bundle))
        changed = new is not self.crl
        self.crl = new
        return changed

    def on_revoked(self, reason: str) -> None:
        self.revoked.append(reason)


async def until(cond: Callable[[], bool], timeout: float = 10.0, what: str = "") -> float:
    """Wait for ``cond``; the seconds it took."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(0.02)
    return time.monotonic() - t0


async def call(method: str, url: str, body: Any = None, key: str | None = None) -> Any:
    status, answer = await asyncio.to_thread(http_json, method, url, body, key=key)
    assert status in (200, 201), (status, answer)
    return answer


# --- against a real control plane ---------------------------------------------------------


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Replica]:
    replica = make_replica(tmp_path, name="cp").start()
    try:
        yield replica
    finally:
        replica.stop()


def _seed(replica: Replica, *nodes: tuple[str, tuple[str, ...]]):  # type: ignore[no-untyped-def]
    data = Path(replica.env["X0T_DATA_DIR"])
    key, made = seed(None, data, data / "ca", nodes=list(nodes))
    return key, made, TrustBundle.load(data / "ca" / "bundle.pem")


def test_documents_reach_a_connected_node(service: Replica) -> None:
    key, (web, other), bundle = _seed(service, ("web-1", ("role:web",)), ("web-2", ()))
    holder = Holder(bundle)

    async def scenario() -> None:
        client = PushClient(
            ControlClient(service.url),
            web.signer,
            on_policy=holder.on_policy,
            on_crl=holder.on_crl,
            on_revoked=holder.on_revoked,
            poll_interval=1.0,
        )
        task = asyncio.create_task(client.run())
        try:
            await until(lambda: client.connected and holder.crl is not None, what="connect")
            assert client.crl_version == holder.crl.version  # type: ignore[union-attr]
            assert holder.policy is None and client.policy_version == 0

            t0 = time.monotonic()
            await call("POST", f"{service.url}/v1/policies", {"source": POLICY}, key)
            await until(lambda: holder.policy is not None, what="policy")
            print(f"\npolicy -> node: {(time.monotonic() - t0) * 1000:.0f} ms")
            assert holder.policy is not None and holder.policy.version == 1
            assert client.policy_version == 1

            t0 = time.monotonic()
            body = {"serial": other.serial_hex}
            await call("POST", f"{service.url}/v1/revocations", body, key)
            await until(
                lambda: holder.crl is not None and holder.crl.is_revoked(other.serial),
                what="crl",
            )
            print(f"revocation -> node: {(time.monotonic() - t0) * 1000:.0f} ms")
            assert time.monotonic() - t0 < 2.0
            assert client.stats.polls == 0  # all of it came over the stream

            # Our own certificate revoked: the service says so, the client stops.
            await call("POST", f"{service.url}/v1/revocations", {"node": "web-1"}, key)
            await asyncio.wait_for(task, 5)
            assert client.revoked and holder.revoked == ["unspecified"]
        finally:
            task.cancel()

    asyncio.run(scenario())


def test_survives_the_control_plane_restarting(service: Replica) -> None:
    key, (web,), bundle = _seed(service, ("web-1", ("role:web",)))
    holder = Holder(bundle)

    async def scenario() -> None:
        client = PushClient(
            ControlClient(service.url, timeout=2.0),
            web.signer,
            on_policy=holder.on_policy,
            on_crl=holder.on_crl,
            poll_interval=1.0,
            backoff_max=2.0,
        )
        task = asyncio.create_task(client.run())
        try:
            await call("POST", f"{service.url}/v1/policies", {"source": POLICY}, key)
            await until(lambda: client.connected and holder.policy is not None, what="v1")
            held = holder.policy

            # A crash: the stream breaks, the node keeps what it holds.
            await asyncio.to_thread(service.kill)
            await until(lambda: not client.connected, what="the break")
            await asyncio.sleep(1.5)  # a few failed polls
            assert holder.policy is held and client.policy_version == 1
            assert client.stats.poll_failures >= 1

            await asyncio.to_thread(service.start)
            await until(lambda: client.connected, timeout=15, what="reconnect")
            # Nothing new: nothing sent again.
            assert holder.policy_calls == [1]
            await call("POST", f"{service.url}/v1/policies", {"source": POLICY}, key)
            await until(lambda: client.policy_version == 2, what="v2")
            assert holder.policy is not None and holder.policy.version == 2

            # A graceful stop and a change made while the node is cut off: caught up
            # as soon as the service is back.
            await asyncio.to_thread(service.stop)
            await until(lambda: not client.connected, what="the stop")
            await asyncio.to_thread(service.start)
            await call("POST", f"{service.url}/v1/policies", {"source": POLICY}, key)
            await until(lambda: client.policy_version == 3, timeout=15, what="v3")
            assert holder.policy_calls == [1, 2, 3]
        finally:
            task.cancel()

    asyncio.run(scenario())


def test_a_pushed_policy_older_than_the_node_s_is_refused(service: Replica) -> None:
    """The node holds version 5 (from its state directory, say); the service, restored
    from an old backup, pushes 1: the node keeps 5."""
    key, (web,), bundle = _seed(service, ("web-1", ()))
    ca_key = load_signing_key(Path(service.env["X0T_DATA_DIR"]) / "ca" / CA_KEY_FILE)
    holder = Holder(bundle)
    holder.policy = SignedPolicy.sign(POLICY.replace("version 1", "version 5"), ca_key)

    async def scenario() -> None:
        await call("POST", f"{service.url}/v1/policies", {"source": POLICY}, key)
        client = PushClient(
            ControlClient(service.url), web.signer, on_policy=holder.on_policy, on_crl=holder.on_crl
        )
        task = asyncio.create_task(client.run())
        try:
            await until(lambda: holder.policy_calls == [1], what="the push")
        finally:
            task.cancel()

    asyncio.run(scenario())
    assert holder.refused == ["older"]
    assert holder.policy is not None and holder.policy.version == 5


# --- against a misbehaving service ---------------------------------------------------------


class FakeService:
    """A stand-in for a broken or hostile control plane: serves whatever frames and sync
    answers the test gives it."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.stream_status = 200
        self.sync_answer: Callable[[int, int], dict[str, Any]] = lambda p, c: SyncResult(
            None, None
        ).to_wire()
        self.requests: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake.requests.append(self.path)
                parts = urlsplit(self.path)
                q = {k: int(v[0]) for k, v in parse_qs(parts.query).items()}
                if parts.path == "/v1/stream":
                    if fake.stream_status != 200:
                        self._json(fake.stream_status, {"detail": "no streams here"})
                        return
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.end_headers()
                    for frame in fake.frames:
                        self.wfile.write(frame)
                    self.wfile.flush()
                    return  # the connection closes: the stream ends
                if parts.path == "/v1/sync":
                    self._json(200, fake.sync_answer(q.get("policy", 0), q.get("crl", 0)))
                    return
                self._json(404, {"detail": "not found"})

            def _json(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake() -> Iterator[FakeService]:
    f = FakeService()
    try:
        yield f
    finally:
        f.close()


@pytest.fixture(scope="module")
def local_ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path_factory.mktemp("ca"))


def _signed(ca: CertificateAuthority, version: int) -> bytes:
    key = load_signing_key(ca.directory / CA_KEY_FILE)
    return SignedPolicy.sign(POLICY.replace("version 1", f"version {version}"), key).to_bytes()


def _signer() -> Signer:
    from x0tta6bl4.crypto.sign import SigningKey

    return Signer(SigningKey.generate(), 0xABC)


def test_the_client_refuses_stale_and_malformed_pushes(fake: FakeService, local_ca) -> None:  # type: ignore[no-untyped-def]
    holder = Holder(local_ca.bundle())
    hello = {"node": "web-1", "serial": "abc", "policy": 2, "crl": 1}
    fake.frames = [
        format_event("hello", hello),
        format_event("policy", PushedPolicy(2, _signed(local_ca, 2)).to_wire()),  # stale
        format_event("policy", {"version": "seven", "signed": "AA=="}),  # malformed
        format_event("crl", {"version": 3, "pem": "é"}),  # not ASCII
        format_event("policy", PushedPolicy(6, b"not a policy").to_wire()),  # bad document
        format_event("whatever", {"x": 1}),  # unknown: skipped
        format_event("revoked", {"serial": "abc", "reason": "key-compromise"}),
    ]

    async def scenario() -> PushClient:
        client = PushClient(
            ControlClient(fake.url),
            _signer(),
            on_policy=holder.on_policy,
            on_crl=holder.on_crl,
            on_revoked=holder.on_revoked,
            policy_version=5,
        )
        await asyncio.wait_for(client.run(), 10)
        return client

    client = asyncio.run(scenario())
    assert client.stats.refused_stale == 1
    assert client.stats.refused_malformed == 2
    # The one well-formed newer announcement reached the verifier, which refused it; the
    # held version moved on (the same version is always the same document).
    assert holder.policy_calls == [6] and holder.refused == ["unsigned"]
    assert holder.policy is None and client.policy_version == 6
    assert client.revoked and holder.revoked == ["key-compromise"]
    assert fake.requests[0] == "/v1/stream?policy=5&crl=0"


def test_an_old_certificate_s_revocation_only_reconnects(fake: FakeService, local_ca) -> None:  # type: ignore[no-untyped-def]
    holder = Holder(local_ca.bundle())
    fake.frames = [
        format_event("hello", {"node": "n", "serial": "abc", "policy": 0, "crl": 0}),
        format_event("revoked", {"serial": "1234", "reason": "superseded"}),
    ]

    async def scenario() -> PushClient:
        client = PushClient(
            ControlClient(fake.url),
            _signer(),
            on_policy=holder.on_policy,
            on_crl=holder.on_crl,
            poll_interval=0.2,
            backoff_initial=0.05,
            backoff_max=0.1,
        )
        task = asyncio.create_task(client.run())
        await until(lambda: client.stats.streams_opened >= 3, what="reconnects")
        task.cancel()
        return client

    client = asyncio.run(scenario())
    assert not client.revoked


def test_polls_while_the_stream_is_refused(fake: FakeService, local_ca) -> None:  # type: ignore[no-untyped-def]
    fake.stream_status = 503
    policies = {2: _signed(local_ca, 2), 3: _signed(local_ca, 3)}
    crl = local_ca.revocation_list()
    state = {"policy": 2}

    def answer(have_policy: int, have_crl: int) -> dict[str, Any]:
        p = state["policy"]
        return SyncResult(
            PushedPolicy(p, policies[p]) if p > have_policy else None,
            PushedCrl(crl.version, crl.to_pem()) if crl.version > have_crl else None,
        ).to_wire()

    fake.sync_answer = answer
    holder = Holder(local_ca.bundle())

    async def scenario() -> PushClient:
        client = PushClient(
            ControlClient(fake.url),
            _signer(),
            on_policy=holder.on_policy,
            on_crl=holder.on_crl,
            poll_interval=0.2,
            backoff_initial=5.0,
            backoff_max=5.0,
        )
        task = asyncio.create_task(client.run())
        try:
            await until(lambda: holder.policy is not None and holder.crl is not None)
            state["policy"] = 3
            await until(lambda: client.policy_version == 3, timeout=3, what="a poll")
        finally:
            task.cancel()
        return client

    client = asyncio.run(scenario())
    assert holder.policy is not None and holder.policy.version == 3
    assert holder.policy_calls == [2, 3] and holder.crl_calls == [crl.version]
    assert client.stats.stream_failures >= 1 and client.stats.polls >= 2
    assert "HTTP 503" in client.stats.last_error or client.stats.polls > 0
    assert any(r.startswith("/v1/sync?policy=2&crl=1") for r in fake.requests)


def test_a_failing_callback_is_retried(fake: FakeService, local_ca) -> None:  # type: ignore[no-untyped-def]
    fake.stream_status = 503
    doc = _signed(local_ca, 2)
    fake.sync_answer = lambda p, c: SyncResult(
        PushedPolicy(2, doc) if p < 2 else None, None
    ).to_wire()
    calls: list[int] = []

    def flaky(data: bytes, version: int) -> None:
        calls.append(version)
        if len(calls) == 1:
            raise OSError("disk full")

    async def scenario() -> PushClient:
        client = PushClient(
            ControlClient(fake.url),
            _signer(),
            on_policy=flaky,
            on_crl=lambda pem, v: None,
            poll_interval=0.1,
            backoff_initial=5.0,
        )
        task = asyncio.create_task(client.run())
        await until(lambda: client.policy_version == 2, what="the retry")
        task.cancel()
        return client

    client = asyncio.run(scenario())
    assert calls == [2, 2] and client.stats.callback_errors == 1


def test_a_large_announced_document_is_fetched(fake: FakeService, local_ca) -> None:  # type: ignore[no-untyped-def]
    doc = _signed(local_ca, 4)
    fake.frames = [
        format_event("hello", {"node": "n", "serial": "abc", "policy": 4, "crl": 0}),
        format_event("policy", {"version": 4, "signed": None}),
    ]
    fake.sync_answer = lambda p, c: SyncResult(
        PushedPolicy(4, doc) if p < 4 else None, None
    ).to_wire()
    holder = Holder(local_ca.bundle())

    async def scenario() -> None:
        client = PushClient(
            ControlClient(fake.url), _signer(), on_policy=holder.on_policy, on_crl=holder.on_crl
        )
        task = asyncio.create_task(client.run())
        await until(lambda: client.policy_version == 4, what="the fetch")
        task.cancel()

    asyncio.run(scenario())
    assert holder.policy is not None and holder.policy.version == 4


# --- the codec ------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(version=st.integers(1, MAX_VERSION), signed=st.none() | st.binary(min_size=1, max_size=300))
def test_policy_roundtrip(version: int, signed: bytes | None) -> None:
    doc = PushedPolicy(version, signed)
    frame = format_event("policy", doc.to_wire())
    assert frame.count(b"\n") == 3  # event line, one data line, blank line
    data = json.loads(frame.split(b"\n")[1][len(b"data: ") :])
    assert decode_policy(data) == doc


@settings(max_examples=200, deadline=None)
@given(version=st.integers(1, MAX_VERSION), pem=st.none() | st.text("ABC-\n =/", min_size=1))
def test_crl_and_sync_roundtrip(version: int, pem: str | None) -> None:
    doc = PushedCrl(version, None if pem is None else pem.encode())
    assert decode_crl(json.loads(json.dumps(doc.to_wire()))) == doc
    result = SyncResult(None, doc)
    assert decode_sync(json.loads(json.dumps(result.to_wire()))) == result


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_fields = st.dictionaries(
    st.sampled_from(["version", "signed", "pem", "node", "serial", "policy", "crl", "reason"]),
    _json,
    max_size=6,
)


@settings(max_examples=400, deadline=None)
@given(data=_json | _fields)
def test_decoders_raise_only_push_format_error(data: Any) -> None:
    for decode in (decode_policy, decode_crl, decode_hello, decode_end, decode_sync):
        with contextlib.suppress(PushFormatError):
            decode(data)


def test_decoders_bound_what_they_accept() -> None:
    with pytest.raises(PushFormatError, match="version"):
        decode_policy({"version": 0, "signed": None})
    with pytest.raises(PushFormatError, match="version"):
        decode_policy({"version": True, "signed": None})
    with pytest.raises(PushFormatError, match="version"):
        decode_crl({"version": MAX_VERSION + 1, "pem": None})
    with pytest.raises(PushFormatError, match="base64"):
        decode_policy({"version": 1, "signed": "!!!"})
    with pytest.raises(PushFormatError, match="at most"):
        decode_policy({"version": 1, "signed": "A" * (3 << 20)})
    with pytest.raises(PushFormatError, match="empty"):
        decode_crl({"version": 1, "pem": ""})
    with pytest.raises(PushFormatError, match="object"):
        decode_sync([1, 2])
    assert decode_policy({"version": 1, "signed": base64.b64encode(b"x").decode()}).signed == b"x"
