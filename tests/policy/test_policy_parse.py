"""The policy language: what parses, and where a bad rule is reported."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.policy.helpers import EXAMPLE, policy_text
from x0tta6bl4.errors import PolicyError
from x0tta6bl4.policy import MAX_POLICY_SIZE, MAX_RULES, Policy, PolicySyntaxError, Proto
from x0tta6bl4.policy.parse import parse_flow


def test_example_parses() -> None:
    p = Policy.parse(EXAMPLE, "policy.txt")
    assert p.version == 3
    assert [r.line for r in p.rules] == [3, 4, 5, 6]
    assert [r.allow for r in p.rules] == [True, False, True, True]
    web_db, lab, api, dns = p.rules
    assert web_db.text == "allow from tag:role:web to tag:role:db port tcp/5432"
    assert lab.text == "deny  from spiffe://x0tta6bl4.mesh/node/lab-* to any"  # comment gone
    assert web_db.ports == {Proto.TCP: ((5432, 5432),)}
    assert lab.ports is None
    assert api.ports == {Proto.MSG: ((7000, 7000),), Proto.TCP: ((8000, 8100),), Proto.ICMP: ()}
    assert [s.text for s in dns.src] == ["tag:site:*"]
    assert p.rule_ids == ("line:3", "line:4", "line:5", "line:6", "default-deny")
    assert repr(p) == "Policy(version=3, 4 rules)"


def test_rule_ids_are_prometheus_label_values() -> None:
    p = Policy.parse(policy_text(1, ["allow from any to any"] * 20))
    for rule_id in p.rule_ids:
        assert re.fullmatch(r"[a-z0-9:-]{1,32}", rule_id)
    assert len(set(p.rule_ids)) == 21


def test_layout_freedom() -> None:
    """Comments anywhere, blank lines, tabs, CRLF, commas with or without spaces."""
    text = (
        "# header comment\r\n\r\n\tversion 7 # seven\r\n"
        "allow\tfrom tag:role:a*,tag:role:b to any port tcp/1 ,tcp/2, udp/3-4\r\n"
        "   # just a comment: allow from nothing to nowhere ü\n"
        "deny from * to any proto tcp, udp\n"
    )
    p = Policy.parse(text)
    assert p.version == 7
    a, d = p.rules
    assert (a.line, d.line) == (4, 6)
    assert [s.text for s in a.src] == ["tag:role:a*", "tag:role:b"]
    assert a.ports == {Proto.TCP: ((1, 2),), Proto.UDP: ((3, 4),)}
    assert d.ports == {Proto.TCP: (), Proto.UDP: ()}


def test_port_forms_merge() -> None:
    (r,) = Policy.parse(
        policy_text(1, ["allow from any to any port tcp/10-20,tcp/15-30,tcp/31,tcp/40,msg/*,udp/0"])
    ).rules
    assert r.ports == {
        Proto.TCP: ((10, 31), (40, 40)),
        Proto.MSG: (),
        Proto.UDP: ((0, 0),),
    }
    (r,) = Policy.parse(policy_text(1, ["allow from any to any port tcp/80 proto tcp"])).rules
    assert r.ports == {Proto.TCP: ()}
    (r,) = Policy.parse(policy_text(1, ["allow from any to any proto any port tcp/80"])).rules
    assert r.ports is None


def test_empty_rule_set_is_valid() -> None:
    assert Policy.parse("version 1\n").rules == ()
    assert Policy.parse("# nothing\nversion 99\n# still nothing").version == 99


def test_bytes_input() -> None:
    assert Policy.parse(EXAMPLE.encode()).version == 3


@pytest.mark.parametrize(
    ("text", "line", "column", "message"),
    [
        (
            "version 1\n\n\nallow from tag:role:web too tag:role:db",
            4,
            25,
            "expected 'to', got 'too'",
        ),
        ("version 1\nallow from any", 2, 15, "expected 'to', got end of line"),
        ("version 1\npermit from any to any", 2, 1, "expected 'allow' or 'deny', got 'permit'"),
        ("version 1\nallow frm any to any", 2, 7, "expected 'from', got 'frm'"),
        ("allow from any to any", 1, 1, "expected the header 'version N' before the first rule"),
        ("", 1, 1, "the policy is empty"),
        ("# only\n\n", 1, 1, "the policy is empty"),
        ("version 0", 1, 9, "expected a version number (a positive integer), got '0'"),
        ("version -1", 1, 9, "positive integer"),
        ("version 01", 1, 9, "positive integer"),
        ("version", 1, 8, "got end of line"),
        ("version 1 2", 1, 11, "expected end of line, got '2'"),
        ("version 1\nversion 2", 2, 1, "'version' may appear once (it is on line 1)"),
        ("version 1\nallow from tag:web to any", 2, 12, "a tag is key:value"),
        ("version 1\nallow from tag:Role:web to any", 2, 12, "bad tag pattern"),
        ("version 1\nallow from tag:1x:web to any", 2, 12, "can never match"),
        ("version 1\nallow from web-1 to any", 2, 12, "expected a selector"),
        ("version 1\nallow from any, to any", 2, 17, "expected a selector"),
        ("version 1\nallow from any,, to any", 2, 16, "expected a selector (any,"),
        ("version 1\nallow from spiffe://X/node/a to any", 2, 12, "bad SPIFFE ID pattern"),
        ("version 1\nallow from spiffe://td/a//b to any", 2, 12, "bad SPIFFE ID pattern"),
        (
            "version 1\nallow from spiffe://td/*a*b*c*d*e to any",
            2,
            12,
            "at most 4 '*' in one pattern",
        ),
        ("version 1\nallow from any to any port tcp/99999", 2, 32, "port 99999 is above 65535"),
        ("version 1\nallow from any to any port tcp/90-80", 2, 32, "empty port range 90-80"),
        ("version 1\nallow from any to any port tcp/x", 2, 32, "expected a port, LOW-HIGH"),
        ("version 1\nallow from any to any port tcp/", 2, 32, "got ''"),
        ("version 1\nallow from any to any port tcq/80", 2, 28, "unknown protocol 'tcq'"),
        ("version 1\nallow from any to any port icmp", 2, 28, "icmp has no ports"),
        ("version 1\nallow from any to any port icmp/8", 2, 28, "icmp has no ports"),
        ("version 1\nallow from any to any port 5432", 2, 28, "expected PROTO/PORTS"),
        ("version 1\nallow from any to any port", 2, 27, "got end of line"),
        ("version 1\nallow from any to any port tcp/1,", 2, 34, "got end of line"),
        ("version 1\nallow from any to any proto ping", 2, 29, "expected a protocol"),
        ("version 1\nallow from any to any port tcp/1 port tcp/2", 2, 34, "appears twice"),
        ("version 1\nallow from any to any for tcp/1", 2, 23, "expected 'port', 'proto'"),
        ("version 1\nallow from any to any\x0b", 2, 22, "unexpected character U+000B"),
        ("version 1\nallow from any to anÿ", 2, 21, "unexpected character U+00FF"),
        ("version 1\nallow from any to any\rport tcp/1", 2, 22, "unexpected character U+000D"),
    ],
)
def test_errors_point_at_line_and_column(text: str, line: int, column: int, message: str) -> None:
    with pytest.raises(PolicySyntaxError) as info:
        Policy.parse(text, "policy.txt")
    e = info.value
    assert (e.line, e.column) == (line, column), str(e)
    assert message in e.message
    assert str(e) == f"policy.txt line {line}, column {column}: {e.message}"
    assert isinstance(e, PolicyError)


def test_the_issue_example_message() -> None:
    with pytest.raises(PolicySyntaxError) as info:
        Policy.parse("version 1\n\n\nallow from any too any\n", "policy.txt")
    assert str(info.value) == "policy.txt line 4, column 16: expected 'to', got 'too'"


def test_not_utf8_is_located() -> None:
    with pytest.raises(PolicySyntaxError) as info:
        Policy.parse(b"version 1\n# fine\nallow from any \xff to any\n")
    assert (info.value.line, info.value.column) == (3, 16)


def test_long_token_is_shortened_in_message() -> None:
    with pytest.raises(PolicySyntaxError) as info:
        Policy.parse("version 1\nallow from any " + "x" * 500)
    assert len(str(info.value)) < 150


def test_limits() -> None:
    Policy.parse(policy_text(1, ["allow from any to any"] * MAX_RULES))
    with pytest.raises(PolicySyntaxError) as info:
        Policy.parse(policy_text(1, ["allow from any to any"] * (MAX_RULES + 1)))
    assert info.value.line == MAX_RULES + 2
    with pytest.raises(PolicyError, match="a policy may hold"):
        Policy.parse("version 1\n" + "#" * MAX_POLICY_SIZE)


@pytest.mark.parametrize(
    ("text", "flow"),
    [
        ("tcp/5432", (Proto.TCP, 5432)),
        ("udp/0", (Proto.UDP, 0)),
        ("msg/65535", (Proto.MSG, 65535)),
        ("icmp", (Proto.ICMP, None)),
    ],
)
def test_parse_flow(text: str, flow: tuple[Proto, int | None]) -> None:
    assert parse_flow(text) == flow


@pytest.mark.parametrize(
    "text", ["tcp", "tcp/", "tcp/65536", "tcp/-1", "tcp/٣", "icmp/8", "sctp/1"]
)
def test_parse_flow_errors(text: str) -> None:
    with pytest.raises(PolicyError):
        parse_flow(text)


# --- fuzzing: anything in, a Policy or a typed error out ---------------------------------

_WORDS = [
    "version", "1", "0", "allow", "deny", "from", "to", "port", "proto", "any", "*", ",",
    "tag:role:web", "tag:site:*", "tag:x", "spiffe://x0tta6bl4.mesh/node/a-*",
    "spiffe://td", "tcp/80", "udp/1-2", "msg/*", "tcp/9-1", "icmp", "tcp", "#", "\t",
    "\n", "\r\n", " ", "é", "\x00",
]  # fmt: skip


def _check(text: str | bytes) -> None:
    try:
        p = Policy.parse(text, "f")
    except PolicySyntaxError as e:
        lines = (text.decode("utf-8", "replace") if isinstance(text, bytes) else text).split("\n")
        assert 1 <= e.line <= max(len(lines), 1)
        assert 1 <= e.column <= len(lines[e.line - 1]) + 2
        assert str(e).startswith(f"f line {e.line}, column {e.column}: ")
    except PolicyError:
        pass
    else:
        assert p.version >= 1
        for r in p.rules:
            assert r.id == f"line:{r.line}"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_fuzz_any_text(text: str) -> None:
    _check(text)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_any_bytes(data: bytes) -> None:
    _check(data)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(_WORDS), max_size=40))
def test_fuzz_token_soup(words: list[str]) -> None:
    _check("version 1\n" + " ".join(words))
    _check(" ".join(words))
