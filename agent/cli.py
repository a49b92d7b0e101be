"""``hostwatch`` command line: run, check, once, redact, status, version.

Exit codes: 0 success, 2 configuration error (every error printed, one per
line, with the key's path), 1 runtime failure. User mistakes never print a
traceback. ``check`` also prints the configuration's warnings (valid but
risky, e.g. a non-loopback ``listen``); ``run`` logs them at start.
``status`` exits 1 when the agent cannot be reached and 3 when it answers
but is not ready (see ``agent.status_text``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import sys
import time
from collections.abc import Sequence

from agent import __version__

EXIT_OK, EXIT_RUNTIME, EXIT_CONFIG = 0, 1, 2
GC_YOUNGEST_THRESHOLD = 10_000  # objects; Python's default is 700


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hostwatch", description="A lightweight host agent.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    config_help = "config file (default: $HOSTWATCH_CONFIG, then /etc/hostwatch/hostwatch.toml, else embedded)"
    run = commands.add_parser("run", help="run the agent in the foreground")
    run.add_argument("--config", "-c", help=config_help)
    check = commands.add_parser("check", help="validate the configuration and exit")
    check.add_argument("--config", "-c", help=config_help)
    once = commands.add_parser("once", help="run every collector once, print what it produced, exit")
    once.add_argument("--config", "-c", help=config_help)
    once.add_argument("--format", choices=("prometheus", "json"), default="prometheus")
    redact = commands.add_parser("redact", help="apply the configured redaction to standard input, print the result")
    redact.add_argument("--config", "-c", help=config_help)
    status = commands.add_parser("status", help="show the running agent's status: host, outputs, log files, errors")
    status.add_argument("--config", "-c", help=config_help + "; gives the default --url")
    status.add_argument("--url", help="the agent's address (default: http:// and the config's [http] listen)")
    status.add_argument(
        "--watch", nargs="?", type=float, const=2.0, metavar="SECONDS", help="refresh every SECONDS (2) until Ctrl-C"
    )
    status.add_argument("--json", action="store_true", help="print the agent's /status.json as it is")
    status.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the agent (5)")
    commands.add_parser("version", help="print the version")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "version":
        print(f"hostwatch {__version__} (Python {sys.version.split()[0]})")
        return EXIT_OK
    if args.command == "status" and args.url:
        return _status(args.url, args)
    if args.command == "run":
        _collect_less_often()
    from agent.config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        from agent.secrets import mask_url_credentials

        for line in exc.errors:  # an error may quote a URL: its password is not repeated
            print(f"config error: {mask_url_credentials(line)}", file=sys.stderr)
        print(f"{len(exc.errors)} configuration error(s)", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check":
        for line in config.warnings:
            print(f"config warning: {line}", file=sys.stderr)
        print(
            f"configuration OK: {len(config.collectors)} collector(s), {len(config.outputs)} output(s)"
            f" from {', '.join(config.sources)}"
        )
        return EXIT_OK
    if args.command == "once":
        return _once(config, args.format)
    if args.command == "redact":
        return _redact(config)
    if args.command == "status":
        if not config.http.listen:
            print("hostwatch status: the configuration has no [http] listen; pass --url", file=sys.stderr)
            return EXIT_CONFIG
        from agent.status_text import default_url

        return _status(default_url(config.http.listen), args)
    return _run(args.config, config)


def _run(config_path: str | None, config) -> int:
    from agent.logsetup import setup_logging
    from agent.runtime import install_event_loop_policy, run_agent
    from agent.secrets import config_secrets
    from agent.systemd import Notifier

    mask = setup_logging(config.agent.log_level)
    mask.add(config_secrets(config))  # passwords and tokens never reach the agent's own logs
    for line in config.warnings:
        logging.getLogger("hostwatch.config").warning("%s", line)
    install_event_loop_policy()
    notifier = Notifier.from_environment()
    try:
        return asyncio.run(run_agent(config_path, config, notifier=notifier, mask=mask, on_ready=_freeze_start_up))
    except KeyboardInterrupt:
        return EXIT_OK


def _collect_less_often() -> None:
    """The daemon's garbage collector looks at new objects every 10,000 instead of every 700.

    Start-up's imports and configuration make objects that live as long as the process, and a
    log round's objects mostly die by reference count soon after: collections among either are
    wasted work, and a collection moves the survivors on to older generations, which are walked
    again later. The agent makes few reference cycles, so garbage waits little longer; the
    figures (collections, their CPU, peak RSS) are ``python -m tests.bench.bench_gc``'s.
    """
    gc.set_threshold(GC_YOUNGEST_THRESHOLD, *gc.get_threshold()[1:])


def _freeze_start_up(_agent: object) -> None:
    """Once started: what start-up made (modules, configuration, plugins, caches) stays for good;
    frozen, no full collection walks it again."""
    gc.freeze()


def _status(url: str, args: argparse.Namespace) -> int:
    from agent.status_text import run

    if args.watch is not None and args.watch <= 0:
        print("hostwatch status: --watch needs a positive number of seconds", file=sys.stderr)
        return EXIT_CONFIG
    return run(url, watch=args.watch, as_json=args.json, timeout=args.timeout)


def _redact(config) -> int:
    from agent.logsetup import setup_logging
    from agent.redact import Redactor, redact_stream

    setup_logging("warning")
    redactor = Redactor.from_config(config.redaction, state_dir=config.state_dir)
    try:
        redact_stream(redactor, sys.stdin.buffer, sys.stdout.buffer)
    except BrokenPipeError:  # `hostwatch redact < big.log | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def _once(config, fmt: str) -> int:
    import msgspec

    from agent.exposition import render_samples
    from agent.logsetup import setup_logging
    from agent.model import labels_from, merge_labels
    from agent.runtime import Agent

    setup_logging("warning")

    async def collect_all():
        agent = Agent(config)
        results = {}
        failed = False
        for spec in config.collectors:
            runner = agent.build_runner(config, spec)
            if getattr(runner.collector, "streaming", False):
                continue  # log tailers have no single round to print
            try:
                emitter = await runner.run_once()
            except Exception as exc:
                print(f"{spec.name}: {type(exc).__name__}: {exc}", file=sys.stderr)
                failed = True
                continue
            finally:
                await runner.stop()
            for problem in emitter.errors:
                print(f"{spec.name}: {problem}", file=sys.stderr)
            results[spec.name] = emitter.samples
        return results, failed

    results, failed = asyncio.run(collect_all())
    if agent_labels := labels_from(config.agent.labels):  # added on the way out, as /metrics adds them
        results = {
            name: [msgspec.structs.replace(s, labels=merge_labels(agent_labels, s.labels)) for s in samples]
            for name, samples in results.items()
        }
    if fmt == "json":
        out = [
            {
                "collector": name,
                "name": s.name,
                "kind": s.kind,
                "labels": dict(s.labels),
                "value": s.value,
                "unit": s.unit,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(s.time_ns / 1e9)),
            }
            for name, samples in results.items()
            for s in samples
        ]
        json.dump(out, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_samples([s for samples in results.values() for s in samples]))
    return EXIT_RUNTIME if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
