"""The schema as documentation: a plugin's options, their descriptions and defaults, in TOML.

Every option of a plugin's ``Config`` carries a ``msgspec.Meta(description=...)``.
:func:`options` lists them with their defaults; :func:`render_sample` prints a
``sample.toml`` skeleton from them (``##`` description, then ``# key = default``),
the starting point of a new plugin's sample; :func:`documented_keys` reads a
committed ``sample.toml`` back, so the contract tests can check that every option is
documented with its schema default, in the option's TOML type, and that the sample
names no option the plugin does not have.

    python -m agent.config.docs cpu            # the skeleton of collectors/cpu/sample.toml
    python -m agent.config.docs outputs loki   # when a name is both a collector and an output
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, get_args, get_origin

import msgspec

from agent.config.validation import convert
from agent.config.values import Duration, Size, format_size

WIDTH = 80  # sample.toml lines, the indentation and "## " included


@dataclass(frozen=True)
class Option:
    """One option of a config schema."""

    key: str
    type: Any  # the field's declared type, Annotated metadata included
    description: str  # "" when the schema lacks one (a contract test fails on it)
    required: bool
    default: Any  # the default value; None when required


def description_of(type_: Any) -> str:
    """The ``msgspec.Meta(description=...)`` in a field's ``Annotated`` metadata, or ``""``."""
    if get_origin(type_) is not Annotated:
        return ""
    for meta in get_args(type_)[1:]:
        if isinstance(meta, msgspec.Meta) and meta.description:
            return meta.description
    return ""


def options(config_type: type) -> list[Option]:
    """The options of a config Struct, in declaration order."""
    result = []
    for field in msgspec.structs.fields(config_type):
        if field.default is not msgspec.NODEFAULT:
            default = field.default
        elif field.default_factory is not msgspec.NODEFAULT:
            default = field.default_factory()
        else:
            default = None
        result.append(Option(field.encode_name, field.type, description_of(field.type), field.required, default))
    return result


def nested_structs_of(type_: Any) -> list[type]:
    """The Struct types one option's type holds directly (``Multiline``, ``list[RelabelRule]``)."""
    if get_origin(type_) is Annotated:
        type_ = get_args(type_)[0]
    if isinstance(type_, type) and issubclass(type_, msgspec.Struct):
        return [type_]
    return [found for arg in get_args(type_) for found in nested_structs_of(arg)]


def nested_structs(config_type: type) -> list[type]:
    """Struct types an option holds (directly, in a list, or optionally): their fields are options too."""
    found: list[type] = []

    def visit(type_: Any) -> None:
        if get_origin(type_) is Annotated:
            type_ = get_args(type_)[0]
        if isinstance(type_, type) and issubclass(type_, msgspec.Struct):
            if type_ not in found:
                found.append(type_)
                for field in msgspec.structs.fields(type_):
                    visit(field.type)
            return
        for arg in get_args(type_):
            visit(arg)

    for field in msgspec.structs.fields(config_type):
        visit(field.type)
    return found


# ------------------------------------------------------------ TOML rendering


def format_duration(seconds: float) -> str:
    """``90.0`` -> ``"90s"``, ``0.25`` -> ``"250ms"``: the largest unit that keeps it whole."""
    for unit, factor in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1), ("ms", 1e-3), ("us", 1e-6)):
        count = seconds / factor
        if count >= 1 and abs(count - round(count)) < 1e-9:
            return f"{round(count)}{unit}"
    return f"{seconds:g}s"


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_value(value: Any) -> str:
    """A default as the TOML users write it: durations and sizes as strings, Structs as inline tables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Duration):
        return json.dumps(format_duration(value))
    if isinstance(value, Size):
        return json.dumps(format_size(value))
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, msgspec.Struct):
        value = {f.encode_name: getattr(value, f.name) for f in msgspec.structs.fields(value)}
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        items = (f"{_key(k)} = {toml_value(v)}" for k, v in value.items() if v is not None)
        return "{ " + ", ".join(items) + " }"
    if isinstance(value, Sequence):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def _key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else json.dumps(name)


def render_sample(kind: str, name: str, config_type: type, summary: str = "", indent: str = "  ") -> str:
    """A ``sample.toml`` skeleton: each option's description as ``##`` prose, then ``# key = default``
    (a required option is shown live, with a placeholder to replace)."""
    lines = [*_prose(summary, ""), f"[[{kind}.{name}]]"]
    for option in options(config_type):
        lines.append("")
        prose = option.description or "(undocumented)"
        for struct in nested_structs_of(option.type):
            prose += " " + " ".join(f"{o.key}: {o.description}" for o in options(struct))
        lines.extend(_prose(prose, indent))
        if option.required:
            lines.append(f"{indent}{option.key} = {_placeholder(option.type)}  # required")
        elif option.default is None:  # unset: the description names the fallback
            lines.append(f"{indent}# {option.key} = {_placeholder(option.type)}  # unset by default")
        else:
            lines.append(f"{indent}# {option.key} = {toml_value(option.default)}")
    return "\n".join(lines) + "\n"


def _placeholder(type_: Any) -> str:
    """An empty value of a required option's type, for the user to fill in."""
    bare = get_args(type_)[0] if get_origin(type_) is Annotated else type_
    origin = get_origin(bare) or bare
    if isinstance(origin, type) and issubclass(origin, list | tuple):
        return "[]"
    if isinstance(origin, type) and issubclass(origin, dict | msgspec.Struct):
        return "{}"
    return '""'


def _prose(text: str, indent: str) -> list[str]:
    width = WIDTH - len(indent) - 3
    return [f"{indent}## {line}" for line in textwrap.wrap(text, width)] if text else []


