"""The TUN device: IP packets in and out of the kernel, optionally with virtio-net offload.

``open_tun()`` creates a layer-3 device (``IFF_TUN | IFF_NO_PI``: every read is one IP
packet, no 4-byte packet-information prefix) and returns a :class:`TunDevice` holding the
file descriptor. The device is not persistent: :meth:`TunDevice.close` closes the
descriptor and the kernel removes the interface with it.

With ``vnet_hdr=True`` (``IFF_VNET_HDR``) every read and write starts with a 10-byte
virtio-net header (:class:`VnetHdr`), and ``TUNSETOFFLOAD`` tells the kernel which offloads
the reader accepts. With checksum and TSO offload a TCP sender hands the device one
*super-packet* of up to ``gso_max_size`` bytes plus the header; the far end writes the
same header and packet into its own TUN and its kernel segments (or GRO-receives) it. So
one read, one seal and one write carry up to ~64 KB instead of one MTU. The header is
forced little-endian (``TUNSETVNETLE``) so hosts of either byte order agree on it.

:meth:`TunDevice.configure` sets the device up with pyroute2 (netlink): MTU, addresses,
routes for the overlay prefixes, ``gso_max_size``, link up. pyroute2's synchronous
``IPRoute`` runs its own event loop: from asyncio, call it with ``asyncio.to_thread``.

Overlay addresses are derived in :mod:`x0tta6bl4.identity.overlay` (re-exported here).
"""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import sys
from collections.abc import Iterable, Sequence
from ipaddress import (
    IPv4Interface,
    IPv4Network,
    IPv6Interface,
    IPv6Network,
    ip_interface,
    ip_network,
)
from typing import Final, NamedTuple

import structlog

from x0tta6bl4.errors import TunError, VnetHeaderError
from x0tta6bl4.identity.overlay import (
    OVERLAY_IPV4_NET,
    OVERLAY_PREFIX_LEN,
    overlay_ipv4,
    overlay_ipv6,
    overlay_prefix,
)

log = structlog.get_logger("x0tta6bl4.node.tun")

TUN_PATH: Final = "/dev/net/tun"
IFNAMSIZ: Final = 16
DEFAULT_NAME: Final = "x0t%d"  # the kernel replaces %d with the first free number

# <linux/if_tun.h>: ioctl numbers (_IOW('T', n, int)) and flags.
TUNSETIFF: Final = 0x400454CA
TUNSETOFFLOAD: Final = 0x400454D0
TUNSETVNETHDRSZ: Final = 0x400454D8
TUNSETVNETLE: Final = 0x400454DC
IFF_TUN: Final = 0x0001
IFF_NO_PI: Final = 0x1000
IFF_VNET_HDR: Final = 0x4000
TUN_F_CSUM: Final = 0x01
TUN_F_TSO4: Final = 0x02
TUN_F_TSO6: Final = 0x04
TUN_F_TSO_ECN: Final = 0x08
TUN_F_USO4: Final = 0x20
TUN_F_USO6: Final = 0x40
# Checksum offload plus TCP segmentation offload for both families: TCP super-packets.
DEFAULT_OFFLOAD: Final = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6

# <linux/virtio_net.h>: struct virtio_net_hdr, 10 bytes, little-endian (TUNSETVNETLE).
VNET_HDR_LEN: Final = 10
_VNET = struct.Struct("<BBHHHH")
VIRTIO_NET_HDR_F_NEEDS_CSUM: Final = 0x01
VIRTIO_NET_HDR_F_DATA_VALID: Final = 0x02
VIRTIO_NET_HDR_GSO_NONE: Final = 0
VIRTIO_NET_HDR_GSO_TCPV4: Final = 1
VIRTIO_NET_HDR_GSO_UDP: Final = 3
VIRTIO_NET_HDR_GSO_TCPV6: Final = 4
VIRTIO_NET_HDR_GSO_UDP_L4: Final = 5
VIRTIO_NET_HDR_GSO_ECN: Final = 0x80
_GSO_TYPES: Final = frozenset(
    {
        VIRTIO_NET_HDR_GSO_NONE,
        VIRTIO_NET_HDR_GSO_TCPV4,
        VIRTIO_NET_HDR_GSO_UDP,
        VIRTIO_NET_HDR_GSO_TCPV6,
        VIRTIO_NET_HDR_GSO_UDP_L4,
    }
)
_KNOWN_FLAGS: Final = VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID

