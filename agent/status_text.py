"""``hostwatch status``: the status page's summary in a terminal, from the agent's ``/status.json``.

Colour only on a terminal and never with ``NO_COLOR`` set (no-color.org) or
``TERM=dumb``. Every text from the agent (file names, error messages) has its
control characters escaped before it is printed, so a log file named with an
escape sequence cannot repaint the terminal.
"""

from __future__ import annotations

import calendar
import json
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.request
from typing import Any, TextIO

EXIT_OK, EXIT_UNREACHABLE, EXIT_NOT_READY = 0, 1, 3
SPARK = "▁▂▃▄▅▆▇█"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_COLOURS = {"good": "32", "bad": "31", "warn": "33", "dim": "2", "bold": "1"}


class Unreachable(Exception):
    """The agent did not answer, or not with a status document."""


def default_url(listen: str) -> str:
    """The agent's base URL from ``[http] listen`` (a wildcard address is reached on loopback)."""
    from agent.config.values import parse_listen

    host, port = parse_listen(listen)
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def fetch(base_url: str, timeout: float = 5.0) -> dict[str, Any]:
    url = base_url.rstrip("/") + "/status.json"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        raise Unreachable(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise Unreachable(f"cannot reach the agent at {url}: {reason}") from None
    try:
        document = json.loads(body)
    except ValueError:
        raise Unreachable(f"{url}: the answer is not JSON (is this a hostwatch agent?)") from None
    if not isinstance(document, dict) or "status" not in document:
        raise Unreachable(f"{url}: not a hostwatch status document")
    return document


def exit_code(document: dict[str, Any]) -> int:
    return EXIT_OK if document.get("status") == "ready" else EXIT_NOT_READY


# ------------------------------------------------------------------ rendering


class Style:
    def __init__(self, colour: bool, unicode: bool = True) -> None:
        self.colour = colour
        self.unicode = unicode

    def __call__(self, text: str, kind: str) -> str:
        if not self.colour or not kind:
            return text
        return f"\x1b[{_COLOURS[kind]}m{text}\x1b[0m"

    @classmethod
    def for_stream(cls, stream: TextIO) -> Style:
        colour = stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        return cls(colour, unicode=encoding in ("utf8", "utf_8"))


def clean(value: Any) -> str:
    """Text from the agent with control characters shown as escapes instead of acted upon."""
    text = "" if value is None else str(value)
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def size(value: float | None) -> str:
    if value is None:
        return "-"
    n, unit = float(value), 0
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    while abs(n) >= 1024 and unit < len(units) - 1:
        n /= 1024
        unit += 1
    return f"{n:.0f} {units[unit]}" if unit == 0 else f"{n:.1f} {units[unit]}"


def number(value: float | None) -> str:
    if value is None:
        return "-"
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.1f}"


