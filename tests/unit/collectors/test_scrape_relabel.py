"""metric_relabel_configs and target labels: Prometheus' semantics on RE2."""

from __future__ import annotations

import msgspec
import pytest

from collectors.scrape.relabel import Relabeler, RelabelRule
from collectors.scrape.series import LabelLimitError, Resolver

TARGET = (("instance", "127.0.0.1:8000"), ("job", "app"))


def rules(*tables: dict) -> Relabeler:
    return Relabeler([msgspec.convert(t, RelabelRule) for t in tables])


def resolver(*tables: dict, **options) -> Resolver:
    return Resolver(TARGET, honor_labels=options.pop("honor_labels", False), relabeler=rules(*tables), **options)


def test_target_labels_win_and_the_scraped_ones_become_exported() -> None:
    name, final, labels = resolver().resolve('up_total{job="inner",instance="x",exported_job="y",z=""}')
    assert (name, final) == ("up_total", "up_total")
    assert dict(labels) == {
        "job": "app",
        "instance": "127.0.0.1:8000",
        "exported_job": "y",
        "exported_exported_job": "inner",
        "exported_instance": "x",
    }  # and the empty z is gone: empty means absent


def test_honor_labels_keeps_the_scraped_ones() -> None:
    _, _, labels = resolver(honor_labels=True).resolve('m{job="inner"}')
    assert dict(labels) == {"job": "inner", "instance": "127.0.0.1:8000"}


def test_keep_and_drop_match_the_joined_source_labels_anchored() -> None:
    keep = resolver({"action": "keep", "source_labels": ["__name__"], "regex": "http_.*"})
    assert keep.resolve("http_requests_total")[1] is not None
    assert keep.resolve("go_gc_seconds")[1] is None
    assert keep.resolve("xhttp_requests")[1] is None  # anchored at the start
    drop = resolver({"action": "drop", "source_labels": ["job", "code"], "separator": "/", "regex": "app/5.."})
    assert drop.resolve('m{code="503"}')[1] is None
    assert drop.resolve('m{code="5031"}')[1] is not None  # anchored at the end


def test_replace_expands_groups_and_can_rename_the_metric() -> None:
    r = resolver(
        {
            "source_labels": ["path"],
            "regex": "/api/(?P<version>v[0-9]+)/.*",
            "target_label": "api",
            "replacement": "${version}",
        },
        {
            "source_labels": ["__name__"],
            "regex": "(.*)_seconds_(.*)",
            "target_label": "__name__",
            "replacement": "${1}_s_$2",
        },
        {"source_labels": ["code"], "regex": "(.*)", "target_label": "code", "replacement": "${1}x$$"},
        {"source_labels": ["code"], "regex": "(.*)", "target_label": "go_way", "replacement": "$1x"},
        {"source_labels": ["gone"], "regex": "", "target_label": "method", "replacement": ""},
    )
    _, name, labels = r.resolve('lat_seconds_bucket{path="/api/v2/users",code="200",method="GET"}')
    assert name == "lat_s_bucket"
    assert dict(labels)["api"] == "v2" and dict(labels)["code"] == "200x$"
    assert "method" not in dict(labels)  # an empty replacement deletes the label
    assert "go_way" not in dict(labels)  # as in Go, $1x names group "1x", which is empty


def test_labeldrop_labelkeep_and_labelmap() -> None:
    r = resolver(
        {"action": "labelmap", "regex": "pod_(.+)", "replacement": "k8s_$1"},
        {"action": "labeldrop", "regex": "pod_.*|instance"},
    )
    _, _, labels = r.resolve('m{pod_name="a",other="b"}')
    assert dict(labels) == {"job": "app", "other": "b", "k8s_name": "a"}
    keep = resolver({"action": "labelkeep", "regex": "__name__|job|le"})
    _, _, labels = keep.resolve('m_bucket{le="1",noise="x"}')
    assert dict(labels) == {"job": "app", "le": "1"}


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"regex": "(unclosed", "target_label": "x"}, "regex:"),
        ({"action": "replace"}, "target_label"),
        ({"action": "keep"}, "source_labels"),
        ({"action": "labeldrop", "regex": "x", "source_labels": ["a"]}, "labeldrop"),
        ({"action": "hashmod", "source_labels": ["a"]}, "action"),
    ],
)
def test_bad_rules_are_config_errors(table: dict, message: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=message):
        msgspec.convert(table, RelabelRule)


def test_label_limits_raise_a_label_limit_error() -> None:
    with pytest.raises(LabelLimitError, match="label_value_length_limit"):
        resolver(value_length_limit=20).resolve('m{a="' + "x" * 21 + '"}')
    with pytest.raises(LabelLimitError, match="label_limit = 3"):
        resolver(label_limit=3).resolve('m{a="1"}')  # name + job + instance + a = 4
    with pytest.raises(LabelLimitError, match="label_name_length_limit"):
        resolver(name_length_limit=5).resolve('m{abcdefg="1"}')
    assert resolver(value_length_limit=20, label_limit=4).resolve('m{a="' + "x" * 20 + '"}')[1] is not None
