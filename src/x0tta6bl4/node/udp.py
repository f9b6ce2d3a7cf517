"""Drive a sans-IO core over a real UDP socket with asyncio.

The core never sees the socket or the clock: this runner feeds it datagrams and timer
expiries with ``now = time.monotonic()`` and carries out the actions it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Any, Final

import structlog

from x0tta6bl4.node import udpfast
from x0tta6bl4.sansio import (
    Action,
    Core,
    Datagram,
    Deliver,
    Event,
    Send,
    SendSegments,
    SetTimer,
    Timer,
)

log = structlog.get_logger("x0tta6bl4.node.udp")

SOCKET_BUFFER = 4 * 1024 * 1024


@functools.lru_cache(maxsize=256)
def _ifname(index: int) -> str:
    try:
        return socket.if_indextoname(index)
    except OSError:
        return str(index)


def peer_addr(addr: tuple[Any, ...]) -> tuple[str, int]:
    """The ``(host, port)`` the core sees for a socket address: an IPv6 link-local
    sender keeps its interface (``fe80::1%eth0``), or a reply could not be sent back."""
    if len(addr) == 4 and addr[3]:
        return (f"{addr[0]}%{_ifname(addr[3])}", addr[1])
    return (addr[0], addr[1])


# Families as plain ints: AddressFamily members hash in Python, and _send looks one up
# for every batch it sends.
_AF_INET: Final = int(socket.AF_INET)
_AF_INET6: Final = int(socket.AF_INET6)

RECV_BATCHES: Final = 64
"""Receives per wake-up at most (each up to a GRO batch), so timers and the TUN get turns."""


class _Socket:
    """One bound non-blocking UDP socket: GRO batches in, GSO batches out where the
    kernel offers them (``udpfast``), one datagram at a time where it does not."""

    __slots__ = ("family", "gso", "sock")

    def __init__(self, sock: socket.socket, family: int) -> None:
        self.sock = sock
        self.family = family
        self.gso = udpfast.kernel_supports_gso()


class UdpRunner:
    """One core, one or more UDP sockets (one per address family, or more).

    Addresses the core sees are ``(host, port)`` tuples; a send goes out of the first
    socket of the address's family. Consecutive sends to one address (the datagrams of
    one large payload) leave in one system call when the kernel segments (UDP GSO), and
    the datagrams a receive returns together (UDP GRO) are handled one after the other
    before their answers are sent, so those batch too.
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
        self._by_family: dict[int, _Socket] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timers: dict[Hashable, asyncio.TimerHandle] = {}
        self._started = False
        self._quiet = False
        self._buf = bytearray(udpfast.MAX_DATAGRAM)
        self._view = memoryview(self._buf)
        self._held: list[Action] | None = None
        self.sent_bytes = 0
        self.sent_datagrams = 0
        self.received_bytes = 0
        self.received_datagrams = 0
        self.send_errors = 0

    async def bind(
        self, host: str = "127.0.0.1", port: int = 0, *, start: bool = True
    ) -> tuple[str, int]:
        """Open a socket on ``host:port``; the first bind starts the core unless
        ``start=False`` (bind every address first, then call :meth:`start`)."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
            # A TCP super-packet arrives as ~50 datagrams at once: room for bursts, or
            # the kernel drops them while the loop is busy with the previous one.
            with contextlib.suppress(OSError):
                udpfast.set_buffers(sock, SOCKET_BUFFER)
            udpfast.enable_gro(sock)
        except BaseException:
            sock.close()
            raise
        entry = _Socket(sock, family)
        self._sockets.append(entry)
        self._by_family.setdefault(int(family), entry)
        loop.add_reader(sock.fileno(), self._readable, entry)
        sockname: tuple[str, int] = sock.getsockname()[:2]
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
        for entry in self._sockets:
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(entry.sock.fileno())
            entry.sock.close()
        self._sockets.clear()
        self._by_family.clear()

    def _readable(self, entry: _Socket) -> None:
        buf = self._buf
        view = self._view
        handle = self.core.handle
        # Cores that take a batch (MeshNode, HealingNode) see a GRO batch whole, as one
        # buffer: copied out of ours once, never cut into datagrams in Python.
        batch = getattr(self.core, "handle_segments", None)
        with self.held():  # answers and forwards to one next hop leave together
            for _ in range(RECV_BATCHES):
                if self._quiet:
                    return
                try:
                    nbytes, seg, addr = udpfast.recv_batch(entry.sock, buf)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:  # a truncated batch, an ICMP error: one lost, counted
                    self.send_errors += 1
                    log.debug("udp_recv_error", error=str(exc))
                    continue
                if not nbytes or addr is None:
                    continue
                src = peer_addr(addr)
                now = self.now
                self.received_bytes += nbytes
                if seg < nbytes and batch is not None:
                    self.received_datagrams += -(-nbytes // seg)
                    self.apply(batch(now, src, view[:nbytes].tobytes(), seg))
                    continue
                datagrams = udpfast.split_segments(buf, nbytes, seg)
                self.received_datagrams += len(datagrams)
                actions: list[Action] = []
                for data in datagrams:
                    actions += handle(now, Datagram(src, data))
                self.apply(actions)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        """Feed one datagram (tests, and runtimes that read sockets themselves)."""
        if self._quiet:
            return
        self.received_bytes += len(data)
        self.received_datagrams += 1
        self.apply(self.core.handle(self.now, Datagram(peer_addr(addr), data)))

    # -- driving the core -----------------------------------------------------------------

    def call(self, fn: Callable[[float], Iterable[Action]]) -> None:
        """Run ``fn(now)`` (e.g. ``lambda now: endpoint.send(now, addr, b"hi")``) and
        carry out the actions it returns."""
        self.apply(fn(self.now))

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Single datagrams (``Send``) applied inside leave together when the block
        ends, so the datagrams of many small messages to one next hop (a read batch of a
        UDP flow's packets, say) go in one GSO send instead of one system call each.
        Everything else is carried out at once, as outside a block: deliveries, timers,
        and a large message's ``SendSegments``, before which the datagrams held so far
        leave (in order, and nothing large waits in memory: a burst of 64 deliveries of
        60 KB held to the end used to add megabytes to the receiver's RSS). Nested
        blocks join the outermost."""
        if self._held is not None:
            yield
            return
        self._held = []
        try:
            yield
        finally:
            held, self._held = self._held, None
            if held:
                self._apply_now(held)

    def apply(self, actions: Iterable[Action]) -> None:
        held = self._held
        if held is None:
            self._apply_now(actions)
            return
        for a in actions:
            if type(a) is Send:
                held.append(a)
                continue
            if held and type(a) is SendSegments:
                self._apply_now(held)
                held.clear()
            self._apply_now((a,))

    def _apply_now(self, actions: Iterable[Action]) -> None:
        batch: list[bytes] = []
        batch_addr: Any = None
        a: Any  # dispatched on the exact type; mypy cannot narrow through `t`
        for a in actions:
            t = type(a)
            if t is SendSegments:
                if batch:
                    self._send(batch_addr, batch)
                    batch, batch_addr = [], None
                if _routable(a.addr):
                    self._send_segments(a)  # one message: one GSO send
                else:
                    log.warning("unroutable_send", addr=repr(a.addr))
                continue
            if t is Send:
                addr = a.addr
                data = a.data
                if (
                    addr == batch_addr
                    and len(data) <= len(batch[0])
                    and (len(batch) == 1 or len(batch[-1]) == len(batch[0]))
                ):
                    batch.append(data)  # same destination, fits the segment size
                    continue
                if batch:
                    self._send(batch_addr, batch)
                    batch, batch_addr = [], None
                if not _routable(addr):
                    log.warning("unroutable_send", addr=repr(addr))
                    continue
                batch, batch_addr = [data], addr
            elif isinstance(a, SetTimer):
                self._set_timer(a.at, a.key)
            elif isinstance(a, Deliver):
                if self.on_deliver is not None:
                    self.on_deliver(a)
            elif isinstance(a, Event):
                if self.on_event is not None:
                    self.on_event(a)
            elif isinstance(a, Send):  # a Send subclass: never batched
                if batch:
                    self._send(batch_addr, batch)
                    batch, batch_addr = [], None
                self._send(a.addr, [a.data])
            elif self.on_control is not None:
                self.on_control(a)
        if batch:
            self._send(batch_addr, batch)

    def _send(self, addr: Any, datagrams: list[bytes]) -> None:
        entry = self._by_family.get(_AF_INET6 if ":" in addr[0] else _AF_INET)
        if entry is None:
            self.send_errors += len(datagrams)
            return
        try:
            if len(datagrams) == 1:
                entry.sock.sendto(datagrams[0], addr)
            else:
                # every datagram but the last is exactly the first one's size: the
                # kernel cuts the concatenation back into the same datagrams
                udpfast.send_segments(entry.sock, datagrams, len(datagrams[0]), addr)
        except OSError:
            # A full socket buffer or an ICMP error from an earlier send: these datagrams
            # are lost like any on the wire, and the rest of the actions (the retry timer
            # among them) must still happen.
            self.send_errors += len(datagrams)
            return
        self.sent_datagrams += len(datagrams)
        self.sent_bytes += sum(len(d) for d in datagrams)

    def _send_segments(self, a: SendSegments) -> None:
        addr: Any = a.addr  # (host, port): apply checked it is routable
        entry = self._by_family.get(_AF_INET6 if ":" in addr[0] else _AF_INET)
        count = a.count
        if entry is None:
            self.send_errors += count
            return
        try:
            sent = udpfast.send_segments(entry.sock, a.data, a.size, addr)
        except OSError:
            self.send_errors += count  # lost like any datagram on the wire (see _send)
            return
        self.sent_datagrams += sent
        self.sent_bytes += len(a.data)

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


def _routable(addr: Any) -> bool:
    return isinstance(addr, tuple) and len(addr) == 2
