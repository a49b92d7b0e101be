"""Log shipping end to end on one core, and the idle cost of watching many quiet files.

Run: ``python -m tests.bench.bench_logs`` (needs VictoriaLogs from ``tests/peers/install.sh``).

* Throughput: ``hostwatch run`` pinned to one CPU tails a file of real Apache
  access-log lines (the corpus file, repeated) from the beginning, with the
  default redaction, batching, the disk buffer and the Loki output
  (protobuf + snappy) into a real VictoriaLogs on loopback, pinned to the other
  CPU. Measured from the agent's start until its ``/metrics`` count every line
  as sent, and checked against the rows VictoriaLogs holds. Beside it, in the
  same run and on the same CPU: plain line reading of the same file in Python,
  the floor any Python tailer stands on. Targets: >= 30 MiB/s, >= 150,000 lines/s.
* Idle: the agent watching 500 quiet files; CPU used over ``BENCH_IDLE_SECONDS``.

Environment: BENCH_LOG_MIB (default 128), BENCH_IDLE_SECONDS (default 30), BENCH_LOKI_OPTIONS
(extra TOML lines for the output, e.g. ``buffer = "memory"`` or ``batch_max_items = 10000``;
without it the output runs on its defaults, and the report says which it used).

Beside the rates it prints the agent's start-up time (until ``/metrics`` answers;
the wall rates include it) and the CPU VictoriaLogs used: one request is in
flight at a time, so small requests leave the agent waiting on the backend.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from tests.support import free_port, hostwatch_command

MIB = float(os.environ.get("BENCH_LOG_MIB", "128"))
IDLE_SECONDS = float(os.environ.get("BENCH_IDLE_SECONDS", "30"))
LOKI_EXTRA = os.environ.get("BENCH_LOKI_OPTIONS", "")  # e.g. 'buffer = "memory"', to see what the disk costs
CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "real" / "apache_access_semicomplete.log"
CACHE = Path(os.environ.get("HOSTWATCH_PEERS_CACHE", "/var/cache/hostwatch-peers"))
TICKS = os.sysconf("SC_CLK_TCK")
AGENT_CPU, PEER_CPU = "0", "1"
TARGET_MIB_S, TARGET_LINES_S, TARGET_IDLE_PERCENT = 30.0, 150_000.0, 1.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


def metric(text: str, name: str, **labels: str) -> float:
    want = {f'{k}="{v}"' for k, v in labels.items()}
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            inner = re.search(r"\{(.*)\}", line)
            if want <= set(inner.group(1).split(",") if inner else []):
                total += float(line.rsplit(" ", 1)[1])
    return total


def pinned(cpu: str) -> list[str]:
    return ["taskset", "-c", cpu] if shutil.which("taskset") and os.cpu_count() and os.cpu_count() > 1 else []


def start_victoria_logs(home: Path, extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    """A new VictoriaLogs pinned to the peer's CPU; ``extra``: more flags (e.g. a syslog listener)."""
    binary = CACHE / "bin" / "victoria-logs"
    if not binary.exists():
        sys.exit(f"victoria-logs is not installed ({binary}): run tests/peers/install.sh")
    port = free_port()
    log = open(home / "victoria-logs.log", "wb")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(
        [
            *pinned(PEER_CPU),
            str(binary),
            f"-storageDataPath={home / 'vl'}",
            f"-httpListenAddr=127.0.0.1:{port}",
            *extra,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            get(url + "/health", timeout=1)
            return proc, url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit("victoria-logs did not start")


def start_agent(
    home: Path, collector: str, loki_url: str, tree: Path | None = None, command: list[str] | None = None
) -> tuple[subprocess.Popen, str]:
    """``hostwatch run`` with ``collector`` and a Loki output; ``tree``: the agent of another source tree;
    ``command``: what to run instead of ``hostwatch`` (``run --config ...`` follows it)."""
    port = free_port()
    config = home / "hostwatch.toml"
    config.write_text(
        f"""
[agent]
state_dir = "{home / "state"}"
[http]
listen = "127.0.0.1:{port}"
{collector}
[[outputs.loki]]
url = "{loki_url}/insert/loki/api/v1/push"
{LOKI_EXTRA}
"""
    )
    stderr = open(home / "agent.log", "wb")  # noqa: SIM115 - lives as long as the process
    command, env = command or hostwatch_command(), None
    if tree is not None:
        command = [sys.executable, "-c", "import sys; from agent.cli import main; sys.exit(main())"]
        env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.Popen(
        [*pinned(AGENT_CPU), *command, "run", "--config", str(config)], stderr=stderr, env=env, cwd=tree
    )
    return proc, f"http://127.0.0.1:{port}"


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def make_log(path: Path) -> tuple[int, int]:
    """The corpus file repeated to about MIB mebibytes; (bytes, lines)."""
    chunk = CORPUS.read_bytes()
    repeats = max(1, int(MIB * 2**20 / len(chunk)))
    with open(path, "wb") as f:
        for _ in range(repeats):
            f.write(chunk)
    return repeats * len(chunk), repeats * chunk.count(b"\n")


BASELINE = """
import sys, time
start = time.perf_counter()
n = 0
with open(sys.argv[1], "rb") as f:
    for _line in f:
        n += 1
print(n, time.perf_counter() - start)
"""


def baseline(path: Path) -> tuple[int, float]:
    out = subprocess.run(
        [*pinned(AGENT_CPU), sys.executable, "-c", BASELINE, str(path)], capture_output=True, text=True, check=True
    ).stdout.split()
    return int(out[0]), float(out[1])


def throughput(home: Path) -> list[tuple[str, bool]]:
    path = home / "access.log"
    size, lines = make_log(path)
    vl, vl_url = start_victoria_logs(home)
    try:
        base_lines, base_seconds = baseline(path)
        assert base_lines == lines
        collector = f'[[collectors.logs]]\npaths = ["{path}"]\nstart_at = "beginning"\n'
        started = time.monotonic()
        agent, url = start_agent(home, collector, vl_url)
        sent, up = 0.0, None
        try:
            deadline = started + 600
            while time.monotonic() < deadline:
                try:
                    sent = metric(get(url + "/metrics"), "hostwatch_output_sent_items_total", signal="logs")
                    up = up or time.monotonic() - started
                except OSError:
                    sent = 0.0
                if sent >= lines:
                    break
                time.sleep(0.05)
            elapsed = time.monotonic() - started
            cpu = cpu_seconds(agent.pid)
            peer_cpu = cpu_seconds(vl.pid)
            text = get(url + "/metrics")
        finally:
            stop(agent)
        redacted = metric(text, "hostwatch_log_lines_redacted_total")
        query = urllib.parse.urlencode({"query": "* | stats count() as n"})
        rows = 0
        for _ in range(40):
            got = get(f"{vl_url}/select/logsql/query?{query}", timeout=30).strip()
            rows = int(json.loads(got)["n"]) if got else 0
            if rows >= lines:
                break
            time.sleep(0.5)
    finally:
        stop(vl)
    mib = size / 2**20
    print(f"input: {mib:.0f} MiB, {lines:,} lines of {CORPUS.name} (avg {size / lines:.0f} bytes/line)")
    print(f"baseline, plain Python line reading: {mib / base_seconds:,.0f} MiB/s, {lines / base_seconds:,.0f} lines/s")
    print(
        f"agent tail -> redaction -> batch -> disk buffer -> loki protobuf+snappy -> VictoriaLogs: "
        f"{mib / elapsed:,.1f} MiB/s, {lines / elapsed:,.0f} lines/s wall (incl. start-up); "
        f"agent CPU {cpu:.1f} s for {elapsed:.1f} s on one core: {lines / cpu:,.0f} lines/s per CPU second"
    )
    print(
        f"agent start-up {up or 0:.2f} s (in the wall time); VictoriaLogs CPU {peer_cpu:.1f} s; "
        f"output options: {' '.join(LOKI_EXTRA.split()) if LOKI_EXTRA.strip() else 'defaults'}"
    )
    print(f"sent {sent:,.0f}, rows in VictoriaLogs {rows:,}, lines redacted {redacted:,.0f}")
    if redacted == 0:
        print("note: no line was changed by redaction (apache lines hold no secret, or no redactor is wired)")
    rate_mib, rate_lines = mib / elapsed, lines / elapsed
    return [
        (f"log shipping >= {TARGET_MIB_S:g} MiB/s (got {rate_mib:.1f})", rate_mib >= TARGET_MIB_S),
        (f"log shipping >= {TARGET_LINES_S:,.0f} lines/s (got {rate_lines:,.0f})", rate_lines >= TARGET_LINES_S),
        (f"every line delivered ({rows:,} of {lines:,})", rows >= lines and sent >= lines),
    ]


def idle(home: Path) -> list[tuple[str, bool]]:
    quiet = home / "quiet"
    for i in range(500):
        sub = quiet / f"app{i % 20}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i}.log").write_text(f"quiet file {i}\n")
    vl, vl_url = start_victoria_logs(home)
    try:
        collector = f'[[collectors.logs]]\npaths = ["{quiet}/**/*.log"]\n'
        agent, url = start_agent(home, collector, vl_url)
        try:
            for _ in range(200):
                try:
                    get(url + "/ready", timeout=1)
                    break
                except OSError:
                    time.sleep(0.05)
            time.sleep(5)  # start-up and the first scans
            before = cpu_seconds(agent.pid)
            time.sleep(IDLE_SECONDS)
            used = cpu_seconds(agent.pid) - before
            files = metric(get(url + "/metrics"), "hostwatch_log_files")
        finally:
            stop(agent)
    finally:
        stop(vl)
    percent = 100 * used / IDLE_SECONDS
    print(f"idle, 500 quiet files watched: {used:.2f} CPU s in {IDLE_SECONDS:g} s = {percent:.2f}% of a core")
    if files:
        print(f"files open: {files:.0f}")
    return [(f"idle with 500 files < {TARGET_IDLE_PERCENT:g}% CPU (got {percent:.2f}%)", percent < TARGET_IDLE_PERCENT)]


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-logs-") as tmp:
        home = Path(tmp)
        (home / "t").mkdir()
        (home / "i").mkdir()
        results = throughput(home / "t") + idle(home / "i")
    for name, ok in results:
        print(f"{'PASS' if ok else 'FAIL'} {name}")
    return 0 if all(ok for _, ok in results) else 1


if __name__ == "__main__":
    sys.exit(main())
