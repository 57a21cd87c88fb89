"""Repository-root pytest configuration: for a doctest run over the package
(``pytest --doctest-modules src/bafusion``)."""

#: ``src/bafusion/metrics.py`` replaces itself in :data:`sys.modules` by
#: :mod:`bafusion.evaluation.metrics` (``bafusion.metrics is bafusion.evaluation.metrics``), which pytest
#: reports as an "import file mismatch" that stops the collection; it holds no doctest of its
#: own (its module's are collected from ``evaluation/metrics.py``).
collect_ignore = ["src/bafusion/metrics.py"]
