"""The schema walker behind configuration errors that name the key's path.

:func:`validate` converts a TOML table to a frozen Struct and, unlike a bare
``msgspec.convert``, does not stop at the first problem: it visits every key,
so ``hostwatch check`` reports all of them, each as ``path.to.key: message``.
Besides the types it runs the :class:`~agent.config.values.FieldCheck` objects
declared in a field's ``Annotated`` metadata and a Struct's optional
``check_config()`` (cross-field rules meant for user input only); an error of
that or of ``__post_init__`` that begins with a field name (``"url: ..."``) is
reported under that key.
"""

from __future__ import annotations

import difflib
import functools
import re
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import msgspec

from agent.config.values import Duration, FieldCheck, Size


def _dec_hook(type_: type, obj: Any) -> Any:
    if isinstance(type_, type) and issubclass(type_, Duration | Size):
        return type_.parse(obj)
    raise NotImplementedError(f"unsupported type {type_!r}")


def convert(value: Any, type_: Any) -> Any:
    return msgspec.convert(value, type_, dec_hook=_dec_hook)


@functools.cache
def struct_fields(type_: type) -> tuple[msgspec.structs.FieldInfo, ...]:
    """``msgspec.structs.fields``, once per Struct type: each call evaluates the class's annotations
    again (strings, under ``from __future__ import annotations``), a few ms of every start per plugin."""
    return msgspec.structs.fields(type_)


def unknown_key(path: str, known: list[str], what: str = "key") -> str:
    name = path.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else (f"; known: {', '.join(sorted(known))}" if what != "key" else "")
    return f"{path}: unknown {what}{hint}"


def _struct_type(type_: Any) -> type | None:
    if get_origin(type_) is Annotated:
        type_ = get_args(type_)[0]
    if isinstance(type_, type) and issubclass(type_, msgspec.Struct):
        return type_
    return None


def _list_item_struct(type_: Any) -> type | None:
    if get_origin(type_) is Annotated:
        type_ = get_args(type_)[0]
    if get_origin(type_) is list:
        return _struct_type(get_args(type_)[0])
    return None


def _describe(type_: Any) -> str:
    if get_origin(type_) is Annotated:
        type_ = get_args(type_)[0]
    origin = get_origin(type_)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(type_))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(type_) if a is not type(None))
    if isinstance(type_, type) and issubclass(type_, Duration):
        return 'a duration like "10s"'
    if isinstance(type_, type) and issubclass(type_, Size):
        return 'a size like "256MiB"'
    if origin is not None:
        return str(type_).replace("typing.", "")
    return getattr(type_, "__name__", str(type_))


def validate(
    data: Any, type_: type, path: str, errors: list[str], extra_known: set[str] | frozenset[str] = frozenset()
) -> Any:
    """Convert ``data`` to the Struct ``type_``, appending every problem to ``errors``."""
    if not isinstance(data, dict):
        errors.append(f"{path}: expected a table, got {type(data).__name__}")
        return None
    fields = {f.encode_name: f for f in struct_fields(type_)}
    before = len(errors)
    for key, value in data.items():
        key_path = f"{path}.{key}" if path else key
        field = fields.get(key)
        if field is None:
            errors.append(unknown_key(key_path, [*fields, *extra_known]))
            continue
        nested = _struct_type(field.type)
        items = _list_item_struct(field.type)
        if nested is not None:
            validate(value, nested, key_path, errors)
        elif items is not None and isinstance(value, list):
            for i, item in enumerate(value):
                validate(item, items, f"{key_path}[{i}]", errors)
        else:
            try:
                converted = convert(value, field.type)
            except msgspec.ValidationError as exc:
                errors.append(_type_error(key_path, field.type, value, exc))
                continue
            for check in _field_checks(field.type):
                try:
                    check.check(converted)
                except ValueError as exc:
                    errors.append(f"{key_path}: {exc}")
    for name, field in fields.items():
        if name not in data and field.required:
            errors.append(f"{path}.{name}: missing required key ({_describe(field.type)})")
    if len(errors) != before:
        return None
    try:
        result = convert(data, type_)
        if hasattr(result, "check_config"):
            result.check_config()
        return result
    except (msgspec.ValidationError, ValueError) as exc:  # cross-field checks: __post_init__, check_config()
        message = str(exc)
        named = re.match(r"([A-Za-z_]\w*)[.\[:]", message)  # "url: ..." names the key: put it in the path
        errors.append(f"{path}.{message}" if named and named.group(1) in fields else f"{path}: {message}")
        return None


def _field_checks(type_: Any) -> list[FieldCheck]:
    """The :class:`FieldCheck` objects in a field's ``Annotated`` metadata."""
    if get_origin(type_) is not Annotated:
        return []
    return [meta for meta in get_args(type_)[1:] if isinstance(meta, FieldCheck)]


def _type_error(path: str, type_: Any, value: Any, exc: msgspec.ValidationError) -> str:
    message = str(exc)
    inner = re.search(r" - at `\$(.*)`$", message)
    if inner:
        message = message[: inner.start()]
        path += inner.group(1)
    bare = get_args(type_)[0] if get_origin(type_) is Annotated else type_
    if get_origin(bare) is Literal:
        return f"{path}: expected one of {', '.join(repr(a) for a in get_args(bare))}; got {value!r}"
    if isinstance(exc.__cause__, ValueError) or "duration" in message or "size" in message:
        return f"{path}: {message}"
    return f"{path}: {message[0].lower() + message[1:]} (expected {_describe(type_)}, got {value!r})"
