"""``x0t node ...``, ``x0t status``, ``x0t ping``, ``x0t send``, ``x0t listen``.

Thin like the rest of the CLI: parse, call ``node/``, print. Exit codes for scripts:
0 success, 1 an error (one sentence on stderr), 2 usage (typer), 3 the agent is not
reachable, 4 no answer (ping) or nothing received (listen --count with a timeout).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

node_app = typer.Typer(help="Run and set up the node agent.", no_args_is_help=True)

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

EXIT_ERROR = 1
EXIT_UNREACHABLE = 3
EXIT_NO_ANSWER = 4

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar="X0T_CONFIG",
        dir_okay=False,
        help="The node's TOML configuration [STATE_DIR/node.toml with --state-dir].",
    ),
]
SocketOption = Annotated[
    Path | None,
    typer.Option("--socket", envvar="X0T_API_SOCKET", help="The agent's API socket."),
]


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    from x0tta6bl4.errors import X0tError

    try:
        yield
    except X0tError as exc:
        from x0tta6bl4.node.client import NodeApiError

        err.print(f"[red]error:[/red] {exc}")
        unreachable = isinstance(exc, NodeApiError) and "no agent" in str(exc)
        raise typer.Exit(EXIT_UNREACHABLE if unreachable else EXIT_ERROR) from None
    except OSError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(EXIT_ERROR) from None


@node_app.command("init")
def node_init(
    name: Annotated[str, typer.Argument(help="Node name (lowercase letters, digits, '-', '.').")],
    state_dir: Annotated[
        Path, typer.Option("--state-dir", file_okay=False, help="The node's state directory.")
    ],
    config: Annotated[
        Path | None, typer.Option("--config", dir_okay=False, help="[STATE_DIR/node.toml]")
    ] = None,
    listen: Annotated[
        list[str] | None, typer.Option("--listen", help="HOST:PORT, repeatable [127.0.0.1:7100]")
    ] = None,
    peer: Annotated[list[str] | None, typer.Option("--peer", help="HOST:PORT, repeatable.")] = None,
    ca_dir: Annotated[
        Path | None,
        typer.Option(
            "--ca-dir",
            file_okay=False,
            help="Issue the certificate from this local CA now (one-machine set-ups); "
            "without it, keys and a request (node.csr) are made for the CA to sign.",
        ),
    ] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="key:value, repeatable.")] = None,
    metrics: Annotated[str, typer.Option(help="HOST:PORT for /metrics ('' = off).")] = "",
    validity_hours: Annotated[float, typer.Option(min=0.01)] = 24.0,
    force: Annotated[bool, typer.Option(help="Replace existing credentials.")] = False,
) -> None:
    """Write a commented configuration file and the state directory (keys 0600)."""
    import datetime
    import time

    from x0tta6bl4.identity.cert import validate_name
    from x0tta6bl4.identity.store import NodeCredentials
    from x0tta6bl4.node.config import load_settings, render_template, settings_from_text
    from x0tta6bl4.node.state import BUNDLE_FILE, CRL_FILE, StateDir

    with _errors():
        validate_name(name)
        state = StateDir(state_dir.resolve())
        if NodeCredentials.exists(state.path) and not force:
            err.print(f"[red]error:[/red] {state.path} already holds node keys (use --force)")
            raise typer.Exit(EXIT_ERROR)
        cfg_path = (config or state.path / "node.toml").resolve()
        text = render_template(
            name, str(state.path), listen or ["127.0.0.1:7100"], peer or [], metrics
        )
        settings_from_text(text, cfg_path)  # a bad --listen/--peer/--metrics: write nothing
        state.create()
        if ca_dir is not None:
            from x0tta6bl4.identity.ca import CertificateAuthority

            ca = CertificateAuthority.load(ca_dir)
            creds = NodeCredentials.generate_and_issue(
                ca, name, tag or [], time.time(), validity=datetime.timedelta(hours=validity_hours)
            )
            creds.save(state.path)
            ca.bundle().save(state.file(BUNDLE_FILE))
            state.write(CRL_FILE, ca.revocation_list().to_pem(), 0o644)
            what = f"certificate {creds.cert.spiffe_id}, valid until {creds.cert.not_after:.0f}"
        else:
            from x0tta6bl4.cli import cert_request

            cert_request(name, state.path, tag, force)
            what = "keys and node.csr: have the CA sign it, then put node.crt and bundle.pem here"
        from x0tta6bl4.atomicfile import atomic_write

        atomic_write(cfg_path, text.encode(), mode=0o644)
        load_settings(cfg_path)  # what we wrote must load
    out.print(f"[green]initialised[/green] {name}: state {state.path}, config {cfg_path}")
    out.print(what)


@node_app.command("run")
def node_run(
    config: ConfigOption = None,
    state_dir: Annotated[Path | None, typer.Option("--state-dir", file_okay=False)] = None,
) -> None:
    """Run the agent in the foreground until SIGTERM/SIGINT (it tells its neighbours)."""
    from x0tta6bl4.node.config import load_settings
    from x0tta6bl4.observability.logging import configure_logging

    if config is None and state_dir is not None:
        config = state_dir / "node.toml"
    with _errors():
        settings = load_settings(config)
        configure_logging(json=settings.log.format == "json", level=settings.log.level.upper())
        from x0tta6bl4.node.agent import Agent, run_agent

        # The state directory is checked here, so a bad file is reported by this
        # command (the lean process checks again: nothing changed in between is trusted).
        Agent.from_settings(settings.runtime())
        if os.environ.get("X0T_NODE_IN_PROCESS") == "1":  # tests, debuggers
            from x0tta6bl4.observability.tracing import setup_tracing

            setup_tracing("x0tta6bl4-node")  # the lean process does this itself
            run_agent(settings)
            return
        # The agent runs lean: this process (same pid, same signals) becomes
        # ``python -m x0tta6bl4.node`` with the validated settings, and never loads
        # pydantic or the CLI's libraries (see node/runsettings.py).
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        argv = [sys.executable, "-m", "x0tta6bl4.node", settings.runtime().to_json()]
        os.execv(sys.executable, argv)


@node_app.command("join")
def node_join(
    url: Annotated[str, typer.Argument(help="The control plane: http(s)://HOST[:PORT].")],
    token: Annotated[
        str,
        typer.Option(
            "--token",
            envvar="X0T_JOIN_TOKEN",
            help="The join token (x0tj1....) from an operator (POST /v1/tokens).",
        ),
    ],
    config: ConfigOption = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            "--state-dir",
            file_okay=False,
            help="The node's state directory [the configuration's; STATE_DIR/node.toml is "
            "used as --config when it exists].",
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Node name [the configuration's].")
    ] = None,
    tag: Annotated[
        list[str] | None,
        typer.Option(
            "--tag",
            "--tags",
            help="key:value to ask for; repeatable or comma-separated [the tags of node.csr "
            "from 'x0t node init', else none]. A subset of what the token grants.",
        ),
    ] = None,
    listen: Annotated[
        list[str] | None,
        typer.Option(
            "--listen", help="HOST:PORT, repeatable; only for a new node.toml [127.0.0.1:7100]"
        ),
    ] = None,
) -> None:
    """Enroll with a control plane: certificate, trust bundle, revocation list, policy and
    bootstrap peers into the state directory; sets [control] url in the configuration
    (writing STATE_DIR/node.toml if there is none). Keys made by 'x0t node init' are
    used; otherwise new ones are made here. Private keys never leave this machine."""
    import time

    from rich.markup import escape

    from x0tta6bl4.atomicfile import atomic_write
    from x0tta6bl4.identity.cert import format_time, validate_name
    from x0tta6bl4.node.config import load_settings, render_template, settings_from_text
    from x0tta6bl4.node.join import join, set_control_url

    with _errors():
        if config is None and state_dir is not None and (state_dir / "node.toml").exists():
            config = state_dir / "node.toml"
        if config is not None:
            config = config.resolve()
            settings = load_settings(config)
            if name is not None and name != settings.name:
                err.print(
                    f"[red]error:[/red] --name {name} but {config} says name = {settings.name}"
                )
                raise typer.Exit(EXIT_ERROR)
            if state_dir is not None and state_dir.resolve() != settings.state_dir.resolve():
                err.print(
                    f"[red]error:[/red] --state-dir {state_dir} but {config} says "
                    f"state_dir = {settings.state_dir}"
                )
                raise typer.Exit(EXIT_ERROR)
            node_name, sdir = settings.name, settings.state_dir
            text = config.read_text(encoding="utf-8")
        elif state_dir is not None and name is not None:
            node_name, sdir = validate_name(name), state_dir.resolve()
            config = sdir / "node.toml"
            text = render_template(node_name, str(sdir), listen or ["127.0.0.1:7100"], [])
        else:
            err.print(
                "[red]error:[/red] say which node: --config FILE, or --state-dir DIR --name NAME"
            )
            raise typer.Exit(EXIT_ERROR)
        # The new configuration is checked before enrolling: a join uses up the token.
        new_text = set_control_url(text, url)
        settings_from_text(new_text, config)
        tags = None if not tag else [t.strip() for v in tag for t in v.split(",") if t.strip()]
        from x0tta6bl4.observability.tracing import setup_tracing

        setup_tracing("x0tta6bl4-node")  # OTEL_* variables: the join as a span
        result = join(url, token, sdir, node_name, tags)
        atomic_write(config, new_text.encode(), mode=0o644)
        load_settings(config)  # what we wrote must load
    tags_text = ", ".join(result.tags) or "(none)"
    out.print(
        f"[green]joined[/green] {escape(result.control_url)} as {result.name} "
        f"({result.spiffe_id}), serial {result.serial:#x}, tags {tags_text}"
    )
    left = result.not_after - time.time()
    out.print(
        f"certificate valid until {format_time(result.not_after)} ({left / 3600:.1f} h); "
        f"the agent renews it after {format_time(result.renew_after)}"
    )
    policy = "none yet" if result.policy_version is None else f"version {result.policy_version}"
    out.print(
        f"state {escape(str(result.state_dir))}: {len(result.peers)} bootstrap peer(s), "
        f"policy {policy}" + (", keys from 'x0t node init'" if result.reused_keys else ", new keys")
    )
    for w in result.warnings:
        err.print(f"[yellow]warning:[/yellow] {escape(w)}")
    out.print(
        escape(
            f"config {config}: [control] url = {url}; start with: x0t node run --config {config}"
        )
    )


def _client(config: Path | None, sock: Path | None) -> Any:
    from x0tta6bl4.node.client import NodeClient

    if sock is not None:
        return NodeClient(sock)
    if config is None:
        env = os.environ.get("X0T_STATE_DIR")
        if env:
            return NodeClient(Path(env) / "agent.sock")
        err.print("[red]error:[/red] say which node: --config FILE or --socket PATH")
        raise typer.Exit(EXIT_ERROR)
    from x0tta6bl4.node.config import load_settings

    return NodeClient(load_settings(config).api_socket)


def status(
    config: ConfigOption = None,
    sock: SocketOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Neighbours, routes, sessions and recent healing events of a running node."""
    with _errors():
        st = _client(config, sock).status()
    if as_json:
        out.print_json(json.dumps(st))
        return
    out.print(f"[bold]{st['name']}[/bold] {st['spiffe_id']}  tags {', '.join(st['tags']) or '-'}")
    ov = st["overlay"]
    out.print(
        f"listen {', '.join(st['listen'])}; overlay {ov['ipv6']}"
        + (f", {ov['ipv4']}" if ov.get("ipv4") else "")
        + f"; up {st['uptime_s']:.0f} s; policy {st['policy'] or 'none (deny all)'}"
    )
    t = Table(title="neighbours", box=None, header_style="bold")
    for c in ("name", "addr", "alive", "rtt ms", "loss", "cost", "session age s"):
        t.add_column(c)
    for n in st["neighbours"]:
        t.add_row(
            n["name"],
            str(n["addr"]),
            "yes" if n["alive"] else "no",
            "-" if n["rtt_ms"] is None else f"{n['rtt_ms']:.2f}",
            f"{n['loss']:.3f}",
            str(n["cost"]),
            "-" if n["session_age_s"] is None else str(n["session_age_s"]),
        )
    out.print(t)
    t = Table(title="routes", box=None, header_style="bold")
    for c in ("destination", "via", "metric"):
        t.add_column(c)
    for r in st["routes"]:
        t.add_row(r["dst"], str(r["via"]), str(r["metric"]))
    out.print(t)
    t = Table(title="end-to-end sessions", box=None, header_style="bold")
    for c in ("peer", "established", "age s", "rekeys", "algorithms"):
        t.add_column(c)
    for s in st["sessions"]:
        t.add_row(
            s["peer"], str(s["established"]), str(s["age_s"]), str(s["rekeys"]), s["algorithms"]
        )
    out.print(t)
    t = Table(title="healing events", box=None, header_style="bold")
    for c in ("kind", "subject", "action", "outcome", "mttd s", "mttr s"):
        t.add_column(c)
    for e in st["healing_events"][-10:]:
        t.add_row(
            e["kind"], e["subject"], e["action"], e["outcome"], str(e["mttd_s"]), str(e["mttr_s"])
        )
    out.print(t)