# ------------------------------------------------------------ reading a sample back

_TABLE = re.compile(r"^\s*\[\[?\s*([\w.\"-]+)\s*\]\]?\s*(#.*)?$")
_OPTION = re.compile(r"^\s*(#\s)?\s*([A-Za-z_][\w-]*)\s*=\s*(.+?)\s*$")


@dataclass(frozen=True)
class DocumentedKey:
    """A ``# key = value`` (documented default) or ``key = value`` (live example) line of a sample."""

    key: str
    value: str  # the TOML text after "="
    commented: bool
    prose: str  # the "##" lines right above it (shared by consecutive key lines), joined
    line: int  # 1-based


def documented_keys(sample: str, table: str) -> list[DocumentedKey]:
    """The option lines of the first ``[[table]]`` instance in ``sample`` (e.g. ``table="outputs.loki"``).

    A sub-table of the instance (``[[collectors.x.part]]``) counts as the option ``part``, shown live.
    """
    found: list[DocumentedKey] = []
    inside = False
    prose: list[str] = []
    after_key = in_subtable = False
    subtables: set[str] = set()
    for number, line in enumerate(sample.splitlines(), 1):
        header = _TABLE.match(line)
        if header and not line.lstrip().startswith("#"):
            name = header.group(1)
            if inside and name.startswith(f"{table}.") and name not in subtables:
                # [[outputs.x.part]] under the instance: the option "part", shown live as a table
                subtables.add(name)
                found.append(DocumentedKey(name[len(table) + 1 :], "{}", False, " ".join(prose), number))
            elif not name.startswith(f"{table}."):
                if name == table and (inside or found):
                    break  # a second instance: examples of their own, not the documentation
                inside = name == table
            prose, after_key = [], False
            in_subtable = name.startswith(f"{table}.")
            continue
        stripped = line.strip()
        if stripped.startswith("##"):
            if after_key:
                prose, after_key = [], False
            prose.append(stripped.lstrip("#").strip())
            continue
        option = _OPTION.match(line)
        if option and inside and not in_subtable and _is_toml_value(option.group(3)):
            found.append(
                DocumentedKey(option.group(2), option.group(3), bool(option.group(1)), " ".join(prose), number)
            )
            after_key = True
            continue
        prose, after_key = [], False  # a blank line or other comment ends the block
    return found


def _is_toml_value(text: str) -> bool:
    try:
        tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError:
        return False
    return True


def toml_parse_value(text: str) -> Any:
    """The value of a documented key's TOML text."""
    return tomllib.loads(f"v = {text}")["v"]


def sample_problems(sample: str, kind: str, name: str, config_type: type, common_type: type) -> list[str]:
    """What a plugin's ``sample.toml`` gets wrong about its schema, one line each; empty when it agrees.

    Every option of ``config_type`` appears once, under ``##`` prose; a ``# key = value`` line
    shows the schema's default, in the option's type (compared as values: ``"1m"`` and
    ``"60s"`` agree); a required option is shown live; an option holding tables (a
    ``Struct``) names each of their keys in its prose; and every key shown is an option of
    the plugin or one every plugin of its kind takes (``common_type``). An option whose
    default is unset (a fallback its description names) may show any valid value.
    """
    own = {option.key: option for option in options(config_type)}
    shared = {option.key: option for option in options(common_type)}
    problems: list[str] = []
    seen: set[str] = set()
    for doc in documented_keys(sample, f"{kind}.{name}"):
        where = f"line {doc.line}: {doc.key}"
        if doc.key in seen:
            problems.append(f"{where}: shown twice")
        seen.add(doc.key)
        option = own.get(doc.key) or shared.get(doc.key)
        if option is None:
            problems.append(f"{where}: not an option of {name} (stale documentation?)")
            continue
        if not doc.prose:
            problems.append(f"{where}: no ## prose above it")
        if option.required and doc.commented:
            problems.append(f"{where}: required, so show it live (without #)")
        problems.extend(
            f"{where}: its field {field.key} is not named in the ## prose"
            for struct in nested_structs_of(option.type)
            for field in options(struct)
            if not re.search(rf"\b{field.key}\b", f"{doc.prose} {doc.value}")
        )
        if not doc.commented:
            continue  # a live line is an example value; the config check validates it
        try:
            value = convert(toml_parse_value(doc.value), option.type)
        except (msgspec.ValidationError, ValueError) as exc:
            problems.append(f"{where} = {doc.value}: not a valid value: {exc}")
            continue
        if option.default is not None and value != option.default:
            problems.append(f"{where} = {doc.value}: the default is {toml_value(option.default)}")
    problems.extend(f"{key}: not documented" for key in own if key not in seen)
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not 1 <= len(args) <= 2:
        print("usage: python -m agent.config.docs [collectors|outputs] PLUGIN", file=sys.stderr)
        return 2
    from agent.registry import load_registry

    registry = load_registry()
    name = args[-1]
    kinds = [args[0]] if len(args) == 2 else [k for k in ("collectors", "outputs") if name in registry.get(k, {})]
    if len(kinds) != 1 or name not in registry.get(kinds[0], {}):
        print(f"unknown plugin {' '.join(args)!r}, or a name both kinds use: give the kind", file=sys.stderr)
        return 2
    plugin = registry[kinds[0]][name]
    summary = (plugin.__doc__ or sys.modules[plugin.__module__].__doc__ or "").strip().split("\n\n")[0]
    sys.stdout.write(render_sample(kinds[0], name, plugin.Config, " ".join(summary.split())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
