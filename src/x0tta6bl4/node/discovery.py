"""LAN discovery (optional, off by default): neighbours on the same link find each other
by IPv6 link-local multicast beacons.

A beacon carries only the sender's certificate fingerprint and the UDP port its agent
listens on. Receiving one starts a handshake to the sender's link-local address, nothing
more: the handshake authenticates the peer with its CA-issued certificate like any
configured neighbour, so a forged beacon costs at most a handshake attempt (bounded:
each source is answered once per interval, and at most ``MAX_DISCOVERED`` neighbours are
added this way). Beacons are sent on every interface with an IPv6 link-local address
(or the configured ones)::

    BEACON  magic "X0TB" | version u8 (1) | fingerprint 32 | port u16     (39 bytes)
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import structlog

from x0tta6bl4.errors import DecodeError
from x0tta6bl4.node.udp import peer_addr

if TYPE_CHECKING:
    from x0tta6bl4.node.agent import Agent

log = structlog.get_logger("x0tta6bl4.node.discovery")

GROUP: Final = "ff02::7830:7430"  # link-local scope; "x0t0" in the low bits
MAGIC: Final = b"X0TB"
VERSION: Final = 1
_BEACON = struct.Struct(">4sB32sH")
BEACON_SIZE: Final = _BEACON.size  # 39
MAX_DISCOVERED: Final = 64
"""Neighbours added by beacons at most (a flood of forged beacons dials no more)."""


@dataclass(frozen=True, slots=True)
class Beacon:
    fingerprint: bytes
    port: int

    def encode(self) -> bytes:
        return _BEACON.pack(MAGIC, VERSION, self.fingerprint, self.port)


def decode_beacon(data: bytes) -> Beacon:
    """Raises DecodeError for anything but a well-formed version-1 beacon."""
    if len(data) != BEACON_SIZE:
        raise DecodeError(f"beacon of {len(data)} bytes, expected {BEACON_SIZE}")
    magic, version, fingerprint, port = _BEACON.unpack(data)
    if magic != MAGIC:
        raise DecodeError("not an x0tta6bl4 beacon")
    if version != VERSION:
        raise DecodeError(f"beacon version {version}, expected {VERSION}")
    if port == 0:
        raise DecodeError("beacon names port 0")
    return Beacon(fingerprint, port)


def link_local_interfaces() -> dict[str, int]:
    """Interface name -> index, for interfaces holding an IPv6 link-local address."""
    found: dict[str, int] = {}
    with contextlib.suppress(OSError), open("/proc/net/if_inet6") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and parts[0].startswith("fe80") and parts[5] != "lo":
                found[parts[5]] = int(parts[1], 16)
    return found


class Discovery:
    def __init__(self, agent: Agent, port: int, interval: float, interfaces: list[str]) -> None:
        self.agent = agent
        self.port = port
        self.interval = interval
        self.wanted = interfaces
        self.sock: socket.socket | None = None
        self.ifaces: dict[str, int] = {}
        self._answered: dict[str, float] = {}  # source -> when its beacon was last acted on
        self._dialled: set[tuple[str, int]] = set()
        self._task: asyncio.Task[None] | None = None
        self._listen_port = 0

    def start(self, loop: asyncio.AbstractEventLoop, listen_port: int) -> None:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 1)
            sock.setblocking(False)
            sock.bind(("::", self.port))
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self._refresh_interfaces()
        self._listen_port = listen_port
        loop.add_reader(sock.fileno(), self._readable)
        self._task = loop.create_task(self._beacons())
        log.info("discovery_started", interfaces=sorted(self.ifaces), port=self.port)

    async def close(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.sock is not None:
            with contextlib.suppress(Exception):
                loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None

    def _refresh_interfaces(self) -> None:
        """Join the beacon group on interfaces that gained a link-local address, forget
        the ones that lost it. Checked every round: an agent started at boot, before the
        network, must not stay deaf on links that come up later."""
        sock = self.sock
        if sock is None:
            return
        found = link_local_interfaces()
        now = {n: i for n, i in found.items() if not self.wanted or n in self.wanted}
        if now == self.ifaces:
            return
        group = socket.inet_pton(socket.AF_INET6, GROUP)
        for name, index in self.ifaces.items():
            if now.get(name) != index:
                with contextlib.suppress(OSError):  # the interface may be gone already
                    sock.setsockopt(
                        socket.IPPROTO_IPV6,
                        socket.IPV6_LEAVE_GROUP,
                        group + struct.pack("@I", index),
                    )
        joined = {}
        for name, index in now.items():
            if self.ifaces.get(name) == index:
                joined[name] = index
                continue
            try:
                sock.setsockopt(
                    socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, group + struct.pack("@I", index)
                )
            except OSError as exc:  # going down again as we look: next round
                log.warning("discovery_join_failed", interface=name, error=str(exc))
                continue
            joined[name] = index
        if joined != self.ifaces:
            log.info("discovery_interfaces", interfaces=sorted(joined))
        self.ifaces = joined

    async def _beacons(self) -> None:
        rng = random.Random()  # jitter only: not secret
        while True:
            self._refresh_interfaces()
            # The certificate in use now: a renewed one (Agent.apply_certificate) has
            # another fingerprint.
            beacon = self.beacon()
            for index in self.ifaces.values():
                with contextlib.suppress(OSError):
                    assert self.sock is not None
                    self.sock.sendto(beacon, (GROUP, self.port, 0, index))
            await asyncio.sleep(self.interval * (0.8 + 0.4 * rng.random()))

    def beacon(self) -> bytes:
        """The beacon to send now: our current certificate's fingerprint, our port."""
        return Beacon(self.agent.creds.cert.fingerprint, self._listen_port).encode()

    def _readable(self) -> None:
        sock = self.sock
        for _ in range(64):
            if sock is None:
                return
            try:
                data, src = sock.recvfrom(BEACON_SIZE + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            self.on_beacon(data, src)

    def on_beacon(self, data: bytes, src: tuple[str, int, int, int]) -> None:
        try:
            beacon = decode_beacon(data)
        except DecodeError:
            self.agent.count("bad_beacon")
            return
        if beacon.fingerprint == self.agent.creds.cert.fingerprint:
            return  # our own, looped back
        host = peer_addr(src)[0]
        now = time.monotonic()
        last = self._answered.get(host)
        if last is not None and now - last < self.interval:
            return  # one handshake per source and interval at most
        self._answered[host] = now
        if len(self._answered) > 4 * MAX_DISCOVERED:
            del self._answered[next(iter(self._answered))]
        addr = (host, beacon.port)
        if self.agent.has_live_link(beacon.fingerprint):
            return  # already a neighbour by another address
        if addr in self._dialled or len(self._dialled) >= MAX_DISCOVERED:
            return
        self._dialled.add(addr)
        self.agent.count("discovered")
        log.info("beacon_heard", addr=f"[{host}]:{beacon.port}")
        self.agent.dial(addr)


__all__ = ["Beacon", "Discovery", "decode_beacon"]
