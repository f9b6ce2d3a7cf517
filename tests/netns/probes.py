"""Numbered UDP probes through the overlay (``python -m tests.netns.probes MODE``), for
``bench/netns.py``: outage during a failover and the time to the first packet through.
Standard library only, so a probe starts in a few tens of milliseconds. Each mode prints
JSON lines: receivers a ``{"listening": ...}`` line, senders a ``{"started": ...}`` line,
then one result line. Times are ``time.monotonic()`` (CLOCK_MONOTONIC, the same clock in
every network namespace, so the caller compares them with its own).

    sink ADDR PORT [--echo]   record (seq, sent, arrival) of every probe; with --echo
                              send it back to its sender. Stops after --seconds, --idle
                              seconds after the last probe, or on SIGTERM (and reports).
    stream ADDR PORT          one probe every --interval for --seconds, on an absolute
                              schedule (a late wake-up does not shift later probes)
    first ADDR PORT           one probe every --interval until one is echoed back, or
                              --seconds; sends that fail (no route yet) are counted

A probe is ``MAGIC | seq u32 | sent-at f64``, 16 bytes.
"""

from __future__ import annotations

import argparse
import json
import select
import signal
import socket
import struct
import sys
import time
from typing import Any

MAGIC = b"x0tp"
PROBE = struct.Struct("!4sId")
MAX_ARRIVALS = 200_000  # a sink keeps at most this many (seq, time) pairs
MAX_SECONDS = 120.0


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _socket(addr: str) -> socket.socket:
    return socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)


def _probe(seq: int) -> bytes:
    return PROBE.pack(MAGIC, seq, time.monotonic())


def _parse(data: bytes) -> tuple[int, float] | None:
    if len(data) != PROBE.size:
        return None
    magic, seq, sent = PROBE.unpack(data)
    return (seq, sent) if magic == MAGIC else None


class _Stop(Exception):
    """SIGTERM: stop receiving and report."""


def _on_term(_signum: int, _frame: object) -> None:
    raise _Stop


def sink(addr: str, port: int, seconds: float, idle: float, echo: bool) -> None:
    arrivals: list[tuple[int, float, float]] = []
    echoed = bad = 0
    signal.signal(signal.SIGTERM, _on_term)
    with _socket(addr) as sock:
        sock.bind((addr, port))
        _emit({"listening": [addr, port], "t": time.monotonic()})
        end = time.monotonic() + seconds
        last = 0.0
        try:
            while (now := time.monotonic()) < end:
                wait = end - now
                if last:
                    wait = min(wait, last + idle - now)
                    if wait <= 0:
                        break
                if not select.select([sock], [], [], wait)[0]:
                    continue
                data, peer = sock.recvfrom(2048)
                t = time.monotonic()
                probe = _parse(data)
                if probe is None:
                    bad += 1
                    continue
                last = t
                if len(arrivals) < MAX_ARRIVALS:
                    arrivals.append((probe[0], probe[1], t))
                if echo:
                    try:
                        sock.sendto(data, peer)
                        echoed += 1
                    except OSError:
                        pass
        except _Stop:
            pass
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # reporting now
    _emit({"received": len(arrivals), "echoed": echoed, "bad": bad, "arrivals": arrivals})


def stream(addr: str, port: int, seconds: float, interval: float) -> None:
    sent = errors = 0
    with _socket(addr) as sock:
        t0 = time.monotonic()
        _emit({"started": t0})
        n = max(1, int(seconds / interval))
        for seq in range(n):
            delay = t0 + seq * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                sock.sendto(_probe(seq), (addr, port))
                sent += 1
            except OSError:
                errors += 1
        last = time.monotonic()
    _emit({"sent": sent, "errors": errors, "first_send": t0, "last_send": last})


def first(addr: str, port: int, seconds: float, interval: float) -> None:
    sent = errors = 0
    answer: dict[str, Any] = {"answered": False}
    with _socket(addr) as sock:
        t0 = time.monotonic()
        _emit({"started": t0})
        sent_at: dict[int, float] = {}
        for seq in range(max(1, int(seconds / interval))):
            due = t0 + seq * interval
            try:
                sock.sendto(_probe(seq), (addr, port))
                sent_at[seq] = time.monotonic()
                sent += 1
            except OSError:
                errors += 1
            # wait for an echo until the next probe is due (and after the last, one interval)
            while (left := due + interval - time.monotonic()) > 0:
                if not select.select([sock], [], [], left)[0]:
                    break
                data = sock.recv(2048)
                got = time.monotonic()
                probe = _parse(data)
                if probe is not None and probe[0] in sent_at:
                    answer = {
                        "answered": True,
                        "answered_at": got,
                        "seq": probe[0],
                        "sent_at": sent_at[probe[0]],
                    }
                    break
            if answer["answered"]:
                break
    _emit(answer | {"sent": sent, "errors": errors, "first_send": t0})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.netns.probes")
    p.add_argument("mode", choices=("sink", "stream", "first"))
    p.add_argument("addr")
    p.add_argument("port", type=int)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--interval", type=float, default=0.02)
    p.add_argument("--idle", type=float, default=2.0)
    p.add_argument("--echo", action="store_true")
    a = p.parse_args(argv)
    seconds = min(max(a.seconds, 0.0), MAX_SECONDS)
    interval = max(a.interval, 0.001)
    if a.mode == "sink":
        sink(a.addr, a.port, seconds, a.idle, a.echo)
    elif a.mode == "stream":
        stream(a.addr, a.port, seconds, interval)
    else:
        first(a.addr, a.port, seconds, interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
