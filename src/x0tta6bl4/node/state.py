"""The agent's state directory.

Layout (every file written atomically; keys mode 0600)::

    node.crt, node.key, node-static.key   the node's credentials (identity.store)
    bundle.pem                            the trust bundle (the mesh CA)
    crl.pem                               the CA's revocation list (optional)
    policy.signed                         a CA-signed policy to apply (optional; dropped in)
    policy.accepted                       the last policy the agent accepted (written by it)
    peers.json                            neighbours last seen: name -> "host:port"
    seqno.json                            the routing seqno lease (see below)

A file that exists but cannot be read or parsed is reported by name (StateError) and
left as it is: the agent never silently replaces what an operator may want to inspect.

The routing seqno: RFC 8966 asks a restarted node to continue from its last seqno. The
router bumps it in memory; writing on every bump would put a disk write on the routing
path, so the agent keeps a *lease*: the file holds a value at least as high as any seqno
the router has used. When the router reaches the lease, a new lease further on is written
first; on start the router continues just past the lease. A kill -9 therefore never
restarts the node with an older seqno.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, Final

from x0tta6bl4.atomicfile import atomic_write
from x0tta6bl4.errors import X0tError

BUNDLE_FILE: Final = "bundle.pem"
CRL_FILE: Final = "crl.pem"
POLICY_FILE: Final = "policy.signed"
POLICY_ACCEPTED_FILE: Final = "policy.accepted"
PEERS_FILE: Final = "peers.json"
SEQNO_FILE: Final = "seqno.json"
SEQNO_LEASE: Final = 64
"""How far past the router's seqno each lease reaches."""
_SEQNO_MOD: Final = 1 << 16
MAX_STATE_FILE: Final = 1 << 20


class StateError(X0tError):
    """A state file is missing, unreadable or corrupt; the message names it."""


def seqno_distance(a: int, b: int) -> int:
    """How far ``b`` is ahead of ``a`` modulo 2**16 (0..65535)."""
    return (b - a) % _SEQNO_MOD


class StateDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lease: int | None = None

    def create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)

    def file(self, name: str) -> Path:
        return self.path / name

    def read(self, name: str, *, required: bool = True) -> bytes | None:
        p = self.file(name)
        try:
            if p.stat().st_size > MAX_STATE_FILE:
                raise StateError(f"{p}: larger than {MAX_STATE_FILE} bytes; not a state file")
            return p.read_bytes()
        except FileNotFoundError:
            if required:
                raise StateError(f"{p}: missing (run 'x0t node init' or enroll)") from None
            return None
        except OSError as exc:
            raise StateError(f"{p}: cannot read: {exc.strerror}") from None

    def write(self, name: str, data: bytes, mode: int = 0o600) -> None:
        atomic_write(self.file(name), data, mode=mode)

    def _json(self, name: str) -> Any:
        raw = self.read(name, required=False)
        if raw is None:
            return None
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, a 5,000-digit int,
            # arrays nested 10,000 deep
            raise StateError(f"{self.file(name)}: corrupt ({exc}); fix or remove it") from None
        if data is None:  # not "missing": the file is there and must not be replaced
            raise StateError(f"{self.file(name)}: corrupt (null); fix or remove it")
        return data

    def check_key_modes(self, names: tuple[str, ...]) -> None:
        for n in names:
            p = self.file(n)
            try:
                mode = stat.S_IMODE(p.stat().st_mode)
            except FileNotFoundError:
                continue
            if mode & 0o077:
                raise StateError(f"{p}: private key readable by others (mode {mode:o}); chmod 600")

    # -- peers -------------------------------------------------------------------------

    def load_peers(self) -> dict[str, str]:
        data = self._json(PEERS_FILE)
        if data is None:
            return {}
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()
        ):
            raise StateError(f"{self.file(PEERS_FILE)}: corrupt (expected name -> address)")
        return data

    def save_peers(self, peers: dict[str, str]) -> None:
        self.write(PEERS_FILE, json.dumps(peers, sort_keys=True, indent=1).encode(), 0o644)

    # -- routing seqno -----------------------------------------------------------------

    def start_seqno(self) -> int | None:
        """The seqno to start the router at: just past the lease (None on a first start),
        with a new lease written before the router may use it."""
        data = self._json(SEQNO_FILE)
        if data is None:
            return None
        lease = data.get("lease") if isinstance(data, dict) else None
        if not isinstance(lease, int) or isinstance(lease, bool) or not 0 <= lease < _SEQNO_MOD:
            raise StateError(f"{self.file(SEQNO_FILE)}: corrupt (expected {{'lease': 0..65535}})")
        start = (lease + 1) % _SEQNO_MOD
        self._write_lease((start + SEQNO_LEASE) % _SEQNO_MOD)
        return start

    def observe_seqno(self, seqno: int) -> None:
        """Call with the router's seqno (cheap when nothing changed): extends the lease
        before the router can pass it."""
        ahead = None if self._lease is None else seqno_distance(seqno, self._lease)
        # renew when half used, and also if the seqno somehow got past the lease
        if ahead is None or not SEQNO_LEASE // 2 <= ahead <= SEQNO_LEASE:
            self._write_lease((seqno + SEQNO_LEASE) % _SEQNO_MOD)

    def _write_lease(self, lease: int) -> None:
        self.write(SEQNO_FILE, json.dumps({"lease": lease}).encode(), 0o644)
        self._lease = lease


__all__ = ["StateDir", "StateError"]
