"""The Grafana dashboard shipped in packaging/grafana: valid JSON, a sane layout, valid
PromQL, and queries that name only metrics hostwatch emits."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from tests.unit.test_alert_rules import ROOT, SCRAPE_SERIES, emitted_metric_names, metric_names_in, promtool

DASHBOARD = ROOT / "packaging" / "grafana" / "hostwatch.json"
# Values Grafana substitutes for its variables, for checking queries outside Grafana.
VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "6h",
    "$datasource": "prometheus",
    "$job": "hostwatch",
    "$instance": ".+",
}


def load() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict) -> list[dict]:
    """Every panel, rows' nested panels included."""
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def queries(dashboard: dict) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    found = [
        (f"panel {panel['id']} {panel['title']!r} {target['refId']}", target["expr"])
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            match = re.fullmatch(r"label_values\((.*),\s*\w+\)", query)
            assert match, f"variable {variable['name']}: only label_values(selector, label) is expected: {query}"
            found.append((f"variable {variable['name']}", match.group(1)))
    return found


def substitute(expr: str) -> str:
    for name in sorted(VARIABLES, key=len, reverse=True):  # $__rate_interval before $__range ...
        expr = expr.replace(name, VARIABLES[name]).replace("${" + name[1:] + "}", VARIABLES[name])
    return expr


def test_is_a_dashboard():
    dashboard = load()
    assert dashboard["uid"] and dashboard["title"] == "hostwatch"
    assert isinstance(dashboard["schemaVersion"], int)
    names = [variable["name"] for variable in dashboard["templating"]["list"]]
    assert names == ["datasource", "job", "instance"]


def test_panels_have_unique_ids_targets_and_the_datasource_variable():
    dashboard = load()
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids))
    graphs = [panel for panel in panels(dashboard) if panel["type"] != "row"]
    assert len(graphs) >= 30
    for panel in graphs:
        assert panel["title"] and panel.get("description"), panel["id"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"] == panel["datasource"], panel["title"]


def test_layout_fits_the_grid_without_overlaps():
    cells: dict[tuple[int, int], str] = {}
    for panel in panels(load()):
        pos = panel["gridPos"]
        assert pos["w"] >= 1 and pos["h"] >= 1 and pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_queries_name_only_metrics_hostwatch_emits():
    emitted = emitted_metric_names() | SCRAPE_SERIES
    used = {where: metric_names_in(expr) for where, expr in queries(load())}
    assert {where: names - emitted for where, names in used.items() if names - emitted} == {}
    assert all(used.values()), "every query selects some metric"
    every = set().union(*used.values())
    # the dashboard covers hosts, queues, containers and the agent
    for prefix in ("node_", "queue_", "container_", "hostwatch_"):
        assert any(name.startswith(prefix) for name in every), prefix


def test_every_query_is_valid_promql(tmp_path):
    """promtool parses each query, variables substituted, as a recording rule."""
    tool = promtool()
    rules = [
        {"record": f"dashboard:query_{i}", "expr": substitute(expr)} for i, (_, expr) in enumerate(queries(load()))
    ]
    for rule in rules:
        assert "$" not in rule["expr"], f"unknown Grafana variable in {rule['expr']}"
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([tool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_a_query_with_an_unknown_metric_would_be_caught():
    """The name check is not vacuous: a typo in a metric name is reported."""
    emitted = emitted_metric_names()
    assert metric_names_in('rate(node_network_receive_errors_total{job="$job"}[$__rate_interval])') - emitted == {
        "node_network_receive_errors_total"
    }


@pytest.mark.parametrize("variable", ["$job", "${instance}", "$__rate_interval"])
def test_substitute(variable):
    assert "$" not in substitute(f'x{{a=~"{variable}"}}')
