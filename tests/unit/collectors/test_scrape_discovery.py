"""Targets: host:port or URLs, default ports, file_sd groups and their meta labels."""

from __future__ import annotations

import json
import os

import pytest

from collectors.scrape.discovery import Defaults, FileTargets, make_target, parse_groups

DEFAULTS = Defaults("app", "http", "/metrics", (("module", "http_2xx"),))


@pytest.mark.parametrize(
    ("address", "labels", "url", "instance"),
    [
        ("127.0.0.1:8000", {}, "http://127.0.0.1:8000/metrics?module=http_2xx", "127.0.0.1:8000"),
        ("localhost", {}, "http://localhost:80/metrics?module=http_2xx", "localhost:80"),
        ("[::1]:9100", {}, "http://[::1]:9100/metrics?module=http_2xx", "[::1]:9100"),
        ("[::1]", {"__scheme__": "https"}, "https://[::1]:443/metrics?module=http_2xx", "[::1]:443"),
        ("https://api.local/stats?x=1", {}, "https://api.local:443/stats?x=1", "api.local:443"),
        ("h:1", {"__metrics_path__": "/m", "instance": "named"}, "http://h:1/m?module=http_2xx", "named"),
    ],
)
def test_addresses(address: str, labels: dict, url: str, instance: str) -> None:
    target = make_target(address, labels, DEFAULTS)
    assert target.url == url
    assert dict(target.labels)["instance"] == instance and dict(target.labels)["job"] == "app"
    assert not [k for k in dict(target.labels) if k.startswith("__")]


@pytest.mark.parametrize("address", ["h:0", "h:65536", "h:x", "ftp://h:1", "a b:1", "", "http://u:secret@h:1/m"])
def test_bad_addresses(address: str) -> None:
    with pytest.raises(ValueError) as info:
        make_target(address, {}, DEFAULTS)
    assert "secret" not in str(info.value)


def test_groups_are_checked_and_name_the_group() -> None:
    targets = parse_groups([{"targets": ["a:1", "b:2"], "labels": {"env": "x", "job": "own"}}], DEFAULTS)
    assert [dict(t.labels) for t in targets] == [
        {"env": "x", "job": "own", "instance": "a:1"},
        {"env": "x", "job": "own", "instance": "b:2"},
    ]
    for bad, message in [
        ({"targets": "a:1"}, "expected a list"),
        ([{"targets": "a:1"}], "group 0"),
        ([{"targets": ["a:1"]}, {"targets": [1]}], "group 1: target 1"),
        ([{"targets": ["a:1"], "labels": {"x": 1}}], "labels must map names to strings"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_groups(bad, DEFAULTS)


def test_files_are_reread_only_when_their_mtime_changes(tmp_path) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps([{"targets": ["a:1"]}]))
    files = FileTargets([str(tmp_path / "*.json"), str(tmp_path / "missing.json")], DEFAULTS)
    targets, problems = files.refresh()
    assert [t.instance for t in targets] == ["a:1"]
    assert problems == [f"target file {tmp_path / 'missing.json'}: No such file or directory"]
    stat = path.stat()
    path.write_text(json.dumps([{"targets": ["b:2"]}]))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime: not read again
    assert [t.instance for t in files.refresh()[0]] == ["a:1"]
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert [t.instance for t in files.refresh()[0]] == ["b:2"]
    (tmp_path / "y.yaml").write_text("- targets: ['c:3']\n")
    yaml_files = FileTargets([str(tmp_path / "y.yaml")], DEFAULTS)
    assert [t.instance for t in yaml_files.refresh()[0]] == ["c:3"]
