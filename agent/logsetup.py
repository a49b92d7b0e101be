"""Structured logging: JSON lines to stderr when not a terminal, readable text on one.

Configured by the CLI, never at import. Known secrets (passwords and tokens read
from the config's secret files) are masked in every message by a filter, so an
error that quotes a URL or header cannot leak them; the password of any URL is
masked too, known or not, and so are the texts of logged exceptions. The runtime
adds a reloaded config's secrets to the same mask before it applies the config,
and uses it for what /health/detailed and /ready show.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable

from agent.secrets import mask_url_credentials

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class SecretMask(logging.Filter):
    """Replaces registered secret values and URL passwords with ``***`` in messages,
    fields and exception texts.

    The set of values only grows: after a reload the old config's secrets stay
    masked too (a draining output may still quote them).
    """

    def __init__(self) -> None:
        super().__init__()
        self._secrets: list[str] = []

    def add(self, secrets: Iterable[str]) -> None:
        known = set(self._secrets)
        known.update(s for s in secrets if s and len(s) >= 3)
        # longest first, so a secret that contains another is masked whole
        self._secrets = sorted(known, key=lambda s: (-len(s), s))

    def mask(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return mask_url_credentials(text)

    def mask_all(self, value):
        """``value`` (JSON-like: dicts, lists, strings) with every string masked."""
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, dict):
            return {key: self.mask_all(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self.mask_all(item) for item in value]
        return value

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.mask(record.getMessage())
        record.args = None
        for key, value in record.__dict__.items():
            if key not in _RESERVED and isinstance(value, str):
                record.__dict__[key] = self.mask(value)
        if record.exc_info:
            # a traceback quotes the exception's message: format it here, masked
            record.exc_text = self.mask(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = self.mask(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value if isinstance(value, str | int | float | bool | None) else str(value)
        if record.exc_info or record.exc_text:
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(
            f"{k}={v}" for k, v in record.__dict__.items() if k not in _RESERVED and not k.startswith("_")
        )
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{stamp} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if fields:
            line += f"  {fields}"
        if record.exc_info or record.exc_text:
            line += "\n" + (record.exc_text or self.formatException(record.exc_info))
        return line


def setup_logging(level: str = "info", stream=None, json_lines: bool | None = None) -> SecretMask:
    """Route the ``hostwatch`` logger to ``stream``; returns the secret mask to feed."""
    stream = stream or sys.stderr
    if json_lines is None:
        json_lines = not stream.isatty()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    mask = SecretMask()
    handler.addFilter(mask)
    handler._hostwatch = True  # type: ignore[attr-defined]
    own = logging.getLogger("hostwatch")
    own.handlers[:] = [handler]
    own.setLevel(level.upper())
    own.propagate = False
    # libraries' warnings (asyncio's "Task exception was never retrieved", aiohttp's) can quote
    # a URL too: they go through the same mask instead of Python's unfiltered last resort
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not getattr(h, "_hostwatch", False)] + [handler]
    # aiohttp's access log and asyncio's debug noise are not the agent's concern
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return mask
