"""Linux UDP segmentation offload (GSO) and receive coalescing (GRO) for the data path.

*Send*: :func:`send_segments` hands the kernel one buffer (or a list of buffers, taken as
their concatenation) and a segment size in one ``sendmsg`` with a ``UDP_SEGMENT`` control
message; the kernel cuts it into datagrams of ``segment_size`` bytes (the last may be
shorter), so 45 datagrams of 1,454 bytes cost one system call instead of 45. Receivers
see ordinary datagrams. The kernel refuses a batch (``EINVAL``/``EIO``) when a segment
and its headers exceed the route's MTU, when checksums are off (``SO_NO_CHECK``) or the
route goes through IPsec, and a kernel before 4.18 knows no ``UDP_SEGMENT`` at all: the
first refusal on a socket is logged and counted, and from then on that socket sends one
``sendto`` per datagram.

*Receive*: after :func:`enable_gro` the kernel may hand one ``recvmsg`` several datagrams
of one flow, back to back, with a ``UDP_GRO`` control message giving their size (every
one but the last is exactly that long). :func:`recv_batch` returns ``(nbytes,
segment_size, addr)`` and :func:`split_segments` cuts the buffer again.

A *connected* UDP socket reports an ICMP port or host unreachable for an earlier datagram
as ``ConnectionRefusedError`` on its next send or receive, and that call does nothing
else. :func:`send_segments` retries such a send once; :func:`recv_batch` returns
``(0, 0, None)`` for it. Both count it in :data:`stats`.
"""

from __future__ import annotations

import errno
import socket
import sys
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import structlog

from x0tta6bl4.errors import DatagramTruncated
from x0tta6bl4.sansio import segments

log = structlog.get_logger("x0tta6bl4.node.udpfast")

SOL_UDP: Final = 17
UDP_SEGMENT: Final = 103  # <linux/udp.h>, since 4.18
UDP_GRO: Final = 104  # since 5.0
# The kernel's cap on segments per GSO send is 64 (128 since 6.9): use the older one.
UDP_MAX_SEGMENTS: Final = 64
# Largest UDP payload in one IPv4 datagram; a GSO batch is one datagram until the kernel
# cuts it, so it is bounded the same way (IPv6 allows 65,527; use the smaller).
MAX_GSO_BYTES: Final = 65_507
MAX_DATAGRAM: Final = 65_535
SO_SNDBUFFORCE: Final = 32
SO_RCVBUFFORCE: Final = 33
_IOV_MAX: Final = 1024  # buffers one sendmsg takes; longer lists are joined first
# Room for the UDP_GRO int and a couple of other control messages the caller may enable.
_ANC_SIZE: Final = socket.CMSG_SPACE(4) * 4
# Plain ints: the socket module's are IntFlag members, whose ``&`` runs in Python (1.8 us
# against 0.03 us here), once per receive.
_MSG_TRUNC: Final = int(socket.MSG_TRUNC)
_MSG_CTRUNC: Final = int(socket.MSG_CTRUNC)
# Errors that mean "this socket, route or kernel will not segment": fall back for good.
_REFUSALS: Final = frozenset({errno.EINVAL, errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP})

BytesLike = bytes | bytearray | memoryview
Addr = Any  # (host, port) or (host, port, flowinfo, scope_id), as the socket module uses


@dataclass
class UdpFastStats:
    """Process-wide counters; nothing here is dropped without being counted."""

    gso_sends: int = 0  # sendmsg calls carrying UDP_SEGMENT
    gso_datagrams: int = 0  # datagrams those calls carried
    plain_datagrams: int = 0  # datagrams sent one per call (single or fallback)
    gso_refusals: int = 0  # sockets switched to the fallback
    refused_sends: int = 0  # ConnectionRefusedError on send (retried once)
    dropped_sends: int = 0  # datagrams not sent: refused twice in a row
    refused_recvs: int = 0  # ConnectionRefusedError on receive
    gro_batches: int = 0  # receives that carried more than one datagram


stats = UdpFastStats()

_kernel_gso: bool | None = None
_gso_refused: weakref.WeakSet[socket.socket] = weakref.WeakSet()