def ago(iso: str | None, now: float) -> str:
    if not iso:
        return "never"
    try:
        then = calendar.timegm(time.strptime(iso, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        return clean(iso)
    return duration(max(0.0, now - then)) + " ago"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    d, h, m = s // 86400, s % 86400 // 3600, s % 3600 // 60
    if d:
        return f"{d}d {h}h"
    if h:
        return f"{h}h {m}m"
    return f"{m}m {s % 60}s" if m else f"{s}s"


def sparkline(values: list[float | None], width: int = 30) -> str:
    points = [v for v in values if v is not None]
    if len(points) < 2:
        return ""
    step = max(1, -(-len(points) // width))  # ceil: at most `width` buckets
    buckets = [max(points[i : i + step]) for i in range(0, len(points), step)]
    top = max(buckets) or 1.0
    return "".join(SPARK[min(len(SPARK) - 1, int(v / top * (len(SPARK) - 1) + 0.5))] for v in buckets)


def table(
    headers: list[str], rows: list[list[tuple[str, str]]], style: Style, width: int | None, numeric: set[int]
) -> list[str]:
    """Aligned columns; each cell is (text, style kind). The last column is cut to ``width``."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, (text, _) in enumerate(row[:-1]):
            widths[i] = max(widths[i], len(text))
    indent = "  "

    def line(cells: list[tuple[str, str]], header: bool = False) -> str:
        parts = []
        used = len(indent)
        for i, (text, kind) in enumerate(cells):
            if i == len(cells) - 1:
                if width is not None and used + len(text) > width:
                    text = text[: max(8, width - used - 1)] + "…"
                parts.append(style(text, kind))
            else:
                padded = text.rjust(widths[i]) if i in numeric else text.ljust(widths[i])
                parts.append(style(padded, kind))
                used += widths[i] + 2
        return (indent + "  ".join(parts)).rstrip()

    out = [line([(h, "dim") for h in headers], header=True)]
    out.extend(line(row) for row in rows)
    return out


def render(document: dict[str, Any], style: Style, width: int | None = None, now: float | None = None) -> str:
    now = time.time() if now is None else now
    d = document
    ready = d.get("status") == "ready"
    host = d.get("host") or {}
    facts = [f"version {clean(d.get('version'))}", f"up {duration(d.get('uptime_seconds'))}"]
    if host.get("cpus"):
        facts.append(f"{host['cpus']} CPUs")
    if host.get("load1") is not None:
        facts.append(f"load {host['load1']:.2f}")
    out = [
        f"{style('hostwatch', 'bold')} on {clean(d.get('hostname'))}: "
        f"{style(clean(d.get('status', '?')).upper(), 'good' if ready else 'bad')}   {' · '.join(facts)}"
    ]
    out.extend(f"  {style('! ' + clean(reason), 'bad')}" for reason in d.get("reasons") or [])

    out += ["", style("HOST (now; last 15 minutes)", "bold")]
    charts = d.get("charts") or {}
    for name, fmt in (
        ("cpu", lambda v: f"{v:.1f}%"),
        ("memory", size),
        ("disk", lambda v: size(v) + "/s"),
        ("network", lambda v: size(v) + "/s"),
    ):
        chart = charts.get(name) or {}
        data = chart.get("data") or [[]]
        series = chart.get("series") or []
        parts = []
        for label, values in zip(series, data[1:], strict=False):
            last = next((v for v in reversed(values) if v is not None), None)
            parts.append(f"{label} {fmt(last) if last is not None else '-'}")
        if name == "memory" and host.get("memory_total_bytes"):
            parts.append(f"of {size(host['memory_total_bytes'])}")
        totals = [
            sum(v or 0 for v in column) for column in zip(*data[1 : 2 if name == "memory" else None], strict=False)
        ]
        spark = sparkline(totals) if style.unicode else ""
        out.append(f"  {name:<8} {'  '.join(parts) or 'no data yet'}  {style(spark, 'dim')}".rstrip())
    filesystems = host.get("filesystems") or []
    if filesystems:
        rows = [
            [
                (clean(f["mountpoint"]), ""),
                (size(f.get("size_bytes")), ""),
                (size(f.get("avail_bytes")), ""),
                (f"{f['used_percent']:.1f}%", "bad" if f["used_percent"] >= 90 else ""),
            ]
            for f in filesystems
        ]
        out += ["", *table(["MOUNT POINT", "SIZE", "AVAILABLE", "USED"], rows, style, width, {1, 2, 3})]

    out += ["", style("OUTPUTS", "bold")]
    rows = []
    for o in d.get("outputs") or []:
        dropped = sum((o.get("dropped_items") or {}).values())
        fill = o.get("buffer_fill_percent")
        rows.append(
            [
                (clean(o["name"]), ""),
                (clean(o.get("type")), ""),
                (number(o.get("sent_per_second")), ""),
                (number(o.get("dropped_per_second")), "bad" if o.get("dropped_per_second") else ""),
                (f"{number(o.get('queued_items'))} ({size(o.get('queued_bytes'))})", ""),
                ("-" if fill is None else f"{fill:.1f}%", "bad" if (fill or 0) >= 90 else ""),
                (number(dropped), "bad" if dropped else ""),
                (ago(o.get("last_success"), now), "warn" if o.get("consecutive_failures") else ""),
                (clean(o.get("last_error") or ""), "bad"),
            ]
        )
    headers = ["NAME", "TYPE", "SENT/S", "DROPPED/S", "QUEUED", "FILL", "DROPPED", "LAST SUCCESS", "LAST ERROR"]
    out += table(headers, rows, style, width, {2, 3, 4, 5, 6}) if rows else ["  none configured"]

    out += ["", style("LOG FILES", "bold")]
    rows = []
    for f in d.get("log_files") or []:
        if f.get("error"):
            rows.append([(clean(f["collector"]), ""), ("", ""), ("", ""), ("", ""), (clean(f["error"]), "bad")])
            continue
        behind = f.get("behind_bytes") or 0
        rows.append(
            [
                (clean(f["collector"]), ""),
                (size(f.get("size_bytes")), ""),
                (size(f.get("offset")), ""),
                (size(behind), "warn" if behind else "good"),
                (clean(f.get("path")) + (" (rotated)" if f.get("rotated") else ""), ""),
            ]
        )
    out += table(["COLLECTOR", "SIZE", "READ", "BEHIND", "FILE"], rows, style, width, {1, 2, 3}) if rows else ["  none"]

    out += ["", style("COLLECTORS", "bold")]
    rows = [
        [
            (clean(c["name"]), ""),
            (number(c.get("runs")), ""),
            (number(c.get("errors")), "bad" if c.get("errors") else ""),
            (ago(c.get("last_run"), now), ""),
            (f"{c['last_duration_seconds'] * 1000:.1f} ms" if c.get("last_duration_seconds") is not None else "-", ""),
            (clean(c.get("last_error") or ""), "bad"),
        ]
        for c in d.get("collectors") or []
    ]
    headers = ["NAME", "RUNS", "ERRORS", "LAST RUN", "DURATION", "LAST ERROR"]
    out += table(headers, rows, style, width, {1, 2, 4}) if rows else ["  none configured"]

    out += ["", style("RECENT WARNINGS AND ERRORS", "bold")]
    rows = [
        [
            (clean(p.get("time")), ""),
            (clean(p.get("level")), "warn" if p.get("level") == "warning" else "bad"),
            (clean(p.get("source")), ""),
            (clean(p.get("message")), ""),
        ]
        for p in d.get("problems") or []
    ]
    out += table(["TIME", "LEVEL", "SOURCE", "MESSAGE"], rows, style, width, set()) if rows else ["  none"]
    return "\n".join(out) + "\n"


def run(base_url: str, *, watch: float | None, as_json: bool, timeout: float, stream: TextIO = sys.stdout) -> int:
    """One report (or one every ``watch`` seconds until Ctrl-C); the exit code of the last one."""
    style = Style.for_stream(stream)
    code = EXIT_UNREACHABLE
    try:
        while True:
            width = shutil.get_terminal_size().columns if stream.isatty() else None
            try:
                document = fetch(base_url, timeout)
            except Unreachable as exc:
                text, code = style(f"hostwatch status: {exc}", "bad") + "\n", EXIT_UNREACHABLE
                if watch is None:
                    sys.stderr.write(text)
                    return code
            else:
                code = exit_code(document)
                text = json.dumps(document, indent=1) + "\n" if as_json else render(document, style, width)
            if watch is None:
                stream.write(text)
                return code
            if stream.isatty():
                stream.write("\x1b[H\x1b[2J")  # clear, then draw: a steady picture
            stream.write(text + style(f"every {watch:g}s; Ctrl-C to stop", "dim") + "\n")
            stream.flush()
            time.sleep(watch)
    except KeyboardInterrupt:
        return code
    except BrokenPipeError:  # `hostwatch status --watch 1 | head`
        return code
