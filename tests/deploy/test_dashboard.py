"""deploy/grafana: the dashboard parses, is laid out soundly and queries only real metrics.

The metric table is the server's own: `build(Settings())` wires the emulator exactly as
`serve` does (without starting it) and its registry is collected, so a metric that is added,
renamed or relabelled in tap_emulator/observe/metrics.py is checked here without editing this file.
Every family, including prometheus-client's `process_*` ones, must be shown by some panel
unless it is listed, with its reason, in EXCLUDED_FAMILIES.

PromQL is not parsed: `read_query` pulls identifiers out with regular expressions. Its limits,
which the dashboard respects and `test_query_reader_*` pin down:

- a selector's matchers are `label op "value"` lists with double-quoted values and no `{`/`}`
  inside a value; a selector without a metric name (`{__name__=~...}`) is not understood and
  fails the test;
- string literals outside selectors (label_replace arguments) are ignored, so labels such a
  function creates are unknown to the checks; the dashboard uses none;
- any identifier followed by `(` is taken for a function, any other one (apart from PromQL's
  keywords) for a metric name, so an unknown function or a typo in a metric name both fail;
- a `by`/`without`/`on`/`ignoring`/`group_*` label must be a scrape-target label or a label
  of every metric in the expression: an expression combining metrics with different labels
  has to be split into several targets;
- when an expression aggregates, a legend may only use its `by` labels (scoping is not
  tracked: any `by` in the expression counts).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tap_emulator.app import build
from tap_emulator.config import Settings

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "tap-emulator-dashboard.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
GRID_WIDTH = 24

# Labels Prometheus adds from the scrape target (pod-annotation job or the chart's
# ServiceMonitor), not the emulator; the dashboard filters and groups by them.
TARGET_LABELS = frozenset({"job", "namespace", "pod", "instance"})

# Metric families deliberately left off the dashboard, with the reason.
EXCLUDED_FAMILIES: dict[str, str] = {
    # CPython's virtual size counts reserved, never-touched address space (thread stacks,
    # allocator arenas); resident memory is what the container's memory limit sees.
    "process_virtual_memory_bytes": "not actionable; the Resident memory panel covers memory",
}

# Range selectors must follow the dashboard's resolution, never a hard-coded window.
ALLOWED_RANGES = frozenset({"$__rate_interval", "$__range"})

# Series names each metric type exposes, after its family name.
SERIES_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "info": ("_info",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
}

AGGREGATIONS = frozenset(
    {
        "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
        "bottomk", "topk", "quantile", "limitk", "limit_ratio",
    }
)  # fmt: skip
PROMQL_FUNCTIONS = AGGREGATIONS | frozenset(
    {
        "abs", "absent", "absent_over_time", "avg_over_time", "ceil", "changes", "clamp",
        "clamp_max", "clamp_min", "count_over_time", "day_of_month", "day_of_week",
        "day_of_year", "days_in_month", "delta", "deriv", "double_exponential_smoothing",
        "exp", "floor", "histogram_avg", "histogram_count", "histogram_fraction",
        "histogram_quantile", "histogram_stddev", "histogram_stdvar", "histogram_sum",
        "holt_winters", "hour", "idelta", "increase", "irate", "label_join", "label_replace",
        "last_over_time", "ln", "log10", "log2", "max_over_time", "min_over_time", "minute",
        "month", "predict_linear", "present_over_time", "quantile_over_time", "rate",
        "resets", "round", "scalar", "sgn", "sort", "sort_by_label", "sort_by_label_desc",
        "sort_desc", "sqrt", "stddev_over_time", "stdvar_over_time", "sum_over_time", "time",
        "timestamp", "vector", "year",
    }
)  # fmt: skip
KEYWORDS = frozenset(
    {
        "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
        "and", "or", "unless", "atan2", "inf", "nan",
    }
)  # fmt: skip

# A selector: an optional metric name and a `{...}` matcher list (no braces in values).
_SELECTOR = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)?\s*\{([^{}]*)\}")
_MATCHER = re.compile(r'\s*([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_RANGE = re.compile(r"\[([^\]]*)\]")
_GROUPING = re.compile(
    r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)", re.IGNORECASE
)
# An identifier not inside a number (1e-9, 0x1f) or a $variable, and whether a call follows.
_IDENTIFIER = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(\s*\()?")
_LEGEND_LABEL = re.compile(r"\{\{\s*([^}\s]+)\s*\}\}")
_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<selector>.+),\s*(?P<label>\w+)\s*\)\s*$")


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: tuple[tuple[str, str, str], ...] = ()  # (label, operator, value)


@dataclass(frozen=True)
class Query:
    """What `read_query` found in one PromQL expression."""

    selectors: tuple[Selector, ...]
    functions: frozenset[str]
    grouping: frozenset[str]  # labels of by/without/on/ignoring/group_left/group_right
    by: frozenset[str]  # labels of `by` clauses alone
    ranges: tuple[str, ...]

    @property
    def metrics(self) -> frozenset[str]:
        return frozenset(s.metric for s in self.selectors)

    @property
    def aggregates(self) -> bool:
        return bool(self.functions & AGGREGATIONS)


def _matchers(body: str) -> tuple[tuple[str, str, str], ...]:
    found: list[tuple[str, str, str]] = []
    position = 0
    while body[position:].strip():
        match = _MATCHER.match(body, position)
        if match is None:
            raise ValueError(f"cannot read the matchers {{{body}}}")
        found.append((match[1], match[2], match[3]))
        position = match.end()
    return tuple(found)


def read_query(expr: str) -> Query:
    """Metric names, matchers, functions, grouping labels and ranges of one expression."""
    selectors: list[Selector] = []

    def take_selector(match: re.Match[str]) -> str:
        name = match[1] or ""
        selectors.append(Selector(name, _matchers(match[2])))
        return f" {name} "  # recorded here, so the identifier pass below skips it

    rest = _SELECTOR.sub(take_selector, expr)
    braced = {s.metric for s in selectors}
    rest = _STRING.sub(" ", rest)
    ranges = tuple(r.strip() for r in _RANGE.findall(rest))
    rest = _RANGE.sub(" ", rest)
    grouping: set[str] = set()
    by: set[str] = set()
    for keyword, labels in _GROUPING.findall(rest):
        names = {label.strip() for label in labels.split(",") if label.strip()}
        grouping |= names
        if keyword.lower() == "by":
            by |= names
    rest = _GROUPING.sub(" ", rest)
    functions: set[str] = set()
    for name, call in _IDENTIFIER.findall(rest):
        if call:
            functions.add(name)
        elif name.lower() in KEYWORDS:
            continue
        elif name not in braced:
            selectors.append(Selector(name))
    return Query(tuple(selectors), frozenset(functions), frozenset(grouping), frozenset(by), ranges)


@dataclass(frozen=True)
class MetricTable:
    """The series the emulator exposes: family -> series names, series -> labels/values."""

    families: dict[str, frozenset[str]]
    labels: dict[str, frozenset[str]]
    values: dict[tuple[str, str], frozenset[str]]

    def family_of(self, series: str) -> str | None:
        return next((f for f, names in self.families.items() if series in names), None)


def emulator_metrics() -> MetricTable:
    """Collect the registry of an emulator built exactly as `serve` builds it."""
    families: dict[str, frozenset[str]] = {}
    labels: dict[str, set[str]] = {}
    values: dict[tuple[str, str], set[str]] = {}
    for family in build(Settings()).metrics.registry.collect():
        if family.type not in SERIES_SUFFIXES:
            raise AssertionError(f"{family.name}: teach this test the {family.type} type")
        names = {family.name + suffix for suffix in SERIES_SUFFIXES[family.type]}
        names |= {sample.name for sample in family.samples}
        families[family.name] = frozenset(names)
        for name in names:
            labels.setdefault(name, set()).update({"le"} if name.endswith("_bucket") else set())
        for sample in family.samples:
            for label, value in sample.labels.items():
                labels[sample.name].add(label)
                values.setdefault((sample.name, label), set()).add(value)
    return MetricTable(
        families,
        {k: frozenset(v) for k, v in labels.items()},
        {k: frozenset(v) for k, v in values.items()},
    )


@dataclass(frozen=True)
class Expression:
    """One PromQL expression of the dashboard and where it is."""

    where: str
    expr: str
    legend: str | None = None
    query: Query = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "query", read_query(self.expr))


def load_dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def panels_of(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those kept inside collapsed rows."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def variables_of(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def variable_query(variable: dict[str, Any]) -> str:
    query = variable["query"]
    text = query["query"] if isinstance(query, dict) else query
    assert isinstance(text, str)
    return text


def expressions_of(dashboard: dict[str, Any]) -> list[Expression]:
    """Panel targets and the selectors of query variables (`label_values(selector, label)`)."""
    found: list[Expression] = []
    for panel in panels_of(dashboard):
        for target in panel.get("targets", []):
            where = f"panel {panel['title']!r} target {target.get('refId')}"
            found.append(Expression(where, target["expr"], target.get("legendFormat")))
    for name, variable in variables_of(dashboard).items():
        if variable["type"] == "query":
            match = _LABEL_VALUES.match(variable_query(variable))
            assert match, f"variable {name}: expected label_values(selector, label)"
            # The listed label is checked like a legend label: it must exist on the metric.
            legend = "{{" + match["label"] + "}}"
            found.append(Expression(f"variable {name}", match["selector"], legend))
    return found


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load_dashboard()


@pytest.fixture(scope="module")
def expressions(dashboard: dict[str, Any]) -> list[Expression]:
    return expressions_of(dashboard)


@pytest.fixture(scope="module")
def table() -> MetricTable:
    collected = emulator_metrics()
    if not any(name.startswith("process_") for name in collected.families):
        pytest.skip("prometheus-client's process collector needs /proc (Linux)")
    return collected


# --- the file and its layout -------------------------------------------------------------


def test_dashboard_is_importable_json(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "tap-emulator"
    assert dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    # Imported dashboards get their database id from Grafana.
    assert dashboard.get("id") is None
    variables = variables_of(dashboard)
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "namespace", "pod"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"] == DATASOURCE
        query = variable_query(variables[name])
        assert query.startswith("label_values(tap_emulator_build_info"), name
        # Grafana shows `definition` in the variable list; it must say what `query` does.
        assert variables[name].get("definition", query) == query, name


def test_every_panel_has_a_title_unique_id_position_and_targets(
    dashboard: dict[str, Any],
) -> None:
    panels = list(panels_of(dashboard))
    ids = [panel.get("id") for panel in panels]
    assert all(isinstance(i, int) for i in ids)
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        title = panel.get("title")
        assert isinstance(title, str) and title.strip(), f"panel {panel['id']} has no title"
        grid = panel.get("gridPos")
        assert isinstance(grid, dict), f"{title}: no gridPos"
        assert all(isinstance(grid.get(k), int) for k in ("h", "w", "x", "y")), title
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] >= 0 and grid["y"] >= 0, title
        assert grid["x"] + grid["w"] <= GRID_WIDTH, f"{title}: wider than the grid"
        if panel["type"] == "row":
            continue  # a row is a heading: no queries
        assert panel.get("description", "").strip(), f"{title}: say what bad looks like"
        targets = panel.get("targets")
        assert isinstance(targets, list) and targets, f"{title}: no targets"
        ref_ids = [target.get("refId") for target in targets]
        assert len(ref_ids) == len(set(ref_ids)), f"{title}: duplicate refIds"
        assert all(target.get("expr", "").strip() for target in targets), title
        if panel["type"] in {"timeseries", "stat"}:
            assert panel["fieldConfig"]["defaults"].get("unit"), f"{title}: no unit"


def test_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:  # panels of collapsed rows are laid out on expansion
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']!r} overlaps {taken[(x, y)]!r}"
                taken[(x, y)] = panel["title"]


def test_every_query_uses_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    for panel in panels_of(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, f"{panel['title']} {target['refId']}"


# --- the queries against the emulator's metric table --------------------------------------


def test_queries_name_only_metrics_the_emulator_exports(
    expressions: list[Expression], table: MetricTable
) -> None:
    problems = []
    for e in expressions:
        for metric in sorted(e.query.metrics):
            if not metric:
                problems.append(f"{e.where}: a selector without a metric name")
            elif metric not in table.labels:
                problems.append(f"{e.where}: {metric} is not exported by the emulator")
        for function in sorted(e.query.functions - PROMQL_FUNCTIONS):
            problems.append(f"{e.where}: {function}() is not a PromQL function")
    assert not problems, "\n".join(problems)


def test_labels_are_real_labels_of_their_metrics(
    expressions: list[Expression], table: MetricTable
) -> None:
    problems = []
    for e in expressions:
        series = [m for m in e.query.metrics if m in table.labels]
        for selector in e.query.selectors:
            known = table.labels.get(selector.metric, frozenset())
            for label, operator, value in selector.matchers:
                if label in TARGET_LABELS:
                    continue
                if label not in known:
                    problems.append(f"{e.where}: {selector.metric} has no label {label!r}")
                elif operator in {"=", "!="} and "$" not in value:
                    seen = table.values.get((selector.metric, label), frozenset())
                    if value not in seen:
                        problems.append(
                            f"{e.where}: {selector.metric}{{{label}={value!r}}} never occurs "
                            f"(values: {sorted(seen)})"
                        )
        shared = frozenset.intersection(*(table.labels[m] for m in series)) if series else None
        for label in sorted(e.query.grouping - TARGET_LABELS):
            if shared is None or label not in shared:
                problems.append(
                    f"{e.where}: grouping by {label!r}, not a label of every metric in "
                    f"{sorted(series)}"
                )
        if e.legend:
            if e.query.aggregates:
                allowed = e.query.by
            else:
                allowed = TARGET_LABELS.union(*(table.labels[m] for m in series))
            for label in _LEGEND_LABEL.findall(e.legend):
                if label not in allowed:
                    problems.append(f"{e.where}: {{{{{label}}}}} is not a label of the result")
    assert not problems, "\n".join(problems)


def test_ranges_follow_the_dashboard_interval(expressions: list[Expression]) -> None:
    for e in expressions:
        for window in e.query.ranges:
            assert window in ALLOWED_RANGES, f"{e.where}: [{window}]; use $__rate_interval"


def test_every_metric_family_is_on_the_dashboard(
    expressions: list[Expression], table: MetricTable
) -> None:
    shown = {table.family_of(m) for e in expressions for m in e.query.metrics}
    stale = set(EXCLUDED_FAMILIES) - set(table.families)
    assert not stale, f"EXCLUDED_FAMILIES names metrics the emulator no longer has: {stale}"
    contradicted = set(EXCLUDED_FAMILIES) & shown
    assert not contradicted, f"excluded yet on the dashboard: {contradicted}"
    missing = sorted(set(table.families) - shown - set(EXCLUDED_FAMILIES))
    assert not missing, (
        f"metric families on no panel: {missing}; add a panel to "
        f"{DASHBOARD.relative_to(REPO)} or exclude them here with a reason"
    )


# --- the query reader itself ---------------------------------------------------------------


def test_query_reader_finds_metrics_matchers_and_grouping() -> None:
    query = read_query(
        'histogram_quantile(0.99, sum by (pod, le) (rate(x_bucket{job=~"$job", a="b"}'
        "[$__rate_interval]))) / ignoring(le) y_total * 1e-9 > 0x1f offset 5m"
    )
    assert query.metrics == {"x_bucket", "y_total"}
    assert query.functions == {"histogram_quantile", "sum", "rate"}
    assert query.grouping == {"pod", "le"}
    assert query.by == {"pod", "le"}
    assert query.ranges == ("$__rate_interval",)
    braced = next(s for s in query.selectors if s.metric == "x_bucket")
    assert braced.matchers == (("job", "=~", "$job"), ("a", "=", "b"))


@pytest.mark.parametrize(
    ("expr", "metrics"),
    [
        ("time() - process_start_time_seconds", {"process_start_time_seconds"}),
        ("sum(rate(a_total[5m])) or vector(0)", {"a_total"}),
        ('{__name__="a"}', {""}),  # a nameless selector is reported, never guessed
        ('label_replace(a, "dst", "$1", "src", "(.*)")', {"a"}),
        ("count(b) by (job) and on() c", {"b", "c"}),
    ],
)
def test_query_reader_tells_metrics_from_functions(expr: str, metrics: set[str]) -> None:
    assert read_query(expr).metrics == metrics


def test_query_reader_refuses_matchers_it_cannot_read() -> None:
    with pytest.raises(ValueError, match="cannot read the matchers"):
        read_query("a{job=~'single-quoted'}")
