"""``x0t policy``: sign the access policy, check a flow against it.

Registered by ``cli.py`` as ``app.add_typer(policy_app, name="policy")``. Like the rest of
the CLI it imports the crypto stack only inside commands.

``x0t policy check`` exits 0 when the flow is allowed, 2 when it is denied and 1 on any
error (usage errors included, so that 2 always means "denied").
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand

from x0tta6bl4.errors import X0tError

if TYPE_CHECKING:
    from x0tta6bl4.policy import Subject

EXIT_ALLOW, EXIT_ERROR, EXIT_DENY = 0, 1, 2

policy_app = typer.Typer(
    help="The access policy: sign it with the CA, check a flow against it.",
    no_args_is_help=True,
)

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Our typed errors become one red line and exit code 1, not a traceback."""
    try:
        yield
    except (X0tError, OSError) as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(EXIT_ERROR) from None


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {escape(message)}")
    return typer.Exit(EXIT_ERROR)


# click's UsageError, reached through a public name (typer 0.29 vendors click privately).
_UsageError: type[Exception] = typer.BadParameter.__mro__[1]


class _UsageErrorExitsOne(TyperCommand):
    """click exits 2 on a usage error; ``check`` keeps 2 for "denied"."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except _UsageError as exc:
            exc.exit_code = EXIT_ERROR  # type: ignore[attr-defined]
            raise


@policy_app.command("sign")
def policy_sign(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Policy text to sign.")],
    directory: Annotated[
        Path,
        typer.Option("--dir", envvar="X0T_CA_DIR", file_okay=False, help="CA directory."),
    ] = Path("ca"),
    out_file: Annotated[
        Path | None,
        typer.Option("--out", dir_okay=False, help="Signed document to write [FILE.signed]."),
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Overwrite --out even if it holds this or a newer version.")
    ] = False,
) -> None:
    """Sign a policy with the CA key (ML-DSA-65).

    The text is parsed first (a malformed rule is reported by line and column), then the
    signed document is written atomically. Nodes accept only a higher version than the one
    they hold, so --out is not overwritten with an equal or lower version."""
    from x0tta6bl4.atomicfile import atomic_write
    from x0tta6bl4.crypto.keys import load_signing_key
    from x0tta6bl4.identity.ca import CA_KEY_FILE, CertificateAuthority
    from x0tta6bl4.policy import Policy, PolicyRejected, SignedPolicy, accept_newer

    target = out_file if out_file is not None else file.with_name(file.name + ".signed")
    with _errors():
        text = file.read_bytes()
        Policy.parse(text, str(file))  # a malformed file is refused before the CA is touched
        ca = CertificateAuthority.load(directory)
        signed = SignedPolicy.sign(text, load_signing_key(directory / CA_KEY_FILE), str(file))
        if target.exists() and not force:
            try:
                held = SignedPolicy.from_bytes(target.read_bytes(), ca.bundle(), str(target))
            except PolicyRejected:
                held = None  # not a policy of this CA: nothing a node would prefer to it
            if held is not None:
                try:
                    accept_newer(held, signed)
                except PolicyRejected:
                    raise _fail(
                        f"{target} already holds policy version {held.version}; nodes "
                        f"would refuse version {signed.version}: raise the version line "
                        f"above {held.version} (or use --force)"
                    ) from None
        atomic_write(target, signed.to_bytes(), mode=0o644)
    rules = len(signed.policy.rules)
    out.print(
        f"[green]signed[/green] policy version {signed.version} ({rules} rules) "
        f"-> {escape(str(target))}"
    )


@policy_app.command("check", cls=_UsageErrorExitsOne)
def policy_check(
    src: Annotated[str, typer.Argument(metavar="FROM", help="Node name or SPIFFE ID.")],
    dst: Annotated[str, typer.Argument(metavar="TO", help="Node name or SPIFFE ID.")],
    flow: Annotated[
        str, typer.Argument(metavar="PROTO/PORT", help="tcp/5432, udp/53, msg/7000 or icmp.")
    ],
    policy_file: Annotated[
        Path,
        typer.Option("--policy", exists=True, dir_okay=False, help="Signed policy (or draft)."),
    ],
    from_tag: Annotated[
        list[str] | None, typer.Option("--from-tag", help="FROM's tag key:value, repeatable.")
    ] = None,
    to_tag: Annotated[
        list[str] | None, typer.Option("--to-tag", help="TO's tag key:value, repeatable.")
    ] = None,
    ca_dir: Annotated[
        Path | None,
        typer.Option("--ca-dir", file_okay=False, help="Verify with this CA's bundle.pem."),
    ] = None,
    bundle: Annotated[
        Path | None,
        typer.Option("--bundle", dir_okay=False, help="Verify with this trust bundle."),
    ] = None,
    unsigned: Annotated[
        bool, typer.Option("--unsigned", help="--policy is unsigned policy text (a draft).")
    ] = False,
    trust_domain: Annotated[
        str | None,
        typer.Option(help="Trust domain of node names [the bundle's, else x0tta6bl4.mesh]."),
    ] = None,
) -> None:
    """Show which rule decides a flow FROM -> TO, and why.

    Exit code 0: allowed; 2: denied; 1: error. A signed --policy is verified with --ca-dir
    or --bundle; policy text not yet signed needs --unsigned."""
    from x0tta6bl4.identity.bundle import TrustBundle
    from x0tta6bl4.identity.ca import BUNDLE_FILE
    from x0tta6bl4.identity.cert import DEFAULT_TRUST_DOMAIN
    from x0tta6bl4.policy import BEGIN, Policy, SignedPolicy, parse_flow

    if ca_dir is not None and bundle is not None:
        raise _fail("give --ca-dir or --bundle, not both")
    with _errors():
        proto, port = parse_flow(flow)
        data = policy_file.read_bytes()
        if data.startswith(BEGIN) or b"\n" + BEGIN in data:
            if bundle is not None:
                trusted = TrustBundle.load(bundle)
            elif ca_dir is not None:
                trusted = TrustBundle.load(ca_dir / BUNDLE_FILE)
            else:
                raise _fail(f"{policy_file} is signed: pass --ca-dir or --bundle to verify it")
            policy = SignedPolicy.from_bytes(data, trusted, str(policy_file)).policy
            where = f"version {policy.version}, signature verified ({trusted.trust_domain} CA)"
            domain = trust_domain or trusted.trust_domain
        else:
            if not unsigned:
                raise _fail(
                    f"{policy_file} is not signed, so nodes would refuse it; "
                    "pass --unsigned to check a draft"
                )
            policy = Policy.parse(data, str(policy_file))
            where = f"version {policy.version}, unsigned draft"
            domain = trust_domain or DEFAULT_TRUST_DOMAIN
        source = _subject(src, from_tag or [], domain)
        target = _subject(dst, to_tag or [], domain)
        decision = policy.decide(source, target, proto, port)
    verdict = "[green]allow[/green]" if decision.allowed else "[red]deny[/red]"
    out.print(f"{verdict} {source.spiffe_id} -> {target.spiffe_id} {escape(flow)}")
    rule = decision.rule_id
    if decision.rule is not None:
        rule += f"  {decision.rule.text}"
    for key, value in (("rule", rule), ("reason", decision.reason), ("policy", where)):
        out.print(f"[bold]{key:<6}[/bold]  {escape(value)}")
    raise typer.Exit(EXIT_ALLOW if decision.allowed else EXIT_DENY)


def _subject(text: str, tags: list[str], trust_domain: str) -> Subject:
    from x0tta6bl4.errors import CertificateRejected, PolicyError
    from x0tta6bl4.identity.cert import normalize_tags, parse_spiffe_id
    from x0tta6bl4.policy import Subject

    if not text.startswith("spiffe://"):
        return Subject.node(text, tags, trust_domain)
    try:
        parse_spiffe_id(text)
    except CertificateRejected:
        raise PolicyError(f"{text[:100]!r} is not a valid SPIFFE ID") from None
    return Subject(text, frozenset(normalize_tags(tags)))
