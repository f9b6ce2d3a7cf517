"""The node's end of the push stream: take policy and revocation lists from the control
plane as soon as they are made, and keep taking them when the control plane comes and goes.

``PushClient.run`` holds ``GET /v1/stream`` open (``ControlClient.events``, blocking, in a
daemon thread that hands events to the loop). While the stream is down it polls
``/v1/sync`` every ``poll_interval`` and reconnects with jittered exponential backoff; on
reconnect it says which versions it holds, so the service sends only what is newer, and
a node that was cut off catches up at once. Wire format: ``api/push.py``.

Documents go to the callbacks the agent gives, ``on_policy(signed, version)`` and
``on_crl(pem, version)``, which verify them against the trust bundle, persist and apply
them (nothing here trusts a byte it received). A callback that returns (any value: the
document was accepted, or refused for good, since a version number always names the same
document) moves the held version on; one that raises leaves it, and the document comes
again with the next sync. A document whose version is not above the held one is refused
here without calling the callback (``refused_stale``), and so is anything malformed.

Standard library only, as the lean agent process requires (``node/runsettings.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from x0tta6bl4.api.push import (
    EVENT_CRL,
    EVENT_EXPIRED,
    EVENT_HELLO,
    EVENT_POLICY,
    EVENT_REVOKED,
    KEEPALIVE_S,
    PushedCrl,
    PushedPolicy,
    PushFormatError,
    decode_crl,
    decode_end,
    decode_hello,
    decode_policy,
    decode_sync,
    stream_path,
    sync_path,
)
from x0tta6bl4.node.control_client import ControlClient, ControlError, Signer
from x0tta6bl4.observability import recorder

log = structlog.get_logger("x0tta6bl4.node.stream")

# A callback may be a plain function or a coroutine function.
PolicyCallback = Callable[[bytes, int], Any]
CrlCallback = Callable[[bytes, int], Any]
RevokedCallback = Callable[[str], Any]

# The stream is declared broken after this long without a byte (keep-alives every 10 s).
STREAM_TIMEOUT_S = 3.5 * KEEPALIVE_S
_END = object()


@dataclass
class PushStats:
    streams_opened: int = 0
    stream_failures: int = 0
    polls: int = 0
    poll_failures: int = 0
    policies_applied: int = 0
    crls_applied: int = 0
    refused_stale: int = 0
    refused_malformed: int = 0
    callback_errors: int = 0
    last_error: str = ""


class PushClient:
    def __init__(
        self,
        client: ControlClient,
        signer: Signer | Callable[[], Signer],
        *,
        on_policy: PolicyCallback,
        on_crl: CrlCallback,
        on_revoked: RevokedCallback | None = None,
        poll_interval: float = 10.0,
        policy_version: int = 0,
        crl_version: int = 0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        stream_timeout: float = STREAM_TIMEOUT_S,
        rng: random.Random | None = None,
    ) -> None:
        """``signer`` may be a function: it is asked again before each connection, so a
        renewed certificate is used from the next reconnect on. ``policy_version`` and
        ``crl_version`` are what the node holds at start (0: nothing)."""
        self._client = client
        self._signer = signer if callable(signer) else (lambda: signer)
        self._on_policy = on_policy
        self._on_crl = on_crl
        self._on_revoked = on_revoked
        self.poll_interval = poll_interval
        self.policy_version = policy_version
        self.crl_version = crl_version
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._stream_timeout = stream_timeout
        self._rng = rng or random.Random()
        self.connected = False  # the stream is up (its hello arrived)
        self.revoked = False  # the service said our certificate is revoked
        self.stats = PushStats()
        self._serial = 0

    # --- the loop ---

    async def run(self) -> None:
        """Until cancelled, or until the service says this node's certificate is revoked
        (then ``on_revoked(reason)`` is called and run returns)."""
        backoff = self._backoff_initial
        while not self.revoked:
            established = await self._stream_once()
            self.connected = False
            if self.revoked:
                return
            if established:
                backoff = self._backoff_initial
            # Down: catch up by polling now, then every poll_interval until reconnecting;
            # a later poll that is answered means the service is back: reconnect then
            # (so at most one attempt per poll_interval, even if only streams fail).
            wait = backoff * self._rng.uniform(0.5, 1.0)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait
            await self.poll_once()
            while not self.revoked and (left := deadline - loop.time()) > 0:
                await asyncio.sleep(min(left, self.poll_interval))
                if deadline - loop.time() > 0 and await self.poll_once():
                    break
            backoff = min(backoff * 2, self._backoff_max)

    async def _stream_once(self) -> bool:
        """Hold one stream until it ends; True if it was established."""
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[tuple[Any, Any]] = asyncio.Queue()
        stop = threading.Event()
        signer = self._signer()
        self._serial = signer.serial
        path = stream_path(self.policy_version, self.crl_version)

        def post(item: tuple[Any, Any]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed under us
                loop.call_soon_threadsafe(q.put_nowait, item)

        def worker() -> None:
            error: str | None = None
            try:
                for event, data in self._client.events(
                    path,
                    signer=signer,
                    timeout=self._stream_timeout,
                    on_keepalive=_stream_alive,
                ):
                    if stop.is_set():
                        return
                    post((event, data))
            except ControlError as exc:
                error = str(exc)
            except Exception as exc:  # never lose the thread silently
                error = f"{type(exc).__name__}: {exc}"
            finally:
                post((_END, error))

        # A daemon thread: a blocked read must never hold up the agent's exit.
        threading.Thread(target=worker, name="x0t-push-stream", daemon=True).start()
        established = False
        try:
            while True:
                event, data = await q.get()
                if event is _END:
                    if data:
                        self.stats.stream_failures += 1
                        self.stats.last_error = data
                    log.info("push_stream_down", error=data or "closed by the service")
                    return established
                if (m := recorder()) is not None:
                    m.record_control_sync("stream", time.time())
                if event == EVENT_HELLO:
                    established = self._on_hello(data) or established
                    continue
                await self._on_event(event, data)
                if self.revoked:
                    return established
        finally:
            stop.set()

    def _on_hello(self, data: Any) -> bool:
        try:
            hello = decode_hello(data)
        except PushFormatError as exc:
            self._malformed("hello", exc)
            return False
        self.connected = True
        self.stats.streams_opened += 1
        if hello.policy < self.policy_version or hello.crl < self.crl_version:
            # Restored from an old backup? Its next versions will look stale to us.
            log.warning(
                "push_service_behind",
                service_policy=hello.policy,
                policy=self.policy_version,
                service_crl=hello.crl,
                crl=self.crl_version,
            )
        log.info("push_stream_up", serial=hello.serial, service_policy=hello.policy, crl=hello.crl)
        return True

    async def _on_event(self, event: str, data: Any) -> None:
        try:
            if event == EVENT_POLICY:
                await self._take_policy(decode_policy(data))
            elif event == EVENT_CRL:
                await self._take_crl(decode_crl(data))
            elif event == EVENT_REVOKED:
                end = decode_end(data)
                if end.serial == format(self._serial, "x"):
                    self.revoked = True
                    log.error("push_certificate_revoked", serial=end.serial, reason=end.reason)
                    if self._on_revoked is not None:
                        await _call(self._on_revoked, end.reason)
                # else: an older certificate of ours; the next connection uses the current.
            elif event == EVENT_EXPIRED:
                log.info("push_certificate_expired", serial=decode_end(data).serial)
            # Unknown events are skipped: a newer service may send more kinds.
        except PushFormatError as exc:
            self._malformed(event, exc)

    # --- polling ---

    async def poll_once(self) -> bool:
        """One ``/v1/sync``; True if the service answered."""
        signer = self._signer()
        self._serial = signer.serial
        path = sync_path(self.policy_version, self.crl_version)
        self.stats.polls += 1
        try:
            answer = await _in_thread(lambda: self._client.request("GET", path, signer=signer))
            result = decode_sync(answer)
        except ControlError as exc:
            self.stats.poll_failures += 1
            self.stats.last_error = str(exc)
            log.debug("push_poll_failed", error=str(exc))
            return False
        except PushFormatError as exc:
            self._malformed("sync", exc)
            return False
        if (m := recorder()) is not None:
            m.record_control_sync("poll", time.time())
        if result.policy is not None:
            await self._take_policy(result.policy, fetch=False)
        if result.crl is not None:
            await self._take_crl(result.crl, fetch=False)
        return True

    # --- documents ---

    async def _take_policy(self, doc: PushedPolicy, *, fetch: bool = True) -> None:
        if doc.version <= self.policy_version:
            self._stale("policy", doc.version, self.policy_version)
            return
        if doc.signed is None:  # too large for an event: the sync carries it
            if fetch:
                await self.poll_once()
            else:
                self._malformed("policy", PushFormatError("sync answered without the document"))
            return
        try:
            await _call(self._on_policy, doc.signed, doc.version)
        except Exception as exc:
            self._callback_failed("policy", doc.version, exc)
            return
        self.policy_version = doc.version
        self.stats.policies_applied += 1

    async def _take_crl(self, doc: PushedCrl, *, fetch: bool = True) -> None:
        if doc.version <= self.crl_version:
            self._stale("crl", doc.version, self.crl_version)
            return
        if doc.pem is None:
            if fetch:
                await self.poll_once()
            else:
                self._malformed("crl", PushFormatError("sync answered without the document"))
            return
        try:
            await _call(self._on_crl, doc.pem, doc.version)
        except Exception as exc:
            self._callback_failed("crl", doc.version, exc)
            return
        self.crl_version = doc.version
        self.stats.crls_applied += 1

    def _stale(self, kind: str, version: int, held: int) -> None:
        self.stats.refused_stale += 1
        log.warning("push_refused_older", kind=kind, version=version, held=held)

    def _malformed(self, kind: str, exc: PushFormatError) -> None:
        self.stats.refused_malformed += 1
        self.stats.last_error = str(exc)
        log.warning("push_malformed", kind=kind, error=str(exc))

    def _callback_failed(self, kind: str, version: int, exc: Exception) -> None:
        self.stats.callback_errors += 1
        self.stats.last_error = f"{kind} {version}: {exc}"
        log.error("push_apply_failed", kind=kind, version=version, error=str(exc))


def _stream_alive() -> None:
    # In the stream's reading thread: a keep-alive proves the stream is current.
    if (m := recorder()) is not None:
        m.record_control_sync("stream", time.time())


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    result = fn(*args)
    if inspect.isawaitable(result):
        return await result
    return result


async def _in_thread(fn: Callable[[], Any]) -> Any:
    """A blocking request in a daemon thread (not the default executor, which the loop's
    shutdown waits for: a request to an unreachable service must not delay the exit)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if future.done():
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def worker() -> None:
        try:
            value = fn()
        except BaseException as exc:
            ok, value = False, exc
        else:
            ok = True
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, ok, value)

    threading.Thread(target=worker, name="x0t-push-sync", daemon=True).start()
    return await future
