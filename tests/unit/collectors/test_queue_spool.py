"""queue_spool on directory trees the tests build; expected numbers come from what each test wrote."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import msgspec
import pytest

from agent.config import loads_config
from agent.model import labels_from
from collectors.queue.queue_rabbitmq import RabbitMQQueueCollector
from collectors.queue.queue_redis import RedisQueueCollector
from collectors.queue.queue_spool import Config, SpoolQueueCollector
from tests.support import by_series, collect_once, collector_context

NOW_NS = 1_800_000_000 * 10**9
QUEUE_DIR = Path(__file__).parents[3] / "collectors" / "queue"


class Entry:
    """A DirEntry stand-in that counts stat calls."""

    def __init__(self, entry: os.DirEntry, seam: Scandir) -> None:
        self._entry, self._seam = entry, seam
        self.name, self.path = entry.name, entry.path

    def is_dir(self, *, follow_symlinks: bool = True) -> bool:
        return self._entry.is_dir(follow_symlinks=follow_symlinks)

    def is_file(self, *, follow_symlinks: bool = True) -> bool:
        return self._entry.is_file(follow_symlinks=follow_symlinks)

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        self._seam.stats += 1
        return self._entry.stat(follow_symlinks=follow_symlinks)


class Scandir:
    """The collector's scandir seam: denies some directories (even to root), removes files mid-scan."""

    def __init__(self, deny: tuple[str, ...] = (), vanish: tuple[str, ...] = ()) -> None:
        self.deny, self.vanish, self.stats = deny, vanish, 0

    def __call__(self, path: str):
        if path in self.deny:
            raise PermissionError(13, "Permission denied", path)
        return Listing(os.scandir(path), self)


class Listing:
    def __init__(self, inner, seam: Scandir) -> None:
        self.inner, self.seam = inner, seam

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.inner.close()

    def __iter__(self):
        for entry in self.inner:
            if entry.name in self.seam.vanish:
                os.unlink(entry.path)  # a worker took it between the listing and our stat
            yield Entry(entry, self.seam)


