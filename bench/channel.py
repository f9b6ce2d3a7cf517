"""Secure-channel benchmarks: handshake CPU per side, session data path vs raw AEAD,
bytes on the wire.

Handshakes are driven through the real ``SecureEndpoint`` on both sides, with datagrams
handed across in memory, and each side's CPU time (thread CPU clock) is summed over its
own calls only. "First contact" uses fresh endpoints and empty verification caches, so it
includes the certificate exchange and the ML-DSA-65 verification of both certificates.
"""

from __future__ import annotations

import itertools
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from bench.report import Suite
from x0tta6bl4.channel.endpoint import SecureEndpoint
from x0tta6bl4.channel.session import Session
from x0tta6bl4.crypto.hybrid import HybridPrivateKey, HybridPublicKey
from x0tta6bl4.identity import CertificateAuthority, NodeCredentials, make_verifier
from x0tta6bl4.identity.verify import CachedVerifier
from x0tta6bl4.sansio import Action, Datagram, Send

_cpu = time.thread_time_ns
NOW = 1_800_000_000.0


@dataclass
class _Pair:
    ca: CertificateAuthority
    a: NodeCredentials
    b: NodeCredentials


def _pair(tmp: str) -> _Pair:
    ca = CertificateAuthority.init(tmp, "bench.x0tta6bl4.mesh", now=NOW - 3600)
    a = NodeCredentials.generate_and_issue(ca, "alice", ["role:bench"], NOW)
    b = NodeCredentials.generate_and_issue(ca, "bob", ["role:bench"], NOW)
    return _Pair(ca, a, b)


def _verifier(pair: _Pair) -> CachedVerifier:
    crl = pair.ca.revocation_list()
    return make_verifier(pair.ca.bundle(), lambda: crl)


def _endpoint(cred: NodeCredentials, verifier: CachedVerifier, seed: int) -> SecureEndpoint:
    return SecureEndpoint(
        cred.cert.der,
        cred.static_private,
        verifier,
        jitter=random.Random(seed),  # retry jitter only; secrets come from the OS
        wall_offset=NOW,
        trust_domain="bench.x0tta6bl4.mesh",
    )


@dataclass
class _Exchange:
    cpu_ns: dict[str, int]
    wire_bytes: int
    datagrams: int
    established: bool


def _run_handshake(
    a: SecureEndpoint, b: SecureEndpoint, start: Callable[[], list[Action]], now: float
) -> _Exchange:
    """Deliver every Send between the two endpoints until quiet; time each side."""
    cpu = {"a": 0, "b": 0}
    t0 = _cpu()
    pending: list[tuple[str, Action]] = [("a", x) for x in start()]
    cpu["a"] += _cpu() - t0
    wire = 0
    count = 0
    while pending:
        side, act = pending.pop(0)
        if not isinstance(act, Send):
            continue
        wire += len(act.data)
        count += 1
        dst = "b" if side == "a" else "a"
        ep = b if dst == "b" else a
        src_addr = side
        t0 = _cpu()
        out = ep.handle(now, Datagram(src_addr, act.data))
        cpu[dst] += _cpu() - t0
        pending.extend((dst, x) for x in out)
    info_a, info_b = a.peer("b"), b.peer("a")
    ok = bool(info_a and info_a.established and info_b and info_b.established)
    return _Exchange(cpu, wire, count, ok)