def ping(
    node: Annotated[str, typer.Argument(help="Destination node name.")],
    config: ConfigOption = None,
    sock: SocketOption = None,
    count: Annotated[int, typer.Option("--count", "-n", min=1, max=1000)] = 3,
    timeout: Annotated[float, typer.Option(min=0.01, max=30.0)] = 2.0,
) -> None:
    """Round trip through the mesh to NODE, the next hop and the hop count."""
    from x0tta6bl4.node.client import NodeApiError

    client = None
    with _errors():
        client = _client(config, sock)
    answered = 0
    for _ in range(count):
        try:
            r = client.ping(node, timeout)
        except NodeApiError as exc:
            if "no agent" in str(exc):
                err.print(f"[red]error:[/red] {exc}")
                raise typer.Exit(EXIT_UNREACHABLE) from None
            out.print(f"{node}: {exc}")
            continue
        answered += 1
        out.print(f"{node}: rtt {r.rtt * 1000:.2f} ms, {r.hops} hops, via {r.via}")
    if not answered:
        raise typer.Exit(EXIT_NO_ANSWER)


def send(
    node: Annotated[str, typer.Argument(help="Destination node name.")],
    port: Annotated[
        int, typer.Argument(min=1, max=65534, help="1..65534 (65535 carries TUN traffic).")
    ],
    message: Annotated[str, typer.Argument(help="Text to send ('-' reads stdin).")],
    config: ConfigOption = None,
    sock: SocketOption = None,
) -> None:
    """Send one datagram to (NODE, PORT) through the mesh, sealed end to end."""
    import sys

    data = sys.stdin.buffer.read() if message == "-" else message.encode()
    with _errors():
        _client(config, sock).send(node, port, data)
    out.print(f"sent {len(data)} bytes to {node}:{port}")


def listen(
    port: Annotated[
        int, typer.Argument(min=1, max=65534, help="1..65534 (65535 carries TUN traffic).")
    ],
    config: ConfigOption = None,
    sock: SocketOption = None,
    count: Annotated[int, typer.Option(help="Exit after this many messages (0 = never).")] = 0,
    timeout: Annotated[float, typer.Option(help="Exit after this much silence (0 = never).")] = 0,
) -> None:
    """Print datagrams arriving at PORT that the policy lets in."""
    got = 0
    with _errors():
        for m in _client(config, sock).listen(port, timeout or None):
            out.print(f"{m.src}:{m.port} {m.data.decode(errors='replace')}")
            got += 1
            if count and got >= count:
                return
    if count and got < count:
        raise typer.Exit(EXIT_NO_ANSWER)


def register(app: typer.Typer) -> None:
    app.add_typer(node_app, name="node")
    app.command()(status)
    app.command()(ping)
    app.command()(send)
    app.command()(listen)
