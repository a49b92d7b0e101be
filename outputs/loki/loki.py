"""Loki push API output: protobuf + snappy (default) or JSON (gzip by default).

Works with Grafana Loki and with VictoriaLogs' Loki endpoint
(``/insert/loki/api/v1/push``). Streams are the record's labels plus
``job``, ``instance`` and the ``[agent] labels``; record attributes and the
severity go into structured metadata, never into stream labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, ClassVar, Literal

import msgspec

from agent.model import LogRecord, Signal, labels_from, merge_labels
from agent.plugin import Batch, ExportResult, Output, OutputContext
from outputs._http import HttpClient, HttpClientConfig, check_url, compress, compress_async
from outputs.loki.encode import PushEncoder

Desc = msgspec.Meta


class LokiConfig(HttpClientConfig, kw_only=True):
    url: Annotated[str, Desc(description="The push endpoint, e.g. http://127.0.0.1:3100/loki/api/v1/push.")]
    encoding: Annotated[
        Literal["protobuf", "json"], Desc(description="protobuf (always snappy-compressed) or json.")
    ] = "protobuf"
    tenant: Annotated[str, Desc(description="Sent as X-Scope-OrgID (multi-tenant Loki); empty: not sent.")] = ""
    structured_metadata: Annotated[
        bool,
        Desc(description="Send record attributes and severity as structured metadata (Loki 3); false: leave them out."),
    ] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_url(self.url)
        if self.encoding == "protobuf" and self.compression not in ("", "snappy"):
            raise ValueError('compression: protobuf pushes are always snappy; use encoding = "json" for gzip or none')
        if self.encoding == "json" and self.compression == "snappy":
            raise ValueError('compression: json pushes take "gzip" or "none"')

    @property
    def body_compression(self) -> str:
        if self.encoding == "protobuf":
            return "snappy"
        return self.compression or "gzip"


class LokiOutput(Output):
    """Sends log batches as one push request each."""

    Config: ClassVar[type] = LokiConfig
    signals: ClassVar[frozenset[Signal]] = frozenset({Signal.LOGS})

    def __init__(self, config: LokiConfig, context: OutputContext) -> None:
        super().__init__(config, context)
        self.client = HttpClient(config, version=context.version)
        base = merge_labels(labels_from({"job": context.job, "instance": context.hostname}), context.agent_labels)
        self.encoder = PushEncoder(base, structured_metadata=config.structured_metadata)
        compression = config.body_compression
        self.headers = {
            "Content-Type": "application/x-protobuf" if config.encoding == "protobuf" else "application/json",
        }
        if compression != "none":
            self.headers["Content-Encoding"] = compression
        if config.tenant:
            self.headers["X-Scope-OrgID"] = config.tenant

    async def start(self) -> None:
        await self.client.start()

    def prepare(self, batch: Batch) -> tuple[bytes, bytes | None] | None:
        """Encode and compress a batch ahead (the engine calls this while a request is in flight):
        (encoded payload, request body or None when compressing it is left to export)."""
        if not batch.items:
            return None
        payload = self._encode(batch.items)
        kind = self.config.body_compression
        body = None if kind == "gzip" else compress(payload, kind)  # gzip is too slow for the event loop
        return payload, body

    async def export(self, batch: Batch) -> ExportResult:
        records = batch.items
        if not records:
            return ExportResult.ok()
        prepared = batch.prepared
        if prepared is not None and prepared[1] is not None:
            body = prepared[1]
        else:
            payload = prepared[0] if prepared is not None else self._encode(records)
            body = await compress_async(payload, self.config.body_compression)
        response = await self.client.post(self.config.url, body, self.headers)
        if isinstance(response, ExportResult):
            return response
        return self.client.result(response, retry_5xx=True)

    def _encode(self, records: Sequence[LogRecord]) -> bytes:
        if self.config.encoding == "protobuf":
            return self.encoder.encode_protobuf(records).payload
        return self.encoder.encode_json(records).payload

    async def close(self) -> None:
        await self.client.close()
