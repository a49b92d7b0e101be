"""What users already run, side by side: Node Exporter Full's panels and the node alert rules
evaluated on a real Prometheus fed by hostwatch and on one fed by the real node_exporter.

Four data sets, each in its own Prometheus (2.42, from Debian):

* ``node_exporter``: the real node_exporter with its default collectors, scraped (job "node");
* ``hostwatch /metrics``: the agent on its embedded default collectors, scraped the same way;
* ``hostwatch remote-write``: the same agent pushing over remote-write (``[agent] job = "node"``,
  and the ``internal`` collector a push-only deployment adds for the agent's own series).

The dashboard's variables are filled as Grafana fills them (``label_values(node_uname_info,
job)``, then ``nodename``, then ``instance``); ``$__rate_interval`` is four scrape intervals,
as Grafana computes it for a 1 s scrape. A panel *has data* when one of its targets returns a
series. An alert is *evaluable* when every ``node_*`` selector in its expression (with its own
matchers) matches a series: otherwise it can never fire, whatever happens on the host. Every
query must succeed: a query error is a bug in the data (a type or label clash).

The rule files are ``../shared/compat``: node-mixin rendered with ``job="node"``,
awesome-prometheus-alerts (no job), kube-prometheus (``job="node-exporter"``, read as
``job="node"`` here, the one setting a kube-prometheus user changes).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from agent.config import EMBEDDED_DEFAULT
from tests.e2e.agentproc import AgentProcess
from tests.peers.fixtures_backends import Server, _free_port, _http, _http_ok, _need
from tests.peers.fixtures_node_exporter import BINARIES

pytestmark = [pytest.mark.peers, pytest.mark.e2e]

COMPAT = Path(os.environ.get("HOSTWATCH_SHARED", Path(__file__).resolve().parents[3] / "shared")) / "compat"
SCRAPE_INTERVAL = 1.0
RATE_INTERVAL = "4s"  # Grafana: max($__interval + scrape interval, 4 x scrape interval)
WARM_UP = 25.0  # long enough for rate() over every range the panels use at this interval
SELECTOR = re.compile(r"(?<![\w:])(node_[A-Za-z0-9_:]*)\s*(\{[^{}]*\})?")


class Prom:
    """One Prometheus: a scrape target, or a remote-write receiver."""

    def __init__(self, name: str, home: Path, target: str | None) -> None:
        home.mkdir(parents=True)
        scrape = ""
        if target:
            url = urllib.parse.urlsplit(target)
            scrape = (
                f"scrape_configs:\n  - job_name: node\n    scrape_interval: {SCRAPE_INTERVAL:g}s\n"
                f"    metrics_path: {url.path}\n    static_configs:\n      - targets: ['{url.netloc}']\n"
            )
        (home / "prometheus.yml").write_text(f"global:\n  scrape_interval: {SCRAPE_INTERVAL:g}s\n{scrape}")
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        args = [
            _need(shutil.which("prometheus"), "prometheus"),
            f"--config.file={home / 'prometheus.yml'}",
            f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-remote-write-receiver",
        ]
        self.server = Server(name, args, self.url, home / "output.log")
        self.server.start(_http_ok(f"{self.url}/-/ready"))
        self.remote_write_url = f"{self.url}/api/v1/write"

    def api(self, path: str, **params: str) -> dict:
        body = _http(f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}")
        return json.loads(body)

    def query(self, promql: str, at: float) -> tuple[list, str]:
        """(result, error): a query error is returned, not raised, so every one is counted."""
        try:
            answer = self.api("query", query=promql, time=f"{at:.3f}")
        except OSError as exc:  # HTTP 400/422 from Prometheus: the message is in the body
            return [], str(getattr(exc, "read", lambda: b"")() or exc)
        return answer["data"]["result"], ""

    def label_values(self, match: str, label: str) -> list[str]:
        series = self.api("series", **{"match[]": match, "start": f"{time.time() - 300:.0f}"})["data"]
        return sorted({s[label] for s in series if label in s})


@dataclass
class Score:
    panels: int = 0
    panels_with_data: int = 0
    alerts: int = 0
    alerts_evaluable: int = 0
    errors: list[str] = field(default_factory=list)
    missing: set[str] = field(default_factory=set)
    empty_panels: set[str] = field(default_factory=set)

    def line(self) -> str:
        return (
            f"panels with data {self.panels_with_data}/{self.panels}, "
            f"alerts evaluable {self.alerts_evaluable}/{self.alerts}, query errors {len(self.errors)}"
        )


def dashboard_panels() -> list[tuple[str, list[str]]]:
    dashboard = json.loads((COMPAT / "node-exporter-full.json").read_text())
    panels: list[tuple[str, list[str]]] = []

    def walk(items: list[dict]) -> None:
        for panel in items:
            walk(panel.get("panels", []))
            exprs = [t["expr"] for t in panel.get("targets", []) if t.get("expr")]
            if panel.get("type") != "row" and exprs:
                panels.append((panel.get("title", "?"), exprs))

    walk(dashboard["panels"])
    return panels


def alert_rules() -> list[tuple[str, str]]:
    mixin = json.loads((COMPAT / "node-mixin-rendered.json").read_text())
    groups = list(mixin["alerts"]["groups"])
    groups += yaml.safe_load((COMPAT / "awesome-node-exporter.yml").read_text())["groups"]
    kube = yaml.safe_load((COMPAT / "kube-prometheus-nodeExporter-prometheusRule.yaml").read_text())
    groups += kube["spec"]["groups"]
    return [
        (f"{group['name']}/{rule['alert']}", rule["expr"].replace('job="node-exporter"', 'job="node"'))
        for group in groups
        for rule in group["rules"]
        if "alert" in rule
    ]


def grafana_variables(prom: Prom) -> dict[str, str]:
    """$job, $nodename, $node as Grafana fills them: the first value of each label_values()."""
    jobs = prom.label_values("node_uname_info", "job")
    job = jobs[0] if jobs else ""
    names = prom.label_values(f'node_uname_info{{job="{job}"}}', "nodename")
    nodename = names[0] if names else ""
    nodes = prom.label_values(f'node_uname_info{{job="{job}",nodename="{nodename}"}}', "instance")
    return {"job": job, "nodename": nodename, "node": nodes[0] if nodes else "", "__rate_interval": RATE_INTERVAL}


def fill(expr: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$(\w+)", lambda m: variables.get(m.group(1), m.group(0)), expr)


def score(prom: Prom, at: float, variables: dict[str, str] | None = None) -> Score:
    result = Score()
    variables = variables or grafana_variables(prom)
    for title, exprs in dashboard_panels():
        result.panels += 1
        has_data = False
        for expr in exprs:
            rows, error = prom.query(fill(expr, variables), at)
            if error:
                result.errors.append(f"panel {title!r}: {error[:200]}")
            has_data = has_data or bool(rows)
        result.panels_with_data += has_data
        if not has_data:
            result.empty_panels.add(title)
    for name, expr in alert_rules():
        result.alerts += 1
        _, error = prom.query(expr, at)
        if error:
            result.errors.append(f"alert {name}: {error[:200]}")
        empty = [m.group(0) for m in SELECTOR.finditer(expr) if not prom.query(f"count({m.group(0)})", at)[0]]
        result.missing.update(empty)
        result.alerts_evaluable += not empty
    return result


def embedded_collectors() -> str:
    """The embedded default's collector tables, so the agent runs what a fresh install runs."""
    return EMBEDDED_DEFAULT[EMBEDDED_DEFAULT.index("[[collectors.") :]