MAX_IP_PACKET: Final = 65535
# One read never returns more than this: the largest IP packet plus the virtio header.
READ_SIZE: Final = MAX_IP_PACKET + VNET_HDR_LEN


# --- the virtio-net header ----------------------------------------------------------------


class VnetHdr(NamedTuple):
    """``struct virtio_net_hdr``: how the kernel offloaded the packet that follows it.
    (A named tuple: one is decoded per packet received, and a frozen dataclass's
    ``__init__`` costs several times as much.)"""

    flags: int = 0
    gso_type: int = VIRTIO_NET_HDR_GSO_NONE
    hdr_len: int = 0  # bytes of headers (IP + TCP/UDP) before the payload, a hint
    gso_size: int = 0  # payload bytes per segment once segmented
    csum_start: int = 0  # where the checksummed part starts (from the IP header)
    csum_offset: int = 0  # where, after csum_start, the checksum field lies

    @property
    def needs_csum(self) -> bool:
        return bool(self.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM)

    @property
    def is_gso(self) -> bool:
        return (self.gso_type & ~VIRTIO_NET_HDR_GSO_ECN) != VIRTIO_NET_HDR_GSO_NONE

    def pack(self) -> bytes:
        return _VNET.pack(
            self.flags,
            self.gso_type,
            self.hdr_len,
            self.gso_size,
            self.csum_start,
            self.csum_offset,
        )


# A plain packet: nothing offloaded, the checksums are complete. Prefix it to a packet
# written to a device opened with ``vnet_hdr=True``.
NO_OFFLOAD: Final = VnetHdr()
NO_OFFLOAD_BYTES: Final = NO_OFFLOAD.pack()


def parse_vnet_hdr(buf: bytes | bytearray | memoryview, offset: int = 0) -> VnetHdr:
    """Decode the 10-byte header at ``buf[offset:]`` (layout only, see
    :func:`check_vnet_hdr` for its consistency with the packet)."""
    if offset < 0 or len(buf) - offset < VNET_HDR_LEN:
        raise VnetHeaderError(
            f"virtio-net header needs {VNET_HDR_LEN} bytes, {max(0, len(buf) - offset)} given"
        )
    return VnetHdr(*_VNET.unpack_from(buf, offset))


def check_vnet_hdr(hdr: VnetHdr, packet_len: int) -> None:
    """Reject a header that does not fit a packet of ``packet_len`` bytes: unknown flags or
    GSO type, a checksum field outside the packet, a GSO packet without a segment size.
    The kernel checks again on write; this lets a receiver drop and count first."""
    if hdr.flags & ~_KNOWN_FLAGS:
        raise VnetHeaderError(f"unknown virtio-net flags {hdr.flags:#x}")
    if hdr.gso_type & ~VIRTIO_NET_HDR_GSO_ECN not in _GSO_TYPES:
        raise VnetHeaderError(f"unknown GSO type {hdr.gso_type:#x}")
    if packet_len <= 0 or packet_len > MAX_IP_PACKET:
        raise VnetHeaderError(f"packet of {packet_len} bytes after the virtio-net header")
    if hdr.hdr_len > packet_len:
        raise VnetHeaderError(f"hdr_len {hdr.hdr_len} beyond a {packet_len}-byte packet")
    if hdr.needs_csum and hdr.csum_start + hdr.csum_offset + 2 > packet_len:
        raise VnetHeaderError(
            f"checksum at {hdr.csum_start}+{hdr.csum_offset} beyond a {packet_len}-byte packet"
        )
    if hdr.is_gso:
        if hdr.gso_size == 0:
            raise VnetHeaderError("GSO packet with gso_size 0")
        if not hdr.needs_csum:
            raise VnetHeaderError("GSO packet without a partial checksum")


def split_vnet(buf: bytes | bytearray | memoryview) -> tuple[VnetHdr, memoryview]:
    """Split what a ``vnet_hdr`` device read (or what a peer sent to be written) into the
    checked header and a view of the IP packet behind it."""
    hdr = parse_vnet_hdr(buf)
    view = memoryview(buf)[VNET_HDR_LEN:]
    check_vnet_hdr(hdr, len(view))
    return hdr, view


# --- the device ---------------------------------------------------------------------------

