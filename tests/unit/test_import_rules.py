"""The plugin import rules (tests/import_rules.py, also run by ``make lint``): the project keeps
them, and each kind of bad import is caught."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.import_rules import check, main

ROOT = Path(__file__).resolve().parents[2]


def test_the_project_keeps_the_import_rules() -> None:
    assert [str(v) for v in check(ROOT)] == []


def plant(root: Path, files: dict[str, str]) -> None:
    """A tree of three packages with good imports, plus ``files``."""
    good = {
        "agent/__init__.py": "",
        "agent/model.py": "import struct\n",
        "agent/plugin.py": "from agent.model import Sample\nfrom agent.config.values import Duration\n",
        "agent/runtime.py": "from agent.registry import load_registry\nfrom agent import model\n",
        "collectors/__init__.py": "",
        "collectors/cpu/cpu.py": "from agent.plugin import PeriodicCollector\nfrom . import parse\n",
        "collectors/net/net.py": "from agent import sysfs\nfrom agent.statefile import write_atomically\n",
        "collectors/net/parts/x.py": "from .. import net\nfrom collectors.net.net import Net\n",
        "outputs/__init__.py": "",
        "outputs/_http.py": "from agent.plugin import Output\n",
        "outputs/loki/loki.py": "from outputs._http import HttpClient\nfrom outputs import _protobuf\n",
    }
    for name, text in {**good, **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.mark.parametrize(
    ("name", "text", "target", "rule"),
    [
        ("collectors/cpu/bad.py", "from collectors.net.net import Net\n", "collectors.net.net", "each other"),
        ("collectors/cpu/bad.py", "from ..net import net\n", "collectors.net", "each other"),
        ("collectors/cpu/bad.py", "import outputs.loki.loki\n", "outputs.loki.loki", "each other"),
        ("collectors/cpu/bad.py", "from outputs import _http\n", "outputs", "each other"),
        ("collectors/cpu/bad.py", "def f():\n    from agent.runtime import Agent\n", "agent.runtime", "plugin API"),
        ("collectors/cpu/bad.py", "from agent import sysfs, buffer\n", "agent.buffer", "plugin API"),
        ("collectors/cpu/bad.py", "from agent.config.values import Duration\n", "agent.config.values", "plugin API"),
        ("outputs/loki/bad.py", "from outputs.otlp.encode import varint\n", "outputs.otlp.encode", "each other"),
        ("outputs/loki/bad.py", "from agent.pipeline import Pipeline\n", "agent.pipeline", "plugin API"),
        ("agent/cli.py", "from collectors.cpu.cpu import CpuCollector\n", "collectors.cpu.cpu", "entry points"),
        ("agent/cli.py", "def f():\n    import outputs.loki\n", "outputs.loki", "entry points"),
        ("agent/model.py", "from agent.telemetry import Telemetry\n", "agent.telemetry", "nothing of the project"),
        ("agent/plugin.py", "from agent.runtime import Agent\n", "agent.runtime", "nothing of the project"),
        ("agent/sysfs.py", "from agent import plugin\n", "agent", "nothing of the project"),
        ("collectors/cpu/bad.py", "if TYPE_CHECKING:\n    from agent.runtime import Agent\n", "agent.runtime", "API"),
    ],
)
def test_a_planted_bad_import_is_reported_with_its_place(tmp_path, name, text, target, rule) -> None:
    plant(tmp_path, {})
    assert check(tmp_path) == []  # the good tree is clean
    plant(tmp_path, {name: text})
    [violation] = check(tmp_path)
    assert (str(violation.path), violation.target) == (name, target)
    assert rule in violation.rule
    assert violation.line == text.count("\n", 0, text.index("import")) + 1


def test_a_leaf_may_import_for_annotations_only_and_outputs_share_their_underscore_modules(tmp_path) -> None:
    plant(
        tmp_path,
        {
            "agent/plugin.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from agent.redact import R\n",
            "outputs/_http.py": "from outputs._transport import Transport\n",
            "outputs/_transport.py": "import ssl\n",
        },
    )
    assert check(tmp_path) == []
    plant(tmp_path, {"collectors/cpu/bad.py": "from outputs._transport import Transport\n"})
    assert [v.target for v in check(tmp_path)] == ["outputs._transport"]  # shared by outputs only


def test_the_command_exits_1_and_names_each_bad_import(tmp_path, capsys) -> None:
    plant(tmp_path, {"collectors/cpu/bad.py": "import collectors.net.net\nimport agent.buffer\n"})
    assert main([str(tmp_path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "collectors/cpu/bad.py:1: collectors.cpu.bad imports collectors.net.net: plugins never import each other"
        " (shared code goes into a module of the plugin API)",
        "collectors/cpu/bad.py:2: collectors.cpu.bad imports agent.buffer: a plugin imports only the plugin API"
        " of the core: agent.model, agent.plugin, agent.redact, agent.telemetry, agent.sysfs,"
        " agent.procfiles, agent.statefile, agent.httpauth",
    ]
    plant(tmp_path, {"collectors/cpu/bad.py": ""})
    assert main([str(tmp_path)]) == 0


def test_the_readme_names_every_module_a_plugin_may_import() -> None:
    from tests.import_rules import PLUGIN_API

    development = (ROOT / "README.md").read_text().split("## Development", 1)[1]
    rules = development.split("**Import rules.**", 1)[1].split("\n\n", 1)[0]
    assert [m for m in (*PLUGIN_API, "outputs/_*.py") if f"`{m}`" not in rules] == []
