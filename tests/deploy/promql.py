"""Which metric names a PromQL expression reads, and which names our processes emit.

Used by the dashboard and alert-rule tests to hold every query to the metrics the
registry really exports (the system we replace had alert rules over metrics that were
never exported). The extractor is a small lexer, not a parser: PromQL's grammar makes a
metric name the only identifier that is neither a keyword, nor followed by ``(`` (a
function or aggregation), nor inside ``{}`` (label matchers), ``[]`` (ranges,
subqueries) or the label list after ``by``/``without``/``on``/``ignoring``/
``group_left``/``group_right``. Syntax errors are promtool's job (see test_dashboards).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
RULES_DIR = REPO / "deploy" / "monitoring" / "rules"

# Series Prometheus writes itself: per scrape target, and for alerting rules.
PROMETHEUS_SYNTHETIC_SERIES = frozenset(
    {
        "up",
        "scrape_duration_seconds",
        "scrape_samples_scraped",
        "scrape_samples_post_metric_relabeling",
        "scrape_series_added",
        "ALERTS",
        "ALERTS_FOR_STATE",
    }
)

# Keywords whose following parenthesised group lists label names, not expressions.
_LABEL_LIST_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
# Aggregation operators may be followed by ``by (...)`` before their ``(``, so they are
# recognised by name rather than by a following parenthesis.
_AGGREGATIONS = frozenset(
    {
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    }
)
# Binary set/arith keywords, modifiers, and the float literals spelt as identifiers.
_OTHER_KEYWORDS = frozenset({"and", "or", "unless", "atan2", "bool", "offset", "inf", "nan"})
_KEYWORDS = _LABEL_LIST_KEYWORDS | _AGGREGATIONS | _OTHER_KEYWORDS

METRIC_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|`[^`]*`)
  | (?P<gvar>\$\{[^}]*\}|\$\w+|\[\[[^\]]*\]\])
  | (?P<number>0[xX][0-9a-fA-F]+
       |(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=,(){}\[\]@])
    """,
    re.VERBOSE | re.DOTALL,
)


class PromQLNameError(ValueError):
    """The expression's metric names cannot be known from its text."""


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    pos: int


def tokenize(expr: str) -> list[Token]:
    """Lex ``expr`` into tokens, dropping whitespace and comments.

    Grafana variables (``$job``, ``${node}``, ``$__rate_interval``, ``[[var]]``) are
    tokens of their own kind, so they are never mistaken for metric names.
    """
    tokens: list[Token] = []
    pos = 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if match is None:
            raise PromQLNameError(f"unexpected character {expr[pos]!r} at {pos} in {expr!r}")
        kind = match.lastgroup
        assert kind is not None  # every alternative is a named group
        if kind not in ("ws", "comment"):
            tokens.append(Token(kind, match.group(), pos))
        pos = match.end()
    return tokens


def _unquote(literal: str) -> str:
    if literal.startswith("`"):
        return literal[1:-1]
    # PromQL's escapes are Go's; names only need the common ones to round-trip.
    body = literal[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)


def _skip_group(tokens: list[Token], start: int, open_: str, close: str) -> int:
    """Index just past the ``close`` matching ``tokens[start]`` (an ``open_``)."""
    depth = 0
    for index in range(start, len(tokens)):
        text = tokens[index].text if tokens[index].kind == "op" else ""
        if text == open_:
            depth += 1
        elif text == close:
            depth -= 1
            if depth == 0:
                return index + 1
    raise PromQLNameError(f"unbalanced {open_!r} at {tokens[start].pos}")


