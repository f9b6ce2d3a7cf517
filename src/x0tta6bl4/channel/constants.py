"""Every timer and limit of the secure channel, by name.

Times are seconds (monotonic unless said otherwise), sizes are bytes. The values
follow WireGuard where the two protocols meet (rekey, reject and cookie timers) and are
tuned for a self-healing mesh elsewhere (fast handshake retries, fragment limits).
"""

from __future__ import annotations

from typing import Final

from x0tta6bl4.crypto import hybrid

TIMER_EPSILON: Final = 1e-9  # a timer firing at its deadline counts as due despite float rounding

# --- wire -----------------------------------------------------------------------

PROTOCOL_VERSION: Final = 1
PROTOCOL_LABEL: Final = b"x0tta6bl4 pqIK hybrid-KEM v1"  # seeds the chaining key and transcript

MSG_INIT: Final = 1
MSG_RESP: Final = 2
MSG_COOKIE: Final = 3
MSG_DATA: Final = 4
MSG_CERT_REQUEST: Final = 5
MSG_CERT: Final = 6
MSG_FRAGMENT: Final = 7
MSG_CONFIRM: Final = 8  # the initiator's first packets: biscuit + DATA
MSG_NO_SESSION: Final = 9  # "no session has this index": answers DATA the receiver cannot open
MSG_FRAGMENT_NACK: Final = 10  # "these fragments of your message did not arrive"
MSG_DATA_FRAGMENT: Final = 11  # a piece of one DATA message too large for a datagram
MSG_LAST: Final = MSG_DATA_FRAGMENT  # the highest type a decoder accepts
# Not a channel message: the mesh's RELAY datagram (an end-to-end DATA or DATA_FRAGMENT
# carried between neighbours without link sealing). Reserved so the two never collide;
# the channel's decoder refuses it like any unknown type.
MSG_RELAY: Final = 12

HEADER_SIZE: Final = 4  # version u8 | type u8 | reserved u16
INDEX_SIZE: Final = 4
MAC_SIZE: Final = 16
AEAD_TAG_SIZE: Final = 16
FINGERPRINT_SIZE: Final = 32  # SHA-256 of a certificate's DER
TIMESTAMP_SIZE: Final = 12  # seconds u64 | nanoseconds u32, big-endian
COOKIE_SIZE: Final = 16
COOKIE_NONCE_SIZE: Final = 12
EPHEMERAL_SIZE: Final = hybrid.PUBLIC_KEY_SIZE  # 1216
KEM_CIPHERTEXT_SIZE: Final = hybrid.CIPHERTEXT_SIZE  # 1120
# The responder's sealed state, returned by the initiator in CONFIRM:
# local u32 | remote u32 | created f64 | timestamp 12 | fingerprint 32 | two keys 64.
BISCUIT_PLAIN_SIZE: Final = 4 + 4 + 8 + TIMESTAMP_SIZE + FINGERPRINT_SIZE + 64  # 124
BISCUIT_SIZE: Final = 12 + BISCUIT_PLAIN_SIZE + AEAD_TAG_SIZE  # nonce | sealed: 152

DATA_HEADER_SIZE: Final = HEADER_SIZE + INDEX_SIZE + 8  # ... | receiver u32 | counter u64
DATA_OVERHEAD: Final = DATA_HEADER_SIZE + AEAD_TAG_SIZE  # 32

FRAGMENT_HEADER_SIZE: Final = HEADER_SIZE + 4 + 1 + 1 + 2  # id u32 | index | count | total u16
# NO_SESSION echoes the DATA it answers: receiver u32 | counter u64 | the AEAD tag. As large
# as the smallest DATA (a keepalive), so answering never amplifies.
NO_SESSION_SIZE: Final = HEADER_SIZE + INDEX_SIZE + 8 + AEAD_TAG_SIZE  # 32
FRAGMENT_NACK_SIZE: Final = HEADER_SIZE + 4 + 8  # message_id u32 | missing u64 (a bitmap): 16
# receiver u32 | counter u64 (the DATA header's fields) | index u8 | count u8 | length u16
DATA_FRAGMENT_HEADER_SIZE: Final = HEADER_SIZE + INDEX_SIZE + 8 + 1 + 1 + 2  # 20

CERT_REQUEST_SIZE: Final = 128  # fixed, zero padded: at least as large as a COOKIE reply
MAX_CERT_SIZE: Final = 16384  # an ML-DSA-65 signed SVID is about 7 KB

DEFAULT_MAX_DATAGRAM: Final = 1280  # the IPv6 minimum MTU: never fragmented by IP
MIN_DATAGRAM: Final = 576

# --- fragmentation --------------------------------------------------------------

