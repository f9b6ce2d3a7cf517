"""``x0t node join`` and the renewal loop against a real control plane on loopback
(uvicorn in a thread, ``tests/control/live.py``): what lands in the state directory, that
the agent's own start-up checks accept it, what is refused before anything is sent or
written, and renewal (due time, success, outage, refusal, key rotation)."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from tests.control.live import LiveControl, running_control_plane
from x0tta6bl4.api.enroll import JoinTokenText
from x0tta6bl4.cli import app
from x0tta6bl4.control.models import Node, PolicyVersion
from x0tta6bl4.identity.bundle import TrustBundle
from x0tta6bl4.identity.cert import NodeCertificate
from x0tta6bl4.identity.store import (
    NODE_CERT_FILE,
    NODE_KEY_FILE,
    NODE_STATIC_KEY_FILE,
    NodeCredentials,
)
from x0tta6bl4.node.agent import Agent
from x0tta6bl4.node.config import load_settings, render_template, settings_from_text
from x0tta6bl4.node.control_client import ControlClient, ControlError
from x0tta6bl4.node.join import JoinError, join, set_control_url
from x0tta6bl4.node.renew import Renewer
from x0tta6bl4.node.state import BUNDLE_FILE, CRL_FILE, POLICY_FILE, StateDir
from x0tta6bl4.policy.signed import SignedPolicy

runner = CliRunner()


def cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveControl]:
    from x0tta6bl4.control.settings import ControlSettings

    with running_control_plane(ControlSettings(data_dir=tmp_path / "control")) as lc:
        yield lc


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.upper().startswith("X0T_"):
            monkeypatch.delenv(key)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _agent_accepts(config: Path) -> Agent:
    """What ``x0t node run`` checks before it starts the agent."""
    return Agent.from_settings(load_settings(config).runtime())


def _write_config(state: Path, name: str) -> Path:
    cfg = state.parent / f"{name}.toml"
    cfg.write_text(render_template(name, str(state), ["127.0.0.1:7100"], []))
    return cfg


# --- joining ------------------------------------------------------------------------------


def test_join_writes_a_state_directory_the_agent_accepts(live: LiveControl, tmp_path: Path) -> None:
    tok = live.create_token(name_pattern="web-*", tags=["role:web", "env:prod"])
    state = tmp_path / "web-1"
    res = join(live.url, tok["token"], state, "web-1", ["role:web"])
    assert (res.name, res.tags, res.reused_keys) == ("web-1", ("role:web",), False)
    assert res.control_url == live.url and res.peers == {} and res.policy_version is None
    creds = NodeCredentials.load(state)
    assert creds.cert.serial == res.serial and creds.cert.tags == ("role:web",)
    assert _mode(state) == 0o700
    assert _mode(state / NODE_KEY_FILE) == 0o600 and _mode(state / NODE_STATIC_KEY_FILE) == 0o600
    bundle = TrustBundle.from_pem((state / BUNDLE_FILE).read_bytes())
    assert bundle.to_pem() == live.ctx.ca.bundle_pem
    assert (state / CRL_FILE).exists() and not (state / POLICY_FILE).exists()
    assert time.time() < res.renew_after < res.not_after
    agent = _agent_accepts(_write_config(state, "web-1"))
    assert agent.creds.cert.serial == res.serial and agent.crl is not None


def test_join_brings_the_policy_and_bootstrap_peers(live: LiveControl, tmp_path: Path) -> None:
    first = join(live.url, live.create_token()["token"], tmp_path / "a", "a")
    signed = SignedPolicy.sign("version 7\nallow from any to any\n", live.ctx.ca.ca._key)

    async def setup() -> None:
        async with live.ctx.db.session() as s:
            s.add(
                PolicyVersion(
                    version=7,
                    source="",
                    signed=signed.to_bytes(),
                    created_at=time.time(),
                    created_by="t",
                )
            )
            await s.execute(
                update(Node).where(Node.name == "a").values(endpoints=["127.0.0.1:7101"])
            )
            await s.commit()

    live.call(setup)
    res = join(live.url, live.create_token()["token"], tmp_path / "b", "b")
    assert res.peers == {"a": "127.0.0.1:7101"} and res.policy_version == 7
    state = StateDir(tmp_path / "b")
    assert state.load_peers() == {"a": "127.0.0.1:7101"}
    assert (tmp_path / "b" / POLICY_FILE).read_bytes() == signed.to_bytes()
    assert first.serial != res.serial
    _agent_accepts(_write_config(tmp_path / "b", "b"))


def test_join_refuses_a_control_plane_whose_key_is_not_the_tokens(
    live: LiveControl, tmp_path: Path
) -> None:
    real = JoinTokenText.parse(live.create_token()["token"])
    forged = JoinTokenText(real.token_id, real.secret, "ab" * 32)
    state = tmp_path / "n1"
    with pytest.raises(JoinError, match="nothing was sent"):
        join(live.url, str(forged), state, "n1")
    assert not state.exists()
    (listed,) = live.http.get("/v1/tokens", headers=live.auth()).json()
    assert listed["uses"] == 0


def test_join_refuses_to_overwrite_credentials_and_writes_nothing_when_refused(
    live: LiveControl, tmp_path: Path
) -> None:
    state = tmp_path / "n1"
    join(live.url, live.create_token()["token"], state, "n1")
    before = {p.name: p.read_bytes() for p in state.iterdir()}
    with pytest.raises(JoinError, match="already holds a certificate"):
        join(live.url, live.create_token()["token"], state, "n1")
    # The service refuses (the name is not granted): nothing is written either.
    other = tmp_path / "n2"
    tok = live.create_token(name_pattern="web-*")["token"]
    with pytest.raises(ControlError, match="name pattern") as info:
        join(live.url, tok, other, "n2")
    assert info.value.status == 403 and not other.exists()
    assert {p.name: p.read_bytes() for p in state.iterdir()} == before


def test_cli_init_then_join_uses_the_init_keys_and_sets_the_control_url(
    live: LiveControl, tmp_path: Path
) -> None:
    state = tmp_path / "web-2"
    code, out = cli("node", "init", "web-2", "--state-dir", str(state), "--tag", "role:web")
    assert code == 0, out
    keys = {n: (state / n).read_bytes() for n in (NODE_KEY_FILE, NODE_STATIC_KEY_FILE)}
    tok = live.create_token(tags=["role:web"])["token"]
    cfg = state / "node.toml"
    code, out = cli("node", "join", live.url, "--token", tok, "--config", str(cfg))
    assert code == 0, out
    assert "joined" in out and "keys from 'x0t node init'" in out and "role:web" in out
    assert {n: (state / n).read_bytes() for n in keys} == keys  # private keys kept
    settings = load_settings(cfg)
    assert settings.control.url == live.url
    agent = _agent_accepts(cfg)
    assert agent.creds.cert.tags == ("role:web",)
    # Only the url line changed.
    text = cfg.read_text()
    assert text.count("\n") == render_template("web-2", str(state), ["127.0.0.1:7100"], []).count(
        "\n"
    )


def test_cli_join_with_a_state_dir_writes_a_configuration(
    live: LiveControl, tmp_path: Path
) -> None:
    state = tmp_path / "edge-1"
    tok = live.create_token(tags=["role:edge", "zone:a"])["token"]
    code, out = cli(
        "node",
        "join",
        live.url,
        "--token",
        tok,
        "--state-dir",
        str(state),
        "--name",
        "edge-1",
        "--tags",
        "role:edge,zone:a",
        "--listen",
        "127.0.0.1:7177",
    )
    assert code == 0, out
    cfg = state / "node.toml"
    settings = load_settings(cfg)
    assert settings.control.url == live.url and settings.listen == ["127.0.0.1:7177"]
    assert _agent_accepts(cfg).creds.cert.tags == ("role:edge", "zone:a")


def test_cli_join_errors_are_one_line(live: LiveControl, tmp_path: Path) -> None:
    code, out = cli("node", "join", live.url, "--token", "x0tj1.nope")
    assert code == 1 and "say which node" in out
    code, out = cli(
        "node",
        "join",
        live.url,
        "--token",
        "x0tj1.nope",
        "--state-dir",
        str(tmp_path / "s"),
        "--name",
        "n",
    )
    assert code == 1 and "not a join token" in out and "Traceback" not in out
    tok = live.create_token()["token"]
    code, out = cli(
        "node",
        "join",
        "http://127.0.0.1:1",
        "--token",
        tok,
        "--state-dir",
        str(tmp_path / "s"),
        "--name",
        "n",
    )
    assert code == 1 and "unreachable" in out
    assert not (tmp_path / "s").exists()


def test_set_control_url_edits_one_line() -> None:
    text = render_template("a", "/s", ["127.0.0.1:7100"], [])
    new = set_control_url(text, "https://cp.example:8700/x")
    assert [ln for ln in new.splitlines() if ln not in text.splitlines()] == [
        'url = "https://cp.example:8700/x"'
    ]
    assert settings_from_text(new, Path("/s/n.toml")).control.url == "https://cp.example:8700/x"
    assert set_control_url('name = "a"\n', "http://h").endswith('[control]\nurl = "http://h"\n')
    crlf = '[control]\r\nreport_interval = 5.0\r\n[log]\r\nlevel = "info"\r\n'
    assert set_control_url(crlf, "http://h") == (
        '[control]\r\nurl = "http://h"\r\nreport_interval = 5.0\r\n[log]\r\nlevel = "info"\r\n'
    )
    with pytest.raises(JoinError, match="by hand"):
        set_control_url('control = { url = "" }\n', "http://h")


# --- renewal ------------------------------------------------------------------------------


def _joined(live: LiveControl, tmp_path: Path, name: str = "r1") -> Path:
    state = tmp_path / name
    join(live.url, live.create_token(tags=["role:web"])["token"], state, name, ["role:web"])
    return state


def test_renewer_is_due_at_half_life_and_renews(live: LiveControl, tmp_path: Path) -> None:
    state = _joined(live, tmp_path)
    old = NodeCredentials.load(state).cert
    got: list[bytes] = []
    r = Renewer(state, ControlClient(live.url), got.append)
    assert not r.due()
    assert r.due(r.renew_at()) and r.renew_at() < old.not_after
    new = asyncio.run(r.renew_once())
    assert got == [new.pem] and new.serial != old.serial and new.tags == old.tags
    creds = NodeCredentials.load(state)
    assert creds.cert.serial == new.serial and creds.static_private.public_key() == old.static_key
    _agent_accepts(_write_config(state, "r1"))


def test_renewer_retries_through_an_outage_and_keeps_the_certificate(
    live: LiveControl, tmp_path: Path
) -> None:
    state = _joined(live, tmp_path)
    before = (state / NODE_CERT_FILE).read_bytes()
    shift = [10 * 86400.0]  # the clock says: long past half life
    got: list[bytes] = []

    def on_new(pem: bytes) -> None:
        got.append(pem)
        shift[0] = 0.0  # the new certificate is not due again for hours

    r = Renewer(
        state,
        ControlClient("http://127.0.0.1:1", timeout=2),
        on_new,
        min_backoff=0.01,
        max_backoff=0.05,
        clock=lambda: time.time() + shift[0],
    )

    async def scenario() -> None:
        task = asyncio.create_task(r.run())
        try:
            async with asyncio.timeout(30):
                while r.failures < 3:
                    await asyncio.sleep(0.01)
            assert (state / NODE_CERT_FILE).read_bytes() == before
            assert "unreachable" in (r.last_error or "")
            r.client = ControlClient(live.url)  # the control plane is back
            async with asyncio.timeout(30):
                while not got:
                    await asyncio.sleep(0.01)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(scenario())
    assert r.renewals == 1 and r.last_error is None
    assert (state / NODE_CERT_FILE).read_bytes() == got[0] != before


def test_a_revoked_node_cannot_renew_and_keeps_its_file(live: LiveControl, tmp_path: Path) -> None:
    state = _joined(live, tmp_path)
    before = (state / NODE_CERT_FILE).read_bytes()

    async def revoke() -> None:
        async with live.ctx.db.session() as s:
            await s.execute(update(Node).where(Node.name == "r1").values(status="revoked"))
            await s.commit()
        live.ctx.cert_cache.clear()

    live.call(revoke)
    r = Renewer(state, ControlClient(live.url), lambda pem: None)
    with pytest.raises(ControlError, match="revoked") as info:
        asyncio.run(r.renew_once())
    assert info.value.status == 401
    assert (state / NODE_CERT_FILE).read_bytes() == before


def test_renewer_can_rotate_keys(live: LiveControl, tmp_path: Path) -> None:
    state = _joined(live, tmp_path)
    old = NodeCredentials.load(state)
    seen: list[Any] = []

    async def on_new(pem: bytes) -> None:
        seen.append(NodeCertificate.from_pem(pem))

    r = Renewer(state, ControlClient(live.url), on_new, rotate_keys=True)
    new = asyncio.run(r.renew_once())
    creds = NodeCredentials.load(state)
    assert creds.cert.serial == new.serial == seen[0].serial
    assert creds.static_private.public_key() != old.static_private.public_key()
    assert _mode(state / NODE_KEY_FILE) == 0o600
    _agent_accepts(_write_config(state, "r1"))


def test_a_node_that_lost_its_certificate_joins_again_with_its_keys(
    live: LiveControl, tmp_path: Path
) -> None:
    state = _joined(live, tmp_path)
    keys = {n: (state / n).read_bytes() for n in (NODE_KEY_FILE, NODE_STATIC_KEY_FILE)}
    first = NodeCredentials.load(state).cert
    (state / NODE_CERT_FILE).rename(tmp_path / "old.crt")
    res = join(live.url, live.create_token(tags=["role:web"])["token"], state, "r1", ["role:web"])
    assert res.reused_keys and res.serial != first.serial
    assert {n: (state / n).read_bytes() for n in keys} == keys
    # Another machine (other keys) cannot take the name.
    with pytest.raises(ControlError, match="other keys") as info:
        join(live.url, live.create_token()["token"], tmp_path / "thief", "r1")
    assert info.value.status == 409
