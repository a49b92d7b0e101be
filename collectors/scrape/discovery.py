"""Scrape targets: the static ones of the config and Prometheus ``file_sd`` files, watched.

A target file holds what Prometheus' ``file_sd_configs`` reads: a JSON (or
YAML) list of groups ``{"targets": ["host:port", ...], "labels": {...}}``. The
files are checked by modification time every interval (no inotify: it works
the same on every file system and costs one ``stat`` per file) and re-read
when one changed. A file that cannot be read or parsed keeps its last good
targets, and the problem is reported, so a half-written file never empties a
job. Group labels ``__scheme__`` and ``__metrics_path__`` set those of their
targets, as in Prometheus; other ``__`` labels are dropped.

Everything here blocks (``stat``, reads): call it on the collector's worker thread.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from agent.model import Labels


@dataclass(frozen=True, slots=True)
class Target:
    """One endpoint to scrape: its URL and its target labels (``job``, ``instance``, the rest)."""

    url: str
    labels: Labels

    @property
    def instance(self) -> str:
        return dict(self.labels).get("instance", "")


@dataclass(frozen=True, slots=True)
class Defaults:
    job: str
    scheme: str
    metrics_path: str
    params: tuple[tuple[str, str], ...] = ()


def make_target(address: str, labels: dict[str, str], defaults: Defaults) -> Target:
    """``host:port`` (or a URL) plus group labels -> a :class:`Target`. Raises ``ValueError``."""
    scheme = labels.get("__scheme__") or defaults.scheme
    path = labels.get("__metrics_path__") or defaults.metrics_path
    address = address.strip()
    if "://" in address:
        parts = urlsplit(address)
        scheme, address = parts.scheme, parts.netloc
        path = parts.path or path
        query = parts.query
    else:
        query = ""
    if "@" in address:  # it would end up in the instance label and in logs
        raise ValueError(f"target {address.rsplit('@', 1)[-1]!r}: no credentials in the address; use basic_auth_*")
    if scheme not in ("http", "https"):
        raise ValueError(f"target {address!r}: scheme {scheme!r} is not http or https")
    if not address or "/" in address or any(c.isspace() for c in address):
        raise ValueError(f"target {address!r}: expected host:port")
    host, sep, port = address.rpartition(":")
    if not sep or host.endswith(":") or (host.startswith("[") != host.endswith("]")) or "]" in port:
        address = f"{address}:{443 if scheme == 'https' else 80}"  # Prometheus adds the default port
    elif not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"target {address!r}: bad port {port!r}")
    if not query and defaults.params:
        query = urlencode(defaults.params)
    url = f"{scheme}://{address}{path if path.startswith('/') else '/' + path}" + (f"?{query}" if query else "")
    own = {k: v for k, v in labels.items() if not k.startswith("__") and v != ""}
    own.setdefault("job", defaults.job)
    own["instance"] = labels.get("instance") or address
    return Target(url, tuple(sorted(own.items())))


def static_targets(groups: Iterable[tuple[list[str], dict[str, str]]], defaults: Defaults) -> list[Target]:
    return [make_target(address, labels, defaults) for addresses, labels in groups for address in addresses]


class FileTargets:
    """The targets of ``file_sd`` files (glob patterns), re-read when a file's mtime changes."""

    def __init__(self, patterns: list[str], defaults: Defaults) -> None:
        self.patterns = patterns
        self.defaults = defaults
        self._files: dict[str, tuple[int, list[Target]]] = {}  # path -> (mtime_ns, targets)

    def refresh(self) -> tuple[list[Target], list[str]]:
        """The current targets, and one message per file that could not be used this time."""
        problems: list[str] = []
        paths = []
        for pattern in self.patterns:
            found = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
            paths.extend(p for p in found if p not in paths)
        for gone in set(self._files) - set(paths):
            del self._files[gone]
        targets: list[Target] = []
        for path in paths:
            try:
                mtime = os.stat(path).st_mtime_ns
            except OSError as exc:
                problems.append(f"target file {path}: {exc.strerror}")
                self._files.pop(path, None)
                continue
            known = self._files.get(path)
            if known is None or known[0] != mtime:
                try:
                    known = (mtime, self._read(path))
                    self._files[path] = known
                except (OSError, ValueError) as exc:
                    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                    problems.append(f"target file {path}: {detail}; keeping its previous targets")
                    known = self._files.get(path)
            if known is not None:
                targets.extend(known[1])
        return targets, problems

    def _read(self, path: str) -> list[Target]:
        with open(path, "rb") as handle:
            data = handle.read(16 << 20)
        if path.endswith((".yml", ".yaml")):
            try:
                import yaml
            except ImportError:
                raise ValueError("YAML target files need PyYAML installed; write the file as JSON") from None
            try:
                groups = yaml.safe_load(data)
            except yaml.YAMLError as exc:
                raise ValueError(f"not valid YAML: {exc}") from None
        else:
            try:
                groups = json.loads(data)
            except ValueError as exc:
                raise ValueError(f"not valid JSON: {exc}") from None
        return parse_groups(groups or [], self.defaults)


def parse_groups(groups: object, defaults: Defaults) -> list[Target]:
    """file_sd content -> targets; ``ValueError`` names the group at fault."""
    if not isinstance(groups, list):
        raise ValueError("expected a list of {targets, labels} groups")
    targets: list[Target] = []
    for i, group in enumerate(groups):
        if not isinstance(group, dict) or not isinstance(group.get("targets", []), list):
            raise ValueError(f'group {i}: expected {{"targets": [...], "labels": {{...}}}}')
        labels = group.get("labels") or {}
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            raise ValueError(f"group {i}: labels must map names to strings")
        for address in group.get("targets", []):
            if not isinstance(address, str):
                raise ValueError(f"group {i}: target {address!r} is not a string")
            try:
                targets.append(make_target(address, labels, defaults))
            except ValueError as exc:
                raise ValueError(f"group {i}: {exc}") from None
    return targets
