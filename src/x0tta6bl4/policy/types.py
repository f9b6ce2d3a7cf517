"""What the policy speaks about: protocols, subjects, rules, decisions, and its errors."""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from x0tta6bl4.errors import PolicyError
from x0tta6bl4.identity.cert import DEFAULT_TRUST_DOMAIN, node_spiffe_id, normalize_tags
from x0tta6bl4.identity.types import VerifiedIdentity

DEFAULT_DENY_ID = "default-deny"
MAX_PORT = 65535


class Proto(enum.StrEnum):
    TCP = "tcp"
    UDP = "udp"
    # Datagrams an application sends through the node's local message API (AppSend's port).
    MSG = "msg"
    # No ports: ping and friends.
    ICMP = "icmp"


PORTED = frozenset({Proto.TCP, Proto.UDP, Proto.MSG})


@dataclass(frozen=True, slots=True)
class Subject:
    """One end of a flow as the policy sees it. Build it from a verified certificate
    (``from_identity``): tags come from the certificate, never from a packet."""

    spiffe_id: str
    tags: frozenset[str] = frozenset()

    @classmethod
    def from_identity(cls, identity: VerifiedIdentity) -> Subject:
        return cls(identity.spiffe_id, frozenset(identity.tags))

    @classmethod
    def node(
        cls, name: str, tags: Iterable[str] = (), trust_domain: str = DEFAULT_TRUST_DOMAIN
    ) -> Subject:
        """A node by name (validated like a certificate's; raises IdentityError)."""
        return cls(node_spiffe_id(trust_domain, name), frozenset(normalize_tags(tags)))


@dataclass(frozen=True, slots=True)
class Selector:
    """``any``, a ``tag:KEY:VALUE`` pattern or a ``spiffe://`` pattern (``*`` globs)."""

    text: str  # as written in the rule
    kind: Literal["any", "tag", "spiffe"]
    literal: str | None = None  # exact tag or SPIFFE ID, when the pattern has no '*'
    regex: re.Pattern[str] | None = None  # otherwise

    def matches(self, subject: Subject) -> bool:
        if self.kind == "any":
            return True
        if self.kind == "tag":
            if self.literal is not None:
                return self.literal in subject.tags
            assert self.regex is not None
            return any(self.regex.fullmatch(t) for t in subject.tags)
        if self.literal is not None:
            return subject.spiffe_id == self.literal
        assert self.regex is not None
        return self.regex.fullmatch(subject.spiffe_id) is not None


# Per protocol, the port spans a rule covers; () means every port (and ICMP, which has none).
Ports = dict[Proto, tuple[tuple[int, int], ...]]


@dataclass(frozen=True, slots=True, eq=False)
class Rule:
    line: int
    text: str  # the rule as written, comment and outer whitespace removed
    allow: bool
    src: tuple[Selector, ...]
    dst: tuple[Selector, ...]
    ports: Ports | None  # None: every protocol and port

    @property
    def id(self) -> str:
        """``line:N``: a bounded Prometheus label value (a policy holds at most MAX_RULES)."""
        return f"line:{self.line}"

    def __repr__(self) -> str:
        return f"Rule({self.id}, {self.text!r})"


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    rule: Rule | None  # None: no rule matched (default deny)
    rule_id: str  # ``line:N`` or ``default-deny``
    reason: str  # short, for logs and ``x0t policy check``

    @property
    def line(self) -> int | None:
        return None if self.rule is None else self.rule.line

    @property
    def rule_text(self) -> str | None:
        return None if self.rule is None else self.rule.text


DEFAULT_DENY = Decision(False, None, DEFAULT_DENY_ID, "no rule matches: default deny")


def decision_for(rule: Rule) -> Decision:
    verb = "allowed" if rule.allow else "denied"
    return Decision(rule.allow, rule, rule.id, f"{verb} by line {rule.line}")


# --- errors -----------------------------------------------------------------------------


class PolicySyntaxError(PolicyError):
    """A policy text does not parse: ``source line L, column C: message`` (1-based)."""

    def __init__(self, source: str, line: int, column: int, message: str) -> None:
        super().__init__(f"{source} line {line}, column {column}: {message}")
        self.source = source
        self.line = line
        self.column = column
        self.message = message


class RefusalReason(enum.StrEnum):
    """Why a node refused a policy document (also a metric label value)."""

    TOO_LARGE = "too_large"
    UNSIGNED = "unsigned"
    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"
    OLDER = "older"
    CONFLICT = "conflict"  # the held version number, different text


class PolicyRejected(PolicyError):
    """A signed policy document was refused; ``reason`` says which check failed."""

    def __init__(self, reason: RefusalReason, detail: str) -> None:
        super().__init__(f"policy refused ({reason.value}): {detail}")
        self.reason = reason
        self.detail = detail