MAX_MESSAGE_SIZE: Final = 32768  # largest message a reassembly may produce
MAX_FRAGMENTS: Final = 64  # MIN_DATAGRAM chunks * 64 > MAX_MESSAGE_SIZE
# Partial messages are held in two pools so that sources nobody has authenticated can
# never evict the reassemblies of peers we hold a session with or wait on.
MAX_REASSEMBLIES_PER_SOURCE: Final = 4
MAX_REASSEMBLIES_UNKNOWN: Final = 64  # from sources without a session or attempt
MAX_REASSEMBLIES_KNOWN: Final = 256  # from peers with a session or our attempt
REASSEMBLY_TIMEOUT: Final = 5.0
REASSEMBLY_MIN_EVICT_AGE: Final = 0.5  # a younger partial is never evicted for a new one

# --- payloads larger than one datagram ----------------------------------------------
# A payload up to MAX_DATA_PAYLOAD is sealed as ONE DATA message (one AEAD seal, one
# counter) and, if that does not fit a datagram, sent as DATA_FRAGMENTs, which name the
# session (receiver index) and the counter. They are reassembled apart from handshake
# fragments (their own bounds; no stranger's fragment and no handshake competes with
# them for room) and never repaired: an IP packet is best effort, a lost fragment loses
# the payload (counted as data_incomplete), and the next one is not held up.
MAX_DATA_PAYLOAD: Final = 65535  # an IPv4 packet of the largest size; a length field is u16
MAX_DATA_FRAGMENTS: Final = 255  # count u8; MIN_DATAGRAM gives 118 for the largest payload
DATA_REASSEMBLY_TIMEOUT: Final = 1.0  # fragments go out back to back: later, one was lost
DATA_REASSEMBLY_MIN_EVICT_AGE: Final = 0.25  # a partial heard from this recently stays
MAX_DATA_REASSEMBLIES_PER_SESSION: Final = 8
MAX_DATA_REASSEMBLIES: Final = 256  # partial payloads of every session together
MAX_DATA_REASSEMBLY_BYTES: Final = 4 * 1024 * 1024  # their declared sizes together

# --- fragment repair (selective repeat) --------------------------------------------
# One lost fragment used to lose its message, and the retry resent every fragment under a
# new id. Now the receiver asks for what is missing (FRAGMENT_NACK) and the sender resends
# only that, from the messages it keeps for a while; an INIT's retries reuse its message
# id, so old and new fragments combine.
NACK_QUIET: Final = 0.02  # a partial that heard nothing for this long NACKs what it misses
NACK_RETRY_MIN: Final = 0.05  # a repeated NACK waits at least this, and twice the round trip
NACK_RTT_DEFAULT: Final = 0.1  # the round trip assumed before one is measured
NACK_RETRY_CAP: Final = 1.0
NACK_RETRY_FLAT: Final = 3  # NACKs repeated at the same interval before backing off
MAX_NACKS_PER_MESSAGE: Final = 8  # and never more NACK bytes than the partial has received
SENT_MESSAGE_TTL: Final = REASSEMBLY_TIMEOUT  # a sent fragmented message is kept this long
MAX_RESENDS_PER_MESSAGE: Final = 8  # NACKs and repeats one kept message answers
# Kept messages in two pools, so that answers to unauthenticated requests (RESP, CERT)
# can never push out the messages of our own initiations.
MAX_SENT_OWN: Final = 128
MAX_SENT_ANSWERS: Final = 128
MAX_SENT_PER_DEST: Final = 8
MAX_COMPLETED: Final = 1024  # recently completed messages: another copy is never NACKed for
REPEAT_HOLDOFF: Final = 0.05  # a completed request seen again after this is a retry: re-answer it

# --- sessions (WireGuard's values) ------------------------------------------------

REKEY_AFTER_TIME: Final = 120.0  # a sender starts a new handshake past this session age
# WireGuard lets only a session's initiator rekey on time (and adds a receive-side rule for
# an initiator that only listens); here the responder also rekeys when it sends, 10 s later,
# so one-way traffic in either direction rekeys and the initiator normally goes first.
RESPONDER_REKEY_DELAY: Final = 10.0
REJECT_AFTER_TIME: Final = 180.0  # no packet is sent or accepted on an older session
REKEY_AFTER_MESSAGES: Final = 2**60
REJECT_AFTER_MESSAGES: Final = 2**64 - 2**13 - 1
REPLAY_WINDOW: Final = 4096  # packets; a Python int bitmap
CONFIRM_GRACE: Final = 1.0  # a responder with queued data waits this long, then initiates
BISCUIT_KEY_LIFETIME: Final = 120.0  # the responder's biscuit key rotates this often
BISCUIT_MAX_AGE: Final = 10.0  # a CONFIRM must arrive this soon after its RESP
ACK_RETRY_BASE: Final = 0.25  # an initiator resends CONFIRM until the responder answers
ACK_RETRIES: Final = 4  # unanswered CONFIRMs before the session is given up

# --- liveness: a peer that lost our session (WireGuard's passive keepalive and its
# "no reply, new handshake" timer, scaled from 10 s / 15 s to a mesh that heals in ~1 s) ---