def kernel_supports_gso() -> bool:
    """Whether this kernel knows ``UDP_SEGMENT`` (asked once, then remembered)."""
    global _kernel_gso
    if _kernel_gso is None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.getsockopt(SOL_UDP, UDP_SEGMENT)
                _kernel_gso = True
            except OSError:
                _kernel_gso = False
                log.warning("udp_gso_unsupported", reason="kernel knows no UDP_SEGMENT")
    return _kernel_gso


def gso_enabled(sock: socket.socket) -> bool:
    """Whether :func:`send_segments` will use GSO on this socket."""
    return kernel_supports_gso() and sock not in _gso_refused


def enable_gro(sock: socket.socket) -> bool:
    """Ask for coalesced receives on ``sock``; False if the kernel does not offer them."""
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError as e:
        log.warning("udp_gro_unsupported", error=str(e))
        return False
    return True


def set_buffers(sock: socket.socket, size: int) -> int:
    """Set both socket buffers to ``size`` bytes, past ``net.core.[rw]mem_max`` when
    privileged (``SO_*BUFFORCE``). Returns the receive buffer the kernel granted."""
    for force, plain in ((SO_SNDBUFFORCE, socket.SO_SNDBUF), (SO_RCVBUFFORCE, socket.SO_RCVBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, plain, size)
    granted: int = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    return granted


def _flatten(buffers: list[BytesLike]) -> memoryview:
    if len(buffers) == 1:
        return memoryview(buffers[0]).cast("B")
    return memoryview(b"".join(buffers))


def _retry_refused(fn: Any, *args: Any) -> bool:
    """Run one send call; a ConnectionRefusedError reports an *earlier* datagram's ICMP
    error and sent nothing, so try once more. False if refused twice."""
    try:
        fn(*args)
        return True
    except ConnectionRefusedError:
        stats.refused_sends += 1
    try:
        fn(*args)
        return True
    except ConnectionRefusedError:
        stats.refused_sends += 1
        return False


def send_segments(
    sock: socket.socket,
    data: BytesLike | Sequence[BytesLike],
    segment_size: int,
    addr: Addr | None = None,
) -> int:
    """Send ``data`` (a buffer, or a list of buffers taken as their concatenation) as
    datagrams of ``segment_size`` bytes, the last possibly shorter, to ``addr`` (``None``
    on a connected socket). One system call per 64 segments or 65,507 bytes when the kernel
    segments, one per datagram otherwise. Returns the number of datagrams sent: fewer
    than asked only when a connected socket was refused twice in a row (counted in
    ``stats.dropped_sends``). Other socket errors (``BlockingIOError``, ``ENOBUFS``, no
    route) propagate as ``OSError``."""
    if not 0 < segment_size <= MAX_GSO_BYTES:
        raise ValueError(f"segment_size {segment_size} outside 1..{MAX_GSO_BYTES}")
    buffers: list[BytesLike] = (
        [data] if isinstance(data, bytes | bytearray | memoryview) else list(data)
    )
    total = sum(len(b) for b in buffers)
    if total == 0:
        return 0
    count = -(-total // segment_size)
    if count > 1 and gso_enabled(sock):
        per_call = min(UDP_MAX_SEGMENTS, MAX_GSO_BYTES // segment_size)
        cmsg = [(SOL_UDP, UDP_SEGMENT, segment_size.to_bytes(2, sys.byteorder))]
        if count <= per_call and len(buffers) <= _IOV_MAX:
            sent = _send_gso(sock, buffers, cmsg, addr, count)
            if sent is not None:
                return sent
        else:
            view = _flatten(buffers)
            step = per_call * segment_size
            done = 0
            for start in range(0, total, step):
                chunk = view[start : start + step]
                n = -(-len(chunk) // segment_size)
                sent = _send_gso(sock, [chunk], cmsg, addr, n)
                if sent is None:  # refused from here on: the rest one by one
                    return done + _send_plain(sock, view[start:], segment_size, addr)
                done += sent
            return done
    return _send_plain(sock, _flatten(buffers), segment_size, addr)


def _send_gso(
    sock: socket.socket,
    buffers: list[BytesLike],
    cmsg: list[tuple[int, int, bytes]],
    addr: Addr | None,
    count: int,
) -> int | None:
    """One GSO sendmsg: the datagrams sent, or None if the kernel refused (fall back)."""
    args = (buffers, cmsg, 0, addr) if addr is not None else (buffers, cmsg)
    try:
        ok = _retry_refused(sock.sendmsg, *args)
    except OSError as e:
        if e.errno not in _REFUSALS:
            raise
        _gso_refused.add(sock)
        stats.gso_refusals += 1
        log.warning(
            "udp_gso_refused",
            errno=errno.errorcode.get(e.errno or 0, e.errno),
            error=str(e),
            segment_size=int.from_bytes(cmsg[0][2], sys.byteorder),
            fallback="one sendto per datagram on this socket",
        )
        return None
    if not ok:
        stats.dropped_sends += count
        return 0
    stats.gso_sends += 1
    stats.gso_datagrams += count
    return count


def _send_plain(sock: socket.socket, view: memoryview, segment_size: int, addr: Addr | None) -> int:
    sent = 0
    for start in range(0, len(view), segment_size):
        piece = view[start : start + segment_size]
        if addr is None:
            ok = _retry_refused(sock.send, piece)
        else:
            ok = _retry_refused(sock.sendto, piece, addr)
        if ok:
            sent += 1
        else:
            stats.dropped_sends += 1
    stats.plain_datagrams += sent
    return sent


def recv_batch(sock: socket.socket, buf: bytearray | memoryview) -> tuple[int, int, Addr | None]:
    """Receive into ``buf`` (make it 65,535 bytes: a GRO batch is up to that long).

    Returns ``(nbytes, segment_size, addr)``: ``nbytes`` bytes from ``addr`` holding
    datagrams of ``segment_size`` bytes back to back (the last may be shorter; without
    GRO, or for a single datagram, ``segment_size == nbytes``). ``(0, 0, None)`` means a
    connected socket reported an ICMP error instead of data: call again. Raises
    :class:`DatagramTruncated` if ``buf`` was too small (the excess is lost);
    ``BlockingIOError`` on an empty non-blocking socket.
    """
    try:
        nbytes, ancdata, flags, addr = sock.recvmsg_into([buf], _ANC_SIZE)
    except ConnectionRefusedError:
        stats.refused_recvs += 1
        return 0, 0, None
    if flags & _MSG_TRUNC:
        raise DatagramTruncated(f"datagram larger than the {len(buf)}-byte receive buffer")
    segment_size = nbytes
    for level, kind, value in ancdata:
        if level == SOL_UDP and kind == UDP_GRO and len(value) >= 4:
            segment_size = int.from_bytes(value[:4], sys.byteorder, signed=True)
            break
    else:
        if flags & _MSG_CTRUNC:
            # The UDP_GRO message may have been cut off: the batch cannot be split again.
            raise DatagramTruncated("control messages truncated: segment size unknown")
    if segment_size <= 0 or segment_size > nbytes:
        segment_size = nbytes
    elif segment_size < nbytes:
        stats.gro_batches += 1
    return nbytes, segment_size, addr


def split_segments(buf: BytesLike, nbytes: int, segment_size: int) -> list[bytes]:
    """The datagrams of a :func:`recv_batch` result, copied out of ``buf`` (which the
    next receive overwrites). For a core that takes a batch whole, the runner copies
    the buffer once instead (``handle_segments``)."""
    view = memoryview(buf)[:nbytes]
    if segment_size <= 0 or segment_size >= nbytes:
        return [view.tobytes()] if nbytes else []
    return segments(view, segment_size)


__all__ = [
    "MAX_GSO_BYTES",
    "UDP_GRO",
    "UDP_MAX_SEGMENTS",
    "UDP_SEGMENT",
    "UdpFastStats",
    "enable_gro",
    "gso_enabled",
    "kernel_supports_gso",
    "recv_batch",
    "send_segments",
    "set_buffers",
    "split_segments",
    "stats",
]
