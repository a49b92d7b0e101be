"""What the three queue collectors share: metric names, units, secret handling.

Not a plugin: a private helper of this folder, imported only by its siblings.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

MESSAGES = "queue_messages"
CONSUMERS = "queue_consumers"
OLDEST_AGE = "queue_oldest_message_age_seconds"
SKIPPED = "hostwatch_queue_skipped_total"
"""Queues (keys) left unmeasured by a cap or an unsupported type: {system, reason}."""

MESSAGE_UNIT = "{message}"
CONSUMER_UNIT = "{consumer}"


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***``, safe for logs and errors."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def scrub(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with every secret value masked (client libraries may echo them)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def read_secret(path: str) -> str:
    """A secret file's content without the trailing newline (blocking: run it off the loop)."""
    try:
        return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        # The message names the file, never its content.
        raise OSError(f"cannot read password_file {path}: {exc.strerror}") from None
