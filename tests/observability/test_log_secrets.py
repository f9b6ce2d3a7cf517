"""No secret in the logs (or spans): a real ``x0t serve`` and two real agents, every
process at DEBUG with JSON logs and tracing on, go through an enrollment (``x0t node
join``), handshakes between the agents, a policy push and operator calls with API keys;
then every log line and span attribute is searched for the join token, API keys and the
bytes of every private key on disk, in every encoding they could leak in."""

from __future__ import annotations

import base64
import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.observability.otlp_collector import OtlpCollector
from tests.observability.test_tracing import traced_env, udp_base_port
from x0tta6bl4.node.localcontrol import stop_process

pytestmark = pytest.mark.slow

POLICY = "version 1\nallow from tag:role:t to tag:role:t port msg/7000\n"


def key_needles(path: Path) -> dict[str, str]:
    """What a leak of the private key in ``path`` (PKCS#8 PEM) could look like: the PEM,
    each base64 line of it, the DER and the raw 32-byte seed (the DER's tail, for both
    X-Wing and ML-DSA keys) in hex and base64 (standard, URL-safe, unpadded)."""
    pem = path.read_text()
    out: dict[str, str] = {f"{path.name} PEM": pem.strip()}
    blocks = re.findall(r"-----BEGIN [A-Z ]+-----\n(.*?)\n-----END", pem, re.S)
    assert blocks, f"{path} is not PEM"
    for block in blocks:
        lines = block.split()
        for i, line in enumerate(lines):
            if len(line) >= 16:
                out[f"{path.name} PEM line {i}"] = line
        der = base64.b64decode("".join(lines))
        for what, raw in (("DER", der), ("seed", der[-32:])):
            out[f"{path.name} {what} hex"] = raw.hex()
            out[f"{path.name} {what} HEX"] = raw.hex().upper()
            out[f"{path.name} {what} b64"] = base64.b64encode(raw).decode().rstrip("=")
            out[f"{path.name} {what} b64url"] = base64.urlsafe_b64encode(raw).decode().rstrip("=")
            out[f"{path.name} {what} repr"] = repr(raw)[2:-1][:64]
    return out


def wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


