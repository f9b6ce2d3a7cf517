"""Certificate renewal on the node: once the certificate is past half its lifetime, ask
the control plane for a new one (``POST /v1/renew``, signed with the current key).

Runs in the agent (lean: no pydantic, see ``api.renewal``); the agent starts
``Renewer.run()`` as a task and reloads its identity in ``on_new_certificate``. While the
control plane is down it retries with a jittered exponential backoff; the working
certificate is never removed, only replaced by a verified newer one. A certificate that
expired before a renewal succeeded cannot renew (the service refuses the signature): the
node has to join again.

Key rotation (``rotate_keys=True``) writes the new keys, then the certificate; a crash in
between leaves a set ``NodeCredentials.load`` refuses (keys and certificate disagree), so
it is off by default: renewing with the same keys already gives a fresh certificate.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

from x0tta6bl4.api.renewal import RENEW_PATH, decode_renew_answer, renew_after, renew_request
from x0tta6bl4.atomicfile import atomic_write
from x0tta6bl4.crypto.hybrid import HybridPrivateKey
from x0tta6bl4.crypto.sign import SigningKey
from x0tta6bl4.errors import X0tError
from x0tta6bl4.identity.bundle import TrustBundle
from x0tta6bl4.identity.cert import NodeCertificate
from x0tta6bl4.identity.crl import RevocationList
from x0tta6bl4.identity.request import CertificateRequest
from x0tta6bl4.identity.store import NODE_CERT_FILE, NodeCredentials
from x0tta6bl4.identity.verify import verify_node_certificate
from x0tta6bl4.node.control_client import ControlClient, ControlError, Signer
from x0tta6bl4.node.state import BUNDLE_FILE, CRL_FILE, StateDir
from x0tta6bl4.observability import tracing

log = structlog.get_logger("x0tta6bl4.node.renew")

# Called with the new certificate (PEM) once node.crt holds it; may be async. What it
# returns is ignored (``Agent.apply_certificate`` says whether the core took it).
OnNewCertificate = Callable[[bytes], Awaitable[object] | object]


class RenewalError(X0tError):
    """A renewal answer that does not verify; the working certificate is kept."""


class Renewer:
    """Keeps the node's certificate fresh. ``due(now)`` / ``renew_once()`` for callers
    that schedule themselves, ``run()`` for a task that does it all."""

    def __init__(
        self,
        state_dir: Path,
        client: ControlClient,
        on_new_certificate: OnNewCertificate,
        *,
        rotate_keys: bool = False,
        min_backoff: float = 5.0,
        max_backoff: float = 300.0,
        max_sleep: float = 3600.0,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.state = StateDir(Path(state_dir))
        self.client = client
        self.on_new_certificate = on_new_certificate
        self.rotate_keys = rotate_keys
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        # Re-read the certificate at least this often while waiting (it may be replaced
        # by someone else, e.g. a new join).
        self.max_sleep = max_sleep
        # Decides when a renewal is due (tests move it); answers are verified at the
        # real time.
        self.clock = clock
        self._rng = rng or random.Random()
        self.renewals = 0
        self.failures = 0
        self.last_error: str | None = None

    # -- scheduling --------------------------------------------------------------------

    def current(self) -> NodeCertificate:
        raw = self.state.read(NODE_CERT_FILE)
        assert raw is not None
        try:
            return NodeCertificate.from_pem(raw)
        except X0tError as exc:
            raise RenewalError(f"{self.state.file(NODE_CERT_FILE)}: {exc}") from None

    def renew_at(self) -> float:
        """When the current certificate is due (half its lifetime)."""
        cert = self.current()
        return renew_after(cert.not_before, cert.not_after)

    def due(self, now: float | None = None) -> bool:
        return (self.clock() if now is None else now) >= self.renew_at()

    # -- one renewal -------------------------------------------------------------------

    def _crl(self, bundle: TrustBundle) -> RevocationList | None:
        raw = self.state.read(CRL_FILE, required=False)
        if raw is None:
            return None
        try:
            return RevocationList.from_pem(raw, bundle)
        except X0tError:
            return None  # the agent reports a bad file; a fresh list may replace it

    def _renew_blocking(self) -> NodeCertificate:
        creds = NodeCredentials.load(self.state.path)
        raw_bundle = self.state.read(BUNDLE_FILE)
        assert raw_bundle is not None
        bundle = TrustBundle.from_pem(raw_bundle)
        if self.rotate_keys:
            static, signing = HybridPrivateKey.generate(), SigningKey.generate()
        else:
            static, signing = creds.static_private, creds.signing_private
        cert = creds.cert
        csr = CertificateRequest.build(cert.name, cert.tags, static.public_key(), signing)
        answer = self.client.request(
            "POST",
            RENEW_PATH,
            renew_request(csr.pem),
            signer=Signer(creds.signing_private, cert.serial),
        )
        result = decode_renew_answer(answer)
        # Verified against the bundle this node already trusts, never the one in the
        # answer (which a plain-HTTP path could have swapped), and the newer of the held
        # and the answer's revocation lists. crl.pem is left to the agent, whose pushed
        # lists are the ones that count.
        held = self._crl(bundle)
        try:
            new = NodeCertificate.from_pem(result.certificate)
            fresh = RevocationList.from_pem(result.crl, bundle)
        except X0tError as exc:
            raise RenewalError(f"renewal answer does not verify: {exc}") from None
        crl = fresh if held is None or fresh.newer_than(held) else held
        try:
            verify_node_certificate(new.der, bundle, crl, time.time())
        except X0tError as exc:
            raise RenewalError(f"renewed certificate does not verify: {exc}") from None
        if (new.name, new.tags) != (cert.name, cert.tags):
            raise RenewalError(
                f"renewed certificate is for {new.name} {list(new.tags)}, "
                f"not {cert.name} {list(cert.tags)}"
            )
        if new.static_key != static.public_key() or new.signing_key != signing.public_key():
            raise RenewalError("renewed certificate is for other keys than the request's")
        if new.not_after < cert.not_after:  # an old answer replayed
            raise RenewalError("renewed certificate expires before the current one")
        if self.rotate_keys:
            NodeCredentials(new, static, signing).save(self.state.path)
        else:
            atomic_write(self.state.file(NODE_CERT_FILE), new.pem, mode=0o644)
        return new

    async def renew_once(self) -> NodeCertificate:
        """Renew now (whether due or not), write it, then call ``on_new_certificate``.
        Raises ControlError (unreachable, refused) or RenewalError; on any error the
        working certificate is untouched."""
        # to_thread copies the context: the signed request carries this span's traceparent.
        with tracing.span("x0t.node.renew", rotate_keys=self.rotate_keys) as sp:
            new = await asyncio.to_thread(self._renew_blocking)
            sp.set_attribute("x0t.node", new.name)
            sp.set_attribute("x0t.serial", format(new.serial, "x"))
        self.renewals += 1
        self.last_error = None
        log.info("certificate_renewed", serial=format(new.serial, "x"), not_after=new.not_after)
        try:
            outcome = self.on_new_certificate(new.pem)
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:  # the new certificate is on disk; a failing hook must not stop
            # renewals, and a restarted agent reads the file anyway
            log.exception("on_new_certificate_failed", serial=format(new.serial, "x"))
        return new

    # -- the loop ----------------------------------------------------------------------

    async def run(self) -> None:
        """Renew whenever due, forever (cancel the task to stop)."""
        backoff = self.min_backoff
        while True:
            try:
                wait = self.renew_at() - self.clock()
            except X0tError as exc:  # no readable certificate: nothing to renew yet
                self._failed(exc)
                wait = self.max_sleep
            if wait > 0:
                await asyncio.sleep(min(wait, self.max_sleep))
                continue
            try:
                await self.renew_once()
            except (ControlError, X0tError, OSError) as exc:
                self._failed(exc)
                # Jitter spreads a fleet's retries after a control-plane outage.
                await asyncio.sleep(backoff * (0.5 + self._rng.random() / 2))
                backoff = min(backoff * 2, self.max_backoff)
                continue
            backoff = self.min_backoff

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        self.last_error = str(exc)
        status = getattr(exc, "status", None)
        log.warning("certificate_renewal_failed", error=self.last_error, status=status)
