"""Moved to :mod:`agent.config.validation`; this name stays importable for existing callers."""

from agent.config.validation import convert as convert
from agent.config.validation import unknown_key as unknown_key
from agent.config.validation import validate as validate
