"""A control plane process for a mesh on one machine: ``x0t serve`` on SQLite in a
directory of its own, an admin key, and the operator calls the demo and the real-process
tests make (policy, join tokens, revocations). Talks to it only over HTTP, like an
operator would; stops the process on exit, also on errors.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from x0tta6bl4.node.control_client import ControlClient, ControlError


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[Any], grace: float = 10.0, kill_wait: float = 5.0) -> None:
    """SIGTERM (a clean shutdown), then SIGKILL if it has not exited within ``grace``
    seconds; a process already gone is left alone. For the local processes this module,
    the local mesh, the tests and the benchmarks start."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(kill_wait)


class LocalControlPlane:
    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        python: str = sys.executable,
        env: Mapping[str, str] | None = None,
        cert_lifetime_s: float | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.python = python
        self.env = dict(os.environ if env is None else env)
        self.env["X0T_DATA_DIR"] = str(data_dir)
        # The operator's environment must not point a demo at a production database.
        for var in ("X0T_DATABASE_URL", "X0T_REDIS_URL", "X0T_CA_DIR"):
            self.env.pop(var, None)
        if cert_lifetime_s is not None:
            self.env["X0T_CERT_LIFETIME_S"] = str(cert_lifetime_s)
        self.proc: subprocess.Popen[bytes] | None = None
        self.admin_key = ""
        self.client = ControlClient(self.url, timeout=15.0)
        self.log_path = data_dir / "control.log"

    def _x0t(self, *args: str) -> str:
        out = subprocess.run(
            [self.python, "-m", "x0tta6bl4.cli", *args],
            env=self.env,
            capture_output=True,
            timeout=120,
        )
        if out.returncode != 0:
            raise ControlError(f"x0t {' '.join(args)} failed: {out.stderr.decode()[-500:]}")
        return out.stdout.decode()

    def start(self, timeout: float = 60.0) -> LocalControlPlane:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.admin_key:
            self.admin_key = (
                self._x0t("admin", "create-key", "local-operator", "--role", "admin")
                .strip()
                .splitlines()[-1]
            )
        log = open(self.log_path, "ab")  # noqa: SIM115 (the child owns it)
        try:
            self.proc = subprocess.Popen(
                [self.python, "-m", "x0tta6bl4.cli", "serve", "--port", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ControlError(f"x0t serve exited: {self.tail()}")
            with contextlib.suppress(ControlError):
                if self.client.request("GET", "/ready", timeout=1.0).get("status") == "ready":
                    return self
            time.sleep(0.1)
        raise ControlError(f"x0t serve not ready within {timeout:g} s: {self.tail()}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def __enter__(self) -> LocalControlPlane:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def tail(self, lines: int = 8) -> str:
        if not self.log_path.exists():
            return ""
        return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    # -- the operator's calls -------------------------------------------------------------

    def call(self, method: str, path: str, payload: Any = None) -> Any:
        return self.client.request(method, path, payload, bearer=self.admin_key)

    def create_token(
        self,
        tags: Iterable[str] = (),
        *,
        uses: int = 1,
        name_pattern: str = "*",
        ttl_s: float = 3600,
    ) -> str:
        answer = self.call(
            "POST",
            "/v1/tokens",
            {
                "name_pattern": name_pattern,
                "tags": list(tags),
                "max_uses": uses,
                "ttl_s": int(ttl_s),
            },
        )
        return str(answer["token"])

    def set_policy(self, source: str, comment: str = "") -> int:
        return int(
            self.call("POST", "/v1/policies", {"source": source, "comment": comment})["version"]
        )

    def revoke_node(self, name: str, reason: str = "key-compromise") -> int:
        return int(
            self.call("POST", "/v1/revocations", {"node": name, "reason": reason})["crl_version"]
        )


__all__ = ["LocalControlPlane", "free_port"]
