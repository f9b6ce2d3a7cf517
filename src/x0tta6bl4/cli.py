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
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from x0tta6bl4.errors import CryptoUnavailable, X0tError

if TYPE_CHECKING:
    from x0tta6bl4.sim.runner import SimSummary

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


def _register_groups() -> None:
    from x0tta6bl4.cli_control import register as register_control
    from x0tta6bl4.cli_node import register
    from x0tta6bl4.cli_policy import policy_app

    register(app)
    register_control(app)
    app.add_typer(policy_app, name="policy")


_register_groups()

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


@ca_app.command("refresh-crl")
def ca_refresh_crl(
    directory: DirOption = Path("ca"),
    validity_days: Annotated[
        float, typer.Option(min=0.01, help="How long the new list stays current.")
    ] = 7.0,
) -> None:
    """Re-sign the revocation list as its next version with a fresh nextUpdate.

    Nodes refuse a list past its nextUpdate, so run this regularly (e.g. daily), even when
    nothing was revoked, and hand the new crl.pem to the nodes."""
    import datetime

    from x0tta6bl4.identity.ca import CertificateAuthority

    with _errors():
        crl = CertificateAuthority.load(directory).refresh_revocation_list(
            time.time(), datetime.timedelta(days=validity_days)
        )
    out.print(f"[green]re-signed[/green] revocation list version {crl.version}")
    out.print(f"{len(crl)} revoked; next update {_when(crl.next_update)}")


# --- cert -------------------------------------------------------------------------------


@cert_app.command("issue")
def cert_issue(
    name: Annotated[str, typer.Argument(help="Node name (lowercase letters, digits, '-', '.').")],
    tag: Annotated[list[str] | None, typer.Option("--tag", help="key:value, repeatable.")] = None,
    directory: DirOption = Path("ca"),
    csr: Annotated[
        Path | None,
        typer.Option(
            "--csr",
            exists=True,
            dir_okay=False,
            help="The node's request (x0t cert request): issue for its own keys. It must ask "
            "for exactly NAME and the --tag set.",
        ),
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", file_okay=False, help="Node credential directory [DIR/nodes/NAME]."),
    ] = None,
    validity_hours: Annotated[float, typer.Option(min=0.01)] = 24.0,
    force: Annotated[bool, typer.Option(help="Replace existing credentials in --out.")] = False,
) -> None:
    """Issue a node X.509-SVID.

    With --csr (real nodes): check the node's request and write only node.crt and
    bundle.pem to --out; the node's private keys never leave the node. Without it (tests,
    demos, one-machine setups): generate the node's keys here and write all of its files.
    """
    import datetime

    from x0tta6bl4.identity.ca import BUNDLE_FILE, CertificateAuthority
    from x0tta6bl4.identity.cert import validate_name
    from x0tta6bl4.identity.store import NODE_CERT_FILE, NodeCredentials

    validity = datetime.timedelta(hours=validity_hours)
    with _errors():
        ca = CertificateAuthority.load(directory)
        target = out_dir if out_dir is not None else directory / "nodes" / validate_name(name)
        if csr is not None:
            from x0tta6bl4.atomicfile import atomic_write
            from x0tta6bl4.identity.request import CertificateRequest

            if (target / NODE_CERT_FILE).exists() and not force:
                err.print(
                    f"[red]error:[/red] {target} already holds {NODE_CERT_FILE} (use --force)"
                )
                raise typer.Exit(1)
            request = CertificateRequest.load(csr.read_bytes())
            cert = ca.issue_request(
                request, name=name, tags=tag or [], now=time.time(), validity=validity
            )
            atomic_write(target / NODE_CERT_FILE, cert.pem, mode=0o644)
            where = f"{NODE_CERT_FILE} and {BUNDLE_FILE} in {target}: copy them to the node"
        else:
            if NodeCredentials.exists(target) and not force:
                err.print(
                    f"[red]error:[/red] {target} already holds node credentials (use --force)"
                )
                raise typer.Exit(1)
            creds = NodeCredentials.generate_and_issue(
                ca, name, tag or [], time.time(), validity=validity
            )
            creds.save(target)
            cert = creds.cert
            where = f"credentials in {target}"
        # The node also needs the trust bundle to verify its peers.
        ca.bundle().save(target / BUNDLE_FILE)
    out.print(f"[green]issued[/green] {cert.spiffe_id} serial {cert.serial:#x}")
    out.print(f"tags {', '.join(cert.tags) or '(none)'}")
    out.print(f"valid until {_when(cert.not_after)}; {where}")


