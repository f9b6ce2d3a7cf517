"""A mesh of real agent processes on one machine (127.0.0.x UDP): for ``make demo``, the
real-process tests and benchmarks.

Each node is a separate ``x0t node run`` process with its own state directory, issued by
a CA made for the occasion. Nothing here is simulated: the processes speak real UDP, and
kill -9 is a real kill. ``LocalMesh`` is a context manager that stops every process it
started, also on errors and Ctrl-C.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from x0tta6bl4.node.client import NodeApiError, NodeClient
from x0tta6bl4.node.config import render_template
from x0tta6bl4.node.localcontrol import LocalControlPlane

BASE_PORT: Final = 17100


def free_base_port(
    count: int,
    kinds: Iterable[int] = (socket.SOCK_DGRAM,),
    avoid: Iterable[int] = (),
    tries: int = 50,
) -> int:
    """A port ``p`` such that ``p + i`` is free on 127.0.0.(i+1) for every ``i < count``
    and socket kind (node i listens there), outside ``avoid``: for meshes that must not
    collide with one already running (a demo, a test). OSError if none is found."""
    kinds = tuple(kinds)
    avoid = set(avoid)
    for _ in range(tries):
        with socket.socket(socket.AF_INET, kinds[0]) as probe:
            probe.bind(("127.0.0.1", 0))  # the kernel's choice: random, and free here
            base = int(probe.getsockname()[1])
        if base + count > 65_000 or avoid & set(range(base, base + count)):
            continue
        socks: list[socket.socket] = []
        try:
            for i in range(count):
                for kind in kinds:
                    s = socket.socket(socket.AF_INET, kind)
                    socks.append(s)
                    s.bind((f"127.0.0.{i + 1}", base + i))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise OSError(f"no run of {count} free ports on 127.0.0.x found in {tries} tries")


TRUST_DOMAIN: Final = "demo.x0t"


@dataclass
class LocalNode:
    name: str
    host: str
    port: int
    state_dir: Path
    config: Path
    tags: tuple[str, ...]
    peers: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def addr(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def client(self) -> NodeClient:
        return NodeClient(self.state_dir / "agent.sock", timeout=5.0)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class LocalMesh:
    """``edges``: pairs of node names; node i listens on 127.0.0.(i+1):BASE_PORT+i."""

    def __init__(
        self,
        root: Path,
        names: Iterable[str],
        edges: Iterable[tuple[str, str]],
        *,
        tags: Mapping[str, Iterable[str]] | None = None,
        policy: str | None = None,
        hello_interval: float = 0.1,
        base_port: int = BASE_PORT,
        python: str = sys.executable,
        env: Mapping[str, str] | None = None,
        ipv6: bool = False,
        metrics_base_port: int | None = None,
        control: LocalControlPlane | None = None,
    ) -> None:
        # With ``control`` (a started LocalControlPlane) the nodes enroll through it
        # (x0t node join: join token, HPKE-sealed enrollment) and keep its URL in their
        # config; without, a CA made for the occasion issues their certificates.
        self.control = control
        # node i serves /metrics on its host at metrics_base_port + i (None: off)
        self.metrics_base_port = metrics_base_port
        self.ipv6 = ipv6  # every node on [::1], told apart by port
        self.root = root
        self.names = list(names)
        self.edges = list(edges)
        self.tags = {n: tuple((tags or {}).get(n, ())) for n in self.names}
        self.policy = policy
        self.hello_interval = hello_interval
        self.base_port = base_port
        self.python = python
        self.env = dict(os.environ if env is None else env)
        self.nodes: dict[str, LocalNode] = {}
        self.ca_dir = root / "ca"

    # -- set-up ---------------------------------------------------------------------------

    def create(self) -> LocalMesh:
        from x0tta6bl4.identity.ca import CertificateAuthority
        from x0tta6bl4.identity.store import NodeCredentials
        from x0tta6bl4.node.state import BUNDLE_FILE, CRL_FILE, POLICY_FILE, StateDir

        self.root.mkdir(parents=True, exist_ok=True)
        ca = (
            None
            if self.control is not None
            else CertificateAuthority.init(self.ca_dir, TRUST_DOMAIN)
        )
        now = time.time()
        for i, name in enumerate(self.names):
            host = "::1" if self.ipv6 else f"127.0.0.{i + 1}"
            node = LocalNode(
                name,
                host,
                self.base_port + i,
                self.root / name,
                self.root / name / "node.toml",
                self.tags[name],
            )
            self.nodes[name] = node
        for a, b in self.edges:  # the lower-numbered side dials; the other accepts
            lo, hi = sorted((a, b), key=self.names.index)
            self.nodes[hi].peers.append(self.nodes[lo].addr)
        if self.control is not None:
            self._enroll_all(self.control)
        signed = self._signed_policy(ca) if ca is not None and self.policy is not None else None
        for node in self.nodes.values():
            state = StateDir(node.state_dir)
            if ca is not None:
                state.create()
                creds = NodeCredentials.generate_and_issue(
                    ca, node.name, node.tags, now, validity=datetime.timedelta(hours=2)
                )
                creds.save(state.path)
                ca.bundle().save(state.file(BUNDLE_FILE))
                state.write(CRL_FILE, ca.revocation_list().to_pem(), 0o644)
                if signed is not None:
                    state.write(POLICY_FILE, signed, 0o644)
            metrics = ""
            if self.metrics_base_port is not None:
                port = self.metrics_base_port + self.names.index(node.name)
                metrics = f"[{node.host}]:{port}" if ":" in node.host else f"{node.host}:{port}"
            text = render_template(node.name, str(state.path), [node.addr], node.peers, metrics)
            text = text.replace("hello_interval = 0.1", f"hello_interval = {self.hello_interval}")
            if self.control is not None:
                from x0tta6bl4.node.join import set_control_url

                text = set_control_url(text, self.control.url)
                # Report often: the demo's topology and events stay current.
                text = text.replace("report_interval = 5.0", "report_interval = 1.0")
            node.config.write_text(text)
        return self

    def _enroll_all(self, control: LocalControlPlane) -> None:
        """Policy first (so enrollment hands it out), then one join token for all the
        nodes, and ``x0t node join``'s enrollment for each."""
        from x0tta6bl4.node.join import join

        if self.policy is not None:
            control.set_policy(self.policy, "local mesh policy")
        tags = sorted({t for n in self.nodes.values() for t in n.tags})
        token = control.create_token(tags, uses=len(self.nodes), ttl_s=600)
        for node in self.nodes.values():
            join(control.url, token, node.state_dir, node.name, node.tags)

    def _signed_policy(self, ca: Any) -> bytes:
        from x0tta6bl4.crypto.keys import load_signing_key
        from x0tta6bl4.identity.ca import CA_KEY_FILE
        from x0tta6bl4.policy import SignedPolicy

        assert self.policy is not None
        key = load_signing_key(self.ca_dir / CA_KEY_FILE)
        return SignedPolicy.sign(self.policy, key, "demo policy").to_bytes()

    def publish_policy(self, text: str) -> None:
        """Sign ``text`` with the mesh CA and drop it into every node's state directory
        (the agents pick it up within a housekeeping period)."""
        from x0tta6bl4.identity.ca import CertificateAuthority
        from x0tta6bl4.node.state import POLICY_FILE, StateDir

        self.policy = text
        if self.control is not None:  # pushed to every node by the control plane
            self.control.set_policy(text, "local mesh policy")
            return
        signed = self._signed_policy(CertificateAuthority.load(self.ca_dir))
        for node in self.nodes.values():
            StateDir(node.state_dir).write(POLICY_FILE, signed, 0o644)

    # -- processes ------------------------------------------------------------------------

    def start(self, name: str) -> LocalNode:
        node = self.nodes[name]
        if node.running:
            return node
        node.log_path = node.state_dir / "agent.log"
        log = open(node.log_path, "ab")  # noqa: SIM115 (the child owns it)
        try:
            node.proc = subprocess.Popen(
                [self.python, "-m", "x0tta6bl4.cli", "node", "run", "--config", str(node.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,  # Ctrl-C in a terminal reaches us, not the agents
            )
        finally:
            log.close()
        return node

    def start_all(self) -> None:
        for name in self.names:
            self.start(name)

    def kill(self, name: str) -> float:
        """kill -9; returns when it was sent (time.monotonic())."""
        node = self.nodes[name]
        assert node.proc is not None
        t = time.monotonic()
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait(5)
        return t

    def terminate(self, name: str, timeout: float = 5.0) -> float:
        """SIGTERM and wait; returns the seconds the agent took to exit."""
        node = self.nodes[name]
        assert node.proc is not None
        t = time.monotonic()
        node.proc.send_signal(signal.SIGTERM)
        node.proc.wait(timeout)
        return time.monotonic() - t

    def stop_all(self) -> None:
        for node in self.nodes.values():
            if node.running:
                assert node.proc is not None
                node.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 3.0
        for node in self.nodes.values():
            if node.proc is None:
                continue
            try:
                node.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait(5)

    def __enter__(self) -> LocalMesh:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()

    # -- observation ----------------------------------------------------------------------

    def status(self, name: str) -> dict[str, Any] | None:
        with contextlib.suppress(NodeApiError, OSError, ValueError):
            return self.nodes[name].client.status()
        return None

    def wait(
        self, cond: Callable[[], bool], timeout: float, what: str, step: float = 0.05
    ) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if cond():
                return time.monotonic() - t0
            for n in self.nodes.values():
                if n.proc is not None and n.proc.poll() not in (None, -9, -15, 0):
                    raise RuntimeError(
                        f"{n.name} exited with {n.proc.returncode}: {self.tail(n.name)}"
                    )
            time.sleep(step)
        raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")

    def routes_complete(self, names: Iterable[str] | None = None) -> bool:
        """Every node in ``names`` has a route to every other one."""
        want = list(names or self.names)
        for n in want:
            st = self.status(n)
            if st is None:
                return False
            have = {r["dst"] for r in st["routes"] if r["via"]}
            from x0tta6bl4.mesh.node import node_id

            others = {m for m in want if m != n}
            known = {m for m in others if m in have or node_id(m).hex() in have}
            if known != others:
                return False
        return True

    def tail(self, name: str, lines: int = 5) -> str:
        p = self.nodes[name].log_path
        if p is None or not p.exists():
            return ""
        return " | ".join(p.read_text(errors="replace").splitlines()[-lines:])


__all__ = ["LocalMesh", "LocalNode"]
