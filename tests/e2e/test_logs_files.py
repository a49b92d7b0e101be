"""Log tailing end to end on real files: the public corpus, hundreds of files, permissions, symlinks.

The agent runs as a process and ships through the Loki output into a real
VictoriaLogs; every expected record is derived here from the input files, and
compared with every row read back (file name and message), so a record lost,
split, merged or sent twice fails the test.
"""

from __future__ import annotations

import collections
import json
import os
import random
import shutil
import time
from pathlib import Path

import pytest

from tests.e2e.test_logs_rotation import logs_agent, wait_rows

pytestmark = [pytest.mark.e2e, pytest.mark.peers]

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "real"
LARAVEL_START = r"^\[\d{4}-\d{2}-\d{2}"


def raw_records(data: bytes) -> list[str]:
    """Lines as a reader of the whole file frames them: LF or CRLF, a last line without newline counts."""
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return [(line[:-1] if line.endswith(b"\r") else line).decode() for line in lines]


def laravel_records(data: bytes) -> list[str]:
    lines = raw_records(data)
    starts = [i for i, line in enumerate(lines) if line[:1] == "[" and line[1:5].isdigit()]
    return ["\n".join(lines[a:b]) for a, b in zip(starts, [*starts[1:], len(lines)], strict=True)]


def trickle(files: dict[Path, bytes], seed: int = 7) -> None:
    """Append each file's bytes in random pieces, so lines are split across reads."""
    rng = random.Random(seed)
    positions = dict.fromkeys(files, 0)
    while positions:
        for path in list(positions):
            data, pos = files[path], positions[path]
            size = rng.randint(1, 64 * 1024)
            with open(path, "ab") as f:
                f.write(data[pos : pos + size])
            if pos + size >= len(data):
                del positions[path]
            else:
                positions[path] = pos + size
        time.sleep(0.002)


def rows(vl, limit: int) -> collections.Counter:
    got = vl.query("* | fields filename, _msg", limit=limit)
    return collections.Counter((os.path.basename(r.get("filename", "")), r.get("_msg", "")) for r in got)


def test_the_real_corpus_arrives_exactly_once_with_its_framing(tmp_path, victoria_logs) -> None:
    if not CORPUS.is_dir():
        pytest.skip(f"the corpus is not at {CORPUS}")
    raw_dir, multi_dir = tmp_path / "raw", tmp_path / "multi"
    raw_dir.mkdir()
    multi_dir.mkdir()
    sources = {p.name: p.read_bytes() for p in sorted(CORPUS.glob("*.log"))}
    # IIS writes CRLF; the copy here is the same log as Windows leaves it
    sources["iis_w3c_crlf.log"] = sources["iis_w3c.log"].replace(b"\n", b"\r\n")
    laravel = sources.pop("laravel_php.log")
    files = {raw_dir / name: data for name, data in sources.items()}
    files[multi_dir / "laravel_php.log"] = laravel
    expected = collections.Counter()
    for name, data in sources.items():
        expected.update((name, record) for record in raw_records(data))
    expected.update(("laravel_php.log", record) for record in laravel_records(laravel))
    for path in files:
        path.write_bytes(b"")

    collectors = f"""
[[collectors.logs]]
alias = "corpus"
paths = ["{raw_dir}/*.log"]
partial_line_timeout = "1s"
[[collectors.logs]]
alias = "laravel"
paths = ["{multi_dir}/*.log"]
multiline = {{ start_pattern = '{LARAVEL_START}', flush_timeout = "1s" }}
"""
    agent = logs_agent(tmp_path, collectors, victoria_logs.loki_push_url)
    agent.start()
    try:
        time.sleep(0.5)
        trickle(files)
        total = sum(expected.values())
        count = wait_rows(victoria_logs, total, settle=3.0)
        got = rows(victoria_logs, limit=total * 2)
        missing, extra = expected - got, got - expected
        detail = f"missing {sum(missing.values())}: {list(missing.items())[:3]}\nextra {list(extra.items())[:3]}"
        assert count == total and not missing and not extra, detail
        assert agent.stop() == 0
    finally:
        agent.kill()
    print(f"corpus: {total} records from {len(files)} files, each once")


def test_hundreds_of_files_permissions_symlinks_and_a_late_directory(tmp_path, victoria_logs) -> None:
    base = tmp_path / "many"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    locked = base / "d0" / "locked.log"
    expected = collections.Counter()

    def write(path: Path, line: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(line + "\n")
        expected[(path.name, line)] += 1

    for i in range(400):
        write(base / f"d{i % 10}" / f"f{i}.log", f"file {i} line 1")
    locked.parent.mkdir(parents=True, exist_ok=True)
    locked.write_text("secret for now\n")
    locked.chmod(0)
    (base / "link.log").symlink_to(elsewhere / "target.log")
    write(elsewhere / "target.log", "via the symlink 1")
    expected[("link.log", "via the symlink 1")] += 1
    del expected[("target.log", "via the symlink 1")]

    collectors = f"""
[[collectors.logs]]
paths = ["{base}/**/*.log", "{tmp_path}/later/**/*.log"]
follow_symlinks_to = ["{elsewhere}/*.log"]
start_at = "beginning"
glob_interval = "1s"
rotate_wait = "1s"
"""
    # as root, drop the capabilities that read any file, so the locked file is really unreadable
    wrap = ("setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search")
    can_lock = os.geteuid() != 0 or shutil.which("setpriv") is not None
    as_root = os.geteuid() == 0 and can_lock
    agent = logs_agent(tmp_path, collectors, victoria_logs.loki_push_url, wrap=wrap if as_root else ())
    agent.start()
    try:
        wait_rows(victoria_logs, sum(expected.values()), settle=0.5)
        for i in range(0, 400, 3):  # a third vanish
            (base / f"d{i % 10}" / f"f{i}.log").unlink()
        for i in range(1, 400, 3):
            write(base / f"d{i % 10}" / f"f{i}.log", f"file {i} line 2")
        for i in range(400, 500):  # new ones appear
            write(base / f"d{i % 10}" / f"f{i}.log", f"file {i} line 1")
        with open(elsewhere / "target.log", "a") as f:
            f.write("via the symlink 2\n")
        expected[("link.log", "via the symlink 2")] += 1
        write(tmp_path / "later" / "deep" / "er" / "new.log", "in a directory that did not exist")
        if can_lock:
            time.sleep(2.5)  # a scan or two while it is unreadable: reported, others unaffected
            detailed = json.loads(agent.get("/health/detailed")[1])
            errors = json.dumps(detailed["collectors"]) + agent.stderr()
            assert "locked.log" in errors and "Permission denied" in errors
        locked.chmod(0o644)  # retried at the next scan
        expected[("locked.log", "secret for now")] += 1
        total = sum(expected.values())
        count = wait_rows(victoria_logs, total, settle=2.0)
        got = rows(victoria_logs, limit=total * 2)
        missing, extra = expected - got, got - expected
        assert count == total and not missing and not extra, f"missing {list(missing)[:5]}, extra {list(extra)[:5]}"
        assert agent.stop() == 0
    finally:
        agent.kill()
