"""Decisions: default deny, first match in file order, selectors, ports, protocols."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.identity.helpers import NOW, TD
from tests.policy.helpers import EXAMPLE, node, policy_text
from x0tta6bl4.identity import NO_REVOCATION_LIST, CertificateAuthority, NodeCredentials
from x0tta6bl4.identity.verify import verify_node_certificate
from x0tta6bl4.policy import DEFAULT_DENY, Policy, Proto, Subject
from x0tta6bl4.policy import engine as engine_module

WEB = node("web-1", "role:web", "site:eu-1")
DB = node("db-1", "role:db")
API = node("api-1", "role:api")
LAB = node("lab-7", "role:web")
DNS = node("dns-1")
OTHER = node("other")


@pytest.fixture(scope="module")
def example() -> Policy:
    return Policy.parse(EXAMPLE, "policy.txt")


def test_default_deny() -> None:
    empty = Policy.parse("version 1\n")
    for proto, port in ((Proto.TCP, 80), (Proto.UDP, 53), (Proto.MSG, 7000), (Proto.ICMP, None)):
        d = empty.decide(WEB, DB, proto, port)
        assert d is DEFAULT_DENY
        assert not d.allowed and d.rule is None and d.line is None and d.rule_text is None
        assert d.rule_id == "default-deny"
        assert "default deny" in d.reason


@pytest.mark.parametrize(
    ("src", "dst", "proto", "port", "allowed", "rule_id"),
    [
        (WEB, DB, Proto.TCP, 5432, True, "line:3"),
        (WEB, DB, Proto.TCP, 5433, False, "default-deny"),
        (WEB, DB, Proto.UDP, 5432, False, "default-deny"),
        (WEB, DB, Proto.MSG, 5432, False, "default-deny"),  # msg is its own protocol
        (DB, WEB, Proto.TCP, 5432, False, "default-deny"),  # rules have a direction
        (OTHER, DB, Proto.TCP, 5432, False, "default-deny"),
        # First match wins: lab-7 carries role:web, and line 3 comes before line 4.
        (LAB, DB, Proto.TCP, 5432, True, "line:3"),
        (LAB, API, Proto.MSG, 7000, False, "line:4"),
        (LAB, API, Proto.ICMP, None, False, "line:4"),
        (OTHER, API, Proto.MSG, 7000, True, "line:5"),
        (OTHER, API, Proto.MSG, 7001, False, "default-deny"),
        (OTHER, API, Proto.TCP, 7000, False, "default-deny"),
        (OTHER, API, Proto.TCP, 8000, True, "line:5"),
        (OTHER, API, Proto.TCP, 8100, True, "line:5"),
        (OTHER, API, Proto.TCP, 8101, False, "default-deny"),
        (OTHER, API, Proto.TCP, 7999, False, "default-deny"),
        (OTHER, API, Proto.ICMP, None, True, "line:5"),
        (OTHER, DB, Proto.ICMP, None, False, "default-deny"),
        (WEB, DNS, Proto.UDP, 53, True, "line:6"),  # tag:site:* glob
        (DB, DNS, Proto.UDP, 53, False, "default-deny"),  # db-1 has no site tag
        (WEB, node("dns"), Proto.UDP, 53, False, "default-deny"),  # dns-* needs the dash
    ],
)
def test_example_decisions(
    example: Policy,
    src: Subject,
    dst: Subject,
    proto: Proto,
    port: int | None,
    allowed: bool,
    rule_id: str,
) -> None:
    d = example.decide(src, dst, proto, port)
    assert (d.allowed, d.rule_id) == (allowed, rule_id), d.reason
    assert d.rule_id in example.rule_ids
    if d.rule is not None:
        assert d.line == d.rule.line and d.rule_text == d.rule.text
        assert d.reason == f"{'allowed' if allowed else 'denied'} by line {d.line}"
    # A second call is answered from the per-pair cache, with the same answer.
    assert example.decide(src, dst, proto, port) is d


def test_deny_before_allow_and_allow_before_deny() -> None:
    deny_first = Policy.parse(
        policy_text(1, ["deny from tag:role:web to any port tcp/22", "allow from any to any"])
    )
    assert not deny_first.decide(WEB, DB, Proto.TCP, 22).allowed
    assert deny_first.decide(WEB, DB, Proto.TCP, 23).allowed
    assert deny_first.decide(DB, WEB, Proto.TCP, 22).allowed
    allow_first = Policy.parse(
        policy_text(1, ["allow from any to any", "deny from tag:role:web to any port tcp/22"])
    )
    assert allow_first.decide(WEB, DB, Proto.TCP, 22).rule_id == "line:2"


def test_spiffe_selectors() -> None:
    p = Policy.parse(
        policy_text(
            1,
            [
                f"allow from spiffe://{TD}/node/web-1 to any port tcp/1",
                f"allow from spiffe://{TD}/node/w* to any port tcp/2",
                f"allow from spiffe://{TD}/* to any port tcp/3",  # '*' stays in one segment
                "allow from spiffe://*/node/web-1 to any port tcp/4",
                "allow from spiffe://other.mesh/node/web-1 to any port tcp/5",
            ],
        )
    )
    assert p.decide(WEB, DB, Proto.TCP, 1).allowed
    assert not p.decide(node("web-10"), DB, Proto.TCP, 1).allowed
    assert p.decide(node("web-10"), DB, Proto.TCP, 2).allowed
    assert not p.decide(node("xweb"), DB, Proto.TCP, 2).allowed
    assert not p.decide(WEB, DB, Proto.TCP, 3).allowed
    assert p.decide(WEB, DB, Proto.TCP, 4).allowed
    assert not p.decide(WEB, DB, Proto.TCP, 5).allowed
    assert p.decide(Subject.node("web-1", trust_domain="other.mesh"), DB, Proto.TCP, 5).allowed


def test_selector_lists_and_any() -> None:
    p = Policy.parse(
        policy_text(
            1, ["allow from tag:role:db, tag:role:api to * port tcp/1", "deny from any to any"]
        )
    )
    assert p.decide(DB, WEB, Proto.TCP, 1).allowed
    assert p.decide(API, WEB, Proto.TCP, 1).allowed
    assert p.decide(WEB, WEB, Proto.TCP, 1).rule_id == "line:3"


def test_port_forms() -> None:
    p = Policy.parse(
        policy_text(
            1,
            [
                "allow from any to any port tcp/22, tcp/8000-8002, udp/*",
                "allow from any to any proto msg",
                "allow from tag:role:db to any",  # no port clause: every protocol and port
            ],
        )
    )
    for port, ok in ((21, False), (22, True), (7999, False), (8000, True), (8002, True)):
        assert p.decide(WEB, DB, Proto.TCP, port).allowed is ok
    assert p.decide(WEB, DB, Proto.UDP, 0).allowed and p.decide(WEB, DB, Proto.UDP, 65535).allowed
    assert p.decide(WEB, DB, Proto.MSG, 12345).rule_id == "line:3"
    assert not p.decide(WEB, DB, Proto.ICMP, None).allowed
    assert p.decide(DB, WEB, Proto.ICMP, None).rule_id == "line:4"
    # port None for a ported protocol: only rules that cover every port match.
    assert p.decide(WEB, DB, Proto.UDP, None).allowed
    assert not p.decide(WEB, DB, Proto.TCP, None).allowed


def test_subject_from_verified_certificate(ca: CertificateAuthority) -> None:
    creds = NodeCredentials.generate_and_issue(ca, "db-9", ["role:db", "site:eu-1"], NOW)
    ident = verify_node_certificate(creds.cert.der, ca.bundle(), NO_REVOCATION_LIST, NOW)
    s = Subject.from_identity(ident)
    assert s == Subject(f"spiffe://{TD}/node/db-9", frozenset({"role:db", "site:eu-1"}))
    assert s == node("db-9", "site:eu-1", "role:db")
    p = Policy.parse(policy_text(1, ["allow from tag:role:web to tag:role:db port tcp/5432"]))
    assert p.decide(WEB, s, Proto.TCP, 5432).allowed


def test_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "MAX_CACHED_PAIRS", 4)
    p = Policy.parse(policy_text(1, ["allow from tag:role:web to any port tcp/80"]))
    for i in range(20):
        assert p.decide(WEB, node(f"n{i}"), Proto.TCP, 80).allowed
        assert not p.decide(node(f"n{i}"), WEB, Proto.TCP, 80).allowed
        assert len(p._cache) <= 4


# --- properties ---------------------------------------------------------------------------

_names = st.sampled_from(["web-1", "web-2", "db-1", "lab-1", "x"])
_tags = st.sets(st.sampled_from(["role:web", "role:db", "site:eu-1", "site:us-2"]), max_size=3)
_subjects = st.builds(lambda n, t: node(n, *t), _names, _tags)
_selectors = st.sampled_from(
    [
        "any",
        "*",
        "tag:role:web",
        "tag:role:*",
        "tag:site:eu-*",
        "tag:*:db",
        f"spiffe://{TD}/node/web-*",
        f"spiffe://{TD}/node/db-1",
        "spiffe://*/node/*",
    ]
)
_clauses = st.sampled_from(
    [
        "",
        " port tcp/80",
        " port tcp/1-100, udp/53",
        " port msg/7000",
        " port tcp/*",
        " proto icmp",
        " proto tcp, icmp",
        " proto any",
        " port udp/50-60 proto msg",
    ]
)
_flows = st.sampled_from(
    [(Proto.TCP, 80), (Proto.TCP, 101), (Proto.UDP, 53), (Proto.MSG, 7000), (Proto.ICMP, None)]
)


def _rules(actions: st.SearchStrategy[str]) -> st.SearchStrategy[list[str]]:
    rule = st.builds(
        lambda a, s, d, c: f"{a} from {','.join(s)} to {','.join(d)}{c}",
        actions,
        st.lists(_selectors, min_size=1, max_size=2),
        st.lists(_selectors, min_size=1, max_size=2),
        _clauses,
    )
    return st.lists(rule, max_size=8)


def _reference(p: Policy, src: Subject, dst: Subject, proto: Proto, port: int | None) -> str:
    """First match in file order, written as plainly as possible, without the cache."""
    for r in p.rules:
        if not any(s.matches(src) for s in r.src) or not any(s.matches(dst) for s in r.dst):
            continue
        if r.ports is None:
            return r.id
        spans = r.ports.get(proto)
        if spans is None:
            continue
        if spans == () or (port is not None and any(lo <= port <= hi for lo, hi in spans)):
            return r.id
    return "default-deny"


@settings(max_examples=200, deadline=None)
@given(_rules(st.just("deny")), _subjects, _subjects, _flows)
def test_without_an_allow_everything_is_denied(
    rules: list[str], src: Subject, dst: Subject, flow: tuple[Proto, int | None]
) -> None:
    p = Policy.parse(policy_text(1, rules))
    assert not p.decide(src, dst, *flow).allowed


@settings(max_examples=300, deadline=None)
@given(
    _rules(st.sampled_from(["allow", "deny"])), st.lists(st.tuples(_subjects, _subjects, _flows))
)
def test_first_match_in_file_order(
    rules: list[str], queries: list[tuple[Subject, Subject, tuple[Proto, int | None]]]
) -> None:
    p = Policy.parse(policy_text(1, rules))
    for src, dst, (proto, port) in queries:
        d = p.decide(src, dst, proto, port)
        assert d.rule_id == _reference(p, src, dst, proto, port)
        assert d.allowed == (d.rule is not None and d.rule.allow)
