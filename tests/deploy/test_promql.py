"""The PromQL metric-name extractor the dashboard and rule checks rely on.

If it missed a name, a dashboard over a metric we never export would pass; if it took a
label, function or keyword for a name, a correct dashboard would fail. Hand-written
tricky cases plus generated expressions whose names are known by construction; the
generator's output is itself checked to be valid PromQL by promtool (deploy marker).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.deploy.promql import (
    PromQLNameError,
    grafana_variable_query_names,
    metric_names,
    registry_metric_names,
    substitute_grafana_variables,
)


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ("x0t:job:rate5m", {"x0t:job:rate5m"}),
        # Label names and values that look like metrics, functions and keywords.
        ('foo{rate="sum(bar)", by=~"baz|qux", offset!="1"}', {"foo"}),
        # Aggregation with the grouping before and after the argument.
        ("sum by (le, job) (rate(req_bucket[5m]))", {"req_bucket"}),
        ("sum(rate(req_total[5m])) without (instance, sum)", {"req_total"}),
        ("SUM BY (job) (a)", {"a"}),
        # Vector matching: the label lists are not names, the operands are.
        ("a * on (instance) group_left (version) b", {"a", "b"}),
        ("a / ignoring (code) group_right c", {"a", "c"}),
        ("a > bool 0.5", {"a"}),
        ("a and on() b unless c or d", {"a", "b", "c", "d"}),
        # Strings anywhere: label_replace's regex and replacement, escaped quotes.
        ('label_replace(a, "dst", "$1 not_a_metric", "src", "(.*)")', {"a"}),
        (r'a{x="quote \" inside b{c}"}', {"a"}),
        ("a{x='single \\' c'}", {"a"}),
        ("a{x=`raw \\ d`}", {"a"}),
        ('count_values("version", build_info)', {"build_info"}),
        # Ranges, subqueries, offsets, @ and numbers spelt as words.
        ("max_over_time(rate(a[5m])[1h:30s] offset -5m)", {"a"}),
        ("a @ start() - b @ 1609746000", {"a", "b"}),
        ("a offset 1h30m > Inf or b < -NaN", {"a", "b"}),
        ("0x1F * 1.5e+3 + .5", set()),
        ("time() - vector(1)", set()),
        # The name as a matcher (Prometheus 2) or a quoted name (Prometheus 3).
        ('{__name__="a", job="x"}', {"a"}),
        ('{"a.b", job="x"}', {"a.b"}),
        # Grafana variables stand for values, never names.
        ('rate(a{job=~"$job", i=~"${node:regex}"}[$__rate_interval])', {"a"}),
        ("rate(a[[[interval]]])", {"a"}),
        # Comments end at the line's end.
        ("a # b{c}\n + d", {"a", "d"}),
        # A function name is only a function when called.
        ("rate", {"rate"}),
        ("histogram_quantile(0.99, sum by (le) (rate(h_bucket[5m])))", {"h_bucket"}),
    ],
)
def test_extracts_exactly_the_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


@pytest.mark.parametrize(
    "expr",
    ['{__name__=~"x0t.*"}', '{__name__!="a"}', '$metric{job="x"}', 'a{x="unterminated}', "a[5m"],
)
def test_names_it_cannot_know_are_an_error_not_a_guess(expr: str) -> None:
    with pytest.raises(PromQLNameError):
        metric_names(expr)


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ("label_values(up, job)", {"up"}),
        ('label_values(x0t_build_info{job=~"$job"}, instance)', {"x0t_build_info"}),
        ("label_values(job)", set()),
        ("query_result(topk(5, a))", {"a"}),
        ("label_names()", set()),
    ],
)
def test_grafana_variable_queries(query: str, names: set[str]) -> None:
    assert grafana_variable_query_names(query) == names


def test_grafana_substitution_fills_builtins_and_declared_variables() -> None:
    expr = 'rate(a{job=~"$job",n=~"${node:regex}"}[$__rate_interval]) + b{r="$1"}'
    assert substitute_grafana_variables(expr, {"job": "j", "node": ".*"}) == (
        'rate(a{job=~"j",n=~".*"}[5m]) + b{r="$1"}'
    )


def test_grafana_substitution_refuses_an_undeclared_variable() -> None:
    with pytest.raises(KeyError):
        substitute_grafana_variables('a{job="$missing"}', {})


def test_registry_names_expand_counters_and_histograms() -> None:
    names = registry_metric_names()
    # Counter: the family is declared without _total; only _total/_created are served.
    assert "x0tta6bl4_self_healing_events_total" in names
    assert "x0tta6bl4_self_healing_events" not in names
    for suffix in ("_bucket", "_sum", "_count"):
        assert f"x0tta6bl4_self_healing_mttr_seconds{suffix}" in names
    assert "x0tta6bl4_self_healing_mttr_seconds" not in names
    assert "x0tta6bl4_link_rtt_seconds" in names
    # Exported only once its process sets it, yet a name the registry serves.
    assert "x0tta6bl4_neighbours" in names


# --- generated expressions ---------------------------------------------------------------

_RESERVED = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "atan2", "bool", "offset", "inf", "nan", "start", "end", "sum", "min", "max", "avg",
    "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile",
    "limitk", "limit_ratio",
}  # fmt: skip
_names = st.from_regex(r"[a-z_:][a-z0-9_:]{0,12}", fullmatch=True).filter(
    lambda n: n.lower() not in _RESERVED
)
# Label names deliberately include keywords and function names.
_labels = st.one_of(
    st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True).filter(lambda n: n != "__name__"),
    st.sampled_from(["by", "on", "rate", "sum", "offset", "le", "job"]),
)
_values = st.text(st.sampled_from(list("ab_:{}[]()\"'`\\ $#,=~.*sum rate")), max_size=12)
_ws = st.sampled_from([" ", "", "  ", "\n", "\t "])


def _quote(value: str, style: int) -> str:
    if style == 2 and "`" not in value:
        return f"`{value}`"
    quote = "'" if style == 1 else '"'
    escaped = value.replace("\\", "\\\\").replace(quote, "\\" + quote)
    return f"{quote}{escaped}{quote}"


@st.composite
def _matchers(draw: st.DrawFn) -> str:
    parts = []
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["=", "!=", "=~", "!~"]))
        # A regex matcher must be a valid RE2 pattern; keep those plain.
        value = draw(_values) if op in ("=", "!=") else draw(st.sampled_from([".*", "a|b", "5.."]))
        parts.append(f"{draw(_labels)}{draw(_ws)}{op}{_quote(value, draw(st.integers(0, 2)))}")
    return ",".join(parts)


@st.composite
def _selector(draw: st.DrawFn) -> tuple[str, set[str]]:
    name = draw(_names)
    matchers = draw(_matchers())
    if draw(st.booleans()):
        text = f'{{__name__="{name}"{"," if matchers else ""}{matchers}}}'
    else:
        text = f"{name}{{{matchers}}}" if matchers or draw(st.booleans()) else name
    return text, {name}


_durations = st.sampled_from(["5m", "1h", "30s", "1h30m", "100ms", "2d"])


@st.composite
def _modifier(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 3))
    if kind == 1:
        return f" offset {draw(st.sampled_from(['', '-']))}{draw(_durations)}"
    if kind == 2:
        return f" @ {draw(st.sampled_from(['start()', 'end()', '1609746000']))}"
    return ""


def _extend(children: st.SearchStrategy[tuple[str, set[str]]]) -> st.SearchStrategy:
    @st.composite
    def build(draw: st.DrawFn) -> tuple[str, set[str]]:
        ws = draw(_ws)
        shape = draw(st.integers(0, 9))
        if shape == 0:
            sel, names = draw(_selector())
            fn = draw(st.sampled_from(["rate", "increase", "irate", "avg_over_time"]))
            return f"{fn}({ws}{sel}[{draw(_durations)}]{draw(_modifier())})", names
        if shape == 1:
            inner, names = draw(children)
            fn = draw(st.sampled_from(["max_over_time", "min_over_time", "avg_over_time"]))
            return f"{fn}(({inner})[{draw(_durations)}:{draw(_durations)}])", names
        if shape == 2:
            inner, names = draw(children)
            agg = draw(st.sampled_from(["sum", "max", "avg", "count", "group", "stddev"]))
            labels = ", ".join(draw(st.lists(_labels, max_size=3)))
            grouping = f" {draw(st.sampled_from(['by', 'without']))} ({labels})"
            if draw(st.booleans()):
                return f"{agg}{grouping}{ws}({inner})", names
            return f"{agg}({inner}){grouping}", names
        if shape == 3:
            inner, names = draw(children)
            agg = draw(st.sampled_from(["topk(3,", "bottomk(2,", "quantile(0.9,"]))
            return f"{agg} {inner})", names
        if shape == 4:
            inner, names = draw(children)
            label = _quote(draw(_labels), 0)
            return f"count_values({label}, {inner})", names
        if shape == 5:
            (left, ln), (right, rn) = draw(children), draw(children)
            op = draw(st.sampled_from(["+", "-", "*", "/", "%", "^", "atan2"]))
            matching = draw(
                st.sampled_from(["", " on (job)", " ignoring (le)", " on (instance) group_left"])
            )
            # group_left's label list is optional, but a "(" after it always opens one.
            extra = draw(st.sampled_from([" ()", " (version)"])) if "group" in matching else ""
            return f"({left}){ws}{op}{matching}{extra} ({right})", ln | rn
        if shape == 6:
            (left, ln), (right, rn) = draw(children), draw(children)
            op = draw(st.sampled_from(["and", "or", "unless"]))
            matching = draw(st.sampled_from(["", " on (job)", " ignoring (le)"]))
            return f"({left}) {op}{matching} ({right})", ln | rn
        if shape == 7:
            inner, names = draw(children)
            op = draw(st.sampled_from([">", "<", "==", "!=", ">=", "<="]))
            bool_ = draw(st.sampled_from(["", " bool"]))
            number = draw(st.sampled_from(["0", "0.5", "1e3", "0x1f", "Inf", "-NaN", ".5"]))
            return f"({inner}) {op}{bool_} {number}", names
        if shape == 8:
            inner, names = draw(children)
            dst, src = _quote(draw(_labels), 0), _quote(draw(_labels), 1)
            return f'label_replace({inner}, {dst}, "$1", {src}, "(.*)")', names
        inner, names = draw(children)
        return f"-({inner}) # {draw(_names)}{{x}}\n", names

    return build()


@st.composite
def _leaf(draw: st.DrawFn) -> tuple[str, set[str]]:
    if draw(st.integers(0, 5)) == 0:
        return draw(st.sampled_from(["vector(1)", "vector(time())", "(time() - vector(0))"])), set()
    sel, names = draw(_selector())
    return sel + draw(_modifier()), names


expressions = st.recursive(_leaf(), _extend, max_leaves=6)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(expressions)
def test_generated_expressions_yield_exactly_their_metric_names(
    case: tuple[str, set[str]],
) -> None:
    expr, names = case
    assert metric_names(expr) == names


@settings(max_examples=100)
@given(expressions, st.sampled_from([" ", "\n  ", "\t"]))
def test_extra_whitespace_between_tokens_changes_nothing(
    case: tuple[str, set[str]], space: str
) -> None:
    expr, names = case
    # Around operators and brackets only: never inside a string or a comment.
    if any(c in expr for c in "\"'`#"):
        return
    spaced = re.sub(r"([(),\[\]{}+*/%^])", rf"{space}\1{space}", expr)
    assert metric_names(spaced) == names


def _promtool() -> str | None:
    path = shutil.which("promtool")
    if path is None and os.environ.get("X0T_REQUIRE_SERVICES") == "1":
        pytest.fail("promtool not found (Debian package prometheus) and X0T_REQUIRE_SERVICES=1")
    return path


@pytest.mark.deploy
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(expressions, min_size=25, max_size=25))
def test_generated_expressions_are_valid_promql(
    tmp_path_factory: pytest.TempPathFactory, cases: list[tuple[str, set[str]]]
) -> None:
    """Keeps the property above honest: it is about PromQL, not a private dialect."""
    promtool = _promtool()
    if promtool is None:
        pytest.skip("promtool not found (Debian package prometheus)")
    rules = [{"record": f"generated:expr_{i}", "expr": expr} for i, (expr, _) in enumerate(cases)]
    path: Path = tmp_path_factory.mktemp("promql") / "generated.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "generated", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    exprs = "\n".join(f"{i}: {expr!r}" for i, (expr, _) in enumerate(cases))
    assert result.returncode == 0, f"{result.stdout}{result.stderr}\n{exprs}"
