"""Prism's benchmarks: what Prism costs over the raw datastore, embedded and
through the gateway. Run them with ``nox -s bench`` (``-- --quick`` for a short
run); see ``benchmarks/README.md``. They are never tests and never assert speed."""
