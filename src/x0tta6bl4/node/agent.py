"""The node agent: one process per host driving the sans-IO core over real UDP.

The agent owns everything the core must not touch: sockets, the clock, the state
directory, signals, the local API, /metrics. It feeds the core datagrams and timer
expiries and carries out what it answers (``node/udp.py``); it never decides anything
about links, routes or healing itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import resource
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import structlog

from x0tta6bl4.errors import RenewalRefused, X0tError
from x0tta6bl4.healing.events import HealingEvent, RuntimeStats
from x0tta6bl4.healing.loop import HealingLoop, HealingNode
from x0tta6bl4.identity.bundle import TrustBundle
from x0tta6bl4.identity.cert import NodeCertificate
from x0tta6bl4.identity.crl import NoRevocationList, RevocationList, accept_newer
from x0tta6bl4.identity.store import (
    NODE_CERT_FILE,
    NODE_KEY_FILE,
    NODE_STATIC_KEY_FILE,
    NodeCredentials,
)
from x0tta6bl4.identity.types import VerifiedIdentity
from x0tta6bl4.identity.verify import make_verifier, verify_renewal
from x0tta6bl4.mesh.node import DROP_COUNTERS, MeshConfig, MeshNode, node_id
from x0tta6bl4.node.dataplane import IP_PORT, TunPlane
from x0tta6bl4.node.runsettings import RunSettings, format_host_port, parse_host_port
from x0tta6bl4.node.state import (
    BUNDLE_FILE,
    CRL_FILE,
    POLICY_ACCEPTED_FILE,
    POLICY_FILE,
    StateDir,
    StateError,
)
from x0tta6bl4.node.tun import VNET_HDR_LEN
from x0tta6bl4.node.udp import UdpRunner
from x0tta6bl4.observability import enable_metrics, recorder, tracing
from x0tta6bl4.policy import Decision, Proto, SignedPolicy, Subject, accept_policy
from x0tta6bl4.policy.types import DEFAULT_DENY
from x0tta6bl4.sansio import (
    Action,
    CertificateRenewed,
    Deliver,
    Event,
    LinkDown,
    LinkDownReason,
    LinkUp,
    RevocationListUpdated,
)

log = structlog.get_logger("x0tta6bl4.node")

# A neighbour that left (LEAVE) or was revoked: its per-peer series go (``forget_link``).
_GONE: Final = frozenset({LinkDownReason.LEFT, LinkDownReason.REVOKED})
HOUSEKEEPING_INTERVAL: Final = 0.5
"""Seconds between seqno lease checks, metric refreshes, peer-cache saves and runtime
stats for healing."""
LEAVE_FLUSH: Final = 0.05
"""Seconds given to LEAVE datagrams to leave the host before the sockets close."""
SUBSCRIBER_QUEUE: Final = 4096
ALGORITHMS: Final = "X25519+ML-KEM-768 (X-Wing) handshake, ChaCha20-Poly1305, ML-DSA-65 certs"


@dataclass(slots=True)
class Inbound:
    src: str
    port: int
    payload: bytes


class Agent:
    """Build with :meth:`from_settings`, then ``await run()``."""

    def __init__(
        self,
        settings: RunSettings,
        state: StateDir,
        creds: NodeCredentials,
        bundle: TrustBundle,
        crl: RevocationList | None,
    ) -> None:
        self.settings = settings
        self.state = state
        self.creds = creds
        self.bundle = bundle
        self.crl = crl
        self.policy: SignedPolicy | None = None  # None: every application packet denied
        self._policy_mtime: float | None = None
        self._crl_mtime: float | None = None
        self._verifier = make_verifier(bundle, self._crl)
        self._self_subject = Subject(creds.cert.spiffe_id, frozenset(creds.cert.tags))
        self.name = creds.cert.name
        self.healing_events: deque[HealingEvent] = deque(maxlen=256)
        self.listeners: dict[int, set[asyncio.Queue[Inbound]]] = {}
        self.trace_subscribers: set[asyncio.Queue[tuple[float, str, dict[str, Any]]]] = set()
        self.probe_waiters: dict[str, list[asyncio.Future[tuple[float, int]]]] = {}
        self.counters: dict[str, int] = {}
        # Data-plane payloads (tx packets, tx bytes, rx packets, rx bytes) since the last
        # housekeeping: plain integers on the hot path, flushed to Prometheus there.
        self._dataplane = [0, 0, 0, 0]
        self._departed: set[str] = set()  # left or revoked neighbours: no link series
        self.started_at = time.time()
        self._stop = asyncio.Event()
        self._runner: UdpRunner | None = None
        self.tun: TunPlane | None = None
        self._mesh: MeshNode | None = None
        self._core: HealingNode | None = None
        self._saved_peers: dict[str, str] = {}
        self.bound: list[tuple[str, int]] = []
        self.on_ready: Callable[[Agent], None] | None = None
        self.control: Any = None  # ControlSync when [control] url is set

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_settings(cls, settings: RunSettings | Any) -> Agent:
        """Read the state directory; raises StateError naming the first bad file.
        ``settings``: RunSettings, or a validated ``config.NodeSettings``."""
        if not isinstance(settings, RunSettings):
            settings = settings.runtime()
        state = StateDir(settings.state_dir)
        if not state.path.is_dir():
            raise StateError(f"{state.path}: state directory missing (run 'x0t node init')")
        state.check_key_modes((NODE_KEY_FILE, NODE_STATIC_KEY_FILE))
        try:
            creds = NodeCredentials.load(state.path)
        except X0tError as exc:
            raise StateError(f"{state.path}: node credentials: {exc}") from None
        if creds.cert.name != settings.name:
            raise StateError(
                f"{state.path}: certificate is for {creds.cert.name!r}, "
                f"configuration says name = {settings.name!r}"
            )
        raw = state.read(BUNDLE_FILE)
        assert raw is not None
        try:
            bundle = TrustBundle.from_pem(raw)
        except X0tError as exc:
            raise StateError(f"{state.file(BUNDLE_FILE)}: corrupt trust bundle: {exc}") from None
        crl = None
        raw_crl = state.read(CRL_FILE, required=False)
        if raw_crl is None:
            log.warning("no_revocation_list", file=str(state.file(CRL_FILE)))
        else:
            try:
                crl = RevocationList.from_pem(raw_crl, bundle)
            except X0tError as exc:
                raise StateError(f"{state.file(CRL_FILE)}: rejected: {exc}") from None
        return cls(settings, state, creds, bundle, crl)

    def _crl(self) -> RevocationList | NoRevocationList:
        # Read at every verification: a newer list dropped in takes effect at once.
        return self.crl if self.crl is not None else NoRevocationList.NO_REVOCATION_LIST

    @property
    def mesh(self) -> MeshNode:
        assert self._mesh is not None, "run() first"
        return self._mesh

    @property
    def runner(self) -> UdpRunner:
        assert self._runner is not None, "run() first"
        return self._runner

    def _build_core(self, loop: asyncio.AbstractEventLoop) -> HealingNode:
        s = self.settings
        peers = self.state.load_peers()
        self._saved_peers = dict(peers)
        neighbours: list[tuple[str, int]] = list(s.peer_addrs)
        for addr_text in peers.values():  # neighbours met before, e.g. ones that dialled us
            try:
                addr = parse_host_port(addr_text)
            except ValueError:
                continue
            if addr not in neighbours and addr not in self.bound:
                neighbours.append(addr)
        rng = random.Random()  # jitter and probe ids only: not secret (secrets use the OS)
        mesh = MeshNode(
            self.name,
            self.creds.cert.der,
            self.creds.static_private,
            self._verifier,
            rng=rng,
            wall_offset=time.time() - time.monotonic(),
            trust_domain=self.bundle.trust_domain,
            cert_not_after=self.creds.cert.not_after,
            neighbours=neighbours,
            config=MeshConfig(hello_interval=s.hello_interval, max_datagram=s.datagram_size),
            seqno=self.state.start_seqno(),
        )
        self._mesh = mesh
        healing = HealingLoop(mesh, rng=rng, on_event=self._on_healing_event)
        return HealingNode(mesh, healing)

    # -- running ------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        core = self._build_core(loop)
        self._core = core
        runner = UdpRunner(
            core,
            on_deliver=self._on_deliver,
            on_event=self._on_event,
            on_control=self._on_control,
        )
        self._runner = runner
        if self.crl is not None:  # the core holds the agent's list from the start
            runner.apply(core.handle(runner.now, RevocationListUpdated(self.crl)))
        self._load_held_policy()
        self._load_policy()
        self._load_crl()
        from x0tta6bl4.node.api import LocalApi

        api = LocalApi(self)
        metrics_server: Any = None
        housekeeping: asyncio.Task[None] | None = None
        discovery: Any = None
        signals = (signal.SIGTERM, signal.SIGINT)
        if self.settings.api.metrics:
            enable_metrics()  # before the first event worth counting
        try:
            if self.settings.tun.enabled:
                # Before any link comes up: a route to a node means its overlay works.
                self.tun = TunPlane(self)
                await self.tun.start(loop)
            for host, port in self.settings.listen_addrs:
                self.bound.append(await runner.bind(host, port, start=False))
            runner.start()
            for sig in signals:
                loop.add_signal_handler(sig, self.stop)
            await api.start(self.settings.api_socket)
            metrics_server = self._start_metrics()
            self._record_metrics()
            log.info(
                "node_started",
                node=self.name,
                listen=[format_host_port(b) for b in self.bound],
                api=str(self.settings.api_socket),
            )
            housekeeping = loop.create_task(self._housekeeping())
            d = self.settings.discovery
            if d.enabled:
                from x0tta6bl4.node.discovery import Discovery

                v6 = [p for h, p in self.bound if ":" in h]
                if not v6:
                    raise StateError(
                        "discovery.enabled needs an IPv6 listen address such as [::]:7100"
                    )
                discovery = Discovery(self, d.port, d.interval, list(d.interfaces))
                discovery.start(loop, v6[0])
            if self.settings.control.url:
                from x0tta6bl4.node.controlsync import ControlSync

                c = self.settings.control
                self.control = ControlSync(
                    self, c.url, report_interval=c.report_interval, poll_interval=c.poll_interval
                )
                self.control.start()
            if self.on_ready is not None:
                self.on_ready(self)
            await self._stop.wait()
            # Tell neighbours first, so they reroute now rather than after the dead interval.
            runner.apply(self.mesh.leave(runner.now))
            runner.quiesce()  # nothing after the LEAVE: no hello or update may follow it
            await asyncio.sleep(LEAVE_FLUSH)
        finally:
            if self.control is not None:
                await self.control.stop()
            if discovery is not None:
                await discovery.close(loop)
            if housekeeping is not None:
                housekeeping.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await housekeeping
            self._save_state()
            if self.tun is not None:
                self.tun.close(loop)
            await api.close()
            if metrics_server is not None:
                metrics_server.shutdown()
            runner.close()
            for sig in signals:
                loop.remove_signal_handler(sig)
            log.info("node_stopped", node=self.name)

    def stop(self) -> None:
        self._stop.set()

    def _start_metrics(self) -> Any:
        if not self.settings.api.metrics:
            return None
        from prometheus_client import start_http_server

        host, port = parse_host_port(self.settings.api.metrics, 0)
        server, _thread = start_http_server(port, addr=host, registry=enable_metrics().REGISTRY)
        return server

    async def _housekeeping(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(HOUSEKEEPING_INTERVAL)
            lag = max(0.0, loop.time() - t0 - HOUSEKEEPING_INTERVAL)
            try:
                self._tick(lag)
            except OSError as exc:  # a full disk must not stop the data plane
                log.error("state_write_failed", error=str(exc))

    def _tick(self, lag: float) -> None:
        mesh = self.mesh
        self.state.observe_seqno(mesh.router.seqno)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.runner.apply(
            self._core.handle(self.runner.now, RuntimeStats(loop_lag=lag, memory_bytes=rss))
            if self._core is not None
            else []
        )
        self._record_metrics()
        self._save_peers()
        self._load_policy()
        self._load_crl()

    def _load_crl(self) -> None:
        """Take a newer revocation list dropped into the state directory, the way
        :meth:`apply_revocation_list` takes a pushed one (the file is already in place)."""
        path = self.state.file(CRL_FILE)
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return
        if mtime == self._crl_mtime:
            return
        self._crl_mtime = mtime
        try:
            data = path.read_bytes()
        except OSError as exc:
            self.count("crl_refused")
            log.error("crl_refused", source=str(path), error=str(exc))
            return
        self._take_crl(data, str(path), persist=False)

    def apply_revocation_list(self, pem: bytes) -> bool:
        """Take a revocation list pushed by the control plane (PEM). It must be signed by
        a CA of the trust bundle and newer than the held list (``accept_newer``); then it
        is written atomically to STATE/crl.pem (a restart keeps it), new handshakes with
        a revoked node fail and its sessions, links and queued packets are dropped at
        once. True if it became the held list; False if refused (older, foreign, broken:
        counted ``crl_refused``, the held list stays) or it is the held list already."""
        return self._take_crl(pem, "pushed", persist=True)

    def _take_crl(self, pem: bytes, source: str, *, persist: bool) -> bool:
        try:
            candidate = RevocationList.from_pem(pem, self.bundle)
            new = accept_newer(self.crl, candidate)
        except X0tError as exc:
            self.count("crl_refused")
            log.error(
                "crl_refused",
                source=source,
                error=str(exc),
                kept=None if self.crl is None else self.crl.version,
            )
            return False
        if new is self.crl:
            return False
        if persist:
            self._persist_crl(new)
        self.crl = new
        self._verifier.clear()
        if self._core is not None and self._runner is not None:
            # Sessions of revoked nodes go now, not at their next rekey or expiry.
            runner = self._runner
            runner.apply(self._core.handle(runner.now, RevocationListUpdated(new)))
        log.info("crl_loaded", source=source, version=new.version, revoked=len(new))
        return True

    def _persist_crl(self, crl: RevocationList) -> None:
        try:
            self.state.write(CRL_FILE, crl.to_pem(), 0o644)
            # our own write: the file watch need not read it back
            self._crl_mtime = self.state.file(CRL_FILE).stat().st_mtime
        except OSError as exc:
            # Applied all the same: a revocation in force now matters more than one that
            # survives a restart (the node would restart on the older list it had).
            self.count("crl_persist_failed")
            log.error("crl_persist_failed", file=str(self.state.file(CRL_FILE)), error=str(exc))

    def apply_certificate(self, pem: bytes) -> bool:
        """Use a renewed certificate (PEM) now, without a restart: the renewer's
        ``on_new_certificate`` (it has written STATE/node.crt already), or any caller.

        It must be for this node's name, chain to the trust bundle, be current and not
        revoked by the held list (the verifier the agent uses for peers), and expire no
        earlier than the certificate in use (``identity.verify.verify_renewal``). For the
        keys the agent holds it becomes ``creds`` (``status()`` shows its
        ``cert_not_after``; control-plane requests are signed under it), is written to
        STATE/node.crt unless that holds it already, and goes to the core
        (``CertificateRenewed``): every new handshake presents it, sessions are kept.

        For other keys it is taken only if the state directory holds them (the renewer
        rotated keys: node.key and node-static.key match it). A new signing key alone
        is taken, the credentials reloaded from the state directory. A new static key
        cannot replace the one a running core handshakes with: the agent logs
        ``certificate_restart_needed``, keeps presenting the old certificate and returns
        False; a restart reads the new set.

        True when the certificate is in use now; False when refused (``certificate_refused``
        logged and counted, the old one stays), when a restart is needed, or when it is the
        one in use already."""
        try:
            new = NodeCertificate.from_pem(pem)
        except X0tError as exc:
            return self._refuse_certificate("malformed", str(exc))
        held = self.creds
        if new == held.cert:
            return False
        static, signing = held.static_private, held.signing_private
        if new.static_key != static.public_key() or new.signing_key != signing.public_key():
            rotated = self._rotated_credentials(new)
            if rotated is not None:
                static, signing = rotated.static_private, rotated.signing_private
        try:
            new = verify_renewal(
                held.cert,
                new.der,
                lambda der: self._verifier(der, time.time()),
                static_key=static.public_key(),
                signing_key=signing.public_key(),
            )
        except RenewalRefused as exc:
            return self._refuse_certificate(exc.label, str(exc))
        if static.public_key() != held.static_private.public_key():
            self.count("certificate_restart_needed")
            log.warning(
                "certificate_restart_needed",
                serial=format(new.serial, "x"),
                not_after=new.not_after,
                reason="the static key changed: the running core keeps the old certificate",
            )
            return False
        if self._core is not None and self._runner is not None:
            runner = self._runner
            runner.apply(self._core.handle(runner.now, CertificateRenewed(new.der)))
            if self.mesh.links.cert_der != new.der:  # the core's own checks said no
                return self._refuse_certificate("core", "the core refused it (see the trace)")
        self.creds = NodeCredentials(new, static, signing)
        self._self_subject = Subject(new.spiffe_id, frozenset(new.tags))
        self._persist_certificate(new)
        log.info("certificate_applied", serial=format(new.serial, "x"), not_after=new.not_after)
        return True

    def _refuse_certificate(self, reason: str, error: str) -> bool:
        self.count("certificate_refused")
        log.error(
            "certificate_refused",
            reason=reason,
            error=error,
            kept=format(self.creds.cert.serial, "x"),
        )
        return False

    def _rotated_credentials(self, cert: NodeCertificate) -> NodeCredentials | None:
        """``cert`` with the keys the state directory holds, if they are its keys (the
        renewer rotated them: keys first, then node.crt); else None."""
        try:
            on_disk = NodeCredentials.load(self.state.path)
            return NodeCredentials(cert, on_disk.static_private, on_disk.signing_private)
        except X0tError:
            return None

    def _persist_certificate(self, cert: NodeCertificate) -> None:
        """STATE/node.crt holds ``cert`` afterwards (a restart keeps it), unless it holds
        a certificate for other keys (a rotation on disk) or one expiring later."""
        path = self.state.file(NODE_CERT_FILE)
        try:
            on_disk: NodeCertificate | None = NodeCertificate.from_pem(path.read_bytes())
        except (OSError, X0tError):
            on_disk = None
        if on_disk is not None and (
            on_disk == cert
            or on_disk.not_after > cert.not_after
            or (on_disk.static_key, on_disk.signing_key) != (cert.static_key, cert.signing_key)
        ):
            return
        try:
            self.state.write(NODE_CERT_FILE, cert.pem, 0o644)
        except OSError as exc:  # in use all the same; a restart would take the older one
            self.count("certificate_persist_failed")
            log.error("certificate_persist_failed", file=str(path), error=str(exc))

    def _policy_path(self) -> Path:
        p = self.settings.policy_file
        return Path(p) if p else self.state.file(POLICY_FILE)

    def _load_held_policy(self) -> None:
        """The policy accepted before the last restart (STATE/policy.accepted)."""
        data = self.state.read(POLICY_ACCEPTED_FILE, required=False)
        if data is None:
            return
        result = accept_policy(None, data, self.bundle, str(self.state.file(POLICY_ACCEPTED_FILE)))
        if result.error is not None:
            raise StateError(
                f"{self.state.file(POLICY_ACCEPTED_FILE)}: not a valid signed policy "
                f"({result.error}); fix or remove it"
            )
        self.policy = result.policy

    def apply_policy(self, signed: bytes, *, source: str = "control plane") -> bool:
        """Take a signed policy document pushed by the control plane: verified with the
        CA, refused unless newer than the one held, persisted (STATE/policy.accepted) so
        it survives a restart. True when it became the policy in force."""
        result = accept_policy(self.policy, signed, self.bundle, source)
        if result.error is not None:
            self.count("policy_refused")
            log.error("policy_refused", source=source, error=str(result.error))
            return False
        if result.policy is self.policy:
            return False
        self.policy = result.policy
        try:
            self.state.write(POLICY_ACCEPTED_FILE, signed, 0o644)
        except OSError as exc:  # in force all the same; the restart would hold the older
            self.count("policy_persist_failed")
            log.error("policy_persist_failed", error=str(exc))
        log.info(
            "policy_loaded", source=source, version=self.policy.version if self.policy else None
        )
        return True

    def _load_policy(self) -> None:
        """(Re)read the policy file when it changed. A refused document (unsigned,
        wrongly signed, older, malformed) leaves the last good policy in force."""
        path = self._policy_path()
        try:
            st = path.stat()
        except FileNotFoundError:
            return
        if st.st_mtime == self._policy_mtime:
            return
        self._policy_mtime = st.st_mtime
        try:
            data = path.read_bytes()
        except OSError as exc:
            log.error("policy_unreadable", file=str(path), error=exc.strerror)
            return
        result = accept_policy(self.policy, data, self.bundle, str(path))
        if result.error is not None:
            self.count("policy_refused")
            log.error(
                "policy_refused",
                file=str(path),
                error=str(result.error),
                kept=None if self.policy is None else self.policy.version,
            )
            return
        if result.policy is not self.policy:
            self.policy = result.policy
            # What we hold survives a restart: an older document dropped in later (or
            # put back while we were down) is refused, not taken as the first.
            self.state.write(POLICY_ACCEPTED_FILE, data, 0o644)
            log.info(
                "policy_loaded",
                file=str(path),
                version=self.policy.version if self.policy else None,
            )

    def _record_metrics(self) -> None:
        from x0tta6bl4 import __version__

        dp = self._dataplane
        self._dataplane = [0, 0, 0, 0]
        m = recorder()
        if m is None:
            return
        mesh = self.mesh
        obs = mesh.observe(self.runner.now)
        for link in obs.links.values():
            if link.peer not in self._departed:
                m.record_link(link)
        m.record_routes(obs.routes)
        m.record_drops(
            {k: v for k, v in obs.counters.items() if k in DROP_COUNTERS}, source=self.name
        )
        m.record_build_info("node", __version__)
        m.record_mesh_state(
            sum(1 for link in obs.links.values() if link.alive),
            _established(mesh.links),
            _established(mesh.e2e),
        )
        m.record_dataplane(dp[0], dp[1], dp[2], dp[3])
        m.record_certificate_expiry("node", self.creds.cert.not_after)
        if self.crl is not None:
            m.record_revocation_list("node", self.crl.version, self.crl.next_update)
        if self.policy is not None:
            m.record_policy_version("node", self.policy.version)

    def _save_peers(self) -> None:
        current = dict(self._saved_peers)
        for name in self.mesh.neighbours():
            info = self._link_info(name)
            if info is not None and isinstance(info.addr, tuple):
                current[name] = format_host_port((str(info.addr[0]), int(info.addr[1])))
        if current != self._saved_peers:
            self.state.save_peers(current)
            self._saved_peers = current

    def _save_state(self) -> None:
        with contextlib.suppress(OSError):
            if self._mesh is not None:
                self.state.observe_seqno(self._mesh.router.seqno)
                self._save_peers()

    def _link_info(self, peer: str) -> Any:
        mesh = self.mesh
        for addr in mesh.links.peers():
            info = mesh.links.peer(addr)
            if info is not None and info.identity is not None and info.identity.name == peer:
                return info
        return None

    # -- core outputs -------------------------------------------------------------------

    def _on_event(self, ev: Event) -> None:
        item = (time.time(), ev.kind, dict(ev.fields))
        for q in list(self.trace_subscribers):
            if q.full():
                self.count("trace_subscriber_overflow")
                continue
            q.put_nowait(item)
        if "handshake_" in ev.kind:  # a few per peer and rekey interval
            log.debug(ev.kind, **ev.fields)
            if tracing.enabled():
                tracing.record_handshake_event(ev.kind, ev.fields, item[0])
        if ev.kind == "probe_ok":
            dst = str(ev.fields.get("dst"))
            result = self.mesh.echo_results.get(dst)
            for fut in self.probe_waiters.pop(self.mesh.id_of(dst).hex(), []):
                if not fut.done() and result is not None:
                    fut.set_result(result)
        elif (m := recorder()) is None:
            return
        elif ev.kind.endswith("handshake_complete"):
            m.record_handshake(str(ev.fields.get("role", "?")), "ok")
        elif ev.kind.endswith("handshake_failed"):
            # Only an attempt this node started can fail this way (the initiator's).
            m.record_handshake("initiator", "failed")
            m.record_handshake_failure(str(ev.fields.get("reason", "unknown")))
            if ev.fields.get("rekey") is True:
                m.record_rekey(False)
        elif ev.kind.endswith("session_rekeyed"):
            m.record_rekey(True)

    def _on_control(self, action: Action) -> None:
        # A link up or down changes the topology operators watch: report it now.
        if type(action) in (LinkUp, LinkDown) and self.control is not None:
            self.control.on_link_change()
        if type(action) is LinkDown and action.reason in _GONE:
            self._departed.add(action.peer)  # its link series go until it is back
            if (m := recorder()) is not None:
                m.forget_link(action.peer)
        elif type(action) is LinkUp:
            self._departed.discard(action.peer)

    def _on_healing_event(self, ev: HealingEvent) -> None:
        self.healing_events.append(ev)
        if (m := recorder()) is not None:
            m.record_self_healing_event(ev)
        if tracing.enabled():
            tracing.record_healing_event(ev, time.time() - self.runner.now)
        if self.control is not None:
            self.control.on_healing_event(
                ev.kind,
                round(ev.detected_at - self.runner.now + time.time(), 3),
                {
                    "subject": ev.subject,
                    "action": ev.action,
                    "outcome": ev.outcome,
                    "mttd_s": None if ev.mttd is None else round(ev.mttd, 3),
                    "mttr_s": None if ev.mttr is None else round(ev.mttr, 3),
                },
            )
        log.info(
            "self_healing",
            kind=ev.kind,
            subject=ev.subject,
            action=ev.action,
            outcome=ev.outcome,
            mttd=ev.mttd,
            mttr=ev.mttr,
        )

    def count(self, what: str, n: int = 1) -> None:
        self.counters[what] = self.counters.get(what, 0) + n

    def _on_deliver(self, d: Deliver) -> None:
        dp = self._dataplane
        dp[2] += 1
        dp[3] += len(d.payload) - (VNET_HDR_LEN if d.port == IP_PORT else 0)
        if d.port == IP_PORT:
            if self.tun is not None:
                self.tun.inbound(d.src, self.peer_identity(d.src), d.payload)
            else:
                self.count("ip_without_tun")
            return
        decision = self.decide(self.peer_identity(d.src), Proto.MSG, d.port)
        if (m := recorder()) is not None:
            m.record_policy_decision(decision.rule_id, decision.allowed)
        if not decision.allowed:
            self.count(f"policy_denied:{decision.rule_id}")
            return
        queues = self.listeners.get(d.port)
        if not queues:
            self.count("no_listener")
            return
        item = Inbound(d.src, d.port, d.payload)
        for q in queues:
            if q.full():
                self.count("listener_overflow")
                continue
            q.put_nowait(item)

    def decide(self, src: VerifiedIdentity | None, proto: Proto, port: int | None) -> Decision:
        """Inbound: ``src`` is the e2e session's verified identity, never packet data."""
        if self.policy is None or src is None:
            return DEFAULT_DENY
        return self.policy.policy.decide(
            Subject.from_identity(src), self._self_subject, proto, port
        )

    def dial(self, addr: tuple[str, int]) -> None:
        """Start a link to ``addr`` (a LAN discovery beacon's sender)."""
        self.runner.apply(self.mesh.add_neighbour(self.runner.now, addr))

    def has_live_link(self, fingerprint: bytes) -> bool:
        """Whether a live neighbour holds the certificate with this fingerprint."""
        alive = self.mesh.neighbours()
        for addr in self.mesh.links.peers():
            info = self.mesh.links.peer(addr)
            ident = info.identity if info is not None else None
            if ident is not None and ident.fingerprint == fingerprint:
                return alive.get(ident.name, False)
        return False

    def decide_outbound(
        self, dst: VerifiedIdentity, proto: Proto | None, port: int | None
    ) -> Decision | None:
        """The receiver's verdict as far as this node can tell (None: cannot tell)."""
        if self.policy is None or proto is None:
            return None
        return self.policy.policy.decide(
            self._self_subject, Subject.from_identity(dst), proto, port
        )

    def peer_identity(self, name: str) -> VerifiedIdentity | None:
        return self.mesh.e2e.identity(node_id(name))

    # -- operations for the local API ---------------------------------------------------

    def batch(self) -> contextlib.AbstractContextManager[None]:
        """Single datagrams sent inside leave together at its end (``UdpRunner.held``)."""
        return self.runner.held()

    def send(self, dst: str, port: int, payload: bytes) -> None:
        """Raises MessageTooLarge / ValueError / ProtocolError with a clear message."""
        runner = self.runner
        runner.apply(self.mesh.send_app(runner.now, dst, port, payload))
        dp = self._dataplane
        dp[0] += 1
        dp[1] += len(payload) - (VNET_HDR_LEN if port == IP_PORT else 0)

    async def ping(self, dst: str, timeout: float) -> tuple[float, int] | None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[float, int]] = loop.create_future()
        key = self.mesh.id_of(dst).hex()  # the answer names the node; a ping may use its id
        self.probe_waiters.setdefault(key, []).append(fut)
        self.runner.apply(self.mesh.probe(self.runner.now, dst))
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return None
        finally:
            waiters = self.probe_waiters.get(key)
            if waiters and fut in waiters:
                waiters.remove(fut)

    def status(self) -> dict[str, Any]:
        mesh = self.mesh
        now = self.runner.now
        obs = mesh.observe(now)
        neighbours = []
        for name, link in sorted(obs.links.items()):
            info = self._link_info(name)
            addr = info.addr if info is not None else None
            neighbours.append(
                {
                    "name": name,
                    "addr": format_host_port(addr) if isinstance(addr, tuple) else None,
                    "alive": link.alive,
                    "rtt_ms": None if link.rtt is None else round(link.rtt * 1000, 3),
                    "loss": round(link.loss, 4),
                    "cost": link.cost,
                    "session_age_s": None
                    if link.session_age is None
                    else round(link.session_age, 1),
                }
            )
        routes = [
            {"dst": r.dst, "via": r.next_hop, "metric": r.metric}
            for r in sorted(obs.routes.values(), key=lambda r: r.dst)
        ]
        sessions = []
        for addr in mesh.e2e.peers():
            info = mesh.e2e.peer(addr)
            if info is None or info.identity is None:
                continue
            sessions.append(
                {
                    "peer": info.identity.name,
                    "established": info.established,
                    "age_s": None if info.session_age is None else round(info.session_age, 1),
                    "rekeys": info.rekeys,
                    "algorithms": ALGORITHMS,
                }
            )
        events = [
            {
                "kind": ev.kind,
                "subject": ev.subject,
                "action": ev.action,
                "outcome": ev.outcome,
                "mttd_s": None if ev.mttd is None else round(ev.mttd, 3),
                "mttr_s": None if ev.mttr is None else round(ev.mttr, 3),
                "at": round(ev.detected_at - now + time.time(), 3),
            }
            for ev in self.healing_events
        ]
        cert = self.creds.cert
        return {
            "name": self.name,
            "spiffe_id": cert.spiffe_id,
            "tags": list(cert.tags),
            "cert_not_after": cert.not_after,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started_at, 1),
            "listen": [format_host_port(b) for b in self.bound],
            "overlay": self.overlay_addresses(),
            "seqno": mesh.router.seqno,
            "neighbours": neighbours,
            "routes": routes,
            "sessions": sorted(sessions, key=lambda s: str(s["peer"])),
            "healing_events": events,
            "counters": {**obs.counters, **self.counters},
            "policy": None if self.policy is None else self.policy.version,
        }

    def overlay_addresses(self) -> dict[str, str | None]:
        from x0tta6bl4.node.dataplane import node_overlay_ipv4, node_overlay_ipv6

        td = self.bundle.trust_domain
        return {
            "ipv6": str(node_overlay_ipv6(td, self.name)),
            # Every node has one; it is on the device only where tun.ipv4 is on.
            "ipv4": str(node_overlay_ipv4(td, self.name)) if self.settings.tun.ipv4 else None,
        }


def _established(endpoint: Any) -> int:
    """Established sessions of a ``SecureEndpoint`` (the mesh's links or e2e)."""
    n = 0
    for addr in endpoint.peers():
        info = endpoint.peer(addr)
        if info is not None and info.established:
            n += 1
    return n


def run_agent(settings: RunSettings | Any) -> None:
    """Foreground entry point for ``x0t node run``."""
    agent = Agent.from_settings(settings)
    # The standard loop, not uvloop: the data path wakes once per batch (a GRO buffer, a
    # TSO super-packet), so the loop's own speed does not show (overlay TCP through a
    # relay measured within noise of uvloop's), while uvloop costs 2.2 MB resident.
    asyncio.run(agent.run())


__all__ = ["Agent", "run_agent"]
