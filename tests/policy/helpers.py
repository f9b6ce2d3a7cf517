"""Shared builders for policy tests: an example policy and subjects."""

from __future__ import annotations

from collections.abc import Iterable

from tests.identity.helpers import TD
from x0tta6bl4.policy import Subject

EXAMPLE = """\
version 3
# web tier may reach the database
allow from tag:role:web to tag:role:db port tcp/5432
deny  from spiffe://x0tta6bl4.mesh/node/lab-* to any   # the lab reaches nothing
allow from any to tag:role:api port msg/7000, tcp/8000-8100 proto icmp
allow from tag:site:* to spiffe://x0tta6bl4.mesh/node/dns-* port udp/53
"""


def node(name: str, *tags: str) -> Subject:
    return Subject.node(name, tags, TD)


def with_version(text: str, version: int) -> str:
    """``text`` with its first line replaced by ``version N``."""
    return f"version {version}\n" + text.split("\n", 1)[1]


def policy_text(version: int, rules: Iterable[str]) -> str:
    return "".join([f"version {version}\n", *(f"{r}\n" for r in rules)])
