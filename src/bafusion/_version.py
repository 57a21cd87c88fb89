"""The package version (ground floor: importing it loads nothing else). The one copy of the
number: pyproject.toml takes it from here (``dynamic``, ``[tool.setuptools.dynamic]``)."""

__version__ = "0.1.0"
