"""hostwatch's core: the engine and the contracts plugins are written against."""

__version__ = "0.1.0"