def write(path: Path, size: int, age_s: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    mtime = NOW_NS - age_s * 10**9
    os.utime(path, ns=(mtime, mtime))


def series(queue: str, files: int, size: int | None, age: float | None) -> dict:
    labels = {"system": "spool", "queue": queue}
    out = {("queue_messages", labels_from({**labels, "state": "ready"})): files}
    if size is not None:
        out[("queue_bytes", labels_from(labels))] = size
    if age is not None:
        out[("queue_oldest_message_age_seconds", labels_from(labels))] = age
    return out


def make(tmp_path: Path, scandir=os.scandir, rootfs: Path | str = "/", **config) -> SpoolQueueCollector:
    context = collector_context(tmp_path, clock=lambda: NOW_NS, rootfs=rootfs)
    return SpoolQueueCollector(Config(**config), context, scandir=scandir)


@pytest.fixture(scope="module")
def spool(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, int, int]:
    """2,000 files at the top, 500 three levels down, plus files and a directory that are excluded.

    Built once for the module: the tests only read it.
    """
    root = tmp_path_factory.mktemp("spool") / "spool"
    count = size = oldest = 0
    for i in range(2000):
        write(root / f"msg{i:05d}", i % 97, 10 + i % 600)
        count, size, oldest = count + 1, size + i % 97, max(oldest, 10 + i % 600)
    for i in range(500):
        write(root / "a" / "b" / "c" / f"deep{i}", 3, 5)
        count, size = count + 1, size + 3
    write(root / "a" / "ancient", 11, 7200)
    count, size, oldest = count + 1, size + 11, 7200
    write(root / "partial.tmp", 1000, 99_999)  # excluded by name
    write(root / "tmp" / "incoming", 1000, 99_999)  # excluded directory
    return root, count, size, oldest


async def test_many_nested_files_with_excludes(spool, tmp_path):
    root, count, size, oldest = spool
    seam = Scandir()
    emitter = await collect_once(make(tmp_path, seam, paths=[str(root)], exclude=["*.tmp", "tmp"]))
    assert emitter.errors == []
    assert by_series(emitter.samples) == series(str(root), count, size, oldest)
    assert seam.stats == count  # one stat per counted file, none for excluded ones


async def test_counting_alone_stats_nothing(spool, tmp_path):
    root, count, _, _ = spool
    seam = Scandir()
    config = {"paths": [str(root)], "exclude": ["*.tmp", "tmp"], "total_bytes": False, "oldest_age": False}
    emitter = await collect_once(make(tmp_path, seam, **config))
    assert by_series(emitter.samples) == series(str(root), count, None, None)
    assert seam.stats == 0


async def test_include_patterns_and_no_recursion(tmp_path):
    root = tmp_path / "mail"
    for i in range(40):
        write(root / f"{i}.eml", 100 + i, 60 * i)
    write(root / "notes.txt", 5, 9000)
    write(root / "sub" / "99.eml", 7, 9000)
    emitter = await collect_once(make(tmp_path, paths=[str(root)], include=["*.eml"], recursive=False))
    assert by_series(emitter.samples) == series(str(root), 40, sum(100 + i for i in range(40)), 60 * 39)


async def test_file_vanishing_during_the_scan_is_not_counted(tmp_path):
    root = tmp_path / "uploads"
    for i in range(10):
        write(root / f"u{i}", 10 * (i + 1), 100 + i)
    emitter = await collect_once(make(tmp_path, Scandir(vanish=("u9", "u3")), paths=[str(root)]))
    assert emitter.errors == []
    kept = [i for i in range(10) if i not in (3, 9)]
    assert by_series(emitter.samples) == series(str(root), 8, sum(10 * (i + 1) for i in kept), 108)


async def test_unreadable_subdirectory_and_directories_that_cannot_be_listed(tmp_path, caplog):
    good = tmp_path / "good"
    for i in range(6):
        write(good / f"f{i}", 2, 30)
    write(good / "locked" / "hidden", 50, 5000)
    denied = tmp_path / "denied"
    write(denied / "x", 1, 1)
    missing = tmp_path / "missing"
    seam = Scandir(deny=(str(good / "locked"), str(denied)))
    emitter = await collect_once(make(tmp_path, seam, paths=[str(good), str(denied), str(missing)]))

    # The readable part of "good" is still reported, and the gap is an error; the other two report nothing.
    assert by_series(emitter.samples) == series(str(good), 6, 12, 30)
    assert sorted(map(str, emitter.errors)) == sorted(
        [
            f"spool {good}: cannot list {good / 'locked'}: Permission denied; counts are incomplete",
            f"spool {denied}: cannot list the directory: Permission denied",
            f"spool {missing}: directory does not exist",
        ]
    )
    assert f"spool {missing}: directory does not exist" in caplog.text


async def test_glob_paths_and_empty_directories(tmp_path):
    for name, files in (("a", 3), ("b", 0)):
        (tmp_path / "queues" / name).mkdir(parents=True)
        for i in range(files):
            write(tmp_path / "queues" / name / f"{i}", 4, 20 * (i + 1))
    (tmp_path / "queues" / "not-a-dir").write_text("")
    emitter = await collect_once(make(tmp_path, paths=[str(tmp_path / "queues" / "*")]))
    assert by_series(emitter.samples) == {
        **series(str(tmp_path / "queues" / "a"), 3, 12, 60),
        **series(str(tmp_path / "queues" / "b"), 0, 0, 0),
    }


async def test_paths_are_looked_up_under_the_host_rootfs(tmp_path):
    host = tmp_path / "host"
    for queue, files in (("active", 2), ("deferred", 5)):
        for i in range(files):
            write(host / "var" / "spool" / "mta" / queue / f"{i}", 1, 40)
    config = {"paths": ["/var/spool/mta/d*", "/var/spool/mta/active"], "total_bytes": False}
    emitter = await collect_once(make(tmp_path, rootfs=host, **config))
    # Labels name the host's paths, not where the container sees them.
    assert by_series(emitter.samples) == {
        **series("/var/spool/mta/deferred", 5, None, 40),
        **series("/var/spool/mta/active", 2, None, 40),
    }


def test_samples_parse_and_readme_shows_them():
    registry = {
        "collectors": {
            "queue_redis": RedisQueueCollector,
            "queue_rabbitmq": RabbitMQQueueCollector,
            "queue_spool": SpoolQueueCollector,
        },
        "outputs": {},
    }
    readme = (QUEUE_DIR / "README.md").read_text()
    combined = (QUEUE_DIR / "sample.toml").read_text()
    for name, plugin in registry["collectors"].items():
        text = (QUEUE_DIR / f"{name}.sample.toml").read_text()
        assert text.strip() in readme and text.strip() in combined
        # Every option is documented as a commented default, and uncommenting them all is valid.
        defaults = re.sub(r"(?m)^# (?=[a-z_]+ = )", "", text)
        table = tomllib.loads(defaults)["collectors"][name][0]
        assert set(table) == {f.encode_name for f in msgspec.structs.fields(plugin.Config)}
        config = loads_config(defaults, registry=registry)
        assert config.collectors[0].config == plugin.Config()
        loads_config(text, registry=registry)
