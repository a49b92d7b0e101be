"""The import rules that keep plugins apart from the engine, checked on the source.

``python -m tests.import_rules [ROOT]`` prints every import that breaks a rule, as
``path:line: importer imports target: rule``, and exits 1 (0 when there is none).
``make lint`` runs it, and ``tests/unit/test_import_rules.py`` runs it too, so
``make test`` enforces the rules as well.

The rules (the README's Development section explains them):

* A plugin (a folder under ``collectors/`` or ``outputs/``) imports its own folder,
  the plugin API (:data:`PLUGIN_API`) and, for an output, the outputs' shared
  modules (``outputs/_*.py``: the HTTP client, the protobuf helpers); never the
  engine, never another plugin.
* The core (``agent/``) never imports a plugin: the registry finds them through
  entry points.
* The contract modules (:data:`LEAVES`) import nothing of the project but what is
  listed for them, so a plugin that imports them pulls in no engine (imports under
  ``if TYPE_CHECKING:``, for annotations only, are not loaded and do not count here).

Every other ``import`` statement counts, inside a function too; relative imports are
resolved. Only what is written as an import statement is seen
(``importlib.import_module`` with a computed name is not).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

PROJECT = ("agent", "collectors", "outputs")
PLUGIN_API = ("agent.model", "agent.plugin", "agent.redact", "agent.telemetry", "agent.sysfs", "agent.procfiles",
              "agent.statefile", "agent.httpauth")  # fmt: skip
"""What a plugin may import of the core: the data model, the plugin contract, and the
shared services (redaction, self-telemetry, /sys and /proc reading and kept descriptors,
state files)."""
LEAVES = {
    "agent.model": (),
    "agent.plugin": ("agent.model", "agent.config.values"),
    "agent.config.values": (),
    "agent.sysfs": (),
    "agent.procfiles": (),
    "agent.httpauth": (),
    "agent.statefile": (),
}


class Violation(NamedTuple):
    path: Path
    line: int
    importer: str
    target: str
    rule: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.importer} imports {self.target}: {self.rule}"


def within(module: str, packages: tuple[str, ...] | list[str]) -> bool:
    """``module`` is one of ``packages`` or inside one of them."""
    return any(module == p or module.startswith(p + ".") for p in packages)


def module_name(root: Path, path: Path) -> tuple[str, bool]:
    """The dotted name of a source file, and whether it is a package's ``__init__``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def imported(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[int, str, list[str], bool]]:
    """(line, module, names, typing_only) of each import statement: ``import a, b`` gives
    ("a", []) and ("b", []); ``from m import x, y`` gives (m, [x, y]), relative ones resolved;
    ``typing_only`` when it sits under ``if TYPE_CHECKING:`` (loading the module skips it)."""
    package = module if is_package else module.rpartition(".")[0]

    def walk(node: ast.AST, typing_only: bool) -> Iterator[tuple[int, str, list[str], bool]]:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, [], typing_only
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            yield node.lineno, base, [alias.name for alias in node.names], typing_only
        elif isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            for child in node.body:
                yield from walk(child, True)
            for child in node.orelse:
                yield from walk(child, typing_only)
        else:
            for child in ast.iter_child_nodes(node):
                yield from walk(child, typing_only)

    yield from walk(tree, False)


def broken_rule(importer: str, target: str, typing_only: bool = False) -> str:
    """Why ``importer`` may not import ``target`` ("" when it may); ``typing_only``: for type
    annotations only, which a leaf may have (loading it does not run them)."""
    if not within(target, PROJECT):
        return ""
    if within(importer, ["agent"]):
        if within(target, ["collectors", "outputs"]):
            return "the core never imports a plugin; the registry finds plugins through entry points"
        if importer in LEAVES and not typing_only and not within(target, [*LEAVES[importer], importer]):
            allowed = ", ".join(LEAVES[importer]) or "nothing"
            return f"{importer} imports nothing of the project but {allowed}"
        return ""
    parts = importer.split(".")
    own = ".".join(parts[:2]) if len(parts) >= 2 else None  # collectors.logs, outputs._http
    if own and within(target, [own]):
        return ""
    if within(target, ["agent"]):
        if within(target, PLUGIN_API):
            return ""
        return "a plugin imports only the plugin API of the core: " + ", ".join(PLUGIN_API)
    if importer.startswith("outputs.") and target.startswith("outputs._"):
        return ""  # a module of outputs/ itself named _x is the outputs' shared code, not a plugin
    return "plugins never import each other (shared code goes into a module of the plugin API)"


def check(root: Path) -> list[Violation]:
    """Every broken rule in the ``agent``, ``collectors`` and ``outputs`` packages under ``root``."""
    found: list[Violation] = []
    for top in PROJECT:
        for path in sorted((root / top).rglob("*.py")):
            module, is_package = module_name(root, path)
            tree = ast.parse(path.read_bytes(), filename=str(path))
            for line, base, names, typing_only in imported(tree, module, is_package):
                rule = broken_rule(module, base, typing_only)
                if not rule:
                    continue
                # ``from pkg import name``: name may be a submodule (``from agent import sysfs``)
                bad = [f"{base}.{name}" for name in names if broken_rule(module, f"{base}.{name}", typing_only)]
                if not names or len(bad) == len(names):
                    found.append(Violation(path.relative_to(root), line, module, base, rule))
                else:
                    found.extend(
                        Violation(path.relative_to(root), line, module, t, broken_rule(module, t, typing_only))
                        for t in bad
                    )
    return found


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path(__file__).resolve().parents[1]
    violations = check(root)
    for violation in violations:
        print(violation)
    if violations:
        print(f"{len(violations)} import(s) break the plugin import rules (tests/import_rules.py)", file=sys.stderr)
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
