"""``${VAR}`` and ``${VAR:-default}`` in string values, expanded before validation.

``$${`` writes a literal ``${``. A variable that is not set (and has no default) or a
malformed reference is an error under the key's path; every one is reported.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_VAR = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{[^}]*\}?")


def interpolate(value: Any, environ: Mapping[str, str], path: str, errors: list[str]) -> Any:
    """Expand ``${VAR}`` / ``${VAR:-default}`` in every string, recording errors by path."""
    if isinstance(value, str):
        if "$" not in value:
            return value

        def expand(match: re.Match[str]) -> str:
            text = match.group(0)
            if text == "$${":
                return "${"
            name, default = match.group(1), match.group(2)
            if name is None:
                errors.append(
                    f"{path or '<root>'}: invalid variable reference {text!r}; use ${{NAME}} or ${{NAME:-default}}"
                )
                return text
            if name in environ and (environ[name] != "" or default is None):
                return environ[name]
            if default is not None:
                return default
            errors.append(f"{path}: environment variable {name} is not set (use ${{{name}:-default}} for a fallback)")
            return text

        return _VAR.sub(expand, value)
    if isinstance(value, dict):
        return {k: interpolate(v, environ, f"{path}.{k}" if path else k, errors) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, environ, f"{path}[{i}]", errors) for i, v in enumerate(value)]
    return value
