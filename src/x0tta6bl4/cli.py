"""``x0t``: the operator's command line. Thin: parse, call, print.

Nothing here imports the crypto stack at module level: ``main()`` imports it first, inside a
try, so a machine without ML-KEM/ML-DSA gets one clear sentence instead of a traceback.
Each command imports what it needs when it runs.

Adding a command from another package: put the work in that package, and register a thin
function here that imports it lazily, e.g.::

    @app.command()
    def demo(nodes: int = 5) -> None:
        from x0tta6bl4.sim.demo import run_demo
        run_demo(nodes)

or build a ``typer.Typer()`` group in your module and ``app.add_typer(group, name=...)``
it here behind the same lazy pattern.
"""

from __future__ import annotations

import contextlib
import enum
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from x0tta6bl4.errors import CryptoUnavailable, X0tError

app = typer.Typer(
    name="x0t",
    help="x0tta6bl4: post-quantum zero-trust mesh network.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
ca_app = typer.Typer(help="The mesh certificate authority.", no_args_is_help=True)
cert_app = typer.Typer(help="Node certificates.", no_args_is_help=True)
app.add_typer(ca_app, name="ca")
app.add_typer(cert_app, name="cert")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class Reason(enum.StrEnum):
    """Mirrors identity.crl.REVOCATION_REASONS (here so --help needs no crypto import)."""

    unspecified = "unspecified"
    key_compromise = "key-compromise"
    ca_compromise = "ca-compromise"
    affiliation_changed = "affiliation-changed"
    superseded = "superseded"
    cessation_of_operation = "cessation-of-operation"
    privilege_withdrawn = "privilege-withdrawn"


DirOption = Annotated[
    Path,
    typer.Option("--dir", envvar="X0T_CA_DIR", help="CA directory.", file_okay=False),
]


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Our typed errors become one red line and exit code 1, not a traceback."""
    try:
        yield
    except X0tError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    except OSError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


def _print_rows(rows: list[tuple[str, str]]) -> None:
    # Plain aligned lines, never wrapped: serials and fingerprints must survive copy-paste.
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        out.print(f"[bold]{escape(k.ljust(width))}[/bold]  {escape(v)}", soft_wrap=True)


# --- ca ---------------------------------------------------------------------------------


@ca_app.command("init")
def ca_init(
    directory: DirOption = Path("ca"),
    trust_domain: Annotated[str, typer.Option(help="SPIFFE trust domain.")] = "x0tta6bl4.mesh",
    validity_days: Annotated[int, typer.Option(min=1, help="CA certificate lifetime.")] = 3650,
) -> None:
    """Create a new mesh CA (ML-DSA-65 key, CA certificate, empty revocation list)."""
    import datetime

    from x0tta6bl4.identity.ca import CertificateAuthority

    with _errors():
        ca = CertificateAuthority.init(
            directory, trust_domain, datetime.timedelta(days=validity_days)
        )
    out.print(f"[green]created CA[/green] for spiffe://{ca.trust_domain} in {directory}")
    out.print(f"fingerprint sha256 {ca.fingerprint.hex()}")


# --- cert -------------------------------------------------------------------------------


@cert_app.command("issue")
def cert_issue(
    name: Annotated[str, typer.Argument(help="Node name (lowercase letters, digits, '-', '.').")],
    tag: Annotated[list[str] | None, typer.Option("--tag", help="key:value, repeatable.")] = None,
    directory: DirOption = Path("ca"),
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", file_okay=False, help="Node credential directory [DIR/nodes/NAME]."),
    ] = None,
    validity_hours: Annotated[float, typer.Option(min=0.01)] = 24.0,
    force: Annotated[bool, typer.Option(help="Replace existing credentials in --out.")] = False,
) -> None:
    """Generate node keys, issue an X.509-SVID, write the node's credential directory."""
    import datetime

    from x0tta6bl4.identity.ca import BUNDLE_FILE, CertificateAuthority
    from x0tta6bl4.identity.cert import validate_name
    from x0tta6bl4.identity.store import NodeCredentials

    with _errors():
        ca = CertificateAuthority.load(directory)
        target = out_dir if out_dir is not None else directory / "nodes" / validate_name(name)
        if NodeCredentials.exists(target) and not force:
            err.print(f"[red]error:[/red] {target} already holds node credentials (use --force)")
            raise typer.Exit(1)
        creds = NodeCredentials.generate_and_issue(
            ca,
            name,
            tag or [],
            time.time(),
            validity=datetime.timedelta(hours=validity_hours),
        )
        creds.save(target)
        # The node also needs the trust bundle to verify its peers.
        ca.bundle().save(target / BUNDLE_FILE)
    c = creds.cert
    out.print(f"[green]issued[/green] {c.spiffe_id} serial {c.serial:#x}")
    out.print(f"valid until {_when(c.not_after)}; credentials in {target}")


@cert_app.command("show")
def cert_show(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="PEM or DER.")],
) -> None:
    """Show a node or CA certificate in human-readable form."""
    from x0tta6bl4.identity.cert import describe_certificate

    with _errors():
        rows = describe_certificate(file.read_bytes())
    _print_rows(rows)


