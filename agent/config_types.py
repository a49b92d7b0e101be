"""Moved to :mod:`agent.config.values`; this name stays importable for existing callers."""

from agent.config.values import *  # noqa: F403
from agent.config.values import parse_listen as parse_listen
