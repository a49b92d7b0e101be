"""Prometheus remote-write 1.0 output: snappy-compressed protobuf ``WriteRequest``.

Works with Prometheus (``--web.enable-remote-write-receiver``), VictoriaMetrics,
Mimir, Cortex, Thanos Receive and anything else that speaks remote-write 1.0.
Every series carries ``job`` and ``instance`` (the agent's job and host name)
and the ``[agent] labels``; a sample's own label of the same name wins.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import msgspec

from agent.model import Signal, labels_from, merge_labels
from agent.plugin import Batch, ExportResult, Output, OutputContext, ResultKind
from outputs._http import HttpClient, HttpClientConfig, check_url, compress_async
from outputs.remote_write.encode import WriteRequestEncoder

Desc = msgspec.Meta

HEADERS = {
    "Content-Type": "application/x-protobuf",
    "Content-Encoding": "snappy",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
}


class RemoteWriteConfig(HttpClientConfig, kw_only=True):
    url: Annotated[str, Desc(description="The receiver's write endpoint, e.g. http://127.0.0.1:9090/api/v1/write.")]

    def __post_init__(self) -> None:
        super().__post_init__()
        check_url(self.url)
        if self.compression not in ("", "snappy"):
            raise ValueError("compression: remote-write bodies are always snappy-compressed; leave it unset")


class RemoteWriteOutput(Output):
    """Sends metric batches as one remote-write request each."""

    Config: ClassVar[type] = RemoteWriteConfig
    signals: ClassVar[frozenset[Signal]] = frozenset({Signal.METRICS})

    def __init__(self, config: RemoteWriteConfig, context: OutputContext) -> None:
        super().__init__(config, context)
        self.client = HttpClient(config, version=context.version)
        base = merge_labels(labels_from({"job": context.job, "instance": context.hostname}), context.agent_labels)
        self.encoder = WriteRequestEncoder(base)

    async def start(self) -> None:
        await self.client.start()

    async def export(self, batch: Batch) -> ExportResult:
        encoded = self.encoder.encode(batch.items)  # type: ignore[arg-type]
        problems = "; ".join(encoded.problems)
        if not encoded.payload:
            return ExportResult.ok(rejected=encoded.rejected, reason=problems)
        body = await compress_async(encoded.payload, "snappy")
        response = await self.client.post(self.config.url, body, HEADERS)
        if isinstance(response, ExportResult):
            return response
        result = self.client.result(response, retry_5xx=True)
        if result.kind is ResultKind.OK and encoded.rejected:
            return ExportResult.ok(rejected=encoded.rejected, reason=problems)
        return result

    async def close(self) -> None:
        await self.client.close()
