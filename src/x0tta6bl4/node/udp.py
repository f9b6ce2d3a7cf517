"""Drive a sans-IO core over a real UDP socket with asyncio.

The core never sees the socket or the clock: this runner feeds it datagrams and timer
expiries with ``now = loop.time()`` (monotonic) and carries out the actions it returns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Iterable
from typing import Any, cast

import structlog

from x0tta6bl4.sansio import (
    Action,
    Core,
    Datagram,
    Deliver,
    Event,
    Send,
    SetTimer,
    Timer,
)

log = structlog.get_logger("x0tta6bl4.node.udp")


class UdpRunner(asyncio.DatagramProtocol):
    """One core, one UDP socket. Addresses the core sees are ``(host, port)`` tuples."""

    def __init__(
        self,
        core: Core,
        *,
        on_deliver: Callable[[Deliver], None] | None = None,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        self.core = core
        self.on_deliver = on_deliver
        self.on_event = on_event
        self.transport: asyncio.DatagramTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timers: dict[Hashable, asyncio.TimerHandle] = {}
        self.sent_bytes = 0
        self.sent_datagrams = 0
        self.received_bytes = 0
        self.received_datagrams = 0

    async def bind(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self._loop = loop
        await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))
        assert self.transport is not None
        sockname: tuple[str, int] = self.transport.get_extra_info("sockname")[:2]
        self.apply(self.core.start(self.now))  # the core's first timers and sends
        return sockname

    @property
    def now(self) -> float:
        assert self._loop is not None, "bind() first"
        return self._loop.time()

    def close(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    # -- asyncio callbacks --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport does not subclass DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.received_bytes += len(data)
        self.received_datagrams += 1
        self.apply(self.core.handle(self.now, Datagram((addr[0], addr[1]), data)))

    def error_received(self, exc: Exception) -> None:
        log.warning("udp_error", error=str(exc))

    # -- driving the core -----------------------------------------------------------------

    def call(self, fn: Callable[[float], Iterable[Action]]) -> None:
        """Run ``fn(now)`` (e.g. ``lambda now: endpoint.send(now, addr, b"hi")``) and
        carry out the actions it returns."""
        self.apply(fn(self.now))

    def apply(self, actions: Iterable[Action]) -> None:
        for a in actions:
            if isinstance(a, Send):
                if self.transport is None:
                    continue
                addr = a.addr
                if not (isinstance(addr, tuple) and len(addr) == 2):
                    log.warning("unroutable_send", addr=repr(addr))
                    continue
                self.transport.sendto(a.data, addr)
                self.sent_bytes += len(a.data)
                self.sent_datagrams += 1
            elif isinstance(a, SetTimer):
                self._set_timer(a.at, a.key)
            elif isinstance(a, Deliver):
                if self.on_deliver is not None:
                    self.on_deliver(a)
            elif isinstance(a, Event) and self.on_event is not None:
                self.on_event(a)

    def _set_timer(self, at: float, key: Hashable) -> None:
        assert self._loop is not None
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()
        self._timers[key] = self._loop.call_at(at, self._fire, key)

    def _fire(self, key: Hashable) -> None:
        self._timers.pop(key, None)
        self.apply(self.core.handle(self.now, Timer(key)))
