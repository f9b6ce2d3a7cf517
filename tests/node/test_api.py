"""The local API (JSON lines over a Unix socket) and its client SDK.

The unit under test is the API's codec and error handling, so the agent behind it is a
small stub with just the attributes ``LocalApi`` uses; the socket, the server and the
client are the real ones. The server runs on an event loop in a thread, the blocking
``NodeClient`` in the test's thread, as a script would use it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest

from x0tta6bl4.errors import MessageTooLarge
from x0tta6bl4.node.agent import Inbound
from x0tta6bl4.node.api import MAX_REQUEST, LocalApi
from x0tta6bl4.node.client import Message, NodeApiError, NodeClient, PingResult

T = TypeVar("T")


class _Mesh:
    def next_hop(self, dst: str) -> str | None:
        return {"db-1": "relay-1", "silent": "relay-2"}.get(dst)


@dataclass
class StubAgent:
    """What LocalApi touches on an Agent: status(), send(), ping(), mesh.next_hop,
    listeners and trace_subscribers."""

    mesh: _Mesh = field(default_factory=_Mesh)
    listeners: dict[int, set[asyncio.Queue[Inbound]]] = field(default_factory=dict)
    trace_subscribers: set[asyncio.Queue[tuple[float, str, dict[str, Any]]]] = field(
        default_factory=set
    )
    sent: list[tuple[str, int, bytes]] = field(default_factory=list)

    def status(self) -> dict[str, Any]:
        return {"name": "web-1", "neighbours": [{"name": "db-1", "rtt_ms": 0.4}], "seqno": 7}

    def send(self, dst: str, port: int, payload: bytes) -> None:
        if dst == "nobody":
            raise ValueError("no route to 'nobody'")
        if len(payload) > 65_533:
            raise MessageTooLarge(len(payload), 65_533)
        self.sent.append((dst, port, payload))

    async def ping(self, dst: str, timeout: float) -> tuple[float, int] | None:
        if dst == "silent":
            await asyncio.sleep(timeout)
            return None
        return 0.0042, 2


@dataclass
class Served:
    path: Path
    agent: StubAgent
    loop: asyncio.AbstractEventLoop

    def on_loop(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the server's loop (the agent's state belongs to it)."""

        async def call() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(5)

    def wait_for(self, cond: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.on_loop(cond):
            assert time.monotonic() < deadline, "condition not reached"
            time.sleep(0.01)

    def push(self, port: int, src: str, payload: bytes) -> None:
        def put() -> None:
            for q in self.agent.listeners[port]:
                q.put_nowait(Inbound(src, port, payload))

        self.on_loop(put)

    def client(self, timeout: float = 5.0) -> NodeClient:
        return NodeClient(self.path, timeout=timeout)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A Unix socket path must fit in 108 bytes; pytest's tmp_path may not."""
    d = Path(tempfile.mkdtemp(prefix="x0t-api-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def api(short_dir: Path) -> Iterator[Served]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    agent = StubAgent()
    server = LocalApi(agent)  # type: ignore[arg-type]  # the stub has what LocalApi uses
    path = short_dir / "agent.sock"
    asyncio.run_coroutine_threadsafe(server.start(path), loop).result(5)
    try:
        yield Served(path, agent, loop)
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
    assert not path.exists()  # close() removes the socket file


def _raw(path: Path, data: bytes, *, hang_up: bool = True) -> list[dict[str, Any]]:
    """Send raw bytes, read every reply line until the server closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(path))
        s.sendall(data)
        if hang_up:
            s.shutdown(socket.SHUT_WR)
        with s.makefile("rb") as f:
            return [json.loads(line) for line in f]


def _refused(path: Path, data: bytes) -> str:
    replies = _raw(path, data)
    assert len(replies) == 1, replies
    (reply,) = replies
    assert reply["ok"] is False, reply
    err = str(reply["error"])
    assert "\n" not in err and err and len(err) < 200, err
    return err


# -- the socket --------------------------------------------------------------------------


def test_socket_is_owner_only(api: Served) -> None:
    assert stat.S_ISSOCK(api.path.stat().st_mode)
    assert stat.S_IMODE(api.path.stat().st_mode) == 0o600


def test_a_stale_socket_file_is_replaced(short_dir: Path) -> None:
    path = short_dir / "agent.sock"
    with socket.socket(socket.AF_UNIX) as s:  # a socket left behind by a killed agent
        s.bind(str(path))
    with pytest.raises(NodeApiError, match="no agent is listening"):
        NodeClient(path).status()

    async def main() -> dict[str, Any]:
        server = LocalApi(StubAgent())  # type: ignore[arg-type]
        await server.start(path)
        try:
            return await asyncio.to_thread(NodeClient(path).status)
        finally:
            await server.close()

    assert asyncio.run(main())["name"] == "web-1"


def test_client_without_an_agent_says_so(short_dir: Path) -> None:
    path = short_dir / "missing.sock"
    calls: list[Callable[[NodeClient], object]] = [
        lambda c: c.status(),
        lambda c: c.send("db-1", 7000, b"x"),
        lambda c: c.ping("db-1"),
        lambda c: next(c.listen(7000)),
    ]
    for call in calls:
        with pytest.raises(NodeApiError) as ei:
            call(NodeClient(path))
        assert str(ei.value) == f"no agent is listening on {path} (is 'x0t node run' up?)"


# -- operations ------------------------------------------------------------------------


def test_status_round_trip(api: Served) -> None:
    assert api.client().status() == api.agent.status()


def test_send_carries_any_bytes(api: Served) -> None:
    payload = bytes(range(256)) * 3
    api.client().send("db-1", 7000, payload)
    api.client().send("db-1", 1, b"")
    api.client().send("db-1", 65534, b"\x00")  # the highest message port
    assert api.agent.sent == [("db-1", 7000, payload), ("db-1", 1, b""), ("db-1", 65534, b"\x00")]


def test_send_reports_the_byte_count(api: Served) -> None:
    data = base64.b64encode(b"hello").decode()
    req = {"op": "send", "dst": "db-1", "port": 7, "data": data}
    assert _raw(api.path, json.dumps(req).encode() + b"\n") == [{"ok": True, "bytes": 5}]


def test_largest_payload_fits_in_one_request(api: Served) -> None:
    api.client().send("db-1", 7000, b"\xab" * 65_533)
    assert api.agent.sent[-1][2] == b"\xab" * 65_533


def test_agent_errors_come_back_as_sentences(api: Served) -> None:
    with pytest.raises(NodeApiError, match=r"^no route to 'nobody'$"):
        api.client().send("nobody", 7000, b"x")
    with pytest.raises(
        NodeApiError, match=r"^payload of 65534 bytes exceeds the path limit of 65533 bytes$"
    ):
        api.client().send("db-1", 7000, b"x" * 65_534)


def test_ping(api: Served) -> None:
    assert api.client().ping("db-1", timeout=1.0) == PingResult(0.0042, 2, "relay-1")


def test_ping_without_answer_names_the_timeout_and_next_hop(api: Served) -> None:
    with pytest.raises(NodeApiError, match=r"^no answer from silent within 0\.05 s$"):
        api.client().ping("silent", timeout=0.05)
    req = b'{"op": "ping", "dst": "silent", "timeout": 0.05}\n'
    assert _raw(api.path, req) == [
        {"ok": False, "error": "no answer from silent within 0.05 s", "via": "relay-2"}
    ]


def test_a_request_without_a_newline_is_read_at_hang_up(api: Served) -> None:
    assert _raw(api.path, b'{"op": "status"}')[0]["ok"] is True


# -- bad requests: one sentence each, and the server keeps serving ------------------------


def _send(**fields: Any) -> bytes:
    return json.dumps({"op": "send", "dst": "db-1", "port": 7000, "data": "", **fields}).encode()


@pytest.mark.parametrize(
    ("request_line", "says"),
    [
        (b"not json", "not JSON: Expecting value"),
        (b"", "not JSON"),  # an empty line
        (b"{'op': 'status'}", "not JSON"),
        (b"\xff\xfe{}", "not JSON: not UTF-8"),
        (b"[" * 50_000, "not JSON: nested too deeply"),
        (b"[1, 2]", "a request is a JSON object"),
        (b'"status"', "a request is a JSON object"),
        (b"null", "a request is a JSON object"),
        (b'{"op": "reboot"}', "unknown op 'reboot' (status, send, ping, listen, trace)"),
        (b"{}", "unknown op None"),
        (b'{"op": 1}', "unknown op 1"),
        (_send(dst=None), "field 'dst' must be a string"),
        (_send(dst=5), "field 'dst' must be a string"),
        (_send(port=None), "field 'port' must be an integer"),
        (_send(port="7000"), "field 'port' must be an integer"),
        (_send(port=True), "field 'port' must be an integer"),
        (_send(port=7000.0), "field 'port' must be an integer"),
        (_send(port=0), "port 0 out of range 1..65534"),
        (_send(port=-1), "port -1 out of range 1..65534"),
        (_send(port=65535), "port 65535 out of range 1..65534 (65535 carries TUN traffic)"),
        (_send(port=70000), "port 70000 out of range 1..65534"),
        (_send(data=None), "field 'data' must be a string"),
        (_send(data=[1]), "field 'data' must be a string"),
        (_send(data="!!!!"), "field 'data' is not base64"),
        (_send(data="aGVsbG8"), "field 'data' is not base64"),  # missing padding
        (_send(data="aGVs bG8="), "field 'data' is not base64"),
        (b'{"op": "ping"}', "field 'dst' must be a string"),
        (b'{"op": "ping", "dst": "db-1", "timeout": 0}', "timeout must be in (0, 30] seconds"),
        (b'{"op": "ping", "dst": "db-1", "timeout": -1}', "timeout must be in (0, 30] seconds"),
        (b'{"op": "ping", "dst": "db-1", "timeout": 31}', "timeout must be in (0, 30] seconds"),
        (b'{"op": "ping", "dst": "db-1", "timeout": 1e400}', "timeout must be in (0, 30]"),
        (b'{"op": "ping", "dst": "db-1", "timeout": NaN}', "timeout must be in (0, 30]"),
        (b'{"op": "ping", "dst": "db-1", "timeout": "2"}', "field 'timeout' must be a number"),
        (b'{"op": "ping", "dst": "db-1", "timeout": [1]}', "field 'timeout' must be a number"),
        (b'{"op": "ping", "dst": "db-1", "timeout": null}', "field 'timeout' must be a number"),
        (b'{"op": "ping", "dst": "db-1", "timeout": true}', "field 'timeout' must be a number"),
        (b'{"op": "listen"}', "field 'port' must be an integer"),
        (b'{"op": "listen", "port": 0}', "port 0 out of range"),
        (b'{"op": "listen", "port": 65535}', "(65535 carries TUN traffic)"),
    ],
)
def test_bad_request_gets_one_sentence_and_the_server_keeps_serving(
    api: Served, request_line: bytes, says: str
) -> None:
    err = _refused(api.path, request_line + b"\n")
    assert says in err, err
    assert api.agent.sent == []
    assert api.agent.listeners == {}
    assert api.client().status()["name"] == "web-1"  # still serving


def test_request_too_long(api: Served) -> None:
    assert _refused(api.path, b"x" * (MAX_REQUEST + 10) + b"\n") == "request line too long"
    # through the client: 200 KB of data is 267 KB of base64
    with pytest.raises(NodeApiError, match=r"^request line too long$"):
        api.client().send("db-1", 7000, b"\x00" * 200_000)
    assert api.agent.sent == []
    assert api.client().status()["name"] == "web-1"


def test_client_errors_are_node_api_errors(api: Served) -> None:
    with pytest.raises(NodeApiError, match=r"^port 65535 out of range 1\.\.65534"):
        api.client().send("db-1", 65535, b"")
    with pytest.raises(NodeApiError, match=r"^port 0 out of range"):
        next(api.client().listen(0))
    with pytest.raises(NodeApiError, match=r"timeout must be in"):
        api.client().ping("db-1", timeout=60)


def test_a_client_that_hangs_up_at_once_does_no_harm(api: Served) -> None:
    for _ in range(3):
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(api.path))
    assert _raw(api.path, b"") == []  # connect, say nothing, hang up: no reply, no error
    assert api.client().status()["name"] == "web-1"


def test_many_clients_at_once(api: Served) -> None:
    results: list[dict[str, Any]] = []
    threads = [
        threading.Thread(target=lambda: results.append(api.client().status())) for _ in range(20)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == 20 and all(r["name"] == "web-1" for r in results)


# -- streams -----------------------------------------------------------------------------


def test_listen_streams_messages_and_unregisters_on_hang_up(api: Served) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(api.path))
        s.sendall(b'{"op": "listen", "port": 7000}\n')
        f = s.makefile("rb")
        assert json.loads(f.readline()) == {"ok": True}
        assert api.on_loop(lambda: len(api.agent.listeners.get(7000, ())) == 1)
        # the server answers other requests while a stream is open
        assert api.client().status()["seqno"] == 7
        api.push(7000, "db-1", b"\x00\x01binary\xff")
        api.push(7000, "db-2", b"")
        assert json.loads(f.readline()) == {
            "src": "db-1",
            "port": 7000,
            "data": base64.b64encode(b"\x00\x01binary\xff").decode(),
        }
        assert json.loads(f.readline())["src"] == "db-2"
        f.close()
    api.wait_for(lambda: 7000 not in api.agent.listeners)


def test_listen_through_the_client(api: Served) -> None:
    def feed() -> None:
        api.wait_for(lambda: 7000 in api.agent.listeners)
        api.push(7000, "db-1", b"one")
        api.push(7000, "db-1", b"two")

    feeder = threading.Thread(target=feed)
    feeder.start()
    got: list[Message] = []
    # a generator: close() hangs up
    stream = cast(Generator[Message, None, None], api.client().listen(7000, timeout=5))
    for m in stream:
        got.append(m)
        if len(got) == 2:
            break
    stream.close()  # the client hangs up
    feeder.join(5)
    assert got == [Message("db-1", 7000, b"one"), Message("db-1", 7000, b"two")]
    api.wait_for(lambda: api.agent.listeners == {})


def test_listen_stops_after_the_silence_timeout(api: Served) -> None:
    t0 = time.monotonic()
    assert list(api.client().listen(7000, timeout=0.1)) == []
    assert time.monotonic() - t0 < 3
    api.wait_for(lambda: api.agent.listeners == {})


def test_two_listeners_on_one_port(api: Served) -> None:
    a = socket.socket(socket.AF_UNIX)
    b = socket.socket(socket.AF_UNIX)
    with contextlib.ExitStack() as stack:
        for s in (a, b):
            stack.enter_context(s)
            s.settimeout(5)
            s.connect(str(api.path))
            s.sendall(b'{"op": "listen", "port": 9}\n')
        fa, fb = a.makefile("rb"), b.makefile("rb")
        stack.callback(fa.close)
        stack.callback(fb.close)
        assert json.loads(fa.readline())["ok"] and json.loads(fb.readline())["ok"]
        api.push(9, "db-1", b"both")
        assert json.loads(fa.readline())["data"] == json.loads(fb.readline())["data"]
        fa.close()
        a.close()  # one hangs up; the other stays registered
        api.wait_for(lambda: len(api.agent.listeners.get(9, ())) == 1)
        api.push(9, "db-1", b"still")
        assert base64.b64decode(json.loads(fb.readline())["data"]) == b"still"
    api.wait_for(lambda: api.agent.listeners == {})


def test_trace_streams_events_as_json(api: Served) -> None:
    def feed() -> None:
        api.wait_for(lambda: len(api.agent.trace_subscribers) == 1)

        def put() -> None:
            for q in api.agent.trace_subscribers:
                q.put_nowait((12.5, "link_up", {"peer": "db-1", "addr": ("::1", 7100)}))

        api.on_loop(put)

    feeder = threading.Thread(target=feed)
    feeder.start()
    stream = cast(Generator[dict[str, Any], None, None], api.client().trace(timeout=5))
    event = next(stream)
    stream.close()
    feeder.join(5)
    assert event == {
        "t": 12.5,
        "kind": "link_up",
        "fields": {"peer": "db-1", "addr": ["::1", 7100]},
    }
    api.wait_for(lambda: not api.agent.trace_subscribers)


# -- the client against a misbehaving server ---------------------------------------------


def _one_shot_server(path: Path, behaviour: Callable[[socket.socket], object]) -> threading.Thread:
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    srv.listen(1)

    def run() -> None:
        with srv:
            conn, _ = srv.accept()
            with conn:
                behaviour(conn)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_client_when_the_agent_closes_without_answering(short_dir: Path) -> None:
    path = short_dir / "s.sock"
    t = _one_shot_server(path, lambda conn: conn.recv(1024))
    with pytest.raises(NodeApiError, match=r"closed the connection$"):
        NodeClient(path).status()
    t.join(5)


def test_client_when_the_agent_does_not_answer_in_time(short_dir: Path) -> None:
    path = short_dir / "s.sock"
    done = threading.Event()
    t = _one_shot_server(path, lambda conn: done.wait(5))
    with pytest.raises(NodeApiError, match=r"did not answer in time$"):
        NodeClient(path, timeout=0.1).status()
    done.set()
    t.join(5)
