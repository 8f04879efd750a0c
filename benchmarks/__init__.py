"""peftrec's benchmarks: one module per study, each run from the repository root as
``python -m benchmarks.<name>`` (``--help`` for its options).

What every study ends with (the machine it ran on, its report written, a recipe launched) lives
in :mod:`benchmarks.common`; the suites of ``run.py`` are YAML files under ``suites/``, and the
reports the studies wrote are under ``results/``.
"""
