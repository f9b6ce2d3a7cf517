"""TUN mode: IP packets between the host and the mesh, sealed end to end.

Every node owns one overlay IPv6 address, a ULA derived from its SPIFFE ID inside a /48
derived from the trust domain (``tun.overlay_ipv6``), so a node computes any peer's
address from its name alone; names reach every node ahead of routes (the mesh's NAMES
frames). A packet read from the TUN device goes to the node owning its destination
address, on the mesh's reserved port ``IP_PORT``; packets larger than one datagram are
split by the channel (one AEAD seal per packet) and never rely on IP fragmentation.

Policy is enforced by the receiver on the decrypted packet against the end-to-end
session's verified identity (and by the sender too when it already knows the peer, to
fail fast). Replies are let in by connection tracking: a flow this node opened (or was
allowed to receive) admits its reverse direction until it idles out, as stateful
firewalls do, so a rule reads "web may connect to db:5432", not "and db to web:any".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections import OrderedDict
from collections.abc import Hashable
from typing import TYPE_CHECKING, Final

import structlog

from x0tta6bl4.errors import TunError, VnetHeaderError
from x0tta6bl4.identity.overlay import node_overlay_ipv4, node_overlay_ipv6
from x0tta6bl4.identity.types import VerifiedIdentity
from x0tta6bl4.node.ippacket import Flow, IPAddr, parse_flow, tcp_reset_for, thin_acks
from x0tta6bl4.node.tun import (
    NO_OFFLOAD_BYTES,
    OVERLAY_IPV4_NET,
    VNET_HDR_LEN,
    TunDevice,
    check_vnet_hdr,
    open_tun,
    overlay_prefix,
    parse_vnet_hdr,
)
from x0tta6bl4.observability import recorder

if TYPE_CHECKING:
    from x0tta6bl4.node.agent import Agent

log = structlog.get_logger("x0tta6bl4.node.tun")

IP_PORT: Final = 0xFFFF
"""The mesh port that carries overlay IP packets (message API ports are 1..65534)."""
CONNTRACK_MAX: Final = 65536
CONNTRACK_IDLE: Final = 180.0
FRAGMENTS_MAX: Final = 4096
FRAGMENTS_IDLE: Final = 30.0
"""As long as Linux waits for a fragmented packet's pieces (``ipfrag_time``)."""
READ_BATCH: Final = 64
"""Packets read per wake-up at most, so the socket side is not starved."""
GSO_MAX_SIZE: Final = 60000
"""Largest TCP super-packet the kernel hands the device (with its headers, it stays
under one end-to-end message, 65,533 bytes)."""


_AMBIGUOUS: Final = ""
"""In the address table: two names share this IPv4 address; send to neither."""


class _Recent:
    """Keys seen lately: bounded (the least recently used goes first), each forgotten
    once it has idled ``idle`` seconds."""

    def __init__(self, max_entries: int, idle: float) -> None:
        self._seen: OrderedDict[Hashable, float] = OrderedDict()
        self.max_entries = max_entries
        self.idle = idle

    def note(self, key: Hashable, now: float) -> None:
        self._seen[key] = now
        self._seen.move_to_end(key)
        if len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)

    def holds(self, key: Hashable, now: float) -> bool:
        seen = self._seen.get(key)
        if seen is None or now - seen > self.idle:
            return False
        self._seen[key] = now
        self._seen.move_to_end(key)
        return True

    def __len__(self) -> int:
        return len(self._seen)


class ConnTrack(_Recent):
    """Flows allowed once, whose reverse direction is admitted until idle. Bounded: the
    least recently used entry goes first."""

    def __init__(self, max_entries: int = CONNTRACK_MAX, idle: float = CONNTRACK_IDLE) -> None:
        super().__init__(max_entries, idle)

    def note(self, flow: Flow, now: float) -> None:  # type: ignore[override]
        super().note(flow.reverse_key(), now)

    def admits(self, flow: Flow, now: float) -> bool:
        return self.holds(flow.key(), now)