@cert_app.command("revoke")
def cert_revoke(
    serial: Annotated[str, typer.Argument(help="Serial, decimal or 0x-prefixed hex.")],
    reason: Annotated[Reason, typer.Option(help="Revocation reason.")] = Reason.unspecified,
    directory: DirOption = Path("ca"),
) -> None:
    """Revoke a certificate by serial; writes the next revocation list version."""
    from x0tta6bl4.identity.ca import CertificateAuthority
    from x0tta6bl4.identity.crl import REVOCATION_REASONS

    try:
        number = int(serial, 0)
    except ValueError:
        err.print(f"[red]error:[/red] serial {serial!r} is not a number")
        raise typer.Exit(2) from None
    with _errors():
        crl = CertificateAuthority.load(directory).revoke(
            number, REVOCATION_REASONS[reason.value], time.time()
        )
    out.print(f"[green]revoked[/green] {number:#x} ({reason.value})")
    out.print(f"revocation list version {crl.version}")


@cert_app.command("verify")
def cert_verify(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="PEM or DER.")],
    directory: DirOption = Path("ca"),
    at: Annotated[
        float | None, typer.Option(help="Verify at this POSIX time instead of now.")
    ] = None,
) -> None:
    """Verify a node certificate against the CA's bundle and revocation list."""
    from x0tta6bl4.errors import CertificateRejected
    from x0tta6bl4.identity.ca import CertificateAuthority
    from x0tta6bl4.identity.cert import load_certificate
    from x0tta6bl4.identity.verify import verify_node_certificate

    now = time.time() if at is None else at
    with _errors():
        ca = CertificateAuthority.load(directory)
        crl = ca.revocation_list()
        try:
            from cryptography.hazmat.primitives.serialization import Encoding

            der = load_certificate(file.read_bytes()).public_bytes(Encoding.DER)
            ident = verify_node_certificate(der, ca.bundle(), crl, now)
        except CertificateRejected as exc:
            err.print(f"[red]rejected[/red] ({exc.reason.value}): {exc.detail}")
            raise typer.Exit(1) from None
    out.print(f"[green]verified[/green] {ident.spiffe_id}")
    _print_rows(
        [
            ("name", ident.name),
            ("tags", ", ".join(ident.tags) or "(none)"),
            ("serial", f"{ident.serial:#x}"),
            ("valid", f"{_when(ident.not_before)} .. {_when(ident.not_after)}"),
            ("revocation list", f"version {crl.version}"),
            ("fingerprint", f"sha256 {ident.fingerprint.hex()}"),
        ]
    )


def _when(t: float) -> str:
    from x0tta6bl4.identity.cert import format_time

    return format_time(t)


def main() -> None:
    try:
        import x0tta6bl4.crypto  # noqa: F401  (runs the ML-KEM/ML-DSA self-test)
    except CryptoUnavailable as exc:
        sys.stderr.write(f"{exc}\n")
        raise SystemExit(1) from None
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
