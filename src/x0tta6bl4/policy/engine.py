"""Deciding a flow: first matching rule in file order, else default deny.

The data plane calls ``Policy.decide`` per packet. Selectors are matched once per
(source, destination) pair and the rules that apply to the pair are cached, so a decision
is a dict lookup plus a scan of that pair's few port sets; every ``Decision`` is built when
the policy is, so deciding allocates only the cache key.
"""

from __future__ import annotations

from collections.abc import Iterable

from x0tta6bl4.policy.parse import parse_document
from x0tta6bl4.policy.types import (
    DEFAULT_DENY,
    DEFAULT_DENY_ID,
    Decision,
    Ports,
    Proto,
    Rule,
    Subject,
    decision_for,
)

# Pairs of identities whose applicable rules are cached; the cache is emptied when full.
# Subjects come from verified certificates, so only enrolled nodes can add pairs.
MAX_CACHED_PAIRS = 16384

_Entry = tuple[Ports | None, Decision]


class Policy:
    """A parsed, versioned rule set. Immutable; safe to share between threads."""

    __slots__ = ("_cache", "_decisions", "_rules", "_version")

    def __init__(self, version: int, rules: Iterable[Rule]) -> None:
        self._version = version
        self._rules = tuple(rules)
        self._decisions = tuple(decision_for(r) for r in self._rules)
        self._cache: dict[tuple[Subject, Subject], tuple[_Entry, ...]] = {}

    @classmethod
    def parse(cls, text: str | bytes, source: str = "policy") -> Policy:
        """Parse policy text; raises PolicySyntaxError (with line and column) or
        PolicyError (too large)."""
        return cls(*parse_document(text, source))

    @property
    def version(self) -> int:
        return self._version

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self._rules

    @property
    def rule_ids(self) -> tuple[str, ...]:
        """Every ``Decision.rule_id`` this policy can return (a metric's label values)."""
        return (*(r.id for r in self._rules), DEFAULT_DENY_ID)

    def decide(self, src: Subject, dst: Subject, proto: Proto, port: int | None) -> Decision:
        """May ``src`` reach ``dst`` on ``proto``/``port``? ``port`` is None for ICMP; for
        another protocol None matches only rules that cover all of its ports."""
        entries = self._cache.get((src, dst))
        if entries is None:
            entries = self._pair(src, dst)
        for ports, decision in entries:
            if ports is None:
                return decision
            spans = ports.get(proto)
            if spans is None:
                continue
            if not spans:
                return decision
            if port is not None:
                for lo, hi in spans:
                    if lo <= port <= hi:
                        return decision
        return DEFAULT_DENY

    def _pair(self, src: Subject, dst: Subject) -> tuple[_Entry, ...]:
        entries: list[_Entry] = []
        for rule, decision in zip(self._rules, self._decisions, strict=True):
            if any(s.matches(src) for s in rule.src) and any(d.matches(dst) for d in rule.dst):
                entries.append((rule.ports, decision))
                if rule.ports is None:
                    break  # matches every flow of the pair: nothing after it is reached
        if len(self._cache) >= MAX_CACHED_PAIRS:
            self._cache.clear()
        result = tuple(entries)
        self._cache[(src, dst)] = result
        return result

    def __repr__(self) -> str:
        return f"Policy(version={self._version}, {len(self._rules)} rules)"
