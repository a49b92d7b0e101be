"""Message classes for the Prometheus remote-write, Loki push and google.rpc definitions.

Neither Prometheus nor Loki publishes a Python package, so the messages are
declared here with protobuf's descriptor API, field for field as in the
upstream files (``prometheus/prompb/types.proto`` + ``remote.proto``, Loki's
``pkg/push/push.proto``; gogoproto options do not change the wire format),
and so are ``google.rpc.Status`` and ``RetryInfo`` (``google/rpc/status.proto``,
``error_details.proto``), which gRPC servers put in their status details.
They live in a private descriptor pool, so they never clash with a package
that registers the same names. The encoders are checked by decoding with
these real protobuf classes, never by comparing bytes only; no ``protoc`` or
extra dependency is needed.
"""

from __future__ import annotations

from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, duration_pb2, message_factory, timestamp_pb2

F = descriptor_pb2.FieldDescriptorProto
_POOL = descriptor_pool.DescriptorPool()


def _message(file: descriptor_pb2.FileDescriptorProto, name: str, *fields: tuple) -> None:
    message = file.message_type.add(name=name)
    for field_name, number, type_, label, *type_name in fields:
        field = message.field.add(name=field_name, number=number, type=type_, label=label)
        if type_name:
            field.type_name = type_name[0]


def _build() -> dict[str, type]:
    for well_known in (timestamp_pb2, duration_pb2, any_pb2):
        file = descriptor_pb2.FileDescriptorProto()
        well_known.DESCRIPTOR.CopyToProto(file)
        _POOL.Add(file)
    prompb = descriptor_pb2.FileDescriptorProto(
        name="hostwatch_test/prompb.proto", package="prometheus", syntax="proto3"
    )
    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    _message(prompb, "Label", ("name", 1, F.TYPE_STRING, opt), ("value", 2, F.TYPE_STRING, opt))
    _message(prompb, "Sample", ("value", 1, F.TYPE_DOUBLE, opt), ("timestamp", 2, F.TYPE_INT64, opt))
    _message(
        prompb,
        "TimeSeries",
        ("labels", 1, F.TYPE_MESSAGE, rep, ".prometheus.Label"),
        ("samples", 2, F.TYPE_MESSAGE, rep, ".prometheus.Sample"),
    )
    _message(
        prompb,
        "MetricMetadata",
        ("type", 1, F.TYPE_INT32, opt),
        ("metric_family_name", 2, F.TYPE_STRING, opt),
        ("help", 4, F.TYPE_STRING, opt),
        ("unit", 5, F.TYPE_STRING, opt),
    )
    _message(
        prompb,
        "WriteRequest",
        ("timeseries", 1, F.TYPE_MESSAGE, rep, ".prometheus.TimeSeries"),
        ("metadata", 3, F.TYPE_MESSAGE, rep, ".prometheus.MetricMetadata"),
    )
    _POOL.Add(prompb)

    push = descriptor_pb2.FileDescriptorProto(
        name="hostwatch_test/push.proto",
        package="logproto",
        syntax="proto3",
        dependency=["google/protobuf/timestamp.proto"],
    )
    _message(push, "LabelPairAdapter", ("name", 1, F.TYPE_STRING, opt), ("value", 2, F.TYPE_STRING, opt))
    _message(
        push,
        "EntryAdapter",
        ("timestamp", 1, F.TYPE_MESSAGE, opt, ".google.protobuf.Timestamp"),
        ("line", 2, F.TYPE_STRING, opt),
        ("structuredMetadata", 3, F.TYPE_MESSAGE, rep, ".logproto.LabelPairAdapter"),
    )
    _message(
        push,
        "StreamAdapter",
        ("labels", 1, F.TYPE_STRING, opt),
        ("entries", 2, F.TYPE_MESSAGE, rep, ".logproto.EntryAdapter"),
        ("hash", 3, F.TYPE_UINT64, opt),
    )
    _message(push, "PushRequest", ("streams", 1, F.TYPE_MESSAGE, rep, ".logproto.StreamAdapter"))
    _POOL.Add(push)

    rpc = descriptor_pb2.FileDescriptorProto(
        name="hostwatch_test/rpc.proto",
        package="google.rpc",
        syntax="proto3",
        dependency=["google/protobuf/any.proto", "google/protobuf/duration.proto"],
    )
    _message(
        rpc,
        "Status",
        ("code", 1, F.TYPE_INT32, opt),
        ("message", 2, F.TYPE_STRING, opt),
        ("details", 3, F.TYPE_MESSAGE, rep, ".google.protobuf.Any"),
    )
    _message(rpc, "RetryInfo", ("retry_delay", 1, F.TYPE_MESSAGE, opt, ".google.protobuf.Duration"))
    _POOL.Add(rpc)
    names = ["prometheus.WriteRequest", "logproto.PushRequest", "google.rpc.Status", "google.rpc.RetryInfo"]
    return {name: message_factory.GetMessageClass(_POOL.FindMessageTypeByName(name)) for name in names}


_CLASSES = _build()
WriteRequest = _CLASSES["prometheus.WriteRequest"]
PushRequest = _CLASSES["logproto.PushRequest"]
Status = _CLASSES["google.rpc.Status"]
RetryInfo = _CLASSES["google.rpc.RetryInfo"]
