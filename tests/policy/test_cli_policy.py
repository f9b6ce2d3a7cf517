"""``x0t policy sign`` and ``x0t policy check`` through typer's CliRunner."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tests.identity.helpers import TD
from tests.policy.helpers import EXAMPLE, with_version
from x0tta6bl4.cli_policy import EXIT_ALLOW, EXIT_DENY, EXIT_ERROR, policy_app
from x0tta6bl4.identity import CertificateAuthority
from x0tta6bl4.policy import SignedPolicy

# The group as cli.py registers it.
app = typer.Typer(pretty_exceptions_enable=False)
app.add_typer(policy_app, name="policy")
runner = CliRunner()


def run(*args: str | Path) -> tuple[int, str]:
    result = runner.invoke(app, ["policy", *map(str, args)])
    assert "Traceback" not in result.output
    return result.exit_code, result.output


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    f = tmp_path / "policy.txt"
    f.write_text(EXAMPLE)
    return f


@pytest.fixture
def signed_file(text_file: Path, ca_dir: Path) -> Path:
    code, out = run("sign", text_file, "--dir", ca_dir)
    assert code == 0, out
    return text_file.with_name("policy.txt.signed")


def test_sign(signed_file: Path, ca: CertificateAuthority) -> None:
    assert SignedPolicy.from_bytes(signed_file.read_bytes(), ca.bundle()).version == 3
    assert signed_file.stat().st_mode & 0o777 == 0o644


def test_sign_out_and_env(text_file: Path, ca_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "sub" / "p.signed"
    result = runner.invoke(
        app,
        ["policy", "sign", str(text_file), "--out", str(target)],
        env={"X0T_CA_DIR": str(ca_dir)},
    )
    assert result.exit_code == 0, result.output
    assert f"signed policy version 3 (4 rules) -> {target}" in result.output
    assert target.exists()


def test_sign_refuses_malformed(tmp_path: Path, ca_dir: Path) -> None:
    bad = tmp_path / "policy.txt"
    bad.write_text("version 1\n\n\nallow from any too any\n")
    code, out = run("sign", bad, "--dir", ca_dir)
    assert code == EXIT_ERROR
    assert f"error: {bad} line 4, column 16: expected 'to', got 'too'" in out
    assert not (tmp_path / "policy.txt.signed").exists()


def test_sign_refuses_a_version_nodes_would_refuse(
    signed_file: Path, text_file: Path, ca_dir: Path, ca: CertificateAuthority
) -> None:
    # Same text again: fine (a fresh signature over the same version).
    assert run("sign", text_file, "--dir", ca_dir)[0] == 0
    text_file.write_text(EXAMPLE.replace("5432", "5433"))
    code, out = run("sign", text_file, "--dir", ca_dir)
    assert code == EXIT_ERROR and "already holds policy version 3" in out
    assert "above 3" in out
    text_file.write_text(with_version(EXAMPLE, 2))
    assert run("sign", text_file, "--dir", ca_dir)[0] == EXIT_ERROR
    assert SignedPolicy.from_bytes(signed_file.read_bytes(), ca.bundle()).text == EXAMPLE.encode()
    assert run("sign", text_file, "--dir", ca_dir, "--force")[0] == 0
    text_file.write_text(with_version(EXAMPLE, 4))
    assert run("sign", text_file, "--dir", ca_dir)[0] == 0
    assert SignedPolicy.from_bytes(signed_file.read_bytes(), ca.bundle()).version == 4


def test_sign_without_a_ca(text_file: Path, tmp_path: Path) -> None:
    code, out = run("sign", text_file, "--dir", tmp_path / "nothing")
    assert code == EXIT_ERROR and "no CA in" in out


CHECKS = [
    (["web-1", "db-1", "tcp/5432", "--from-tag", "role:web", "--to-tag", "role:db"], EXIT_ALLOW),
    (["web-1", "db-1", "tcp/5433", "--from-tag", "role:web", "--to-tag", "role:db"], EXIT_DENY),
    (["lab-1", "api-1", "msg/7000", "--to-tag", "role:api"], EXIT_DENY),
    (["x", "api-1", "msg/7000", "--to-tag", "role:api"], EXIT_ALLOW),
    (["x", "api-1", "icmp", "--to-tag", "role:api"], EXIT_ALLOW),
    ([f"spiffe://{TD}/node/x", f"spiffe://{TD}/node/y", "icmp"], EXIT_DENY),
]


@pytest.mark.parametrize(("args", "code"), CHECKS)
def test_check_signed(signed_file: Path, ca_dir: Path, args: list[str], code: int) -> None:
    got, out = run("check", *args, "--policy", signed_file, "--ca-dir", ca_dir)
    assert got == code, out
    assert out.startswith("allow " if code == EXIT_ALLOW else "deny ")
    assert "signature verified" in out
    got, _ = run("check", *args, "--policy", signed_file, "--bundle", ca_dir / "bundle.pem")
    assert got == code


def test_check_output(signed_file: Path, ca_dir: Path) -> None:
    code, out = run(
        "check", "lab-1", "db-1", "tcp/5432", "--from-tag", "role:web", "--to-tag", "role:db",
        "--policy", signed_file, "--ca-dir", ca_dir,
    )  # fmt: skip
    assert code == EXIT_ALLOW
    assert out.splitlines() == [
        f"allow spiffe://{TD}/node/lab-1 -> spiffe://{TD}/node/db-1 tcp/5432",
        "rule    line:3  allow from tag:role:web to tag:role:db port tcp/5432",
        "reason  allowed by line 3",
        f"policy  version 3, signature verified ({TD} CA)",
    ]
    code, out = run("check", "a", "b", "udp/1", "--policy", signed_file, "--ca-dir", ca_dir)
    assert code == EXIT_DENY
    assert "rule    default-deny" in out and "no rule matches: default deny" in out


def test_check_draft(text_file: Path) -> None:
    args = ["check", "web-1", "db-1", "tcp/5432", "--from-tag", "role:web", "--to-tag", "role:db"]
    code, out = run(*args, "--policy", text_file)
    assert code == EXIT_ERROR and "is not signed" in out and "--unsigned" in out
    code, out = run(*args, "--policy", text_file, "--unsigned")
    assert code == EXIT_ALLOW and "unsigned draft" in out
    code, out = run(*args, "--policy", text_file, "--unsigned", "--trust-domain", "lab.mesh")
    assert code == EXIT_ALLOW and "spiffe://lab.mesh/node/web-1 -> spiffe://lab.mesh/" in out


def test_check_errors(
    signed_file: Path, text_file: Path, ca_dir: Path, other_ca: CertificateAuthority
) -> None:
    flow = ["check", "web-1", "db-1", "tcp/5432", "--policy"]
    cases: list[tuple[list[str | Path], str]] = [
        ([*flow, signed_file], "is signed: pass --ca-dir or --bundle"),
        ([*flow, signed_file, "--ca-dir", other_ca.directory], "policy refused (bad_signature)"),
        ([*flow, signed_file, "--ca-dir", ca_dir, "--bundle", ca_dir / "bundle.pem"], "not both"),
        ([*flow, signed_file, "--ca-dir", ca_dir / "missing"], "No such file"),
        (["check", "Web", "db-1", "tcp/1", "--policy", text_file, "--unsigned"], "node name"),
        (["check", "spiffe://X", "db", "tcp/1", "--policy", text_file, "--unsigned"], "SPIFFE"),
        (["check", "a", "b", "tcp", "--policy", text_file, "--unsigned"], "needs a port"),
        (
            ["check", "a", "b", "icmp", "--policy", text_file, "--unsigned", "--from-tag", "x"],
            "tag",
        ),
        (["check", "a", "b", "--policy", text_file], "Missing argument"),  # usage: still 1
        (["check", "a", "b", "icmp", "--policy", "/nonexistent"], "does not exist"),
    ]
    for args, needle in cases:
        code, out = run(*args)
        assert code == EXIT_ERROR, (args, out)
        assert needle in out, (args, out)
    text_file.write_text("version 1\nallow from any to any port tcp/0-99999\n")
    code, out = run(*flow, text_file, "--unsigned")
    assert code == EXIT_ERROR and "line 2, column 32: port 99999 is above 65535" in out