Address = IPv4Interface | IPv6Interface
Prefix = IPv4Network | IPv6Network


class TunDevice:
    """An open TUN device. ``read``/``readinto``/``write`` move one packet each (with its
    virtio-net header first when ``vnet_hdr``). A non-blocking device raises
    ``BlockingIOError`` when nothing is there; other failures raise :class:`TunError`."""

    def __init__(self, fd: int, name: str, *, vnet_hdr: bool, offload: int) -> None:
        self.fd = fd
        self.name = name
        self.vnet_hdr = vnet_hdr
        self.offload = offload
        self._closed = False

    def fileno(self) -> int:
        return self.fd

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self.fd}"
        return f"TunDevice({self.name!r}, {state}, vnet_hdr={self.vnet_hdr})"

    # -- packets ------------------------------------------------------------------------

    def read(self, size: int = READ_SIZE) -> bytes:
        try:
            return os.read(self.fd, size)
        except BlockingIOError:
            raise
        except OSError as e:
            raise TunError(f"read from {self.name}: {e}") from e

    def readinto(self, buf: bytearray | memoryview) -> int:
        try:
            return os.readv(self.fd, (buf,))
        except BlockingIOError:
            raise
        except OSError as e:
            raise TunError(f"read from {self.name}: {e}") from e

    def write(self, packet: bytes | bytearray | memoryview) -> int:
        """Write one packet; the kernel rejects a malformed one (``TunError``, EINVAL)."""
        try:
            return os.write(self.fd, packet)
        except BlockingIOError:
            raise
        except OSError as e:
            raise TunError(f"write of {len(packet)} bytes to {self.name}: {e}") from e

    def writev(self, parts: Sequence[bytes | bytearray | memoryview]) -> int:
        """Write one packet given in pieces (say ``NO_OFFLOAD_BYTES`` and an IP packet)."""
        try:
            return os.writev(self.fd, parts)
        except BlockingIOError:
            raise
        except OSError as e:
            raise TunError(f"write to {self.name}: {e}") from e

    def set_blocking(self, blocking: bool) -> None:
        os.set_blocking(self.fd, blocking)

    # -- configuration ------------------------------------------------------------------

    def configure(
        self,
        *,
        mtu: int | None = None,
        addresses: Iterable[Address | str] = (),
        routes: Iterable[Prefix | str] = (),
        gso_max_size: int | None = None,
        ipv6_link_local: bool = False,
        up: bool = True,
    ) -> None:
        """Set the device up. ``addresses`` are interfaces (``fdxx::1/128``,
        ``198.18.200.1/24``); ``routes`` are prefixes routed into the device (the overlay
        /48, say). ``ipv6_link_local=False`` keeps the kernel from giving the device a
        fe80:: address, so it sends no router solicitations or MLD reports into the mesh.
        Idempotent: addresses and routes are replaced, not duplicated."""
        # Imported here: pyroute2 is Linux-only and costs ~100 ms to import.
        from pyroute2 import IPRoute  # type: ignore[import-untyped]
        from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]

        addrs = [a if not isinstance(a, str) else ip_interface(a) for a in addresses]
        nets = [n if not isinstance(n, str) else ip_network(n) for n in routes]
        if not ipv6_link_local:
            self._sysctl(f"net/ipv6/conf/{self.name}/addr_gen_mode", "1")
        try:
            with IPRoute() as ipr:
                found = ipr.link_lookup(ifname=self.name)
                if not found:
                    raise TunError(f"device {self.name} not found in this network namespace")
                index = found[0]
                if mtu is not None:
                    ipr.link("set", index=index, mtu=mtu)
                if gso_max_size is not None:
                    try:
                        ipr.link("set", index=index, gso_max_size=gso_max_size)
                    except NetlinkError as e:
                        self._gso_max_size_fallback(gso_max_size, e)
                for a in addrs:
                    ipr.addr(
                        "replace", index=index, address=str(a.ip), prefixlen=a.network.prefixlen
                    )
                if up:
                    ipr.link("set", index=index, state="up")
                for n in nets:
                    ipr.route("replace", dst=str(n), oif=index)
        except NetlinkError as e:
            raise TunError(f"configuring {self.name}: {e}") from e
        log.info(
            "tun_configured",
            device=self.name,
            mtu=mtu,
            addresses=[str(a) for a in addrs],
            routes=[str(n) for n in nets],
            gso_max_size=gso_max_size,
        )

    def _gso_max_size_fallback(self, size: int, error: Exception) -> None:
        # pyroute2 sends IFLA_GSO_MAX_SIZE in RTM_NEWLINK, which kernels before 5.x refuse
        # to change (and older pyroute2 releases do not know the attribute): try iproute2's
        # `ip link set`; if that fails too, the default (64 KB) stays, which only costs
        # super-packets that no longer fit one sealed UDP GSO batch.
        import shutil  # here: the agent process never runs this, the configuring child does

        ip = shutil.which("ip")
        if ip is not None:
            done = subprocess.run(
                [ip, "link", "set", "dev", self.name, "gso_max_size", str(size)],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
            if done.returncode == 0:
                log.info("tun_gso_max_size_via_ip", device=self.name, netlink_error=str(error))
                return
            error = TunError(done.stderr.strip())
        log.warning("tun_gso_max_size_unset", device=self.name, size=size, error=str(error))

    @staticmethod
    def _sysctl(key: str, value: str) -> None:
        try:
            with open(f"/proc/sys/{key}", "w") as f:
                f.write(value)
        except OSError as e:  # no IPv6 in this kernel or namespace: nothing to disable
            log.debug("tun_sysctl_skipped", key=key, error=str(e))

    # -- lifetime -----------------------------------------------------------------------

    def close(self) -> None:
        """Close the descriptor; the kernel removes the (non-persistent) device."""
        if not self._closed:
            self._closed = True
            os.close(self.fd)

    def __enter__(self) -> TunDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_tun(
    name: str = DEFAULT_NAME,
    *,
    vnet_hdr: bool = False,
    offload: int | None = None,
    nonblocking: bool = False,
) -> TunDevice:
    """Create a TUN device (``IFF_TUN | IFF_NO_PI``) in the caller's network namespace.

    ``name`` may hold ``%d`` for the kernel to number it; the device's real name is
    ``TunDevice.name``. With ``vnet_hdr`` every packet carries a :class:`VnetHdr` and
    ``offload`` (default :data:`DEFAULT_OFFLOAD`: checksum + TSO4 + TSO6) says which
    offloads this reader accepts; ``offload=0`` gets plain packets behind an empty header.
    Needs CAP_NET_ADMIN.
    """
    encoded = name.encode()
    if not encoded or len(encoded) >= IFNAMSIZ or b"/" in encoded or b"\0" in encoded:
        raise TunError(f"invalid interface name {name!r} (1-15 bytes, no '/')")
    if offload is not None and not vnet_hdr and offload:
        raise TunError("offloads need vnet_hdr=True")
    flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
    try:
        fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC | (os.O_NONBLOCK if nonblocking else 0))
    except OSError as e:
        raise TunError(f"open {TUN_PATH}: {e}") from e
    try:
        ifr = fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", encoded, flags))
        real = bytes(ifr[:IFNAMSIZ]).rstrip(b"\0").decode()
        chosen = 0
        if vnet_hdr:
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
            try:
                fcntl.ioctl(fd, TUNSETVNETLE, struct.pack("i", 1))
            except OSError:
                if sys.byteorder != "little":
                    raise
                # native order is little-endian here: the header is LE without asking
            chosen = DEFAULT_OFFLOAD if offload is None else offload
            fcntl.ioctl(fd, TUNSETOFFLOAD, chosen)
    except OSError as e:
        os.close(fd)
        raise TunError(f"create TUN device {name!r}: {e}") from e
    except BaseException:
        os.close(fd)
        raise
    log.info("tun_opened", device=real, vnet_hdr=vnet_hdr, offload=chosen)
    return TunDevice(fd, real, vnet_hdr=vnet_hdr, offload=chosen)


__all__ = [
    "DEFAULT_OFFLOAD",
    "NO_OFFLOAD",
    "NO_OFFLOAD_BYTES",
    "OVERLAY_IPV4_NET",
    "OVERLAY_PREFIX_LEN",
    "READ_SIZE",
    "VNET_HDR_LEN",
    "TunDevice",
    "VnetHdr",
    "check_vnet_hdr",
    "open_tun",
    "overlay_ipv4",
    "overlay_ipv6",
    "overlay_prefix",
    "parse_vnet_hdr",
    "split_vnet",
]
