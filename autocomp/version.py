"""The installed autocomp version (run.json records it)."""

__version__ = "0.1.0"
