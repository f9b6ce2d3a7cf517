"""The policy language: one rule a line, ``#`` comments, a ``version N`` header.

    version 3
    allow from tag:role:web to tag:role:db port tcp/5432
    deny  from spiffe://x0tta6bl4.mesh/node/lab-* to any
    allow from any to tag:role:api port msg/7000, tcp/8000-8100 proto icmp

Grammar and evaluation order are in docs/policy.md. Every error is a PolicySyntaxError
with a 1-based line and column (a tab counts as one column).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from x0tta6bl4.errors import IdentityError, PolicyError
from x0tta6bl4.identity.cert import validate_tag
from x0tta6bl4.policy.types import (
    MAX_PORT,
    PORTED,
    PolicySyntaxError,
    Ports,
    Proto,
    Rule,
    Selector,
)

MAX_POLICY_SIZE = 1 << 20  # bytes of policy text
MAX_RULES = 4096  # also bounds the rule label values a node can emit
MAX_STARS = 4  # '*' per pattern: keeps glob matching cheap

_TOKEN = re.compile(r"[^ \t,]+|,")
_BAD_CHAR = re.compile(r"[^ \t!-~]")  # printable ASCII, space and tab only (outside comments)
_VERSION = re.compile(r"[1-9][0-9]{0,17}")
_PORTS = re.compile(r"([0-9]{1,5})(?:-([0-9]{1,5}))?")
_TAG_PATTERN = re.compile(r"[a-z0-9_.*-]+:[a-z0-9_.*-]+")
_SPIFFE_PATTERN = re.compile(r"spiffe://[a-z0-9._*-]+(?:/[A-Za-z0-9._*-]+)*")
_SELECTOR_HINT = "a selector (any, tag:KEY:VALUE or spiffe://...)"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Tok:
    text: str
    col: int  # 1-based


class _Line:
    """The tokens of one line and a cursor, with errors that point into the line."""

    def __init__(self, source: str, number: int, content: str) -> None:
        self.source = source
        self.number = number
        self.toks = [_Tok(m.group(), m.start() + 1) for m in _TOKEN.finditer(content)]
        self.end_col = len(content.rstrip(" \t")) + 1
        self.pos = 0

    def peek(self) -> _Tok | None:
        return self.toks[self.pos] if self.pos < len(self.toks) else None

    def next(self) -> _Tok | None:
        tok = self.peek()
        self.pos += tok is not None
        return tok

    def error(self, tok: _Tok | None, message: str, col: int | None = None) -> PolicySyntaxError:
        if col is None:
            col = self.end_col if tok is None else tok.col
        return PolicySyntaxError(self.source, self.number, col, message)

    def expected(self, what: str, tok: _Tok | None) -> PolicySyntaxError:
        return self.error(tok, f"expected {what}, got {_show(tok)}")

    def expect(self, word: str) -> None:
        tok = self.next()
        if tok is None or tok.text != word:
            raise self.expected(f"'{word}'", tok)

    def expect_end(self) -> None:
        tok = self.next()
        if tok is not None:
            raise self.expected("end of line", tok)


def _show(tok: _Tok | None) -> str:
    if tok is None:
        return "end of line"
    text = tok.text if len(tok.text) <= 40 else tok.text[:37] + "..."
    return f"'{text}'"


def decode_text(data: str | bytes, source: str) -> str:
    """Size-check and UTF-8-decode policy text; errors carry the offending position."""
    if len(data) > MAX_POLICY_SIZE:
        raise PolicyError(f"{source} is {len(data):,} bytes; a policy may hold {MAX_POLICY_SIZE:,}")
    if isinstance(data, str):
        return data
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise PolicySyntaxError(source, line, col, "not UTF-8 text") from None


def parse_document(data: str | bytes, source: str = "policy") -> tuple[int, tuple[Rule, ...]]:
    """Parse a whole policy text into its version and rules (in file order)."""
    text = decode_text(data, source)
    version: tuple[int, int] | None = None  # (version, line)
    rules: list[Rule] = []
    for number, raw in enumerate(text.split("\n"), 1):
        content = raw.removesuffix("\r").split("#", 1)[0]
        bad = _BAD_CHAR.search(content)
        if bad is not None:
            ch = f"U+{ord(bad.group()):04X}"
            raise PolicySyntaxError(source, number, bad.start() + 1, f"unexpected character {ch}")
        line = _Line(source, number, content)
        first = line.peek()
        if first is None:
            continue
        if first.text == "version":
            if version is not None:
                raise line.error(first, f"'version' may appear once (it is on line {version[1]})")
            line.next()
            tok = line.next()
            if tok is None or not _VERSION.fullmatch(tok.text):
                raise line.expected("a version number (a positive integer)", tok)
            line.expect_end()
            version = (int(tok.text), number)
            continue
        if version is None:
            raise line.expected("the header 'version N' before the first rule", first)
        if len(rules) == MAX_RULES:
            raise line.error(first, f"a policy may hold at most {MAX_RULES} rules")
        rules.append(_rule(line, content.strip(" \t")))
    if version is None:
        raise PolicySyntaxError(source, 1, 1, "the policy is empty: expected 'version N'")
    return version[0], tuple(rules)


def _rule(line: _Line, text: str) -> Rule:
    action = line.next()
    if action is None or action.text not in ("allow", "deny"):
        raise line.expected("'allow' or 'deny'", action)
    line.expect("from")
    src = _selectors(line)
    line.expect("to")
    dst = _selectors(line)
    spans: dict[Proto, list[tuple[int, int]] | None] = {}  # None: every port
    every_proto = False
    seen: set[str] = set()
    while (tok := line.next()) is not None:
        if tok.text in seen:
            raise line.error(tok, f"'{tok.text}' appears twice in this rule")
        if tok.text == "port":
            for proto, span in _list(line, _port_spec):
                have = spans.setdefault(proto, [])
                if have is not None:
                    if span is None:
                        spans[proto] = None
                    else:
                        have.append(span)
        elif tok.text == "proto":
            for name in _list(line, _proto_name):
                if name is None:
                    every_proto = True
                else:
                    spans[name] = None
        else:
            raise line.expected("'port', 'proto' or end of line", tok)
        seen.add(tok.text)
    ports: Ports | None = None
    if seen and not every_proto:
        ports = {p: () if s is None else _merge(s) for p, s in spans.items()}
    return Rule(line.number, text, action.text == "allow", src, dst, ports)


def _list(line: _Line, item: Callable[[_Line, _Tok | None], T]) -> list[T]:
    out = [item(line, line.next())]
    while (tok := line.peek()) is not None and tok.text == ",":
        line.next()
        out.append(item(line, line.next()))
    return out


def _selectors(line: _Line) -> tuple[Selector, ...]:
    return tuple(_list(line, _selector))


def _selector(line: _Line, tok: _Tok | None) -> Selector:
    if tok is None or tok.text == ",":
        raise line.expected(_SELECTOR_HINT, tok)
    text = tok.text
    if text in ("any", "*"):
        return Selector(text, "any")
    if text.startswith("tag:"):
        pattern = text[4:]
        if ":" not in pattern:
            raise line.error(
                tok, f"a tag is key:value as in certificates (e.g. tag:role:web), got '{text}'"
            )
        if not _TAG_PATTERN.fullmatch(pattern):
            raise line.error(
                tok, f"bad tag pattern '{text}': use lowercase letters, digits, '_.-' and '*'"
            )
        return _pattern(line, tok, "tag", pattern, "[^:]*")
    if text.startswith("spiffe://"):
        if not _SPIFFE_PATTERN.fullmatch(text):
            raise line.error(tok, f"bad SPIFFE ID pattern '{text[:60]}'")
        return _pattern(line, tok, "spiffe", text, "[^/]*")
    raise line.expected(_SELECTOR_HINT, tok)


def _pattern(
    line: _Line, tok: _Tok, kind: Literal["tag", "spiffe"], pattern: str, star: str
) -> Selector:
    if "*" not in pattern:
        if kind == "tag":
            try:
                validate_tag(pattern)
            except IdentityError:
                raise line.error(
                    tok, f"'{tok.text}' can never match: no certificate carries that tag"
                ) from None
        return Selector(tok.text, kind, literal=pattern)
    pattern = re.sub(r"\*+", "*", pattern)
    if pattern.count("*") > MAX_STARS:
        raise line.error(tok, f"at most {MAX_STARS} '*' in one pattern")
    regex = re.compile(star.join(re.escape(part) for part in pattern.split("*")))
    return Selector(tok.text, kind, regex=regex)


def _port_spec(line: _Line, tok: _Tok | None) -> tuple[Proto, tuple[int, int] | None]:
    """``tcp/5432``, ``udp/8000-8100``, ``msg/*`` -> (proto, span or None for every port)."""
    if tok is None or "/" not in tok.text:
        if tok is not None and tok.text == "icmp":
            raise line.error(tok, "icmp has no ports: write 'proto icmp'")
        raise line.expected("PROTO/PORTS such as tcp/5432", tok)
    name, _, spec = tok.text.partition("/")
    try:
        proto = Proto(name)
    except ValueError:
        proto = None
    if proto is Proto.ICMP:
        raise line.error(tok, "icmp has no ports: write 'proto icmp'")
    if proto is None:
        raise line.error(tok, f"unknown protocol '{name[:20]}' (expected tcp, udp or msg)")
    col = tok.col + len(name) + 1
    if spec == "*":
        return proto, None
    m = _PORTS.fullmatch(spec)
    if m is None:
        raise line.error(tok, f"expected a port, LOW-HIGH or '*', got '{spec[:20]}'", col)
    lo = int(m.group(1))
    hi = lo if m.group(2) is None else int(m.group(2))
    if hi > MAX_PORT:
        raise line.error(tok, f"port {hi} is above {MAX_PORT}", col)
    if lo > hi:
        raise line.error(tok, f"empty port range {lo}-{hi}", col)
    return proto, (lo, hi)


def _proto_name(line: _Line, tok: _Tok | None) -> Proto | None:
    """A protocol name for ``proto``; None means ``any``."""
    if tok is not None and tok.text == "any":
        return None
    try:
        return Proto(tok.text if tok is not None else "")
    except ValueError:
        raise line.expected("a protocol (tcp, udp, msg, icmp or any)", tok) from None


def _merge(spans: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return tuple(out)


def parse_flow(text: str) -> tuple[Proto, int | None]:
    """``tcp/5432``, ``msg/7000`` or ``icmp`` (as ``x0t policy check`` takes a flow)."""
    name, slash, port = text.partition("/")
    try:
        proto = Proto(name)
    except ValueError:
        raise PolicyError(
            f"unknown protocol {name[:20]!r}: expected tcp/PORT, udp/PORT, msg/PORT or icmp"
        ) from None
    if proto not in PORTED:
        if slash:
            raise PolicyError(f"{proto} has no ports: write just {proto!s}")
        return proto, None
    if not port.isdigit() or not port.isascii() or len(port) > 5 or int(port) > MAX_PORT:
        raise PolicyError(f"{proto} needs a port from 0 to {MAX_PORT}, as in {proto}/5432")
    return proto, int(port)
