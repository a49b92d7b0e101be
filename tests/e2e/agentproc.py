"""The one harness that runs ``hostwatch run`` as a real process in tests: write its configuration,
start it, wait for /ready, read its endpoints and its stderr, stop it with a signal or kill it."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from tests.support import free_port, hostwatch_command


class AgentProcess:
    """One agent configuration; ``start()`` may be called again after a stop or a kill (same port, same
    state). Its files are under ``tmp_path / name``: the configuration, ``state/`` and ``stderr.log``
    (every start's stderr, appended)."""

    def __init__(
        self,
        tmp_path: Path,
        body: str,
        *,
        name: str = "agent",
        agent_table: str = "",
        listen_host: str = "127.0.0.1",
        command_prefix: Sequence[str] = (),
    ) -> None:
        """``body``: the configuration after ``[agent]`` and ``[http]``, which this writes;
        ``agent_table``: more lines for ``[agent]`` (``interval``, ``labels``);
        ``command_prefix``: a command the agent runs under (``setpriv ...``)."""
        self.port = free_port()
        self.listen_host = listen_host
        self.dir = tmp_path / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_dir = self.dir / "state"
        self.config = self.dir / "hostwatch.toml"
        self.configure(body, agent_table)
        self.base = f"http://127.0.0.1:{self.port}"
        self.command_prefix = list(command_prefix)
        self.proc: subprocess.Popen | None = None
        self.log = self.dir / "stderr.log"
        self.starts = 0
        self.ready_after = 0.0  # seconds from the last start to /ready, interpreter start-up included

    def configure(self, body: str, agent_table: str = "") -> None:
        """(Re)write the configuration file; a running agent reads it on SIGHUP."""
        self.config.write_text(
            f'[agent]\nstate_dir = "{self.state_dir}"\n{agent_table.strip()}\n'
            f'[http]\nlisten = "{self.listen_host}:{self.port}"\n{body}'
        )

    def start(self, wait_ready: bool = True, timeout: float = 15.0, nofile: int | None = None) -> AgentProcess:
        """``nofile``: the process's descriptor limit (systemd's default soft limit is 1024)."""
        self.starts += 1

        def limit_descriptors() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        started = time.monotonic()
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen(
                [*self.command_prefix, *hostwatch_command(), "run", "--config", str(self.config)],
                stderr=err,
                preexec_fn=limit_descriptors if nofile is not None else None,
            )
        if wait_ready:
            self.wait(lambda: self.get("/ready")[0] == 200, timeout, "ready")
            self.ready_after = time.monotonic() - started
        return self

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=timeout) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def failing(self) -> bool:
        """/ready answers 503 for a fault (an output failing, ...), not only because the agent is still
        starting: a wait for a 503 alone can end in the moment before the outputs start."""
        status, body = self.get("/ready")
        return status == 503 and any(reason not in ("starting", "stopping") for reason in json.loads(body)["reasons"])

    def detailed(self) -> dict:
        return json.loads(self.get("/health/detailed")[1])

    def metrics(self) -> str:
        """The /metrics page."""
        return self.get("/metrics")[1]

    def metric(self, series: str) -> float:
        """A series' value from /metrics (0 when absent), e.g. ``hostwatch_buffer_items{output="x"}``."""
        for line in self.metrics().splitlines():
            if line.startswith(series + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def rss_kib(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def wait(self, predicate, timeout: float = 15.0, what: str = "condition"):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                last = predicate()
            except (OSError, urllib.error.URLError, ValueError) as exc:
                last = exc
            if last and not isinstance(last, Exception):
                return last
            time.sleep(0.05)
        raise AssertionError(f"agent: {what} not reached in {timeout:g}s (last: {last!r})\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no flush, no checkpoint, as a crash or the OOM killer would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stderr(self) -> str:
        """What the agent wrote to stderr, every start's (JSON lines: stderr is not a terminal)."""
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, chars: int = 4000) -> str:
        return self.stderr()[-chars:]

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
