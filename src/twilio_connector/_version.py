"""The version, as pyproject.toml declares it (tests/test_packaging.py holds them equal): read from here, not from
the installed metadata, whose reader (importlib.metadata) costs 11 ms at every start."""

__version__ = "0.1.0"
