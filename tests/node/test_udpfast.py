"""UDP GSO/GRO helpers on loopback (127.0.0.1): no privileges needed."""

from __future__ import annotations

import errno
import socket
import sys
import weakref
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from x0tta6bl4.errors import DatagramTruncated
from x0tta6bl4.node import udpfast

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="UDP GSO/GRO are Linux-only")

SO_NO_CHECK = 11  # <asm-generic/socket.h>: a socket without UDP checksums cannot use GSO


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    made: list[socket.socket] = []
    yield made
    for s in made:
        s.close()


def _udp(made: list[socket.socket], bind: bool = True, timeout: float = 2.0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    made.append(s)
    if bind:
        s.bind(("127.0.0.1", 0))
    s.settimeout(timeout)
    return s


def _payload(n: int) -> bytes:
    return bytes(i % 251 for i in range(n))


def _drain(sock: socket.socket, count: int) -> list[bytes]:
    return [sock.recv(udpfast.MAX_DATAGRAM) for _ in range(count)]


@pytest.fixture(autouse=True)
def _fresh_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(udpfast, "stats", udpfast.UdpFastStats())
    monkeypatch.setattr(udpfast, "_gso_refused", weakref.WeakSet())


needs_gso = pytest.mark.skipif(not udpfast.kernel_supports_gso(), reason="kernel lacks UDP GSO")


@needs_gso
def test_gso_segments_arrive_as_separate_datagrams(sockets: list[socket.socket]) -> None:
    rx, tx = _udp(sockets), _udp(sockets, bind=False)
    data = _payload(10 * 1454 + 100)
    assert udpfast.send_segments(tx, data, 1454, rx.getsockname()) == 11
    got = _drain(rx, 11)
    assert [len(d) for d in got] == [1454] * 10 + [100]
    assert b"".join(got) == data
    assert udpfast.stats.gso_sends == 1
    assert udpfast.stats.gso_datagrams == 11
    assert udpfast.stats.plain_datagrams == 0


@needs_gso
def test_a_list_of_buffers_is_cut_as_its_concatenation(sockets: list[socket.socket]) -> None:
    rx, tx = _udp(sockets), _udp(sockets, bind=False)
    # Header + body pairs, as the data path will hand them over: 3 datagrams of 1000.
    parts: list[bytes | bytearray] = [
        b"H" * 10,
        b"a" * 990,
        b"H" * 10,
        b"b" * 990,
        bytearray(b"H" * 10),
        b"c" * 990,
    ]
    assert udpfast.send_segments(tx, parts, 1000, rx.getsockname()) == 3
    assert _drain(rx, 3) == [b"H" * 10 + b"a" * 990, b"H" * 10 + b"b" * 990, b"H" * 10 + b"c" * 990]


@needs_gso
def test_more_than_one_gso_batch_is_split_into_several_calls(
    sockets: list[socket.socket],
) -> None:
    rx, tx = _udp(sockets), _udp(sockets, bind=False)
    udpfast.set_buffers(rx, 4 << 20)
    data = _payload(100 * 1454)  # 45 segments of 1,454 bytes fit one call: 3 calls
    assert udpfast.send_segments(tx, data, 1454, rx.getsockname()) == 100
    assert udpfast.stats.gso_sends == 3
    assert b"".join(_drain(rx, 100)) == data
    # 64-segment cap for small segments: 200 x 100 B = 4 calls
    assert udpfast.send_segments(tx, bytes(200 * 100), 100, rx.getsockname()) == 200
    assert udpfast.stats.gso_sends == 7


@needs_gso
def test_gro_receive_coalesces_and_split_segments_cuts_again(
    sockets: list[socket.socket],
) -> None:
    rx, tx = _udp(sockets), _udp(sockets, bind=False)
    assert udpfast.enable_gro(rx)
    data = _payload(20 * 1200 + 7)
    udpfast.send_segments(tx, data, 1200, rx.getsockname())
    buf = bytearray(udpfast.MAX_DATAGRAM)
    nbytes, seg, addr = udpfast.recv_batch(rx, buf)
    # On loopback a GSO batch reaches a GRO socket whole: one receive, 21 datagrams.
    assert (nbytes, seg) == (len(data), 1200)
    assert addr == ("127.0.0.1", tx.getsockname()[1])
    pieces = udpfast.split_segments(buf, nbytes, seg)
    assert [len(p) for p in pieces] == [1200] * 20 + [7]
    assert b"".join(pieces) == data
    assert udpfast.stats.gro_batches == 1


def test_without_gro_a_receive_is_one_datagram(sockets: list[socket.socket]) -> None:
    rx, tx = _udp(sockets), _udp(sockets, bind=False)
    tx.sendto(b"x" * 500, rx.getsockname())
    buf = bytearray(udpfast.MAX_DATAGRAM)
    assert udpfast.recv_batch(rx, buf)[:2] == (500, 500)
    assert udpfast.split_segments(buf, 500, 500) == [b"x" * 500]


def test_a_too_small_receive_buffer_is_a_typed_error(sockets: list[socket.socket]) -> None:
    rx, tx = _udp(sockets), _udp(sockets, bind=False)
    tx.sendto(b"x" * 500, rx.getsockname())
    with pytest.raises(DatagramTruncated):
        udpfast.recv_batch(rx, bytearray(100))


@needs_gso
def test_fallback_when_the_kernel_refuses_the_socket(sockets: list[socket.socket]) -> None:
    rx, tx = _udp(sockets), _udp(sockets, bind=False)
    # SO_NO_CHECK: the kernel refuses GSO on a socket that sends without checksums.
    tx.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
    data = _payload(5 * 1000)
    assert udpfast.send_segments(tx, data, 1000, rx.getsockname()) == 5
    assert b"".join(_drain(rx, 5)) == data
    assert udpfast.stats.gso_refusals == 1
    assert not udpfast.gso_enabled(tx)
    # detected once: the next send goes straight to one sendto per datagram
    assert udpfast.send_segments(tx, data, 1000, rx.getsockname()) == 5
    assert udpfast.stats.gso_refusals == 1
    assert udpfast.stats.plain_datagrams == 10
    assert b"".join(_drain(rx, 5)) == data
    # other sockets keep GSO
    other = _udp(sockets, bind=False)
    assert udpfast.gso_enabled(other)


def test_fallback_when_the_kernel_knows_no_udp_segment(
    sockets: list[socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(udpfast, "_kernel_gso", None)

    def no_such_option(self: socket.socket, *args: object) -> int:
        raise OSError(errno.ENOPROTOOPT, "Protocol not available")

    with monkeypatch.context() as m:
        m.setattr(socket.socket, "getsockopt", no_such_option)
        assert not udpfast.kernel_supports_gso()
    rx, tx = _udp(sockets), _udp(sockets, bind=False)
    data = _payload(3 * 700 + 1)
    assert udpfast.send_segments(tx, data, 700, rx.getsockname()) == 4
    assert b"".join(_drain(rx, 4)) == data
    assert udpfast.stats.gso_sends == 0
    assert udpfast.stats.plain_datagrams == 4


def test_empty_and_single_datagram_sends(sockets: list[socket.socket]) -> None:
    rx, tx = _udp(sockets), _udp(sockets, bind=False)
    assert udpfast.send_segments(tx, b"", 1000, rx.getsockname()) == 0
    assert udpfast.send_segments(tx, [b"ab", b"cd"], 1000, rx.getsockname()) == 1
    assert rx.recv(2048) == b"abcd"
    with pytest.raises(ValueError):
        udpfast.send_segments(tx, b"x", 0, rx.getsockname())
    with pytest.raises(ValueError):
        udpfast.send_segments(tx, b"x", 70_000, rx.getsockname())


def test_connected_socket_refused_is_retried_and_counted(sockets: list[socket.socket]) -> None:
    closed = _udp(sockets)
    port = closed.getsockname()
    closed.close()  # nobody listens there: the kernel answers port unreachable
    tx = _udp(sockets, bind=False)
    tx.connect(port)
    sent = 0
    for _ in range(5):  # each send after the first meets the previous one's ICMP error
        sent += udpfast.send_segments(tx, b"y" * 3000, 1000)
    assert sent == 15  # a refused call sent nothing and was retried
    assert udpfast.stats.refused_sends >= 1
    assert udpfast.stats.dropped_sends == 0


def test_connected_socket_refused_on_receive_returns_nothing(
    sockets: list[socket.socket],
) -> None:
    closed = _udp(sockets)
    port = closed.getsockname()
    closed.close()
    sock = _udp(sockets)
    sock.connect(port)
    sock.send(b"ping")
    buf = bytearray(2048)
    assert udpfast.recv_batch(sock, buf) == (0, 0, None)
    assert udpfast.stats.refused_recvs == 1
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        udpfast.recv_batch(sock, buf)


def test_ipv6_loopback(sockets: list[socket.socket]) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    rx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sockets += [rx, tx]
    try:
        rx.bind(("::1", 0))
    except OSError as e:
        pytest.skip(f"no ::1 here: {e}")
    rx.settimeout(2.0)
    data = _payload(4 * 1280)
    assert udpfast.send_segments(tx, data, 1280, rx.getsockname()) == 4
    assert b"".join(_drain(rx, 4)) == data


@given(
    seg=st.integers(1, 1500),
    count=st.integers(0, 50),
    last=st.integers(0, 1500),
    slack=st.integers(0, 64),
)
@settings(max_examples=200, deadline=None)
def test_split_segments_gives_back_the_datagrams_as_independent_copies(
    seg: int, count: int, last: int, slack: int
) -> None:
    last = min(last, seg)
    datagrams = [bytes([i % 256]) * seg for i in range(count)] + ([b"\xee" * last] if last else [])
    data = b"".join(datagrams)
    buf = bytearray(data + b"\xff" * slack)  # bytes past nbytes belong to no datagram
    pieces = udpfast.split_segments(buf, len(data), seg)
    assert pieces == datagrams
    assert all(type(p) is bytes for p in pieces)
    buf[:] = bytes(len(buf))  # the next receive overwrites the buffer: the pieces stay
    assert pieces == datagrams


def test_split_segments_without_a_segment_size_is_one_datagram() -> None:
    buf = bytearray(b"abcdef")
    assert udpfast.split_segments(buf, 4, 0) == [b"abcd"]
    assert udpfast.split_segments(buf, 4, 9) == [b"abcd"]
    assert udpfast.split_segments(buf, 0, 0) == []
