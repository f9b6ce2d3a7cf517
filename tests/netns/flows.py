"""Bounded traffic programs run inside namespaces (``python -m tests.netns.flows MODE``),
for the netns tests and ``bench/netns.py`` when iperf3 is missing. Each prints JSON lines:
a ``{"listening": ...}`` line first for receivers, then one result line. Every loop stops
on its own: a sender after ``--seconds`` (or ``--bytes``), a receiver at EOF, after
``--idle`` seconds without data, or at ``--timeout``.

    tcp-recv ADDR PORT            one connection; bytes and rate from first byte to EOF
    tcp-send ADDR PORT            send zeros for --seconds or --bytes
    udp-recv ADDR PORT [--gro]    count datagrams (recv_batch; GRO batches cut again)
    udp-send ADDR PORT            --segment bytes per datagram, --batch per call,
                                  send_segments (GSO) or, with --plain, one sendto each
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from typing import Any

import structlog

from x0tta6bl4.node import udpfast

CHUNK = 1 << 20


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _family(addr: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def _rate(nbytes: int, seconds: float) -> float:
    return nbytes * 8 / seconds / 1e6 if seconds > 0 else 0.0


def tcp_recv(addr: str, port: int, timeout: float) -> None:
    with socket.socket(_family(addr), socket.SOCK_STREAM) as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((addr, port))
        srv.listen(1)
        srv.settimeout(timeout)
        _emit({"listening": [addr, port]})
        conn, peer = srv.accept()
    deadline = time.monotonic() + timeout
    buf = bytearray(CHUNK)
    total = 0
    first = last = 0.0
    with conn:
        conn.settimeout(timeout)
        while time.monotonic() < deadline:
            n = conn.recv_into(buf)
            if not n:
                break
            last = time.monotonic()
            if not total:
                first = last
            total += n
    _emit(
        {
            "bytes": total,
            "seconds": last - first,
            "mbit_s": _rate(total, last - first),
            "peer": peer[0],
        }
    )


def tcp_send(addr: str, port: int, seconds: float, limit: int) -> None:
    chunk = bytes(CHUNK)
    total = 0
    with socket.create_connection((addr, port), timeout=10) as conn:
        t0 = time.monotonic()
        end = t0 + seconds
        while time.monotonic() < end and (limit <= 0 or total < limit):
            conn.sendall(chunk)
            total += len(chunk)
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(10)
        conn.recv(1)  # the receiver closes after EOF: everything arrived
        elapsed = time.monotonic() - t0
    _emit({"bytes": total, "seconds": elapsed, "mbit_s": _rate(total, elapsed)})


def udp_recv(addr: str, port: int, gro: bool, idle: float, timeout: float) -> None:
    with socket.socket(_family(addr), socket.SOCK_DGRAM) as sock:
        sock.bind((addr, port))
        udpfast.set_buffers(sock, 16 << 20)
        enabled = udpfast.enable_gro(sock) if gro else False
        _emit({"listening": [addr, port], "gro": enabled})
        buf = bytearray(udpfast.MAX_DATAGRAM)
        datagrams = total = calls = 0
        first = last = 0.0
        deadline = time.monotonic() + timeout
        sock.settimeout(timeout)
        while time.monotonic() < deadline:
            try:
                n, seg, _addr = udpfast.recv_batch(sock, buf)
            except TimeoutError:
                break
            last = time.monotonic()
            if not calls:
                first = last
                sock.settimeout(idle)
            calls += 1
            total += n
            datagrams += -(-n // seg) if 0 < seg < n else int(n > 0)
    elapsed = last - first
    _emit(
        {
            "datagrams": datagrams,
            "bytes": total,
            "calls": calls,
            "seconds": elapsed,
            "mbit_s": _rate(total, elapsed),
        }
    )


def udp_send(
    addr: str, port: int, segment: int, batch: int, seconds: float, plain: bool, pace: float
) -> None:
    payload = bytes(segment * batch)
    with socket.socket(_family(addr), socket.SOCK_DGRAM) as sock:
        udpfast.set_buffers(sock, 16 << 20)
        sock.connect((addr, port))
        sent = calls = 0
        t0 = time.monotonic()
        end = t0 + seconds
        while time.monotonic() < end:
            if plain:
                for start in range(0, len(payload), segment):
                    try:
                        sock.send(payload[start : start + segment])
                        sent += 1
                    except (ConnectionRefusedError, BlockingIOError):
                        pass
                    calls += 1
            else:
                sent += udpfast.send_segments(sock, payload, segment)
                calls += 1
            if pace:
                time.sleep(pace)
        elapsed = time.monotonic() - t0
    _emit(
        {
            "datagrams": sent,
            "bytes": sent * segment,
            "calls": calls,
            "seconds": elapsed,
            "mbit_s": _rate(sent * segment, elapsed),
            "gso": not plain and udpfast.stats.gso_sends > 0,
        }
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.netns.flows")
    p.add_argument("mode", choices=("tcp-recv", "tcp-send", "udp-recv", "udp-send"))
    p.add_argument("addr")
    p.add_argument("port", type=int)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--bytes", type=int, default=0)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--idle", type=float, default=1.0)
    p.add_argument("--gro", action="store_true")
    p.add_argument("--plain", action="store_true")
    p.add_argument("--segment", type=int, default=1454)
    p.add_argument("--batch", type=int, default=45)
    p.add_argument("--pace", type=float, default=0.0, help="sleep between calls (s)")
    a = p.parse_args(argv)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    seconds, timeout = min(a.seconds, 60.0), min(a.timeout, 120.0)
    if a.mode == "tcp-recv":
        tcp_recv(a.addr, a.port, timeout)
    elif a.mode == "tcp-send":
        tcp_send(a.addr, a.port, seconds, a.bytes)
    elif a.mode == "udp-recv":
        udp_recv(a.addr, a.port, a.gro, a.idle, timeout)
    else:
        udp_send(a.addr, a.port, a.segment, a.batch, seconds, a.plain, a.pace)
    return 0


if __name__ == "__main__":
    sys.exit(main())