def bench_handshakes(suite: Suite, pair: _Pair, rounds: int) -> None:
    # Cached: one endpoint pair, first contact once, then fresh handshakes on demand.
    a = _endpoint(pair.a, _verifier(pair), 1)
    b = _endpoint(pair.b, _verifier(pair), 2)
    first = _run_handshake(a, b, lambda: a.connect(0.0, "b"), 0.0)
    assert first.established, "first-contact handshake did not complete"
    cached: list[_Exchange] = []
    for i in range(rounds):
        now = 1.0 + i * 0.5  # past the per-peer INIT pacing
        ex = _run_handshake(a, b, partial(a.connect, now, "b"), now)
        assert ex.established
        cached.append(ex)
    fresh: list[_Exchange] = []
    for i in range(max(5, rounds // 10)):
        fa = _endpoint(pair.a, _verifier(pair), 100 + i)
        fb = _endpoint(pair.b, _verifier(pair), 200 + i)
        ex = _run_handshake(fa, fb, partial(fa.connect, 0.0, "b"), 0.0)
        assert ex.established
        fresh.append(ex)

    def per_side_ms(xs: list[_Exchange], side: str) -> float:
        return statistics.median(x.cpu_ns[side] for x in xs) / 1e6

    ini, rsp = per_side_ms(cached, "a"), per_side_ms(cached, "b")
    fini, frsp = per_side_ms(fresh, "a"), per_side_ms(fresh, "b")
    suite.add(
        "handshake_cpu_ms_per_side",
        "handshake CPU per side, cached certificate (max of the two sides, median)",
        max(ini, rsp),
        "ms",
        f"initiator {ini:.3f}, responder {rsp:.3f}",
    )
    suite.add(
        "handshake_first_contact_cpu_ms_per_side",
        "handshake CPU per side, first contact (certificates exchanged and verified)",
        max(fini, frsp),
        "ms",
        f"initiator {fini:.3f}, responder {frsp:.3f}",
    )
    suite.add(
        "handshakes_per_s_one_core",
        "complete handshakes per second on one core (both sides' CPU), cached",
        1000.0 / (ini + rsp),
        "1/s",
    )
    suite.add(
        "handshakes_per_s_one_core_responder",
        "handshakes a responder core can answer per second, cached",
        1000.0 / rsp,
        "1/s",
    )
    suite.add(
        "handshake_first_contact_per_s_one_core",
        "complete first-contact handshakes per second on one core",
        1000.0 / (fini + frsp),
        "1/s",
    )
    suite.add(
        "handshake_bytes_on_wire",
        "bytes on the wire per handshake, cached certificate (INIT, RESP, CONFIRM, ack)",
        cached[0].wire_bytes,
        "B",
        f"{cached[0].datagrams} datagrams",
    )
    suite.add(
        "handshake_first_contact_bytes_on_wire",
        "bytes on the wire per handshake, first contact",
        fresh[0].wire_bytes,
        "B",
        f"{fresh[0].datagrams} datagrams",
    )
    suite.add("certificate_bytes", "node certificate (DER, one tag)", len(pair.a.cert.der), "B")
    prim_i, prim_r = _primitives_ms(pair, rounds)
    prim = max(prim_i, prim_r)
    suite.add(
        "handshake_primitives_ms_per_side",
        "hybrid KEM primitives alone per side (key generation, encapsulations, "
        "decapsulations, key parsing; max of the two sides, median), same run",
        prim,
        "ms",
        f"initiator {prim_i:.3f}, responder {prim_r:.3f}",
    )
    suite.add(
        "handshake_overhead_ratio",
        "handshake CPU per side / its primitives alone (1.0 = no protocol overhead)",
        max(ini, rsp) / prim,
        "ratio",
        f"initiator {ini / prim_i:.2f}, responder {rsp / prim_r:.2f}",
    )


def _primitives_ms(pair: _Pair, rounds: int) -> tuple[float, float]:
    """Each side's KEM work in one handshake, timed alone: initiator = ephemeral keygen,
    encapsulation to S_r, decapsulation of ct_e and ct_is; responder = parse E_i,
    decapsulation of ct_s, encapsulations to E_i and S_i."""
    s_r = pair.b.cert.static_key
    s_i = pair.a.cert.static_key
    ini: list[int] = []
    rsp: list[int] = []
    for _ in range(rounds):
        t0 = _cpu()
        eph = HybridPrivateKey.generate()
        eph_raw = eph.public_key().to_bytes()
        ct_s, _ = s_r.encapsulate()
        t1 = _cpu()
        e_i = HybridPublicKey.from_bytes(eph_raw)
        pair.b.static_private.decapsulate(ct_s)
        ct_e, _ = e_i.encapsulate()
        ct_is, _ = s_i.encapsulate()
        t2 = _cpu()
        eph.decapsulate(ct_e)
        pair.a.static_private.decapsulate(ct_is)
        t3 = _cpu()
        ini.append((t1 - t0) + (t3 - t2))
        rsp.append(t2 - t1)
    return statistics.median(ini) / 1e6, statistics.median(rsp) / 1e6


def bench_bogus_inits(suite: Suite, pair: _Pair, count: int) -> None:
    """Responder CPU per INIT that will never make a session, not under load (the worst
    case: under load, INITs without a cookie cost one HMAC and get a COOKIE)."""
    from x0tta6bl4.channel.cookie import mac1_key
    from x0tta6bl4.channel.fragment import split
    from x0tta6bl4.channel.handshake import Initiator
    from x0tta6bl4.channel.wire import INIT_CACHED_SIZE
    from x0tta6bl4.crypto.kdf import mac16

    b = _endpoint(pair.b, _verifier(pair), 3)
    b.set_under_load(False)
    s_r = pair.b.cert.static_key
    key1 = mac1_key(s_r.to_bytes())
    bad_cert = bytearray(pair.a.cert.der)
    bad_cert[-10] ^= 1  # one byte of the CA's signature

    def bogus_cert_init(i: int) -> bytes:
        return Initiator(
            static_private=pair.a.static_private,
            fingerprint=pair.a.cert.fingerprint,
            responder_static=s_r,
            responder_fingerprint=pair.b.cert.fingerprint,
            sender_index=i + 1,
        ).create_init(timestamp=i + 1, cert_der=bytes(bad_cert))

    def garbage_with_mac1(i: int) -> bytes:
        body = random.Random(i).randbytes(INIT_CACHED_SIZE - 32)
        body = b"\x01\x01\x00\x00" + body[4:]
        return body + mac16(key1, body) + bytes(16)

    def bad_mac1(i: int) -> bytes:
        return b"\x01\x01\x00\x00" + random.Random(i).randbytes(INIT_CACHED_SIZE - 4)

    fresh_bad_cert = [bogus_cert_init(i) for i in range(count)]
    replayed = fresh_bad_cert[0]
    kinds = {
        "bad_mac1": [bad_mac1(i) for i in range(count)],
        "garbage_ciphertext": [garbage_with_mac1(i) for i in range(count)],
        "bad_certificate": fresh_bad_cert,
        "bad_certificate_replayed": [replayed] * count,
    }
    labels = {
        "bad_mac1": "INIT with a wrong mac1",
        "garbage_ciphertext": "valid mac1, garbage ciphertext (decapsulation fails late)",
        "bad_certificate": "fresh INITs carrying a certificate with a flipped signature byte",
        "bad_certificate_replayed": "one such INIT replayed",
    }
    worst = 0.0
    for i, (kind, inits) in enumerate(kinds.items()):
        datagrams = [split(m, n + 1, 1280) for n, m in enumerate(inits)]
        t0 = _cpu()
        for frags in datagrams:
            for d in frags:
                b.handle(10.0 + i, Datagram(("198.18.0.9", 9), d))
        ms = (_cpu() - t0) / 1e6 / count
        worst = max(worst, ms)
        suite.add(f"responder_cpu_ms_per_bogus_init_{kind}", labels[kind], ms, "ms")
    suite.add(
        "responder_cpu_ms_per_bogus_init",
        "responder CPU per bogus INIT, the worst of the kinds above",
        worst,
        "ms",
    )


def _sessions(max_datagram: int) -> tuple[Session, Session]:
    from x0tta6bl4.channel.handshake import SessionKeys

    k1, k2 = bytes(range(32)), bytes(range(32, 64))
    tx = SessionKeys(local_index=1, remote_index=2, send_key=k1, recv_key=k2, initiator=True)
    rx = SessionKeys(local_index=2, remote_index=1, send_key=k2, recv_key=k1, initiator=False)
    return tx.session(0.0, max_datagram), rx.session(0.0, max_datagram)


def _rate(fn: Callable[[], None], seconds: float) -> float:
    """Calls per second of ``fn``, best of 5 slices (the machine is shared and noisy)."""
    best = 0.0
    for _ in range(5):
        n = 0
        t0 = time.perf_counter()
        deadline = t0 + seconds / 5
        while True:
            for _ in range(50):
                fn()
            n += 50
            t = time.perf_counter()
            if t >= deadline:
                break
        best = max(best, n / (t - t0))
    return best


def _raw_aead(payload: bytes) -> Callable[[], None]:
    """The bare primitive with a fresh counter nonce and a 16-byte AD, as a session uses."""
    raw = ChaCha20Poly1305(bytes(32))
    ad = bytes(16)
    counter = itertools.count(1)

    def once() -> None:
        nonce = next(counter).to_bytes(12, "little")
        raw.decrypt(nonce, raw.encrypt(nonce, payload, ad), ad)

    return once


def bench_data_path(suite: Suite, seconds: float) -> None:
    for size in (64, 1400, 65000):
        tx, rx = _sessions(size + 64)
        payload = bytes(size)

        def through_session(tx: Session = tx, rx: Session = rx, p: bytes = payload) -> None:
            rx.open(tx.seal(p))

        raw_aead = _raw_aead(payload)

        # Interleave the two measurements so both see the same machine conditions.
        s_rate, r_rate = [], []
        for _ in range(3):
            s_rate.append(_rate(through_session, seconds / 6))
            r_rate.append(_rate(raw_aead, seconds / 6))
        s, r = max(s_rate), max(r_rate)
        suite.add("", f"session seal+open, {size} B", s, "msg/s")
        suite.add("", f"raw ChaCha20-Poly1305 encrypt+decrypt, {size} B", r, "msg/s")
        suite.add(
            f"session_vs_raw_aead_ratio_{size}",
            f"session / raw AEAD rate, {size} B",
            s / r,
            "ratio",
        )


def run(quick: bool = False) -> Suite:
    suite = Suite("channel")
    with tempfile.TemporaryDirectory(prefix="x0t-bench-") as tmp:
        pair = _pair(tmp)
        bench_handshakes(suite, pair, rounds=40 if quick else 300)
        bench_bogus_inits(suite, pair, count=40 if quick else 300)
    bench_data_path(suite, seconds=1.5 if quick else 6.0)
    return suite
