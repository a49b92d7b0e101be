"""The Prometheus alert rules shipped in packaging/prometheus: valid, unit-tested, and
written only against metric names hostwatch emits.

The set of emitted names is built from the sources of truth, not a list kept here: the
metric tables of every ``collectors/*/README.md`` and the registry of
``agent.telemetry.Telemetry``. ``metric_names_in`` and ``emitted_metric_names`` are
shared with the dashboard test.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "packaging" / "prometheus"
RULES = RULES_DIR / "hostwatch.rules.yml"
RULES_TEST = RULES_DIR / "hostwatch.rules.test.yml"

# Series Prometheus itself attaches to every scrape target: the only names a rule may use
# that hostwatch does not emit.
SCRAPE_SERIES = frozenset({"up"})

_NAME = r"[A-Za-z_:][A-Za-z0-9_:]*"
_TOKEN = re.compile(
    r'"(?:\\.|[^"\\])*"'  # string literals
    r"|'(?:\\.|[^'\\])*'"
    r"|`[^`]*`"
    r"|\{[^}]*\}"  # label matchers
    r"|\[[^\]]*\]"  # ranges and subqueries
    r"|\d[\w.]*"  # numbers and durations (1e3, 0.9, 5m)
    rf"|\$?{_NAME}"  # identifiers; $grafana_variables
    r"|\S"
)
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}
    | {"by", "without", "on", "ignoring", "group_left", "group_right"}
)
_LABEL_LIST_AFTER = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})


def metric_names_in(expr: str) -> set[str]:
    """The metric names a PromQL expression selects, parsed roughly.

    An identifier is a metric name unless it is a function or aggregation (followed by
    ``(``, ``by`` or ``without``), a keyword, a Grafana variable (``$x``), or a label in the list after
    ``by``/``without``/``on``/``ignoring``/``group_left``/``group_right``. Label
    matchers, ranges and strings are skipped whole.
    """
    tokens = _TOKEN.findall(expr)
    names: set[str] = set()
    i = 0
    while i < len(tokens):
        token = tokens[i]
        after = tokens[i + 1] if i + 1 < len(tokens) else ""
        if token.lower() in _LABEL_LIST_AFTER and after == "(":
            i = tokens.index(")", i + 1) + 1
            continue
        aggregation_or_function = after == "(" or after.lower() in ("by", "without")  # sum by (x) (...)
        if re.fullmatch(_NAME, token) and token.lower() not in _KEYWORDS and not aggregation_or_function:
            names.add(token)
        i += 1
    return names


def readme_metric_names() -> set[str]:
    """Backticked names in the first column of the metric tables of the collectors' READMEs."""
    names: set[str] = set()
    for readme in sorted((ROOT / "collectors").glob("*/README.md")):
        header = None
        for line in readme.read_text().splitlines():
            if not line.startswith("|"):
                header = None
                continue
            first = line.strip().strip("|").split("|")[0].strip()
            if header is None:
                header = first.lower()
            elif header in ("name", "metric") and (match := re.match(rf"`({_NAME})`", first)):
                names.add(match.group(1))
    return names


def telemetry_metric_names() -> set[str]:
    """Every series name the agent's own registry can expose, children or not."""
    from agent.telemetry import Telemetry

    suffixes = {"counter": ("_total",), "summary": ("", "_sum", "_count"), "histogram": ("_bucket", "_sum", "_count")}
    names: set[str] = set()
    for family in Telemetry().registry.collect():
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def emitted_metric_names() -> set[str]:
    return readme_metric_names() | telemetry_metric_names()


def load_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool not installed (Debian's prometheus package ships it)")
    return found


# ------------------------------------------------------------------ the helpers themselves


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('rate(node_cpu_seconds_total{mode="idle"}[5m])', {"node_cpu_seconds_total"}),
        (
            "sum by (instance, job) (rate(a_total[5m])) / on (instance) group_left (device) b > bool 0.5",
            {"a_total", "b"},
        ),
        ('x unless on (job, instance) up{job="hostwatch"} offset 5m', {"x", "up"}),
        ("predict_linear(free[6h], 24 * 3600) < 0 and ready == 1e3", {"free", "ready"}),
        ('sum(rate(c{a=~"$inst", b="}"}[$__rate_interval])) without (cpu) > $threshold', {"c"}),
        ("histogram_quantile(0.9, sum by (le) (rate(d_bucket[5m:1m])))", {"d_bucket"}),
        ("avg_over_time(e[1h] @ end()) or vector(0)", {"e"}),
    ],
)
def test_metric_names_in(expr, names):
    assert metric_names_in(expr) == names


def test_emitted_names_come_from_readmes_and_telemetry():
    readme, telemetry = readme_metric_names(), telemetry_metric_names()
    # one name per collector README, at least
    assert {"node_cpu_seconds_total", "node_memory_MemAvailable_bytes", "node_filesystem_avail_bytes"} <= readme
    assert {"node_network_receive_errs_total", "queue_messages", "container_memory_working_set_bytes"} <= readme
    # prometheus_client names counters without _total and adds it on exposition
    assert {"hostwatch_output_dropped_items_total", "hostwatch_buffer_max_bytes"} <= telemetry
    assert {"hostwatch_collector_duration_seconds_count", "process_cpu_seconds_total"} <= telemetry
    # prose in other tables (Redis key types, API fields) is not taken for metric names
    assert not {"celery", "messages_ready", "list"} & (readme | telemetry)


# ------------------------------------------------------------------ the rules


def test_promtool_check_rules():
    result = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(load_rules())} rules found" in result.stdout


def test_promtool_test_rules():
    result = subprocess.run(
        [promtool(), "test", "rules", RULES_TEST.name], cwd=RULES_DIR, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout and "FAILED" not in result.stdout


def test_rules_use_only_metrics_hostwatch_emits():
    emitted = emitted_metric_names() | SCRAPE_SERIES
    used: dict[str, set[str]] = {rule["alert"]: metric_names_in(rule["expr"]) for rule in load_rules()}
    unknown = {alert: names - emitted for alert, names in used.items() if names - emitted}
    assert unknown == {}
    assert all(used.values()), "every rule selects some metric"


def test_every_alert_has_severity_summary_description_and_runbook():
    alerts = load_rules()
    assert len({rule["alert"] for rule in alerts}) == len(alerts), "alert names are unique"
    for rule in alerts:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert set(rule["annotations"]) == {"summary", "description", "runbook"}, rule["alert"]
        assert all(len(text.strip()) > 20 for text in rule["annotations"].values()), rule["alert"]


def test_every_alert_is_unit_tested_firing_and_silent():
    """Each alert has a promtool case where it fires and one where it must not (yet)."""
    firing, silent = set(), set()
    for case in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    alerts = {rule["alert"] for rule in load_rules()}
    assert alerts - firing == set()
    assert alerts - silent == set()
    assert (firing | silent) - alerts == set(), "tests name only existing alerts"


def test_the_issues_alerts_exist():
    alerts = {rule["alert"] for rule in load_rules()}
    assert {
        "HostCpuSaturated",
        "HostMemoryPressure",
        "HostFilesystemPredictedFull",
        "HostDiskIoSaturated",
        "HostNetworkReceiveErrors",
        "QueueBacklogGrowing",
        "QueueOldestMessageTooOld",
        "HostwatchDown",
        "HostwatchStoppedPushing",
        "HostwatchDroppingData",
        "HostwatchBufferFilling",
        "HostwatchOutputFailing",
    } <= alerts