KEEPALIVE_TIMEOUT: Final = 0.25  # data received while we sent nothing this long: keepalive back
REPLY_TIMEOUT: Final = 1.0  # data sent and nothing authenticated back this long: new handshake
# A receiver that cannot open DATA (no session has its index: it restarted) answers with
# NO_SESSION, at most this often per source; the sender checks the echo against what it
# sent and starts (or hurries) a handshake, at most once per interval, tearing nothing down.
NO_SESSION_RATE: Final = 2.0
NO_SESSION_BURST: Final = 2.0
NO_SESSION_HANDSHAKE_INTERVAL: Final = 1.0
SENT_TAG_WINDOW: Final = 64  # the tags of a session's last packets, to check a NO_SESSION by
assert SENT_TAG_WINDOW & (SENT_TAG_WINDOW - 1) == 0  # a power of two: kept by counter & mask

# --- handshake ------------------------------------------------------------------

HANDSHAKE_RETRY_BASE: Final = 0.25
HANDSHAKE_RETRY_FACTOR: Final = 2.0
HANDSHAKE_RETRY_CAP: Final = 1.0  # a healed link reconnects within about a second
HANDSHAKE_RETRY_JITTER: Final = 0.2  # each delay is stretched by up to 20 %
# Once a round trip to the peer is measured, retries wait at least RETRY_RTT_FACTOR round
# trips (time to repair a fragmented message); the cap grows with it on long paths.
# Retries back off only while the peer is silent (it may be gone): once it has answered
# in this attempt (a COOKIE, a CERT, fragments, NACKs) they keep one interval, as
# WireGuard's fixed interval does, down to HANDSHAKE_RETRY_MIN on a short path. Backing
# off on a lossy path cost seconds per lost COOKIE; a cookie request (answered with 52
# bytes) never backs off.
HANDSHAKE_RETRY_MIN: Final = 0.1
RETRY_RTT_FACTOR: Final = 4.0
RTT_SMOOTHING: Final = 0.125  # RFC 6298's alpha
# A retry resends the same INIT (same bytes, same message id) while it is this young, so
# fragments of every copy combine and a responder that already answered resends its RESP;
# a responder keeps that RESP for SENT_MESSAGE_TTL, longer than this.
INIT_REUSE_TIME: Final = 3.0
REKEY_ATTEMPT_TIME: Final = 30.0  # give up (and report) after trying this long
CERT_REFRESH_AFTER: Final = 3  # unanswered INITs before asking for the peer's certificate again
CERT_REQUESTS_IN_FLIGHT: Final = 4  # a CERT answering any of our last 4 requests is taken
MAX_TIMESTAMP_ENTRIES: Final = 16384  # initiators whose last accepted timestamp we keep
MAX_CERT_CACHE: Final = 1024  # verified certificates cached by fingerprint

# --- cookies and load -------------------------------------------------------------

COOKIE_SECRET_LIFETIME: Final = 120.0  # the responder's cookie secret rotates this often
COOKIE_VALIDITY: Final = 120.0  # how long an initiator uses a cookie it received
UNDER_LOAD_THRESHOLD: Final = 100.0  # handshakes/s above which mac2 is required
# Under load, one address with a valid cookie gets at most this many INITs per second
# (WireGuard's ratelimiter uses the same numbers), so a cookie is not a free pass.
PER_SOURCE_INIT_RATE: Final = 20.0
PER_SOURCE_INIT_BURST: Final = 5.0
MAX_RATE_LIMITED_SOURCES: Final = 4096
MAX_SEEN_INITS: Final = 8192  # recent INITs (by mac1) refused before decapsulation if seen
REJECTED_CERT_TTL: Final = 60.0  # a certificate that failed verification is refused at once
MAX_REJECTED_CERTS: Final = 1024
# Addresses whose last certificate was revoked: no handshake of ours goes there until a
# handshake the peer initiates with a certificate that verifies clears the entry, or the
# hold runs out: REVOKED_HOLD, doubled each time the same revoked certificate is met there
# again, up to REVOKED_HOLD_MAX (then one attempt looks again: a node re-enrolled at that
# address that does not dial us is found within the hold). Oldest entries forgotten first.
MAX_REVOKED_ADDRS: Final = 1024
REVOKED_HOLD: Final = 60.0
REVOKED_HOLD_MAX: Final = 600.0
MAX_COOKIE_JAR: Final = 1024

# --- peers and queues -------------------------------------------------------------

MAX_QUEUED_PER_PEER: Final = 64  # payloads waiting for a session (drop-oldest)
MAX_PEERS: Final = 65536
# A peer table entry is made only by us (add_peer, connect, send) or by a confirmed
# handshake; one identity holds at most this many addresses (its oldest goes first).
MAX_ADDRS_PER_IDENTITY: Final = 4