@cert_app.command("request")
def cert_request(
    name: Annotated[str, typer.Argument(help="Node name (lowercase letters, digits, '-', '.').")],
    node_dir: Annotated[
        Path,
        typer.Option("--dir", file_okay=False, help="The node's credential directory."),
    ],
    tag: Annotated[list[str] | None, typer.Option("--tag", help="key:value, repeatable.")] = None,
    force: Annotated[bool, typer.Option(help="Replace existing keys in --dir.")] = False,
) -> None:
    """On the node: generate its keys and a certificate request for the CA.

    Writes node.key and node-static.key (mode 0600) and node.csr to --dir. Send node.csr
    to the CA operator (x0t cert issue NAME --csr node.csr); put the node.crt and
    bundle.pem you get back into --dir."""
    from x0tta6bl4.atomicfile import atomic_write
    from x0tta6bl4.crypto.hybrid import HybridPrivateKey
    from x0tta6bl4.crypto.kdf import sha256
    from x0tta6bl4.crypto.keys import save_private_key
    from x0tta6bl4.crypto.sign import SigningKey
    from x0tta6bl4.identity.request import CertificateRequest
    from x0tta6bl4.identity.store import (
        NODE_CSR_FILE,
        NODE_KEY_FILE,
        NODE_STATIC_KEY_FILE,
        NodeCredentials,
    )

    with _errors():
        if NodeCredentials.exists(node_dir) and not force:
            err.print(f"[red]error:[/red] {node_dir} already holds node keys (use --force)")
            raise typer.Exit(1)
        static, signing = HybridPrivateKey.generate(), SigningKey.generate()
        # Built (and so validated) before anything is written.
        request = CertificateRequest.build(name, tag or [], static.public_key(), signing)
        node_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        save_private_key(node_dir / NODE_KEY_FILE, signing)
        save_private_key(node_dir / NODE_STATIC_KEY_FILE, static)
        atomic_write(node_dir / NODE_CSR_FILE, request.pem, mode=0o644)
    out.print(
        f"[green]requested[/green] {request.name}, tags {', '.join(request.tags) or '(none)'}"
    )
    out.print(f"request {node_dir / NODE_CSR_FILE}, sha256 {request.fingerprint.hex()}")
    out.print(f"static key sha256 {sha256(request.static_key.to_bytes()).hex()}")


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
    from x0tta6bl4.errors import CertificateRejected, RejectReason
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
            if exc.reason is RejectReason.REVOCATION_LIST_STALE:
                err.print("the CA must re-sign its revocation list: x0t ca refresh-crl")
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


# --- sim --------------------------------------------------------------------------------


class SimScenario(enum.Enum):
    """Mirrors sim.runner.SCENARIOS (here so --help needs no crypto import). A plain Enum:
    a StrEnum member named ``partition`` would shadow ``str.partition``."""

    converge = "converge"
    relay_kill = "relay-kill"
    partition = "partition"
    flap = "flap"
    degrade = "degrade"
    diamond = "diamond"


class SimTopology(enum.Enum):
    """Mirrors sim.topology.TOPOLOGY_KINDS (here so --help needs no crypto import)."""

    random_geometric = "random-geometric"
    random_regular = "random-regular"
    line = "line"
    grid = "grid"
    ring = "ring"


_SPARK = "▁▂▃▄▅▆▇█"
_MAX_EVENT_ROWS = 20


