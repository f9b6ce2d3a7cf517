"""``python -m x0tta6bl4.node SETTINGS_JSON``: the running agent, lean.

``x0t node run`` validates the configuration and replaces itself with this entry point
(same process id), so the long-lived agent holds neither pydantic nor the CLI's
libraries. Not meant to be started by hand: the JSON is ``RunSettings.to_json()``.
"""

from __future__ import annotations

import json
import sys


def needs_system_openssl(settings_json: str, *, tracing: bool) -> bool:
    """Whether the agent will load TLS: to speak to an https control plane or to a
    tracing collector (whose endpoint may be https), or because it serves ``/metrics``
    (prometheus-client imports ssl). Unreadable JSON says yes: the settings' own parser
    reports it."""
    try:
        d = json.loads(settings_json)
        url = d.get("control", {}).get("url", "")
        metrics = d.get("api", {}).get("metrics", "")
    except (ValueError, AttributeError):
        return True
    if tracing or metrics or not isinstance(url, str):
        return True
    return url.strip().lower().startswith("https:")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: x0t node run --config FILE (this entry point is internal)\n")
        return 2
    # structlog formats exceptions with rich, and looks for greenlets, when it can import
    # them (the CLI and the control plane install both); the agent's logs are JSON lines
    # and it runs no greenlets, so they would only cost memory (~6 MB) for its whole life.
    for unused in ("rich", "greenlet"):
        sys.modules.setdefault(unused, None)  # type: ignore[arg-type]
    from x0tta6bl4.observability.tracing import wanted

    if not needs_system_openssl(args[0], tracing=wanted()):
        # asyncio imports ssl and hashlib imports _hashlib whether or not they are used;
        # both load the system OpenSSL 3 (4.7 MB resident), while the node's own
        # cryptography runs on the OpenSSL inside `cryptography`. Without them, hashlib
        # uses Python's built-in SHA-256 for the few hashes the agent takes.
        for unused in ("ssl", "_hashlib"):
            sys.modules.setdefault(unused, None)  # type: ignore[arg-type]
    from x0tta6bl4.errors import X0tError

    try:
        from x0tta6bl4.node.agent import run_agent
        from x0tta6bl4.node.runsettings import RunSettings
        from x0tta6bl4.observability.logging import configure_logging
        from x0tta6bl4.observability.tracing import setup_tracing

        settings = RunSettings.from_json(args[0])
        configure_logging(json=settings.log.format == "json", level=settings.log.level.upper())
        # Loads OpenTelemetry only when OTEL_* variables turn tracing on.
        setup_tracing("x0tta6bl4-node")
        run_agent(settings)
    except X0tError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    except OSError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
