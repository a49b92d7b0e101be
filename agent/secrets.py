"""Secret values of a loaded configuration, to mask in the agent's own logs.

Kept apart from ``agent.redact`` so that masking needs no RE2 (and no start-up
cost) when no log collector is configured. :func:`mask_url_credentials` needs no
list of known values: it hides the password of any ``scheme://user:password@``
URL in a text, so a URL quoted by an error (a new one after a reload, or one in
a config that failed to load) shows no credential either.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

_SECRET_FIELD = re.compile(r"password|passwd|token|secret|api_?key|credential", re.I)
_SECRET_HEADER = re.compile(r"authorization|cookie|token|secret|api-?key|auth", re.I)
# scheme://user:password@ : the password runs to the last "@" before the host part ends
# (a password may hold an unencoded "@"; a path, query or whitespace ends the authority)
_URL_PASSWORD = re.compile(r"([a-z][a-z0-9+.-]*://[^\s/?#@:'\"]*:)[^\s/?#'\"]*@", re.I)


def mask_url_credentials(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` URL replaced by ``***``."""
    if "://" not in text:
        return text
    return _URL_PASSWORD.sub(r"\1***@", text)


def config_secrets(config: Any) -> set[str]:
    """Secret values in a loaded config, for ``SecretMask.add`` (``agent.logsetup``).

    Collects the contents of ``*_password_file`` / ``*_token_file`` style
    options, secret-named string options, URL passwords, and credential
    headers, from every plugin instance. Call it after each (re)load::

        mask = setup_logging(level)
        mask.add(config_secrets(config))
    """
    found: set[str] = set()
    for spec in (*config.collectors, *config.outputs):
        for struct in (spec.common, spec.config):
            _collect(struct, "", found)
    return {s for s in found if len(s) >= 3}


def _collect(value: Any, name: str, found: set[str]) -> None:
    if hasattr(value, "__struct_fields__"):
        for field in value.__struct_fields__:
            _collect(getattr(value, field), field, found)
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, str) and _SECRET_HEADER.search(str(key)):
                found.add(item)
                found.update(item.split()[1:])  # "Bearer xyz": the credential alone too
            _collect(item, str(key), found)
    elif isinstance(value, list | tuple):
        for item in value:
            _collect(item, name, found)
    elif isinstance(value, str) and value:
        if name.endswith("_file") and _SECRET_FIELD.search(name):
            try:
                found.add(Path(value).read_text(encoding="utf-8").strip())
            except (OSError, UnicodeDecodeError):
                pass  # the plugin reports an unreadable secret file itself
        elif _SECRET_FIELD.search(name):
            found.add(value)
        if "@" in value and "://" in value:
            try:
                password = urlsplit(value).password
            except ValueError:
                password = None
            if password:
                found.update({password, unquote(password)})
                # clients send URL credentials as basic auth: an echoed header shows this form
                user = unquote(urlsplit(value).username or "")
                found.add(base64.b64encode(f"{user}:{unquote(password)}".encode()).decode())
