"""``[agent] labels`` are added once, where data leave the agent: by each output in its
backend's model and by /metrics, never by the collectors' side as well."""

from __future__ import annotations

from aiohttp import web
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from agent.config import loads_config
from agent.config.validation import convert
from agent.runtime import Agent
from collectors.scrape.scrape import Config as ScrapeConfig
from collectors.scrape.scrape import PrometheusScrapeCollector
from outputs.otlp.encode import MetricsEncoder, resource_attributes
from tests.support import collector_context
from tests.unit.collectors.test_scrape_collector import run, serve

CONFIG = """
[agent]
labels = { env = "prod" }
[http]
listen = ""
[[collectors.memory]]
labels = { team = "db" }
"""


async def test_collectors_leave_agent_labels_to_the_outputs_and_metrics_page() -> None:
    config = loads_config(CONFIG, environ={})
    agent = Agent(config)
    [spec] = config.collectors
    runner = agent.build_runner(config, spec)
    try:
        emitter = await runner.run_once()
    finally:
        await runner.stop()
    samples = emitter.samples
    assert samples and all(dict(s.labels).get("team") == "db" for s in samples)
    assert not [s for s in samples if "env" in dict(s.labels)], "the collector side added [agent] labels"

    agent.latest.replace(spec.name, samples)
    page = agent.latest.page().decode()
    assert 'node_memory_MemTotal_bytes{env="prod",team="db"}' in page  # /metrics adds them
    agent.latest.set_agent_labels((("env", "staging"),))  # a reload's new labels
    assert 'node_memory_MemTotal_bytes{env="staging",team="db"}' in agent.latest.page().decode()

    # OTLP carries them as resource attributes, not again on every data point
    resource = resource_attributes(
        hostname="h", job="hostwatch", machine_id="", os_type="linux", labels=(("env", "prod"),)
    )
    request = ExportMetricsServiceRequest.FromString(MetricsEncoder(resource, start_time_ns=1).encode(samples))
    [resource_metrics] = request.resource_metrics
    assert {kv.key: kv.value.string_value for kv in resource_metrics.resource.attributes}["env"] == "prod"
    for metric in resource_metrics.scope_metrics[0].metrics:
        for point in getattr(metric, metric.WhichOneof("data")).data_points:
            assert "env" not in {kv.key for kv in point.attributes}, metric.name


async def test_scrape_still_treats_agent_labels_as_target_labels(tmp_path) -> None:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text='m{env="dev"} 1\n', content_type="text/plain")

    server, target = await serve(page)
    context = collector_context(tmp_path, timeout=5.0, interval=5.0, agent_labels=(("env", "prod"),))
    scrape = PrometheusScrapeCollector(convert({"job": "app", "targets": [target]}, ScrapeConfig), context)
    try:
        emitter = await run(scrape)
    finally:
        await scrape.close()
        await server.cleanup()
    [m] = [s for s in emitter.samples if s.name == "m"]
    assert dict(m.labels) == {"job": "app", "instance": target, "env": "prod", "exported_env": "dev"}