@app.command("sim")
def sim_run(
    scenario: Annotated[SimScenario, typer.Argument(help="What to simulate.")],
    nodes: Annotated[int, typer.Option(min=2, help="Mesh size (diamond: always 4).")] = 50,
    seed: Annotated[int, typer.Option(help="Seed: same seed, same trace.")] = 0,
    until: Annotated[
        float | None, typer.Option(min=0.001, help="Stop at this virtual time (seconds).")
    ] = None,
    trace: Annotated[
        Path | None, typer.Option(dir_okay=False, help="Write the trace as JSON lines.")
    ] = None,
    metrics: Annotated[
        bool, typer.Option(help="Print the self-healing Prometheus metrics of the run.")
    ] = False,
    topology: Annotated[
        SimTopology, typer.Option(help="Mesh shape (diamond: always the diamond).")
    ] = SimTopology.random_geometric,
    degree: Annotated[
        float | None,
        typer.Option(
            min=0.1, help="Mean degree (random-geometric, default 5) or degree (random-regular, 4)."
        ),
    ] = None,
    loss: Annotated[
        float, typer.Option(min=0.0, max=0.99, help="Datagram loss on every link (0.02 = 2 %).")
    ] = 0.0,
    jitter: Annotated[
        float, typer.Option(min=0.0, help="Extra random delay on every link, up to this (s).")
    ] = 0.0,
    flows: Annotated[
        int,
        typer.Option(
            min=0,
            help="Constant-rate flows (20 pps) between random pairs from convergence on: "
            "delivery, latency and the user outage of each fault.",
        ),
    ] = 0,
) -> None:
    """Run a scenario on the real mesh in the simulator and summarise it."""
    from x0tta6bl4.observability import metrics as m
    from x0tta6bl4.sim.runner import run_scenario

    with _errors():
        s = run_scenario(
            scenario.value,
            nodes=nodes,
            seed=seed,
            until=until,
            observers=(m.record_self_healing_event, m.record_mapek_cycle),
            topology=topology.value,
            degree=degree,
            loss=loss,
            jitter=jitter,
            flows=flows,
        )
        if trace is not None:
            s.trace.write(trace)
    _print_sim(s)
    if trace is not None:
        out.print(f"trace written to {escape(str(trace))} ({len(s.trace)} records)")
    if metrics:
        from prometheus_client import generate_latest

        wanted = ("x0tta6bl4_self_healing", "x0tta6bl4_mapek_cycle")
        lines = generate_latest(m.REGISTRY).decode().splitlines()
        out.print("\n".join(ln for ln in lines if _metric_name(ln).startswith(wanted)))


def _metric_name(line: str) -> str:
    """The metric a line of Prometheus text exposition is about."""
    parts = line.split()
    if line.startswith("#"):
        return parts[2] if len(parts) > 2 else ""
    return parts[0].split("{")[0] if parts else ""


@app.command()
def demo() -> None:
    """The product on one laptop: a post-quantum secure channel over real UDP on
    127.0.0.1, then six real agent processes healing around a relay killed with -9."""
    from x0tta6bl4.demo import run

    with _errors():
        run(out)


def _sparkline(values: list[float], width: int = 60) -> str:
    # Long runs are folded into ``width`` buckets by their minimum: dips must stay visible.
    if len(values) > width:
        step = len(values) / width
        values = [min(values[int(i * step) : int((i + 1) * step)]) for i in range(width)]
    top = len(_SPARK) - 1
    return "".join(_SPARK[round(max(0.0, min(1.0, v)) * top)] for v in values)


