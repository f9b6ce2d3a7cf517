"""Neighbour link estimation: Babel-style Hello/IHU with an RTT echo (sans-IO).

Each node sends a :class:`Hello` to each neighbour every ``HELLO_INTERVAL`` over the
encrypted channel. One message per direction per interval does three jobs:

* **Hello** (RFC 8966 §3.4.1): a 16-bit seqno; the receiver keeps a 16-bit history of
  which seqnos arrived and derives its reception rate ``beta`` from it.
* **IHU** ("I heard you", RFC 8966 §3.4.2), embedded: the sender's ``rxcost`` for the
  peer, ``256 / beta`` in Babel units, so each side learns how well it is heard.
* **RTT echo** (RFC 9616 idea): the sender's timestamp, plus the last timestamp it heard
  from the peer and how long ago it heard it. The peer computes
  ``rtt = now - echoed_timestamp - echo_delay`` with its own clock only, so the two
  clocks never need to agree.

Link cost (documented formula, Babel ETX (RFC 8966 Appendix A.2.2) plus the RFC 9616 delay
penalty)::

    beta    = our reception rate of the peer's hellos (history, seqno gaps counted as loss)
    alpha   = min(1, 256 / peer_rxcost)     # how well the peer hears us (from its IHU)
    etx     = 1 / (alpha * beta)
    penalty = 0                                          if rtt <= RTT_MIN
            = RTT_MAX_PENALTY * (rtt - RTT_MIN) / (RTT_MAX - RTT_MIN)   if in between
            = RTT_MAX_PENALTY                            if rtt >= RTT_MAX
    cost    = min(INFINITY - 1, round((BASE_COST * etx + penalty) * multiplier))
    cost    = INFINITY when dead, or when either direction has never been heard

All times are float seconds of the local monotonic clock, passed in as ``now``. The
estimator's properties reflect the latest ``now`` given to any of its methods.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass
from typing import Final

from x0tta6bl4.errors import BadLength, BadVersion, DecodeError, Truncated
from x0tta6bl4.routing.metric import INFINITY as INFINITY  # re-exported: lq.INFINITY

# --- constants ------------------------------------------------------------------

HELLO_INTERVAL: Final = 0.1
"""Seconds between hellos on one channel; the caller adds jitter."""

DEAD_INTERVAL: Final = 0.4
"""No hello heard for longer than this means the neighbour is dead (detect within 0.5 s)."""

HISTORY_LEN: Final = 16
"""Hello reception history length, in hellos (the reception rate, so the cost)."""

RECORD_LEN: Final = 128
"""Hellos whose fate :meth:`LinkEstimator.hello_record` keeps: enough to see when a
loss rise began (the healing layer dates faults from it), not only that it did."""

BASE_COST: Final = 96
"""Cost of a perfect link (Babel's wired default)."""

RXCOST_UNIT: Final = 256
"""rxcost of a perfectly received link, in Babel's fixed-point units."""

RTT_MIN: Final = 0.010
"""RTTs at or below this carry no penalty (seconds)."""

RTT_MAX: Final = 0.120
"""RTTs at or above this carry the full penalty (seconds)."""

RTT_MAX_PENALTY: Final = 150
"""Penalty added to the cost at RTT_MAX and beyond (Babel's default)."""

RTT_GAIN: Final = 0.125
"""EWMA weight of a new RTT sample (RFC 6298's alpha)."""

JITTER_GAIN: Final = 1.0 / 16.0
"""Weight of a new |delta rtt| in the jitter estimate (RFC 3550 §6.4.1)."""

RTT_SAMPLE_MAX: Final = 10.0
"""RTT samples above this are discarded as bogus (stale echoes, clock wrap)."""

MIN_MULTIPLIER: Final = 1.0
"""set_cost_multiplier clamps to this, so a penalty never makes a link cheaper."""

HELLO_VERSION: Final = 1
HELLO_SIZE: Final = 20
FLAG_ECHO: Final = 0x01

_SEQNO_MOD: Final = 1 << 16
_TS_MOD: Final = 1 << 32
_HALF_TS: Final = 1 << 31
_HISTORY_MASK: Final = (1 << HISTORY_LEN) - 1
_RECORD_MASK: Final = (1 << RECORD_LEN) - 1
# version u8 | flags u8 | seqno u16 | interval_cs u16 | rxcost u16 |
# timestamp_us u32 | echo_timestamp_us u32 | echo_delay_us u32
_HELLO = struct.Struct(">BBHHHIII")
assert _HELLO.size == HELLO_SIZE


def _to_us32(t: float) -> int:
    """Seconds to a uint32 of microseconds, modulo 2^32 (wraps every ~71.6 minutes)."""
    return round(t * 1_000_000) % _TS_MOD


# --- message --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """One Hello + IHU + RTT echo, sent once per interval per direction.

    All time fields are integer microseconds so that the codec round-trips exactly.
    """

    seqno: int
    """16-bit hello sequence number of the sender."""
    timestamp: int
    """Sender's clock at sending, microseconds modulo 2^32."""
    interval: int
    """Sender's hello interval in centiseconds, so the receiver can count missed hellos."""
    rxcost: int
    """Sender's rxcost for the receiver (256 = every hello heard); INFINITY if unheard."""
    echo_timestamp: int | None = None
    """Last ``timestamp`` the sender heard from the receiver, or None if none yet."""
    echo_delay: int = 0
    """Microseconds between hearing ``echo_timestamp`` and sending this hello."""


def encode_hello(h: Hello) -> bytes:
    """Fixed 20-byte encoding. Raises ValueError for fields out of range (a caller bug)."""
    flags = 0
    echo_ts = 0
    if h.echo_timestamp is not None:
        flags = FLAG_ECHO
        echo_ts = h.echo_timestamp
    elif h.echo_delay != 0:
        raise ValueError("echo_delay without echo_timestamp")
    try:
        return _HELLO.pack(
            HELLO_VERSION,
            flags,
            h.seqno,
            h.interval,
            h.rxcost,
            h.timestamp,
            echo_ts,
            h.echo_delay,
        )
    except struct.error as exc:
        raise ValueError(f"hello field out of range: {exc}") from None


def decode_hello(data: bytes) -> Hello:
    """Decode exactly one hello; raise a DecodeError subclass on anything malformed."""
    return Hello(*_hello_fields(data))


_Fields = tuple[int, int, int, int, int | None, int]


def _hello_fields(data: bytes) -> _Fields:
    """``(seqno, timestamp, interval, rxcost, echo_timestamp, echo_delay)`` of a hello."""
    if len(data) < HELLO_SIZE:
        raise Truncated(f"hello needs {HELLO_SIZE} bytes, got {len(data)}")
    if len(data) > HELLO_SIZE:
        raise BadLength(f"hello is {HELLO_SIZE} bytes, got {len(data)}")
    version, flags, seqno, interval, rxcost, ts, echo_ts, echo_delay = _HELLO.unpack(data)
    if version != HELLO_VERSION:
        raise BadVersion(f"hello version {version}")
    if flags & ~FLAG_ECHO:
        raise DecodeError(f"reserved hello flags set: {flags:#04x}")
    if flags & FLAG_ECHO:
        return seqno, ts, interval, rxcost, echo_ts, echo_delay
    # Canonical form: absent echo means zeroed fields, so encode(decode(b)) == b.
    if echo_ts or echo_delay:
        raise DecodeError("echo fields set without the echo flag")
    return seqno, ts, interval, rxcost, None, 0


# --- estimator ------------------------------------------------------------------


class LinkEstimator:
    """Quality of the link to one neighbour, measured from the hellos both ways."""

    __slots__ = (
        "_echo_heard_at",
        "_echo_ts",
        "_hist",
        "_hist_len",
        "_jitter",
        "_last_heard",
        "_last_sample",
        "_last_seqno",
        "_multiplier",
        "_now",
        "_peer_interval",
        "_peer_rxcost",
        "_rtt",
        "_tx_seqno",
        "hello_interval",
    )

    def __init__(
        self, rng: random.Random | None = None, *, hello_interval: float = HELLO_INTERVAL
    ) -> None:
        self.hello_interval = hello_interval
        # A random first seqno makes a restarted peer's hellos look like a reset, not a gap.
        self._tx_seqno = rng.randrange(_SEQNO_MOD) if rng is not None else 0
        self._now = float("-inf")
        self._last_heard: float | None = None
        self._last_seqno: int | None = None
        self._hist = 0
        self._hist_len = 0
        self._peer_interval = hello_interval
        self._peer_rxcost = INFINITY
        self._echo_ts: int | None = None
        self._echo_heard_at = 0.0
        self._rtt: float | None = None
        self._last_sample: float | None = None
        self._jitter = 0.0
        self._multiplier = 1.0

    # -- inputs -------------------------------------------------------------------

    def _advance(self, now: float) -> None:
        if now > self._now:
            self._now = now

    def on_hello(self, now: float, hello: Hello) -> None:
        """Account for a hello received from the peer at local time ``now``."""
        self._on_fields(
            now,
            hello.seqno,
            hello.timestamp,
            hello.interval,
            hello.rxcost,
            hello.echo_timestamp,
            hello.echo_delay,
        )

    def on_hello_bytes(self, now: float, data: bytes) -> None:
        """``on_hello(now, decode_hello(data))`` without the intermediate object (the
        per-hello hot path); raises the same DecodeErrors and changes nothing then."""
        self._on_fields(now, *_hello_fields(data))

    def _on_fields(
        self,
        now: float,
        seqno: int,
        timestamp: int,
        interval: int,
        rxcost: int,
        echo_timestamp: int | None,
        echo_delay: int,
    ) -> None:
        self._advance(now)
        if interval > 0:
            self._peer_interval = interval / 100.0
        last = self._last_seqno
        if last is None:
            self._hist, self._hist_len = 1, 1
        else:
            delta = (seqno - last) % _SEQNO_MOD
            if delta == 0:
                return  # duplicate
            if delta >= _SEQNO_MOD // 2:
                if _SEQNO_MOD - delta <= HISTORY_LEN:
                    return  # reordered: already counted as lost, keep it simple
                # Far behind: the peer restarted its counter; start a fresh history.
                self._hist, self._hist_len = 1, 1
            else:
                # Gap of delta-1 lost hellos, then this one.
                self._hist = ((self._hist << delta) | 1) & _RECORD_MASK
                self._hist_len = min(RECORD_LEN, self._hist_len + delta)
        self._last_seqno = seqno
        self._last_heard = now
        self._peer_rxcost = rxcost
        self._echo_ts = timestamp
        self._echo_heard_at = now
        if echo_timestamp is not None:
            self._rtt_sample(now, echo_timestamp, echo_delay)

    def _rtt_sample(self, now: float, echo_ts: int, echo_delay: int) -> None:
        elapsed_us = (_to_us32(now) - echo_ts - echo_delay) % _TS_MOD
        if elapsed_us >= _HALF_TS:
            return  # negative: the peer's delay exceeds our elapsed time, bogus
        sample = elapsed_us / 1_000_000
        if sample > RTT_SAMPLE_MAX:
            return
        if self._rtt is None:
            self._rtt = sample
        else:
            self._rtt += RTT_GAIN * (sample - self._rtt)
        if self._last_sample is not None:
            self._jitter += JITTER_GAIN * (abs(sample - self._last_sample) - self._jitter)
        self._last_sample = sample

    def make_hello(self, now: float) -> Hello:
        """The next hello to send to the peer (advances our hello seqno)."""
        return Hello(*self._next_hello(now))

    def hello_bytes(self, now: float) -> bytes:
        """``encode_hello(make_hello(now))`` without the intermediate object: this runs
        once per neighbour every hello interval."""
        seqno, ts, interval_cs, rxcost, echo_ts, delay_us = self._next_hello(now)
        if echo_ts is None:
            return _HELLO.pack(HELLO_VERSION, 0, seqno, interval_cs, rxcost, ts, 0, 0)
        return _HELLO.pack(
            HELLO_VERSION, FLAG_ECHO, seqno, interval_cs, rxcost, ts, echo_ts, delay_us
        )

    def _next_hello(self, now: float) -> tuple[int, int, int, int, int | None, int]:
        self._advance(now)
        seqno = self._tx_seqno
        self._tx_seqno = (seqno + 1) % _SEQNO_MOD
        interval_cs = max(1, min(0xFFFF, round(self.hello_interval * 100)))
        echo_ts = self._echo_ts
        delay_us = 0
        if echo_ts is not None:
            delay_us = round((now - self._echo_heard_at) * 1_000_000)
            if not 0 <= delay_us < _TS_MOD:
                echo_ts, delay_us = None, 0  # heard too long ago to be a useful echo
        return seqno, _to_us32(now), interval_cs, self.rxcost, echo_ts, delay_us

    def is_dead(self, now: float) -> bool:
        """True if the peer has not been heard for DEAD_INTERVAL (or never)."""
        self._advance(now)
        return self._last_heard is None or now - self._last_heard > DEAD_INTERVAL

    def set_cost_multiplier(self, factor: float) -> None:
        """Scale the cost (the healing layer penalises a degraded link); clamped to >= 1."""
        self._multiplier = max(MIN_MULTIPLIER, float(factor))

    # -- estimates ------------------------------------------------------------------

    def _reception(self) -> float:
        """Our reception rate of the peer's hellos, counting hellos overdue right now."""
        if self._last_heard is None or self._hist_len == 0:
            return 0.0
        hist, n = self._hist, min(HISTORY_LEN, self._hist_len)
        # Hellos that should have arrived since the last one count as lost; half an
        # interval of slack absorbs the sender's jitter.
        missed = int((self._now - self._last_heard) / self._peer_interval - 0.5)
        if missed > 0:
            missed = min(missed, HISTORY_LEN)  # no wider shift than the window needs
            hist <<= missed
            n = min(HISTORY_LEN, n + missed)
        return (hist & _HISTORY_MASK).bit_count() / n

    def hello_record(self) -> tuple[int, int]:
        """``(bits, n)``: the fate of the peer's hellos up to the last one heard (at
        most ``RECORD_LEN``), that one in bit 0, 1 for heard, seqno gaps as lost. The
        silence since :attr:`last_heard` is not in it. ``(0, 0)`` before the first
        hello; a peer that restarted its counter starts a new record."""
        return self._hist, self._hist_len

    @property
    def last_heard(self) -> float | None:
        return self._last_heard

    @property
    def heard_loss(self) -> float:
        """Fraction of the peer's hellos missed up to the last one heard (the silence
        since then left out), 0..1; 1 if never heard."""
        if self._last_heard is None or self._hist_len == 0:
            return 1.0
        n = min(HISTORY_LEN, self._hist_len)
        return 1.0 - (self._hist & _HISTORY_MASK).bit_count() / n

    @property
    def loss(self) -> float:
        """Fraction of the peer's hellos we missed, 0..1 (1 if never heard)."""
        return 1.0 - self._reception()

    @property
    def rxcost(self) -> int:
        """What we tell the peer about how well we hear it: 256 / reception rate."""
        beta = self._reception()
        if beta <= 0.0:
            return INFINITY
        return min(INFINITY - 1, round(RXCOST_UNIT / beta))

    @property
    def etx(self) -> float:
        """Expected transmissions per delivered packet, both directions; inf if unusable."""
        beta = self._reception()
        if beta <= 0.0 or self._peer_rxcost >= INFINITY or self._peer_rxcost <= 0:
            return float("inf")
        alpha = min(1.0, RXCOST_UNIT / self._peer_rxcost)
        return 1.0 / (alpha * beta)

    @property
    def rtt(self) -> float | None:
        """Smoothed round-trip time in seconds, None before the first sample."""
        return self._rtt

    @property
    def jitter(self) -> float:
        """Smoothed |difference between consecutive RTT samples|, seconds."""
        return self._jitter

    @property
    def cost_multiplier(self) -> float:
        return self._multiplier

    @property
    def rtt_penalty(self) -> float:
        """The delay part of the cost (RFC 9616 linear ramp)."""
        rtt = self._rtt
        if rtt is None or rtt <= RTT_MIN:
            return 0.0
        if rtt >= RTT_MAX:
            return float(RTT_MAX_PENALTY)
        return RTT_MAX_PENALTY * (rtt - RTT_MIN) / (RTT_MAX - RTT_MIN)

    @property
    def cost(self) -> int:
        """Link cost for routing (see the module docstring); INFINITY when dead."""
        return self._cost(self._multiplier)

    @property
    def base_cost(self) -> int:
        """The cost without the healing layer's multiplier; INFINITY when dead."""
        return self._cost(1.0)

    def _cost(self, multiplier: float) -> int:
        if self._last_heard is None or self._now - self._last_heard > DEAD_INTERVAL:
            return INFINITY
        etx = self.etx
        if etx == float("inf"):
            return INFINITY
        raw = (BASE_COST * etx + self.rtt_penalty) * multiplier
        return min(INFINITY - 1, round(raw))