def _matcher_names(tokens: list[Token], start: int, end: int) -> set[str]:
    """Metric names fixed between braces ``tokens[start:end]``: ``__name__="..."``, or
    a quoted name standing alone (``{"name", job="x"}``, Prometheus 3's UTF-8 syntax).
    """
    names: set[str] = set()
    for index in range(start, end):
        token = tokens[index]
        before = tokens[index - 1].text
        after = tokens[index + 1].text
        if token.kind == "string" and before in ("{", ",") and after in (",", "}"):
            names.add(_unquote(token.text))
    for index in range(start, end - 2):
        label, op, value = tokens[index], tokens[index + 1], tokens[index + 2]
        if label.kind == "ident" and label.text == "__name__" and op.kind == "op":
            if op.text == "=" and value.kind == "string":
                names.add(_unquote(value.text))
            else:
                raise PromQLNameError(
                    f"__name__ {op.text} at {label.pos}: names chosen by a pattern cannot "
                    "be checked against the registry"
                )
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects (bare selectors and ``{__name__="..."}``)."""
    tokens = tokenize(expr)
    names: set[str] = set()
    index = 0
    while index < len(tokens):
        token = tokens[index]
        following = tokens[index + 1] if index + 1 < len(tokens) else None
        if token.kind == "op" and token.text == "{":
            end = _skip_group(tokens, index, "{", "}")
            names |= _matcher_names(tokens, index + 1, end - 1)
            index = end
            continue
        if token.kind == "op" and token.text == "[":
            index = _skip_group(tokens, index, "[", "]")
            continue
        if token.kind == "gvar" and following is not None and following.text == "{":
            raise PromQLNameError(f"variable {token.text} used as a metric name")
        if token.kind == "ident":
            word = token.text.lower()
            is_call = following is not None and following.kind == "op" and following.text == "("
            if word in _LABEL_LIST_KEYWORDS and is_call:
                assert following is not None
                index = _skip_group(tokens, index + 1, "(", ")")
                continue
            if word not in _KEYWORDS and not is_call:
                names.add(token.text)
        index += 1
    return names


# --- Grafana -----------------------------------------------------------------------------

_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<body>.*)\)\s*$", re.DOTALL)
_QUERY_RESULT = re.compile(r"^\s*query_result\((?P<body>.*)\)\s*$", re.DOTALL)
_LAST_ARG = re.compile(r",\s*[A-Za-z_][A-Za-z0-9_]*\s*$")


def grafana_variable_query_names(query: str) -> set[str]:
    """Metric names read by a Grafana Prometheus variable query (``label_values(...)``,
    ``query_result(...)``); other forms (``label_names()``, ``metrics(re)``) read none
    by a fixed name and return the empty set.
    """
    match = _LABEL_VALUES.match(query)
    if match:
        body = match.group("body")
        selector = _LAST_ARG.sub("", body)
        # label_values(label): one argument, no selector.
        return set() if selector == body else metric_names(selector)
    match = _QUERY_RESULT.match(query)
    if match:
        return metric_names(match.group("body"))
    return set()


# Built-in interval variables; values valid wherever Grafana allows them.
GRAFANA_BUILTINS: Mapping[str, str] = {
    "__rate_interval": "5m",
    "__interval": "1m",
    "__range": "1h",
    "__interval_ms": "60000",
    "__range_ms": "3600000",
    "__range_s": "3600",
}
_GVAR = re.compile(
    # ``$1`` in label_replace's replacement is a capture reference, not a variable.
    r"\$\{(?P<braced>\w+)(?::[^}]*)?\}|\$(?P<plain>[A-Za-z_]\w*)"
    r"|\[\[(?P<old>\w+)(?::[^\]]*)?\]\]"
)


def substitute_grafana_variables(expr: str, values: Mapping[str, str]) -> str:
    """Replace Grafana variables as Grafana would before sending ``expr`` to Prometheus.

    ``values`` gives the dashboard's own variables; built-in intervals are filled in.
    An undeclared variable raises ``KeyError``: Grafana would send it verbatim and
    Prometheus would reject the query.
    """

    def value(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("plain") or match.group("old")
        if name in values:
            return values[name]
        return GRAFANA_BUILTINS[name]

    return _GVAR.sub(value, expr)


# --- what we emit --------------------------------------------------------------------------

# Series names each metric type exposes in the text format (prometheus_client).
_SUFFIXES: Mapping[str, tuple[str, ...]] = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}


def registry_metric_names() -> frozenset[str]:
    """Every series name ``x0tta6bl4.observability.metrics.REGISTRY`` can expose.

    From each collector's ``describe()`` as well as ``REGISTRY.collect()``: a labelled
    metric not touched yet, or a gauge that exports nothing until its process sets it
    (``OptionalGauge``), still counts. prometheus_client has no public list of a
    registry's collectors; ``_collector_to_names`` is the one it keeps for
    ``auto_describe``.
    """
    from x0tta6bl4.observability.metrics import REGISTRY

    families = list(REGISTRY.collect())
    for collector in list(REGISTRY._collector_to_names):
        describe = getattr(collector, "describe", None)
        if describe is not None:
            families.extend(describe())
    names: set[str] = set()
    for family in families:
        for suffix in _SUFFIXES.get(family.type, ("",)):
            names.add(family.name + suffix)
        names.update(sample.name for sample in family.samples)
    return frozenset(names)


def rule_files(rules_dir: Path = RULES_DIR) -> list[Path]:
    return sorted([*rules_dir.glob("*.yml"), *rules_dir.glob("*.yaml")])


def _rules(path: Path) -> Iterator[Mapping[str, Any]]:
    document = yaml.safe_load(path.read_text()) or {}
    for group in document.get("groups") or []:
        yield from group.get("rules") or []


def recording_rule_names(paths: Iterable[Path]) -> frozenset[str]:
    return frozenset(
        str(rule["record"]) for path in paths for rule in _rules(path) if "record" in rule
    )


def rule_expressions(paths: Iterable[Path]) -> list[tuple[str, str]]:
    """``(label, expr)`` for every recording and alerting rule, label naming its origin."""
    found: list[tuple[str, str]] = []
    for path in paths:
        for rule in _rules(path):
            name = rule.get("record") or rule.get("alert") or "?"
            found.append((f"{path.name}:{name}", str(rule["expr"])))
    return found


def emitted_metric_names(rules_dir: Path = RULES_DIR) -> frozenset[str]:
    """Names a query may read: the registry's, Prometheus's own, and recording rules'."""
    return (
        registry_metric_names()
        | PROMETHEUS_SYNTHETIC_SERIES
        | recording_rule_names(rule_files(rules_dir))
    )