class FragmentTrack(_Recent):
    """Packets whose first fragment was let through: their later fragments, which carry
    no transport header to decide on, follow it (as a firewall that does not reassemble
    does). A later fragment of anything else is dropped."""

    def __init__(self, max_entries: int = FRAGMENTS_MAX, idle: float = FRAGMENTS_IDLE) -> None:
        super().__init__(max_entries, idle)

    def note(self, flow: Flow, now: float) -> None:  # type: ignore[override]
        if flow.frag_id is not None:
            super().note(flow.fragment_key(), now)

    def admits(self, flow: Flow, now: float) -> bool:
        return self.holds(flow.fragment_key(), now)


class TunPlane:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.settings = agent.settings.tun
        td = agent.bundle.trust_domain
        self.trust_domain = td
        self.address = node_overlay_ipv6(td, agent.name)
        self.address4 = node_overlay_ipv4(td, agent.name) if self.settings.ipv4 else None
        self.prefix = overlay_prefix(td)
        self.conntrack = ConnTrack()
        self.fragments_out = FragmentTrack()
        self.fragments_in = FragmentTrack()
        self.tun: TunDevice | None = None
        self._table: dict[IPAddr, str] = {}
        self._table_size = -1

    def _count(self, what: str) -> None:
        self.agent.count(what)

    async def start(self, loop: asyncio.AbstractEventLoop) -> None:
        s = self.settings
        tun = self._open()
        addresses = [f"{self.address}/{self.prefix.prefixlen}"]
        if self.address4 is not None:
            addresses.append(f"{self.address4}/{OVERLAY_IPV4_NET.prefixlen}")
        options = {
            "mtu": s.mtu,
            "addresses": addresses,
            "ipv6_link_local": False,
            "gso_max_size": GSO_MAX_SIZE,
        }
        # Configured by a short-lived child: pyroute2 stays out of the agent's memory
        # (and its own netlink event loop out of ours).
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "x0tta6bl4.node.tunconf",
            tun.name,
            json.dumps(options),
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await proc.communicate()
        if proc.returncode != 0:
            tun.close()
            raise TunError(f"configuring {tun.name}: {err.decode(errors='replace').strip()}")
        self.tun = tun
        loop.add_reader(tun.fileno(), self._readable)
        log.info("tun_up", device=tun.name, address=str(self.address), mtu=s.mtu)

    def _open(self) -> TunDevice:
        # With a virtio-net header and TSO the kernel hands over TCP super-packets of up
        # to GSO_MAX_SIZE: one read, one end-to-end seal and one write per ~60 KB instead
        # of per MTU. The header travels sealed and is written back unchanged at the far
        # end, where the kernel segments (and checksums) the packet.
        return open_tun(self.settings.name, nonblocking=True, vnet_hdr=True)

    def close(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.tun is not None:
            with contextlib.suppress(Exception):
                loop.remove_reader(self.tun.fileno())
            self.tun.close()
            self.tun = None

    # -- addresses ------------------------------------------------------------------------

    def _lookup(self, dst: IPAddr) -> str | None:
        name = self._table.get(dst)
        if name is None:
            names = self.agent.mesh.known_names()
            if len(names) != self._table_size:  # a new name: rebuild the table
                self._table = self._address_table(names)
                self._table_size = len(names)
                name = self._table.get(dst)
        return name

    def _address_table(self, names: list[str]) -> dict[IPAddr, str]:
        td = self.trust_domain
        table: dict[IPAddr, str] = {node_overlay_ipv6(td, n): n for n in names}
        for n in names:
            a4 = node_overlay_ipv4(td, n)
            # 22 bits can collide: an address two names share goes to neither of them.
            table[a4] = n if table.setdefault(a4, n) == n else _AMBIGUOUS
        return table

    # -- host -> mesh -----------------------------------------------------------------------

    def _readable(self) -> None:
        tun = self.tun
        if tun is None:
            return
        pkts: list[bytes] = []
        for _ in range(READ_BATCH):
            try:
                pkts.append(tun.read())
            except BlockingIOError:
                break
        if len(pkts) > 1:
            # Having written a burst of data, we find the kernel's ACKs for it queued
            # here: the last of each connection says what the others do, and each one
            # costs a seal, a send and the far end's work (0.9 per data super-packet).
            pkts, thinned = thin_acks(pkts, VNET_HDR_LEN)
            if thinned:
                self.agent.count("tun_acks_thinned", thinned)
        with self.agent.batch():
            for pkt in pkts:
                self.outbound(pkt)

    def outbound(self, pkt: bytes) -> None:
        """``pkt``: a virtio-net header and an IP packet, as the device reads them."""
        flow = parse_flow(memoryview(pkt)[VNET_HDR_LEN:])
        if flow is None:
            self._count("tun_malformed")
            return
        name = self._lookup(flow.dst)
        if not name:
            # not an overlay address we know, or (an IPv4 address) two nodes' at once
            self._count("tun_no_node" if name is None else "tun_ipv4_ambiguous")
            return
        now = time.monotonic()
        if flow.frag_later:
            # no ports to decide on: it goes where its first fragment went, or nowhere
            if not self.fragments_out.admits(flow, now):
                self._count("tun_fragment_unmatched")
                return
            self._send(name, pkt)
            return
        ident = self.agent.peer_identity(name)
        if ident is not None and not self.conntrack.admits(flow, now):
            # Fail fast: the receiver would refuse it too.
            d = self.agent.decide_outbound(ident, flow.proto, flow.dport)
            if d is not None and not d.allowed:
                if (m := recorder()) is not None:
                    m.record_policy_decision(d.rule_id, False)
                self._count(f"policy_denied_at_sender:{d.rule_id}")
                return
        self.conntrack.note(flow, now)
        self.fragments_out.note(flow, now)
        self._send(name, pkt)

    def _send(self, name: str, pkt: bytes) -> None:
        try:
            self.agent.send(name, IP_PORT, pkt)
        except (ValueError, OSError) as exc:
            self._count("tun_send_failed")
            log.debug("tun_send_failed", dst=name, error=str(exc))
        except Exception as exc:  # ProtocolError and kin: one packet lost, counted
            self._count("tun_send_failed")
            log.debug("tun_send_failed", dst=name, error=str(exc))

    # -- mesh -> host -----------------------------------------------------------------------

    def inbound(self, src_name: str, ident: VerifiedIdentity | None, pkt: bytes) -> None:
        tun = self.tun
        if tun is None:
            return
        view = memoryview(pkt)
        try:
            check_vnet_hdr(parse_vnet_hdr(view), len(pkt) - VNET_HDR_LEN)
        except VnetHeaderError:
            self._count("tun_malformed")
            return
        flow = parse_flow(view[VNET_HDR_LEN:])
        if flow is None:
            self._count("tun_malformed")
            return
        if flow.dst != (self.address if flow.version == 6 else self.address4):
            self._count("tun_not_for_us")
            return
        # The source address must be the sender's own, in either family: no node speaks
        # for another (the policy decides on the session's identity; applications behind
        # the device see only addresses).
        own = node_overlay_ipv6 if flow.version == 6 else node_overlay_ipv4
        if ident is None or flow.src != own(self.trust_domain, ident.name):
            self._count("tun_spoofed_source")
            return
        now = time.monotonic()
        if flow.frag_later:
            if not self.fragments_in.admits(flow, now):
                self._count("tun_fragment_unmatched")
                return
        elif not self.conntrack.admits(flow, now):
            decision = self.agent.decide(ident, flow.proto, flow.dport) if flow.proto else None
            rule = decision.rule_id if decision is not None else "unknown-protocol"
            allowed = decision is not None and decision.allowed
            if (m := recorder()) is not None:
                m.record_policy_decision(rule, allowed)
            if not allowed:
                self.agent.count(f"policy_denied:{rule}")
                if self.settings.deny_tcp == "reset":
                    rst = tcp_reset_for(view[VNET_HDR_LEN:], flow)
                    if rst is not None:
                        with contextlib.suppress(Exception):
                            self.agent.send(src_name, IP_PORT, NO_OFFLOAD_BYTES + rst)
                return
            self.conntrack.note(flow, now)
        if not flow.frag_later:
            # a first fragment's verdict holds for the rest of its packet
            self.fragments_in.note(flow, now)
        try:
            tun.write(pkt)
        except Exception:  # the kernel refused the packet (malformed): count, go on
            self._count("tun_write_failed")


__all__ = [
    "IP_PORT",
    "ConnTrack",
    "FragmentTrack",
    "TunPlane",
    "node_overlay_ipv4",
    "node_overlay_ipv6",
]