@contextlib.contextmanager
def agent(python: str, config: Path, env: dict[str, str], log: Path) -> Iterator[Any]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [python, "-m", "x0tta6bl4.cli", "node", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        stop_process(proc)


def status(state: Path) -> dict[str, Any] | None:
    from x0tta6bl4.node.client import NodeApiError, NodeClient

    with contextlib.suppress(NodeApiError, OSError, ValueError):
        return NodeClient(state / "agent.sock", timeout=5.0).status()
    return None


def test_no_key_or_token_material_in_logs_or_spans(tmp_path: Path) -> None:
    from x0tta6bl4.node.client import NodeClient
    from x0tta6bl4.node.localcontrol import LocalControlPlane

    texts: dict[str, str] = {}
    with OtlpCollector() as collector:
        env = traced_env(collector)
        env["X0T_LOG_LEVEL"] = "debug"  # x0t serve
        env["X0T_LOG__LEVEL"] = "debug"  # the agents ([log] level)
        env["X0T_LOG__FORMAT"] = "json"
        base = udp_base_port(2)
        addrs = {"a": f"127.0.0.1:{base}", "b": f"127.0.0.2:{base + 1}"}
        cp = LocalControlPlane(tmp_path / "control", env=env)
        try:
            cp.start()
            operator = cp.call("POST", "/v1/api-keys", {"name": "ops", "role": "operator"})["key"]
            cp.client.request("GET", "/v1/nodes", bearer=operator)
            token = cp.create_token(["role:t"], uses=2)
            joins = []
            for name in ("a", "b"):
                joined = subprocess.run(
                    [
                        *(sys.executable, "-m", "x0tta6bl4.cli", "node", "join", cp.url),
                        *("--token", token, "--state-dir", str(tmp_path / name)),
                        *("--name", name, "--tag", "role:t", "--listen", addrs[name]),
                    ],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                assert joined.returncode == 0, joined.stderr[-2000:]
                joins.append(joined.stdout + joined.stderr)
            texts["x0t node join"] = "\n".join(joins)
            env_b = dict(env, X0T_PEERS=json.dumps([addrs["a"]]))
            with (
                agent(sys.executable, tmp_path / "a" / "node.toml", env, tmp_path / "a.log"),
                agent(sys.executable, tmp_path / "b" / "node.toml", env_b, tmp_path / "b.log"),
            ):

                def linked() -> bool:
                    st = status(tmp_path / "a")
                    return st is not None and any(
                        nb["name"] == "b" and nb["alive"] for nb in st["neighbours"]
                    )

                wait(linked, 30.0, "a and b to link (a handshake)")
                # End to end too: the e2e session's handshake.
                assert NodeClient(tmp_path / "a" / "agent.sock").ping("b", timeout=5.0)
                version = cp.set_policy(POLICY.replace("7000", "7001"), "push test")

                def pushed() -> bool:
                    sts = [status(tmp_path / n) for n in ("a", "b")]
                    return all(st is not None and st["policy"] == version for st in sts)

                wait(pushed, 15.0, "the policy push to both agents")
            cp.stop()
            spans = collector.wait_for(
                lambda s: any(x.name == "x0t.push" for x in s), 10.0, "a push span"
            )
        finally:
            cp.stop()
    texts["x0t serve"] = cp.log_path.read_text(errors="replace")
    texts["agent a"] = (tmp_path / "a.log").read_text(errors="replace")
    texts["agent b"] = (tmp_path / "b.log").read_text(errors="replace")
    texts["spans"] = "\n".join(
        f"{s.name} {json.dumps(s.attributes, sort_keys=True)}" for s in spans
    )

    # The logs are the real thing: DEBUG JSON lines of each step, with trace ids.
    serve_lines = [json.loads(x) for x in texts["x0t serve"].splitlines() if x.startswith("{")]
    assert {"node_enrolled", "control_plane_started"} <= {x["event"] for x in serve_lines}
    assert any(x.get("trace_id") for x in serve_lines if x["event"] == "node_enrolled")
    for name in ("agent a", "agent b"):
        lines = [json.loads(x) for x in texts[name].splitlines() if x.startswith("{")]
        events = {x["event"] for x in lines}
        assert {"node_started", "policy_loaded"} <= events, (name, sorted(events))
        assert any(x["level"] == "debug" and "handshake_complete" in x["event"] for x in lines)
    assert {s.name for s in spans} >= {"x0t.enroll", "x0t.push", "x0t.handshake.completed"}

    needles: dict[str, str] = {"join token": token, "join token secret": token.split(".")[2]}
    for label, key in (("admin API key", cp.admin_key), ("operator API key", operator)):
        needles[label] = key
        needles[f"{label} secret"] = key.split("_", 2)[2]
    for path in (
        tmp_path / "a" / "node.key",
        tmp_path / "a" / "node-static.key",
        tmp_path / "b" / "node.key",
        tmp_path / "b" / "node-static.key",
        tmp_path / "control" / "ca" / "ca.key",
        tmp_path / "control" / "ca" / "enroll.key",
    ):
        needles.update(key_needles(path))
    leaks = [
        f"{label} in {where}"
        for where, text in texts.items()
        for label, needle in needles.items()
        if needle in text
    ]
    assert not leaks, leaks


def test_the_search_finds_a_key_in_each_encoding(tmp_path: Path) -> None:
    """The detector itself: a key written into a log line in any of the encodings above
    is found (so an empty result above means no leak, not a blind search)."""
    from x0tta6bl4.crypto.hybrid import HybridPrivateKey
    from x0tta6bl4.crypto.keys import save_private_key
    from x0tta6bl4.crypto.sign import SigningKey

    for key in (HybridPrivateKey.generate(), SigningKey.generate()):
        path = tmp_path / "k.key"
        save_private_key(path, key)
        needles = key_needles(path)
        der = base64.b64decode("".join(path.read_text().splitlines()[1:-1]))
        seed = der[-32:]
        for leaked in (
            json.dumps({"event": "x", "key": path.read_text()}),  # PEM, JSON-escaped
            json.dumps({"event": "x", "seed": seed.hex()}),
            json.dumps({"event": "x", "seed": base64.b64encode(seed).decode()}),
            json.dumps({"event": "x", "der": base64.urlsafe_b64encode(der).decode()}),
            f"{{'event': 'x', 'raw': {seed!r}}}",
        ):
            assert any(n in leaked for n in needles.values()), leaked
