"""``x0t node init``, ``x0t node run`` (up to the point where it would start the agent),
and ``x0t status / ping / send / listen``: what they write, print and exit with.

The commands that talk to an agent are run against a canned agent on a Unix socket
that answers the local API's JSON lines, so their output and exit codes are checked
without starting a mesh (tests/node/test_agent_processes.py runs real agents).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import socketserver
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from x0tta6bl4.cli import app
from x0tta6bl4.identity import NodeCredentials
from x0tta6bl4.identity.bundle import TrustBundle
from x0tta6bl4.identity.crl import RevocationList
from x0tta6bl4.node.config import load_settings

runner = CliRunner()

EXIT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_NO_ANSWER = 1, 2, 3, 4


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a traceback is a bug: show it
    return result.exit_code, result.output


def _one_error_line(out: str) -> str:
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1, out
    assert lines[0].startswith("error: "), out
    assert "Traceback" not in out
    return lines[0]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.upper().startswith("X0T_"):
            monkeypatch.delenv(key)


@pytest.fixture(autouse=True)
def _no_global_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    # `node run` configures logging for the process, with a handler on the stderr the
    # CliRunner lends it; keep that out of the rest of the test session.
    monkeypatch.setattr("x0tta6bl4.observability.logging.configure_logging", lambda **kw: None)


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ca") / "ca"
    code, out = run("ca", "init", "--dir", str(d))
    assert code == 0, out
    return d


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


# -- x0t node init -----------------------------------------------------------------------


def test_node_init_with_a_local_ca_writes_a_runnable_state_dir(
    tmp_path: Path, ca_dir: Path
) -> None:
    sd = tmp_path / "web-1"
    code, out = run(
        "node", "init", "web-1", "--state-dir", str(sd), "--ca-dir", str(ca_dir),
        "--tag", "role:web", "--listen", "127.0.0.1:7200", "--listen", "[::1]:7200",
        "--peer", "127.0.0.2:7100", "--metrics", "127.0.0.1:9470",
    )  # fmt: skip
    assert code == 0, out
    assert f"initialised web-1: state {sd}, config {sd / 'node.toml'}" in out
    assert "certificate spiffe://x0tta6bl4.mesh/node/web-1, valid until" in out

    assert sorted(os.listdir(sd)) == [
        "bundle.pem", "crl.pem", "node-static.key", "node.crt", "node.key", "node.toml",
    ]  # fmt: skip
    assert _mode(sd) == 0o700
    assert _mode(sd / "node.key") == _mode(sd / "node-static.key") == 0o600

    s = load_settings(sd / "node.toml")
    assert (s.name, s.state_dir) == ("web-1", sd)
    assert s.listen_addrs == [("127.0.0.1", 7200), ("::1", 7200)]
    assert s.peer_addrs == [("127.0.0.2", 7100)]
    assert s.api.metrics == "127.0.0.1:9470"

    creds = NodeCredentials.load(sd)
    assert (creds.cert.name, creds.cert.tags) == ("web-1", ("role:web",))
    bundle = TrustBundle.load(sd / "bundle.pem")
    assert bundle.trust_domain == "x0tta6bl4.mesh"
    crl = RevocationList.from_pem((sd / "crl.pem").read_bytes(), bundle)  # CA-signed
    assert not crl.is_revoked(creds.cert.serial)
    code, out = run("cert", "verify", str(sd / "node.crt"), "--dir", str(ca_dir))
    assert code == 0 and "verified spiffe://x0tta6bl4.mesh/node/web-1" in out, out


def test_node_init_twice_refuses_without_force(tmp_path: Path, ca_dir: Path) -> None:
    sd = tmp_path / "db-1"
    args = ("node", "init", "db-1", "--state-dir", str(sd), "--ca-dir", str(ca_dir))
    assert run(*args)[0] == 0
    keys = {n: (sd / n).read_bytes() for n in ("node.key", "node-static.key", "node.crt")}

    code, out = run(*args)
    assert code == EXIT_ERROR
    assert _one_error_line(out) == f"error: {sd} already holds node keys (use --force)"
    assert {n: (sd / n).read_bytes() for n in keys} == keys  # nothing replaced

    code, out = run(*args, "--force")
    assert code == 0, out
    assert all((sd / n).read_bytes() != old for n, old in keys.items())
    assert _mode(sd / "node.key") == 0o600


def test_node_init_without_a_ca_makes_a_request(tmp_path: Path) -> None:
    sd = tmp_path / "edge-1"
    code, out = run("node", "init", "edge-1", "--state-dir", str(sd))
    assert code == 0, out
    assert "node.csr" in out and "have the CA sign it" in out
    assert (sd / "node.csr").exists() and not (sd / "node.crt").exists()
    assert _mode(sd / "node.key") == _mode(sd / "node-static.key") == 0o600
    assert load_settings(sd / "node.toml").name == "edge-1"


def test_node_init_with_a_config_elsewhere(tmp_path: Path, ca_dir: Path) -> None:
    sd, cfg = tmp_path / "state", tmp_path / "etc" / "x0t.toml"
    code, out = run(
        "node", "init", "a", "--state-dir", str(sd), "--config", str(cfg), "--ca-dir", str(ca_dir)
    )
    assert code == 0, out
    assert not (sd / "node.toml").exists()
    assert load_settings(cfg).state_dir == sd  # absolute, so the file may move


def test_node_init_in_a_directory_with_a_quote_in_its_name(tmp_path: Path, ca_dir: Path) -> None:
    sd = tmp_path / 'o"brien\\node'
    code, out = run("node", "init", "a", "--state-dir", str(sd), "--ca-dir", str(ca_dir))
    assert code == 0, out
    assert load_settings(sd / "node.toml").state_dir == sd


@pytest.mark.parametrize(
    ("option", "value", "field"),
    [
        ("--listen", "nonsense:7100", "listen"),
        ("--listen", "127.0.0.1:70000", "listen"),
        ("--peer", "db.example:7100", "peers"),
        ("--metrics", "everywhere", "api.metrics"),
    ],
)
def test_node_init_with_a_bad_address_writes_nothing(
    tmp_path: Path, ca_dir: Path, option: str, value: str, field: str
) -> None:
    sd = tmp_path / "n"
    code, out = run(
        "node", "init", "n", "--state-dir", str(sd), "--ca-dir", str(ca_dir), option, value
    )
    assert code == EXIT_ERROR
    line = _one_error_line(out)
    assert line.startswith(f"error: {sd / 'node.toml'}: field '{field}': "), line
    assert not sd.exists()  # no keys left behind that would need --force
    code, out = run("node", "init", "n", "--state-dir", str(sd), "--ca-dir", str(ca_dir))
    assert code == 0, out


def test_node_init_refuses_a_bad_name_or_ca(tmp_path: Path) -> None:
    code, out = run("node", "init", "Web_1", "--state-dir", str(tmp_path / "x"))
    assert code == EXIT_ERROR
    assert "invalid node name 'Web_1'" in _one_error_line(out)
    assert not (tmp_path / "x").exists()
    code, out = run(
        "node", "init", "a", "--state-dir", str(tmp_path / "y"), "--ca-dir", str(tmp_path / "no")
    )
    assert code == EXIT_ERROR
    assert "no CA in" in _one_error_line(out)
    assert not NodeCredentials.exists(tmp_path / "y")


# -- x0t node run (everything before the agent starts) -----------------------------------


def test_node_run_with_a_wrong_field_exits_1_naming_it(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('name = "a"\nstate_dir = "st"\n[tun]\nmtu = 576\n')
    code, out = run("node", "run", "--config", str(cfg))
    assert code == EXIT_ERROR
    assert _one_error_line(out) == (
        f"error: {cfg}: field 'tun.mtu': Input should be greater than or equal to 1280"
    )


def test_node_run_config_errors(tmp_path: Path) -> None:
    code, out = run("node", "run", "--config", str(tmp_path / "absent.toml"))
    assert code == EXIT_ERROR
    assert _one_error_line(out) == f"error: {tmp_path / 'absent.toml'}: no such configuration file"

    code, out = run("node", "run", "--state-dir", str(tmp_path))  # STATE_DIR/node.toml
    assert code == EXIT_ERROR
    assert f"{tmp_path / 'node.toml'}: no such configuration file" in _one_error_line(out)

    cfg = tmp_path / "syntax.toml"
    cfg.write_text('name = "a"\nstate_dir = \n')
    code, out = run("node", "run", "--config", str(cfg))
    assert code == EXIT_ERROR
    assert f"{cfg}: not valid TOML" in _one_error_line(out)


def test_node_run_environment_errors_are_one_sentence(tmp_path: Path, ca_dir: Path) -> None:
    sd = tmp_path / "a"
    assert run("node", "init", "a", "--state-dir", str(sd), "--ca-dir", str(ca_dir))[0] == 0
    cfg = str(sd / "node.toml")
    code, out = run("node", "run", "--config", cfg, env={"X0T_LISTEN": "127.0.0.1:7100"})
    assert code == EXIT_ERROR
    assert "X0T_LISTEN='[" in _one_error_line(out)
    code, out = run("node", "run", "--config", cfg, env={"X0T_HELLO_INTERVAL": "0"})
    assert code == EXIT_ERROR
    assert _one_error_line(out).startswith(
        "error: environment variable X0T_HELLO_INTERVAL: field 'hello_interval': "
    )
    # X0T_CONFIG names the file
    code, out = run("node", "run", env={"X0T_CONFIG": str(tmp_path / "nope.toml")})
    assert code == EXIT_ERROR and "nope.toml: no such configuration file" in out


def test_node_run_refuses_bad_state_before_starting(tmp_path: Path, ca_dir: Path) -> None:
    sd = tmp_path / "a"
    assert run("node", "init", "a", "--state-dir", str(sd), "--ca-dir", str(ca_dir))[0] == 0
    cfg = str(sd / "node.toml")
    os.chmod(sd / "node.key", 0o644)
    code, out = run("node", "run", "--config", cfg)
    assert code == EXIT_ERROR
    assert _one_error_line(out).startswith(
        f"error: {sd / 'node.key'}: private key readable by others (mode 644)"
    )
    os.chmod(sd / "node.key", 0o600)
    code, out = run("node", "run", "--config", cfg, env={"X0T_NAME": "b"})
    assert code == EXIT_ERROR
    assert "certificate is for 'a', configuration says name = 'b'" in _one_error_line(out)


# -- commands that talk to an agent ------------------------------------------------------

STATUS: dict[str, Any] = {
    "name": "web-1",
    "spiffe_id": "spiffe://x0tta6bl4.mesh/node/web-1",
    "tags": ["role:web"],
    "listen": ["127.0.0.1:7100"],
    "overlay": {"ipv6": "fd12:3456:789a:1::1", "ipv4": "100.64.0.1"},
    "uptime_s": 12.0,
    "policy": None,
    "neighbours": [
        {
            "name": "db-1",
            "addr": "127.0.0.2:7100",
            "alive": True,
            "rtt_ms": 0.412,
            "loss": 0.0,
            "cost": 96,
            "session_age_s": 3.5,
        }
    ],
    "routes": [{"dst": "db-1", "via": "db-1", "metric": 96}],
    "sessions": [
        {
            "peer": "db-1",
            "established": True,
            "age_s": 3.4,
            "rekeys": 0,
            "algorithms": "X25519+ML-KEM-768",
        }
    ],
    "healing_events": [
        {
            "kind": "dead_neighbour",
            "subject": "relay-1",
            "action": "reroute",
            "outcome": "repaired",
            "mttd_s": 0.41,
            "mttr_s": 0.52,
        }
    ],
}


class _CannedAgent(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    requests: list[dict[str, Any]]
    messages: list[tuple[str, int, bytes]]


class _Handler(socketserver.StreamRequestHandler):
    server: _CannedAgent

    def _reply(self, obj: dict[str, Any]) -> None:
        self.wfile.write(json.dumps(obj).encode() + b"\n")

    def handle(self) -> None:
        req = json.loads(self.rfile.readline())
        self.server.requests.append(req)
        op = req["op"]
        if op == "status":
            self._reply({"ok": True, "status": STATUS})
        elif op == "ping":
            if req["dst"] == "db-1":
                self._reply({"ok": True, "rtt_s": 0.0042, "hops": 2, "via": "relay-1"})
            else:
                self._reply({"ok": False, "error": f"no answer from {req['dst']} within 0.1 s"})
        elif op == "send":
            self._reply({"ok": True, "bytes": len(base64.b64decode(req["data"]))})
        elif op == "listen":
            self._reply({"ok": True})
            for src, port, data in self.server.messages:
                self._reply({"src": src, "port": port, "data": base64.b64encode(data).decode()})
            self.rfile.read()  # until the client hangs up


@pytest.fixture
def agent_sock() -> Iterator[tuple[Path, _CannedAgent]]:
    d = Path(tempfile.mkdtemp(prefix="x0t-cli-"))  # short: a socket path has 108 bytes
    path = d / "agent.sock"
    server = _CannedAgent(str(path), _Handler)
    server.requests, server.messages = [], []
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    t.start()
    try:
        yield path, server
    finally:
        server.shutdown()
        server.server_close()
        t.join(5)
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize(
    "cmd",
    [("status",), ("ping", "db-1", "-n", "1"), ("send", "db-1", "7000", "hi"), ("listen", "7000")],
)
def test_no_agent_exits_3_with_one_sentence(tmp_path: Path, cmd: tuple[str, ...]) -> None:
    sock = tmp_path / "missing.sock"
    code, out = run(*cmd, "--socket", str(sock))
    assert code == EXIT_UNREACHABLE, out
    assert _one_error_line(out) == (
        f"error: no agent is listening on {sock} (is 'x0t node run' up?)"
    )


def test_status_needs_to_know_which_node() -> None:
    code, out = run("status")
    assert code == EXIT_ERROR
    assert _one_error_line(out) == "error: say which node: --config FILE or --socket PATH"


def test_status_prints_the_node(agent_sock: tuple[Path, _CannedAgent]) -> None:
    sock, _ = agent_sock
    code, out = run("status", "--socket", str(sock))
    assert code == 0, out
    assert "web-1 spiffe://x0tta6bl4.mesh/node/web-1  tags role:web" in out
    assert "overlay fd12:3456:789a:1::1, 100.64.0.1" in out
    assert "policy none (deny all)" in out
    for needle in ("127.0.0.2:7100", "0.41", "reroute", "repaired", "X25519+ML-KEM-768"):
        assert needle in out, needle


def test_status_json(agent_sock: tuple[Path, _CannedAgent]) -> None:
    sock, _ = agent_sock
    code, out = run("status", "--socket", str(sock), "--json")
    assert code == 0, out
    assert json.loads(out) == STATUS


def test_status_finds_the_socket_from_the_config_or_state_dir(
    agent_sock: tuple[Path, _CannedAgent], tmp_path: Path
) -> None:
    sock, _ = agent_sock
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'name = "web-1"\nstate_dir = "st"\n[api]\nsocket = "{sock}"\n')
    code, out = run("status", "--config", str(cfg), "--json")
    assert code == 0 and json.loads(out)["name"] == "web-1", out
    code, out = run("status", "--json", env={"X0T_STATE_DIR": str(sock.parent)})
    assert code == 0 and json.loads(out)["name"] == "web-1", out


def test_ping(agent_sock: tuple[Path, _CannedAgent]) -> None:
    sock, server = agent_sock
    code, out = run("ping", "db-1", "--socket", str(sock), "-n", "2", "--timeout", "0.5")
    assert code == 0, out
    assert out.count("db-1: rtt 4.20 ms, 2 hops, via relay-1") == 2
    assert [r["timeout"] for r in server.requests] == [0.5, 0.5]


def test_ping_without_answer_exits_4(agent_sock: tuple[Path, _CannedAgent]) -> None:
    sock, _ = agent_sock
    code, out = run("ping", "gone", "--socket", str(sock), "-n", "1", "--timeout", "0.1")
    assert code == EXIT_NO_ANSWER
    assert "gone: no answer from gone within 0.1 s" in out


def test_send(agent_sock: tuple[Path, _CannedAgent]) -> None:
    sock, server = agent_sock
    code, out = run("send", "db-1", "7000", "héllo", "--socket", str(sock))
    assert code == 0, out
    assert "sent 6 bytes to db-1:7000" in out
    (req,) = server.requests
    assert (req["dst"], req["port"], base64.b64decode(req["data"])) == (
        "db-1",
        7000,
        "héllo".encode(),
    )


def test_send_from_stdin(agent_sock: tuple[Path, _CannedAgent]) -> None:
    sock, server = agent_sock
    result = runner.invoke(app, ["send", "db-1", "7", "-", "--socket", str(sock)], input="a\nb")
    assert result.exit_code == 0, result.output
    assert base64.b64decode(server.requests[0]["data"]) == b"a\nb"


@pytest.mark.parametrize("port", ["0", "65535", "65536", "http"])
def test_send_and_listen_check_the_port(tmp_path: Path, port: str) -> None:
    sock = str(tmp_path / "s.sock")
    assert run("send", "db-1", port, "x", "--socket", sock)[0] == EXIT_USAGE
    assert run("listen", port, "--socket", sock)[0] == EXIT_USAGE


def test_listen_prints_messages(agent_sock: tuple[Path, _CannedAgent]) -> None:
    sock, server = agent_sock
    server.messages = [("db-1", 7000, b"one"), ("db-2", 7000, b"\xfftwo")]
    code, out = run("listen", "7000", "--socket", str(sock), "--count", "2")
    assert code == 0, out
    assert out.splitlines() == ["db-1:7000 one", "db-2:7000 \ufffdtwo"]


def test_listen_that_hears_too_little_exits_4(agent_sock: tuple[Path, _CannedAgent]) -> None:
    sock, server = agent_sock
    server.messages = [("db-1", 7000, b"only one")]
    code, out = run("listen", "7000", "--socket", str(sock), "--count", "2", "--timeout", "0.1")
    assert code == EXIT_NO_ANSWER
    assert "db-1:7000 only one" in out


def test_a_socket_file_nobody_listens_on_is_unreachable(tmp_path: Path) -> None:
    d = Path(tempfile.mkdtemp(prefix="x0t-cli-"))
    try:
        stale = d / "agent.sock"
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(stale))  # left behind by a killed agent
        code, out = run("status", "--socket", str(stale))
        assert code == EXIT_UNREACHABLE
        assert "no agent is listening on" in _one_error_line(out)
    finally:
        shutil.rmtree(d, ignore_errors=True)
