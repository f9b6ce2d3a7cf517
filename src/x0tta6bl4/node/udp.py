"""Drive a sans-IO core over a real UDP socket with asyncio.

The core never sees the socket or the clock: this runner feeds it datagrams and timer
expiries with ``now = time.monotonic()`` and carries out the actions it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable, Hashable, Iterable
from typing import Any, cast

import structlog

from x0tta6bl4.node.udpfast import set_buffers
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

SOCKET_BUFFER = 4 * 1024 * 1024


class _Socket(asyncio.DatagramProtocol):
    """One bound UDP socket feeding its runner."""

    def __init__(self, runner: UdpRunner) -> None:
        self.runner = runner
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport does not subclass DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.runner.datagram_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP unreachable for an earlier send (a neighbour down): the core's timers
        # notice the silence; nothing to do but count it.
        self.runner.send_errors += 1
        log.debug("udp_error", error=str(exc))


class UdpRunner:
    """One core, one or more UDP sockets (one per address family, or more).

    Addresses the core sees are ``(host, port)`` tuples; a send goes out of the first
    socket of the address's family.
    """

    def __init__(
        self,
        core: Core,
        *,
        on_deliver: Callable[[Deliver], None] | None = None,
        on_event: Callable[[Event], None] | None = None,
        on_control: Callable[[Action], None] | None = None,
    ) -> None:
        self.core = core
        self.on_deliver = on_deliver
        self.on_event = on_event
        self.on_control = on_control
        self._sockets: list[_Socket] = []
        self._by_family: dict[int, asyncio.DatagramTransport] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timers: dict[Hashable, asyncio.TimerHandle] = {}
        self._started = False
        self._quiet = False
        self.sent_bytes = 0
        self.sent_datagrams = 0
        self.received_bytes = 0
        self.received_datagrams = 0
        self.send_errors = 0

    @property
    def transport(self) -> asyncio.DatagramTransport | None:
        """The first socket's transport (None before bind or after close)."""
        return self._sockets[0].transport if self._sockets else None

    async def bind(
        self, host: str = "127.0.0.1", port: int = 0, *, start: bool = True
    ) -> tuple[str, int]:
        """Open a socket on ``host:port``; the first bind starts the core unless
        ``start=False`` (bind every address first, then call :meth:`start`)."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = _Socket(self)
        await loop.create_datagram_endpoint(lambda: sock, local_addr=(host, port), family=family)
        assert sock.transport is not None
        raw = sock.transport.get_extra_info("socket")
        if raw is not None:
            # A TCP super-packet arrives as ~50 datagrams at once: room for bursts, or
            # the kernel drops them while the loop is busy with the previous one.
            with contextlib.suppress(OSError):
                set_buffers(raw, SOCKET_BUFFER)
        self._sockets.append(sock)
        self._by_family.setdefault(family, sock.transport)
        sockname: tuple[str, int] = sock.transport.get_extra_info("sockname")[:2]
        if start and not self._started:
            self.start()
        return sockname

    def start(self) -> None:
        """Carry out the core's first timers and sends."""
        self._started = True
        self.apply(self.core.start(self.now))

    @property
    def now(self) -> float:
        # Not loop.time(): uvloop's clock ticks in whole milliseconds, too coarse for
        # the RTTs of a LAN or loopback link.
        return time.monotonic()

    def quiesce(self) -> None:
        """Stop feeding the core (timers and datagrams); sends already made still go."""
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        self._quiet = True

    def close(self) -> None:
        self.quiesce()
        for sock in self._sockets:
            if sock.transport is not None:
                sock.transport.close()
                sock.transport = None
        self._sockets.clear()
        self._by_family.clear()

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if self._quiet:
            return
        self.received_bytes += len(data)
        self.received_datagrams += 1
        self.apply(self.core.handle(self.now, Datagram((addr[0], addr[1]), data)))

    # -- driving the core -----------------------------------------------------------------

    def call(self, fn: Callable[[float], Iterable[Action]]) -> None:
        """Run ``fn(now)`` (e.g. ``lambda now: endpoint.send(now, addr, b"hi")``) and
        carry out the actions it returns."""
        self.apply(fn(self.now))

    def apply(self, actions: Iterable[Action]) -> None:
        for a in actions:
            if isinstance(a, Send):
                addr = a.addr
                if not (isinstance(addr, tuple) and len(addr) == 2):
                    log.warning("unroutable_send", addr=repr(addr))
                    continue
                family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
                transport = self._by_family.get(family)
                if transport is None:
                    self.send_errors += 1
                    continue
                try:
                    transport.sendto(a.data, addr)
                except OSError:
                    # uvloop raises an earlier ICMP unreachable here (asyncio reports it
                    # to error_received): either way one datagram is lost, and the rest
                    # of the actions (the retry timer among them) must still happen.
                    self.send_errors += 1
                    continue
                self.sent_bytes += len(a.data)
                self.sent_datagrams += 1
            elif isinstance(a, SetTimer):
                self._set_timer(a.at, a.key)
            elif isinstance(a, Deliver):
                if self.on_deliver is not None:
                    self.on_deliver(a)
            elif isinstance(a, Event):
                if self.on_event is not None:
                    self.on_event(a)
            elif self.on_control is not None:
                self.on_control(a)

    def _set_timer(self, at: float, key: Hashable) -> None:
        assert self._loop is not None
        if self._quiet:
            return
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()
        self._timers[key] = self._loop.call_later(max(0.0, at - self.now), self._fire, key, at)

    def _fire(self, key: Hashable, at: float) -> None:
        early = at - self.now
        if early > 0:
            # uvloop rounds timers to whole milliseconds and may fire one early; the core
            # ignores a timer before its time, so it would be lost. Wait out the rest.
            assert self._loop is not None
            self._timers[key] = self._loop.call_later(early + 1e-4, self._fire, key, at)
            return
        self._timers.pop(key, None)
        self.apply(self.core.handle(self.now, Timer(key)))
