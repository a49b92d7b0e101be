"""Client TLS and HTTP auth from secret files, shared by the outputs and the collectors that
make HTTP requests (``prometheus_scrape``).

A plugin-API service module (plugins may import it; it imports nothing of the project). It
takes any config object with the outputs' option names: ``tls_ca``, ``tls_cert``,
``tls_key``, ``tls_insecure_skip_verify``, ``bearer_token_file``, ``basic_auth_user`` and
``basic_auth_password_file``. Every function here is blocking (it reads files): call it
through ``run_blocking`` or a thread, never on the event loop.
"""

from __future__ import annotations

import base64
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Credentials:
    """The ``Authorization`` header built from secret files (never shown in a repr)."""

    authorization: str = field(default="", repr=False)
    secrets: tuple[str, ...] = field(default=(), repr=False)


def read_secret(path: str) -> str:
    """A secret file's content without its trailing newline."""
    return Path(path).read_text(encoding="utf-8").rstrip("\r\n")


def load_credentials(config: Any) -> Credentials:
    """Read the auth files ``config`` names. Errors name the file, never its content."""
    if config.bearer_token_file:
        token = read_secret(config.bearer_token_file).strip()
        if not token:
            raise ValueError(f"bearer_token_file {config.bearer_token_file} is empty")
        return Credentials(f"Bearer {token}", (token,))
    if config.basic_auth_user:
        password = read_secret(config.basic_auth_password_file)
        pair = base64.b64encode(f"{config.basic_auth_user}:{password}".encode()).decode()
        return Credentials(f"Basic {pair}", tuple(s for s in (password, pair) if s))
    return Credentials()


def build_ssl_context(config: Any) -> ssl.SSLContext:
    """A client TLS context from ``config`` (reads the certificate files)."""
    context = ssl.create_default_context(cafile=config.tls_ca or None)
    if config.tls_cert:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    if config.tls_insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
