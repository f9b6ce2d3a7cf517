"""The one-shot ``enroll`` service of deploy/compose.yaml: join tokens for the nodes.

1. Waits (bounded) until the control plane answers ``/ready``.
2. Makes an API key with the operator role, once (``x0t admin create-key``, against the
   control plane's database), and keeps it in its own volume (``DATA_DIR``, mode 0600).
3. For every node in ``NODES`` that is not enrolled yet (``GET /v1/nodes/NAME`` is 404)
   and has no current token file: a single-use join token bound to that name
   (``POST /v1/tokens``), written to ``TOKEN_DIR/NAME.token`` (0600), which the node's
   entrypoint reads. The token file of an enrolled node is removed.

Runs again harmlessly at every ``compose up``. Environment: ``CONTROL_URL``
(http://control-plane:8700), ``NODES`` (space-separated names), ``NODE_TAGS``
(comma-separated key:value), ``TOKEN_DIR`` (/var/lib/x0t-tokens), ``TOKEN_TTL_S`` (86400),
``WAIT_S`` (300), and the control plane's own ``X0T_DATABASE_URL`` / ``X0T_DATA_DIR``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from x0tta6bl4.atomicfile import atomic_write
from x0tta6bl4.node.control_client import ControlClient, ControlError

KEY_FILE = "enroll-operator.key"


def wait_ready(client: ControlClient, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            if client.request("GET", "/ready", timeout=3.0).get("status") in ("ready", "degraded"):
                return
        except ControlError as exc:
            last = str(exc)
        time.sleep(2.0)
    raise SystemExit(f"enroll: the control plane is not ready after {wait_s:g} s: {last}")


def operator_key(data_dir: Path) -> str:
    path = data_dir / KEY_FILE
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    # The CLI prints the key once, as its last line; only its hash is stored.
    out = subprocess.run(
        ["x0t", "admin", "create-key", "compose-enroll", "--role", "operator"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if out.returncode != 0:
        raise SystemExit(f"enroll: x0t admin create-key failed: {out.stderr.strip()[-500:]}")
    key = out.stdout.strip().splitlines()[-1].strip()
    atomic_write(path, key.encode(), mode=0o600)
    print("enroll: made an operator API key for this service", flush=True)
    return key


def enrolled(client: ControlClient, key: str, name: str) -> bool:
    try:
        client.request("GET", f"/v1/nodes/{name}", bearer=key)
    except ControlError as exc:
        if exc.status == 404:
            return False
        raise
    return True


def main() -> int:
    url = os.environ.get("CONTROL_URL", "http://control-plane:8700")
    names = os.environ.get("NODES", "").split()
    tags = [t.strip() for t in os.environ.get("NODE_TAGS", "").split(",") if t.strip()]
    token_dir = Path(os.environ.get("TOKEN_DIR", "/var/lib/x0t-tokens"))
    ttl_s = int(os.environ.get("TOKEN_TTL_S", "86400"))
    data_dir = Path(os.environ.get("X0T_DATA_DIR", "/var/lib/x0t"))
    client = ControlClient(url, timeout=15.0)

    wait_ready(client, float(os.environ.get("WAIT_S", "300")))
    key = operator_key(data_dir)
    for name in names:
        path = token_dir / f"{name}.token"
        if enrolled(client, key, name):
            path.unlink(missing_ok=True)  # spent: nothing left to read
            print(f"enroll: {name} is enrolled", flush=True)
            continue
        # A token file younger than its lifetime is still good; an older one is replaced.
        if path.exists() and time.time() - path.stat().st_mtime < ttl_s - 60:
            print(f"enroll: {name} has a join token waiting", flush=True)
            continue
        answer = client.request(
            "POST",
            "/v1/tokens",
            {"name_pattern": name, "tags": tags, "max_uses": 1, "ttl_s": ttl_s},
            bearer=key,
        )
        atomic_write(path, str(answer["token"]).encode(), mode=0o600)
        print(f"enroll: wrote a single-use join token for {name}", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ControlError as exc:
        sys.exit(f"enroll: {exc}")
