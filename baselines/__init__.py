"""Baselines, one file each: every module here is imported by ``opd.registry.load_plugins`` and
registers its method with ``@METHODS.register(name)``. Dropping a file here is the whole
registration; files whose name starts with ``_`` are skipped."""
