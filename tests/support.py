"""Helpers for plugin tests: contexts on fixture trees and one-shot collection runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from agent.emitter import RunEmitter
from agent.model import Labels, Sample
from agent.plugin import CollectorContext, OutputContext

FIXTURES = Path(__file__).parent / "fixtures"


def collector_context(
    tmp_path: Path,
    *,
    proc_root: str | Path = "/proc",
    sys_root: str | Path = "/sys",
    rootfs: str | Path = "/",
    instance: str = "test",
    clock=time.time_ns,
    static_labels: Labels = (),
    **extra: Any,
) -> CollectorContext:
    state = tmp_path / "state"
    state.mkdir(parents=True, exist_ok=True)

    async def run_blocking(fn, *args):
        return await asyncio.to_thread(fn, *args)

    return CollectorContext(
        instance=instance,
        logger=logging.getLogger(f"hostwatch.test.{instance}"),
        clock=clock,
        proc_root=Path(proc_root),
        sys_root=Path(sys_root),
        rootfs=Path(rootfs),
        state_dir=state,
        run_blocking=run_blocking,
        static_labels=static_labels,
        **extra,
    )


def output_context(instance: str = "test", **extra: Any) -> OutputContext:
    return OutputContext(
        instance=instance,
        logger=logging.getLogger(f"hostwatch.test.{instance}"),
        clock=time.time_ns,
        hostname=extra.pop("hostname", "testhost"),
        **extra,
    )


async def collect_once(collector, time_ns: int | None = None) -> RunEmitter:
    """start, one collect, close: the emitter holds samples and errors."""
    emitter = RunEmitter(time_ns or time.time_ns(), collector.context.static_labels)
    await collector.start()
    try:
        await collector.collect(emitter)
    finally:
        await collector.close()
    return emitter


def by_series(samples: list[Sample]) -> dict[tuple[str, Labels], float]:
    return {(s.name, s.labels): s.value for s in samples}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def hostwatch_command() -> list[str]:
    """The installed ``hostwatch`` entry point of the interpreter running the tests."""
    import shutil
    import sys

    script = Path(sys.executable).with_name("hostwatch")
    if script.exists():
        return [str(script)]
    found = shutil.which("hostwatch")
    return [found] if found else [sys.executable, "-m", "agent.cli"]


@contextlib.asynccontextmanager
async def http_servers(status: Any):
    """``make(**bounds)`` starts an ``agent.http.HttpServer`` for ``status`` on a free loopback
    port; every server made is stopped on the way out."""
    from agent.http import HttpServer

    servers: list[HttpServer] = []

    async def make(**bounds: Any) -> HttpServer:
        http = HttpServer(status, "127.0.0.1:0", **bounds)
        await http.start()
        servers.append(http)
        return http

    try:
        yield make
    finally:
        for http in servers:
            await http.stop()
