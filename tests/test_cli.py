"""The x0t command line: typer's CliRunner for every command, plus one real subprocess."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import mlkem
from typer.testing import CliRunner

import x0tta6bl4.crypto  # noqa: F401  (loaded, so the test below can unload it)
from x0tta6bl4 import cli
from x0tta6bl4.cli import Reason, app
from x0tta6bl4.identity import REVOCATION_REASONS, NodeCredentials

runner = CliRunner()


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    d = tmp_path / "ca"
    code, out = run("ca", "init", "--dir", str(d))
    assert code == 0, out
    return d


def _serial(text: str) -> str:
    m = re.search(r"serial (0x[0-9a-f]+)", text)
    assert m, text
    return m.group(1)


def test_ca_init(ca_dir: Path) -> None:
    assert (ca_dir / "ca.key").exists() and (ca_dir / "ca.crt").exists()
    code, out = run("ca", "init", "--dir", str(ca_dir))
    assert code == 1
    assert "already exists" in out
    assert "Traceback" not in out


def test_ca_init_custom_trust_domain(tmp_path: Path) -> None:
    code, out = run("ca", "init", "--dir", str(tmp_path), "--trust-domain", "lab.mesh")
    assert code == 0 and "spiffe://lab.mesh" in out
    code, out = run("ca", "init", "--dir", str(tmp_path / "x"), "--trust-domain", "Bad!")
    assert code == 1 and "invalid trust domain" in out


def test_issue_show_verify_revoke(ca_dir: Path) -> None:
    code, out = run(
        "cert", "issue", "db-1", "--tag", "role:db", "--tag", "site:eu-1", "--dir", str(ca_dir)
    )
    assert code == 0, out
    assert "spiffe://x0tta6bl4.mesh/node/db-1" in out
    serial = _serial(out)
    node = ca_dir / "nodes" / "db-1"
    creds = NodeCredentials.load(node)
    assert creds.cert.tags == ("role:db", "site:eu-1")
    assert (node / "bundle.pem").exists()
    assert f"{creds.cert.serial:#x}" == serial

    code, out = run("cert", "show", str(node / "node.crt"))
    assert code == 0, out
    for needle in (
        "node certificate",
        "spiffe://x0tta6bl4.mesh/node/db-1",
        serial,
        "role:db, site:eu-1",
        "ML-DSA-65",
        "X25519 + ML-KEM-768",
        "issuer",
    ):
        assert needle in out

    code, out = run("cert", "show", str(ca_dir / "ca.crt"))
    assert code == 0 and "CA certificate" in out and "spiffe://x0tta6bl4.mesh" in out

    code, out = run("cert", "verify", str(node / "node.crt"), "--dir", str(ca_dir))
    assert code == 0, out
    assert "verified spiffe://x0tta6bl4.mesh/node/db-1" in out and "version 1" in out

    code, out = run("cert", "revoke", serial, "--reason", "key-compromise", "--dir", str(ca_dir))
    assert code == 0, out
    assert "version 2" in out

    code, out = run("cert", "verify", str(node / "node.crt"), "--dir", str(ca_dir))
    assert code == 1
    assert "rejected (revoked)" in out

    code, out = run("cert", "revoke", serial, "--dir", str(ca_dir))
    assert code == 1 and "already revoked" in out


def test_verify_reports_expiry_and_garbage(ca_dir: Path, tmp_path: Path) -> None:
    code, out = run("cert", "issue", "n1", "--dir", str(ca_dir), "--validity-hours", "1")
    assert code == 0, out
    crt = ca_dir / "nodes" / "n1" / "node.crt"
    code, out = run(
        "cert", "verify", str(crt), "--dir", str(ca_dir), "--at", str(time.time() + 7200)
    )
    assert code == 1 and "rejected (expired)" in out
    junk = tmp_path / "junk.crt"
    junk.write_bytes(b"not a certificate")
    code, out = run("cert", "verify", str(junk), "--dir", str(ca_dir))
    assert code == 1 and "rejected (malformed)" in out
    code, out = run("cert", "show", str(junk))
    assert code == 1 and "error:" in out and "Traceback" not in out


def test_verify_der_file(ca_dir: Path, tmp_path: Path) -> None:
    run("cert", "issue", "n2", "--dir", str(ca_dir))
    der = tmp_path / "n2.der"
    der.write_bytes(NodeCredentials.load(ca_dir / "nodes" / "n2").cert.der)
    code, out = run("cert", "verify", str(der), "--dir", str(ca_dir))
    assert code == 0, out


def test_issue_refuses_overwrite_without_force(ca_dir: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "node"
    code, out = run("cert", "issue", "a", "--dir", str(ca_dir), "--out", str(out_dir))
    assert code == 0, out
    first = NodeCredentials.load(out_dir).cert.serial
    code, out = run("cert", "issue", "a", "--dir", str(ca_dir), "--out", str(out_dir))
    assert code == 1 and "--force" in out
    assert NodeCredentials.load(out_dir).cert.serial == first
    code, out = run("cert", "issue", "a", "--dir", str(ca_dir), "--out", str(out_dir), "--force")
    assert code == 0
    assert NodeCredentials.load(out_dir).cert.serial != first


def test_issue_bad_input(ca_dir: Path, tmp_path: Path) -> None:
    code, out = run("cert", "issue", "Bad_Name", "--dir", str(ca_dir))
    assert code == 1 and "invalid node name" in out
    code, out = run("cert", "issue", "ok", "--tag", "notag", "--dir", str(ca_dir))
    assert code == 1 and "invalid tag" in out
    code, out = run("cert", "issue", "ok", "--dir", str(tmp_path / "no-ca"))
    assert code == 1 and "no CA" in out


def test_revoke_bad_input(ca_dir: Path) -> None:
    code, out = run("cert", "revoke", "0x10", "--reason", "bogus", "--dir", str(ca_dir))
    assert code == 2
    code, out = run("cert", "revoke", "twelve", "--dir", str(ca_dir))
    assert code == 2 and "not a number" in out
    code, out = run("cert", "revoke", "0", "--dir", str(ca_dir))
    assert code == 1 and "positive" in out
    code, out = run("cert", "revoke", "4660", "--reason", "superseded", "--dir", str(ca_dir))
    assert code == 0 and "0x1234" in out


def test_reason_choices_match_identity() -> None:
    assert [r.value for r in Reason] == list(REVOCATION_REASONS)


def test_help_lists_groups() -> None:
    code, out = run("--help")
    assert code == 0 and "ca" in out and "cert" in out


def test_main_refuses_without_post_quantum_crypto(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(*_args: object) -> None:
        raise RuntimeError("ML-KEM is not available in this OpenSSL")

    monkeypatch.setattr(mlkem.MLKEM768PrivateKey, "generate", broken)
    # Re-run the import-time self-test: drop the package from sys.modules so main()'s
    # import executes it again (monkeypatch puts the original back afterwards).
    monkeypatch.delitem(sys.modules, "x0tta6bl4.crypto")
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "needs ML-KEM-768 and ML-DSA-65" in err
    assert "Traceback" not in err
    assert err.count("\n") == 1


def test_main_runs_the_app(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["x0t", "--help"])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 0
    assert "cert" in capsys.readouterr().out


def test_real_subprocess(tmp_path: Path) -> None:
    x0t = Path(sys.executable).parent / "x0t"
    assert x0t.exists()

    def sh(*args: str) -> str:
        proc = subprocess.run(
            [str(x0t), *args], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr + proc.stdout
        return proc.stdout

    sh("ca", "init", "--trust-domain", "x0tta6bl4.mesh", "--dir", "ca")
    out = sh("cert", "issue", "edge-1", "--tag", "role:edge", "--tag", "site:eu-1", "--dir", "ca")
    serial = _serial(out)
    out = sh("cert", "show", "ca/nodes/edge-1/node.crt")
    assert "spiffe://x0tta6bl4.mesh/node/edge-1" in out
    assert serial in out
    assert "role:edge, site:eu-1" in out
    assert (
        tmp_path / "ca" / "nodes" / "edge-1" / "node-static.key"
    ).stat().st_mode & 0o777 == 0o600


# --- node-generated keys: cert request, cert issue --csr ------------------------------------


def test_request_then_issue_from_csr(ca_dir: Path, tmp_path: Path) -> None:
    node = tmp_path / "edge-1"
    code, out = run("cert", "request", "edge-1", "--tag", "role:edge", "--dir", str(node))
    assert code == 0, out
    assert "node.csr" in out
    for key in ("node.key", "node-static.key"):
        assert (node / key).stat().st_mode & 0o777 == 0o600
    assert (node / "node.csr").read_bytes().startswith(b"-----BEGIN CERTIFICATE REQUEST-----")

    issued = tmp_path / "issued"
    code, out = run(
        "cert", "issue", "edge-1", "--tag", "role:edge", "--csr", str(node / "node.csr"),
        "--dir", str(ca_dir), "--out", str(issued),
    )  # fmt: skip
    assert code == 0, out
    assert "spiffe://x0tta6bl4.mesh/node/edge-1" in out
    # The CA side writes only the certificate and the bundle: it never saw a private key.
    assert sorted(p.name for p in issued.iterdir()) == ["bundle.pem", "node.crt"]
    for f in ("node.crt", "bundle.pem"):
        (node / f).write_bytes((issued / f).read_bytes())
    creds = NodeCredentials.load(node)
    assert f"{creds.cert.serial:#x}" == _serial(out)
    code, out = run("cert", "verify", str(node / "node.crt"), "--dir", str(ca_dir))
    assert code == 0, out

    # The same request again (renewal with the same keys) is fine, into a fresh directory.
    code, out = run(
        "cert", "issue", "edge-1", "--tag", "role:edge", "--csr", str(node / "node.csr"),
        "--dir", str(ca_dir),
    )  # fmt: skip
    assert code == 0, out
    assert (ca_dir / "nodes" / "edge-1" / "node.crt").exists()
    assert not (ca_dir / "nodes" / "edge-1" / "node.key").exists()


def test_issue_from_csr_refusals(ca_dir: Path, tmp_path: Path) -> None:
    node = tmp_path / "n"
    assert run("cert", "request", "n1", "--tag", "role:db", "--dir", str(node))[0] == 0
    csr = str(node / "node.csr")
    out_dir = str(tmp_path / "out")

    def issue(*args: str) -> tuple[int, str]:
        return run("cert", "issue", *args, "--csr", csr, "--dir", str(ca_dir), "--out", out_dir)

    code, out = issue("n2", "--tag", "role:db")
    assert code == 1 and "request is for 'n1', not 'n2'" in out
    code, out = issue("n1")
    assert code == 1 and "asks for tags role:db" in out
    bad = tmp_path / "bad.csr"
    der = bytearray((node / "node.csr").read_bytes())
    der[200] ^= 0x01  # inside the base64 body
    bad.write_bytes(bytes(der))
    code, out = run(
        "cert", "issue", "n1", "--tag", "role:db", "--csr", str(bad), "--dir", str(ca_dir)
    )
    assert code == 1 and "error:" in out and "Traceback" not in out
    code, out = issue("n1", "--tag", "role:db", "--validity-hours", "1")
    assert code == 0, out
    code, out = issue("n1", "--tag", "role:db")
    assert code == 1 and "--force" in out  # --out already holds a certificate
    missing = str(tmp_path / "nope.csr")
    code, out = run("cert", "issue", "n1", "--csr", missing, "--dir", str(ca_dir))
    assert code != 0 and "Traceback" not in out


def test_issue_from_csr_refuses_another_nodes_key(ca_dir: Path, tmp_path: Path) -> None:
    from x0tta6bl4.crypto.sign import SigningKey
    from x0tta6bl4.identity.request import CertificateRequest

    assert run("cert", "issue", "bob", "--dir", str(ca_dir))[0] == 0
    bob = NodeCredentials.load(ca_dir / "nodes" / "bob")
    req = CertificateRequest.build("mallory", [], bob.cert.static_key, SigningKey.generate())
    f = tmp_path / "mallory.csr"
    f.write_bytes(req.pem)
    code, out = run("cert", "issue", "mallory", "--csr", str(f), "--dir", str(ca_dir))
    assert code == 1 and "already certified to 'bob'" in out


def test_request_refuses_existing_keys(tmp_path: Path) -> None:
    node = tmp_path / "node"
    assert run("cert", "request", "a", "--dir", str(node))[0] == 0
    first = (node / "node.key").read_bytes()
    code, out = run("cert", "request", "a", "--dir", str(node))
    assert code == 1 and "--force" in out
    assert (node / "node.key").read_bytes() == first
    code, out = run("cert", "request", "a", "--dir", str(node), "--force")
    assert code == 0 and (node / "node.key").read_bytes() != first
    code, out = run("cert", "request", "Bad", "--dir", str(tmp_path / "x"))
    assert code == 1 and "invalid node name" in out


# --- revocation list freshness ----------------------------------------------------------------


def test_stale_list_and_refresh(ca_dir: Path) -> None:
    code, out = run("cert", "issue", "n1", "--dir", str(ca_dir), "--validity-hours", "400")
    assert code == 0, out
    crt = str(ca_dir / "nodes" / "n1" / "node.crt")
    later = str(time.time() + 8 * 86400)
    code, out = run("cert", "verify", crt, "--dir", str(ca_dir), "--at", later)
    assert code == 1 and "rejected (revocation_list_stale)" in out
    assert "x0t ca refresh-crl" in out
    code, out = run("ca", "refresh-crl", "--dir", str(ca_dir))
    assert code == 0, out
    assert "revocation list version 2" in out and "next update" in out
    code, out = run("cert", "verify", crt, "--dir", str(ca_dir))
    assert code == 0 and "version 2" in out
