"""Overlay addresses: where a node is found inside the overlay, derived from its name.

*IPv6* (:func:`overlay_ipv6`): every mesh (trust domain) owns one IPv6 ULA /48,
``fd`` followed by 40 bits of SHA-256 over the trust domain (RFC 4193's "global ID", here
derived instead of random so every node computes the same one); a node's address in it
is the /48 followed by 80 bits of SHA-256 over its SPIFFE ID. One route for the /48 into
the TUN covers the whole overlay. The default trust domain ``x0tta6bl4.mesh`` owns
``fdad:5a56:48eb::/48`` (pinned by a test: changing the labels renumbers every mesh).
An overlay address names a node but proves nothing: who sent a packet is what the
end-to-end session authenticated.

*IPv4* (:func:`overlay_ipv4`): 22 bits of SHA-256 over the SPIFFE ID inside 100.64.0.0/10
(RFC 6598), the same in every mesh. Nothing is assigned or distributed: every node
computes every peer's addresses from the names it already knows, the certificate vouches
for the name, and the receiver of a packet checks its source against the name its
end-to-end session authenticated.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Final

from x0tta6bl4.identity.cert import DEFAULT_TRUST_DOMAIN, node_spiffe_id, parse_spiffe_id

OVERLAY_PREFIX_LEN: Final = 48
_PREFIX_LABEL: Final = b"x0tta6bl4 overlay prefix v1\0"
_NODE_LABEL: Final = b"x0tta6bl4 overlay node v1\0"


def overlay_prefix(trust_domain: str = DEFAULT_TRUST_DOMAIN) -> IPv6Network:
    """The mesh's ULA /48: ``fd`` + the first 40 bits of SHA-256(label || trust domain)."""
    digest = hashlib.sha256(_PREFIX_LABEL + trust_domain.encode()).digest()
    return IPv6Network((b"\xfd" + digest[:5] + bytes(10), OVERLAY_PREFIX_LEN))


def overlay_ipv6(identity: bytes | str, prefix: IPv6Network | None = None) -> IPv6Address:
    """A node's stable overlay address.

    ``identity`` is the node's SPIFFE ID (``spiffe://<trust-domain>/node/<name>``: the
    prefix defaults to that trust domain's :func:`overlay_prefix`), a bare node name (taken
    as ``spiffe://x0tta6bl4.mesh/node/<name>``), or bytes (hashed as they are; the prefix
    defaults to the default trust domain's). The low 80 bits are the first 80 bits of
    SHA-256(label || identity); an all-zero interface ID (the subnet-router anycast
    address) is never returned.
    """
    if isinstance(identity, str):
        if not identity.startswith("spiffe://"):
            identity = node_spiffe_id(DEFAULT_TRUST_DOMAIN, identity)
        trust_domain, _path = parse_spiffe_id(identity)
        data = identity.encode()
        if prefix is None:
            prefix = overlay_prefix(trust_domain)
    else:
        data = bytes(identity)
        if prefix is None:
            prefix = overlay_prefix()
    if prefix.prefixlen > OVERLAY_PREFIX_LEN:
        raise ValueError(f"overlay prefix {prefix} is longer than /{OVERLAY_PREFIX_LEN}")
    host_bits = 128 - prefix.prefixlen
    digest = int.from_bytes(hashlib.sha256(_NODE_LABEL + data).digest()[:16], "big")
    host = digest >> prefix.prefixlen  # the top host_bits bits of the digest
    if host & 0xFFFF_FFFF_FFFF_FFFF == 0:
        host |= 1
    return IPv6Address(int(prefix.network_address) | (host & ((1 << host_bits) - 1)))


OVERLAY_IPV4_NET: Final = IPv4Network("100.64.0.0/10")
"""Where overlay IPv4 addresses live (RFC 6598 shared address space, as CGNAT uses)."""
_NODE4_LABEL: Final = b"x0tta6bl4 overlay node ipv4 v1\0"


def overlay_ipv4(spiffe_id: str) -> IPv4Address:
    """A node's overlay IPv4 address: 22 bits of SHA-256(label || SPIFFE ID) inside
    100.64.0.0/10, never its first or last address.

    Derived like the IPv6 one, so any node computes any peer's address from its name and
    nothing has to be distributed or trusted beyond the certificate's name. With 2^22
    addresses two names can collide (about 1 in 8,400 for a new name in a 500-node mesh):
    the control plane refuses to enroll a name whose address is taken, and a sender that
    finds two names behind one address sends to neither (``tun_ipv4_ambiguous``).
    """
    if not spiffe_id.startswith("spiffe://"):
        raise ValueError(f"overlay_ipv4 needs a SPIFFE ID, not {spiffe_id!r}")
    parse_spiffe_id(spiffe_id)
    host_bits = 32 - OVERLAY_IPV4_NET.prefixlen
    mask = (1 << host_bits) - 1
    digest = int.from_bytes(hashlib.sha256(_NODE4_LABEL + spiffe_id.encode()).digest()[:4], "big")
    host = digest & mask
    if host in (0, mask):
        host = 1 if host == 0 else mask - 1
    return IPv4Address(int(OVERLAY_IPV4_NET.network_address) | host)


@functools.lru_cache(maxsize=65536)
def node_overlay_ipv6(trust_domain: str, name: str) -> IPv6Address:
    """Node ``name``'s overlay IPv6 address in ``trust_domain`` (cached: looked up per
    packet table rebuild and per listed node)."""
    return overlay_ipv6(node_spiffe_id(trust_domain, name), overlay_prefix(trust_domain))


@functools.lru_cache(maxsize=65536)
def node_overlay_ipv4(trust_domain: str, name: str) -> IPv4Address:
    """Node ``name``'s overlay IPv4 address in ``trust_domain`` (cached)."""
    return overlay_ipv4(node_spiffe_id(trust_domain, name))


def ipv4_holder(trust_domain: str, name: str, others: Iterable[str]) -> str | None:
    """The first of ``others`` (``name`` itself aside) whose overlay IPv4 address is
    ``name``'s, or None: a CA must not certify a second name behind one address."""
    mine = node_overlay_ipv4(trust_domain, name)
    for other in others:
        if other != name and node_overlay_ipv4(trust_domain, other) == mine:
            return other
    return None


__all__ = [
    "OVERLAY_IPV4_NET",
    "OVERLAY_PREFIX_LEN",
    "ipv4_holder",
    "node_overlay_ipv4",
    "node_overlay_ipv6",
    "overlay_ipv4",
    "overlay_ipv6",
    "overlay_prefix",
]