def _print_sim(s: SimSummary) -> None:
    from rich.table import Table

    from x0tta6bl4.sim.runner import REACH_EVERY, percentile

    out.print(
        f"[bold]x0t sim {s.scenario}[/bold]: {s.nodes} nodes, seed {s.seed}, "
        f"{s.virtual_s:.2f} virtual s in {s.wall_s:.2f} wall s"
    )
    rows: list[tuple[str, str]] = []
    if s.topology not in ("random-geometric", "diamond") or s.loss or s.jitter:
        rows.append(("network", f"{s.topology}; per link loss {s.loss:g}, jitter {s.jitter:g} s"))
    conv = "not converged" if s.convergence_s is None else f"{s.convergence_s:.2f} s"
    rows.append(("convergence", conv))
    if s.fault is not None:
        rows.append(("fault", f"{s.fault} at {s.fault_at:.2f} s"))
    detail = ", ".join(f"{k} {v}" for k, v in s.details.items() if v is not None)
    if detail:
        rows.append(("details", detail))
    if s.recovery_s is not None:
        rows.append(("recovery", f"{s.recovery_s:.2f} s"))
    elif s.fault is not None and ("kill" in s.fault or "partition" in s.fault):
        rows.append(("recovery", "not recovered"))
    if s.reachability:
        fractions = [f for _, f in s.reachability]
        text = f"{_sparkline(fractions)}  every {REACH_EVERY:g} s"
        # The cold start is always 0: the interesting minimum is the one after it.
        after = [tf for tf in s.reachability if s.convergence_s and tf[0] >= s.convergence_s]
        if after:
            t_min, f_min = min(after, key=lambda tf: (tf[1], tf[0]))
            text += f"; min after convergence {f_min:.2f} at {t_min:.1f} s"
        rows.append(("reachability", f"{text}, final {fractions[-1]:.2f}"))
    traffic = f"{s.control_bytes_per_node_s:,.0f} B/node/s"
    rows.append(("control traffic", traffic + (" (flows included)" if s.flows else "")))
    if s.fault is not None:
        rows.append(("route changes", f"{s.route_changes} since the fault"))
    drops = ", ".join(f"{k} {v}" for k, v in sorted(s.drops.items()) if v)
    rows.append(("drops", drops or "none"))
    rows.append(("trace digest", f"sha256 {s.trace_digest}"))
    mttrs = s.mttrs
    ev = f"{len(s.healing_events)} ({len(mttrs)} repaired"
    if mttrs:
        ev += f"; mttr p50 {percentile(mttrs, 50):.2f} s, max {max(mttrs):.2f} s"
    rows.append(("healing events", ev + ")"))
    rows += _flow_rows(s)
    _print_rows(rows)
    if not s.healing_events:
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("node", "kind", "subject", "action", "outcome", "detected", "mttr"):
        table.add_column(col, justify="right" if col in ("detected", "mttr") else "left")
    for node, e in s.healing_events[:_MAX_EVENT_ROWS]:
        mttr = "-" if e.mttr is None else f"{e.mttr:.2f} s"
        table.add_row(node, e.kind, e.subject, e.action, e.outcome, f"{e.detected_at:.2f} s", mttr)
    out.print(table)
    more = len(s.healing_events) - _MAX_EVENT_ROWS
    if more > 0:
        out.print(f'... and {more} more (see --trace, kind "healing")')


_MAX_OUTAGE_ROWS = 3


def _flow_rows(s: SimSummary) -> list[tuple[str, str]]:
    """Delivery of the flows and, per fault that hit them, the user outage they saw
    beside what healing reported (only with --flows)."""
    from x0tta6bl4.sim.runner import percentile

    if not s.flows:
        return []
    sent = sum(f.sent for f in s.flows)
    got = sum(f.delivered for f in s.flows)
    lat = [f.latency_p50 for f in s.flows if f.delivered]
    text = f"{len(s.flows)}: delivered {got:,} of {sent:,} ({s.delivery_ratio:.3f})"
    if lat:
        text += f", median latency {percentile(lat, 50) * 1000:.1f} ms"
    rows = [("flows", text)]
    hit = [o for o in s.outages if o.affected]
    for o in hit[:_MAX_OUTAGE_ROWS]:
        worst = o.outage_max
        what = o.fault.kind if o.target == o.fault.kind else f"{o.fault.kind} {o.target}"
        line = (
            f"{what} at {o.t:.2f} s: {len(o.affected)} flows hit, "
            f"outage max {_secs(worst)}, median {_secs(o.outage_median)}"
        )
        if o.unrecovered:
            line += f" ({o.unrecovered} never recovered)"
        line += f"; healing: {len(o.healing)} events, mttd max {_secs(o.mttd_max)}, "
        line += f"mttr max {_secs(o.mttr_max)}"
        rows.append(("user outage", line))
    if len(hit) > _MAX_OUTAGE_ROWS:
        worst_each = [o.outage_max for o in hit if o.outage_max is not None]
        rows.append(
            (
                "user outage",
                f"{len(hit)} faults hit flows; worst flow per fault: "
                f"p50 {_secs(percentile(worst_each, 50))}, max {_secs(max(worst_each))}",
            )
        )
    elif not hit and s.fault is not None:
        rows.append(("user outage", "no flow crossed the fault"))
    return rows


def _secs(v: float | None) -> str:
    if v is None:
        return "-"
    return "never" if v == float("inf") else f"{v:.2f} s"


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