def node_exporter_defaults(home: Path) -> Server:
    binary = next((p for p in map(shutil.which, BINARIES) if p), None)
    port = _free_port()
    args = [_need(binary, "prometheus-node-exporter"), f"--web.listen-address=127.0.0.1:{port}"]
    server = Server("node_exporter", args, f"http://127.0.0.1:{port}", home / "node_exporter.log")
    server.start(_http_ok(f"{server.url}/metrics"))
    return server


def test_node_exporter_full_and_node_alerts_work_on_hostwatch_as_on_node_exporter(tmp_path: Path) -> None:
    if not COMPAT.is_dir():
        pytest.skip(f"no compat artifacts at {COMPAT}")
    started: list[Server] = []
    agent = None
    try:
        exporter = node_exporter_defaults(tmp_path)
        started.append(exporter)
        reference = Prom("prometheus-node_exporter", tmp_path / "ne", exporter.url + "/metrics")
        pushed = Prom("prometheus-remote-write", tmp_path / "rw", None)
        started += [reference.server, pushed.server]
        agent = AgentProcess(
            tmp_path,
            f'[[outputs.remote_write]]\nurl = "{pushed.remote_write_url}"\nflush_interval = "500ms"\n'
            # what a push-only deployment adds, as its README says: the agent's own process_* and
            # hostwatch_* series, which the dashboard's "Exporter" panels chart
            + "[[collectors.internal]]\n"
            + embedded_collectors(),
        )
        confd = agent.config.parent / "conf.d"
        confd.mkdir()
        (confd / "compat.toml").write_text(f'[agent]\ninterval = "{SCRAPE_INTERVAL:g}s"\njob = "node"\n')
        agent.start()
        scraped = Prom("prometheus-hostwatch", tmp_path / "hw", agent.base + "/metrics")
        started.append(scraped.server)
        time.sleep(WARM_UP)
        at = time.time()
        scores = {
            name: score(prom, at)
            for name, prom in (
                ("node_exporter", reference),
                ("hostwatch /metrics", scraped),
                ("hostwatch remote-write", pushed),
            )
        }
    finally:
        if agent is not None:
            agent.close()
        for server in started:
            server.stop()
    for name, result in scores.items():
        print(f"[compat] {name}: {result.line()}")
    ne = scores["node_exporter"]
    for name in ("hostwatch /metrics", "hostwatch remote-write"):
        result = scores[name]
        print(f"[compat] {name}: panels empty here only: {sorted(result.empty_panels - ne.empty_panels)}")
        print(f"[compat] {name}: alert selectors matching nothing here only: {sorted(result.missing - ne.missing)}")
        assert not result.errors, "\n".join(result.errors[:20])
        assert result.panels_with_data >= ne.panels_with_data, f"{name}: {result.line()} vs node_exporter {ne.line()}"
        assert result.alerts_evaluable >= ne.alerts_evaluable, f"{name}: {result.line()} vs node_exporter {ne.line()}"
